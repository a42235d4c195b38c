"""The patch attack: placement, training, evaluation, the tutorial's stacking, the cache, bad input."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from nbutils.models import Classifier
from nbutils.patch import (cached_patch, evaluate_patch, place_patch, patch_pixels, random_positions,
                           train_patch)
from nbutils.metrics import wilson_interval
from conftest import tiny_classifier


def images(n=12, size=8, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), k=st.integers(1, 8))
def test_patch_lands_exactly_at_the_positions_and_nothing_else_changes(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    patch = torch.rand(3, k, k, generator=g)
    positions = random_positions(n, (8, 8), k, g)
    before = x.clone()
    out = place_patch(x, patch, positions)
    assert torch.equal(x, before), "the input must not be modified"
    expected = x.clone()
    for i, (top, left) in enumerate(positions.tolist()):  # the hand-written reference
        expected[i, :, top:top + k, left:left + k] = patch
    assert torch.equal(out, expected)


def test_positions_are_uniform_over_every_valid_corner():
    positions = random_positions(20_000, (6, 5), 3, torch.Generator().manual_seed(0))
    assert positions[:, 0].min() == 0 and positions[:, 0].max() == 3  # H - k, inclusive
    assert positions[:, 1].min() == 0 and positions[:, 1].max() == 2
    counts = torch.bincount(positions[:, 0] * 3 + positions[:, 1], minlength=12).double()
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_gradient_reaches_the_patch_and_never_the_model():
    model = tiny_classifier()
    for p in model.parameters():  # even a model left trainable gets no gradient
        p.requires_grad_(True)
    weights = [p.detach().clone() for p in model.parameters()]
    trained = train_patch(model, images(16), target=3, size=4, epochs=2, batch_size=4, seed=0, progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert not torch.allclose(trained.patch, torch.full_like(trained.patch, 0.5)), "the patch never moved"
    assert trained.patch.min() >= 0 and trained.patch.max() <= 1


def test_training_raises_the_target_rate_and_lowers_the_loss():
    model = tiny_classifier()
    x = images(64)
    trained = train_patch(model, x, target=7, size=5, epochs=6, batch_size=8, lr=0.5, seed=0, progress=False)
    assert trained.loss[-1] < trained.loss[0]
    assert trained.target_rate[-1] > trained.target_rate[0]
    assert len(trained.train_index) + len(trained.val_index) == 64 and len(trained.val_index) == 6


def test_training_is_identical_under_a_seed_and_differs_across_seeds():
    model, x = tiny_classifier(), images(24)
    a = train_patch(model, x, target=1, size=3, epochs=2, batch_size=4, seed=5, progress=False)
    b = train_patch(model, x, target=1, size=3, epochs=2, batch_size=4, seed=5, progress=False)
    c = train_patch(model, x, target=1, size=3, epochs=2, batch_size=4, seed=6, progress=False)
    assert torch.equal(a.patch, b.patch) and a.loss == b.loss and torch.equal(a.val_index, b.val_index)
    assert not torch.equal(a.patch, c.patch)


class ConstantScorer(nn.Module):
    """Predicts class 1 when the top-left pixel's red value exceeds ``threshold``, else class 0."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        hit = (x[:, 0] > self.threshold).flatten(1).sum(1).float()
        return torch.stack([torch.zeros_like(hit), hit - 0.5, torch.full_like(hit, -1.0)], dim=1)


def counting_model(threshold=0.5):
    """Class 1 iff at least one red pixel is above threshold (a patch of ones is 'seen' anywhere)."""
    return Classifier(ConstantScorer(threshold), [0.0] * 3, [1.0] * 3, name="count", weights_id="none",
                      class_names=["a", "b", "c"], resize=None, crop=None)


def test_evaluation_skips_target_class_images_and_counts_placements():
    x = torch.zeros(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])  # two images are of the target class 1
    score = evaluate_patch(counting_model(), x, labels, torch.ones(3, 2, 2), target=1, placements=3)
    rates = score.rates()
    assert {k: rates[k] for k in ("top1", "top5", "n_images", "n_trials")} == {"top1": 1.0, "top5": 1.0, "n_images": 4,
                                                                               "n_trials": 12}
    assert (rates["top1_low"], rates["top1_high"]) == pytest.approx(wilson_interval(4, 4))  # 4 of 4 images, not 12 trials
    assert score.top1_hits.tolist() == [3] * 6
    blank = evaluate_patch(counting_model(), x, labels, torch.zeros(3, 2, 2), target=1, placements=3).rates()
    assert blank["top1"] == 0.0 and blank["top5"] == 1.0  # class 1 is always in a 3-class top-5
    subset = score.rates(index=torch.tensor([0, 1]))  # image 1 is of the target class: not counted
    assert subset["n_images"] == 1 and subset["n_trials"] == 3


class PatchCounter(nn.Module):
    """Class 1 when at least two disjoint patches' worth (> 2 k^2) of pixels are exactly 1."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        ones = (x[:, 0] == 1).flatten(1).sum(1).float()
        return torch.stack([torch.zeros_like(ones), ones - 2 * self.k ** 2 - 0.5], dim=1)


def test_stacked_evaluation_reproduces_the_tutorials_accumulating_patches():
    # Hand-checked case: on a 16x16 image, a 4x4 patch of ones covers 16 pixels. One patch never
    # exceeds 2 * 16 ones; the tutorial's in-place pasting leaves placement j with up to j patches.
    k, n = 4, 50
    model = Classifier(PatchCounter(k), [0.0] * 3, [1.0] * 3, name="counter", weights_id="none",
                       class_names=["a", "b"], resize=None, crop=None)
    x, labels, patch = torch.zeros(n, 3, 16, 16), torch.zeros(n, dtype=torch.long), torch.ones(3, k, k)
    single = evaluate_patch(model, x, labels, patch, target=1, placements=4, k=1)
    stacked = evaluate_patch(model, x, labels, patch, target=1, placements=4, k=1, stacked=True)
    assert single.top1_hits.sum() == 0
    # placement 1 never fires; placements 3 and 4 carry 3-4 patches and fire unless they overlap heavily
    assert 0 < stacked.top1_hits.sum() <= 3 * n
    assert (stacked.top1_hits <= 3).all()
    # Replay the positions by hand to check the count exactly.
    g = torch.Generator().manual_seed(0)
    positions = [random_positions(n, (16, 16), k, g) for _ in range(4)]
    expected = torch.zeros(n, dtype=torch.long)
    current = x.clone()
    for pos in positions:
        for i, (top, left) in enumerate(pos.tolist()):
            current[i, :, top:top + k, left:left + k] = 1
        expected += ((current[:, 0] == 1).flatten(1).sum(1) > 2 * k * k).long()
    assert torch.equal(stacked.top1_hits, expected)


def test_evaluation_runs_without_autograd():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return x.flatten(1)[:, :3]

    model = Classifier(Spy(), [0.0] * 3, [1.0] * 3, name="spy", weights_id="none", class_names=list("abc"),
                       resize=None, crop=None)
    evaluate_patch(model, images(4), torch.zeros(4, dtype=torch.long), torch.rand(3, 2, 2), target=1, placements=2)
    assert seen and all(grad is False and inference for grad, inference in seen)


def test_cache_trains_once_then_loads(tmp_path):
    model, x = tiny_classifier(), images(16)
    first, cached = cached_patch(tmp_path, model, x, 2, 3, seed=0, epochs=1, batch_size=4, progress=False)
    assert not cached and len(list(tmp_path.glob("*.pt"))) == 1
    again, cached = cached_patch(tmp_path, model, x, 2, 3, seed=0, epochs=1, batch_size=4, progress=False)
    assert cached and torch.equal(first.patch, again.patch) and first.loss == again.loss
    other, cached = cached_patch(tmp_path, model, x, 2, 3, seed=1, epochs=1, batch_size=4, progress=False)
    assert not cached and len(list(tmp_path.glob("*.pt"))) == 2


def test_patch_pixels_start_grey_and_stay_in_range():
    assert torch.equal(patch_pixels(torch.zeros(3, 2, 2)), torch.full((3, 2, 2), 0.5))
    assert patch_pixels(torch.tensor([[[-1e6, 1e6]]])).tolist() == [[[0.0, 1.0]]]


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: place_patch(x, torch.rand(3, 9, 9), torch.zeros(12, 2, dtype=torch.long)), "larger"),
    (lambda m, x, y: train_patch(m, x, target=10, size=3, progress=False), "target"),
    (lambda m, x, y: train_patch(m, x, target=-1, size=3, progress=False), "target"),
    (lambda m, x, y: train_patch(m, x, target=1, size=9, progress=False), "larger"),
    (lambda m, x, y: evaluate_patch(m, x, y, torch.rand(3, 2, 2) + 1, target=1), "patch"),
    (lambda m, x, y: evaluate_patch(m, x, y, torch.rand(3, 2, 2), target=1.0), "target"),
    (lambda m, x, y: place_patch(x, torch.rand(3, 2, 2), torch.full((12, 2), 7)), "positions"),
    (lambda m, x, y: place_patch(x, torch.rand(3, 2, 2), torch.full((12, 2), -1)), "positions"),
    (lambda m, x, y: place_patch(x, torch.rand(3, 2, 2), torch.zeros(12, 2)), "positions"),
    (lambda m, x, y: place_patch(x, torch.rand(3, 2), torch.zeros(12, 2, dtype=torch.long)), "patch"),
])
def test_bad_input_names_the_argument(call, match):
    model, x = tiny_classifier(), images(12)
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, x, torch.zeros(12, dtype=torch.long))


def test_protocols_share_positions_and_the_sound_one_scores_held_out_images_only():
    from nbutils.patch import score_protocols, target_indices

    model, x = tiny_classifier(), images(40)
    labels = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(3))
    trained = train_patch(model, x, target=4, size=4, epochs=1, batch_size=8, seed=0, progress=False)
    rows = {r["protocol"]: r for r in score_protocols(model, x, labels, trained, placements=3)}
    assert set(rows) == {"tutorial", "one patch", "sound"}
    eligible_all = int((labels != 4).sum())
    eligible_val = int((labels[trained.val_index] != 4).sum())
    assert rows["tutorial"]["n_images"] == rows["one patch"]["n_images"] == eligible_all
    assert rows["sound"]["n_images"] == eligible_val and rows["sound"]["n_trials"] == 3 * eligible_val
    single = evaluate_patch(model, x, labels, trained.patch, 4, placements=3)
    assert rows["one patch"]["top1"] == single.rates()["top1"]
    assert target_indices(["3", "7"], model.class_names) == {"3": 3, "7": 7}
    with pytest.raises(ValueError, match="unknown target"):
        target_indices(["toaster"], model.class_names)


def test_holdout_folds_are_disjoint_and_fold_0_is_the_plain_protocols_split():
    from nbutils.patch import holdout_folds

    folds = holdout_folds(50, 0.1, seed=3, folds=4)
    assert [len(f) for f in folds] == [5, 5, 5, 5]
    assert len(torch.cat(folds).unique()) == 20, "held-out sets must not overlap"
    plain = train_patch(tiny_classifier(), images(50), target=1, size=3, epochs=1, batch_size=8, seed=3, progress=False)
    assert torch.equal(plain.val_index, folds[0])
    with pytest.raises(ValueError, match="leave no training image"):
        holdout_folds(50, 0.1, seed=3, folds=10)


def test_a_patch_trained_with_explicit_held_out_images_never_sees_them():
    x = images(40)
    held = torch.tensor([3, 7, 11, 30])
    trained = train_patch(tiny_classifier(), x, target=2, size=3, epochs=1, batch_size=8, val_index=held, seed=1,
                          progress=False)
    assert torch.equal(trained.val_index, held)
    assert sorted(trained.train_index.tolist()) == [i for i in range(40) if i not in held.tolist()]
    with pytest.raises(ValueError, match="val_index"):
        train_patch(tiny_classifier(), x, target=2, size=3, val_index=torch.tensor([1, 1]), progress=False)
    with pytest.raises(TypeError, match="val_index"):
        train_patch(tiny_classifier(), x, target=2, size=3, val_index=[1, 2], progress=False)


def test_protocol_effects_pair_each_image_with_itself():
    import pandas as pd

    from nbutils.patch import protocol_effects
    # three runs; image i is held out by run i % 3 (runs hold out disjoint folds); two targets
    rows = []
    for run in range(3):
        for target in ("a", "b"):
            for image in range(30):
                seen = image % 3 != run
                rows.append({"model": "m", "size": 8, "target": target, "run": run, "image": image, "trained_on": seen,
                             # the stacked rate is 0.25 above the single one; images the patch saw score 0.5 higher
                             "single_top1": 0.1 + 0.5 * seen + 0.01 * image, "stacked_top1": 0.35 + 0.5 * seen + 0.01 * image,
                             "single_top5": 0.2, "stacked_top5": 0.2})
    effects = protocol_effects(pd.DataFrame(rows), by=["model", "size"]).set_index(["effect", "rank"])
    assert effects.loc[("stacking", "top1"), "estimate"] == pytest.approx(0.25)
    assert effects.loc[("training images", "top1"), "estimate"] == pytest.approx(0.5)
    assert effects.loc[("training images", "top5"), "estimate"] == pytest.approx(0.0)
    assert effects.loc[("training images", "top1"), "n_images"] == 30
    # the per-image differences are constant, so the intervals collapse onto the estimate
    assert effects.loc[("stacking", "top1"), "low"] == pytest.approx(0.25)
    one_run = protocol_effects(pd.DataFrame(rows).query("run == 0"), by=["model", "size"])
    assert set(one_run["effect"]) == {"stacking"}, "one run cannot pair seen and unseen images"


def test_rates_carry_intervals_that_widen_when_placements_agree():
    from nbutils.patch import PatchScore

    eligible = torch.ones(40, dtype=torch.bool)
    alike = PatchScore(torch.tensor([4] * 20 + [0] * 20), torch.tensor([4] * 40), eligible, placements=4)
    mixed = PatchScore(torch.tensor([2] * 40), torch.tensor([4] * 40), eligible, placements=4)
    a, m = alike.rates(), mixed.rates()
    assert a["top1"] == m["top1"] == 0.5
    assert a["top1_low"] <= 0.5 <= a["top1_high"] and m["top1_low"] <= 0.5 <= m["top1_high"]
    assert a["top1_high"] - a["top1_low"] > m["top1_high"] - m["top1_low"], "correlated placements carry less information"
    assert a["top5_high"] == 1.0 and a["top5_low"] == pytest.approx(wilson_interval(40, 40)[0])
