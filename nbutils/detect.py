"""I-defender: detecting adversarial inputs by modelling a classifier's hidden states.

Zheng & Hong, "Robust Detection of Adversarial Attacks by Modeling the Intrinsic Properties of Deep
Neural Networks" (NeurIPS 2018). After training, every training image is fed through the classifier
and the hidden state of one fully connected hidden layer is recorded; one Gaussian mixture model
(GMM) per class is fitted to the hidden states of that class with EM. At test time an input is
rejected when the likelihood of its hidden state under the GMM of its *predicted* class falls below a
per-class threshold TH_c; ID-95 / ID-99 are the thresholds that keep 95 % / 99 % of the class's
natural training data. Detection quality is the ROC of clean (negative) against adversarial
(positive) test images, scored by the negative log-likelihood.

The mixtures are :mod:`nbutils.gmm`'s (scikit-learn's ``GaussianMixture`` in torch; every class's
mixture is fitted in one batched EM, and its docstring says which numbers are float32); ROC, AUC
and DeLong intervals are :mod:`nbutils.metrics`'.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .batching import model_device, module_mode, run_batched
from .checks import check_fraction, check_images, check_labels, check_model_fits, check_positive_int
from .em import IllDefinedCovarianceError  # noqa: F401 (what GMMDetector.fit raises, by name)
from .gmm import (GaussianMixture, as_output, as_points, check_initial, check_settings, fit_per_group, fitted_mixtures,
                  log_likelihood, log_likelihood_by_group, not_fitted, pack_groups)
from .metrics import auc_interval, roc, wilson_interval


# ---------------------------------------------------------------------------------------------
# Hidden states

def layer_module(model: nn.Module, layer: str) -> nn.Module:
    """The submodule of ``model`` named ``layer`` (a name from ``model.named_modules()``); a clear
    error listing the names otherwise."""
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a str, a name from model.named_modules(), got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        raise ValueError(f"unknown layer {layer!r}; the model's layers are {[name for name in modules if name]}")
    return modules[layer]


def hidden_states(model: nn.Module, images: torch.Tensor, layer: str, *,
                  batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of the submodule named ``layer`` and the logits, for every image.

    images: (N, C, H, W) in the model's input space. layer: a name from ``model.named_modules()``,
    e.g. "net.relu3" for ``mnist_model("model_f")``; its output at its first call in a forward pass
    is captured by a forward hook, removed afterwards (also on error). Runs in eval mode under
    ``torch.inference_mode``, batched. Returns (features (N, D) float32, the layer output flattened
    from dim 1; logits (N, K) float32), both on the model's device.
    """
    module = layer_module(model, layer)
    images = check_images(images, pixel_range=False)
    check_model_fits(model, images)
    check_positive_int(batch_size, "batch_size")
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    device = model_device(model)
    try:
        with module_mode(model, training=False), torch.inference_mode():
            return run_batched(partial(_hidden_kernel, model, captured, layer), (images,), device=device,
                               batch_size=batch_size, out_device=device)
    finally:
        handle.remove()


def _hidden_kernel(model: nn.Module, captured: list, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, D) float32, logits (B, K) float32) of one batch; ``captured`` is the hook's list."""
    captured.clear()
    logits = model(x)
    if not captured:
        raise ValueError(f"layer {layer!r} did not run in the model's forward pass")
    if not isinstance(captured[0], torch.Tensor):
        raise TypeError(f"layer {layer!r} returns {type(captured[0]).__name__}, not a tensor")
    return captured[0].flatten(1).float(), logits.float()


# ---------------------------------------------------------------------------------------------
# I-defender

def _as_classes(classes, n: int, n_classes: int | None, name: str) -> torch.Tensor:
    """(n,) int64 tensor of class indices in [0, n_classes) from a tensor or an integer array."""
    if not isinstance(classes, torch.Tensor):
        array = np.asarray(classes)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integer class indices, got dtype {array.dtype}")
        classes = torch.from_numpy(array.astype(np.int64))
    return check_labels(classes, n, name=name, num_classes=n_classes)


class GMMDetector:
    """I-defender: one Gaussian mixture per class on the hidden states of that class's training data.

    n_components, covariance_type, reg_covar, max_iter, tol, random_state, init_params as in
    :class:`GaussianMixture`; device: where the mixtures live (None: the features' device).
    weights_init, means_init, precisions_init: optional starting parameters of every class stacked
    on a leading class dimension (n_classes, ...), e.g. to start from another fit.
    Fitted attributes: n_classes_, class_counts_ (n_classes,) int64, train_scores_ (N,) float64 (the
    log-likelihood of each training point under its class's mixture), mixtures.
    """

    def __init__(self, n_components: int = 5, covariance_type: str = "full", reg_covar: float = 1e-6,
                 max_iter: int = 100, tol: float = 1e-3, random_state: int | None = 0,
                 device: str | torch.device | None = None, *, init_params: str = "kmeans", weights_init=None,
                 means_init=None, precisions_init=None):
        self._settings, self.random_state, self.device = check_settings(
            n_components, covariance_type, tol, reg_covar, max_iter, init_params, random_state, device)
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self._fit = None  # the batched fit of every class's mixture (nbutils.em.EMResult)

    @property
    def n_components(self) -> int:
        return self._settings.n_components

    def fit(self, features, labels, n_classes: int | None = None) -> "GMMDetector":
        """Fit the mixture of every class c on the rows of ``features`` (N, D) whose label is c, in one
        batched EM. labels: (N,) int in [0, n_classes); n_classes: default labels.max() + 1. Every
        class needs at least n_components points. Stores each training point's log-likelihood under
        its class's mixture (``train_scores_``) for :meth:`threshold`."""
        points, _ = as_points(features, "features")
        if n_classes is None:
            n_classes = int(_as_classes(labels, points.shape[0], None, "labels").max()) + 1
        check_positive_int(n_classes, "n_classes")
        device = self.device or points.device
        points, labels = points.to(device), _as_classes(labels, points.shape[0], n_classes, "labels").to(device)
        sizes = torch.bincount(labels, minlength=n_classes).tolist()
        small = {c: size for c, size in enumerate(sizes) if size < self.n_components}
        if small:
            raise ValueError(f"every class needs at least n_components = {self.n_components} training points; "
                             + ", ".join(f"class {c} has {size}" for c, size in small.items()))
        given = check_initial(self.weights_init, self.means_init, self.precisions_init, lead=(n_classes,),
                              k=self.n_components, d=points.shape[1],
                              covariance_type=self._settings.covariance_type, device=device)
        self._fit = fit_per_group(points, labels, n_classes, self._settings, given, self.random_state,
                                  [f"class {c}" for c in range(n_classes)])
        self.class_counts_ = torch.tensor(sizes, device=device)
        self.train_scores_ = log_likelihood_by_group(points, labels, self._fit.mixtures)
        by_class, real = pack_groups(self.train_scores_[:, None], labels, n_classes)
        self._sorted_train_scores = by_class[..., 0].masked_fill(~real, math.inf).sort(1).values  # (C, Nmax)
        return self

    def _check_fitted(self):
        """The batched fit (:meth:`fit`); NotFittedError before it."""
        if self._fit is None:
            raise not_fitted(self)
        return self._fit

    @property
    def n_classes_(self) -> int:
        return self._check_fitted().mixtures.weights.shape[0]

    @property
    def mixtures(self) -> list[GaussianMixture]:
        """One fitted :class:`GaussianMixture` (torch attributes) per class, e.g. for ``to_sklearn()``."""
        return fitted_mixtures(self._check_fitted(), self._settings, self.random_state)

    def _checked(self, features, classes) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(features (N, D), classes (N,) int64, both on the mixtures' device; whether features are numpy)."""
        fit = self._check_fitted()
        points, numpy = as_points(features, "features")
        d = fit.mixtures.means.shape[-1]
        if points.shape[1] != d:
            raise ValueError(f"features have {points.shape[1]} dimensions, but the detector was fitted on {d}")
        device = fit.mixtures.weights.device
        return points.to(device), _as_classes(classes, points.shape[0], self.n_classes_, "classes").to(device), numpy

    def class_log_likelihoods(self, features: torch.Tensor) -> torch.Tensor:
        """(N, n_classes) float64 log-likelihood of each row of ``features`` (N, D), a tensor on the
        mixtures' device, under every class's mixture; differentiable in ``features`` (an attacker's
        view, :class:`LikelihoodHead`). Unchecked beyond the fit."""
        mixtures = self._check_fitted().mixtures
        return log_likelihood(features[None].expand(self.n_classes_, -1, -1), mixtures).T

    def score(self, features, classes):
        """I-defender's score: (N,) float64 log p(h | c), the log-likelihood of each hidden state h (a
        row of ``features`` (N, D)) under the Gaussian mixture of its class c (its entry in ``classes``
        (N,); at test time the class the model predicts). The lower, the less h looks like class c's
        training data. A tensor on the mixtures' device, or a numpy array when features come as numpy."""
        hidden, classes, numpy = self._checked(features, classes)
        return as_output(log_likelihood_by_group(hidden, classes, self._fit.mixtures), numpy, hidden.device)

    def threshold(self, keep: float) -> torch.Tensor:
        """(n_classes,) float64 thresholds TH_c that keep the fraction ``keep`` in (0, 1) of each
        class's training data: TH_c is the k_c-th largest training log-likelihood of class c, with
        k_c = ceil(keep * n_c) (keep * n_c rounded to 6 decimals first, so 0.95 * 100 counts as 95;
        at least 1). Exactly k_c of the n_c training points score >= TH_c (more only on ties): the
        smallest count that is at least the fraction keep. keep = 0.95: ID-95; 0.99: ID-99."""
        self._check_fitted()
        keep = check_fraction(keep, "keep")
        kept = torch.round(keep * self.class_counts_.double(), decimals=6).ceil().long().clamp_min(1)
        return self._sorted_train_scores.gather(1, (self.class_counts_ - kept)[:, None])[:, 0]

    def reject(self, features, classes, keep: float):
        """I-defender's rule: (N,) bool, True where log p(h | c) < TH_c, the hidden state's score
        (:meth:`score`) below the threshold of its class for ``keep`` (:meth:`threshold`). A numpy
        array when features come as numpy."""
        thresholds = self.threshold(keep)
        hidden, classes, numpy = self._checked(features, classes)
        log_p = log_likelihood_by_group(hidden, classes, self._fit.mixtures)
        return as_output(log_p < thresholds[classes], numpy, hidden.device)


# ---------------------------------------------------------------------------------------------
# Evaluation of a detector against an attack

@dataclass
class DetectionResult:
    """One attack scored by a detector: ``row`` (a flat dict for a table, rates as fractions) and
    ``roc`` (fpr, tpr, auc) over all adversarial inputs."""

    row: dict
    roc: tuple


def _auc_with_interval(clean: np.ndarray, adversarial: np.ndarray, prefix: str) -> dict:
    """AUC of clean (negative) against adversarial (positive) log-likelihoods, with its DeLong 95 %
    interval; NaN when either side has fewer than 2 scores (DeLong's variance needs 2)."""
    if len(clean) < 2 or len(adversarial) < 2:
        return {prefix: float("nan"), f"{prefix}_low": float("nan"), f"{prefix}_high": float("nan")}
    low, high = auc_interval(clean, adversarial)
    return {prefix: roc(clean, adversarial).auc, f"{prefix}_low": low, f"{prefix}_high": high}


def _rate(flags: torch.Tensor, name: str) -> dict:
    """The fraction of True in ``flags`` with its Wilson 95 % interval (NaN when empty)."""
    n, k = int(flags.numel()), int(flags.sum())
    if n == 0:
        return {name: float("nan"), f"{name}_low": float("nan"), f"{name}_high": float("nan")}
    low, high = wilson_interval(k, n)
    return {name: k / n, f"{name}_low": low, f"{name}_high": high}


def held_out_thresholds(detector: "GMMDetector", features: torch.Tensor, classes: torch.Tensor,
                        false_alarm: float) -> torch.Tensor:
    """(n_classes,) float64 thresholds calibrated on held-out clean data, the standard operating point:
    for each class c, the ``false_alarm``-quantile of the scores of the held-out clean hidden states
    ``features`` (M, D) predicted as c (``classes`` (M,)), so that about that fraction of unseen clean
    inputs is rejected. A class with no held-out image keeps its training threshold at ``1 - false_alarm``."""
    false_alarm = check_fraction(false_alarm, "false_alarm")
    scores = detector.score(features, classes)
    classes = classes.to(scores.device)
    thresholds = detector.threshold(1 - false_alarm).to(scores.device).clone()
    for c in classes.unique().tolist():
        thresholds[c] = torch.quantile(scores[classes == c], false_alarm)
    return thresholds


def evaluate_detection(detector: "GMMDetector", model: nn.Module, layer: str, clean_images: torch.Tensor,
                       adversarial_images: torch.Tensor, labels: torch.Tensor, *, keeps: Sequence[float] = (0.95, 0.99),
                       thresholds: Mapping[str, torch.Tensor] | None = None, transform: Callable | None = None,
                       batch_size: int = 1000) -> DetectionResult:
    """Score ``detector`` (fitted on ``model``'s ``layer``) on clean images and their adversarial
    versions, each scored under the class ``model`` predicts for it.

    clean_images, adversarial_images: (N, C, H, W), pairwise; labels: (N,) true classes. An attack is
    *successful* on an image that the model classifies correctly when clean and wrongly when attacked,
    and leaves it *unflipped* when the model predicts the same class for both. transform: a function
    of the hidden states (N, D) -> (N, D') the detector was fitted on (e.g. :func:`standardiser`);
    thresholds: more operating points by name, (n_classes,) thresholds each (e.g.
    :func:`held_out_thresholds`), beside ID-``keep`` for each of ``keeps``.
    Returns a :class:`DetectionResult` whose row holds: n_images, target_accuracy (on the adversarial
    images, with its Wilson interval), n_successful, n_unflipped, auc_all, auc_successful and
    auc_unflipped (clean against all, successful or unflipped adversarial inputs, DeLong intervals),
    and for each operating point: false_alarm (clean rejected), detection_all, detection_successful
    (adversarial rejected) and evaded (misclassified and accepted, of all attacked images), Wilson
    intervals.
    """
    clean_features, clean_logits = hidden_states(model, clean_images, layer, batch_size=batch_size)
    adv_features, adv_logits = hidden_states(model, adversarial_images, layer, batch_size=batch_size)
    if transform is not None:
        clean_features, adv_features = transform(clean_features), transform(adv_features)
    labels = labels.to(clean_logits.device)
    clean_pred, adv_pred = clean_logits.argmax(1), adv_logits.argmax(1)
    clean_scores = detector.score(clean_features, clean_pred)
    adv_scores = detector.score(adv_features, adv_pred)
    wrong = adv_pred != labels
    successful = (clean_pred == labels) & wrong
    unflipped = adv_pred == clean_pred
    clean_np, adv_np = clean_scores.double().cpu().numpy(), adv_scores.double().cpu().numpy()
    curve = roc(clean_np, adv_np)
    row = {"n_images": int(labels.numel()), **_rate(~wrong, "target_accuracy"), "n_successful": int(successful.sum()),
           "n_unflipped": int(unflipped.sum()), **_auc_with_interval(clean_np, adv_np, "auc_all"),
           **_auc_with_interval(clean_np, adv_np[successful.cpu().numpy()], "auc_successful"),
           **_auc_with_interval(clean_np, adv_np[unflipped.cpu().numpy()], "auc_unflipped")}
    points = {f"{keep:g}": detector.threshold(keep) for keep in keeps} | dict(thresholds or {})
    for name, threshold in points.items():
        threshold = threshold.to(clean_scores.device)
        clean_rejected, adv_rejected = clean_scores < threshold[clean_pred], adv_scores < threshold[adv_pred]
        row.update({**_rate(clean_rejected, f"false_alarm_{name}"), **_rate(adv_rejected, f"detection_all_{name}"),
                    **_rate(adv_rejected[successful], f"detection_successful_{name}"),
                    **_rate(wrong & ~adv_rejected, f"evaded_{name}")})
    return DetectionResult(row, (curve.fpr, curve.tpr, curve.auc))


def guarded_outcomes(detector: "GMMDetector", model: nn.Module, layer: str, images: torch.Tensor,
                     labels: torch.Tensor, *, keep: float, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``model`` guarded by ``detector`` (fitted on its ``layer``) does with each image: (correct,
    accepted), (N,) bool each on the CPU; accepted: the hidden state's score under the predicted
    class at or above that class's threshold for ``keep`` (ID-95 for 0.95). A clean image is served
    when correct and accepted; an attacked one is safe when correct or rejected (:func:`robust_guarded`)."""
    features, logits = hidden_states(model, images, layer, batch_size=batch_size)
    predicted = logits.argmax(1)
    accepted = ~detector.reject(features, predicted, keep=keep)
    return (predicted.cpu() == labels.cpu()), accepted.cpu()


def robust_guarded(detector: "GMMDetector", model: nn.Module, layer: str, adversarial_sets, labels: torch.Tensor, *,
                   keep: float, batch_size: int = 1000) -> torch.Tensor:
    """The per-image worst case of a guarded model over several attacks: (N,) bool, True where every
    adversarial set (a sequence of (N, C, H, W) tensors, pairwise with ``labels``) leaves the image
    classified correctly or rejected by the detector: no attack got a wrong answer through."""
    robust = torch.ones(labels.shape[0], dtype=torch.bool)
    for adversarial in adversarial_sets:
        correct, accepted = guarded_outcomes(detector, model, layer, adversarial, labels, keep=keep,
                                             batch_size=batch_size)
        robust &= correct | ~accepted
    return robust


def _guarded_row(robust: torch.Tensor, eps: float, clean_served: float) -> dict:
    n = robust.shape[0]
    low, high = wilson_interval(int(robust.sum()), n)
    return {"eps": eps, "n_images": n, "clean_accuracy": clean_served, "robust_accuracy": robust.double().mean().item(),
            "robust_accuracy_low": low, "robust_accuracy_high": high}


def evaluate_guarded(detector: "GMMDetector", model: nn.Module, layer: str, images: torch.Tensor, labels: torch.Tensor,
                     *, eps: float, keep: float, non_adaptive: Sequence, steps: int, weights: Sequence[float],
                     restarts: int, seed: int, batch_size: int = 1000) -> dict[str, pd.DataFrame]:
    """``model`` guarded by ``detector`` under both evaluations at L-inf ``eps`` (pixels), in the shape
    of :func:`nbutils.evaluate.evaluate`'s curve: {"non_adaptive", "adaptive"} -> one-row frames with
    eps, n_images, clean_accuracy (served: correct and accepted), robust_accuracy and its Wilson
    interval; "adaptive" adds unconverged_share.

    non_adaptive: attacks (``Attack``) run on ``model`` alone, blind to the detector. The adaptive
    evaluation is their per-image worst case together with PGD (random start, ``restarts``) on
    :class:`LikelihoodHead` with :func:`detection_aware_loss` at each weight, ``steps`` steps of
    2.5 eps / steps. The same attack at 2 x steps measures convergence: unconverged_share is the
    fraction of images that only the longer run breaks (more than a few hundredths: report it).
    images: (N, C, H, W) in [0, 1]; labels: (N,)."""
    from .attacks import pgd

    guarded = dict(detector=detector, model=model, layer=layer, keep=keep, batch_size=batch_size)
    correct, accepted = guarded_outcomes(images=images, labels=labels, **guarded)
    plain = [attack.run(model, images, labels) for attack in non_adaptive]
    head = LikelihoodHead(model, layer, detector)

    def aware(n_steps: int) -> list[torch.Tensor]:
        return [pgd(head, images, labels, eps=eps, alpha=2.5 * eps / n_steps, steps=n_steps, random_start=True,
                    restarts=restarts, seed=seed, loss=detection_aware_loss(detector, keep=keep, weight=weight),
                    batch_size=batch_size) for weight in weights]

    at_steps = aware(steps)
    robust_plain = robust_guarded(adversarial_sets=plain, labels=labels, **guarded)
    robust_aware = robust_guarded(adversarial_sets=plain + at_steps, labels=labels, **guarded)
    robust_longer = robust_aware & robust_guarded(adversarial_sets=aware(2 * steps), labels=labels, **guarded)
    served = (correct & accepted).double().mean().item()
    unconverged = (robust_aware & ~robust_longer).double().mean().item()
    return {"non_adaptive": pd.DataFrame([_guarded_row(robust_plain, eps, served)]),
            "adaptive": pd.DataFrame([_guarded_row(robust_aware, eps, served) | {"unconverged_share": unconverged}])}


# ---------------------------------------------------------------------------------------------
# Transforms of the hidden states a detector may be fitted on

def standardiser(train_features: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """(h - mean) / std per feature, the statistics of ``train_features`` (N, D) (a constant feature
    keeps its scale): the same Gaussian mixtures, fitted on comparable axes."""
    mean, std = train_features.mean(0), train_features.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return lambda features: (features - mean.to(features.device)) / std.to(features.device)


def principal_components(train_features: torch.Tensor, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Projection on the ``k`` leading principal components of ``train_features`` (N, D) -> (N, k):
    fewer, decorrelated dimensions for the mixtures to estimate."""
    k = check_positive_int(k, "k")
    mean = train_features.mean(0)
    _, _, v = torch.linalg.svd((train_features - mean).double(), full_matrices=False)
    basis = v[:k].T.to(train_features.dtype)
    return lambda features: (features - mean.to(features.device)) @ basis.to(features.device)


# ---------------------------------------------------------------------------------------------
# The attacker who knows the detector (the paper's eq. 6)

class LikelihoodHead(nn.Module):
    """``model`` with the detector's per-class log-likelihoods of its hidden state appended: forward
    (N, C, H, W) -> (N, 2K), ``[logits | log p(H(x) | k) for k < K]``, differentiable in x, so that an
    attack of the contract can ascend a loss of both (:func:`rejection_aware_loss`)."""

    def __init__(self, model: nn.Module, layer: str, detector: "GMMDetector"):
        super().__init__()
        self.model, self.layer, self.detector = model, layer, detector
        self.module = layer_module(model, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = self.module.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        log_likelihoods = self.detector.class_log_likelihoods(captured[0].flatten(1))
        return torch.cat([logits, log_likelihoods.to(logits.dtype)], 1)

    def class_scores(self, output: torch.Tensor) -> torch.Tensor:
        """The logits in this head's output (its first K columns): what an attack or a metric that picks
        a class reads (:func:`nbutils.batching.class_scores`)."""
        return output[:, :output.shape[1] // 2]


def detection_aware_loss(detector: "GMMDetector", *, keep: float, weight: float):
    """The standard adaptive loss against a detector (Carlini & Wagner 2017, "Adversarial examples are
    not easily detected"), a per-image loss of :class:`LikelihoodHead`'s output (N, 2K) and the true
    labels y (N,): ``CE(logits, y) - weight * max(0, TH_c - log p(H | c))`` with c the class the logits
    predict now and TH_c its threshold for ``keep``. Ascending it misclassifies while keeping the hidden
    state above the threshold of the class it is then predicted as: accepted by the detector."""
    threshold = detector.threshold(keep)

    def loss(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = output.shape[1] // 2
        logits, log_likelihoods = output[:, :k], output[:, k:]
        predicted = logits.detach().argmax(1, keepdim=True)
        shortfall = threshold.to(log_likelihoods)[predicted[:, 0]] - log_likelihoods.gather(1, predicted)[:, 0]
        return F.cross_entropy(logits, labels, reduction="none") - weight * shortfall.clamp_min(0)

    return loss


def rejection_aware_loss(detector: "GMMDetector", *, keep: float, weight: float):
    """The paper's eq. 6 as a per-image loss of :class:`LikelihoodHead`'s output (N, 2K) and the true
    labels s (N,): ``CE(logits, s) + weight * [every class k != s rejects] * max_{k != s} log p(H | k)``,
    the rejection at the thresholds keeping ``keep`` of the training data. Ascending it misclassifies
    while pulling the hidden state into another class's accepted region. weight 0: cross-entropy."""
    threshold = detector.threshold(keep)

    def loss(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = output.shape[1] // 2
        logits, log_likelihoods = output[:, :k], output[:, k:]
        others = log_likelihoods.scatter(1, labels[:, None], float("-inf"))
        all_reject = (others < threshold.to(others)[None]).all(1)
        best_other = others.amax(1)
        return F.cross_entropy(logits, labels, reduction="none") + weight * torch.where(all_reject, best_other, 0.0)

    return loss


def select_mixture(features: torch.Tensor, labels: torch.Tensor, held_features: torch.Tensor, held_labels: torch.Tensor,
                   *, components: Sequence[int], covariance_types: Sequence[str], reg_covar: float = 1e-6,
                   random_state: int = 0) -> pd.DataFrame:
    """Choose a detector's mixtures without any attack: fit a :class:`GMMDetector` per (number of
    components, covariance type) on ``features`` (N, D) with ``labels`` (N,), and score held-out
    clean features under their own class. Returns one row per configuration: n_components,
    covariance_type, heldout_loglik (mean log-likelihood per held-out image; the higher, the better
    the mixtures describe unseen clean data), seconds (the fit)."""
    rows = []
    for covariance_type in covariance_types:
        for n_components in components:
            start = time.perf_counter()
            detector = GMMDetector(n_components=n_components, covariance_type=covariance_type, reg_covar=reg_covar,
                                   random_state=random_state).fit(features, labels)
            seconds = time.perf_counter() - start
            rows.append({"n_components": n_components, "covariance_type": covariance_type,
                         "heldout_loglik": float(detector.score(held_features, held_labels).double().mean()),
                         "seconds": seconds})
    return pd.DataFrame(rows)
