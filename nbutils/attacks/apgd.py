"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, arXiv:2003.01690): PGD without a step size to tune.

One run (:func:`apgd_run`) starts at a random point on the eps-ball's boundary and takes ``steps``
steps with momentum 0.75 (eq. 2 of the paper). Its step size starts at 2 eps and is halved, per
image, at the checkpoints ``w_j = ceil(p_j steps)`` (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
max(p_j - p_{j-1} - 0.03, 0.06)) when since the last checkpoint the loss rose in at most
``rho`` of the steps (condition 1) or neither the step size was halved nor the best loss improved
(condition 2); an image whose step is halved restarts from its best point. Each image keeps its
first successful point and its highest-loss point. The checkpoint schedule depends on ``steps``
only, so every decision is a ``torch.where`` mask: no host synchronisation inside a kernel.

The losses: "ce" (APGD-CE), "dlr" (the difference-of-logits ratio, APGD-DLR) or any loss of
:mod:`.losses`; APGD-T (``n_target_classes`` > 0) ascends the targeted DLR of eq. 4 towards each of
the ``n_target_classes`` classes that score highest on the clean image after the label, in turn.
eps is in pixel units of the norm ("linf": the largest change of a pixel; "l2": the L2 norm of the
whole perturbation of [0, 1] images).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..batching import class_scores, model_device
from ..checks import check_choice, check_eps, check_flag, check_fraction, check_positive_int, check_seed
from .base import Attack, Kernel, register
from .losses import LossFunction, check_loss, dlr_targeted_per_image, loss_gradient
from .pgd import NORMS, per_image_l2, project_to_ball, steepest_step

#: The momentum of every step after the first (alpha in eq. 2 of the paper).
MOMENTUM = 0.75

#: What one run ascends: ``(model output (B, ...), labels (B,) or (B, 2) label-target pairs) -> (B,)``.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def checkpoints(steps: int) -> dict[int, int]:
    """{iteration (0-based) after which the step sizes are checked: the length of the window that
    ends there}: the reference implementation's integer form of the schedule p_j (first window
    ``max(int(0.22 steps), 1)`` steps, each next one ``max(int(0.03 steps), 1)`` shorter, down to
    ``max(int(0.06 steps), 1)``)."""
    window, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, end = {}, window
    while end <= steps:
        points[end - 1] = window
        window = max(window - shrink, shortest)
        end += window
    return points


def boundary_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """APGD's starting point, clamped to [0, 1]: x plus a random offset scaled onto the ball's surface
    (uniform noise with its largest entry at eps for "linf", Gaussian noise of L2 norm eps for "l2")."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
        scale = noise.flatten(1).abs().amax(1)
    else:
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        scale = per_image_l2(noise)
    return (x + eps * noise / (scale.clamp_min(1e-12))[:, None, None, None]).clamp(0, 1)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image choice between two (B, ...) tensors by a (B,) mask."""
    return torch.where(mask.view(-1, *(1,) * (a.ndim - 1)), a, b)


def apgd_run(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, objective: Objective,
             succeeded: Callable[[torch.Tensor], torch.Tensor], eps: float, norm: str, steps: int, rho: float,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run on a batch on the model's device, ascending ``objective(output, labels)``.

    x: (B, C, H, W); labels: what ``objective`` reads (B,) or (B, 2); succeeded: ``(class scores
    (B, K)) -> (B,) bool``. Returns (the first successful point, else the highest-loss one (B, C, H,
    W); whether the run succeeded (B,); the highest loss (B,)). ``steps`` + 1 input gradients; no
    host synchronisation. Unchecked."""
    def gradient_at(point):
        grad, output = loss_gradient(model, point, labels, objective)
        return grad, objective(output, labels), succeeded(class_scores(model, output))

    adv = boundary_start(x, eps, norm, generator)
    grad, loss, fooled = gradient_at(adv)
    found = adv
    best, best_grad, best_loss = adv, grad, loss
    previous, previous_loss = adv, loss
    step = torch.full((x.shape[0],), 2 * eps, device=x.device, dtype=x.dtype)
    rises = torch.zeros_like(loss)
    halved_last = torch.ones_like(fooled)
    best_at_last_check = best_loss
    checks = checkpoints(steps)
    for i in range(steps):
        momentum = 1.0 if i == 0 else MOMENTUM
        z = project_to_ball(adv + step[:, None, None, None] * steepest_step(grad, norm), x, eps, norm)
        adv, previous = project_to_ball(adv + momentum * (z - adv) + (1 - momentum) * (adv - previous), x, eps, norm), adv
        grad, loss, success = gradient_at(adv)
        found = _where(success & ~fooled, adv, found)
        fooled = fooled | success
        rises = rises + (loss > previous_loss).to(rises.dtype)
        previous_loss = loss
        improved = loss > best_loss
        best, best_grad, best_loss = _where(improved, adv, best), _where(improved, grad, best_grad), torch.where(
            improved, loss, best_loss)
        if i in checks:
            halve = (rises <= rho * checks[i]) | (~halved_last & (best_at_last_check >= best_loss))
            step = torch.where(halve, step / 2, step)
            adv, grad = _where(halve, best, adv), _where(halve, best_grad, grad)
            halved_last, best_at_last_check, rises = halve, best_loss, torch.zeros_like(rises)
    return _where(fooled, found, best), fooled, best_loss


def _pairs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, first_target: int, n_targets: int) -> list[torch.Tensor]:
    """(B, 2) label-target pairs, one per target: the classes ranked ``first_target``, ... among the
    other classes by the clean image's scores (1: the most likely class after the label)."""
    with torch.no_grad():
        scores = class_scores(model, model(x))
    last = first_target + n_targets - 1
    if last > scores.shape[1] - 1:
        raise ValueError(f"first_target + n_target_classes - 1 = {last} exceeds the {scores.shape[1] - 1} classes "
                         "other than the label; lower n_target_classes")
    ranked = scores.scatter(1, y[:, None], float("-inf")).topk(last, dim=1).indices
    return [torch.stack([y, ranked[:, k - 1]], 1) for k in range(first_target, last + 1)]


def _targeted_objective(model: nn.Module, loss: str | LossFunction, loss_fn: LossFunction) -> Objective:
    """APGD-T's objective on (label, target) pairs: the targeted DLR for "dlr", else minus the loss
    of the target (a targeted descent of ``loss_fn``)."""
    if loss == "dlr":
        return lambda output, pair: dlr_targeted_per_image(class_scores(model, output), pair[:, 0], pair[:, 1])
    return lambda output, pair: -loss_fn(output, pair[:, 1])


def apgd_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str | LossFunction,
                loss_fn: LossFunction, targeted: bool, n_target_classes: int, first_target: int, restarts: int,
                generator: torch.Generator, **run) -> torch.Tensor:
    """APGD on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W). Every run
    (``restarts`` per target class, or ``restarts`` untargeted) attacks the whole batch; each image
    keeps the first run that succeeds (misclassified, or classified as the target when ``targeted``),
    else the point of highest loss over the runs. No host synchronisation. Unchecked."""
    if n_target_classes:
        pairs = _pairs(model, x, y, first_target, n_target_classes)
        objective = _targeted_objective(model, loss, loss_fn)
    else:
        pairs = [y]
        objective = (lambda output, t: -loss_fn(output, t)) if targeted else loss_fn
    succeeded = (lambda scores: scores.argmax(1) == y) if targeted else (lambda scores: scores.argmax(1) != y)
    result, done, top = None, None, None
    for labels in pairs:
        for _ in range(restarts):
            adv, fooled, best_loss = apgd_run(model, x, labels, objective=objective, succeeded=succeeded,
                                              generator=generator, **run)
            if result is None:
                result, done, top = adv, fooled, best_loss
                continue
            take = (fooled & ~done) | (~fooled & ~done & (best_loss > top))
            result, done, top = _where(take, adv, result), done | fooled, torch.where(take, best_loss, top)
    return result


@register("apgd", "APGD")
class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020, arXiv:2003.01690), the gradient attack of AutoAttack.

    ``steps`` steps (``steps`` + 1 input gradients per run) from a random point on the surface of the
    eps-ball of ``norm`` ("linf" or "l2", eps in pixel units), with momentum 0.75 and a per-image
    step size that starts at 2 eps and halves at the checkpoints (module docstring; ``rho``: the
    share of rising steps below which it halves). loss: "ce" (APGD-CE), "dlr" (APGD-DLR) or any loss
    of :mod:`nbutils.attacks.losses`, at ``temperature``. ``n_target_classes`` > 0 gives APGD-T: one
    targeted run (the targeted DLR of eq. 4 for loss "dlr", else a descent of the target's loss)
    towards each of the classes ranked ``first_target``, ..., ``first_target + n_target_classes - 1``
    after the label on the clean image; labels are then the true classes and success is any
    misclassification. ``targeted``: labels are target classes, whose loss is descended.
    ``restarts``: runs per target; each image keeps its first success, else its highest-loss point.
    Random starts come from a generator on the model's device seeded with ``seed``. images: (N, C,
    H, W) in [0, 1]; labels: (N,). Returns the adversarial images (N, C, H, W) on the images' device.

    :meth:`stages` splits it into single runs, which :func:`nbutils.evaluate.evaluate` runs in turn
    on the images still classified correctly (restart r seeded with ``seed + r``).
    """

    eps: float
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    loss: str | LossFunction = "ce"
    temperature: float = 1.0
    n_target_classes: int = 0
    first_target: int = 1
    targeted: bool = False
    rho: float = 0.75
    seed: int = 0

    def prepare(self, model: nn.Module) -> Kernel:
        norm = check_choice(self.norm, NORMS, "norm")
        targeted = check_flag(self.targeted, "targeted")
        if check_seed(self.n_target_classes, "n_target_classes") and targeted:
            raise ValueError("n_target_classes > 0 (APGD-T) takes the true labels and picks its own targets; "
                             "it cannot be combined with targeted=True")
        generator = torch.Generator(model_device(model)).manual_seed(check_seed(self.seed))
        return partial(apgd_kernel, model, eps=check_eps(self.eps, upper=1.0 if norm == "linf" else None), norm=norm,
                       steps=check_positive_int(self.steps, "steps"), rho=check_fraction(self.rho, "rho"),
                       loss=self.loss, loss_fn=check_loss(self.loss, self.temperature, model), targeted=targeted,
                       n_target_classes=self.n_target_classes,
                       first_target=check_positive_int(self.first_target, "first_target"),
                       restarts=check_positive_int(self.restarts, "restarts"), generator=generator)

    def stages(self) -> list["APGD"]:
        """The single runs this attack is made of (one per target class and restart, restart r seeded
        with ``seed + r``), for a cascade that attacks, at each run, only the images still robust."""
        targets = [dict(first_target=self.first_target + k, n_target_classes=1) for k in range(self.n_target_classes)]
        runs = [(target, r) for target in targets or [{}] for r in range(self.restarts)]
        return [dataclasses.replace(self, restarts=1, seed=self.seed + r, name=f"{self.name} [run {i + 1}]", **target)
                for i, (target, r) in enumerate(runs)]


apgd = APGD.function
