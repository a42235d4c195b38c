"""Chapter 1, FGSM on ImageNet classifiers: parameters and profiles."""
from ..params import COUNT, PIXEL_EPS, Page, Rule, check_agree, param
from .common import IMAGENET_MODEL_NAMES, IMAGENET_SUBSET, INDEX, WEIGHTS_NAMES, run_parameters

#: Tables IV-VI's eps (normalised units), after three below the plateau, where the sound curve rises
EPSILONS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10]
STANDIN = ["efficientnet_lite0"]


def imagenet_counts(cfg, positions: str) -> None:
    """Chapters 1-2: ``n_images`` within the dataset, the example images within the images loaded."""
    from ..data import IMAGENET_SUBSETS
    size = IMAGENET_SUBSETS[cfg.dataset]
    check_agree(cfg.n_images <= size, ["n_images", "dataset"], f"{cfg.dataset} holds {size} images, n_images is {cfg.n_images}")
    loaded = cfg.n_images or size
    outside = [i for i in getattr(cfg, positions) if i >= loaded]
    check_agree(not outside, [positions, "n_images"], f"{positions} {outside} lie beyond the {loaded} images loaded")


PAGE = Page(
    "01_fgsm_imagenet",
    profiles={"paper": "the paper's three models, needs their weights", "offline": "the stand-in, no internet",
              "smoke": "minutes on 2 CPU cores"},
    parameters=[
        param("models", list, "ImageNet model names (nbutils.models.IMAGENET_MODELS)",
              ["resnet101", "alexnet", "regnet_y_400mf"], IMAGENET_MODEL_NAMES, offline=STANDIN, smoke=STANDIN),
        param("weights", list, 'weights to try per model, e.g. ["IMAGENET1K_V1", "IMAGENET1K_V2"]; each model runs '
                               "those it has", ["IMAGENET1K_V1", "IMAGENET1K_V2"], WEIGHTS_NAMES,
              offline=["standin"], smoke=["standin"]),
        param("dataset", str, '"tiny-imagenet" (the paper\'s 5000 images) | "imagenet-sample" (offline mirror, 1000)',
              "tiny-imagenet", IMAGENET_SUBSET, offline="imagenet-sample", smoke="imagenet-sample"),
        param("n_images", int, "use the first n images of the dataset (0: all)", 0, Rule(low=0), smoke=12),
        param("epsilons", list, "FGSM eps in each convention's units: from below the plateau, then Tables IV-VI's",
              EPSILONS, PIXEL_EPS, smoke=[0.02, 0.1]),
        param("eps_figure", float, "eps of Table III and Fig. 2 (paper: 0.02, normalised units)", 0.02, PIXEL_EPS),
        param("example_images", list, "dataset positions of the Table II images (goldfish, tiger shark, hammerhead, "
                                      "electric ray)", [7, 16, 20, 27], INDEX, offline=[1, 3, 4, 5], smoke=[1, 3, 4, 5]),
        param("batch_size", int, "images per forward/backward batch", 32, COUNT, offline=50, smoke=12),
        *run_parameters("01_fgsm_imagenet", seed="torch seed (the attack itself is deterministic)", cache="fgsm",
                        deterministic=True, smoke="cpu"),
    ],
    agree=lambda cfg: imagenet_counts(cfg, "example_images"),
    cache="fgsm",
    expected={("offline", "cpu"): "about 10 min on 2 CPU cores", ("smoke", "cpu"): "under a minute on 2 CPU cores"},
)
