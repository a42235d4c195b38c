"""FGSM and its sweep: invariants, agreement with torchattacks, input validation."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from hypothesis import given, settings, strategies as st

from nbutils.attacks import fgsm, fgsm_sweep, input_gradient
from conftest import linear_classifier, tiny_classifier

MODEL = tiny_classifier()


def images_and_labels(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), eps=st.floats(0, 1), targeted=st.booleans())
def test_pixel_fgsm_stays_in_the_eps_ball_and_the_image_range(seed, n, eps, targeted):
    x, y = images_and_labels(seed, n)
    adv = fgsm(MODEL, x, y, eps, targeted=targeted)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0, 0.5))
def test_normalised_fgsm_moves_each_pixel_by_eps_times_channel_std_unclamped(seed, eps):
    x, y = images_and_labels(seed, 5)
    adv = fgsm(MODEL, x, y, eps, convention="normalised")
    grad, _ = input_gradient(MODEL, x, y)
    expected = eps * MODEL.std[:, None, None] * grad.sign()
    torch.testing.assert_close(adv - x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("convention", ["pixel", "normalised"])
def test_eps_zero_is_the_identity(convention):
    x, y = images_and_labels(3, 6)
    assert torch.equal(fgsm(MODEL, x, y, 0.0, convention=convention), x)


def test_unclamped_convention_can_leave_the_image_range_and_the_pixel_one_cannot():
    x = torch.ones(4, 3, 8, 8)
    y = torch.arange(4)
    assert fgsm(MODEL, x, y, 0.5, convention="normalised").max() > 1
    assert fgsm(MODEL, x, y, 0.5).max() <= 1


def test_targeted_steps_towards_the_target_and_untargeted_away_from_the_label():
    model = linear_classifier()
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    loss = lambda images: F.cross_entropy(model(images), y, reduction="none")
    assert (loss(fgsm(model, x, y, 1e-3)) > loss(x)).all()
    assert (loss(fgsm(model, x, y, 1e-3, targeted=True)) < loss(x)).all()
    # without clamping the two steps are exact mirror images
    up = fgsm(model, x, y, 0.05, convention="normalised") - x
    down = fgsm(model, x, y, 0.05, convention="normalised", targeted=True) - x
    torch.testing.assert_close(up, -down)


@pytest.mark.parametrize("eps", [0.0, 2 / 255, 8 / 255, 0.3])
def test_fgsm_equals_torchattacks(eps):
    x, y = images_and_labels(7, 20)
    reference = torchattacks.FGSM(MODEL, eps=eps)(x, y)
    torch.testing.assert_close(fgsm(MODEL, x, y, eps, batch_size=7), reference, rtol=0, atol=1e-7)


def test_targeted_fgsm_equals_torchattacks_targeted():
    x, y = images_and_labels(8, 20)
    target = (y + 1) % 10
    attack = torchattacks.FGSM(MODEL, eps=8 / 255)
    attack.set_mode_targeted_by_label(quiet=True)
    torch.testing.assert_close(fgsm(MODEL, x, target, 8 / 255, targeted=True), attack(x, target), rtol=0, atol=1e-7)


@pytest.mark.parametrize("convention,targeted", [("pixel", False), ("normalised", False), ("pixel", True)])
def test_sweep_equals_fgsm_eps_by_eps(convention, targeted):
    x, y = images_and_labels(11, 13)
    epsilons = [0.0, 0.01, 0.05, 0.2]
    result = fgsm_sweep(MODEL, x, y, epsilons, convention=convention, targeted=targeted, batch_size=4,
                        k=3, return_images=True)
    for i, eps in enumerate(epsilons):
        adv = fgsm(MODEL, x, y, eps, convention=convention, targeted=targeted, batch_size=13)
        torch.testing.assert_close(result.adversarials[i], adv, rtol=0, atol=0)
        with torch.inference_mode():
            top = MODEL(adv).topk(3, dim=1).indices
        assert torch.equal(result.adv_topk[i], top)
    with torch.inference_mode():
        assert torch.equal(result.clean_topk, MODEL(x).topk(3, dim=1).indices)


def test_sweep_errors_match_a_hand_count():
    x, y = images_and_labels(12, 10)
    result = fgsm_sweep(MODEL, x, y, [0.0, 0.1], k=5)
    with torch.inference_mode():
        clean_top1_wrong = (MODEL(x).argmax(1) != y).double().mean().item() * 100
    assert math.isclose(result.error(1)[0].item(), clean_top1_wrong)
    rows = result.to_records()
    assert [r["eps"] for r in rows] == [0.0, 0.1] and rows[0]["n_images"] == 10
    assert rows[1]["top1_error"] >= rows[1]["top5_error"]


def test_attacks_are_deterministic():
    x, y = images_and_labels(13, 8)
    a = fgsm_sweep(MODEL, x, y, [0.03], return_images=True)
    b = fgsm_sweep(MODEL, x, y, [0.03], return_images=True)
    assert torch.equal(a.adversarials, b.adversarials) and torch.equal(a.adv_topk, b.adv_topk)


def test_attack_builds_no_parameter_gradients():
    x, y = images_and_labels(14, 4)
    fgsm(MODEL, x, y, 0.1)
    assert all(p.grad is None and not p.requires_grad for p in MODEL.parameters())


X, Y = images_and_labels(0, 4)


@pytest.mark.parametrize("kwargs,error,word", [
    ({"eps": -0.1}, ValueError, "eps"),
    ({"eps": float("nan")}, ValueError, "eps"),
    ({"eps": float("inf")}, ValueError, "eps"),
    ({"eps": "0.1"}, TypeError, "eps"),
    ({"eps": True}, TypeError, "eps"),
    ({"eps": 1.5}, ValueError, "eps"),
    ({"images": X * 2}, ValueError, "images"),
    ({"images": X - 0.5}, ValueError, "images"),
    ({"images": X[0]}, ValueError, "images"),
    ({"images": X.clone().fill_(float("nan"))}, ValueError, "images"),
    ({"images": (X * 255).to(torch.uint8)}, TypeError, "images"),
    ({"images": X.numpy()}, TypeError, "images"),
    ({"labels": Y[:3]}, ValueError, "labels"),
    ({"labels": Y + 10}, ValueError, "labels"),
    ({"labels": -Y - 1}, ValueError, "labels"),
    ({"labels": Y.float()}, TypeError, "labels"),
    ({"convention": "tutorial"}, ValueError, "convention"),
    ({"batch_size": 0}, ValueError, "batch_size"),
])
def test_fgsm_rejects_bad_input_naming_the_argument(kwargs, error, word):
    args = {"images": X, "labels": Y, "eps": 0.1, **kwargs}
    with pytest.raises(error, match=word):
        fgsm(MODEL, args.pop("images"), args.pop("labels"), args.pop("eps"), **args)


@pytest.mark.parametrize("epsilons,error", [([], ValueError), ([0.1, -1], ValueError), (0.1, TypeError),
                                            ("0.1", TypeError), ([0.1, float("nan")], ValueError)])
def test_sweep_rejects_bad_epsilons(epsilons, error):
    with pytest.raises(error, match="epsilons"):
        fgsm_sweep(MODEL, X, Y, epsilons)


def test_normalised_convention_accepts_unclamped_images_and_large_eps():
    adv = fgsm(MODEL, X, Y, 2.0, convention="normalised")
    assert fgsm(MODEL, adv, Y, 0.0, convention="normalised").equal(adv)
