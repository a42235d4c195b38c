"""The evaluation engine: APGD and Square against torchattacks on a trained MNIST net, their kernel
properties, BPDA, EOT and the transfer attack, the worst-case cascade, its sanity checks, and the
minimal-perturbation helpers."""
import numpy as np
import pandas as pd
import pytest
import torch
import torchattacks
from torch import nn

from nbutils import attacks, data, evaluate, train
from nbutils.attacks.losses import cross_entropy_per_image, loss_gradient
from nbutils.metrics import predict
from nbutils.models import freeze, mnist_model

from conftest import tiny_classifier

EPS = 0.1  # an MNIST budget at which a plainly trained net keeps about two thirds of its images


@pytest.fixture(scope="module")
def mnist_net():
    """A small MNIST net (chapter 3's student), 1 epoch on 10,000 images (about 91 % accurate), and
    1,000 test images."""
    train_set, test_set = data.mnist(train=True), data.mnist(train=False)
    model = mnist_model("student", seed=0)
    train.fit(model, train_set.images[:10_000], train_set.labels[:10_000], test_set.images[-500:],
              test_set.labels[-500:], epochs=1, batch_size=64, lr=1e-3, progress=False)
    return freeze(model.eval()), test_set.images[:1000], test_set.labels[:1000]


def accuracy(model, images, labels) -> float:
    return (predict(model, images, batch_size=500).argmax(1) == labels).double().mean().item()


def assert_agrees(ours: float, reference: float, points: float = 0.01):
    """Within ``points`` of the reference's robust accuracy, and never above it by more."""
    assert abs(ours - reference) <= points, (ours, reference)


# --- agreement with torchattacks -------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_torchattacks_apgd(mnist_net, loss):
    model, x, y = mnist_net
    ours = attacks.apgd(model, x, y, eps=EPS, steps=20, loss=loss, batch_size=500)
    reference = torchattacks.APGD(model, eps=EPS, steps=20, loss=loss, n_restarts=1, seed=0)(x, y)
    assert_agrees(accuracy(model, ours, y), accuracy(model, reference, y))
    assert accuracy(model, ours, y) < accuracy(model, x, y) - 0.15  # it did attack


def test_apgd_t_matches_torchattacks_apgdt(mnist_net):
    model, x, y = mnist_net
    ours = attacks.apgd(model, x, y, eps=EPS, steps=10, loss="dlr", n_target_classes=3, batch_size=500)
    reference = torchattacks.APGDT(model, eps=EPS, steps=10, n_restarts=1, n_classes=10, seed=0)
    reference.n_target_classes = 3  # the 3 highest-ranked other classes, as ours (AutoAttack's 9 take 3 x the time)
    reference = reference(x, y)
    assert_agrees(accuracy(model, ours, y), accuracy(model, reference, y))


def test_square_matches_torchattacks_square(mnist_net):
    """Square is a random search: two runs break slightly different images. Ours and torchattacks'
    must disagree only as two draws of one search would, a McNemar bound on the images one broke
    and the other did not (three standard deviations), and both must attack."""
    model, x, y = mnist_net
    x, y = x[:500], y[:500]
    ours = attacks.square(model, x, y, eps=EPS, n_queries=300, batch_size=500)
    reference = torchattacks.Square(model, eps=EPS, n_queries=300, n_restarts=1, seed=0)(x, y)
    held_ours = predict(model, ours, batch_size=500).argmax(1) == y
    held_reference = predict(model, reference, batch_size=500).argmax(1) == y
    only_ours_broke = int((~held_ours & held_reference).sum())
    only_reference_broke = int((held_ours & ~held_reference).sum())
    spread = 3 * (only_ours_broke + only_reference_broke) ** 0.5
    assert abs(only_ours_broke - only_reference_broke) <= max(spread, 3), (only_ours_broke, only_reference_broke)
    assert accuracy(model, ours, y) < accuracy(model, x, y) - 0.05


def test_the_standard_cascade_is_at_most_torchattacks_autoattack(mnist_net):
    """torchattacks' AutoAttack(version="standard") is a MultiAttack of APGD-CE, APGD-T, FAB-T and
    Square at torchattacks' default 10 steps; the engine's preset has AutoAttack's 100 and no FAB.
    Both with Square at 500 queries instead of 5,000 (on the images left standing, Square's queries
    are nearly all of the test's time, and neither breaks one more image with the other 4,500)."""
    model, x, y = mnist_net
    x, y = x[:120], y[:120]
    ours = evaluate.evaluate(model, x, y, eps=EPS, checks=False, attacks=evaluate.standard(EPS, n_queries=500))
    common = dict(eps=EPS, norm="Linf", seed=0, n_restarts=1)
    reference = torchattacks.MultiAttack([
        torchattacks.APGD(model, loss="ce", **common), torchattacks.APGDT(model, n_classes=10, **common),
        torchattacks.FAB(model, multi_targeted=True, n_classes=10, **common),
        torchattacks.Square(model, n_queries=500, **common)])(x, y)
    assert ours.curve["robust_accuracy"].item() <= accuracy(model, reference, y) + 0.005
    assert ours.curve["robust_accuracy"].item() < accuracy(model, x, y) - 0.15  # it did attack


def test_an_undefended_net_falls_to_zero_at_mnist_eps_03(mnist_net):
    model, x, y = mnist_net
    result = evaluate.evaluate(model, x[:200], y[:200], eps=0.3, checks=False,
                               attacks=[attacks.get("apgd", eps=0.3, steps=20, name="APGD-CE")])
    assert result.curve["robust_accuracy"].item() <= 0.01


# --- kernel properties ------------------------------------------------------------------------------

KERNELS = {"apgd": dict(steps=5), "apgd-t": dict(steps=5, loss="dlr", n_target_classes=2),
           "square": dict(n_queries=30)}


def _attack(kind: str, **settings):
    return attacks.get("square" if kind == "square" else "apgd", **KERNELS[kind], **settings)


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("kind", list(KERNELS))
def test_the_perturbation_stays_in_the_ball_and_the_image_in_range(kind, norm, eps, batch):
    model, (x, y) = tiny_classifier(), batch
    adv = _attack(kind, eps=eps, norm=norm)(model, x, y)
    size = evaluate.perturbation_size(adv, x, norm)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float(size.max()) <= eps * (1 + 1e-5) and 0 <= float(adv.min()) and float(adv.max()) <= 1
    assert float(size.max()) > eps / 2  # the attack moved


@pytest.mark.parametrize("kind", list(KERNELS))
def test_eps_zero_is_the_identity(kind, batch):
    x, y = batch
    assert torch.equal(_attack(kind, eps=0.0)(tiny_classifier(), x, y), x)


@pytest.mark.parametrize("kind", list(KERNELS))
def test_a_seed_fixes_the_result_and_another_seed_changes_it(kind, batch):
    model, (x, y) = tiny_classifier(), batch
    first, again = _attack(kind, eps=0.1, seed=3)(model, x, y), _attack(kind, eps=0.1, seed=3)(model, x, y)
    assert torch.equal(first, again)
    assert not torch.equal(first, _attack(kind, eps=0.1, seed=4)(model, x, y))


@pytest.mark.parametrize("name, settings", [("apgd", dict(steps=20)), ("square", dict(n_queries=300))])
def test_a_targeted_attack_reaches_its_target_more_often_than_the_untargeted_one(mnist_net, name, settings):
    model, x, y = mnist_net
    x, y = x[:200], y[:200]
    target = (y + 1) % 10
    aimed = attacks.get(name, eps=0.3, targeted=True, **settings)(model, x, target)
    loose = attacks.get(name, eps=0.3, **settings)(model, x, y)
    hits = lambda adv: (predict(model, adv).argmax(1) == target).double().mean().item()  # noqa: E731
    assert hits(aimed) > 0.5 and hits(aimed) > hits(loose) + 0.2


# --- BPDA, EOT, transfer -----------------------------------------------------------------------------

class Quantised(nn.Module):
    """A bit-depth defence in front of a model, without BPDA: its input gradient is zero."""

    def __init__(self, model, bits=1):
        super().__init__()
        self.model, self.bits = model, bits

    def forward(self, x):
        return self.model(attacks.bit_depth(x, self.bits))


def test_bpda_keeps_the_defence_forward_and_restores_a_gradient(mnist_net):
    model, x, y = mnist_net
    x, y = x[:200], y[:200]
    defended = Quantised(model)
    wrapped = attacks.BPDA(model, lambda z: attacks.bit_depth(z, 1))
    assert torch.equal(predict(wrapped, x), predict(defended, x))
    pgd = attacks.get("pgd", eps=0.3, alpha=0.01, steps=40)
    masked_gradient = loss_gradient(defended, x, y, cross_entropy_per_image)[0]
    assert torch.count_nonzero(masked_gradient) == 0
    assert accuracy(defended, pgd(defended, x, y), y) == accuracy(defended, x, y)  # PGD learns nothing
    assert accuracy(defended, pgd(wrapped, x, y), y) < accuracy(defended, x, y) - 0.1  # through BPDA it does


class RandomFlip(nn.Module):
    """A randomised defence: each image is flipped left-right with probability 1/2 (torch's global
    generator), then classified."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        flip = torch.rand(x.shape[0]) < 0.5
        return self.model(torch.where(flip[:, None, None, None], x.flip(3), x))


def test_eot_averages_the_gradients_of_the_defences_draws(batch):
    model, (x, y) = tiny_classifier(), batch
    samples = 4
    torch.manual_seed(0)
    eot_gradient = loss_gradient(attacks.EOT(RandomFlip(model), samples), x, y, cross_entropy_per_image)[0]
    torch.manual_seed(0)
    flips = (torch.rand(samples * x.shape[0]) < 0.5).view(samples, -1)
    draws = []
    for flip in flips:
        z = x.detach().requires_grad_(True)
        shown = torch.where(flip[:, None, None, None], z.flip(3), z)
        draws.append(torch.autograd.grad(cross_entropy_per_image(model(shown), y).sum(), z)[0])
    torch.testing.assert_close(eot_gradient, torch.stack(draws).mean(0))


def test_a_transfer_attack_is_the_attack_on_the_source(batch):
    target, source, (x, y) = tiny_classifier(seed=0), tiny_classifier(seed=1), batch
    pgd = attacks.get("pgd", eps=0.1, alpha=0.02, steps=5)
    assert torch.equal(attacks.transfer(target, x, y, source=source, attack=pgd), pgd(source, x, y))
    assert attacks.get("transfer", source=source, attack=pgd).name.startswith("Transfer from tiny")


# --- the cascade ------------------------------------------------------------------------------------

FAST = [attacks.get("apgd", eps=EPS, steps=10, name="APGD-CE"),
        attacks.get("apgd", eps=EPS, steps=10, loss="dlr", n_target_classes=3, name="APGD-T"),
        attacks.get("square", eps=EPS, n_queries=100, name="Square")]


@pytest.fixture(scope="module")
def cascade(mnist_net):
    model, x, y = mnist_net
    return evaluate.evaluate(model, x[:300], y[:300], eps=[0.0, 0.05, EPS], attacks=FAST), x[:300], y[:300]


def test_the_cascade_records_a_worst_case_that_holds(mnist_net, cascade):
    model = mnist_net[0]
    result, x, y = cascade
    for eps, adversarial in result.adversarial.items():
        rows = result.per_image[result.per_image["eps"] == eps]
        fooled = torch.from_numpy((predict(model, adversarial).argmax(1) != y).numpy())
        assert np.array_equal(fooled.numpy(), ~rows["robust"].to_numpy())
        robust = torch.tensor(rows["robust"].to_numpy())
        assert torch.equal(adversarial[robust], x[robust])
        size = evaluate.perturbation_size(adversarial, x, "linf")
        assert float(size.max()) <= eps + 1e-6
        np.testing.assert_allclose(rows["size"].to_numpy()[~robust.numpy()], size[~robust].double().numpy())
        attacked = result.per_attack[result.per_attack["eps"] == eps]
        assert attacked["robust_accuracy"].is_monotonic_decreasing
        assert attacked["robust_accuracy"].iloc[-1] == rows["robust"].mean()
        assert set(rows["broken_by"]) <= {"", "clean", "APGD-CE", "APGD-T", "Square"}


def test_eps_zero_leaves_the_clean_accuracy_and_a_larger_eps_lowers_it(cascade):
    curve = cascade[0].curve.set_index("eps")
    assert curve.loc[0.0, "robust_accuracy"] == curve.loc[0.0, "clean_accuracy"]
    assert curve.loc[0.0, "robust_accuracy"] > curve.loc[0.05, "robust_accuracy"] > curve.loc[EPS, "robust_accuracy"]
    assert (curve["robust_accuracy_low"] <= curve["robust_accuracy"]).all()
    assert (curve["robust_accuracy"] <= curve["robust_accuracy_high"]).all()


def test_a_plain_net_passes_every_check_that_ran(cascade):
    checks = cascade[0].checks
    ran = checks[checks["passed"].notna()]
    assert set(checks["check"]) == {"unbounded_reaches_chance", "iterative_beats_single_step",
                                     "white_box_beats_transfer", "gradient_free_not_stronger", "converged",
                                     "no_zero_gradients"}
    assert ran["passed"].all(), ran
    assert "FAIL" not in cascade[0].report()


def test_a_seed_fixes_the_evaluation(mnist_net):
    model, x, y = mnist_net
    runs = [evaluate.evaluate(model, x[:100], y[:100], eps=EPS, attacks=FAST, checks=False, seed=1) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0].per_image, runs[1].per_image)


def test_a_masked_gradient_fails_its_checks_and_the_failure_is_shown(mnist_net):
    """Bit-depth reduction without BPDA: the gradient is exactly zero, so APGD breaks nothing and
    Square, which needs no gradient, breaks what the gradient attacks left."""
    model, x, y = mnist_net
    result = evaluate.evaluate(Quantised(model), x[:200], y[:200], eps=0.3, attacks=FAST,
                               transfer_from=model)
    flags = result.checks.set_index("check")["passed"]
    assert not flags["no_zero_gradients"] and not flags["gradient_free_not_stronger"]
    assert not flags["unbounded_reaches_chance"] and not flags["white_box_beats_transfer"]
    assert result.report().count("FAIL") >= 4


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=-0.1), "eps"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=1.5), "eps"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, norm="l1"), "norm"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, attacks="strongest"), "attacks"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, attacks=[torchattacks.PGD]), "attacks"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, attacks=[attacks.get("deepfool")]), "l2 norm"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, attacks=[attacks.get("fgsm", eps=0.1,
                                                                              convention="normalised")]), "pixel"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, checks=False,
                                       attacks=[attacks.get("fgsm", eps=0.1, clip=False)]), "outside"),
    (lambda m, x, y: evaluate.evaluate(m, x * float("nan"), y, eps=0.1), "finite"),
    (lambda m, x, y: evaluate.evaluate(m, x, y[:-1], eps=0.1), "labels"),
    (lambda m, x, y: evaluate.evaluate(m, x, y, eps=0.1, tolerance=2.0), "tolerance"),
    (lambda m, x, y: evaluate.minimal_linf(m, x, y, eps_max=0.0 - 1), "eps_max"),
    (lambda m, x, y: evaluate.minimal_l2(m, x, y, attack=attacks.get("pgd", eps=0.1, alpha=0.1, steps=1)), "L2"),
    (lambda m, x, y: evaluate.size_summary([0.1, float("nan")]), "NaN"),
    (lambda m, x, y: evaluate.size_summary(pd.DataFrame({"size": [0.1]})), "eps column"),
    (lambda m, x, y: evaluate.size_summary([[0.1, 0.2]]), "1-D"),
    (lambda m, x, y: evaluate.size_summary([0.1, 0.2], confidence=1.5), "confidence"),
])
def test_bad_input_is_a_clear_error(batch, call, message):
    x, y = batch
    with pytest.raises((ValueError, TypeError), match=message):
        call(tiny_classifier(), x, y)


# --- minimal perturbations ----------------------------------------------------------------------------

def test_bisection_brackets_each_images_minimal_eps(mnist_net):
    model, x, y = mnist_net
    x, y = x[:100], y[:100]
    single = [attacks.get("apgd", eps=0.3, steps=10, name="APGD-CE")]
    table = evaluate.minimal_linf(model, x, y, eps_max=0.3, attacks=single, rounds=5)
    clean = (predict(model, x).argmax(1) == y).numpy()
    assert (table["eps"][~clean] == 0).all()
    finite = table[clean & np.isfinite(table["eps"])]
    assert ((finite["eps"] - finite["low"]) <= 0.3 / 2 ** 5 + 1e-12).all()
    assert (table["resolution"] == 0.3 / 2 ** 5).all()
    assert evaluate.size_summary(table)["resolution"] == 0.3 / 2 ** 5
    at_eps = evaluate.evaluate(model, x, y, eps=EPS, attacks=single, checks=False).curve["robust_accuracy"].item()
    assert abs((table["eps"] > EPS).mean() - at_eps) <= 0.05


def test_minimal_l2_sizes_are_the_flipping_perturbations(mnist_net):
    model, x, y = mnist_net
    table = evaluate.minimal_l2(model, x[:50], y[:50], attack=attacks.get("deepfool"))
    adversarial = attacks.deepfool(model, x[:50], y[:50])
    flipped = (predict(model, adversarial).argmax(1) != y[:50]).numpy()
    clean = (predict(model, x[:50]).argmax(1) == y[:50]).numpy()
    np.testing.assert_allclose(table["eps"][flipped & clean],
                               evaluate.perturbation_size(adversarial, x[:50], "l2").double().numpy()[flipped & clean])
    assert np.isinf(table["eps"][~flipped & clean]).all()


def test_the_median_interval_is_the_order_statistics_of_the_binomial():
    values = np.arange(1, 101, dtype=float)[::-1]  # n = 100: the 40th and 61st order statistics
    summary = evaluate.size_summary(values)
    assert summary == {"median": 50.5, "median_low": 40.0, "median_high": 61.0, "n": 100, "resolution": 0.0}
