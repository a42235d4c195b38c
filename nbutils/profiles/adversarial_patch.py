"""Chapter 2, the adversarial patch: parameters and profiles."""
from ..params import COUNT, Page, Rule, check_agree, param
from .common import (IMAGENET_CLASS, IMAGENET_MODEL_NAMES, IMAGENET_SUBSET, INDEX, PAPER_MODEL_NAME, WEIGHTS_NAMES,
                     run_parameters)
from .fgsm_imagenet import STANDIN, imagenet_counts

TARGETS = ["saltshaker", "soap dispenser", "digital clock", "piggy bank", "toaster"]
OFFLINE_FIGURES = [1, 3, 4, 5]


def agree(cfg) -> None:
    imagenet_counts(cfg, "figure_images")
    check_agree(cfg.figure_target in cfg.targets, ["figure_target", "targets"],
                f"the figures' patch {cfg.figure_target!r} is not among the trained targets {cfg.targets}")
    check_agree(cfg.figure_size in cfg.sizes, ["figure_size", "sizes"],
                f"the figures' patch size {cfg.figure_size} is not among the trained sizes {cfg.sizes}")
    from ..data import IMAGENET_SUBSETS
    loaded = cfg.n_images or IMAGENET_SUBSETS[cfg.dataset]
    held_out = round(loaded * cfg.val_fraction)
    check_agree(held_out >= 1 and cfg.runs * held_out < loaded, ["runs", "val_fraction", "n_images"],
                f"{cfg.runs} runs each holding out their own {held_out} of the {loaded} images leave no image to "
                "train on (or hold out none)")


PAGE = Page(
    "02_adversarial_patch",
    profiles={"paper": "the paper's three models, needs their weights", "offline": "the stand-in, 1000 images; a GPU",
              "offline-cpu": "the stand-in, 400 images, 2 targets, 4 epochs: about an hour on 2 CPU cores",
              "smoke": "about a minute on 2 CPU cores"},
    parameters=[
        param("models", list, "ImageNet model names (nbutils.models.IMAGENET_MODELS)",
              ["resnet101", "alexnet", "regnet_y_400mf"], IMAGENET_MODEL_NAMES,
              **{p: STANDIN for p in ("offline", "offline-cpu", "smoke")}),
        param("weights", str, 'torchvision weights of the paper\'s models ("IMAGENET1K_V1" | "IMAGENET1K_V2"); the '
                              "stand-in uses its own", "IMAGENET1K_V1", WEIGHTS_NAMES,
              **{p: "standin" for p in ("offline", "offline-cpu", "smoke")}),
        param("reference_model", str, "the paper model whose published rows sit beside a model the paper did not run "
                                      "(the stand-in)", "regnet_y_400mf", PAPER_MODEL_NAME),
        param("dataset", str, '"tiny-imagenet" (the paper\'s 5000 images) | "imagenet-sample" (offline mirror, 1000)',
              "tiny-imagenet", IMAGENET_SUBSET, **{p: "imagenet-sample" for p in ("offline", "offline-cpu", "smoke")}),
        param("n_images", int, "first n images of the dataset (0: all)", 0, Rule(low=0), **{"offline-cpu": 400}, smoke=24),
        param("targets", list, "patch target class names (paper: 5)", TARGETS, IMAGENET_CLASS,
              **{p: ["piggy bank", "toaster"] for p in ("offline-cpu", "smoke")}),
        param("sizes", list, "patch sizes in pixels (paper: 32, 48, 64)", [32, 48, 64], Rule(1, 224, element=int),
              smoke=[32, 64]),
        param("epochs", int, "training epochs per patch (tutorial: 5)", 5, COUNT, **{"offline-cpu": 4}, smoke=1),
        param("batch_size", int, "training batch (tutorial: 32)", 32, COUNT, smoke=8),
        param("lr", float, "SGD learning rate (tutorial: 0.1)", 0.1, Rule(0.0, open_low=True)),
        param("momentum", float, "SGD momentum (tutorial: 0.8)", 0.8, Rule(0.0, 1.0, open_high=True)),
        param("val_fraction", float, "images held out of training (tutorial: 500 of 5000)", 0.1,
              Rule(0.0, 1.0, open_low=True, open_high=True)),
        param("runs", int, "trainings per target and size: run r uses seed + r and holds out its own val_fraction "
                           "of the images", 3, COUNT, **{"offline-cpu": 2}, smoke=2),
        param("placements", int, "random placements per image when scoring (tutorial: 4)", 4, COUNT, smoke=2),
        param("eval_batch_size", int, "images per inference batch when scoring", 128, COUNT, smoke=24),
        param("figure_images", list, "dataset positions of the Figs 4-6 images (goldfish, tiger shark, hammerhead, "
                                     "electric ray)", [7, 16, 20, 27], INDEX,
              **{p: OFFLINE_FIGURES for p in ("offline", "offline-cpu", "smoke")}),
        param("figure_target", str, 'patch of Figs 4-6 (paper: "piggy bank")', "piggy bank",
              Rule(choices=IMAGENET_CLASS.choices)),
        param("figure_size", int, "its size (paper: 64)", 64, Rule(1, 224)),
        *run_parameters("02_adversarial_patch", seed="seeds the split, shuffles and positions (CPU generator) and torch",
                        cache="patches", deterministic=True, **{"offline-cpu": "cpu"}, smoke="cpu"),
    ],
    agree=agree,
    cache="patches",
    expected={("offline", "cuda"): "about 5 min on an H100", ("offline", "cpu"): "hours on 2 CPU cores: use offline-cpu",
              ("offline-cpu", "cpu"): "about an hour on 2 CPU cores",
              ("smoke", "cpu"): "about a minute on 2 CPU cores"},
)
