"""The torch Gaussian mixture against scikit-learn's: the same scores for the same parameters, EM
from the same start, scikit-learn's warnings and errors, seeded initialisations, and to_sklearn."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from nbutils.em import IllDefinedCovarianceError
from nbutils.gmm import GaussianMixture

COVARIANCE_TYPES = ["full", "diag", "spherical"]


def blobs(seed: int = 0, n: int = 150, d: int = 4, centres: int = 3, spread: float = 4.0) -> np.ndarray:
    """(centres * n, d) float64 points around centres 0, spread, 2 * spread, ... on the diagonal,
    each blob with its own random linear correlation."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d))) + spread * i
                           for i in range(centres)])


def rough_start(x: np.ndarray, covariance_type: str, k: int = 3, seed: int = 1) -> dict:
    """Starting parameters from one EM step of scikit-learn: weights_init, means_init, precisions_init."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = SklearnGaussianMixture(k, covariance_type=covariance_type, max_iter=1, random_state=seed,
                                       init_params="random_from_data").fit(x)
    return {"weights_init": start.weights_, "means_init": start.means_, "precisions_init": start.precisions_}


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_score_samples_equals_sklearns_for_the_same_parameters(covariance_type):
    x = blobs()
    theirs = SklearnGaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(x)
    ours = GaussianMixture(3, covariance_type=covariance_type, max_iter=0, weights_init=theirs.weights_,
                           means_init=theirs.means_, precisions_init=theirs.precisions_).fit(x)
    test = blobs(seed=5)
    np.testing.assert_allclose(ours.score_samples(test), theirs.score_samples(test), rtol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(test), theirs.predict_proba(test), rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(test), theirs.predict(test))
    np.testing.assert_allclose(ours.precisions_cholesky_, theirs.precisions_cholesky_, rtol=1e-8, atol=1e-12)
    # float32 data: float32 products on centred data, within 1e-5 of scikit-learn on the same numbers
    test32 = test.astype(np.float32)
    np.testing.assert_allclose(ours.score_samples(test32), theirs.score_samples(test32.astype(np.float64)), rtol=1e-5)
    # and back: the scikit-learn estimator built from ours scores alike
    fitted = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(x)
    np.testing.assert_allclose(fitted.to_sklearn().score_samples(test), fitted.score_samples(test), rtol=1e-10)
    assert fitted.to_sklearn().score(test) == pytest.approx(fitted.score(test), rel=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_from_the_same_start_converges_like_sklearn(covariance_type):
    x = blobs(seed=2)
    start = rough_start(x, covariance_type)
    theirs = SklearnGaussianMixture(3, covariance_type=covariance_type, tol=1e-5, **start).fit(x)
    assert theirs.n_iter_ > 3  # several iterations to agree on
    for data, rel in ((x, 1e-10), (torch.from_numpy(x).float(), 1e-4)):
        ours = GaussianMixture(3, covariance_type=covariance_type, tol=1e-5, **start).fit(data)
        assert (ours.n_iter_, ours.converged_) == (theirs.n_iter_, theirs.converged_)
        assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=rel)
        np.testing.assert_allclose(ours.lower_bounds_, theirs.lower_bounds_, rtol=rel)
        assert ours.score(data) == pytest.approx(theirs.score(x), rel=rel)
    np.testing.assert_allclose(GaussianMixture(3, covariance_type=covariance_type, tol=1e-5, **start).fit(x).means_,
                               theirs.means_, rtol=1e-8, atol=1e-10)


def test_max_iter_stops_early_with_sklearns_warning():
    x = blobs(seed=3)
    start = rough_start(x, "full")
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter = 2"):
        ours = GaussianMixture(3, max_iter=2, tol=1e-12, **start).fit(x)
    with pytest.warns(ConvergenceWarning):
        theirs = SklearnGaussianMixture(3, max_iter=2, tol=1e-12, **start).fit(x)
    assert (ours.n_iter_, ours.converged_) == (2, False)
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=1e-10)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data", "random"])
def test_a_seed_gives_an_identical_fit(init_params):
    x = torch.from_numpy(blobs(seed=4))
    first = GaussianMixture(3, init_params=init_params, random_state=7).fit(x)
    second = GaussianMixture(3, init_params=init_params, random_state=7).fit(x)
    for name in ("weights_", "means_", "covariances_"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert first.n_iter_ == second.n_iter_ and isinstance(first.means_, torch.Tensor)


def test_kmeans_initialisation_recovers_well_separated_blobs():
    x = blobs(seed=6, spread=10.0)
    mixture = GaussianMixture(3, max_iter=0, random_state=0).fit(x)  # the k-means start alone
    means = mixture.means_[np.argsort(mixture.means_[:, 0])]
    np.testing.assert_allclose(means, [[10.0 * i] * 4 for i in range(3)], atol=0.4)
    np.testing.assert_allclose(np.sort(mixture.weights_), [1 / 3] * 3, atol=1e-12)
    assert np.isinf(mixture.lower_bound_) and mixture.n_iter_ == 0 and not mixture.converged_


def test_bad_inputs_fail_with_clear_errors():
    x = blobs()
    with pytest.raises(ValueError, match="n_samples >= n_components but got n_components = 5, n_samples = 3"):
        GaussianMixture(5).fit(x[:3])
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        GaussianMixture(2).fit(bad)
    with pytest.raises(ValueError, match=r"X must be 2-D \(n_samples, n_features\), got shape \(450,\)"):
        GaussianMixture(2).fit(x[:, 0])
    with pytest.raises(ValueError, match=r"covariance_type 'tied'; choose one of \['full', 'diag', 'spherical'\]"):
        GaussianMixture(2, covariance_type="tied")
    with pytest.raises(ValueError, match="unknown init_params 'k-medoids'"):
        GaussianMixture(2, init_params="k-medoids")
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 4\), got \(2, 3\)"):
        GaussianMixture(2, means_init=np.zeros((2, 3))).fit(x)
    with pytest.raises(ValueError, match="weights_init must lie in"):
        GaussianMixture(2, weights_init=[0.7, 0.7]).fit(x)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GaussianMixture(2).predict(x)
    assert not hasattr(GaussianMixture(2), "weights_")  # scikit-learn's test of being fitted
    with pytest.raises(ValueError, match="X has 3 features, but this GaussianMixture was fitted with 4 features"):
        GaussianMixture(2).fit(x).score_samples(x[:, :3])
    with pytest.raises(IllDefinedCovarianceError, match="ill-defined empirical covariance"):
        GaussianMixture(2, reg_covar=0.0, init_params="random_from_data", random_state=0).fit(np.ones((10, 3)))
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):  # scikit-learn raises ValueError
        SklearnGaussianMixture(2, reg_covar=0.0, init_params="random_from_data", random_state=0).fit(np.ones((10, 3)))

