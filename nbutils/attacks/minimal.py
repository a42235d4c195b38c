"""The minimal-perturbation attacks: DeepFool (Moosavi-Dezfooli et al., CVPR 2016) and Carlini-Wagner
L2 (arXiv:1608.04644). Each looks for the smallest L2 change that flips the prediction, optionally
within an L2 budget ``eps`` (pixel units)."""
from __future__ import annotations

from functools import partial
from typing import ClassVar

import torch
from torch import nn

from ..batching import class_scores
from ..checks import check_eps, check_flag, check_positive_int, check_positive_number
from .base import Attack, Kernel, register
from .losses import LossFunction, check_loss
from .pgd import per_image_l2


def _class_gradients(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores (B, K) at x and the input gradients of the scores of ``classes`` (B, J) per image:
    (B, J, C, H, W), one backward pass per column."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = class_scores(model, model(x))
        chosen = logits.gather(1, classes)
        grads = [torch.autograd.grad(chosen[:, j].sum(), x, retain_graph=j + 1 < classes.shape[1])[0]
                 for j in range(classes.shape[1])]
    return logits.detach(), torch.stack(grads, 1)


def deepfool_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, overshoot: float,
                    candidates: int, eps: float | None) -> torch.Tensor:
    """DeepFool on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W). Unchecked.

    Each step linearises the class scores at the current image, takes the nearest linearised boundary
    between the label and one of the ``candidates`` - 1 other classes ranked highest on the clean
    image, and adds the step that crosses it (plus 1e-4 of its direction); the total perturbation r
    is applied as ``x + (1 + overshoot) r``. An image stops moving once it is misclassified. A fixed
    number of steps and masked updates: no host synchronisation.
    """
    with torch.no_grad():
        clean = class_scores(model, model(x))
    others = clean.scatter(1, y[:, None], float("-inf")).topk(min(candidates, clean.shape[1]) - 1, dim=1).indices
    classes = torch.cat([y[:, None], others], 1)                     # (B, J): the label first
    total = torch.zeros_like(x)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        adv = (x + (1 + overshoot) * total).clamp(0, 1)
        logits, grads = _class_gradients(model, adv, classes)
        active = active & (logits.argmax(1) == y)
        chosen = logits.gather(1, classes)
        f = (chosen[:, 1:] - chosen[:, :1])                           # (B, J-1), negative while correct
        w = (grads[:, 1:] - grads[:, :1]).flatten(2)                  # (B, J-1, D)
        w_norm = w.norm(dim=2).clamp_min(1e-12)
        distance = f.abs() / w_norm
        nearest = distance.argmin(1, keepdim=True)                    # (B, 1)
        direction = w.gather(1, nearest[:, :, None].expand(-1, -1, w.shape[2])).squeeze(1) / w_norm.gather(1, nearest)
        step = (distance.gather(1, nearest) + 1e-4) * direction       # (B, D)
        total = total + torch.where(active[:, None], step, 0.0).view_as(x)
    if eps is not None:
        scale = (eps / ((1 + overshoot) * per_image_l2(total)).clamp_min(1e-12)).clamp(max=1.0)
        total = total * scale[:, None, None, None]
    return (x + (1 + overshoot) * total).clamp(0, 1)


@register("deepfool", "DeepFool")
class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al. 2016), the minimal L2 perturbation that crosses the nearest
    linearised decision boundary, iterated until the image is misclassified (at most ``steps`` steps).

    As the authors' reference code: steps of ``(|f_l| / ||w_l|| + 1e-4) w_l / ||w_l||`` towards the
    nearest of the ``candidates`` - 1 classes ranked highest on the clean image, accumulated into r and
    applied as ``clamp(x + (1 + overshoot) r, 0, 1)``. torchattacks' DeepFool instead applies the
    overshoot and the clamp at every step and has no 1e-4; one step on a linear model is the same in
    both. ``eps``: an optional L2 budget (pixel units) the final perturbation is scaled into; None:
    unbounded. Untargeted only; it uses the class scores, so it has no loss. images: (N, C, H, W) in
    [0, 1]; labels: (N,). Returns the adversarial images (N, C, H, W) on the images' device.
    """

    norm_of_ball: ClassVar[str] = "l2"

    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10
    eps: float | None = None
    targeted: bool = False

    def prepare(self, model: nn.Module) -> Kernel:
        if check_flag(self.targeted, "targeted"):
            raise ValueError("deepfool is untargeted: it crosses the nearest decision boundary, whichever class lies "
                             "behind it; use pgd or cw_l2 with targeted=True for a target class")
        if check_positive_int(self.candidates, "candidates") < 2:
            raise ValueError(f"candidates must be at least 2 (the label and one other class), got {self.candidates}")
        return partial(deepfool_kernel, model, steps=check_positive_int(self.steps, "steps"),
                       overshoot=check_eps(self.overshoot, name="overshoot"), candidates=self.candidates,
                       eps=None if self.eps is None else check_eps(self.eps))


deepfool = DeepFool.function


@torch.enable_grad()  # the optimisation needs gradients even when called under no_grad
def cw_l2_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, targeted: bool,
                 loss_fn: LossFunction, c: float, kappa: float, steps: int, search_steps: int,
                 lr: float) -> torch.Tensor:
    """:class:`CWL2` on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W): the
    smallest-L2 adversarial found per image (within ``eps`` when given), else the image itself.
    No host synchronisation (masks select with ``torch.where``). Unchecked."""
    n = x.shape[0]
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), float("inf"), device=x.device)
    const = torch.full((n,), float(c), device=x.device)
    best_dist = torch.full((n,), float("inf") if eps is None else eps ** 2, device=x.device)
    best = x.clone()
    w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    sign = 1.0 if targeted else -1.0  # the term c * max(sign * loss, -kappa) is minimised
    for _ in range(search_steps):
        w = w0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=lr)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            adv = (torch.tanh(w) + 1) / 2
            output = model(adv)
            dist = (adv - x).flatten(1).pow(2).sum(1)
            objective = (dist + const * (sign * loss_fn(output, y)).clamp(min=-kappa)).sum()
            (w.grad,) = torch.autograd.grad(objective, w)
            optimizer.step()
            with torch.no_grad():
                predicted = class_scores(model, output).argmax(1)
                success = predicted == y if targeted else predicted != y
                improved = success & (dist < best_dist)
                best_dist = torch.where(improved, dist, best_dist)
                best = torch.where(improved[:, None, None, None], adv.detach(), best)
                fooled |= success
        upper = torch.where(fooled, torch.minimum(upper, const), upper)
        lower = torch.where(fooled, lower, torch.maximum(lower, const))
        const = torch.where(upper < float("inf"), (lower + upper) / 2, const * 10)
    return best


@register("cw_l2", "C&W-L2")
class CWL2(Attack):
    """Carlini-Wagner L2 attack, with a per-image binary search over the constant c.

    Optimises ``w`` with Adam, where ``x' = (tanh(w) + 1) / 2`` stays in [0, 1], minimising
    ``||x' - x||_2^2 + c * max(-m, -kappa)`` with ``m`` the margin of the label (untargeted: ``m =
    max_{j != y} z_j - z_y``; targeted: ``m = z_t - max_{j != t} z_j``). After each of ``search_steps``
    rounds, c halves (towards the midpoint) for images that were fooled and grows tenfold (or to the
    midpoint) for those that were not. ``eps``: an L2 budget (None: unbounded); adversarials found
    farther away are discarded. ``loss``: "margin" (C&W's), or a callable that, like the margin, turns
    positive once the attack succeeds ("ce" is refused: it never changes sign). images: (N, C, H, W)
    in [0, 1]; labels: (N,). Returns, per image, the smallest-L2 adversarial image found, or the
    original image where none was (check with a prediction).
    """

    norm_of_ball: ClassVar[str] = "l2"

    eps: float | None = None
    targeted: bool = False
    loss: str | LossFunction = "margin"
    temperature: float = 1.0
    c: float = 1.0
    kappa: float = 0.0
    steps: int = 100
    search_steps: int = 5
    lr: float = 0.01

    def prepare(self, model: nn.Module) -> Kernel:
        if self.loss in ("ce", "mse"):
            raise ValueError(f"loss {self.loss!r} cannot drive cw_l2 (it never changes sign at the decision boundary); "
                             "use loss='margin' or a margin-like callable")
        return partial(cw_l2_kernel, model, eps=None if self.eps is None else check_eps(self.eps),
                       targeted=check_flag(self.targeted, "targeted"),
                       loss_fn=check_loss(self.loss, self.temperature, model), c=check_positive_number(self.c, "c"),
                       kappa=check_eps(self.kappa, name="kappa"), steps=check_positive_int(self.steps, "steps"),
                       search_steps=check_positive_int(self.search_steps, "search_steps"),
                       lr=check_positive_number(self.lr, "lr"))


cw_l2 = CWL2.function
