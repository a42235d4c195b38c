"""Evaluation: batched inference, top-k error, accuracy under FGSM (two protocols), accuracy under
any attack, and the signature of a masked gradient. Every rate is a fraction in [0, 1]."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from statistics import NormalDist
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .attacks import FGSM, Attack, check_loss, fgsm_sweep, fgsm_with_output, loss_gradient
from .batching import class_scores, dropout_on, model_device, module_mode, progress_bar, run_batched
from .checks import (check_choice, check_epsilons, check_fraction, check_images, check_k, check_labels, check_logits,
                     check_model_fits, check_positive_int, check_positive_number, check_seed, checked_inputs)


def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """Class scores (logits) (N, K) as float32 on the CPU, computed in inference mode in batches on the
    model's device (:func:`nbutils.batching.class_scores` of its output).

    images: (N, C, H, W) in the model's input space (pixels for a nbutils Classifier; values
    outside [0, 1] are allowed, e.g. the tutorial convention's unclamped images).
    """
    images = check_images(images, pixel_range=False)
    check_model_fits(model, images)
    check_positive_int(batch_size, "batch_size")
    return class_logits(model, images, batch_size=batch_size, progress=progress)


def class_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int, progress: bool = False,
                 out_device: str | torch.device = "cpu") -> torch.Tensor:
    """:func:`predict` without the argument checks (for callers that checked their inputs once); the
    class scores land on ``out_device``."""
    with torch.inference_mode():
        return run_batched(lambda x: class_scores(model, model(x)).float(), (images,), device=model_device(model),
                           batch_size=batch_size, out_device=out_device, progress=progress, desc="predict")


def topk_probabilities(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and class indices of the k most likely classes, each (N, k)."""
    check_k(k, check_logits(logits).shape[1])
    probs, index = logits.softmax(dim=1).topk(k, dim=1)
    return probs, index


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the label is among the k largest logits. logits: (N, K) finite; 1 <= k <= K."""
    check_k(k, check_logits(logits).shape[1])
    labels = check_labels(labels, logits.shape[0], num_classes=logits.shape[1]).to(logits.device)
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def topk_error(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Top-k error rate: the fraction of images whose label is not among the top k, in [0, 1]."""
    return 1.0 - topk_correct(logits, labels, k).double().mean().item()


def topk_table(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], k: int = 5) -> pd.DataFrame:
    """Tidy top-k predictions: one row per (image, rank) with image (position), true_class, rank
    (1 = most likely), class and confidence (softmax probability)."""
    probs, index = topk_probabilities(logits, k)
    labels = check_labels(labels, logits.shape[0], num_classes=len(class_names))
    return pd.DataFrame([{"image": i, "true_class": class_names[int(labels[i])], "rank": r + 1,
                          "class": class_names[int(index[i, r])], "confidence": float(probs[i, r])}
                         for i in range(logits.shape[0]) for r in range(k)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000) -> float:
    """Fraction of ``images`` whose top-1 prediction is the label, in eval mode (dropout off)."""
    with module_mode(model, training=False):
        return 1.0 - topk_error(predict(model, images, batch_size=batch_size), labels, 1)


def wilson_interval(successes, total, *, confidence: float = 0.95):
    """Wilson score interval of a binomial proportion: (low, high), each a float or an array like
    ``successes`` (counts of ``total`` trials, which may be arrays of the same shape)."""
    import numpy as np
    from scipy.stats import norm

    k, n = np.asarray(successes, dtype=float), np.asarray(total, dtype=float)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"successes must lie in [0, total] with total > 0, got {successes!r} of {total!r}")
    z = norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact at the ends (0 for no successes, 1 for all), in [0, 1] up to rounding elsewhere
    low = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
    high = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def clustered_wilson_interval(successes, trials, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval of a rate pooled over clusters of correlated trials (e.g. the 4 placements of
    a patch on one image): ``successes`` and ``trials`` are per-cluster counts, (N,) each.

    The rate is sum(successes) / sum(trials). Trials of one cluster are not independent, so the
    interval uses Kish's effective sample size: the pooled trials divided by the design effect, the
    ratio of the ratio estimator's cluster-sampling variance to the binomial variance (at least 1,
    so the interval is never narrower than Wilson's on the trials). At a rate of 0 or 1 that ratio
    cannot be estimated, and the interval is Wilson's on the clusters (as if each cluster's trials
    were one). Returns (low, high)."""
    import numpy as np

    s, m = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if s.shape != m.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"successes and trials must be 1-D arrays of the same length, got {s.shape} and {m.shape}")
    if np.any(m <= 0) or np.any(s < 0) or np.any(s > m):
        raise ValueError("each cluster needs trials > 0 and successes in [0, trials]")
    total = m.sum()
    rate = s.sum() / total
    if not 0 < rate < 1 or len(s) == 1:
        effective = float(len(s))
    else:
        cluster_variance = len(s) / (len(s) - 1) * np.sum((s - rate * m) ** 2) / total ** 2
        effective = total / max(1.0, cluster_variance / (rate * (1 - rate) / total))
    return wilson_interval(rate * effective, effective, confidence=confidence)


def with_intervals(table: pd.DataFrame, rate: str = "accuracy", total: str = "n_images", *,
                   percent: bool = False) -> pd.DataFrame:
    """``table`` with ``<rate>_low`` and ``<rate>_high``: the 95 % Wilson interval of each row's rate
    over its ``total`` trials. The rate is a fraction, or a percentage if ``percent`` (and so are
    the bounds)."""
    scale = 100.0 if percent else 1.0
    low, high = wilson_interval((table[rate] / scale * table[total]).round(), table[total])
    return table.assign(**{f"{rate}_low": scale * low, f"{rate}_high": scale * high})


def seed_envelope(table: pd.DataFrame, by: str | Sequence[str], rate: str = "accuracy",
                  total: str | None = "total") -> pd.DataFrame:
    """A quantity measured once per training seed (one row per seed in each ``by`` group), summarised
    across seeds without leaving its range: columns ``by``..., n_seeds, ``rate`` (the mean over seeds),
    ``<rate>_min`` and ``<rate>_max`` (the seeds' extremes) and ``<rate>_low``, ``<rate>_high``: the
    lowest and highest bound of the seeds' 95 % intervals, Wilson's over each seed's ``total`` trials,
    or, with ``total=None``, the table's own ``<rate>_low`` and ``<rate>_high`` (e.g. DeLong's for an
    AUC). That envelope covers both the sampling of each seed's test images and the spread between
    seeds: a published number outside it is one no seed of this run is consistent with."""
    by = [by] if isinstance(by, str) else list(by)
    needed = by + [rate] + ([total] if total is not None else [f"{rate}_low", f"{rate}_high"])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table, which has {list(table.columns)}")
    if total is not None:
        low, high = wilson_interval((table[rate] * table[total]).round(), table[total])
    else:
        low, high = table[f"{rate}_low"], table[f"{rate}_high"]
    bounded = table.assign(_low=low, _high=high)
    grouped = bounded.groupby(by, sort=False)
    return grouped.agg(**{"n_seeds": (rate, "size"), rate: (rate, "mean"), f"{rate}_min": (rate, "min"),
                          f"{rate}_max": (rate, "max"), f"{rate}_low": ("_low", "min"),
                          f"{rate}_high": ("_high", "max")}).reset_index()


def mean_interval(table: pd.DataFrame, by: str | Sequence[str], value: str, *, confidence: float = 0.95) -> pd.DataFrame:
    """The mean of ``value`` over the rows of each ``by`` group (e.g. over seeds) with its Student-t
    interval: columns ``by``..., ``n``, ``mean``, ``low``, ``high`` (low and high NaN where n = 1)."""
    import numpy as np
    from scipy.stats import t

    if value not in table.columns:
        raise ValueError(f"value {value!r} is not a column of the table; it has {list(table.columns)}")
    by = [by] if isinstance(by, str) else list(by)
    missing = [b for b in by if b not in table.columns]
    if missing:
        raise ValueError(f"by {missing} not among the table's columns {list(table.columns)}")
    stats = table.groupby(by, sort=False)[value].agg(["count", "mean", "std"]).reset_index()
    n = stats["count"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t.ppf(0.5 + confidence / 2, n - 1) * stats["std"].to_numpy() / np.sqrt(n)
    return stats.assign(low=stats["mean"] - half, high=stats["mean"] + half).rename(columns={"count": "n"})[
        by + ["n", "mean", "low", "high"]]


#: Keras clips probabilities to [1e-7, 1 - 1e-7] before its cross-entropy: a confidently wrong image
#: costs at most -log(1e-7) = 16.1, the scale of the mixed-batch paper's losses.
KERAS_EPSILON = 1e-7


def _accuracy_loss_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = model(x).float().softmax(1).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
    return probs.argmax(1) == y, -probs.gather(1, y[:, None]).squeeze(1).log()


def accuracy_and_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                      batch_size: int = 1000) -> dict:
    """Test accuracy with its 95 % Wilson interval, and the mean cross-entropy as Keras reports it
    (probabilities clipped to [1e-7, 1 - 1e-7]), in eval mode and inference mode.
    images: (N, C, H, W) in the model's input space (unclamped adversarials allowed); labels: (N,).
    Returns correct, total, accuracy, accuracy_low, accuracy_high, loss."""
    images, labels = checked_inputs(model, images, labels, batch_size, pixel_range=False)
    with module_mode(model, training=False), torch.inference_mode():
        right, losses = run_batched(partial(_accuracy_loss_kernel, model), (images, labels),
                                    device=model_device(model), batch_size=batch_size, out_device="cpu")
    correct, total = int(right.sum()), int(labels.shape[0])
    low, high = wilson_interval(correct, total)
    return {"correct": correct, "total": total, "accuracy": correct / total, "accuracy_low": low,
            "accuracy_high": high, "loss": losses.double().mean().item()}


#: How :func:`fgsm_accuracy` tests a model: the sound way, or the way the paper's source notebook did.
FGSM_PROTOCOLS = ("sound", "source")


def fgsm_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilons, *,
                  protocol: str = "sound", batch_size: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Tables XIII-XIV: per eps, the number of test images still classified correctly under FGSM.

    FGSM as in the source: ``clamp(x + eps * sign(grad), 0, 1)``, eps in pixel units, the gradient of
    the cross-entropy of the plain logits (T = 1). images: (N, 1, H, W) in [0, 1]; labels: (N,).

    * "sound": eval mode (no dropout); every image is attacked and counts as correct when the
      adversarial image is classified correctly. One input gradient per batch serves every eps.
    * "source" (as791's ``test()``, which the paper copied): dropout left on, as the notebook never
      calls ``model.eval()`` (only dropout: BatchNorm, where a model has it, keeps its running
      statistics and is not updated by test data); for each eps a fresh pass takes the gradient with one dropout draw and
      classifies the adversarial image with another; images the first pass gets wrong are skipped
      but stay in the total of N, so they count as wrong. Dropout draws are seeded by ``seed``.

    Returns columns eps, correct, total, accuracy, protocol (one row per eps).
    """
    check_choice(protocol, FGSM_PROTOCOLS, "protocol")
    images, labels = checked_inputs(model, images, labels, batch_size)
    epsilons = check_epsilons(epsilons, upper=1.0)
    check_seed(seed)
    if protocol == "sound":
        with module_mode(model, training=False):
            correct = fgsm_sweep(model, images, labels, epsilons=epsilons, batch_size=batch_size, k=1).correct(1).sum(1).tolist()
    else:
        correct = _source_fgsm_correct(model, images, labels, epsilons, batch_size, seed)
    n = images.shape[0]
    return pd.DataFrame({"eps": epsilons, "correct": correct, "total": n,
                         "accuracy": [c / n for c in correct], "protocol": protocol})


def _source_fgsm_correct(model, images, labels, epsilons, batch_size, seed) -> list[int]:
    """Correct counts per eps under the source notebook's test(): dropout on, wrong first passes skipped.
    One host read per eps, after the whole test set."""
    device = model_device(model)
    torch.manual_seed(seed)
    counts = []
    with dropout_on(model):
        for eps in epsilons:  # the source's FGSM: cross-entropy of the plain logits, clamped to [0, 1]
            kernel = partial(_source_fgsm_kernel, model, fgsm_settings=FGSM(eps=eps).bound(model))
            right = run_batched(kernel, (images, labels), device=device, batch_size=batch_size, out_device=device)
            counts.append(int(right.sum()))
    return counts


def _source_fgsm_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, fgsm_settings: dict) -> torch.Tensor:
    """(B,) bool for one batch of the source's test(): right on the first (noisy) pass, the one FGSM
    takes its gradient from, and on the adversarial image (another dropout draw)."""
    adv, output = fgsm_with_output(model, x, y, **fgsm_settings)
    with torch.inference_mode():
        return (class_scores(model, output).argmax(1) == y) & (class_scores(model, model(adv)).argmax(1) == y)


def _masking_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """(B, 5) per-image statistics of :func:`gradient_masking` for one batch on the device."""
    grad, output = loss_gradient(model, x, y, check_loss("ce", temperature, model))
    logits = class_scores(model, output)
    max_prob = (logits.float() / temperature).softmax(1).amax(1)
    top2 = logits.topk(2, dim=1).values
    return torch.stack([grad.abs().flatten(1).sum(1), (grad == 0).flatten(1).all(1).float(),
                        max_prob, (max_prob == 1.0).float(), top2[:, 0] - top2[:, 1]], 1)


def gradient_masking(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                     batch_size: int = 1000) -> pd.DataFrame:
    """Per image, in eval mode: what FGSM's gradient sees through a softmax at ``temperature``.

    Columns: grad_l1 (L1 norm of the input gradient of the cross-entropy of logits / T), grad_zero
    (every entry exactly 0, so sign(grad) = 0 and FGSM returns the image unchanged), max_prob (the
    float32 softmax maximum at T), saturated (max_prob rounds to exactly 1.0), logit_gap (largest
    minus second-largest logit, unscaled). images: (N, C, H, W) in [0, 1]; labels: (N,).
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    temperature = check_positive_number(temperature, "temperature")
    with module_mode(model, training=False):
        stats = run_batched(partial(_masking_kernel, model, temperature=temperature), (images, labels),
                            device=model_device(model), batch_size=batch_size, out_device="cpu")
    table = pd.DataFrame(stats.double().numpy(), columns=["grad_l1", "grad_zero", "max_prob", "saturated", "logit_gap"])
    return table.astype({"grad_zero": bool, "saturated": bool})


def robustness_table(models: Mapping[str, nn.Module], attacks: Mapping[str, Callable] | Sequence[Callable],
                     images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000,
                     progress: bool = False) -> pd.DataFrame:
    """Accuracy of every model under every attack: one tidy row per (defence, attack).

    models: {defence name: model}, each evaluated in eval mode. attacks: :class:`nbutils.attacks.Attack`
    values (``attacks.get("pgd", eps=0.3, ...)``, listed by their ``name``), or {name: callable
    (model, images, labels) -> adversarial images}. images: (N, C, H, W) in [0, 1]; labels: (N,).
    Columns: defence, attack, accuracy (fraction classified correctly after the attack) with its 95 %
    Wilson interval (accuracy_low, accuracy_high), clean_accuracy, n_images, success (fraction of clean-correct images the attack turned wrong),
    median_linf and median_l2 (size of those successful perturbations; NaN when none), seconds
    (wall time of the attack). progress: a bar over the attacks of each model.
    """
    if not isinstance(attacks, Mapping):
        names = [getattr(attack, "name", None) or getattr(attack, "__name__", repr(attack)) for attack in attacks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"attacks must have distinct names; repeated: {repeated} (attacks.get(..., name=...))")
        attacks = dict(zip(names, attacks))
    for name, attack in attacks.items():
        if not callable(attack):
            raise TypeError(f"attack {name!r} must be callable (model, images, labels) -> adversarial images")
    rows = []
    for defence, model in models.items():
        images, labels = checked_inputs(model, images, labels, batch_size)
        labels = labels.cpu()  # predictions come back to the CPU
        with module_mode(model, training=False):
            clean_right = class_logits(model, images, batch_size=batch_size).argmax(1) == labels
            for attack, run in progress_bar(attacks.items(), desc=f"attacks on {defence}", total=len(attacks),
                                            enabled=progress):
                start = time.perf_counter()  # inputs checked above: an Attack runs without checking them again
                adversarial = run.run(model, images, labels) if isinstance(run, Attack) else run(model, images, labels)
                seconds = time.perf_counter() - start
                if not isinstance(adversarial, torch.Tensor) or adversarial.shape != images.shape:
                    raise ValueError(f"attack {attack!r} returned {type(adversarial).__name__} "
                                     f"{tuple(getattr(adversarial, 'shape', ()))}, not images of shape {tuple(images.shape)}")
                check_images(adversarial, name=f"the output of attack {attack!r} on {defence!r}", pixel_range=False)
                right = class_logits(model, adversarial, batch_size=batch_size).argmax(1) == labels
                turned = clean_right & ~right
                delta = (adversarial - images).flatten(1).cpu()[turned]
                low, high = wilson_interval(int(right.sum()), int(labels.shape[0]))
                rows.append({"defence": defence, "attack": attack, "accuracy": right.double().mean().item(),
                             "accuracy_low": low, "accuracy_high": high,
                             "clean_accuracy": clean_right.double().mean().item(), "n_images": int(labels.shape[0]),
                             "success": turned.sum().item() / max(int(clean_right.sum()), 1),
                             "median_linf": delta.abs().amax(1).median().item() if len(delta) else float("nan"),
                             "median_l2": delta.norm(dim=1).median().item() if len(delta) else float("nan"),
                             "seconds": seconds})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Detection quality: ROC, AUC and DeLong's interval of the AUC

@dataclass(frozen=True)
class ROC:
    """The ROC of a detector: false-positive and true-positive rates (fractions) at each threshold
    of the detection score (-log-likelihood, decreasing, scikit-learn's ``roc_curve``), and the AUC."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def _score_pair(clean_scores, adversarial_scores, *, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both score vectors as 1-D finite float64 numpy arrays of at least ``minimum`` entries."""
    arrays = []
    for value, name in ((clean_scores, "clean_scores"), (adversarial_scores, "adversarial_scores")):
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        if array.ndim != 1 or array.shape[0] < minimum:
            raise ValueError(f"{name} must be a 1-D array of at least {minimum} scores, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        arrays.append(array)
    return arrays[0], arrays[1]


def roc(clean_scores, adversarial_scores) -> ROC:
    """ROC and AUC of detecting adversarial inputs (the positive class) among clean ones by their
    log-likelihood scores (N,) (:meth:`nbutils.detect.GMMDetector.score`: higher = more natural);
    the detection score is -log-likelihood. Uses ``sklearn.metrics.roc_curve`` and ``roc_auc_score``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    clean, adversarial = _score_pair(clean_scores, adversarial_scores)
    truth = np.concatenate([np.zeros(clean.shape[0]), np.ones(adversarial.shape[0])])
    detection = -np.concatenate([clean, adversarial])
    fpr, tpr, thresholds = roc_curve(truth, detection)
    return ROC(fpr, tpr, thresholds, float(roc_auc_score(truth, detection)))


def delong(clean_scores, adversarial_scores) -> tuple[float, float]:
    """(AUC, DeLong's variance of the AUC) of detecting adversarial inputs by -log-likelihood, with
    the midrank formulation (Sun & Xu 2014): ties count one half. At least 2 scores per class."""
    from scipy.stats import rankdata

    clean, adversarial = _score_pair(clean_scores, adversarial_scores, minimum=2)
    positive, negative = -adversarial, -clean
    m, n = positive.shape[0], negative.shape[0]
    ranks = rankdata(np.concatenate([positive, negative]))
    auc = (ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    above_negatives = (ranks[:m] - rankdata(positive)) / n  # per positive: share of negatives it beats
    below_positives = 1 - (ranks[m:] - rankdata(negative)) / m  # per negative: share of positives beating it
    return float(auc), float(above_negatives.var(ddof=1) / m + below_positives.var(ddof=1) / n)


def auc_interval(clean_scores, adversarial_scores, level: float = 0.95) -> tuple[float, float]:
    """(low, high) normal confidence interval of the AUC at ``level`` from DeLong's variance
    (:func:`delong`), clipped to [0, 1]."""
    level = check_fraction(level, "level")
    auc, variance = delong(clean_scores, adversarial_scores)
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(variance)
    return max(0.0, auc - half), min(1.0, auc + half)
