"""Chapter 3, defensive distillation: parameters and profiles."""
from ..params import COUNT, PIXEL_EPS, POSITIVE, Page, Rule, check_within, param
from .common import run_parameters

#: Tables XIII-XIV's eps, pixel units
EPSILONS = [0.0, 0.007, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3]
MNIST_L2_DIAMETER = 28.0  # the L2 norm of the largest change of a 28 x 28 image in [0, 1]


def agree(cfg) -> None:
    check_within(cfg, "n_train", 1, 60_000 - cfg.n_val, ["n_val"])
    check_within(cfg, "n_attack", 1, cfg.n_test, ["n_test"])
    check_within(cfg, "n_l2", 1, cfg.n_test, ["n_test"])
    check_within(cfg, "figure_images", 0, cfg.n_test - 1, ["n_test"])


PAGE = Page(
    "03_defensive_distillation",
    profiles={"paper": "full MNIST, 10 epochs: minutes on a GPU, hours on a CPU",
              "reduced": "about 15 min on 2 CPU cores", "smoke": "about 1.5 min on 2 CPU cores"},
    parameters=[
        param("n_train", int, "training images drawn at random from the 60,000 (paper: 50,000)", 50_000, COUNT,
              reduced=10_000, smoke=2_000),
        param("n_val", int, "validation images, drawn from the rest (paper: 10,000)", 10_000, Rule(1, 59_999),
              reduced=2_000, smoke=500),
        param("n_test", int, "first n images of the official test set (paper: 10,000)", 10_000, Rule(1, 10_000),
              reduced=2_000, smoke=500),
        param("epochs", int, "epochs per model (paper: 10)", 10, COUNT, reduced=3, smoke=1),
        param("batch_size", int, "training batch (source: 1; we run 64, see below)", 64, COUNT),
        param("lr", float, "Adam learning rate (paper: 1e-4), betas (0.9, 0.999)", 1e-4, Rule(0.0, open_low=True)),
        param("scheduler_factor", float, "ReduceLROnPlateau factor (paper: 0.1; its text also says 0.2)", 0.1,
              Rule(0.0, 1.0, open_low=True, open_high=True)),
        param("scheduler_patience", int, "ReduceLROnPlateau patience in epochs (paper: 3)", 3, Rule(low=0)),
        param("temperature", float, "distillation temperature T (paper: 100)", 100.0, Rule(0.0, open_low=True)),
        param("epsilons", list, "FGSM eps in [0, 1] pixel units (Tables XIII-XIV)", EPSILONS, PIXEL_EPS),
        param("n_seeds", int, "training seeds of Tables XIII-XIV: seed, seed + 1, ... (each trains the four nets anew)",
              3, COUNT, reduced=1, smoke=2),
        param("figure_images", list, "test-set positions shown in Fig. 9", [0, 1, 2, 3, 4, 5], Rule(low=0, element=int)),
        param("attack_eps", float, "L-inf budget of the defence x attack table (0.3: the paper's largest eps)", 0.3,
              Rule(0.0, 1.0)),
        param("n_attack", int, "first n test images for the attack table and the sweep", 10_000, COUNT,
              reduced=500, smoke=100),
        param("pgd_steps", int, "PGD iterations (step size attack_eps / steps x 2.5)", 40, COUNT, reduced=20, smoke=5),
        param("l2_budgets", list, "L2 budgets (pixel units) of the robust-accuracy curve",
              [0.5, 1.0, 1.5, 2.0, 2.5, 3.0], Rule(0.0, MNIST_L2_DIAMETER, open_low=True, element=float),
              smoke=[1.0, 2.0]),
        param("l2_steps", int, "L2 PGD steps per restart (the curve also runs twice as many, to check convergence)",
              100, COUNT, reduced=50, smoke=10),
        param("l2_restarts", int, "L2 PGD random restarts (an image counts as broken if any restart succeeds)", 2,
              COUNT, reduced=1, smoke=1),
        param("n_l2", int, "first n test images attacked for the L2 curve", 1000, COUNT, reduced=200, smoke=50),
        param("sweep_temperatures", list, "temperatures of the sweep (distilled teacher and student at each)",
              [1.0, 10.0, 20.0, 50.0, 100.0], POSITIVE, reduced=[1.0, 10.0, 100.0], smoke=[1.0, 100.0]),
        param("sweep_epochs", int, "epochs per model in the sweep", 10, COUNT, reduced=3, smoke=1),
        param("eval_batch_size", int, "images per batch when testing and attacking", 1000, COUNT, smoke=250),
        *run_parameters("03_defensive_distillation", seed="seeds the split, initialisation, shuffles and dropout (torch)",
                        cache="models", reduced="cpu", smoke="cpu"),
    ],
    agree=agree,
    cache="models",
    expected={("paper", "cuda"): "about 3 min on an H200", ("paper", "cpu"): "hours on 2 CPU cores: use reduced",
              ("reduced", "cpu"): "about 15 min on 2 CPU cores", ("smoke", "cpu"): "about 1.5 min on 2 CPU cores"},
)
