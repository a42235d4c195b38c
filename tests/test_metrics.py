"""Accuracy under FGSM in the sound and the source protocol, the masked-gradient signature, and
the paper's distillation tables; ROC, AUC and DeLong's interval of a detector's AUC."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from nbutils import paper
from nbutils.attacks import fgsm
from nbutils.metrics import (accuracy, auc_interval, delong, fgsm_accuracy, gradient_masking, predict, robustness_table,
                             roc)
from nbutils.models import mnist_model
from conftest import saturated_classifier, tiny_classifier

EPS = [0.0, 0.05, 0.3]


def adv_correct(model, x, y, eps):
    return predict(model, fgsm(model, x, y, eps=eps)).argmax(1) == y


def test_sound_protocol_counts_every_attacked_image_in_eval_mode():
    model = mnist_model("student", seed=0)  # has dropout: the sound protocol must switch it off
    model.train()
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
    table = fgsm_accuracy(model, x, y, EPS, batch_size=16)
    assert model.training  # the caller's mode comes back
    model.eval()
    expected = [int(adv_correct(model, x, y, e).sum()) for e in EPS]
    assert table["correct"].tolist() == expected and (table["total"] == 40).all()
    assert table["accuracy"].iloc[0] == pytest.approx(accuracy(model, x, y))
    assert list(table.columns) == ["eps", "correct", "total", "accuracy", "protocol"]


def test_source_protocol_skips_images_the_first_pass_gets_wrong():
    # without dropout the source protocol is deterministic: correct = clean right AND adversarial right
    model = tiny_classifier()
    x = torch.rand(60, 3, 8, 8)
    y = torch.randint(0, 10, (60,))
    clean_right = predict(model, x).argmax(1) == y
    source = fgsm_accuracy(model, x, y, EPS, protocol="source", batch_size=25)
    sound = fgsm_accuracy(model, x, y, EPS, batch_size=25)
    for i, eps in enumerate(EPS):
        both = clean_right & adv_correct(model, x, y, eps)
        assert source["correct"].iloc[i] == int(both.sum())
        assert sound["correct"].iloc[i] == int(adv_correct(model, x, y, eps).sum())
    assert (source["correct"] <= sound["correct"]).all()


def test_source_protocol_keeps_dropout_on_and_is_seeded():
    model = mnist_model("net", seed=0).eval()
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    y = predict(model, x).argmax(1)  # eval-mode predictions: the sound protocol scores 64 at eps 0
    a = fgsm_accuracy(model, x, y, [0.0, 0.1], protocol="source", seed=3)
    assert a.equals(fgsm_accuracy(model, x, y, [0.0, 0.1], protocol="source", seed=3))
    assert fgsm_accuracy(model, x, y, [0.0], batch_size=64)["correct"].iloc[0] == 64
    assert a["correct"].iloc[0] < 64  # dropout on: two noisy passes disagree with eval mode somewhere
    assert not model.training


def test_gradient_masking_finds_exactly_zero_gradients_on_a_saturated_softmax():
    x = torch.rand(8, 3, 8, 8)
    saturated = saturated_classifier()
    y = predict(saturated, x).argmax(1)
    masked = gradient_masking(saturated, x, y)
    assert masked["grad_zero"].all() and masked["saturated"].all() and (masked["grad_l1"] == 0).all()
    assert (masked["logit_gap"] > 1e3).all()
    seen = gradient_masking(saturated, x, y, temperature=1e6)  # dividing by T undoes the scale
    assert not seen["grad_zero"].any() and not seen["saturated"].any()
    plain = gradient_masking(tiny_classifier(), x, y)
    assert (plain["grad_l1"] > 0).all() and (plain["max_prob"] < 1).all()


@pytest.mark.parametrize("kwargs, error, word", [
    (dict(protocol="paper"), ValueError, "protocol"),
    (dict(epsilons=[0.1, 1.5]), ValueError, "epsilons"),
    (dict(epsilons=[float("nan")]), ValueError, "epsilons"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_fgsm_accuracy_rejects_bad_input(kwargs, error, word):
    model, x, y = tiny_classifier(), torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    args = dict(epsilons=[0.1], **{k: v for k, v in kwargs.items() if k != "epsilons"})
    if "epsilons" in kwargs:
        args["epsilons"] = kwargs["epsilons"]
    with pytest.raises(error, match=word):
        fgsm_accuracy(model, x, y, **args)


def test_the_papers_distillation_tables_are_transcribed_with_their_contradictions():
    table = paper.distillation_fgsm()
    assert len(table) == 18 and (table["total"] == 10_000).all()
    mismatched = table[(table["correct"] / table["total"] - table["accuracy"]).abs() > 1e-9]
    assert mismatched[["model", "eps"]].values.tolist() == [["undefended", 0.3], ["distilled", 0.3]]
    assert set(paper.distillation_source()["accuracy"]) == {0.9708, 0.2484, 0.9033, 0.8801}


def test_robustness_table_counts_accuracy_success_and_distances_by_hand():
    models = {"plain": tiny_classifier(), "saturated": saturated_classifier()}
    x, y = torch.rand(30, 3, 8, 8), torch.randint(0, 10, (30,))
    attacks = {"none": lambda m, a, b: a.clone(), "fgsm": lambda m, a, b: fgsm(m, a, b, eps=0.2)}
    table = robustness_table(models, attacks, x, y, batch_size=7)
    assert table[["defence", "attack"]].values.tolist() == [[d, a] for d in models for a in attacks]
    for (defence, model), (_, rows) in zip(models.items(), table.groupby("defence", sort=False)):
        clean = predict(model, x).argmax(1) == y
        adv = fgsm(model, x, y, eps=0.2)
        right = predict(model, adv).argmax(1) == y
        none, attacked = rows.iloc[0], rows.iloc[1]
        assert none["accuracy"] == none["clean_accuracy"] == pytest.approx(clean.double().mean().item())
        assert none["success"] == 0 and torch.isnan(torch.tensor(none["median_l2"]))
        assert attacked["accuracy"] == pytest.approx(right.double().mean().item())
        turned = clean & ~right
        assert attacked["success"] == pytest.approx(turned.sum().item() / clean.sum().item())
        if turned.any():
            assert attacked["median_linf"] == pytest.approx(0.2, abs=1e-6)
    # FGSM is a no-op on the saturated net: nothing turns
    assert table.query("defence == 'saturated' and attack == 'fgsm'")["success"].item() == 0


def test_wilson_interval_equals_scipys_and_accuracy_and_loss_count_by_hand():
    from scipy.stats import binomtest

    from nbutils.metrics import KERAS_EPSILON, accuracy_and_loss, wilson_interval, with_intervals
    for k, n in ((0, 10), (7, 10), (9895, 10_000), (50, 50)):
        reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((reference.low, reference.high), abs=1e-12)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    for n in (40, 60, 500, 1000):  # exact at the ends: 60 and 500 once gave 0.9999999999999998 and 4e-19
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    table = __import__("pandas").DataFrame({"error": [70.0], "n_images": [10]})  # a percentage: the same interval, x 100
    percent = with_intervals(table, "error", percent=True)
    assert (percent.error_low[0], percent.error_high[0]) == pytest.approx(tuple(100 * b for b in wilson_interval(7, 10)))
    model, x, y = tiny_classifier(), torch.rand(30, 3, 8, 8), torch.randint(0, 10, (30,))
    result = accuracy_and_loss(model, x, y, batch_size=7)
    probs = predict(model, x).softmax(1).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
    right = int((probs.argmax(1) == y).sum())
    assert result["correct"] == right and result["total"] == 30 and result["accuracy"] == right / 30
    assert result["loss"] == pytest.approx(-probs[torch.arange(30), y].log().double().mean().item(), rel=1e-6)
    assert (result["accuracy_low"], result["accuracy_high"]) == wilson_interval(right, 30)
    table = with_intervals(__import__("pandas").DataFrame({"accuracy": [0.7], "n_images": [10]}))
    assert (table["accuracy_low"].item(), table["accuracy_high"].item()) == pytest.approx(wilson_interval(7, 10))


def test_the_source_protocol_turns_on_dropout_only_and_leaves_batchnorm_alone():
    model = mnist_model("simple_cnn", seed=0).eval()
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    fgsm_accuracy(model, x, y, [0.0, 0.1], protocol="source", batch_size=16)
    assert all(torch.equal(value, buffers[name]) for name, value in model.named_buffers())
    assert not model.training


def test_robustness_table_refuses_two_attacks_with_one_name():
    from nbutils import attacks
    model, x, y = tiny_classifier(), torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match="distinct names"):
        robustness_table({"m": model}, [attacks.get("fgsm", eps=0.1), attacks.get("fgsm", eps=0.1)], x, y)


def test_clustered_wilson_matches_wilson_for_independent_trials_and_widens_for_clustered_ones():
    from nbutils.metrics import clustered_wilson_interval, wilson_interval

    # one trial per cluster: the design effect is at most ~1, Wilson's interval on the trials
    single = np.array([1] * 30 + [0] * 70)
    assert clustered_wilson_interval(single, np.ones(100)) == pytest.approx(wilson_interval(30, 100), rel=1e-2)
    # all-or-nothing clusters of 4: as informative as 100 trials, not 400
    clustered = np.array([4] * 30 + [0] * 70)
    low, high = clustered_wilson_interval(clustered, np.full(100, 4))
    assert (low, high) == pytest.approx(wilson_interval(30, 100), rel=1e-2)  # up to the n / (n - 1) correction
    assert high - low > np.subtract(*wilson_interval(120, 400)[::-1])
    with pytest.raises(ValueError, match="successes"):
        clustered_wilson_interval([5], [4])


def test_seed_envelope_covers_every_seed_and_stays_in_the_unit_interval():
    from nbutils.metrics import seed_envelope, wilson_interval

    table = pd.DataFrame({"eps": [0.1, 0.1, 0.1, 0.3, 0.3, 0.3], "accuracy": [0.9, 0.95, 0.92, 0.0, 0.01, 0.0],
                          "total": [100] * 6})
    summary = seed_envelope(table, "eps").set_index("eps")
    assert summary.loc[0.1, "n_seeds"] == 3 and summary.loc[0.1, "accuracy"] == pytest.approx(0.9233333)
    assert summary.loc[0.1, "accuracy_low"] == pytest.approx(wilson_interval(90, 100)[0])
    assert summary.loc[0.1, "accuracy_high"] == pytest.approx(wilson_interval(95, 100)[1])
    assert summary["accuracy_low"].min() >= 0 and summary["accuracy_high"].max() <= 1
    assert summary.loc[0.3, "accuracy_min"] == 0.0 and summary.loc[0.3, "accuracy_max"] == 0.01


# ---------------------------------------------------------------------------------------------
# Detection quality: ROC, AUC and DeLong's interval

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
