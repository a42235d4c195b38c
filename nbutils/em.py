"""Batched EM for Gaussian mixtures: the kernels behind :mod:`nbutils.gmm`.

Every function works on M independent mixtures at once, each on its own padded set of points,
along a leading "mixture" dimension: parameters (:class:`Mixtures`), centred point sets
(:class:`Points`), the E- and M-steps as scikit-learn's ``GaussianMixture`` takes them, its
initialisations (k-means++, Lloyd, random) and :func:`fit_em`, which iterates until each mixture
converges. Which numbers are float32 and which float64 is set out in :mod:`nbutils.gmm`. Nothing
here checks its arguments (the public classes of :mod:`nbutils.gmm` do) or imports from the package.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2 * math.pi)
#: Rows per block of the float32 covariance products, whose block sums are added in float64.
_BLOCK_ROWS = 1024
#: scikit-learn's KMeans defaults, used by the "kmeans" initialisation.
_KMEANS_MAX_ITER, _KMEANS_TOL = 300, 1e-4
_ILL_DEFINED = ("some components have ill-defined empirical covariance (for instance caused by singleton or "
                "collapsed samples). Try to decrease the number of components, increase reg_covar, or scale the "
                "input data.")


class IllDefinedCovarianceError(ValueError):
    """EM met a covariance that is not positive definite (a component collapsed onto too few points,
    or onto a flat direction that reg_covar does not lift): scikit-learn's ValueError, with a name."""


# ---------------------------------------------------------------------------------------------
# Parameters and point sets with a leading mixture dimension M

@dataclass
class Mixtures:
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

    def select(self, index: torch.Tensor | slice) -> "Mixtures":
        """The mixtures at ``index`` (along M)."""
        return Mixtures(self.covariance_type, self.weights[index], self.means[index], self.covariances[index],
                        self.precisions_cholesky[index])

    def moved(self, shift: torch.Tensor) -> "Mixtures":
        """The same mixtures with means moved by ``shift`` (M, D)."""
        return Mixtures(self.covariance_type, self.weights, self.means + shift[:, None, :], self.covariances,
                        self.precisions_cholesky)

    def write(self, index: torch.Tensor, part: "Mixtures") -> None:
        """Store ``part`` (the mixtures at ``index``) into these, in place."""
        for name in ("weights", "means", "covariances", "precisions_cholesky"):
            getattr(self, name)[index] = getattr(part, name)

    def copy(self) -> "Mixtures":
        """A copy that shares no memory with these."""
        return Mixtures(self.covariance_type, self.weights.clone(), self.means.clone(), self.covariances.clone(),
                        self.precisions_cholesky.clone())

    @property
    def precisions(self) -> torch.Tensor:
        """Precision matrices (M, K, D, D) for "full", precisions (M, K, D) / (M, K) otherwise."""
        u = self.precisions_cholesky
        return u @ u.mT if self.covariance_type == "full" else u * u

    @property
    def centre(self) -> torch.Tensor:
        """(M, D) the weighted mean of each mixture's means: the point new data are centred on."""
        return (self.weights[:, None, :] @ self.means).squeeze(1)


@dataclass
class EMResult:
    """What batched EM returns: the fitted mixtures and, per mixture (lists of M), the number of
    iterations run, whether the lower-bound change fell below tol, the final lower bound (mean
    log-likelihood of the points before the last M-step, as scikit-learn defines it) and every
    iteration's lower bound."""

    mixtures: Mixtures
    n_iter: list[int]
    converged: list[bool]
    lower_bound: list[float]
    lower_bounds: list[list[float]]


@dataclass
class EMSettings:
    """The fitting options of :class:`nbutils.gmm.GaussianMixture` (see there); checked there."""

    n_components: int
    covariance_type: str
    tol: float
    reg_covar: float
    max_iter: int
    init_params: str


def _row_blocks(n: int) -> tuple[int, int]:
    """(count, rows): the fewest blocks of at most _BLOCK_ROWS rows that n rows, padded to
    count * rows, split into. A padded length gives itself back: count * rows == n."""
    count = -(-n // _BLOCK_ROWS)
    return count, -(-n // count)


def padded_length(n: int) -> int:
    """The number of rows a fit pads n points to (see :func:`_row_blocks`)."""
    count, rows = _row_blocks(n)
    return count * rows


@dataclass
class Points:
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

    def select(self, keep: torch.Tensor) -> "Points":
        """The point sets where ``keep`` (M,) bool is True; scratch buffers shrink without copies."""
        exact = self.exact[keep]
        count = exact.shape[0]
        return Points(exact, exact if self.work is self.exact else self.work[keep], self.mask[keep],
                      None if self.scratch is None else (self.scratch[0][:count], self.scratch[1][:count]))

    def with_scratch(self, k: int) -> "Points":
        """The same points with scratch buffers for K full-covariance components."""
        m, n, d = self.work.shape
        products = self.work.new_empty(m, n * k * d)
        grams = self.work.new_empty(m, k * _row_blocks(n)[0], d, d)
        return Points(self.exact, self.work, self.mask, (products, grams))


def centred(points: torch.Tensor, mask: torch.Tensor | None, centre: torch.Tensor) -> Points:
    """Points (M, N, D), float32 or float64, minus ``centre`` (M, D): float32 points keep float32
    as working dtype (rounded after the float64 subtraction), others work in float64."""
    exact = points.double() - centre[:, None, :]
    return Points(exact, exact.float() if points.dtype == torch.float32 else exact, mask)


def _masked_mean(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(M, D) float64 mean of each mixture's real points."""
    weights = mask.double()
    return (weights[:, None, :] @ points.double()).squeeze(1) / weights.sum(1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Log-densities, the E-step and the M-step

def _log_det_cholesky(mixtures: Mixtures, n_features: int) -> torch.Tensor:
    """(M, K) float64 log-determinant of each precision's Cholesky factor (half that of the precision)."""
    u = mixtures.precisions_cholesky
    if mixtures.covariance_type == "full":
        return u.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if mixtures.covariance_type == "diag":
        return u.log().sum(-1)
    return n_features * u.log()


def _mahalanobis(points: Points, mixtures: Mixtures) -> torch.Tensor:
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


def weighted_log_prob(points: Points, mixtures: Mixtures) -> torch.Tensor:
    """(M, N, K) float64 log(weight_k) + log N(x | mu_k, Sigma_k) of every point under every
    component: log(weight_k) + log det U_k - (D log(2 pi) + |(x - mu_k) U_k|^2) / 2, with U_k the
    Cholesky factor of the precision (U_k @ U_k.T = Sigma_k^-1) and the squared norm
    :func:`_mahalanobis`."""
    d = points.exact.shape[-1]
    log_norm = _log_det_cholesky(mixtures, d) + mixtures.weights.log()
    return -0.5 * (d * _LOG_2PI + _mahalanobis(points, mixtures)) + log_norm[:, None, :]


def _e_step(points: Points, mixtures: Mixtures) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean log-likelihood of each mixture's real points (M,), log responsibilities (M, N, K)), float64."""
    log_prob = weighted_log_prob(points, mixtures)
    log_norm = torch.logsumexp(log_prob, -1)
    mean = (log_norm * points.mask).sum(1) / points.mask.sum(1)
    return mean, log_prob - log_norm[..., None]


def _gaussian_parameters(points: Points, resp: torch.Tensor, reg_covar: float,
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


def _full_covariances(points: Points, resp: torch.Tensor, nk: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(M, K, D, D) float64 sum_n resp_nk (x_n - mu_k)(x_n - mu_k)^T / nk_k, without reg_covar.

    The rows sqrt(resp_nk) (x_n - mu_k) are formed in the working dtype, their Gram matrices are
    taken over blocks of at most _BLOCK_ROWS rows (one batched GEMM) and summed in float64. N
    must be a padded length (:func:`padded_length`)."""
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


def _m_step(points: Points, log_resp: torch.Tensor, settings: EMSettings) -> tuple[Mixtures, torch.Tensor]:
    """scikit-learn's M-step, batched: (new mixtures, (M,) bool ill-defined covariance flags)."""
    resp = log_resp.exp() * points.mask[..., None]
    nk, means, covariances = _gaussian_parameters(points, resp, settings.reg_covar, settings.covariance_type)
    u, failed = _precision_cholesky(covariances, settings.covariance_type)
    return Mixtures(settings.covariance_type, nk / nk.sum(-1, keepdim=True), means, covariances, u), failed


# ---------------------------------------------------------------------------------------------
# Initialisations: k-means++, Lloyd, random

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


def _initial_responsibilities(points: Points, settings: EMSettings, generator: torch.Generator) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------
# Starting parameters and the EM loop

@dataclass
class InitialParameters:
    """User-given starting parameters, float64 with a leading mixture dimension, or None:
    weights (M, K), means (M, K, D), precisions (M, K, D, D) / (M, K, D) / (M, K)."""

    weights: torch.Tensor | None = None
    means: torch.Tensor | None = None
    precisions: torch.Tensor | None = None

    @property
    def complete(self) -> bool:
        return self.weights is not None and self.means is not None and self.precisions is not None


def _initial_mixtures(points: Points, settings: EMSettings, given: InitialParameters,
                      generator: torch.Generator) -> tuple[Mixtures, torch.Tensor]:
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
    return Mixtures(cov_type, weights, means, covariances, u), failed


def fit_em(points: torch.Tensor, mask: torch.Tensor, settings: EMSettings, given: InitialParameters,
           generator: torch.Generator, names: Sequence[str]) -> EMResult:
    """Batched EM: M independent mixtures, mixture m on the points ``points[m][mask[m]]``.

    points: (M, N, D) float32 or float64 (float32: float32 big products, see :mod:`nbutils.gmm`),
    N a padded length (:func:`padded_length`); mask: (M, N) bool. given: starting parameters in the
    points' frame. Each mixture iterates E-step, M-step until its lower bound changes by less than
    ``settings.tol`` or ``settings.max_iter`` iterations have run (scikit-learn's test); finished
    mixtures leave the batch. One host read per iteration (the test and the Cholesky flags).
    Unchecked; names: one label per mixture for the error and warning messages.
    """
    centre = _masked_mean(points, mask)
    data = centred(points, mask, centre)
    if settings.covariance_type == "full":
        data = data.with_scratch(settings.n_components)
    given = InitialParameters(given.weights, None if given.means is None else given.means - centre[:, None, :],
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
    return EMResult(result.moved(centre), n_iter, converged, lower_bound, lower_bounds)


def _raise_if_ill_defined(failed: torch.Tensor, indices: torch.Tensor, names: Sequence[str]) -> None:
    """IllDefinedCovarianceError naming the mixtures whose flag in ``failed`` (host tensor) is set."""
    if bool(failed.any()):
        which = ", ".join(names[i] for i in indices[failed].tolist())
        raise IllDefinedCovarianceError(f"Fitting the mixture model of {which} failed because {_ILL_DEFINED}")


def _warn_unconverged(settings: EMSettings, converged: list[bool], names: Sequence[str]) -> None:
    """scikit-learn's ConvergenceWarning for mixtures that ran out of iterations (none when max_iter = 0),
    attributed to the public fit that called :func:`nbutils.gmm.fit_per_group`."""
    late = [name for name, done in zip(names, converged) if not done]
    if late and settings.max_iter > 0:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"EM of {', '.join(late)} did not converge in max_iter = {settings.max_iter} iterations "
                      f"(tol = {settings.tol}). Try different init parameters, or increase max_iter, tol, or check "
                      "for degenerate data.", ConvergenceWarning, stacklevel=4)
