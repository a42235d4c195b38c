"""Chapter 4, mixed clean and adversarial batches: parameters and profiles."""
from ..params import COUNT, PIXEL_EPS, Page, Rule, check_within, param
from .common import run_parameters


def _craft_modes():
    from ..train import CRAFT_MODES
    return CRAFT_MODES


def agree(cfg) -> None:
    check_within(cfg, "n_train", cfg.batch_size, 60_000, ["batch_size"])
    check_within(cfg, "finetune_images", 1, cfg.n_train, ["n_train"])
    check_within(cfg, "n_sweep", 1, cfg.n_test, ["n_test"])
    check_within(cfg, "figure_images", 1, cfg.n_test, ["n_test"])


PAGE = Page(
    "04_mixed_batch_training",
    profiles={"paper": "full MNIST, the posts' schedules, 3 seeds", "cpu": "the paper's settings with 2 seeds",
              "smoke": "a minute on 2 CPU cores"},
    parameters=[
        param("n_train", int, "training images, the first n of the 60,000 (posts: all)", 60_000, Rule(1, 60_000),
              smoke=2_000),
        param("n_test", int, "test images, the first n of the 10,000 (posts: all)", 10_000, Rule(1, 10_000), smoke=500),
        param("epochs", int, "normal training epochs (posts: 20; the paper says 50)", 20, COUNT, smoke=1),
        param("batch_size", int, 'training batch (posts: 64; the paper says "[364,227]")', 64, COUNT),
        param("lr", float, "Adam learning rate of normal training (posts: 1e-3)", 1e-3, Rule(0.0, open_low=True)),
        param("defence_lr", float, "Adam learning rate of fine-tuning and mixed training (posts: 1e-4)", 1e-4,
              Rule(0.0, open_low=True)),
        param("finetune_images", int, "adversarial training images to fine-tune on (posts: 10,000)", 10_000, COUNT,
              smoke=500),
        param("finetune_epochs", int, "fine-tuning epochs (assumed 10, as the mixed training)", 10, COUNT, smoke=1),
        param("mixed_epochs", int, "mixed-batch epochs (posts: 10)", 10, COUNT, smoke=1),
        param("adversarial_fraction", float, "adversarial share of each mixed batch (posts: 0.5, 32 of 64)", 0.5,
              Rule(0.01, 1.0)),
        param("eps", float, "FGSM eps in [0, 1] pixels (posts: 0.1)", 0.1, PIXEL_EPS),
        param("craft_mode", str, 'model mode while a training step crafts: "eval" (as Keras\' model(x)) | "train"',
              "eval", Rule(choices=_craft_modes)),
        param("pgd_train_steps", int, "PGD steps of the PGD-trained (Madry) model, at eps, step 2.5 eps / steps", 7,
              COUNT, smoke=3),
        param("pgd_train_epochs", int, "epochs of the PGD-trained model (from scratch, Adam lr)", 5, COUNT, smoke=1),
        param("sweep_epsilons", list, "eps grid of the accuracy-against-eps curves",
              [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3], PIXEL_EPS, smoke=[0.0, 0.1, 0.3]),
        param("n_sweep", int, "test images attacked in the curves (PGD is their costly part)", 1000, COUNT, smoke=100),
        param("pgd_steps", int, "PGD iterations in the curves (step 2.5 eps / steps)", 40, COUNT, smoke=5),
        param("pgd_restarts", int, "PGD random restarts in the curves (an image counts as broken if any succeeds)", 2,
              COUNT),
        param("check_steps", int, "steps of the margin-loss PGD that checks the mixed model for a masked gradient",
              100, COUNT, smoke=5),
        param("check_restarts", int, "its random restarts", 3, COUNT, smoke=1),
        param("n_seeds", int, "training seeds of Table I and the curves: seed, seed + 1, ... (each trains every model)",
              3, COUNT, cpu=2, smoke=2),
        param("figure_images", int, "adversarial test images shown in Fig. 8", 10, COUNT),
        param("eval_batch_size", int, "images per batch when testing and attacking", 1000, COUNT, smoke=500),
        *run_parameters("04_mixed_batch_training", seed="seeds the initialisation, shuffles, the fine-tuning subset and "
                                                        "PGD's starts", cache="models", cpu="cpu", smoke="cpu"),
    ],
    agree=agree,
    cache="models",
    expected={("paper", "cuda"): "minutes on a GPU", ("paper", "cpu"): "about 80 min on 2 CPU cores",
              ("cpu", "cpu"): "about 50 min on 2 CPU cores", ("smoke", "cpu"): "about a minute on 2 CPU cores"},
)
