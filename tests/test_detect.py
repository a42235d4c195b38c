"""I-defender: the torch Gaussian mixture against scikit-learn's, batched fits, thresholds, ROC and
DeLong intervals, hidden-state capture, and argument checks."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from nbutils import attacks
from nbutils.detect import (GaussianMixture, GMMDetector, LikelihoodHead, auc_interval, delong, evaluate_detection,
                            hidden_states, rejection_aware_loss, roc, select_mixture)
from nbutils.models import mnist_model

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


def test_a_batched_fit_equals_fitting_each_mixture_alone():
    rng = np.random.default_rng(8)
    classes = [blobs(seed=10 + c, n=n) for c, n in enumerate((40, 90, 65))]  # sizes differ: padding
    features = torch.from_numpy(np.concatenate(classes))
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([len(c) for c in classes]))
    order = torch.from_numpy(rng.permutation(len(labels)))  # classes interleaved
    starts = [rough_start(c, "full", seed=c.shape[0]) for c in classes]
    stacked = {name: np.stack([s[name] for s in starts]) for name in starts[0]}
    detector = GMMDetector(3, tol=1e-6, **stacked).fit(features[order], labels[order])
    alone = [GaussianMixture(3, tol=1e-6, **start).fit(c) for c, start in zip(classes, starts)]
    assert len({m.n_iter_ for m in alone}) > 1  # the batch shrinks as mixtures converge
    for batched, single in zip(detector.mixtures, alone):
        assert (batched.n_iter_, batched.converged_) == (single.n_iter_, single.converged_)
        assert batched.lower_bound_ == pytest.approx(single.lower_bound_, rel=1e-10)
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            np.testing.assert_allclose(getattr(batched, name).numpy(), getattr(single, name), rtol=1e-8, atol=1e-10)
    scores = detector.score(features, labels)
    expected = np.concatenate([m.score_samples(c) for m, c in zip(alone, classes)])
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.95, 0.99])
def test_thresholds_keep_the_stated_fraction_of_each_class(keep):
    sizes = (100, 37, 250)
    features = torch.from_numpy(np.concatenate([blobs(seed=20 + c, n=n // 3 + 1)[:n] for c, n in enumerate(sizes)]))
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    detector = GMMDetector(2, covariance_type="diag").fit(features, labels)
    thresholds = detector.threshold(keep)
    scores = detector.score(features, labels)
    for c, n in enumerate(sizes):
        kept = math.ceil(round(keep * n, 6))
        assert int((scores[labels == c] >= thresholds[c]).sum()) == kept  # 0.95 * 100 keeps 95
        assert thresholds[c] == torch.sort(scores[labels == c], descending=True).values[kept - 1]
    rejected = detector.reject(features, labels, keep)
    assert int(rejected.sum()) == sum(n - math.ceil(round(keep * n, 6)) for n in sizes)


def test_rejection_uses_the_given_class_and_numpy_stays_numpy():
    features = np.concatenate([blobs(seed=30, n=60, centres=1), blobs(seed=31, n=60, centres=1) + 20])
    labels = np.repeat([0, 1], 60)
    detector = GMMDetector(2, covariance_type="spherical").fit(torch.from_numpy(features), torch.from_numpy(labels))
    swapped = detector.reject(features, 1 - labels, 0.99)
    assert isinstance(swapped, np.ndarray) and swapped.all()  # each blob is far from the other class's mixture
    assert not detector.reject(features, labels, 0.5).all()
    assert isinstance(detector.score(features, labels), np.ndarray)


def test_roc_auc_equals_sklearns_and_the_delong_interval_behaves():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=300).round(1)  # ties
    adversarial = rng.normal(-0.7, 1.0, size=200).round(1)  # lower log-likelihood: detectable
    curve = roc(torch.from_numpy(clean), adversarial)
    truth = np.r_[np.zeros(300), np.ones(200)]
    assert curve.auc == pytest.approx(roc_auc_score(truth, -np.r_[clean, adversarial]), abs=1e-12)
    assert curve.fpr[0] == 0 and curve.tpr[-1] == 1 and np.all(np.diff(curve.thresholds) < 0)
    # DeLong's variance equals the O(mn) structural-component formula it speeds up
    auc, variance = delong(clean, adversarial)
    wins = (-adversarial[:, None] > -clean[None, :]) + 0.5 * (adversarial[:, None] == clean[None, :])
    direct = wins.mean(1).var(ddof=1) / 200 + wins.mean(0).var(ddof=1) / 300
    assert auc == pytest.approx(curve.auc, abs=1e-12) and variance == pytest.approx(direct, rel=1e-10)
    # and agrees loosely with a bootstrap
    picks = [(rng.integers(0, 300, 300), rng.integers(0, 200, 200)) for _ in range(300)]
    boot = np.var([roc_auc_score(truth, -np.r_[clean[i], adversarial[j]]) for i, j in picks])
    assert 0.7 < boot / variance < 1.4
    low, high = auc_interval(clean, adversarial)
    assert low < curve.auc < high
    z = 1.959963984540054
    assert (high - low) == pytest.approx(2 * z * math.sqrt(variance), rel=1e-9)
    more_low, more_high = auc_interval(np.tile(clean, 4), np.tile(adversarial, 4))
    assert more_high - more_low < (high - low) / 1.8
    assert auc_interval([0.0, 0.1], [-5.0, -6.0]) == (1.0, 1.0)  # separated: clipped


def test_hidden_states_capture_the_named_layer_and_remove_the_hook():
    model = mnist_model("model_f", seed=0)
    model.train()
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    features, logits = hidden_states(model, images, "net.relu3", batch_size=3)
    x = images
    for name in ("conv1", "relu1", "conv2", "relu2", "conv3", "relu3"):
        x = getattr(model.net, name)(x)
    assert features.shape == (7, 128) and features.dtype == torch.float32
    torch.testing.assert_close(features, x.flatten(1))
    torch.testing.assert_close(logits, model.net.logits(x.flatten(1)))
    assert model.training and not model.net.relu3._forward_hooks

    def fail_on_batches(_module, inputs, _output):  # the one-image fit check passes, the batched pass fails
        if inputs[0].shape[0] > 1:
            raise RuntimeError("broken layer")
    model.net.logits.register_forward_hook(fail_on_batches)
    with pytest.raises(RuntimeError, match="broken layer"):
        hidden_states(model, images, "net.relu3")
    assert not model.net.relu3._forward_hooks


def test_model_e_hidden_layer():
    model = mnist_model("model_e", seed=0)
    features, _ = hidden_states(model, torch.rand(5, 1, 28, 28), "net.relu2")
    assert features.shape == (5, 200) and bool((features >= 0).all())


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
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(2, reg_covar=0.0, init_params="random_from_data", random_state=0).fit(np.ones((10, 3)))


def test_bad_detector_inputs_fail_with_clear_errors():
    features = torch.from_numpy(blobs(n=20))
    labels = torch.arange(60) % 3
    with pytest.raises(ValueError, match="class 1 has 3"):
        GMMDetector(5).fit(features[:11], torch.tensor([0] * 5 + [1] * 3 + [2] * 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        GMMDetector(2).fit(features, labels, n_classes=2)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        GMMDetector(2).threshold(0.95)
    detector = GMMDetector(2, covariance_type="diag").fit(features, labels)
    for keep in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"keep must lie in \(0, 1\)"):
            detector.reject(features, labels, keep)
    with pytest.raises(ValueError, match="features have 3 dimensions, but the detector was fitted on 4"):
        detector.score(features[:, :3], labels)
    with pytest.raises(ValueError, match="features contains NaN"):
        detector.score(features.masked_fill(features > 5, math.inf), labels)
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 3\)"):
        detector.score(features, labels + 1)
    model = mnist_model("model_f")
    with pytest.raises(ValueError, match=r"unknown layer 'net.relu9'; the model's layers are \[.*'net.relu3'"):
        hidden_states(model, torch.rand(2, 1, 28, 28), "net.relu9")


# ---------------------------------------------------------------------------------------------
# The chapter's evaluation and the attacker who knows the detector



def small_detected_net(seed=0, n=60):
    """An untrained model F, a detector on its 128-d layer fitted to random images with its own
    predictions as labels (every class present), and those images."""
    model = mnist_model("model_f", seed=seed)
    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    features, logits = hidden_states(model, images, "net.relu3")
    labels = torch.arange(n) % 10  # every class, 6 points each
    return model, GMMDetector(n_components=1, covariance_type="diag", reg_covar=1e-3).fit(features, labels), images, labels


def test_class_log_likelihoods_are_the_scores_of_every_class_and_carry_gradients():
    model, detector, images, labels = small_detected_net()
    features, _ = hidden_states(model, images, "net.relu3")
    every = detector.class_log_likelihoods(features)
    for c in range(10):
        torch.testing.assert_close(every[:, c], detector.score(features, torch.full((len(images),), c)))
    x = images[:4].clone().requires_grad_(True)
    head = LikelihoodHead(model, "net.relu3", detector)
    out = head(x)
    assert out.shape == (4, 20)
    torch.testing.assert_close(out[:, :10], model(x))
    (grad,) = torch.autograd.grad(out[:, 10:].sum(), x)
    assert grad.abs().sum() > 0


def test_the_eq6_loss_adds_the_best_other_class_likelihood_only_when_every_other_class_rejects():
    model, detector, images, labels = small_detected_net()
    head = LikelihoodHead(model, "net.relu3", detector)
    with torch.no_grad():
        out = head(images)
    plain = rejection_aware_loss(detector, keep=0.95, weight=0.0)(out, labels)
    torch.testing.assert_close(plain, F.cross_entropy(out[:, :10], labels, reduction="none"))
    weighted = rejection_aware_loss(detector, keep=0.95, weight=2.0)(out, labels)
    others = out[:, 10:].scatter(1, labels[:, None], float("-inf"))
    all_reject = (others < detector.threshold(0.95)[None].float()).all(1)
    expected = plain + 2.0 * torch.where(all_reject, others.amax(1), 0.0)
    torch.testing.assert_close(weighted, expected)
    # far-off images are rejected by every class: there the term is on
    far = head(images * 0 + 1.0).detach()
    assert (rejection_aware_loss(detector, keep=0.95, weight=1.0)(far, labels) != F.cross_entropy(
        far[:, :10], labels, reduction="none")).all()


def test_evaluate_detection_counts_match_a_hand_count():
    model, detector, images, labels = small_detected_net()
    predicted = model(images).argmax(1)
    adversarial = attacks.fgsm(model, images, predicted, eps=0.3)
    result = evaluate_detection(detector, model, "net.relu3", images, adversarial, predicted, keeps=[0.9])
    row = result.row
    adv_predicted = model(adversarial).argmax(1)
    assert row["n_images"] == 60 and row["target_accuracy"] == pytest.approx((adv_predicted == predicted).float().mean().item())
    assert row["n_successful"] == int((adv_predicted != predicted).sum())
    features, _ = hidden_states(model, images, "net.relu3")
    clean_rejected = detector.reject(features, predicted, 0.9)
    assert row["false_alarm_0.9"] == pytest.approx(clean_rejected.float().mean().item())
    assert row["false_alarm_0.9_low"] <= row["false_alarm_0.9"] <= row["false_alarm_0.9_high"]
    adv_features, _ = hidden_states(model, adversarial, "net.relu3")
    clean_scores, adv_scores = detector.score(features, predicted), detector.score(adv_features, adv_predicted)
    assert row["auc_all"] == pytest.approx(roc(clean_scores, adv_scores).auc)
    fpr, tpr, auc = result.roc
    assert auc == row["auc_all"] and fpr[0] == 0 and tpr[-1] == 1


def test_select_mixture_prefers_the_configuration_that_generated_the_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])
    points = torch.cat([centres[i] + torch.randn(400, 2, generator=g) for i in (0, 1)])  # two blobs per class
    labels = torch.zeros(800, dtype=torch.long)
    table = select_mixture(points[::2], labels[::2], points[1::2], labels[1::2], components=[1, 2],
                           covariance_types=["spherical"])
    best = table.iloc[table["heldout_loglik"].idxmax()]
    assert int(best["n_components"]) == 2 and list(table.columns[:3]) == ["n_components", "covariance_type", "heldout_loglik"]
