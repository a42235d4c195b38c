"""Chapter 5, I-defender: parameters and profiles."""
from ..params import COUNT, PIXEL_EPS, Page, Rule, check_within, param
from .common import DIGIT_DATASETS, MODEL_F_LAYERS, run_parameters
from .defensive_distillation import MNIST_L2_DIAMETER


def _covariance_types():
    from ..gmm import COVARIANCE_TYPES
    return COVARIANCE_TYPES


def agree(cfg) -> None:
    check_within(cfg, "n_calibration", 1, 10_000 - cfg.n_tests, ["n_tests"])
    check_within(cfg, "n_train", cfg.selection_holdout + 10 * max(cfg.components_grid), 60_000,
                 ["selection_holdout", "components_grid"])
    check_within(cfg, "holdout", 1, cfg.n_tests - 1, ["n_tests"])
    check_within(cfg, "n_adaptive", 1, cfg.n_tests - cfg.holdout, ["n_tests", "holdout"])
    check_within(cfg, "n_other", 1, cfg.n_tests - cfg.holdout, ["n_tests", "holdout"])


PAGE = Page(
    "05_gmm_detection",
    profiles={"paper": "Defense-GAN's black-box protocol, both datasets, 3 seeds", "cpu": "the paper's settings with 2 seeds",
              "reduced": "20,000 training images, 5 epochs, up to 5 components, 2 seeds: under an hour on one CPU core",
              "smoke": "a minute or two on 2 CPU cores"},
    parameters=[
        param("datasets", list, '"mnist" and/or "fashion-mnist" (paper: both)', ["mnist", "fashion-mnist"],
              DIGIT_DATASETS),
        param("n_train", int, "training images of F, E and the detector: the first n of 60,000 (source: all)", 60_000,
              COUNT, reduced=20_000, smoke=4_000),  # 350 a class in the mixtures' fit: full 128-d covariances well defined
        param("n_tests", int, "test images used: the first n of 10,000 (Defense-GAN: 2,000)", 2_000, Rule(2, 10_000),
              smoke=400),
        param("holdout", int, "the attacker's images, the first of those; the rest are evaluated (Defense-GAN: 150)",
              150, COUNT, smoke=100),
        param("target_epochs", int, "epochs of the target F and of the fully trained E (source: 10)", 10, COUNT,
              reduced=5, smoke=1),
        param("batch_size", int, "training batch (source: 128)", 128, COUNT),
        param("lr", float, "Adam learning rate, constant (source: 1e-3)", 1e-3, Rule(0.0, open_low=True)),
        param("substitute_rounds", int, "Jacobian augmentation rounds (source: 6)", 6, COUNT, smoke=2),
        param("substitute_epochs", int, "substitute epochs per round (source: 10)", 10, COUNT, smoke=2),
        param("lam", float, "Jacobian augmentation step (source: 0.1)", 0.1, Rule(0.0, open_low=True)),
        param("lam_schedule", str, '"cleverhans" (the source: down the label\'s probability for 3 rounds, then up) | '
                                   '"constant"', "cleverhans", Rule(choices=["cleverhans", "constant"])),
        param("n_seeds", int, "training seeds of Tables 3 and 5 (F, E and the detector anew each): seed, seed + 1, ...",
              3, COUNT, cpu=2, reduced=2, smoke=2),
        param("n_calibration", int, "clean test images after the first n_tests, which only set the held-out operating "
                                    "point", 2_000, COUNT, smoke=200),
        param("false_alarm", float, "false-alarm rate of that operating point", 0.05, Rule(0.0, 1.0, open_low=True,
                                                                                            open_high=True)),
        param("fgsm_epsilons", list, "FGSM eps on the substitute, [0, 1] pixel units (paper: 0.1, 0.15, 0.2, 0.25, 0.3)",
              [0.1, 0.15, 0.2, 0.25, 0.3], PIXEL_EPS, smoke=[0.1, 0.3]),
        param("bim_eps", float, "L-inf budget of BIM (paper: not stated)", 0.3, PIXEL_EPS),
        param("l2_eps", float, "L2 budget of the iterative L2 attack, pixel units (paper: not stated)", 4.0,
              Rule(0.0, MNIST_L2_DIAMETER)),
        param("iterations", int, "iterations of BIM and of the iterative L2 attack, step eps / iterations (paper: 10)",
              10, COUNT),
        param("deepfool_steps", int, "most DeepFool steps (reference code: 50)", 50, COUNT, smoke=10),
        param("deepfool_overshoot", float, "DeepFool overshoot (reference code: 0.02)", 0.02, Rule(low=0.0)),
        param("layer", str, "F's modelled hidden layer (the 128-d output of its third convolution)", "net.relu3",
              Rule(choices=MODEL_F_LAYERS.choices)),
        param("layer_sweep", list, "layers of F compared in the diagnostic sweep",
              ["net.relu2", "net.relu3", "net.logits"], MODEL_F_LAYERS),
        param("components_grid", list, "mixture sizes the held-out likelihood chooses from", [1, 2, 5, 10],
              Rule(low=1, element=int), reduced=[1, 2, 5], smoke=[1, 2]),
        param("covariance_grid", list, 'covariance types the held-out likelihood chooses from ("full", "diag", '
                                       '"spherical")', ["full", "diag", "spherical"],
              Rule(choices=_covariance_types, element=str), smoke=["full", "diag"]),
        # smoke: at 1e-6 its 4,000 images leave near-singular full 128-d covariances, whose held-out
        # likelihood moved by 60 nats an image between CPU kernels and flipped the chosen mixture
        param("reg_covar", float, "added to every covariance diagonal (scikit-learn's default: 1e-6)", 1e-6,
              Rule(low=0.0), smoke=1e-4),
        param("reg_covar_grid", list, "regularisations of the density-model experiment", [1e-6, 1e-4, 1e-2, 1e-1],
              Rule(low=0.0, element=float), smoke=[1e-6, 1e-2]),
        param("pca_dims", list, "PCA dimensions of the density-model experiment", [16, 32], Rule(low=1, element=int),
              smoke=[8]),
        param("em_seeds", int, "initialisations of EM compared in the density-model experiment", 3, COUNT, smoke=2),
        param("wide_layer_images", int, "training images that model a 12,544-d layer (relu1)", 20_000, COUNT,
              reduced=5_000, smoke=500),
        param("selection_holdout", int, "training images held out to choose the mixture (then refit on all)", 5_000,
              COUNT, reduced=2_000, smoke=500),
        param("keeps", list, "fractions of training data the thresholds keep (paper: ID-95, ID-99)", [0.95, 0.99],
              Rule(0.5, 0.9999, element=float)),
        param("adaptive_eps", float, "L-inf budget of the white-box attacks on F and its detector", 0.3, PIXEL_EPS),
        param("adaptive_steps", int, "PGD steps of those attacks, step 2.5 eps / steps", 40, COUNT, smoke=5),
        param("adaptive_weights", list, "weights alpha of the likelihood term of eq. 6 (0: plain PGD)",
              [0.0, 0.01, 0.1, 1.0, 10.0], Rule(low=0.0, element=float), smoke=[0.0, 1.0]),
        param("n_adaptive", int, "evaluation images attacked white-box", 500, COUNT, reduced=300, smoke=100),
        param("detection_weights", list, "weights of the hinge of the standard detection-aware attack", [1.0, 10.0],
              Rule(low=0.0, element=float), smoke=[1.0]),
        param("adaptive_restarts", int, "random restarts of the standard detection-aware attack", 3, COUNT, smoke=1),
        param("other_nets", list, 'the nets of chapters 3 ("net") and 4 ("simple_cnn"), trained here on MNIST',
              ["net", "simple_cnn"], Rule(choices=["net", "simple_cnn"], element=str)),
        param("other_epochs", int, "their training epochs (Adam 1e-3, batch 128)", 3, COUNT, smoke=1),
        param("n_other", int, "evaluation images attacked on those nets", 1_000, COUNT, reduced=500, smoke=100),
        param("cw_steps", int, "C&W-L2 optimisation steps per search step on those nets", 50, COUNT, smoke=10),
        param("eval_batch_size", int, "batch of evaluation and attacks", 500, COUNT),
        *run_parameters("05_gmm_detection", seed="seeds initialisation, shuffling, EM initialisation", cache="models",
                        cpu="cpu", reduced="cpu", smoke="cpu"),
    ],
    agree=agree,
    cache="models",
    expected={("paper", "cuda"): "minutes on a GPU", ("paper", "cpu"): "about 2 h on 2 CPU cores",
              ("cpu", "cpu"): "about 75 min on 2 CPU cores",
              ("reduced", "cpu"): "under an hour on 2 CPU cores", ("smoke", "cpu"): "about 2 min on 2 CPU cores"},
)
