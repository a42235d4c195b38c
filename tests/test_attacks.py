"""The attacks of the contract (FGSM and its sweep, PGD, C&W-L2) and attacks as values: invariants,
agreement with torchattacks and with analytic answers, determinism."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from hypothesis import given, settings, strategies as st

from torch import nn

from nbutils import attacks
from nbutils.attacks import attack_loss, cw_l2, fgsm, fgsm_sweep, input_gradient, pgd
from nbutils.checks import check_eps
from nbutils.metrics import robustness_table
from nbutils.models import Classifier
from conftest import linear_classifier, saturated_classifier, tiny_classifier

MODEL = tiny_classifier()


def images_and_labels(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), eps=st.floats(0, 1), targeted=st.booleans())
def test_pixel_fgsm_stays_in_the_eps_ball_and_the_image_range(seed, n, eps, targeted):
    x, y = images_and_labels(seed, n)
    adv = fgsm(MODEL, x, y, eps=eps, targeted=targeted)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0, 0.5))
def test_normalised_fgsm_moves_each_pixel_by_eps_times_channel_std_unclamped(seed, eps):
    x, y = images_and_labels(seed, 5)
    adv = fgsm(MODEL, x, y, eps=eps, convention="normalised")
    grad, _ = input_gradient(MODEL, x, y)
    expected = eps * MODEL.std[:, None, None] * grad.sign()
    torch.testing.assert_close(adv - x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("convention", ["pixel", "normalised"])
def test_eps_zero_is_the_identity(convention):
    x, y = images_and_labels(3, 6)
    assert torch.equal(fgsm(MODEL, x, y, eps=0.0, convention=convention), x)


def test_unclamped_convention_can_leave_the_image_range_and_the_pixel_one_cannot():
    x = torch.ones(4, 3, 8, 8)
    y = torch.arange(4)
    assert fgsm(MODEL, x, y, eps=0.5, convention="normalised").max() > 1
    assert fgsm(MODEL, x, y, eps=0.5).max() <= 1


def test_targeted_steps_towards_the_target_and_untargeted_away_from_the_label():
    model = linear_classifier()
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    loss = lambda images: F.cross_entropy(model(images), y, reduction="none")
    assert (loss(fgsm(model, x, y, eps=1e-3)) > loss(x)).all()
    assert (loss(fgsm(model, x, y, eps=1e-3, targeted=True)) < loss(x)).all()
    # without clamping the two steps are exact mirror images
    up = fgsm(model, x, y, eps=0.05, convention="normalised") - x
    down = fgsm(model, x, y, eps=0.05, convention="normalised", targeted=True) - x
    torch.testing.assert_close(up, -down)


@pytest.mark.parametrize("eps", [0.0, 2 / 255, 8 / 255, 0.3])
def test_fgsm_equals_torchattacks(eps):
    x, y = images_and_labels(7, 20)
    reference = torchattacks.FGSM(MODEL, eps=eps)(x, y)
    torch.testing.assert_close(fgsm(MODEL, x, y, eps=eps, batch_size=7), reference, rtol=0, atol=1e-7)


def test_targeted_fgsm_equals_torchattacks_targeted():
    x, y = images_and_labels(8, 20)
    target = (y + 1) % 10
    attack = torchattacks.FGSM(MODEL, eps=8 / 255)
    attack.set_mode_targeted_by_label(quiet=True)
    torch.testing.assert_close(fgsm(MODEL, x, target, eps=8 / 255, targeted=True), attack(x, target), rtol=0, atol=1e-7)


@pytest.mark.parametrize("convention,targeted", [("pixel", False), ("normalised", False), ("pixel", True)])
def test_sweep_equals_fgsm_eps_by_eps(convention, targeted):
    x, y = images_and_labels(11, 13)
    epsilons = [0.0, 0.01, 0.05, 0.2]
    result = fgsm_sweep(MODEL, x, y, epsilons=epsilons, convention=convention, targeted=targeted, batch_size=4,
                        k=3, return_images=True)
    for i, eps in enumerate(epsilons):
        adv = fgsm(MODEL, x, y, eps=eps, convention=convention, targeted=targeted, batch_size=13)
        torch.testing.assert_close(result.adversarials[i], adv, rtol=0, atol=0)
        with torch.inference_mode():
            top = MODEL(adv).topk(3, dim=1).indices
        assert torch.equal(result.adv_topk[i], top)
    with torch.inference_mode():
        assert torch.equal(result.clean_topk, MODEL(x).topk(3, dim=1).indices)


def test_sweep_errors_match_a_hand_count():
    x, y = images_and_labels(12, 10)
    result = fgsm_sweep(MODEL, x, y, epsilons=[0.0, 0.1], k=5)
    with torch.inference_mode():
        clean_top1_wrong = (MODEL(x).argmax(1) != y).double().mean().item()
    assert math.isclose(result.error(1)[0].item(), clean_top1_wrong)
    rows = result.to_records()
    assert [r["eps"] for r in rows] == [0.0, 0.1] and rows[0]["n_images"] == 10
    assert rows[1]["top1_error"] >= rows[1]["top5_error"]


def test_attacks_are_deterministic():
    x, y = images_and_labels(13, 8)
    a = fgsm_sweep(MODEL, x, y, epsilons=[0.03], return_images=True)
    b = fgsm_sweep(MODEL, x, y, epsilons=[0.03], return_images=True)
    assert torch.equal(a.adversarials, b.adversarials) and torch.equal(a.adv_topk, b.adv_topk)


def test_attacks_build_no_parameter_gradients_even_on_a_trainable_model():
    x, y = images_and_labels(14, 4)
    trainable = tiny_classifier()
    for p in trainable.parameters():
        p.requires_grad_(True)
    fgsm(trainable, x, y, eps=0.1)
    pgd(trainable, x, y, eps=0.1, alpha=0.05, steps=2)
    cw_l2(trainable, x, y, steps=2, search_steps=1)
    assert all(p.grad is None for p in trainable.parameters())
    with torch.no_grad():  # C&W optimises with gradients even when called under no_grad (it raised here)
        assert cw_l2(trainable, x, y, steps=2, search_steps=1).shape == x.shape


def test_pgd_equals_torchattacks_pgd_without_random_start():
    model = tiny_classifier()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(10, 3, 8, 8, generator=g), torch.randint(0, 10, (10,), generator=g)
    ours = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=7)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=7, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_image_range_and_eps_zero_is_identity(norm):
    model = tiny_classifier()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    adv = pgd(model, x, y, eps=0.3, alpha=0.1, steps=5, norm=norm, random_start=True)
    size = (adv - x).abs().flatten(1).amax(1) if norm == "linf" else (adv - x).flatten(1).norm(dim=1)
    assert (size <= 0.3 + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(pgd(model, x, y, eps=0.0, alpha=0.1, steps=3, norm=norm), x)


def test_pgd_with_a_random_start_is_seeded():
    model, x, y = tiny_classifier(), torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    a = pgd(model, x, y, eps=0.1, alpha=0.01, steps=2, random_start=True, seed=1)
    assert torch.equal(a, pgd(model, x, y, eps=0.1, alpha=0.01, steps=2, random_start=True, seed=1))
    assert not torch.equal(a, pgd(model, x, y, eps=0.1, alpha=0.01, steps=2, random_start=True, seed=2))


def test_margin_loss_and_temperature_see_through_a_saturated_softmax():
    # logits scaled by 1e6 saturate float32 softmax (every other class underflows to 0): the CE
    # gradient is exactly zero and FGSM is a no-op, as on a distilled net tested at T = 1
    saturated = saturated_classifier()
    x = torch.rand(6, 3, 8, 8)
    y = saturated(x).argmax(1)
    assert torch.equal(fgsm(saturated, x, y, eps=0.1), x)
    assert not torch.equal(fgsm(saturated, x, y, eps=0.1, loss="margin"), x)
    assert not torch.equal(fgsm(saturated, x, y, eps=0.1, temperature=1e6), x)
    assert attack_loss(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([0]), "margin").item() == -1.0


def test_cw_l2_reaches_the_analytic_minimal_distance_of_a_linear_model():
    # Two classes, logit difference d(x) = w.x + b: the closest point across the boundary is at
    # distance |d(x)| / ||w||, inside [0, 1] here since the images sit mid-range.
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    model = Classifier(linear, [0.0], [1.0], name="lin", weights_id="x", class_names=["a", "b"], resize=None, crop=None)
    x = 0.5 + 0.05 * torch.randn(5, 1, 4, 4)
    y = model(x).argmax(1)
    w = linear[1].weight[1] - linear[1].weight[0]
    d = (x.flatten(1) @ w + linear[1].bias[1] - linear[1].bias[0]).abs()
    analytic = d / w.norm()
    adv = cw_l2(model, x, y, c=1.0, steps=300, search_steps=8, lr=0.01)
    found = (adv - x).flatten(1).norm(dim=1)
    assert (model(adv).argmax(1) != y).all()
    assert torch.allclose(found, analytic.detach(), rtol=0.08, atol=2e-3)


X, Y = images_and_labels(0, 4)


def test_normalised_convention_accepts_unclamped_images_and_large_eps():
    adv = fgsm(MODEL, X, Y, eps=2.0, convention="normalised")
    assert fgsm(MODEL, adv, Y, eps=0.0, convention="normalised").equal(adv)


@pytest.mark.parametrize("eps", [0.0, 2 / 255, 8 / 255])
def test_targeted_pgd_equals_torchattacks_targeted_pgd(eps):
    x, y = images_and_labels(21, 10)
    target = (y + 3) % 10
    reference = torchattacks.PGD(MODEL, eps=eps, alpha=1 / 255, steps=5, random_start=False)
    reference.set_mode_targeted_by_label(quiet=True)
    ours = pgd(MODEL, x, target, eps=eps, alpha=1 / 255, steps=5, targeted=True, batch_size=4)
    torch.testing.assert_close(ours, reference(x, target), rtol=0, atol=1e-6)


def test_targeted_cw_l2_reaches_the_target_and_unbounded_beats_a_tight_budget():
    model = linear_classifier()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.25
    with torch.inference_mode():
        target = (model(x).argmax(1) + 1) % 4
    adv = cw_l2(model, x, target, targeted=True, steps=200, search_steps=6, lr=0.05)
    with torch.inference_mode():
        reached = model(adv).argmax(1) == target
    assert reached.float().mean() > 0.9
    distances = (adv - x).flatten(1).norm(dim=1)
    budget = distances[reached].median().item()
    bounded = cw_l2(model, x, target, eps=budget, targeted=True, steps=200, search_steps=6, lr=0.05)
    kept = (bounded - x).flatten(1).norm(dim=1)
    assert (kept <= budget + 1e-6).all()  # farther adversarials are discarded: the image comes back
    assert ((kept == 0) | (kept <= budget)).all() and (kept == 0).any()
    with pytest.raises(ValueError, match="cw_l2"):
        cw_l2(model, x, target, loss="ce")


def test_an_attack_as_a_value_runs_with_its_settings_and_has_a_readable_name():
    x, y = images_and_labels(30, 6)
    attack = attacks.get("pgd", eps=0.1, alpha=0.02, steps=3, random_start=True, seed=4)
    assert attack.name == "PGD (eps=0.1, alpha=0.02, steps=3, random_start=True, seed=4)"
    assert torch.equal(attack(MODEL, x, y), pgd(MODEL, x, y, eps=0.1, alpha=0.02, steps=3, random_start=True, seed=4))
    assert attacks.get("fgsm", eps=0.1, name="FGSM, paper").name == "FGSM, paper"
    assert torch.equal(attack(MODEL, x, y, eps=0.0), x)  # a keyword at call time overrides the setting
    import pickle
    assert pickle.loads(pickle.dumps(attack)) == attack  # travels to worker processes
    with pytest.raises(ValueError, match="attack"):
        attacks.get("jsma")


def test_robustness_table_takes_attacks_as_values_in_order():
    x, y = images_and_labels(31, 10)
    suite = [attacks.get("fgsm", eps=0.1), attacks.get("pgd", eps=0.1, alpha=0.05, steps=2, name="PGD-2")]
    table = robustness_table({"tiny": MODEL}, suite, x, y, batch_size=4)
    assert table["attack"].tolist() == ["FGSM (eps=0.1)", "PGD-2"]
    by_hand = robustness_table({"tiny": MODEL}, {"FGSM (eps=0.1)": lambda m, a, b: fgsm(m, a, b, eps=0.1)}, x, y)
    assert table["accuracy"].iloc[0] == by_hand["accuracy"].iloc[0]


def test_robustness_table_names_an_attack_that_returns_nan():
    x, y = images_and_labels(32, 4)
    with pytest.raises(ValueError, match="broken"):
        robustness_table({"tiny": MODEL}, {"broken": lambda m, a, b: a * float("nan")}, x, y)


def test_pgd_restarts_keep_a_success_and_never_lose_one():
    x, y = images_and_labels(40, 16)
    settings = dict(eps=0.02, alpha=0.01, steps=2, random_start=True, seed=5)
    single = pgd(MODEL, x, y, **settings)
    many = pgd(MODEL, x, y, restarts=4, **settings)
    with torch.inference_mode():
        fooled_single, fooled_many = MODEL(single).argmax(1) != y, MODEL(many).argmax(1) != y
    assert (fooled_many >= fooled_single).all()  # the first restart is the single run: its successes stay
    assert ((many - x).abs().amax() <= 0.02 + 1e-6) and many.min() >= 0 and many.max() <= 1
    with pytest.raises(ValueError, match="random_start"):
        pgd(MODEL, x, y, eps=0.02, alpha=0.01, steps=2, restarts=2)


def test_the_mse_loss_is_the_keras_mean_squared_error_of_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, 1)[0]
    by_hand = ((p[0] - 1) ** 2 + p[1] ** 2 + p[2] ** 2) / 3
    assert attack_loss(logits, torch.tensor([0]), "mse").item() == pytest.approx(by_hand.item())


def test_an_attacks_kernel_equals_the_attack_on_one_batch():
    x, y = images_and_labels(41, 6)
    for attack in (attacks.get("fgsm", eps=0.05, loss="mse"), attacks.get("pgd", eps=0.05, alpha=0.02, steps=2)):
        assert torch.equal(attack.kernel(MODEL)(x, y), attack(MODEL, x, y))


def test_the_fgsm_explorer_draws_without_error():
    import matplotlib
    matplotlib.use("Agg")
    from nbutils.plots import fgsm_explorer
    x, y = images_and_labels(50, 2)
    widget = fgsm_explorer(MODEL, x, y, [str(i) for i in range(10)])
    for convention in ("pixel", "normalised"):
        widget.f(1, 0.05, convention)  # the callback the sliders call; an error here is invisible in the page


def test_a_cell_sent_by_nbclient_gets_the_static_explorer_and_one_from_jupyterlab_the_widget(monkeypatch):
    # papermill's client sends cells with allow_stdin=False and can hang on a live widget (jupyter/nbclient#312)
    import types

    import IPython
    from IPython.display import HTML

    from nbutils.files import BATCH_ENV
    from nbutils.plots import fgsm_explorer
    monkeypatch.delenv(BATCH_ENV, raising=False)
    x, y = images_and_labels(50, 1)
    for allow_stdin, expected in ((False, HTML), (True, None)):
        shell = types.SimpleNamespace(kernel=types.SimpleNamespace(_allow_stdin=allow_stdin))
        monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
        shown = fgsm_explorer(MODEL, x, y, [str(i) for i in range(10)], epsilons=(0.0, 0.05), k=3)
        assert isinstance(shown, HTML) if expected is HTML else hasattr(shown, "children")  # a live ipywidgets box


def test_a_batch_run_shows_the_static_explorer_whose_frames_are_the_attacks_results(monkeypatch):
    import json
    import re

    from nbutils.metrics import predict
    from nbutils.files import BATCH_ENV
    from nbutils.plots import fgsm_explorer
    monkeypatch.setenv(BATCH_ENV, "1")
    x, y = images_and_labels(50, 2)
    names = [f"class {i}" for i in range(9)] + ['</script><!-- "9" & co']  # a name must not end the script
    page = fgsm_explorer(MODEL, x, y, names, epsilons=(0.0, 0.05), k=3).data
    assert "http" not in page  # no CDN, no remote image: it works offline
    assert page.count("</script>") == 1 and page.count("<script>") == 1 and "@" not in page  # placeholders all filled
    assert page.count('src="data:image/jpeg;base64,') == 3  # a default frame for a page that runs no script
    state = json.loads(re.search(r"state = (\{.*?\});\n", page).group(1))
    assert sorted(state["frames"]) == sorted(f"{i}|{c}|{j}" for i in range(2) for c in ("pixel", "normalised") for j in range(2))
    adversarial = attacks.fgsm(MODEL, x, y, eps=0.05, convention="pixel")
    top = predict(MODEL, adversarial).softmax(1).topk(3)
    assert [name for name, _ in state["frames"]["1|pixel|1"]["top"]] == [names[int(c)] for c in top.indices[1]]
    assert state["frames"]["0|pixel|0"]["top"][0][1] == pytest.approx(float(predict(MODEL, x).softmax(1).max(1).values[0]),
                                                                     abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Chapter 5's attacks: BIM, iterative L2, DeepFool

def test_bim_equals_torchattacks_bim():
    x, y = images_and_labels(31, 10)
    ours = attacks.bim(MODEL, x, y, eps=8 / 255, alpha=2 / 255, steps=6)
    theirs = torchattacks.BIM(MODEL, eps=8 / 255, alpha=2 / 255, steps=6)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_iterative_l2_equals_torchattacks_l2_pgd_without_random_start():
    x, y = images_and_labels(32, 10)
    ours = attacks.iterative_l2(MODEL, x, y, eps=0.5, alpha=0.1, steps=8)
    theirs = torchattacks.PGDL2(MODEL, eps=0.5, alpha=0.1, steps=8, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attack", [attacks.bim, attacks.iterative_l2])
def test_iterative_attacks_stay_in_their_ball_and_range_reach_it_by_default_and_eps_zero_is_identity(attack):
    x, y = images_and_labels(33, 8)
    adv = attack(MODEL, x, y, eps=0.2, steps=10)
    size = ((adv - x).abs().flatten(1).amax(1) if attack is attacks.bim else (adv - x).flatten(1).norm(dim=1))
    assert (size <= 0.2 + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    # the default step eps / steps takes the images out to (near) the budget's edge; eps / 20 could not
    assert size.max() > 0.9 * 0.2
    assert torch.equal(attack(MODEL, x, y, eps=0.0), x)


def test_targeted_bim_lowers_the_target_loss_and_untargeted_raises_the_label_loss():
    x, y = images_and_labels(34, 16)
    target = (y + 1) % 10
    loss = lambda images, labels: F.cross_entropy(MODEL(images), labels).item()
    assert loss(attacks.bim(MODEL, x, target, eps=0.1, targeted=True), target) < loss(x, target)
    assert loss(attacks.bim(MODEL, x, y, eps=0.1), y) > loss(x, y)


def linear_multiclass(seed=0, classes=4, scale=3.0):
    """A linear classifier on (N, 1, 4, 4) images with large weights (boundaries close to mid-range images)."""
    torch.manual_seed(seed)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        linear[1].weight.mul_(scale)
    return Classifier(linear, [0.0], [1.0], name="lin", weights_id="x", class_names=[str(c) for c in range(classes)],
                      resize=None, crop=None), linear[1]


def test_deepfool_on_a_linear_model_stops_at_the_analytic_boundary():
    # logit differences f_k - f_y = (w_k - w_y).x + (b_k - b_y): the nearest boundary is at distance
    # min_k |f_k - f_y| / ||w_k - w_y||, crossed in one step, then overshot by (1 + overshoot)
    model, layer = linear_multiclass()
    x = 0.5 + 0.02 * torch.randn(6, 1, 4, 4)
    y = model(x).argmax(1)
    with torch.no_grad():
        f = model(x)
        w = layer.weight[None] - layer.weight[y][:, None]             # (N, K, 16)
        distance = ((f - f.gather(1, y[:, None])).abs() / w.norm(dim=2).clamp_min(1e-12))
        distance = distance.scatter(1, y[:, None], float("inf"))
        analytic, nearest = distance.min(1)
    adv = attacks.deepfool(model, x, y, overshoot=0.02)
    found = (adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(found, 1.02 * (analytic + 1e-4), rtol=1e-4, atol=1e-6)
    assert torch.equal(model(adv).argmax(1), nearest)
    # without overshoot it lands 1e-4 past the boundary: across, but only just
    adv = attacks.deepfool(model, x, y, overshoot=0.0)
    torch.testing.assert_close((adv - x).flatten(1).norm(dim=1), analytic + 1e-4, rtol=1e-4, atol=1e-6)
    assert (model(adv).argmax(1) != y).all()


def test_deepfool_equals_torchattacks_on_a_linear_model():
    # one step in both; they differ by the reference code's 1e-4 nudge, which torchattacks drops
    model, _ = linear_multiclass(seed=1)
    x = 0.5 + 0.02 * torch.randn(8, 1, 4, 4)
    y = model(x).argmax(1)
    ours = attacks.deepfool(model, x, y, overshoot=0.02)
    theirs = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1.1e-4)


def test_deepfool_fools_a_nonlinear_net_respects_its_budget_and_refuses_a_target():
    x, y = images_and_labels(35, 12)
    y = MODEL(x).argmax(1)
    adv = attacks.deepfool(MODEL, x, y)
    assert (MODEL(adv).argmax(1) != y).float().mean() >= 0.9 and adv.min() >= 0 and adv.max() <= 1
    unbounded = (adv - x).flatten(1).norm(dim=1)
    bounded = (attacks.deepfool(MODEL, x, y, eps=0.5 * unbounded.min().item()) - x).flatten(1).norm(dim=1)
    assert (bounded <= 0.5 * unbounded.min() + 1e-5).all()
    with pytest.raises(ValueError, match="untargeted"):
        attacks.deepfool(MODEL, x, y, targeted=True)
    with pytest.raises(ValueError, match="candidates"):
        attacks.deepfool(MODEL, x, y, candidates=1)


@pytest.mark.parametrize("name, settings", [("bim", {"eps": 0.1}), ("iterative_l2", {"eps": 1.0}),
                                            ("deepfool", {"steps": 5})])
def test_chapter5_attacks_are_values_with_kernels_equal_to_the_attack(name, settings):
    x, y = images_and_labels(36, 5)
    attack = attacks.get(name, **settings)
    torch.testing.assert_close(attack.kernel(MODEL)(x, y), attack(MODEL, x, y))


def test_charts_are_drawn_at_twice_the_pixels_and_photographs_at_one():
    from IPython.core.interactiveshell import InteractiveShell
    from matplotlib.figure import Figure

    from nbutils.plots import plt, sharp_inline_figures
    shell = InteractiveShell.instance()
    sharp_inline_figures()
    formatter = shell.display_formatter.formatters["image/png"]
    from IPython.core.pylabtools import _pngxy
    chart, photo = plt.figure(figsize=(2, 1), dpi=100), plt.figure(figsize=(2, 1), dpi=100)
    for fig in (chart, photo):
        fig.add_subplot().plot([0, 1])
    data, size = formatter.lookup_by_type(Figure)(chart)
    assert _pngxy(data)[0] // 2 == size["width"] > 150 and _pngxy(data)[1] // 2 == size["height"]  # twice the pixels
    photo.photographic = True
    plain = formatter.lookup_by_type(Figure)(photo)
    # one pixel per point: the tight bounding box may round a pixel either way, twice the pixels is ~2x off
    assert isinstance(plain, bytes) and abs(_pngxy(plain)[0] - size["width"]) <= 1
    plt.close("all")
    InteractiveShell.clear_instance()  # later tests run outside IPython again


def test_adding_an_attack_is_one_definition_that_the_function_get_tables_and_training_all_use():
    import inspect

    from nbutils.train import fit

    @attacks.register("toy_shift", "Toy shift")
    class ToyShift(attacks.Attack):
        """Moves every pixel by +eps (clamped): an attack in one definition, for this test."""

        eps: float
        calls: int = 0  # a setting that only shows up in the name and the key

        def prepare(self, model):
            eps = check_eps(self.eps, upper=1.0)
            return lambda x, y: (x + eps).clamp(0, 1)

    try:
        x, y = images_and_labels(60, 8)
        function = ToyShift.function
        assert list(inspect.signature(function).parameters)[:5] == ["model", "images", "labels", "eps", "calls"]
        assert torch.equal(function(MODEL, x, y, eps=0.1), (x + 0.1).clamp(0, 1))
        assert torch.equal(attacks.get("toy_shift", eps=0.1)(MODEL, x, y), function(MODEL, x, y, eps=0.1))
        table = robustness_table({"tiny": MODEL}, [attacks.get("toy_shift", eps=0.2)], x, y)
        assert table["attack"].tolist() == ["Toy shift (eps=0.2)"]
        digits = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                  torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1)))
        from nbutils.models import mnist_model
        history = fit(mnist_model("student"), *digits, *digits, epochs=1, batch_size=32, attack=ToyShift(eps=0.1),
                      progress=False)
        assert len(history.rows) == 1
        with pytest.raises(ValueError, match="eps"):
            function(MODEL, x, y, eps=2.0)  # checked once, by the definition's prepare
        with pytest.raises(TypeError, match="did you mean 'eps'"):
            attacks.get("toy_shift", epz=0.1)
    finally:
        attacks.ATTACKS.pop("toy_shift")


def test_every_public_attack_function_is_made_from_its_definition():
    import inspect
    required = {"eps": 0.1, "alpha": 0.1, "steps": 1, "source": MODEL, "attack": attacks.get("fgsm", eps=0.1)}
    for name, cls in attacks.ATTACKS.items():
        function = getattr(attacks, name)
        assert function is cls.function and function.__doc__ == cls.__doc__
        settings = [p for p in inspect.signature(function).parameters if p not in ("model", "images", "labels")]
        given = {f: value for f, value in required.items() if f in settings}
        assert set(settings) == set(cls(**given).settings) | {"batch_size", "progress"}


def test_an_attack_reads_a_detector_heads_class_scores_not_its_extra_columns():
    class Head(nn.Module):
        """The tiny model's logits with 10 large extra columns appended, as a detector head's output."""

        def __init__(self):
            super().__init__()
            self.model = MODEL

        def forward(self, x):
            logits = self.model(x)
            return torch.cat([logits, torch.full_like(logits, 1e3)], 1)

        def class_scores(self, output):
            return output[:, :10]

    x, y = images_and_labels(61, 12)
    head = Head()
    for attack in (attacks.get("pgd", eps=0.1, alpha=0.05, steps=3, random_start=True, restarts=2),
                   attacks.get("deepfool", steps=3), attacks.get("fgsm", eps=0.1)):
        assert torch.equal(attack(head, x, y), attack(MODEL, x, y)), attack.name
    assert robustness_table({"head": head}, [attacks.get("fgsm", eps=0.1)], x, y)["accuracy"].item() == \
        robustness_table({"tiny": MODEL}, [attacks.get("fgsm", eps=0.1)], x, y)["accuracy"].item()


def test_input_gradient_refuses_what_would_give_a_silent_wrong_answer():
    x, y = images_and_labels(62, 3)
    with pytest.raises(ValueError, match="loss"):
        input_gradient(MODEL, x, y, loss="hinge")
    with pytest.raises(ValueError, match="temperature"):
        input_gradient(MODEL, x, y, temperature=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        input_gradient(MODEL, (x * 255).to(torch.uint8), y)
