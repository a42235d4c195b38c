"""Chapter 6's defences: JPEG against Pillow's libjpeg, the median filter against scipy, bit depth,
the shipped and BPDA views of a transformation, the ensemble, the guarded detector's outcomes and
the report card's arithmetic."""
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage

from nbutils import attacks, defences, detect, evaluate
from nbutils.metrics import gradient_masking

from conftest import tiny_classifier


def pillow_jpeg(images: torch.Tensor, quality: int, colour: bool = False) -> torch.Tensor:
    """Pillow's (libjpeg's) round trip, 4:4:4 for colour, as [0, 1] floats."""
    out = []
    for image in images:
        levels = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        buffer = io.BytesIO()
        Image.fromarray(levels if colour else levels[..., 0], "RGB" if colour else "L").save(
            buffer, "JPEG", quality=quality, subsampling=0)
        decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())))).float() / 255
        out.append(decoded.permute(2, 0, 1) if colour else decoded[None])
    return torch.stack(out)


def digits_like(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Strokes on a black background, 28 x 28: MNIST's statistics without the data."""
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        r, c = torch.randint(4, 20, (2,), generator=generator).tolist()
        canvas[i, 0, r:r + 8, c:c + 3] = 1.0
        canvas[i, 0, r + 3:r + 5, c:c + 7] = 0.8
    return torch.nn.functional.avg_pool2d(canvas, 3, stride=1, padding=1)


@pytest.mark.parametrize("quality", [75, 30, 95])
def test_jpeg_equals_pillows_libjpeg_within_a_fraction_of_a_level(quality):
    x = digits_like()
    ours, reference = defences.jpeg(x, quality), pillow_jpeg(x, quality)
    difference = (ours - reference).abs() * 255
    change = (reference - x).abs() * 255
    assert difference.mean() < change.mean() / 3, (difference.mean(), change.mean())  # far closer than JPEG moves
    assert (difference <= 1).double().mean() > 0.97


def test_colour_jpeg_follows_libjpeg_through_ycbcr():
    g = torch.linspace(0, 1, 32)
    x = torch.stack([torch.outer(g, g), torch.outer(g, 1 - g), torch.outer(1 - g, g)])[None]
    x = (0.7 * x + 0.1 * torch.sin(torch.arange(32) / 3.0)[None, None, :, None]).clamp(0, 1)
    difference = (defences.jpeg(x, 75) - pillow_jpeg(x, 75, colour=True)).abs() * 255
    assert difference.mean() < 0.5 and difference.round().max() <= 4


def test_jpeg_keeps_shape_range_dtype_and_is_idempotent_enough():
    x = torch.rand(3, 1, 30, 27)
    y = defences.jpeg(x, 75)
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    assert torch.equal(torch.round(y * 255), y * 255)  # 8-bit levels
    assert (defences.jpeg(y, 75) - y).abs().mean() < (y - x).abs().mean()


def test_the_median_filter_equals_scipys():
    x = torch.rand(2, 3, 9, 11)
    ours = defences.median_filter(x, 3)
    reference = ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")
    assert np.allclose(ours.numpy(), reference)


def test_shipped_transformations_mask_the_gradient_and_bpda_restores_it():
    torch.manual_seed(0)
    model = tiny_classifier(channels=1)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for name, setting in (("jpeg", 75), ("bit_depth", 1)):
        shipped = defences.Preprocessed(model, defences.transform(name, setting), name=name)
        assert gradient_masking(shipped, x, y)["grad_zero"].all()
        attackable = shipped.bpda()
        assert torch.equal(attackable(x), shipped(x))  # the same decisions
        assert not gradient_masking(attackable, x, y)["grad_zero"].any()


def test_the_ensemble_averages_its_members_logits():
    members = [tiny_classifier(seed=s) for s in range(3)]
    x = torch.rand(5, 3, 8, 8)
    expected = sum(m(x) for m in members) / 3
    assert torch.allclose(defences.Ensemble(members)(x), expected, atol=1e-6)


@pytest.mark.parametrize("name, setting, word", [("jpeg", 0, "quality"), ("median", 4, "odd"), ("bits", 1, "transform"),
                                                 ("bit_depth", 9, "bits")])
def test_bad_transformation_settings_name_the_setting(name, setting, word):
    with pytest.raises(ValueError, match=word):
        defences.transform(name, setting)


class _Threshold:
    """A detector stand-in: accepts a hidden state whose first feature is at least 0."""

    def reject(self, features, classes, keep):
        return features[:, 0] < 0


def test_a_guarded_image_is_safe_when_correct_or_rejected_and_the_worst_case_takes_every_attack(monkeypatch):
    labels = torch.tensor([0, 1, 2, 3])
    logits = [torch.eye(10)[[0, 1, 5, 5]], torch.eye(10)[[0, 7, 2, 5]]]  # two attacks' predictions
    features = [torch.tensor([[1.0], [1.0], [-1.0], [1.0]]), torch.tensor([[1.0], [1.0], [1.0], [-1.0]])]
    calls = iter(zip(features, logits))
    monkeypatch.setattr(detect, "hidden_states", lambda *a, **k: next(calls))
    robust = detect.robust_guarded(_Threshold(), None, "layer", [None, None], labels, keep=0.95)
    # image 0 correct twice; image 1 flipped and accepted by the second attack; image 2 rejected, then
    # correct; image 3 wrong and accepted by the first attack
    assert robust.tolist() == [True, False, True, False]


def test_the_report_card_envelopes_seeds_and_flags_a_defence_that_only_looked_robust():
    rows = [{"dataset": "d", "defence": k, "seed": s, "n_images": 500, "clean_accuracy": 0.99} for k in ("a", "b")
            for s in range(3)]
    non_adaptive = pd.DataFrame(rows).assign(robust_accuracy=[0.9, 0.91, 0.89, 0.5, 0.52, 0.48])
    adaptive = pd.DataFrame(rows).assign(robust_accuracy=[0.0, 0.01, 0.0, 0.49, 0.5, 0.47],
                                         failed_checks=["gradient_free_not_stronger", "", "converged", "", "", ""])
    card = evaluate.card_rows(non_adaptive, adaptive, by=["dataset", "defence"]).set_index("defence")
    assert card.loc["a", "only_looked_robust"] and not card.loc["b", "only_looked_robust"]
    assert card.loc["a", "non_adaptive"] == pytest.approx(0.9) and card.loc["a", "gap"] == pytest.approx(0.9 - 0.01 / 3)
    assert card.loc["a", "adaptive_low"] == pytest.approx(0.0, abs=1e-12) and card.loc["b", "adaptive_high"] > 0.5
    assert card.loc["a", "failed_checks"] == "gradient_free_not_stronger, converged" and card.loc["b", "failed_checks"] == ""
