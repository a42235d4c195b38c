"""I-defender's per-class mixtures: nbutils.detect.GMMDetector's batched torch EM against one
scikit-learn GaussianMixture per class.

Data: the 128-d hidden states ("net.relu3") of Defense-GAN's model F on the MNIST training images,
grouped by label (10 classes of about 6,000 states), 5 components with full covariances. Model F
is loaded from ``--weights`` (a state_dict saved with torch.save, or a checkpoint of
nbutils.train), else it is the seeded random-initialised net (the output says so: then only the
timings mean something). Both sides start from the same parameters (weights, means and precisions
of one k-means initialisation, computed once with GMMDetector(max_iter=0)) and run the same number
of EM iterations (tol = 0, --iterations). scikit-learn gets float64 states (float32 runs no faster
there) and init_params="random_from_data", whose cheap draw its given starting parameters replace;
ours gets the float32 states (float32 products on centred data, float64 sums) and also scores its
training states for the thresholds. Per class, the final lower bounds and the mean
log-likelihoods of the states must agree within 1e-4 relative. Prints each side's best time, the
ratio scikit-learn / ours and the machine.

    NBUTILS_DATA=<offline mirror> python3 benchmarks/gmm_fit.py
    python3 benchmarks/gmm_fit.py --weights runs/model_f.pt --device cuda
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from nbutils import data
from nbutils.batching import default_device
from nbutils.detect import GMMDetector, hidden_states
from nbutils.files import load_state
from nbutils.models import mnist_model
from nbutils.report import device_name
from timing import benchmark_arguments, best_times_interleaved

LAYER = "net.relu3"
TOLERANCE = 1e-4  # relative, on lower bounds and mean log-likelihoods


def model_f(weights: str | None, device: torch.device):
    """(model F in eval mode on ``device``, a description of its weights). weights: a file holding the
    Classifier's state_dict, or nbutils.train's checkpoint {"model": state_dict, "history": ...}."""
    model = mnist_model("model_f", seed=0, device=device).eval()
    if weights is None:
        return model, "random init (seed 0): the timings are meaningful, the detector is not"
    state = load_state(weights)
    model.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
    return model, f"weights from {weights}"


def shared_start(features: torch.Tensor, labels: torch.Tensor, n_components: int) -> dict:
    """Starting parameters of every class from one k-means initialisation, stacked over classes:
    weights_init (C, K), means_init (C, K, D), precisions_init (C, K, D, D), float64 on the CPU."""
    start = GMMDetector(n_components, max_iter=0, random_state=0).fit(features, labels).mixtures
    return {name: torch.stack([getattr(m, attribute) for m in start]).cpu()
            for name, attribute in (("weights_init", "weights_"), ("means_init", "means_"),
                                    ("precisions_init", "precisions_"))}


def fit_ours(features, labels, n_components, iterations, start) -> GMMDetector:
    return GMMDetector(n_components, max_iter=iterations, tol=0.0, **start).fit(features, labels)


def fit_sklearn(per_class: list[np.ndarray], n_components, iterations, start) -> list[SklearnGaussianMixture]:
    """One scikit-learn mixture per class, from the shared start, for exactly ``iterations`` EM steps."""
    return [SklearnGaussianMixture(n_components, covariance_type="full", tol=0.0, max_iter=iterations,
                                   init_params="random_from_data", random_state=0,
                                   **{name: value[c].numpy() for name, value in start.items()}).fit(x)
            for c, x in enumerate(per_class)]


def agreement(ours: GMMDetector, theirs: list[SklearnGaussianMixture], per_class: list[np.ndarray]) -> float:
    """The largest relative difference, over classes, of the final lower bounds and of the mean
    log-likelihoods of each class's states."""
    worst = 0.0
    for mixture, reference, x in zip(ours.mixtures, theirs, per_class):
        for a, b in ((mixture.lower_bound_, reference.lower_bound_), (mixture.score(x), reference.score(x))):
            worst = max(worst, abs(a - b) / abs(b))
    return worst


def main():
    parser = benchmark_arguments(__doc__, n_images=60_000, batch_size=1000, repeats=2, imagenet=False)
    parser.add_argument("--weights", default=None, help="model F state_dict (torch.save); default: random init")
    parser.add_argument("--iterations", type=int, default=10, help="EM iterations on both sides (tol = 0)")
    parser.add_argument("--components", type=int, default=5)
    args = parser.parse_args()
    device = default_device(args.device)
    warnings.simplefilter("ignore", ConvergenceWarning)  # tol = 0: a fixed number of iterations on purpose

    model, weights = model_f(args.weights, device)
    mnist = data.mnist(train=True).subset(range(args.n_images))
    features, _ = hidden_states(model, mnist.images, LAYER, batch_size=args.batch_size)
    labels = mnist.labels.to(device)
    per_class = [features[labels == c].double().cpu().numpy() for c in range(10)]
    start = shared_start(features, labels, args.components)

    print(f"machine: {device_name(device)}; torch {torch.__version__}")
    print(f"model F, {weights}; layer {LAYER}: {tuple(features.shape)} hidden states of {mnist.name}, "
          f"classes of {min(map(len, per_class))}..{max(map(len, per_class))}")
    print(f"{args.components} components, full covariances, {args.iterations} EM iterations from a shared start")
    results = {}
    best = best_times_interleaved(
        {"sklearn": lambda: results.update(sklearn=fit_sklearn(per_class, args.components, args.iterations, start)),
         "ours": lambda: results.update(ours=fit_ours(features, labels, args.components, args.iterations, start))},
        device, args.repeats)
    worst = agreement(results["ours"], results["sklearn"], per_class)
    verdict = "agree" if worst <= TOLERANCE else "DISAGREE"
    print(f"lower bounds and mean log-likelihoods {verdict}: largest relative difference {worst:.2e} "
          f"(tolerance {TOLERANCE:.0e})")
    print(f"scikit-learn (10 mixtures, float64, CPU): {best['sklearn']:7.2f} s")
    print(f"ours (one batched fit on {device}):        {best['ours']:7.2f} s")
    print(f"speed-up scikit-learn / ours: {best['sklearn'] / best['ours']:.2f}x")
    if worst > TOLERANCE:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
