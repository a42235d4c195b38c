"""The robustness evaluation engine: a per-image worst case over a cascade of attacks, with the sanity
checks that catch a masked gradient.

Since Athalye, Carlini & Wagner (2018, arXiv:1802.00420), Carlini et al. ("On evaluating adversarial
robustness", 2019, arXiv:1902.06705) and Croce & Hein's AutoAttack (2020, arXiv:2003.01690), a
defence's robustness is reported as the share of images that *no* attack of a diverse ensemble
breaks within one threat model (a norm and a budget eps in pixel units), the ensemble including a
gradient-free attack, together with checks that the attacks worked.

* :func:`evaluate`: the cascade. Each attack (each of its runs: every restart and target class of
  APGD, every restart of Square) attacks only the images still classified correctly, as AutoAttack
  does; per image the result records whether it is robust, which attack broke it and the size of
  its perturbation; per attack, the robust accuracy after it and its time. :data:`PRESETS`
  ``"standard"`` is AutoAttack's standard ensemble without FAB: APGD-CE, APGD-T (the targeted DLR
  towards the 9 most likely other classes), Square (5,000 queries). Several eps give a robust
  accuracy curve.
* :func:`sanity_checks` (run by :func:`evaluate`): Carlini et al. 2019, section 5, as named flags
  with the numbers behind them.
* :func:`minimal_linf` (bisection of eps on the cascade) and :func:`minimal_l2` (a minimum-norm
  attack): per-image minimal perturbations, summarised by :func:`size_summary` with intervals.

Every robust-accuracy number of an evaluation is in one threat model: each attack gets the
evaluation's eps and must keep its images in the eps-ball and in [0, 1] (checked on every output).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .attacks import Attack, get
from .attacks.pgd import NORMS
from .attacks.wrappers import Transfer
from .batching import module_mode, progress_bar
from .checks import (check_choice, check_epsilons, check_flag, check_fraction, check_positive_int,
                     check_seed, checked_inputs)
from .metrics import class_logits, gradient_masking, seed_envelope, wilson_interval

#: Share of the images by which a check may miss before its flag fails (2 points).
TOLERANCE = 0.02


def standard(eps: float, norm: str = "linf", *, num_classes: int = 10, steps: int = 100, n_queries: int = 5000,
             seed: int = 0, batch_size: int = 500) -> list[Attack]:
    """AutoAttack's "standard" ensemble (Croce & Hein 2020) without FAB-T: APGD-CE (one run of
    ``steps``), APGD-T (targeted DLR towards each of the ``min(9, K - 1)`` classes ranked highest after
    the label; omitted below 4 classes, where the targeted DLR is undefined) and Square (``n_queries``).
    eps in pixel units of ``norm``."""
    suite = [get("apgd", eps=eps, norm=norm, steps=steps, loss="ce", seed=seed, batch_size=batch_size,
                 name="APGD-CE")]
    if num_classes >= 4:
        suite.append(get("apgd", eps=eps, norm=norm, steps=steps, loss="dlr", n_target_classes=min(9, num_classes - 1),
                         seed=seed, batch_size=batch_size, name="APGD-T"))
    suite.append(get("square", eps=eps, norm=norm, n_queries=n_queries, seed=seed, batch_size=batch_size,
                     name="Square"))
    return suite


#: The named ensembles: ``name -> (eps, norm, num_classes, seed, batch_size) -> attacks``.
PRESETS = {"standard": standard}

#: The attacks that read no gradient (the cascade's gradient-free members).
GRADIENT_FREE = ("square",)


def attack_norm(attack: Attack) -> str:
    """The norm of an attack's budget: its ``norm`` setting, else its class's ``norm_of_ball``
    ("l2" for the iterative L2 attack, DeepFool, C&W; "linf" otherwise); a transfer attack's is its
    inner attack's."""
    if isinstance(attack, Transfer):
        return attack_norm(attack.attack)
    return attack.settings.get("norm", getattr(attack, "norm_of_ball", "linf"))


def within_budget(attack: Attack, eps: float, norm: str) -> Attack:
    """``attack`` with the evaluation's budget eps (its own eps replaced; a transfer attack's inner
    attack's). An attack of another norm, or FGSM in the tutorial's normalised units, is refused."""
    if attack_norm(attack) != norm:
        raise ValueError(f"attack {attack.name!r} bounds the {attack_norm(attack)} norm, the evaluation the {norm} "
                         "norm: every attack of one evaluation shares its threat model")
    if attack.settings.get("convention", "pixel") != "pixel":
        raise ValueError(f"attack {attack.name!r} measures eps in {attack.settings['convention']} units; an "
                         "evaluation takes pixel units (convention='pixel')")
    if isinstance(attack, Transfer):
        return attack.replace(attack=within_budget(attack.attack, eps, norm))
    return attack.replace(eps=eps) if "eps" in attack.settings else attack


def stages(attack: Attack) -> list[Attack]:
    """The single runs an attack is made of (APGD's restarts and target classes, Square's restarts),
    or the attack itself."""
    split = getattr(attack, "stages", None)
    return split() if callable(split) else [attack]


def perturbation_size(adversarial: torch.Tensor, images: torch.Tensor, norm: str) -> torch.Tensor:
    """Per image, the size of ``adversarial - images`` in ``norm`` (pixel units): (N, ...) -> (N,)."""
    delta = (adversarial - images).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate` found.

    per_image: one row per (eps, image): index, label, clean_correct, robust, broken_by (the attack
    whose run broke it; "clean" if misclassified unattacked; "" if robust), size (the perturbation
    in the norm, pixel units; 0 for "clean", NaN when robust). per_attack: one row per (eps,
    attack): n_attacked (images it saw), n_broken, robust_accuracy after it, seconds. curve: per eps,
    clean and robust accuracy with 95 % Wilson intervals. checks: :func:`sanity_checks`' flags (empty
    when not run). adversarial: {eps: (N, C, H, W)} the worst-case images (the clean image where
    robust). settings: norm, epsilons, attacks, seed.
    """

    per_image: pd.DataFrame
    per_attack: pd.DataFrame
    curve: pd.DataFrame
    checks: pd.DataFrame
    adversarial: dict[float, torch.Tensor]
    settings: dict

    def report(self) -> str:
        """A plain-text report: the curve, the cascade and every check (a failed one marked FAIL)."""
        lines = [f"robustness under {self.settings['norm']} perturbations (pixel units), "
                 f"attacks: {', '.join(self.settings['attacks'])}"]
        for row in self.curve.itertuples():
            lines.append(f"eps {row.eps:g}: clean {row.clean_accuracy:.4f}, robust {row.robust_accuracy:.4f} "
                         f"[{row.robust_accuracy_low:.4f}, {row.robust_accuracy_high:.4f}] of {row.n_images} images")
        for row in self.per_attack.itertuples():
            lines.append(f"  eps {row.eps:g} {row.attack:<24} attacked {row.n_attacked:>6}  broke {row.n_broken:>6}  "
                         f"robust after {row.robust_accuracy:.4f}  {row.seconds:.1f} s")
        for row in self.checks.itertuples():
            verdict = "not run" if row.passed is None or pd.isna(row.passed) else ("pass" if row.passed else "FAIL")
            lines.append(f"  eps {row.eps:g} check {row.check:<28} {verdict:<8} {row.detail}")
        return "\n".join(lines)


def _correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    return class_logits(model, images, batch_size=batch_size).argmax(1) == labels.cpu()


def run_cascade(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attacks: Sequence[Attack], *,
                eps: float, norm: str, batch_size: int, progress: bool = False
                ) -> tuple[torch.Tensor, list[str], torch.Tensor, pd.DataFrame]:
    """The cascade at one budget, on inputs :func:`evaluate` has checked. Each run of each attack
    (:func:`stages`) attacks the images still classified correctly; an image's adversarial is the
    first that fools the model. Returns (adversarial (N, C, H, W) on the images' device, broken_by
    per image, robust (N,) bool on the CPU, per-attack table). An attack whose output leaves the
    eps-ball or [0, 1] is an error: it would leave the threat model."""
    adversarial = images.clone()
    robust = _correct(model, images, labels, batch_size)
    broken_by = ["" if r else "clean" for r in robust.tolist()]
    rows = []
    runs = [(attack, run) for attack in attacks for run in stages(within_budget(attack, eps, norm))]
    for attack, run in progress_bar(runs, desc=f"cascade eps={eps:g}", enabled=progress):
        standing = robust.nonzero().squeeze(1)
        start, n_broken = time.perf_counter(), 0
        if standing.numel():
            index = standing.to(images.device)
            x, y = images[index], labels[index]
            adv = run.run(model, x, y)
            size = perturbation_size(adv, x, norm)
            if bool((size > eps * (1 + 1e-5) + 1e-6).any()) or bool((adv < 0).any() | (adv > 1).any()):
                raise ValueError(f"attack {run.name!r} returned images outside the {norm} ball of eps {eps:g} or "
                                 "outside [0, 1]")
            fooled = ~_correct(model, adv, y, batch_size)
            broken = standing[fooled]
            adversarial[broken.to(images.device)] = adv[fooled.to(adv.device)]
            robust[broken] = False
            for i in broken.tolist():
                broken_by[i] = attack.name
            n_broken = int(fooled.sum())
        rows.append({"eps": eps, "attack": attack.name, "run": run.name, "n_attacked": int(standing.numel()),
                     "n_broken": n_broken, "seconds": time.perf_counter() - start})
    runs_table = pd.DataFrame(rows, columns=["eps", "attack", "run", "n_attacked", "n_broken", "seconds"])
    per_attack = runs_table.groupby(["eps", "attack"], sort=False, as_index=False).agg(
        n_attacked=("n_attacked", "first"), n_broken=("n_broken", "sum"), seconds=("seconds", "sum"))
    n = images.shape[0]
    per_attack["robust_accuracy"] = (robust.sum().item() + per_attack["n_broken"][::-1].cumsum()[::-1]
                                     - per_attack["n_broken"]) / n
    return adversarial, broken_by, robust, per_attack


def _suite(attacks, eps: float, norm: str, num_classes: int, seed: int, batch_size: int) -> list[Attack]:
    if isinstance(attacks, str):
        return PRESETS[attacks](eps, norm, num_classes=num_classes, seed=seed, batch_size=batch_size)
    return list(attacks)


def _check_attacks(attacks) -> None:
    if isinstance(attacks, str):
        check_choice(attacks, list(PRESETS), "attacks")
        return
    if not isinstance(attacks, Sequence) or not attacks or not all(isinstance(a, Attack) for a in attacks):
        raise TypeError(f"attacks must be a preset name ({sorted(PRESETS)}) or a non-empty list of "
                        f"nbutils.attacks.Attack, got {attacks!r}")


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float | Sequence[float],
             norm: str = "linf", attacks: str | Sequence[Attack] = "standard", checks: bool = True,
             transfer_from: nn.Module | None = None, tolerance: float = TOLERANCE, seed: int = 0,
             batch_size: int = 500, keep_images: bool = True, progress: bool = False) -> Evaluation:
    """Robust accuracy of ``model`` as the per-image worst case over a cascade of attacks.

    model: a classifier of [0, 1] pixels (in eval mode during the evaluation); images: (N, C, H, W)
    in [0, 1]; labels: (N,) the true classes. eps: the budget in pixel units of ``norm`` ("linf" or
    "l2"), or several (a robust-accuracy curve). attacks: a preset of :data:`PRESETS` or a list of
    attacks (each given the evaluation's eps). checks: run :func:`sanity_checks` at each eps (they
    cost about one more APGD-CE with twice the steps and 2 restarts on the survivors, and
    an APGD-CE at an unbounded eps on up to 200 images); ``transfer_from``: a source model for
    the transfer check; tolerance: the share of images by which a check may miss. seed: the attacks'
    random starts. keep_images: keep the worst-case images. Returns an :class:`Evaluation`.
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    norm = check_choice(norm, NORMS, "norm")
    epsilons = check_epsilons([eps] if isinstance(eps, (int, float)) else eps, upper=1.0 if norm == "linf" else None)
    _check_attacks(attacks)
    checks, keep_images = check_flag(checks, "checks"), check_flag(keep_images, "keep_images")
    tolerance, seed = check_fraction(tolerance, "tolerance", closed_low=True), check_seed(seed)
    if transfer_from is not None and not isinstance(transfer_from, nn.Module):
        raise TypeError(f"transfer_from must be a torch.nn.Module, got {type(transfer_from).__name__}")
    num_classes = class_logits(model, images[:1], batch_size=1).shape[1]
    per_image, per_attack, curve, flags, kept = [], [], [], [], {}
    with module_mode(model, training=False):
        for e in epsilons:
            suite = _suite(attacks, e, norm, num_classes, seed, batch_size)
            adversarial, broken_by, robust, table = run_cascade(model, images, labels, suite, eps=e, norm=norm,
                                                                batch_size=batch_size, progress=progress)
            size = perturbation_size(adversarial, images, norm).cpu().double()
            size[robust] = float("nan")
            per_image.append(pd.DataFrame({"eps": e, "index": np.arange(len(robust)), "label": labels.cpu().numpy(),
                                           "clean_correct": [b != "clean" for b in broken_by],
                                           "robust": robust.numpy(), "broken_by": broken_by, "size": size.numpy()}))
            per_attack.append(table)
            curve.append(_curve_row(e, per_image[-1]))
            if checks:
                flags.append(sanity_checks(model, images, labels, eps=e, norm=norm, cascade=table, robust=robust,
                                           suite=suite, transfer_from=transfer_from, tolerance=tolerance, seed=seed,
                                           batch_size=batch_size).assign(eps=e))
            if keep_images:
                kept[e] = adversarial
    names = [a.name for a in _suite(attacks, epsilons[0], norm, num_classes, seed, batch_size)]
    return Evaluation(per_image=pd.concat(per_image, ignore_index=True),
                      per_attack=pd.concat(per_attack, ignore_index=True),
                      curve=pd.DataFrame(curve),
                      checks=pd.concat(flags, ignore_index=True) if flags else pd.DataFrame(columns=CHECK_COLUMNS),
                      adversarial=kept, settings={"norm": norm, "epsilons": epsilons, "attacks": names, "seed": seed})


def _curve_row(eps: float, per_image: pd.DataFrame) -> dict:
    n, clean, robust = len(per_image), int(per_image["clean_correct"].sum()), int(per_image["robust"].sum())
    low, high = wilson_interval(robust, n)
    return {"eps": eps, "n_images": n, "clean_accuracy": clean / n, "robust_accuracy": robust / n,
            "robust_accuracy_low": low, "robust_accuracy_high": high}


CHECK_COLUMNS = ["check", "passed", "value", "threshold", "detail"]


def _flag(check: str, passed: bool | None, value: float, threshold: float, detail: str) -> dict:
    return {"check": check, "passed": passed, "value": value, "threshold": threshold, "detail": detail}


def _accuracy_after(model, images, labels, attack: Attack, batch_size: int) -> float:
    adv = attack.run(model, images, labels)
    return _correct(model, adv, labels, batch_size).double().mean().item()


def unbounded_eps(images: torch.Tensor, norm: str) -> float:
    """A budget that reaches every image of the [0, 1] cube: 1 (L-inf), its diameter sqrt(C H W) (L2)."""
    return 1.0 if norm == "linf" else math.sqrt(images[0].numel())


def sanity_checks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, norm: str,
                  cascade: pd.DataFrame, robust: torch.Tensor, suite: Sequence[Attack],
                  transfer_from: nn.Module | None = None, tolerance: float = TOLERANCE, seed: int = 0,
                  batch_size: int = 500, n_unbounded: int = 200) -> pd.DataFrame:
    """Carlini et al. (2019, section 5)'s checks of one cascade, on inputs :func:`evaluate` has checked.

    One row per check: check, passed (True / False; None when it could not run), value (the measured
    number), threshold, detail (the numbers in words). The checks, each a share of the N images:

    * ``unbounded_reaches_chance``: APGD-CE at a budget that reaches any image (:func:`unbounded_eps`),
      on the first ``n_unbounded`` images, leaves an accuracy of at most 1 / K + tolerance.
    * ``iterative_beats_single_step``: the cascade's gradient attacks leave at most the accuracy of one
      signed-gradient step of eps (FGSM; one L2 step of length eps) + tolerance.
    * ``white_box_beats_transfer``: the cascade leaves at most the accuracy after APGD-CE transferred
      from ``transfer_from`` + tolerance (None without a source).
    * ``gradient_free_not_stronger``: the gradient-free attacks break at most ``tolerance`` of the
      images the gradient attacks left (more: the gradient is masked).
    * ``converged``: APGD-CE with twice the steps and 2 more restarts breaks at most ``tolerance``
      of the cascade's survivors (more: the attacks had not converged).
    * ``no_zero_gradients``: at most ``tolerance`` of the clean images have an input gradient that is
      exactly zero (:func:`nbutils.metrics.gradient_masking`).
    """
    n, num_classes = images.shape[0], class_logits(model, images[:1], batch_size=1).shape[1]
    apgd = next((a for a in suite if a.key_name == "apgd"), get("apgd", eps=eps, norm=norm, seed=seed))
    ce = apgd.replace(loss="ce", n_target_classes=0, restarts=1, batch_size=batch_size, eps=eps, norm=norm)
    gradient_rows = cascade[~cascade["attack"].isin([a.name for a in suite if a.key_name in GRADIENT_FREE])]
    after_gradient = gradient_rows["robust_accuracy"].iloc[-1] if len(gradient_rows) else 1.0
    final = cascade["robust_accuracy"].iloc[-1]
    rows = []

    head = slice(0, min(n_unbounded, n))
    wide = unbounded_eps(images, norm)
    unbounded = _accuracy_after(model, images[head], labels[head], ce.replace(eps=wide), batch_size)
    chance = 1 / num_classes
    rows.append(_flag("unbounded_reaches_chance", unbounded <= chance + tolerance, unbounded, chance + tolerance,
                      f"APGD-CE at eps {wide:g} leaves {unbounded:.4f} of {head.stop} images (chance {chance:.4f})"))

    single = (get("fgsm", eps=eps, batch_size=batch_size) if norm == "linf"
              else get("pgd", eps=eps, alpha=eps, steps=1, norm="l2", batch_size=batch_size))
    one_step = _accuracy_after(model, images, labels, single, batch_size)
    rows.append(_flag("iterative_beats_single_step", after_gradient <= one_step + tolerance, after_gradient,
                      one_step + tolerance, f"gradient attacks leave {after_gradient:.4f}, one step {one_step:.4f}"))

    if transfer_from is None:
        rows.append(_flag("white_box_beats_transfer", None, float("nan"), float("nan"), "no source model given"))
    else:
        with module_mode(transfer_from, training=False):
            transferred = _accuracy_after(model, images, labels, Transfer(source=transfer_from, attack=ce), batch_size)
        rows.append(_flag("white_box_beats_transfer", final <= transferred + tolerance, final, transferred + tolerance,
                          f"cascade leaves {final:.4f}, APGD-CE transferred from "
                          f"{getattr(transfer_from, 'name', 'the source')} {transferred:.4f}"))

    free = cascade[cascade["attack"].isin([a.name for a in suite if a.key_name in GRADIENT_FREE])]
    if len(free):
        broken, left = int(free["n_broken"].sum()), int(round(after_gradient * n))
        share = broken / n
        rows.append(_flag("gradient_free_not_stronger", share <= tolerance, share, tolerance,
                          f"gradient-free attacks broke {broken} of the {left} images the gradient attacks left "
                          f"({share:.4f} of all {n})"))
    else:
        rows.append(_flag("gradient_free_not_stronger", None, float("nan"), tolerance, "no gradient-free attack run"))

    survivors = robust.nonzero().squeeze(1).to(images.device)
    if survivors.numel():
        longer = ce.replace(steps=2 * ce.steps, restarts=2, seed=seed + 1000)
        still = _accuracy_after(model, images[survivors], labels[survivors], longer, batch_size)
        extra = (1 - still) * survivors.numel() / n
    else:
        extra = 0.0
    rows.append(_flag("converged", extra <= tolerance, extra, tolerance,
                      f"APGD-CE with {2 * ce.steps} steps and 2 restarts broke a further {extra:.4f} of the images"))

    zero = gradient_masking(model, images, labels, batch_size=batch_size)["grad_zero"].mean()
    rows.append(_flag("no_zero_gradients", zero <= tolerance, zero, tolerance,
                      f"{zero:.4f} of the clean images have an exactly zero input gradient"))
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def minimal_linf(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps_max: float,
                 attacks: str | Sequence[Attack] = "standard", rounds: int = 6, seed: int = 0,
                 batch_size: int = 500) -> pd.DataFrame:
    """Per image, the smallest L-inf budget at which the cascade breaks it, by bisection of eps.

    Round 0 runs the cascade at ``eps_max``; each of ``rounds`` rounds then halves every image's
    interval, running the cascade once per distinct midpoint on the images of that midpoint (every
    image is attacked once a round). Returns a table: index, label, eps (the upper end of its final
    interval: broken there, within eps_max / 2**rounds of the minimum the cascade finds; 0 if
    misclassified clean; inf if it survives eps_max), low (the lower end), resolution (eps_max /
    2**rounds, the step of the bisection's grid). images: (N, C, H, W) in [0, 1]; labels: (N,)."""
    images, labels = checked_inputs(model, images, labels, batch_size)
    eps_max = check_epsilons([eps_max], name="eps_max", upper=1.0)[0]
    rounds, seed = check_positive_int(rounds, "rounds"), check_seed(seed)
    _check_attacks(attacks)
    num_classes = class_logits(model, images[:1], batch_size=1).shape[1]
    n = images.shape[0]
    low, high = torch.zeros(n, dtype=torch.float64), torch.full((n,), eps_max, dtype=torch.float64)
    with module_mode(model, training=False):
        clean = _correct(model, images, labels, batch_size)
        high[~clean] = 0.0

        def broken_at(eps: float, index: torch.Tensor) -> torch.Tensor:
            suite = _suite(attacks, eps, "linf", num_classes, seed, batch_size)
            on = index.to(images.device)
            return ~run_cascade(model, images[on], labels[on], suite, eps=eps, norm="linf", batch_size=batch_size)[2]

        active = clean.nonzero().squeeze(1)
        survived = active[~broken_at(eps_max, active)] if active.numel() else active
        high[survived] = float("inf")
        active = active[~torch.isin(active, survived)]
        for _ in range(rounds):
            mid = (low + high) / 2
            for value in torch.unique(mid[active]).tolist():
                group = active[mid[active] == value]
                broken = broken_at(value, group)
                high[group[broken]], low[group[~broken]] = value, value
    return pd.DataFrame({"index": np.arange(n), "label": labels.cpu().numpy(), "eps": high.numpy(),
                         "low": low.numpy(), "resolution": eps_max / 2 ** rounds})


def minimal_l2(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, attack: Attack | None = None,
               batch_size: int = 500) -> pd.DataFrame:
    """Per image, the L2 size (pixel units) of the perturbation a minimum-norm attack needs to flip it.

    attack: a minimum-norm attack of the package (default: C&W-L2, ``get("cw_l2")``; DeepFool is
    faster and looser). Returns a table: index, label, eps (the L2 norm of its perturbation when it
    flipped the image; 0 if misclassified clean; inf if the attack failed). images: (N, C, H, W) in
    [0, 1]; labels: (N,)."""
    images, labels = checked_inputs(model, images, labels, batch_size)
    attack = get("cw_l2", batch_size=batch_size) if attack is None else attack
    if not isinstance(attack, Attack) or attack_norm(attack) != "l2":
        raise ValueError(f"minimal_l2 needs an L2 attack of the package (cw_l2, deepfool), got {attack!r}")
    with module_mode(model, training=False):
        clean = _correct(model, images, labels, batch_size)
        adversarial = attack.run(model, images, labels)
        flipped = ~_correct(model, adversarial, labels, batch_size)
    size = perturbation_size(adversarial, images, "l2").cpu().double()
    size = torch.where(flipped, size, torch.tensor(float("inf"), dtype=torch.float64))
    size[~clean] = 0.0
    return pd.DataFrame({"index": np.arange(images.shape[0]), "label": labels.cpu().numpy(), "eps": size.numpy()})


def size_summary(sizes: pd.DataFrame | pd.Series | np.ndarray, *, confidence: float = 0.95) -> dict:
    """The median of per-image minimal perturbations (inf counts as larger than any) with its
    distribution-free interval (the order statistics whose ranks bracket the median with
    ``confidence`` under Binomial(n, 1/2)), n, and ``resolution``: the step of the grid the sizes lie
    on, by which one image crossing a grid point moves a bound.

    sizes: a table of :func:`minimal_linf` (its ``eps`` on the grid of its ``resolution``) or of
    :func:`minimal_l2`, or sizes measured exactly (a 1-D array or Series: resolution 0).
    Returns {"median", "median_low", "median_high", "n", "resolution"}."""
    from scipy.stats import binom

    confidence = check_fraction(confidence, "confidence")
    if isinstance(sizes, pd.DataFrame):
        if "eps" not in sizes.columns:
            raise ValueError(f"size_summary needs a table of minimal_linf or minimal_l2 (an eps column), "
                             f"got columns {list(sizes.columns)}")
        resolution = float(sizes["resolution"].max()) if "resolution" in sizes.columns else 0.0
        sizes = sizes["eps"]
    else:
        resolution = 0.0
    values = np.sort(np.asarray(sizes, dtype=float))
    n = len(values)
    if n == 0 or values.ndim != 1:
        raise ValueError(f"size_summary needs a 1-D set of at least one size, got shape {values.shape}")
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError("sizes must be >= 0 (inf: not flipped), got NaN or a negative size")
    lower = int(binom.ppf((1 - confidence) / 2, n, 0.5))
    upper = min(n - 1, int(binom.isf((1 - confidence) / 2, n, 0.5)))
    return {"median": float(np.median(values)), "median_low": float(values[max(lower - 1, 0)]),
            "median_high": float(values[upper]), "n": n, "resolution": resolution}


# ---------------------------------------------------------------------------------------------
# The report card: every defence under a non-adaptive and an adaptive evaluation

def failed_checks(checks: pd.DataFrame) -> str:
    """The names of the checks that failed (a flag that did not run is not a failure), joined by ", "."""
    failed = checks[checks["passed"].map(lambda passed: passed is not None and not pd.isna(passed) and not passed)]
    return ", ".join(dict.fromkeys(failed["check"]))


def card_rows(non_adaptive: pd.DataFrame, adaptive: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The report card from per-seed results: one row per ``by`` group (e.g. dataset, defence).

    non_adaptive, adaptive: one row per (group, seed) with n_images, clean_accuracy, robust_accuracy
    (fractions) and, in ``adaptive``, failed_checks (:func:`failed_checks` of that seed's run). Returns
    by..., n_seeds, clean, non_adaptive and adaptive (means over seeds), each with ``_low`` and
    ``_high``: the envelope of the seeds' Wilson 95 % intervals (:func:`nbutils.metrics.seed_envelope`),
    ``gap`` (non-adaptive minus adaptive, means), ``only_looked_robust`` (the non-adaptive envelope
    lies wholly above the adaptive one: the non-adaptive number was the attack's failure) and
    ``failed_checks`` (every seed's, joined)."""
    by = list(by)

    def envelope(table: pd.DataFrame, rate: str, name: str) -> pd.DataFrame:
        summary = seed_envelope(table, by, rate=rate, total="n_images")
        return summary[by + ["n_seeds", rate, f"{rate}_low", f"{rate}_high"]].rename(
            columns={rate: name, f"{rate}_low": f"{name}_low", f"{rate}_high": f"{name}_high"})

    card = envelope(adaptive, "clean_accuracy", "clean")
    card = card.merge(envelope(non_adaptive, "robust_accuracy", "non_adaptive").drop(columns="n_seeds"), on=by)
    card = card.merge(envelope(adaptive, "robust_accuracy", "adaptive").drop(columns="n_seeds"), on=by)
    card["gap"] = card["non_adaptive"] - card["adaptive"]
    card["only_looked_robust"] = card["non_adaptive_low"] > card["adaptive_high"]
    flags = adaptive.groupby(by, sort=False)["failed_checks"].agg(
        lambda names: ", ".join(dict.fromkeys(n for joined in names for n in joined.split(", ") if n)))
    return card.merge(flags.reset_index(), on=by)
