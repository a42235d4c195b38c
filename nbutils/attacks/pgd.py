"""Projected gradient descent (Madry et al. 2018, arXiv:1706.06083) and the iterative attacks that are
PGD without a random start: BIM (Kurakin et al. 2017, arXiv:1607.02533; the I-defender paper's eq. 2)
and the iterative L2 attack (the I-defender paper's eq. 3). One iterative core, :func:`pgd_kernel`.

eps is in pixel units of the attack's norm: the largest change of any pixel ("linf"), or the L2 norm
of the whole perturbation of [0, 1] images ("l2").
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import torch
from torch import nn

from ..batching import class_scores, model_device
from ..checks import check_choice, check_eps, check_flag, check_positive_int, check_seed
from .base import Attack, Kernel, register
from .losses import LossFunction, check_loss, loss_gradient

NORMS = ("linf", "l2")


def per_image_l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm of (N, ...) -> (N,)."""
    return t.flatten(1).norm(dim=1)


def random_start_in_ball(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random offset in the eps-ball: uniform per pixel (L-inf), or a random direction and radius (L2)."""
    if norm == "linf":
        return eps * (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device)
    return noise * (radius / per_image_l2(noise).clamp_min(1e-12))[:, None, None, None]


def project_to_ball(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the eps-ball around x (L-inf: clamp; L2: rescale) and into [0, 1]."""
    delta = adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / per_image_l2(delta).clamp_min(1e-12)).clamp(max=1.0)[:, None, None, None]
    return (x + delta).clamp(0, 1)


def steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit step of steepest ascent in ``norm``: sign(grad) (L-inf) or grad / ||grad||_2 (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / per_image_l2(grad).clamp_min(1e-12)[:, None, None, None]


def succeeded(model: nn.Module, adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(B,) bool: the attack reached its goal (the target class, or any class but the label)."""
    with torch.no_grad():
        predicted = class_scores(model, model(adv)).argmax(1)
    return predicted == y if targeted else predicted != y


def _pgd_run(model, x, y, *, eps, alpha, steps, norm, targeted, loss_fn, generator) -> torch.Tensor:
    """One PGD run from the image (generator None) or from a random point of the ball."""
    adv = x + random_start_in_ball(x, eps, norm, generator) if generator is not None else x.clone()
    adv = project_to_ball(adv, x, eps, norm)
    for _ in range(steps):
        grad, _ = loss_gradient(model, adv, y, loss_fn)
        step = alpha * steepest_step(grad, norm)
        adv = project_to_ball(adv - step if targeted else adv + step, x, eps, norm)
    return adv


def pgd_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float, steps: int,
               norm: str, targeted: bool, loss_fn: LossFunction, generator: torch.Generator | None,
               restarts: int = 1) -> torch.Tensor:
    """PGD on one batch on the model's device; ``generator`` (on that device) draws the random start,
    None for none. With ``restarts`` > 1, each image keeps the first run that succeeds (misclassified,
    or classified as the target), else the first run. x (B, C, H, W), y (B,) -> (B, C, H, W). Unchecked."""
    settings = dict(eps=eps, alpha=alpha, steps=steps, norm=norm, targeted=targeted, loss_fn=loss_fn, generator=generator)
    best = _pgd_run(model, x, y, **settings)
    if restarts == 1:
        return best
    done = succeeded(model, best, y, targeted)
    for _ in range(restarts - 1):
        adv = _pgd_run(model, x, y, **settings)
        success = succeeded(model, adv, y, targeted)
        best = torch.where((success & ~done)[:, None, None, None], adv, best)
        done = done | success
    return best


@register("pgd", "PGD")
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) in [0, 1] pixel space.

    ``steps`` steps of size ``alpha`` along sign(grad) ("linf") or grad / ||grad||_2 ("l2"), each followed
    by projection onto the eps-ball (of that norm, pixel units) around the image and clamping to [0, 1].
    random_start: begin at a uniform point of the L-inf ball (or a random point of the L2 ball), drawn
    from a generator on the model's device seeded with ``seed``; ``restarts``: that many random starts,
    each image keeping the first that succeeds. images: (N, C, H, W) in [0, 1]; labels: (N,), the true
    classes or, when ``targeted``, the targets. loss: "ce", "margin", "mse" or a callable, at
    ``temperature``. Returns the adversarial images (N, C, H, W) on the images' device.
    """

    eps: float
    alpha: float
    steps: int
    norm: str = "linf"
    random_start: bool = False
    restarts: int = 1
    targeted: bool = False
    loss: str | LossFunction = "ce"
    temperature: float = 1.0
    seed: int = 0

    def prepare(self, model: nn.Module) -> Kernel:
        norm = check_choice(self.norm, NORMS, "norm")
        seed, restarts = check_seed(self.seed), check_positive_int(self.restarts, "restarts")
        random_start = check_flag(self.random_start, "random_start")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 needs random_start=True (without it every restart is the same run)")
        generator = torch.Generator(model_device(model)).manual_seed(seed) if random_start else None
        return partial(pgd_kernel, model, eps=check_eps(self.eps, upper=1.0 if norm == "linf" else None),
                       alpha=check_eps(self.alpha, name="alpha"), steps=check_positive_int(self.steps, "steps"),
                       norm=norm, targeted=check_flag(self.targeted, "targeted"),
                       loss_fn=check_loss(self.loss, self.temperature, model), generator=generator, restarts=restarts)


pgd = PGD.function


@dataclasses.dataclass(frozen=True, kw_only=True)
class _WithoutStart(Attack):
    """PGD from the image itself (no random start), of step ``alpha`` or, when None, ``eps / steps``:
    the budget is reached in exactly ``steps`` steps."""

    norm_of_ball: ClassVar[str] = "linf"
    eps: float
    alpha: float | None = None
    steps: int = 10
    targeted: bool = False
    loss: str | LossFunction = "ce"
    temperature: float = 1.0

    def prepare(self, model: nn.Module) -> Kernel:
        steps = check_positive_int(self.steps, "steps")
        alpha = check_eps(self.eps) / steps if self.alpha is None else self.alpha
        return PGD(eps=self.eps, alpha=alpha, steps=steps, norm=self.norm_of_ball, targeted=self.targeted,
                   loss=self.loss, temperature=self.temperature).prepare(model)


@register("bim", "BIM")
class BIM(_WithoutStart):
    """Basic Iterative Method, the iterative L-inf attack (Kurakin et al. 2017; the I-defender paper's eq. 2).

    ``steps`` signed-gradient steps of size ``alpha`` (default ``eps / steps``), each clipped to the L-inf
    eps-ball around the image and to [0, 1]: PGD without a random start. Arguments as :class:`PGD`.
    Returns the adversarial images (N, C, H, W) on the images' device.
    """


bim = BIM.function


@register("iterative_l2", "Iterative-L2")
class IterativeL2(_WithoutStart):
    """The iterative L2 attack (Metzen et al. 2017; the I-defender paper's eq. 3).

    ``steps`` steps of L2 length ``alpha`` (default ``eps / steps``) along ``grad / ||grad||_2``, each
    projected back onto the L2 eps-ball around the image (eps in pixel units: the L2 norm of the
    perturbation of [0, 1] images) and clamped to [0, 1]: L2 PGD without a random start. Arguments as
    :class:`PGD`. Returns the adversarial images (N, C, H, W) on the images' device.
    """

    norm_of_ball = "l2"


iterative_l2 = IterativeL2.function
