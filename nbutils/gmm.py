"""scikit-learn's Gaussian mixture in torch, and the fit of one mixture per group in one batched EM.

:class:`GaussianMixture` mirrors scikit-learn's ``sklearn.mixture.GaussianMixture`` (names,
parameters, fitted attributes, convergence test, initialisations) in torch, so one can stand in for
the other; ``to_sklearn()`` hands over an equivalent fitted scikit-learn object. Its EM
(:mod:`nbutils.em`) is written once, over a leading "mixture" dimension (M independent mixtures,
each on its own padded set of points), so that :func:`fit_per_group` fits one mixture per group
(I-defender's per-class mixtures, :class:`nbutils.detect.GMMDetector`) in one batched computation,
and :func:`log_likelihood` scores points under M mixtures at once.

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

from typing import Sequence

import numpy as np
import torch

from .batching import default_device
from .checks import check_choice, check_eps, check_positive_int, check_seed
from .em import EMResult, EMSettings, InitialParameters, Mixtures, centred, fit_em, padded_length, weighted_log_prob

COVARIANCE_TYPES = ("full", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


# ---------------------------------------------------------------------------------------------
# Many mixtures at once: one per group of points

def pack_groups(points: torch.Tensor, groups: torch.Tensor, n_groups: int, *,
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


def fit_per_group(points: torch.Tensor, groups: torch.Tensor, n_groups: int, settings: EMSettings,
                  given: InitialParameters, random_state: int | None, names: Sequence[str]) -> EMResult:
    """One mixture per group, fitted in one batched EM (:func:`nbutils.em.fit_em`): mixture g on the
    rows of ``points`` (N, D), float32 or float64, whose entry in ``groups`` (N,) int64 is g, in
    [0, n_groups). Every group needs at least ``settings.n_components`` rows. given: starting
    parameters with a leading group dimension (n_groups, ...). The random draws of the
    initialisation come from a generator on the points' device seeded by ``random_state``.
    Unchecked; names: one label per group for the error and warning messages."""
    largest = int(torch.bincount(groups, minlength=n_groups).max())
    packed, mask = pack_groups(points, groups, n_groups, length=padded_length(largest))
    return fit_em(packed, mask, settings, given, _seeded_generator(random_state, points.device), names)


def component_log_prob(points: torch.Tensor, mixtures: Mixtures) -> torch.Tensor:
    """(M, N, K) float64 log(weight_k) + log N(x | mu_k, Sigma_k) of points (M, N, D), float32 or
    float64, under every component of M mixtures (:func:`nbutils.em.weighted_log_prob`). Points and
    means are moved by minus the mixture's centre (:attr:`nbutils.em.Mixtures.centre`) first, so
    that float32 products stay accurate."""
    centre = mixtures.centre
    return weighted_log_prob(centred(points, None, centre), mixtures.moved(-centre))


def log_likelihood(points: torch.Tensor, mixtures: Mixtures) -> torch.Tensor:
    """(M, N) float64 log p(x) = log sum_k weight_k N(x | mu_k, Sigma_k) of points (M, N, D) under
    M mixtures, point set m under mixture m. Differentiable in the points; unchecked."""
    return torch.logsumexp(component_log_prob(points, mixtures), -1)


def log_likelihood_by_group(points: torch.Tensor, groups: torch.Tensor, mixtures: Mixtures) -> torch.Tensor:
    """(N,) float64 log-likelihood of each row of ``points`` (N, D) under the mixture of its group:
    groups (N,) int64 in [0, M), on the points' device. One pass per group present over its rows,
    so that no group pays for another's size (an attack can send every input to one class).
    Unchecked."""
    scores = torch.empty(points.shape[0], dtype=torch.float64, device=points.device)
    for group in groups.unique().tolist():
        rows = groups == group
        scores[rows] = log_likelihood(points[rows][None], mixtures.select(slice(group, group + 1)))[0]
    return scores


# ---------------------------------------------------------------------------------------------
# Argument checks and array conversion

def as_points(x, name: str) -> tuple[torch.Tensor, bool]:
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


def as_output(values: torch.Tensor, to_numpy: bool, device: torch.device) -> np.ndarray | torch.Tensor:
    """``values`` as a numpy array, or as a tensor on ``device``."""
    return values.cpu().numpy() if to_numpy else values.to(device)


def check_settings(n_components, covariance_type, tol, reg_covar, max_iter, init_params, random_state,
                   device) -> tuple[EMSettings, int | None, torch.device | None]:
    """The constructor arguments shared by :class:`GaussianMixture` and
    :class:`nbutils.detect.GMMDetector`, checked: (settings, random_state, device or None)."""
    check_positive_int(n_components, "n_components")
    check_choice(covariance_type, COVARIANCE_TYPES, "covariance_type")
    check_choice(init_params, INIT_PARAMS, "init_params")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"max_iter must be an int, got {type(max_iter).__name__} {max_iter!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if random_state is not None:
        check_seed(random_state, "random_state")
    settings = EMSettings(n_components, covariance_type, check_eps(tol, name="tol"),
                          check_eps(reg_covar, name="reg_covar"), max_iter, init_params)
    return settings, random_state, None if device is None else default_device(str(device))


def check_initial(weights_init, means_init, precisions_init, *, lead: tuple[int, ...], k: int, d: int,
                  covariance_type: str, device: torch.device) -> InitialParameters:
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
    return InitialParameters(weights, means, precisions)


def _seeded_generator(random_state: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device``, seeded by random_state (None: a fresh nondeterministic seed)."""
    generator = torch.Generator(device=device)
    if random_state is None:
        generator.seed()
    else:
        generator.manual_seed(random_state)
    return generator


def not_fitted(owner: object) -> Exception:
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
        self._settings, self.random_state, self.device = check_settings(
            n_components, covariance_type, tol, reg_covar, max_iter, init_params, random_state, device)
        self.n_components, self.covariance_type, self.tol = n_components, covariance_type, self._settings.tol
        self.reg_covar, self.max_iter, self.init_params = self._settings.reg_covar, max_iter, init_params
        self.weights_init, self.means_init, self.precisions_init = weights_init, means_init, precisions_init
        self._mixtures: Mixtures | None = None
        self._numpy = True

    def _store(self, mixtures: Mixtures, result: EMResult, index: int, *, numpy: bool) -> None:
        self._mixtures, self._numpy = mixtures, numpy
        self.converged_, self.n_iter_ = result.converged[index], result.n_iter[index]
        self.lower_bound_, self.lower_bounds_ = result.lower_bound[index], result.lower_bounds[index]

    def fit(self, X, y=None) -> "GaussianMixture":
        """Fit by EM from the initialisation of ``init_params`` and the given *_init arrays. y: ignored."""
        points, numpy = as_points(X, "X")
        n, d = points.shape
        if n < self.n_components:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {self.n_components}, "
                             f"n_samples = {n}")
        device = self.device or points.device
        given = check_initial(self.weights_init, self.means_init, self.precisions_init, lead=(), k=self.n_components,
                              d=d, covariance_type=self.covariance_type, device=device)
        one_group = torch.zeros(n, dtype=torch.int64, device=device)
        result = fit_per_group(points.to(device), one_group, 1, self._settings, given, self.random_state, ["X"])
        self._store(result.mixtures, result, 0, numpy=numpy)
        return self

    def _log_prob_of(self, X) -> tuple[torch.Tensor, bool, torch.device]:
        """((N, K) float64 weighted log-probabilities, whether X is numpy, X's device)."""
        if self._mixtures is None:
            raise not_fitted(self)
        points, numpy = as_points(X, "X")
        if points.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {points.shape[1]} features, but this GaussianMixture was fitted with "
                             f"{self.n_features_in_} features")
        log_prob = component_log_prob(points.to(self._mixtures.weights.device)[None], self._mixtures)[0]
        return log_prob, numpy, points.device

    def score_samples(self, X):
        """(N,) log-likelihood of each sample under the mixture, float64."""
        log_prob, numpy, device = self._log_prob_of(X)
        return as_output(torch.logsumexp(log_prob, -1), numpy, device)

    def score(self, X, y=None) -> float:
        """The mean log-likelihood of the samples. y: ignored."""
        log_prob, _, _ = self._log_prob_of(X)
        return torch.logsumexp(log_prob, -1).mean().item()

    def predict(self, X):
        """(N,) int64 most probable component of each sample."""
        log_prob, numpy, device = self._log_prob_of(X)
        return as_output(log_prob.argmax(-1), numpy, device)

    def predict_proba(self, X):
        """(N, K) float64 posterior probability of each component for each sample."""
        log_prob, numpy, device = self._log_prob_of(X)
        return as_output((log_prob - torch.logsumexp(log_prob, -1, keepdim=True)).exp(), numpy, device)

    def _attribute(self, name: str):
        """A parameter of the fitted mixture: numpy after a numpy fit, else a float64 tensor."""
        if self._mixtures is None:
            raise not_fitted(self)
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
            raise not_fitted(self)
        return self._mixtures.means.shape[-1]

    def to_sklearn(self):
        """An equivalent fitted ``sklearn.mixture.GaussianMixture`` (the same settings and fitted
        attributes, as float64 numpy arrays)."""
        from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

        def array(value):
            return None if value is None else np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value,
                                                         dtype=np.float64)

        if self._mixtures is None:
            raise not_fitted(self)
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


def fitted_mixtures(result: EMResult, settings: EMSettings, random_state: int | None) -> list[GaussianMixture]:
    """One fitted :class:`GaussianMixture` per mixture of a batched fit (:func:`fit_per_group`), with
    float64 torch attributes on the fit's device."""
    device = result.mixtures.weights.device
    mixtures = []
    for index in range(result.mixtures.weights.shape[0]):
        mixture = GaussianMixture(settings.n_components, covariance_type=settings.covariance_type, tol=settings.tol,
                                  reg_covar=settings.reg_covar, max_iter=settings.max_iter,
                                  init_params=settings.init_params, random_state=random_state, device=device)
        mixture._store(result.mixtures.select(slice(index, index + 1)), result, index, numpy=False)
        mixtures.append(mixture)
    return mixtures
