"""I-defender: batched per-class fits, thresholds and rejection, hidden-state capture, the chapter's
evaluation, the attacker who knows the detector (eq. 6), mixture selection, and argument checks."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.exceptions import NotFittedError

from nbutils import attacks
from nbutils.detect import (GMMDetector, IllDefinedCovarianceError, LikelihoodHead, evaluate_detection, hidden_states,
                            rejection_aware_loss, select_mixture)
from nbutils.gmm import GaussianMixture
from nbutils.metrics import roc
from nbutils.models import mnist_model
from test_gmm import blobs, rough_start


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


def test_bad_detector_inputs_fail_with_clear_errors():
    features = torch.from_numpy(blobs(n=20))
    labels = torch.arange(60) % 3
    with pytest.raises(ValueError, match="class 1 has 3"):
        GMMDetector(5).fit(features[:11], torch.tensor([0] * 5 + [1] * 3 + [2] * 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        GMMDetector(2).fit(features, labels, n_classes=2)
    flat = features.clone()
    flat[labels == 1] = 1.0  # class 1 collapsed onto one point: no covariance without reg_covar
    with pytest.raises(IllDefinedCovarianceError, match="mixture model of class 1 failed"):
        GMMDetector(2, reg_covar=0.0).fit(flat, labels)
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


def fitted_detector_and_features(seed=0):
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(np.concatenate([rng.normal(c * 3.0, 1.0, (200, 4)) for c in range(3)])).float()
    labels = torch.repeat_interleave(torch.arange(3), 200)
    return GMMDetector(1, covariance_type="diag").fit(features, labels), features, labels


def test_held_out_thresholds_reject_the_asked_share_of_held_out_clean_data():
    from nbutils.detect import held_out_thresholds
    detector, features, labels = fitted_detector_and_features()
    _, held, held_labels = fitted_detector_and_features(seed=1)
    thresholds = held_out_thresholds(detector, held, held_labels, 0.1)
    rejected = detector.score(held, held_labels) < thresholds[held_labels]
    for c in range(3):
        assert rejected[held_labels == c].float().mean().item() == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="false_alarm"):
        held_out_thresholds(detector, held, held_labels, 1.5)


def test_feature_transforms_standardise_and_keep_the_leading_components():
    from nbutils.detect import principal_components, standardiser
    _, features, _ = fitted_detector_and_features()
    standard = standardiser(features)(features)
    assert torch.allclose(standard.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(standard.std(0), torch.ones(4), atol=1e-4)
    projected = principal_components(features, 2)(features)
    assert projected.shape == (600, 2) and projected[:, 0].var() >= projected[:, 1].var()


def test_the_detection_aware_loss_rewards_misclassifying_and_penalises_falling_below_the_threshold():
    from nbutils.detect import detection_aware_loss
    detector, features, labels = fitted_detector_and_features()
    threshold = detector.threshold(0.95)
    logits = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    log_likelihoods = torch.stack([threshold + 1.0, threshold - 4.0])  # row 0 accepted, row 1 rejected as class 0
    output = torch.cat([logits, log_likelihoods.float()], 1)
    loss = detection_aware_loss(detector, keep=0.95, weight=2.0)(output, torch.tensor([1, 1]))
    ce = F.cross_entropy(logits, torch.tensor([1, 1]), reduction="none")
    torch.testing.assert_close(loss, ce - torch.tensor([0.0, 8.0]))


def test_the_auc_over_unflipped_inputs_counts_only_those_the_attack_did_not_flip():
    model = mnist_model("model_e", seed=0).eval()
    x = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    features, logits = hidden_states(model, x, "net.relu2")
    predicted = logits.argmax(1)
    detector = GMMDetector(1, covariance_type="spherical").fit(features, torch.arange(60) % 10)  # every class fitted
    adversarial = attacks.fgsm(model, x, predicted, eps=0.05)
    row = evaluate_detection(detector, model, "net.relu2", x, adversarial, predicted).row
    with torch.no_grad():
        flipped = int((model(adversarial).argmax(1) != predicted).sum())
    assert 0 < flipped < 60 and row["n_unflipped"] == 60 - flipped
    assert row["auc_unflipped_low"] <= row["auc_unflipped"] <= row["auc_unflipped_high"]


def test_the_guarded_evaluation_counts_safe_images_and_its_adaptive_worst_case_is_never_above():
    from nbutils.detect import evaluate_guarded, guarded_outcomes
    model, detector, images, labels = small_detected_net()
    fgsm = attacks.get("fgsm", eps=0.1)
    settings = dict(keep=0.9, non_adaptive=[fgsm], steps=3, weights=[1.0], restarts=1, seed=0)
    rows = evaluate_guarded(detector, model, "net.relu3", images, labels, eps=0.1, **settings)
    plain, adaptive = rows["non_adaptive"].iloc[0], rows["adaptive"].iloc[0]
    correct, accepted = guarded_outcomes(detector, model, "net.relu3", fgsm.run(model, images, labels), labels, keep=0.9)
    clean_correct, clean_accepted = guarded_outcomes(detector, model, "net.relu3", images, labels, keep=0.9)
    assert plain["robust_accuracy"] == pytest.approx((correct | ~accepted).double().mean().item())
    assert plain["clean_accuracy"] == adaptive["clean_accuracy"] == pytest.approx(
        (clean_correct & clean_accepted).double().mean().item())
    assert adaptive["robust_accuracy"] <= plain["robust_accuracy"] and plain["n_images"] == 60
    assert plain["robust_accuracy_low"] <= plain["robust_accuracy"] <= plain["robust_accuracy_high"]
    assert 0 <= adaptive["unconverged_share"] <= adaptive["robust_accuracy"]
    at_zero = evaluate_guarded(detector, model, "net.relu3", images, labels, eps=0.0,
                               **settings | {"non_adaptive": [attacks.get("fgsm", eps=0.0)]})
    safe_clean = (clean_correct | ~clean_accepted).double().mean().item()
    assert at_zero["non_adaptive"]["robust_accuracy"].item() == pytest.approx(safe_clean)
    assert at_zero["adaptive"]["robust_accuracy"].item() == pytest.approx(safe_clean)
