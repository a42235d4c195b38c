"""I-defender: detecting adversarial inputs by modelling a classifier's hidden states.

Zheng & Hong, "Robust Detection of Adversarial Attacks by Modeling the Intrinsic Properties of Deep
Neural Networks" (NeurIPS 2018). After training, every training image is fed through the classifier
and the hidden state of one fully connected hidden layer is recorded; one Gaussian mixture model
(GMM) per class is fitted to the hidden states of that class with EM. At test time an input is
rejected when the likelihood of its hidden state under the GMM of its *predicted* class falls below a
per-class threshold TH_c; ID-95 / ID-99 are the thresholds that keep 95 % / 99 % of the class's
natural training data. Detection quality is the ROC of clean (negative) against adversarial
(positive) test images, scored by the negative log-likelihood.

:class:`GaussianMixture` mirrors scikit-learn's ``sklearn.mixture.GaussianMixture`` (names,
parameters, fitted attributes, convergence test, initialisations) in torch, so one can stand in for
the other; ``to_sklearn()`` hands over an equivalent fitted scikit-learn object. Its EM is written
once, over a leading "mixture" dimension (M independent mixtures, each on its own padded set of
points), so that :class:`GMMDetector` fits every class's mixture in one batched computation.

Precision: parameters, log-likelihood sums, responsibilities, covariance sums and Cholesky
factorisations are float64. For float64 data everything is float64 (scikit-learn's numbers to
round-off). For float32 data (hidden states) the two O(N K D^2) products of full covariances, the
whitening ``(x - mu_k) @ U_k`` and the weighted outer-product sums, run in float32 on data centred
on the mixture's mean, the latter summed in float64 over blocks of rows; everything else stays
float64 (relative error of the log-likelihood about 1e-6). TF32 GEMMs on a GPU
(``torch.set_float32_matmul_precision("high")``) would spoil that: keep the default "highest", or
pass float64 features.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .batching import default_device, model_device, module_mode, run_batched
from .checks import (check_choice, check_eps, check_fraction, check_images, check_labels, check_model_fits,
                     check_positive_int, check_seed)
from .metrics import wilson_interval

COVARIANCE_TYPES = ("full", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
_LOG_2PI = math.log(2 * math.pi)
#: Rows per block of the float32 covariance products, whose block sums are added in float64.
_BLOCK_ROWS = 1024
#: scikit-learn's KMeans defaults, used by the "kmeans" initialisation.
_KMEANS_MAX_ITER, _KMEANS_TOL = 300, 1e-4
_ILL_DEFINED = ("some components have ill-defined empirical covariance (for instance caused by singleton or "
                "collapsed samples). Try to decrease the number of components, increase reg_covar, or scale the "
                "input data.")


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
# Batched mixtures: parameters and point sets with a leading mixture dimension M

@dataclass
class _Mixtures:
    """Parameters of M Gaussian mixtures of K components in D dimensions, all float64.

    weights (M, K); means (M, K, D); covariances and precisions_cholesky: (M, K, D, D) for "full",
    (M, K, D) for "diag", (M, K) for "spherical". ``precisions_cholesky`` U gives the precision
    U @ U.T (scikit-learn's convention).
    """

    covariance_type: str
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    precisions_cholesky: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> "_Mixtures":
        """The mixtures at ``index`` (along M)."""
        return _Mixtures(self.covariance_type, self.weights[index], self.means[index], self.covariances[index],
                        self.precisions_cholesky[index])

    def moved(self, shift: torch.Tensor) -> "_Mixtures":
        """The same mixtures with means moved by ``shift`` (M, D)."""
        return _Mixtures(self.covariance_type, self.weights, self.means + shift[:, None, :], self.covariances,
                        self.precisions_cholesky)

    def write(self, index: torch.Tensor, part: "_Mixtures") -> None:
        """Store ``part`` (the mixtures at ``index``) into these, in place."""
        for name in ("weights", "means", "covariances", "precisions_cholesky"):
            getattr(self, name)[index] = getattr(part, name)

    def copy(self) -> "_Mixtures":
        """A copy that shares no memory with these."""
        return _Mixtures(self.covariance_type, self.weights.clone(), self.means.clone(), self.covariances.clone(),
                         self.precisions_cholesky.clone())

    @property
    def precisions(self) -> torch.Tensor:
        """Precision matrices (M, K, D, D) for "full", precisions (M, K, D) / (M, K) otherwise."""
        u = self.precisions_cholesky
        return u @ u.mT if self.covariance_type == "full" else u * u


@dataclass
class _EMResult:
    """What batched EM returns: the fitted mixtures and, per mixture (lists of M), the number of
    iterations run, whether the lower-bound change fell below tol, the final lower bound (mean
    log-likelihood of the points before the last M-step, as scikit-learn defines it) and every
    iteration's lower bound."""

    mixtures: _Mixtures
    n_iter: list[int]
    converged: list[bool]
    lower_bound: list[float]
    lower_bounds: list[list[float]]


@dataclass
class _EMSettings:
    """The fitting options of :class:`GaussianMixture` (see there); checked by the public classes."""

    n_components: int
    covariance_type: str
    tol: float
    reg_covar: float
    max_iter: int
    init_params: str


def _pack_groups(points: torch.Tensor, groups: torch.Tensor, n_groups: int, *,
                 length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, D) split by group into a padded (n_groups, Nmax, D) tensor (zeros at padding) and
    a mask (n_groups, Nmax) bool of real points. groups: (N,) int64 in [0, n_groups). Nmax is
    ``length``, by default the largest group's size. Points keep their order within a group."""
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    sizes = torch.bincount(groups, minlength=n_groups)
    slots = torch.arange(groups.shape[0], device=groups.device) - (torch.cumsum(sizes, 0) - sizes)[sorted_groups]
    n_max = int(sizes.max()) if length is None else length
    packed = points.new_zeros(n_groups, n_max, points.shape[1])
    packed[sorted_groups, slots] = points[order]
    mask = torch.zeros(n_groups, n_max, dtype=torch.bool, device=points.device)
    mask[sorted_groups, slots] = True
    return packed, mask


def _row_blocks(n: int) -> tuple[int, int]:
    """(count, rows): the fewest blocks of at most _BLOCK_ROWS rows that n rows, padded to
    count * rows, split into. A padded length gives itself back: count * rows == n."""
    count = -(-n // _BLOCK_ROWS)
    return count, -(-n // count)


def _padded_length(n: int) -> int:
    """The number of rows a fit pads n points to (see :func:`_row_blocks`)."""
    count, rows = _row_blocks(n)
    return count * rows


@dataclass
class _Points:
    """M point sets centred on a point of their own, as EM reads them.

    exact: (M, N, D) float64; work: the same in the working dtype (float32 for float32 data, where
    it is a separate tensor; else ``exact`` itself); mask: (M, N) bool, True at real points (None
    when only scoring).
    scratch: None, or for full covariances a buffer of M * N * K * D working-dtype numbers and one
    for the (M, K * blocks, D, D) block Gram matrices (:func:`_row_blocks`), reused by every EM
    iteration (on the CPU a fresh allocation that large costs more in page faults than the
    arithmetic done in it).
    """

    exact: torch.Tensor
    work: torch.Tensor
    mask: torch.Tensor | None
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None

    def select(self, keep: torch.Tensor) -> "_Points":
        """The point sets where ``keep`` (M,) bool is True; scratch buffers shrink without copies."""
        exact = self.exact[keep]
        count = exact.shape[0]
        return _Points(exact, exact if self.work is self.exact else self.work[keep], self.mask[keep],
                       None if self.scratch is None else (self.scratch[0][:count], self.scratch[1][:count]))

    def with_scratch(self, k: int) -> "_Points":
        """The same points with scratch buffers for K full-covariance components."""
        m, n, d = self.work.shape
        products = self.work.new_empty(m, n * k * d)
        grams = self.work.new_empty(m, k * _row_blocks(n)[0], d, d)
        return _Points(self.exact, self.work, self.mask, (products, grams))


def _centred(points: torch.Tensor, mask: torch.Tensor | None, centre: torch.Tensor) -> _Points:
    """Points (M, N, D), float32 or float64, minus ``centre`` (M, D): float32 points keep float32
    as working dtype (rounded after the float64 subtraction), others work in float64."""
    exact = points.double() - centre[:, None, :]
    return _Points(exact, exact.float() if points.dtype == torch.float32 else exact, mask)


def _masked_mean(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(M, D) float64 mean of each mixture's real points."""
    weights = mask.double()
    return (weights[:, None, :] @ points.double()).squeeze(1) / weights.sum(1, keepdim=True)


def _mixture_centre(mixtures: _Mixtures) -> torch.Tensor:
    """(M, D) the weighted mean of each mixture's means: the point new data are centred on."""
    return (mixtures.weights[:, None, :] @ mixtures.means).squeeze(1)


def _log_det_cholesky(mixtures: _Mixtures, n_features: int) -> torch.Tensor:
    """(M, K) float64 log-determinant of each precision's Cholesky factor (half that of the precision)."""
    u = mixtures.precisions_cholesky
    if mixtures.covariance_type == "full":
        return u.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if mixtures.covariance_type == "diag":
        return u.log().sum(-1)
    return n_features * u.log()


def _mahalanobis(points: _Points, mixtures: _Mixtures) -> torch.Tensor:
    """(M, N, K) float64 squared Mahalanobis distance of every point to every component (means in
    the points' centred frame).

    Full covariances: one batched GEMM of the points with all K Cholesky factors side by side,
    (M, N, D) @ (M, D, K*D), then each row's squared norm, in the working dtype; diag and
    spherical: scikit-learn's expansion, in float64."""
    exact, work = points.exact, points.work
    m, n, d = exact.shape
    u = mixtures.precisions_cholesky
    if mixtures.covariance_type == "full":
        k = u.shape[1]
        u_work = u.to(work.dtype)
        factors = u_work.permute(0, 2, 1, 3).reshape(m, d, k * d)
        out = None if points.scratch is None else points.scratch[0].view(m, n, k * d)
        y = torch.bmm(work, factors, out=out).view(m, n, k, d)
        y -= (mixtures.means[:, :, None, :] @ u_work.double()).to(work.dtype).view(m, 1, k, d)  # mu_k @ U_k
        return torch.einsum("mnkd,mnkd->mnk", y, y).double()
    precisions = u * u
    means = mixtures.means
    squares = exact * exact
    if mixtures.covariance_type == "diag":
        return ((means * means * precisions).sum(-1)[:, None, :] - 2 * (exact @ (means * precisions).mT)
                + squares @ precisions.mT)
    return ((means * means).sum(-1)[:, None, :] - 2 * (exact @ means.mT) + squares.sum(-1, keepdim=True)) \
        * precisions[:, None, :]


def _weighted_log_prob(points: _Points, mixtures: _Mixtures) -> torch.Tensor:
    """(M, N, K) float64 log(weight_k) + log N(x | mu_k, Sigma_k) of every point."""
    d = points.exact.shape[-1]
    log_norm = _log_det_cholesky(mixtures, d) + mixtures.weights.log()
    return -0.5 * (d * _LOG_2PI + _mahalanobis(points, mixtures)) + log_norm[:, None, :]


def _e_step(points: _Points, mixtures: _Mixtures) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean log-likelihood of each mixture's real points (M,), log responsibilities (M, N, K)), float64."""
    log_prob = _weighted_log_prob(points, mixtures)
    log_norm = torch.logsumexp(log_prob, -1)
    mean = (log_norm * points.mask).sum(1) / points.mask.sum(1)
    return mean, log_prob - log_norm[..., None]


def _gaussian_parameters(points: _Points, resp: torch.Tensor, reg_covar: float,
                         covariance_type: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's ``_estimate_gaussian_parameters``, batched: (nk (M, K), means (M, K, D),
    covariances) from responsibilities (M, N, K) float64, zero at padded points. nk includes
    scikit-learn's 10 * eps; reg_covar is added to every variance."""
    exact = points.exact
    nk = resp.sum(1) + 10 * torch.finfo(torch.float64).eps
    means = (resp.mT @ exact) / nk[..., None]
    if covariance_type == "full":
        covariances = _full_covariances(points, resp, nk, means)
        covariances.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    else:
        covariances = (resp.mT @ (exact * exact)) / nk[..., None] - means * means + reg_covar
        if covariance_type == "spherical":
            covariances = covariances.mean(-1)
    return nk, means, covariances


def _full_covariances(points: _Points, resp: torch.Tensor, nk: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(M, K, D, D) float64 sum_n resp_nk (x_n - mu_k)(x_n - mu_k)^T / nk_k, without reg_covar.

    The rows sqrt(resp_nk) (x_n - mu_k) are formed in the working dtype, their Gram matrices are
    taken over blocks of at most _BLOCK_ROWS rows (one batched GEMM) and summed in float64. N
    must be a padded length (:func:`_padded_length`)."""
    work = points.work
    m, n, d = work.shape
    k = means.shape[1]
    count, block = _row_blocks(n)
    rows_out, grams_out = (None, None) if points.scratch is None else (
        points.scratch[0].view(m, k, n, d), points.scratch[1].view(m * k * count, d, d))
    rows = torch.sub(work[:, None, :, :], means.to(work.dtype)[:, :, None, :], out=rows_out)  # (M, K, N, D)
    rows *= resp.mT.sqrt().to(work.dtype)[..., None]
    blocks = rows.view(m * k * count, block, d)
    grams = torch.bmm(blocks.mT, blocks, out=grams_out).view(m, k, count, d, d)
    return grams.sum(2, dtype=torch.float64) / nk[..., None, None]


def _precision_cholesky(covariances: torch.Tensor, covariance_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Cholesky factors U of the precisions, with U @ U.T = inverse covariance, scikit-learn's
    upper-triangular convention; (M,) bool: a covariance of that mixture is not positive definite).
    No host synchronisation: the caller checks the flags."""
    if covariance_type == "full":
        lower, info = torch.linalg.cholesky_ex(covariances)
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        return torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False).mT, (info != 0).any(-1)
    failed = (covariances <= 0).flatten(1).any(1)
    return covariances.clamp_min(torch.finfo(covariances.dtype).tiny).rsqrt(), failed


def _cholesky_from_precisions(precisions: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Upper-triangular U with U @ U.T = precision (scikit-learn's flip trick), or sqrt(precisions)."""
    if covariance_type == "full":
        return torch.linalg.cholesky(precisions.flip(-1, -2)).flip(-1, -2)
    return precisions.sqrt()


def _covariances_from_precisions(precisions: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """The inverse of each precision (matrix inverse for "full", reciprocal otherwise)."""
    return torch.linalg.inv(precisions) if covariance_type == "full" else 1 / precisions


def _m_step(points: _Points, log_resp: torch.Tensor, settings: _EMSettings) -> tuple[_Mixtures, torch.Tensor]:
    """scikit-learn's M-step, batched: (new mixtures, (M,) bool ill-defined covariance flags)."""
    resp = log_resp.exp() * points.mask[..., None]
    nk, means, covariances = _gaussian_parameters(points, resp, settings.reg_covar, settings.covariance_type)
    u, failed = _precision_cholesky(covariances, settings.covariance_type)
    return _Mixtures(settings.covariance_type, nk / nk.sum(-1, keepdim=True), means, covariances, u), failed


def _squared_distances(points: torch.Tensor, sq_norms: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(M, N, C) squared Euclidean distances of points (M, N, D) to centres (M, C, D), >= 0, in
    the points' dtype. sq_norms: (M, N) squared norms of the points."""
    return (sq_norms[..., None] - 2 * (points @ centres.mT) + (centres * centres).sum(-1)[:, None, :]).clamp_min_(0)


def _kmeans_plusplus(points: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(M, k) int64 indices of k-means++ seeds among each mixture's real points (scikit-learn's greedy
    variant: 2 + int(log k) candidates per step, drawn with probability proportional to the squared
    distance to the nearest seed, keeping the one that lowers the potential most)."""
    rows = torch.arange(points.shape[0], device=points.device)
    sq_norms = (points * points).sum(-1)
    weights = mask.to(points.dtype)
    chosen = [torch.multinomial(weights, 1, generator=generator)[:, 0]]
    closest = _squared_distances(points, sq_norms, points[rows, chosen[0]][:, None, :])[..., 0]  # (M, N)
    for _ in range(1, k):
        draw = closest * weights
        draw = torch.where(draw.sum(1, keepdim=True) > 0, draw, weights)  # every point already a seed
        candidates = torch.multinomial(draw, 2 + int(math.log(k)), replacement=True, generator=generator)
        distances = torch.minimum(_squared_distances(points, sq_norms, points[rows[:, None], candidates]),
                                  closest[..., None])  # (M, N, candidates)
        best = (distances * weights[..., None]).sum(1).argmin(1)
        closest = distances[rows, :, best]
        chosen.append(candidates[rows, best])
    return torch.stack(chosen, 1)


def _kmeans_labels(points: torch.Tensor, mask: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """(M, N) int64 cluster of every point: k-means++ seeds, then Lloyd iterations as scikit-learn's
    KMeans runs them (at most 300; a mixture stops when its labels repeat or its centres move by at
    most 1e-4 times the mean feature variance, in squared distance summed over centres), except
    that an empty cluster keeps its centre. Labels: nearest final centre. One host read per
    iteration (the stopping test)."""
    rows = torch.arange(points.shape[0], device=points.device)
    sq_norms = (points * points).sum(-1)
    weights = mask.to(points.dtype)[..., None]
    centres = points[rows[:, None], _kmeans_plusplus(points, mask, k, generator)]
    mean = _masked_mean(points, mask).to(points.dtype)
    tolerance = _KMEANS_TOL * (((points - mean[:, None, :]) ** 2 * weights).sum(1) / weights.sum(1)).mean(1)
    running = torch.ones_like(tolerance, dtype=torch.bool)
    previous = None
    for _ in range(_KMEANS_MAX_ITER):
        labels = _squared_distances(points, sq_norms, centres).argmin(-1)
        members = F.one_hot(labels, k).to(points.dtype) * weights
        sizes = members.sum(1)[..., None]
        updated = torch.where(sizes > 0, members.mT @ points / sizes.clamp_min(1), centres)
        settled = ((updated - centres) ** 2).sum((1, 2)) <= tolerance
        if previous is not None:
            settled |= (labels == previous).all(1)
        centres = torch.where(running[:, None, None], updated, centres)
        running &= ~settled
        if not bool(running.any()):
            break
        previous = labels
    return _squared_distances(points, sq_norms, centres).argmin(-1)


def _initial_responsibilities(points: _Points, settings: _EMSettings, generator: torch.Generator) -> torch.Tensor:
    """(M, N, K) float64 starting responsibilities by ``settings.init_params``, as scikit-learn's:
    "kmeans" one-hot k-means clusters, "k-means++" one-hot at the seeds, "random" uniform draws
    normalised per point, "random_from_data" one-hot at K distinct random points. k-means runs in
    the working dtype (memory-bound: float32 halves its time)."""
    exact, mask = points.exact, points.mask
    m, n, _ = exact.shape
    k = settings.n_components
    rows = torch.arange(m, device=exact.device)[:, None]
    if settings.init_params == "kmeans":
        return F.one_hot(_kmeans_labels(points.work, mask, k, generator), k).double()
    if settings.init_params == "random":
        draws = torch.rand(m, n, k, generator=generator, device=exact.device, dtype=torch.float64)
        return draws / draws.sum(-1, keepdim=True)
    if settings.init_params == "k-means++":
        seeds = _kmeans_plusplus(points.work, mask, k, generator)
    else:
        keys = torch.rand(m, n, generator=generator, device=exact.device, dtype=torch.float64)
        seeds = keys.masked_fill(~mask, -1).topk(k, dim=1).indices
    resp = exact.new_zeros(m, n, k)
    resp[rows, seeds, torch.arange(k, device=exact.device)] = 1
    return resp


@dataclass
class _InitialParameters:
    """User-given starting parameters, float64 with a leading mixture dimension, or None:
    weights (M, K), means (M, K, D), precisions (M, K, D, D) / (M, K, D) / (M, K)."""

    weights: torch.Tensor | None = None
    means: torch.Tensor | None = None
    precisions: torch.Tensor | None = None

    @property
    def complete(self) -> bool:
        return self.weights is not None and self.means is not None and self.precisions is not None


def _initial_mixtures(points: _Points, settings: _EMSettings, given: _InitialParameters,
                      generator: torch.Generator) -> tuple[_Mixtures, torch.Tensor]:
    """(starting mixtures in the points' centred frame, (M,) ill-defined covariance flags).

    Parameters from ``settings.init_params``' responsibilities (skipped when ``given`` is complete),
    replaced by the given ones (means already centred). With given precisions, the covariances are
    their inverses (scikit-learn keeps the initialisation's covariances until the first M-step)."""
    cov_type, mask = settings.covariance_type, points.mask
    failed = mask.new_zeros(mask.shape[0])
    if given.complete:
        weights, means = given.weights, given.means
    else:
        resp = _initial_responsibilities(points, settings, generator) * mask[..., None]
        nk, means, covariances = _gaussian_parameters(points, resp, settings.reg_covar, cov_type)
        weights = nk / mask.sum(1, keepdim=True) if given.weights is None else given.weights
        means = means if given.means is None else given.means
    if given.precisions is None:
        u, failed = _precision_cholesky(covariances, cov_type)
    else:
        u, covariances = (_cholesky_from_precisions(given.precisions, cov_type),
                          _covariances_from_precisions(given.precisions, cov_type))
    return _Mixtures(cov_type, weights, means, covariances, u), failed


def _fit_em(points: torch.Tensor, mask: torch.Tensor, settings: _EMSettings, given: _InitialParameters,
            generator: torch.Generator, names: Sequence[str]) -> _EMResult:
    """Batched EM: M independent mixtures, mixture m on the points ``points[m][mask[m]]``.

    points: (M, N, D) float32 or float64 (float32: float32 big products, see the module docstring),
    N a padded length (:func:`_padded_length`); mask: (M, N) bool. given: starting parameters in the
    points' frame. Each mixture iterates E-step, M-step until its lower bound changes by less than
    ``settings.tol`` or ``settings.max_iter`` iterations have run (scikit-learn's test); finished
    mixtures leave the batch. One host read per iteration (the test and the Cholesky flags).
    Unchecked; names: one label per mixture for the error and warning messages.
    """
    centre = _masked_mean(points, mask)
    data = _centred(points, mask, centre)
    if settings.covariance_type == "full":
        data = data.with_scratch(settings.n_components)
    given = _InitialParameters(given.weights, None if given.means is None else given.means - centre[:, None, :],
                               given.precisions)
    mixtures, failed = _initial_mixtures(data, settings, given, generator)
    _raise_if_ill_defined(failed.cpu(), torch.arange(len(names)), names)
    m = points.shape[0]
    n_iter, converged, lower_bound = [0] * m, [False] * m, [-math.inf] * m
    lower_bounds: list[list[float]] = [[] for _ in range(m)]
    result = mixtures.copy()
    active = torch.arange(m)  # on the host: which mixtures are still iterating
    previous = torch.full((m,), -math.inf, dtype=torch.float64, device=points.device)
    for iteration in range(1, settings.max_iter + 1):
        bound, log_resp = _e_step(data, mixtures)
        mixtures, failed = _m_step(data, log_resp, settings)
        status = torch.stack([bound, ((bound - previous).abs() < settings.tol).double(), failed.double()]).cpu()
        _raise_if_ill_defined(status[2].bool(), active, names)
        for position, index in enumerate(active.tolist()):
            n_iter[index], converged[index] = iteration, bool(status[1, position])
            lower_bound[index] = float(status[0, position])
            lower_bounds[index].append(lower_bound[index])
        done = status[1].bool() | (iteration == settings.max_iter)
        if bool(done.any()):
            on_device = done.to(points.device)
            result.write(active[done].to(points.device), mixtures.select(on_device))
            if bool(done.all()):
                break
            active, bound, mixtures, data = (active[~done], bound[~on_device], mixtures.select(~on_device),
                                             data.select(~on_device))
        previous = bound
    _warn_unconverged(settings, converged, names)
    return _EMResult(result.moved(centre), n_iter, converged, lower_bound, lower_bounds)


def _raise_if_ill_defined(failed: torch.Tensor, indices: torch.Tensor, names: Sequence[str]) -> None:
    """ValueError naming the mixtures whose flag in ``failed`` (host tensor) is set."""
    if bool(failed.any()):
        which = ", ".join(names[i] for i in indices[failed].tolist())
        raise ValueError(f"Fitting the mixture model of {which} failed because {_ILL_DEFINED}")


def _warn_unconverged(settings: _EMSettings, converged: list[bool], names: Sequence[str]) -> None:
    """scikit-learn's ConvergenceWarning for mixtures that ran out of iterations (none when max_iter = 0)."""
    late = [name for name, done in zip(names, converged) if not done]
    if late and settings.max_iter > 0:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"EM of {', '.join(late)} did not converge in max_iter = {settings.max_iter} iterations "
                      f"(tol = {settings.tol}). Try different init parameters, or increase max_iter, tol, or check "
                      "for degenerate data.", ConvergenceWarning, stacklevel=3)


def _score_points(points: torch.Tensor, mixtures: _Mixtures) -> torch.Tensor:
    """(M, N, K) float64 weighted log-probabilities of points (M, N, D) under M mixtures, the points
    centred on each mixture's weighted mean first (so float32 products stay accurate)."""
    centre = _mixture_centre(mixtures)
    return _weighted_log_prob(_centred(points, None, centre), mixtures.moved(-centre))


# ---------------------------------------------------------------------------------------------
# Argument checks and array conversion

def _as_points(x, name: str) -> tuple[torch.Tensor, bool]:
    """(x as a detached 2-D float32 or float64 tensor, whether x came as numpy / array-like).

    float32 (and float16 / bfloat16 tensors) -> float32; other real numbers -> float64. x must be
    2-D (n_samples, n_features), non-empty and finite."""
    from_numpy = not isinstance(x, torch.Tensor)
    if from_numpy:
        array = np.asarray(x)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        x = torch.from_numpy(array if array.dtype == np.float32 else array.astype(np.float64))
    elif x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.detach()
    x = x.float() if x.is_floating_point() and x.element_size() <= 4 else x.double()
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x, from_numpy


def _as_output(values: torch.Tensor, to_numpy: bool, device: torch.device) -> np.ndarray | torch.Tensor:
    """``values`` as a numpy array, or as a tensor on ``device``."""
    return values.cpu().numpy() if to_numpy else values.to(device)


def _as_classes(classes, n: int, n_classes: int | None, name: str) -> torch.Tensor:
    """(n,) int64 tensor of class indices in [0, n_classes) from a tensor or an integer array."""
    if not isinstance(classes, torch.Tensor):
        array = np.asarray(classes)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integer class indices, got dtype {array.dtype}")
        classes = torch.from_numpy(array.astype(np.int64))
    return check_labels(classes, n, name=name, num_classes=n_classes)


def _check_settings(n_components, covariance_type, tol, reg_covar, max_iter, init_params, random_state,
                    device) -> tuple[_EMSettings, int | None, torch.device | None]:
    """The constructor arguments shared by :class:`GaussianMixture` and :class:`GMMDetector`, checked:
    (settings, random_state, device or None)."""
    check_positive_int(n_components, "n_components")
    check_choice(covariance_type, COVARIANCE_TYPES, "covariance_type")
    check_choice(init_params, INIT_PARAMS, "init_params")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"max_iter must be an int, got {type(max_iter).__name__} {max_iter!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if random_state is not None:
        check_seed(random_state, "random_state")
    settings = _EMSettings(n_components, covariance_type, check_eps(tol, name="tol"),
                           check_eps(reg_covar, name="reg_covar"), max_iter, init_params)
    return settings, random_state, None if device is None else default_device(str(device))


def _check_initial(weights_init, means_init, precisions_init, *, lead: tuple[int, ...], k: int, d: int,
                   covariance_type: str, device: torch.device) -> _InitialParameters:
    """User-given starting parameters as float64 tensors on ``device`` with a leading mixture
    dimension, checked as scikit-learn checks them: shapes ``lead`` + (K,), (K, D), precisions by
    covariance type; weights in [0, 1] summing to 1; precisions symmetric positive definite
    (full) or positive."""
    precision_shape = {"full": (k, d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
    given = []
    for value, name, shape in ((weights_init, "weights_init", (k,)), (means_init, "means_init", (k, d)),
                               (precisions_init, "precisions_init", precision_shape)):
        if value is None:
            given.append(None)
            continue
        tensor = torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                                            dtype=np.float64))
        if tuple(tensor.shape) != lead + shape:
            raise ValueError(f"{name} must have shape {lead + shape}, got {tuple(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        given.append(tensor.reshape((-1,) + shape).to(device))
    weights, means, precisions = given
    if weights is not None and (bool(((weights < 0) | (weights > 1)).any())
                                or bool(((weights.sum(-1) - 1).abs() > 1e-8).any())):
        raise ValueError("weights_init must lie in [0, 1] and sum to 1 over components, got sums "
                         f"{weights.sum(-1).tolist()}")
    if precisions is not None:
        if covariance_type == "full":
            symmetric = torch.allclose(precisions, precisions.mT, rtol=1e-5, atol=1e-8)
            if not symmetric or bool((torch.linalg.eigvalsh(precisions) <= 0).any()):
                raise ValueError("precisions_init must be symmetric positive-definite matrices")
        elif bool((precisions <= 0).any()):
            raise ValueError("precisions_init must be positive")
    return _InitialParameters(weights, means, precisions)


def _seeded_generator(random_state: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device``, seeded by random_state (None: a fresh nondeterministic seed)."""
    generator = torch.Generator(device=device)
    if random_state is None:
        generator.seed()
    else:
        generator.manual_seed(random_state)
    return generator


def _not_fitted(owner: object) -> Exception:
    """scikit-learn's NotFittedError (a ValueError and an AttributeError) for ``owner``."""
    from sklearn.exceptions import NotFittedError

    return NotFittedError(f"This {type(owner).__name__} instance is not fitted yet. Call 'fit' first.")


# ---------------------------------------------------------------------------------------------
# The scikit-learn-compatible estimator

class GaussianMixture:
    """A Gaussian mixture fitted by EM in torch, with scikit-learn's names and semantics.

    Parameters as ``sklearn.mixture.GaussianMixture`` (n_init = 1, no warm start, covariance types
    "full", "diag", "spherical"), plus ``device`` (None: the device of the data passed to fit).
    random_state: int or None; it seeds a torch generator, so the random initialisations differ
    from scikit-learn's draws ("kmeans": k-means++ seeding then Lloyd iterations, in torch).
    X: numpy array (or array-like) or torch tensor (n_samples, n_features); numpy in -> numpy out,
    torch in -> torch out (float64). Fitted attributes (numpy after a numpy fit, float64 tensors on
    the device after a torch fit): weights_, means_, covariances_, precisions_,
    precisions_cholesky_; and converged_, n_iter_, lower_bound_, lower_bounds_, n_features_in_.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, init_params: str = "kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state: int | None = None,
                 device: str | torch.device | None = None):
        self._settings, self.random_state, self.device = _check_settings(
            n_components, covariance_type, tol, reg_covar, max_iter, init_params, random_state, device)
        self.n_components, self.covariance_type, self.tol = n_components, covariance_type, self._settings.tol
        self.reg_covar, self.max_iter, self.init_params = self._settings.reg_covar, max_iter, init_params
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self._mixtures: _Mixtures | None = None
        self._numpy = True

    @classmethod
    def _from_batch(cls, settings: _EMSettings, mixtures: _Mixtures, result: _EMResult, index: int,
               random_state: int | None) -> "GaussianMixture":
        """A fitted (torch) view of mixture ``index`` of a batched fit."""
        mixture = cls(settings.n_components, covariance_type=settings.covariance_type, tol=settings.tol,
                      reg_covar=settings.reg_covar, max_iter=settings.max_iter, init_params=settings.init_params,
                      random_state=random_state, device=mixtures.weights.device)
        mixture._store(mixtures.select(slice(index, index + 1)), result, index, numpy=False)
        return mixture

    def _store(self, mixtures: _Mixtures, result: _EMResult, index: int, *, numpy: bool) -> None:
        self._mixtures, self._numpy = mixtures, numpy
        self.converged_, self.n_iter_ = result.converged[index], result.n_iter[index]
        self.lower_bound_, self.lower_bounds_ = result.lower_bound[index], result.lower_bounds[index]

    def fit(self, X, y=None) -> "GaussianMixture":
        """Fit by EM from the initialisation of ``init_params`` and the given *_init arrays. y: ignored."""
        points, numpy = _as_points(X, "X")
        n, d = points.shape
        if n < self.n_components:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
                             f"n_samples = {n}")
        device = self.device or points.device
        given = _check_initial(self.weights_init, self.means_init, self.precisions_init, lead=(), k=self.n_components,
                               d=d, covariance_type=self.covariance_type, device=device)
        padded = F.pad(points.to(device), (0, 0, 0, _padded_length(n) - n))[None]
        mask = torch.arange(padded.shape[1], device=device)[None] < n
        result = _fit_em(padded, mask, self._settings, given, _seeded_generator(self.random_state, device), ["X"])
        self._store(result.mixtures, result, 0, numpy=numpy)
        return self

    def _log_prob_of(self, X) -> tuple[torch.Tensor, bool, torch.device]:
        """((N, K) float64 weighted log-probabilities, whether X is numpy, X's device)."""
        if self._mixtures is None:
            raise _not_fitted(self)
        points, numpy = _as_points(X, "X")
        if points.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {points.shape[1]} features, but this GaussianMixture was fitted with "
                             f"{self.n_features_in_} features")
        return _score_points(points.to(self._mixtures.weights.device)[None], self._mixtures)[0], numpy, points.device

    def score_samples(self, X):
        """(N,) log-likelihood of each sample under the mixture, float64."""
        log_prob, numpy, device = self._log_prob_of(X)
        return _as_output(torch.logsumexp(log_prob, -1), numpy, device)

    def score(self, X, y=None) -> float:
        """The mean log-likelihood of the samples. y: ignored."""
        log_prob, _, _ = self._log_prob_of(X)
        return torch.logsumexp(log_prob, -1).mean().item()

    def predict(self, X):
        """(N,) int64 most probable component of each sample."""
        log_prob, numpy, device = self._log_prob_of(X)
        return _as_output(log_prob.argmax(-1), numpy, device)

    def predict_proba(self, X):
        """(N, K) float64 posterior probability of each component for each sample."""
        log_prob, numpy, device = self._log_prob_of(X)
        return _as_output((log_prob - torch.logsumexp(log_prob, -1, keepdim=True)).exp(), numpy, device)

    def _attribute(self, name: str):
        """A parameter of the fitted mixture: numpy after a numpy fit, else a float64 tensor."""
        if self._mixtures is None:
            raise _not_fitted(self)
        values = getattr(self._mixtures, name)[0]
        return values.cpu().numpy() if self._numpy else values

    weights_ = property(lambda self: self._attribute("weights"), doc="(K,) mixture weights.")
    means_ = property(lambda self: self._attribute("means"), doc="(K, D) component means.")
    covariances_ = property(lambda self: self._attribute("covariances"),
                            doc="(K, D, D), (K, D) or (K,) covariances, by covariance type.")
    precisions_ = property(lambda self: self._attribute("precisions"), doc="Inverse covariances, shaped alike.")
    precisions_cholesky_ = property(lambda self: self._attribute("precisions_cholesky"),
                                    doc="Cholesky factors U of the precisions (precision = U @ U.T), shaped alike.")

    @property
    def n_features_in_(self) -> int:
        if self._mixtures is None:
            raise _not_fitted(self)
        return self._mixtures.means.shape[-1]

    def to_sklearn(self):
        """An equivalent fitted ``sklearn.mixture.GaussianMixture`` (the same settings and fitted
        attributes, as float64 numpy arrays)."""
        from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

        def array(value):
            return None if value is None else np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value,
                                                         dtype=np.float64)

        if self._mixtures is None:
            raise _not_fitted(self)
        estimator = SklearnGaussianMixture(self.n_components, covariance_type=self.covariance_type, tol=self.tol,
                                           reg_covar=self.reg_covar, max_iter=self.max_iter,
                                           init_params=self.init_params, weights_init=array(self.weights_init),
                                           means_init=array(self.means_init),
                                           precisions_init=array(self.precisions_init),
                                           random_state=self.random_state)
        for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
            setattr(estimator, name, array(getattr(self, name)))
        estimator.converged_, estimator.n_iter_, estimator.n_features_in_ = (self.converged_, self.n_iter_,
                                                                             self.n_features_in_)
        estimator.lower_bound_, estimator.lower_bounds_ = self.lower_bound_, list(self.lower_bounds_)
        return estimator


# ---------------------------------------------------------------------------------------------
# I-defender

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
        self._settings, self.random_state, self.device = _check_settings(
            n_components, covariance_type, tol, reg_covar, max_iter, init_params, random_state, device)
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self._fit: _EMResult | None = None

    @property
    def n_components(self) -> int:
        return self._settings.n_components

    def fit(self, features, labels, n_classes: int | None = None) -> "GMMDetector":
        """Fit the mixture of every class c on the rows of ``features`` (N, D) whose label is c, in one
        batched EM. labels: (N,) int in [0, n_classes); n_classes: default labels.max() + 1. Every
        class needs at least n_components points. Stores each training point's log-likelihood under
        its class's mixture (``train_scores_``) for :meth:`threshold`."""
        points, _ = _as_points(features, "features")
        if n_classes is None:
            n_classes = int(_as_classes(labels, points.shape[0], None, "labels").max()) + 1
        check_positive_int(n_classes, "n_classes")
        device = self.device or points.device
        labels = _as_classes(labels, points.shape[0], n_classes, "labels").to(device)
        sizes = torch.bincount(labels, minlength=n_classes).tolist()
        small = {c: size for c, size in enumerate(sizes) if size < self.n_components}
        if small:
            raise ValueError(f"every class needs at least n_components = {self.n_components} training points; "
                             + ", ".join(f"class {c} has {size}" for c, size in small.items()))
        given = _check_initial(self.weights_init, self.means_init, self.precisions_init, lead=(n_classes,),
                               k=self.n_components, d=points.shape[1],
                               covariance_type=self._settings.covariance_type, device=device)
        packed, mask = _pack_groups(points.to(device), labels, n_classes, length=_padded_length(max(sizes)))
        self._fit = _fit_em(packed, mask, self._settings, given, _seeded_generator(self.random_state, device),
                            [f"class {c}" for c in range(n_classes)])
        self.class_counts_ = torch.tensor(sizes, device=device)
        self.train_scores_ = self._score(points.to(device), labels)
        by_class, real = _pack_groups(self.train_scores_[:, None], labels, n_classes)
        self._sorted_train_scores = by_class[..., 0].masked_fill(~real, math.inf).sort(1).values  # (C, Nmax)
        return self

    def _check_fitted(self) -> _EMResult:
        if self._fit is None:
            raise _not_fitted(self)
        return self._fit

    @property
    def n_classes_(self) -> int:
        return self._check_fitted().mixtures.weights.shape[0]

    @property
    def mixtures(self) -> list[GaussianMixture]:
        """One fitted :class:`GaussianMixture` (torch attributes) per class, e.g. for ``to_sklearn()``."""
        fit = self._check_fitted()
        return [GaussianMixture._from_batch(self._settings, fit.mixtures, fit, c, self.random_state)
                for c in range(self.n_classes_)]

    def _checked(self, features, classes) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(features (N, D), classes (N,) int64, both on the mixtures' device; whether features are numpy)."""
        fit = self._check_fitted()
        points, numpy = _as_points(features, "features")
        d = fit.mixtures.means.shape[-1]
        if points.shape[1] != d:
            raise ValueError(f"features have {points.shape[1]} dimensions, but the detector was fitted on {d}")
        device = fit.mixtures.weights.device
        return points.to(device), _as_classes(classes, points.shape[0], self.n_classes_, "classes").to(device), numpy

    def _score(self, points: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(N,) float64 log-likelihoods of checked points under their classes' mixtures: one pass per
        class present over its rows, so that no class pays for another's size (an attack can send
        every input to one class)."""
        order = torch.argsort(classes, stable=True)
        sizes = torch.bincount(classes, minlength=self.n_classes_).tolist()
        parts = [torch.logsumexp(_score_points(rows[None], self._fit.mixtures.select(slice(c, c + 1)))[0], -1)
                 for c, rows in enumerate(points[order].split(sizes)) if len(rows)]
        scores = torch.empty(points.shape[0], dtype=torch.float64, device=points.device)
        scores[order] = torch.cat(parts)
        return scores

    def class_log_likelihoods(self, features: torch.Tensor) -> torch.Tensor:
        """(N, n_classes) float64 log-likelihood of each row of ``features`` (N, D), a tensor on the
        mixtures' device, under every class's mixture; differentiable in ``features`` (an attacker's
        view, :class:`LikelihoodHead`). Unchecked beyond the fit."""
        mixtures = self._check_fitted().mixtures
        points = features[None].expand(self.n_classes_, -1, -1)
        return torch.logsumexp(_score_points(points, mixtures), -1).T

    def score(self, features, classes):
        """(N,) float64 log-likelihood of each row of ``features`` (N, D) under the mixture of its
        entry in ``classes`` (N,) (at test time: the predicted class). A tensor on the mixtures'
        device, or a numpy array when features come as numpy."""
        points, classes, numpy = self._checked(features, classes)
        return _as_output(self._score(points, classes), numpy, points.device)

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
        """(N,) bool: the row's log-likelihood under its class's mixture is below that class's
        threshold for ``keep`` (:meth:`threshold`); a numpy array when features come as numpy."""
        thresholds = self.threshold(keep)
        points, classes, numpy = self._checked(features, classes)
        return _as_output(self._score(points, classes) < thresholds[classes], numpy, points.device)


# ---------------------------------------------------------------------------------------------
# Detection quality

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
    log-likelihood scores (N,) (:meth:`GMMDetector.score`: higher = more natural); the detection
    score is -log-likelihood. Uses ``sklearn.metrics.roc_curve`` and ``roc_auc_score``."""
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


def evaluate_detection(detector: "GMMDetector", model: nn.Module, layer: str, clean_images: torch.Tensor,
                       adversarial_images: torch.Tensor, labels: torch.Tensor, *, keeps: Sequence[float] = (0.95, 0.99),
                       batch_size: int = 1000) -> DetectionResult:
    """Score ``detector`` (fitted on ``model``'s ``layer``) on clean images and their adversarial
    versions, each scored under the class ``model`` predicts for it.

    clean_images, adversarial_images: (N, C, H, W), pairwise; labels: (N,) true classes. An attack is
    *successful* on an image that the model classifies correctly when clean and wrongly when attacked.
    Returns a :class:`DetectionResult` whose row holds: n_images, target_accuracy (on the adversarial
    images, with its Wilson interval), n_successful, auc_all and auc_successful (clean against all or
    successful adversarial inputs, DeLong intervals), and for each ``keep``: false_alarm (clean
    rejected), detection_all, detection_successful (adversarial rejected) and evaded (misclassified
    and accepted, of all attacked images), Wilson intervals.
    """
    clean_features, clean_logits = hidden_states(model, clean_images, layer, batch_size=batch_size)
    adv_features, adv_logits = hidden_states(model, adversarial_images, layer, batch_size=batch_size)
    labels = labels.to(clean_logits.device)
    clean_pred, adv_pred = clean_logits.argmax(1), adv_logits.argmax(1)
    clean_scores = detector.score(clean_features, clean_pred)
    adv_scores = detector.score(adv_features, adv_pred)
    wrong = adv_pred != labels
    successful = (clean_pred == labels) & wrong
    clean_np, adv_np = clean_scores.double().cpu().numpy(), adv_scores.double().cpu().numpy()
    curve = roc(clean_np, adv_np)
    row = {"n_images": int(labels.numel()), **_rate(~wrong, "target_accuracy"), "n_successful": int(successful.sum()),
           **_auc_with_interval(clean_np, adv_np, "auc_all"),
           **_auc_with_interval(clean_np, adv_np[successful.cpu().numpy()], "auc_successful")}
    for keep in keeps:
        threshold = detector.threshold(keep).to(clean_scores.device)
        clean_rejected, adv_rejected = clean_scores < threshold[clean_pred], adv_scores < threshold[adv_pred]
        row.update({**_rate(clean_rejected, f"false_alarm_{keep:g}"), **_rate(adv_rejected, f"detection_all_{keep:g}"),
                    **_rate(adv_rejected[successful], f"detection_successful_{keep:g}"),
                    **_rate(wrong & ~adv_rejected, f"evaded_{keep:g}")})
    return DetectionResult(row, (curve.fpr, curve.tpr, curve.auc))


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
