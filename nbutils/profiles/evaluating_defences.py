"""Chapter 6, evaluating defences: parameters and profiles."""
from ..params import COUNT, PIXEL_EPS, Page, Rule, check_agree, check_within, param
from .common import DIGIT_DATASETS, run_parameters


def _covariance_types():
    from ..gmm import COVARIANCE_TYPES
    return COVARIANCE_TYPES


def agree(cfg) -> None:
    check_within(cfg, "n_minimal", 1, cfg.n_eval, ["n_eval"])
    check_within(cfg, "n_train", 10 * cfg.detector_components, 60_000, ["detector_components"])
    check_agree(cfg.median_size % 2 == 1, ["median_size"], f"the median window must be odd, got {cfg.median_size}")


PAGE = Page(
    "06_evaluating_defences",
    profiles={"paper": "all 60,000 training images, the field's settings, 3 seeds: minutes on a GPU",
              "cpu": "20,000 training images, 5 epochs (PGD training 3), a lighter cascade, 3 seeds: about an hour on 2 CPU "
                     "cores",
              "smoke": "a few minutes on 2 CPU cores"},
    parameters=[
        param("datasets", list, '"mnist" and/or "fashion-mnist"', ["mnist", "fashion-mnist"], DIGIT_DATASETS),
        param("n_train", int, "training images of every defence: the first n of 60,000", 60_000, COUNT, cpu=20_000,
              smoke=2_000),
        param("n_eval", int, "test images every evaluation attacks: the first n of 10,000", 1_000, Rule(1, 10_000),
              cpu=500, smoke=100),
        param("n_seeds", int, "training seeds of every trained defence: seed, seed + 1, ...", 3, COUNT, smoke=2),
        param("epochs", int, "epochs of standard training, of the distillation teacher and student", 10, COUNT, cpu=5,
              smoke=1),
        param("batch_size", int, "training batch", 128, COUNT),
        param("lr", float, "Adam learning rate of every training", 1e-3, Rule(0.0, open_low=True)),
        param("mnist_eps", float, "the standard L-inf budget on MNIST, [0, 1] pixels (Madry et al.: 0.3)", 0.3,
              PIXEL_EPS),
        param("fashion_eps", float, "the standard L-inf budget on Fashion-MNIST (the field's usual 0.1)", 0.1, PIXEL_EPS),
        param("mnist_eps_grid", list, "the budgets of MNIST's robust-accuracy curves", [0.05, 0.1, 0.2, 0.3, 0.4],
              PIXEL_EPS, cpu=[0.1, 0.2, 0.3], smoke=[0.1, 0.3]),
        param("fashion_eps_grid", list, "the budgets of Fashion-MNIST's curves", [0.02, 0.05, 0.1, 0.15, 0.2], PIXEL_EPS,
              cpu=[0.05, 0.1, 0.15], smoke=[0.05, 0.1]),
        param("pgd_train_steps", int, "PGD steps of adversarial training, at the standard eps, step 2.5 eps / steps "
                                      "(Madry et al. on MNIST: 40)", 10, COUNT, cpu=7, smoke=2),
        param("pgd_train_epochs", int, "epochs of PGD adversarial training, from scratch", 10, COUNT, cpu=3, smoke=1),
        param("mixed_fraction", float, "adversarial share of each batch of FGSM mixed training (chapter 4: 0.5)", 0.5,
              Rule(0.01, 1.0)),
        param("temperature", float, "distillation temperature (chapter 3, Papernot et al.: 100)", 100.0,
              Rule(0.0, open_low=True)),
        param("jpeg_quality", int, "JPEG quality (Guo et al., the survey: 75)", 75, Rule(1, 100)),
        param("bits", int, "bit-depth reduction's bits per pixel (Xu et al. on MNIST: 1)", 1, Rule(1, 8)),
        param("median_size", int, "the median filter's window, odd (Xu et al. on MNIST: 2 x 2)", 3, Rule(1, 15)),
        param("ensemble_size", int, "independently trained standard nets averaged by the ensemble", 3, Rule(2, 10)),
        param("detector_layer", str, "the hidden layer chapter 5's detector models (SimpleCNN's 128-unit layer)",
              "net.classifier.2", Rule(choices=["net.classifier.0", "net.classifier.1", "net.classifier.2"])),
        param("detector_components", int, "Gaussian components per class of the detector", 5, COUNT, smoke=2),
        param("detector_covariance", str, 'its covariance type ("full", "diag", "spherical")', "full",
              Rule(choices=_covariance_types)),
        param("detector_reg_covar", float, "added to every covariance diagonal", 1e-4, Rule(low=0.0)),
        param("detector_keep", float, "fraction of training images the detector's thresholds keep (ID-95)", 0.95,
              Rule(0.5, 0.9999)),
        param("nonadaptive_steps", int, "PGD steps of the non-adaptive evaluation, step 2.5 eps / steps", 40, COUNT,
              smoke=5),
        param("apgd_steps", int, "APGD steps of the adaptive cascade (AutoAttack: 100)", 100, COUNT, cpu=50, smoke=10),
        param("apgd_targets", int, "target classes of APGD-T (AutoAttack: 9)", 9, Rule(1, 9), cpu=3, smoke=2),
        param("square_queries", int, "queries of Square per image (AutoAttack: 5,000)", 5_000, COUNT, cpu=1_000,
              smoke=50),
        param("detection_weights", list, "weights of the hinge of the detection-aware attack", [1.0, 10.0],
              Rule(low=0.0, element=float), smoke=[1.0]),
        param("detection_restarts", int, "random restarts of the detection-aware attack", 3, COUNT, cpu=2, smoke=1),
        param("n_minimal", int, "test images whose minimal L-inf perturbation is measured (first seed)", 500, COUNT,
              cpu=200, smoke=50),
        param("minimal_steps", int, "APGD-CE steps of the bisection's attack", 50, COUNT, cpu=20, smoke=5),
        param("minimal_rounds", int, "bisection rounds (the resolution: the largest grid eps / 2**rounds)", 6, COUNT,
              cpu=5, smoke=3),
        param("eval_batch_size", int, "batch of evaluation and attacks", 500, COUNT),
        *run_parameters("06_evaluating_defences", seed="seeds initialisation, shuffling, the attacks' starts and EM",
                        cache="models", cpu="cpu", smoke="cpu"),
    ],
    agree=agree,
    cache="models",
    expected={("paper", "cuda"): "minutes on a GPU", ("paper", "cpu"): "several hours on 2 CPU cores",
              ("cpu", "cpu"): "about an hour on 2 CPU cores", ("smoke", "cpu"): "a few minutes on 2 CPU cores"},
)
