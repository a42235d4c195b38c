"""Gradient attacks on classifiers that take [0, 1] pixel images.

Conventions for eps:

* ``"pixel"`` (default, sound): eps is in [0, 1] pixel units and the adversarial image is clamped
  to [0, 1]: ``x' = clamp(x + eps * sign(g), 0, 1)``.
* ``"normalised"`` (the UvA tutorial the main paper copied): eps is added in the model's
  normalised input space and never clamped: ``z' = z + eps * sign(g)`` with ``z = (x - mean) / std``.
  In pixel space that is ``x' = x + eps * std_c * sign(g)``, so the tutorial's eps = 0.02 moves a
  pixel by 0.02 * 0.226 ~ 0.0045 ~ 1.2 / 255, and the image can leave [0, 1]. The sign of the
  gradient is the same in both spaces (std > 0), so both conventions share one gradient.

Loss: cross-entropy summed over the batch (the tutorial's summed NLL of log-softmax), so each
image's gradient is independent of the batch it is computed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checks import (check_choice, check_eps, check_epsilons, check_images, check_labels, check_positive_int,
                     check_positive_number)
from .models import model_device

CONVENTIONS = ("pixel", "normalised")
NORMS = ("linf", "l2")


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n) in chunks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


LOSSES = ("ce", "margin")


def margin_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (N,): positive once the image is
    misclassified. logits: (N, K); labels: (N,)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "ce", temperature: float = 1.0) -> torch.Tensor:
    """The summed loss an attack ascends (labels: true classes) or descends (labels: targets).

    "ce": cross-entropy of ``logits / temperature`` (temperature > 1 undoes a distilled net's
    saturated softmax); "margin": Carlini-Wagner's ``max_{j != y} z_j - z_y``, which needs no softmax
    and so never saturates. logits: (N, K); labels: (N,). Returns a 0-d tensor.
    """
    if loss == "ce":
        return F.cross_entropy(logits / temperature, labels, reduction="sum")
    return margin_per_image(logits, labels).sum()


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, loss: str = "ce",
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed attack loss (:func:`attack_loss`) with respect to the input images.

    images: (N, C, H, W) on the model's device; labels: (N,) int64.
    Returns (gradient (N, C, H, W), logits (N, K) detached). No parameter gradients are formed.
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(attack_loss(logits, labels, loss, temperature), x)
    return grad, logits.detach()


def _pixel_step(model: nn.Module, convention: str) -> torch.Tensor | float:
    """Size, in pixel units, of a unit eps step: 1 (pixel) or std per channel, shape (C, 1, 1)."""
    if convention == "pixel":
        return 1.0
    std = getattr(model, "std", None)
    if not isinstance(std, torch.Tensor):
        raise TypeError("convention='normalised' needs a model that owns its normalisation "
                        "(a `std` buffer, e.g. nbutils.models.Classifier)")
    return std[:, None, None]


def pixel_eps(model: nn.Module, eps: float, convention: str) -> float:
    """eps in [0, 1] pixel units, averaged over channels (``eps * mean(std)`` when normalised)."""
    unit = _pixel_step(model, check_choice(convention, CONVENTIONS, "convention"))
    return float(eps * (unit.mean() if isinstance(unit, torch.Tensor) else unit))


def fgsm_step(images: torch.Tensor, grad_sign: torch.Tensor, eps: float, unit: torch.Tensor | float,
              *, targeted: bool, clamp: bool) -> torch.Tensor:
    """One signed-gradient step of size eps * unit; away from the label, or towards it if targeted."""
    step = (eps * unit) * grad_sign
    adv = images - step if targeted else images + step
    return adv.clamp(0, 1) if clamp else adv


def check_loss(loss: str, temperature: float) -> None:
    """An attack loss name from LOSSES and a positive, finite temperature."""
    check_choice(loss, LOSSES, "loss")
    check_positive_number(temperature, "temperature")


def _check_attack_args(model, images, labels, convention, batch_size):
    check_choice(convention, CONVENTIONS, "convention")
    check_images(images, pixel_range=convention == "pixel")
    labels = check_labels(labels, images.shape[0], num_classes=getattr(model, "num_classes", None))
    check_positive_int(batch_size, "batch_size")
    return labels


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, targeted: bool = False,
         convention: str = "pixel", batch_size: int = 128, loss: str = "ce", temperature: float = 1.0) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015).

    images: (N, C, H, W) pixels in [0, 1]; labels: (N,) true classes, or target classes when
    ``targeted`` (the step then descends the target's loss). eps: step size in the given convention
    (see the module docstring). loss, temperature: see :func:`attack_loss` (default: the usual
    cross-entropy). Minibatched by ``batch_size`` on the model's device.
    Returns adversarial images (N, C, H, W) on the images' device.
    """
    labels = _check_attack_args(model, images, labels, convention, batch_size)
    eps = check_eps(eps, upper=1.0 if convention == "pixel" else None)
    check_loss(loss, temperature)
    device, unit = model_device(model), _pixel_step(model, convention)
    out = torch.empty_like(images)
    for s in batch_slices(images.shape[0], batch_size):
        x, y = images[s].to(device), labels[s].to(device)
        grad, _ = input_gradient(model, x, y, loss=loss, temperature=temperature)
        out[s] = fgsm_step(x, grad.sign(), eps, unit, targeted=targeted, clamp=convention == "pixel").to(out.device)
    return out


@dataclass
class SweepResult:
    """FGSM outcomes for E eps values on N images.

    epsilons: the E values; labels: (N,); clean_topk: (N, k) class indices predicted on the clean
    images; adv_topk: (E, N, k) on the adversarial ones; adversarials: (E, N, C, H, W) or None.
    """

    epsilons: list[float]
    labels: torch.Tensor
    clean_topk: torch.Tensor
    adv_topk: torch.Tensor
    adversarials: torch.Tensor | None = None

    def correct(self, k: int = 1) -> torch.Tensor:
        """(E, N) bool: label among the top-k predictions on the adversarial image."""
        return (self.adv_topk[..., :k] == self.labels[None, :, None]).any(-1)

    def clean_correct(self, k: int = 1) -> torch.Tensor:
        """(N,) bool: label among the top-k predictions on the clean image."""
        return (self.clean_topk[:, :k] == self.labels[:, None]).any(-1)

    def error(self, k: int = 1) -> torch.Tensor:
        """(E,) top-k error in percent."""
        return 100.0 * (1.0 - self.correct(k).double().mean(1))

    def to_records(self) -> list[dict]:
        """One row per eps: eps, top1_error, top5_error (percent), n_images."""
        top1, top5 = self.error(1).tolist(), self.error(min(5, self.adv_topk.shape[-1])).tolist()
        n = int(self.labels.shape[0])
        return [{"eps": e, "top1_error": a, "top5_error": b, "n_images": n}
                for e, a, b in zip(self.epsilons, top1, top5)]


def fgsm_sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilons: Sequence[float], *,
               targeted: bool = False, convention: str = "pixel", batch_size: int = 64, k: int = 5,
               return_images: bool = False, progress: bool = False) -> SweepResult:
    """FGSM at every eps in ``epsilons`` from ONE input gradient per batch.

    The FGSM image at eps is a function of the gradient's sign, which does not depend on eps, so
    each batch costs one forward+backward plus one inference forward per eps, instead of a
    forward+backward per eps. Results equal calling :func:`fgsm` eps by eps.
    images: (N, C, H, W) pixels in [0, 1]; labels: (N,) (targets if ``targeted``).
    Returns a :class:`SweepResult` with top-``k`` predictions (and the images if ``return_images``).
    """
    labels = _check_attack_args(model, images, labels, convention, batch_size)
    epsilons = check_epsilons(epsilons, upper=1.0 if convention == "pixel" else None)
    check_positive_int(k, "k")
    device, unit = model_device(model), _pixel_step(model, convention)
    n, n_eps = images.shape[0], len(epsilons)
    clean_topk = torch.empty(n, k, dtype=torch.long)
    adv_topk = torch.empty(n_eps, n, k, dtype=torch.long)
    adversarials = torch.empty((n_eps, *images.shape), dtype=images.dtype) if return_images else None
    for s in tqdm(list(batch_slices(n, batch_size)), desc="fgsm_sweep", disable=not progress):
        x, y = images[s].to(device), labels[s].to(device)
        grad, logits = input_gradient(model, x, y)
        clean_topk[s] = logits.topk(k, dim=1).indices.cpu()
        grad_sign = grad.sign()
        with torch.inference_mode():
            for i, eps in enumerate(epsilons):
                adv = fgsm_step(x, grad_sign, eps, unit, targeted=targeted, clamp=convention == "pixel")
                adv_topk[i, s] = model(adv).topk(k, dim=1).indices.cpu()
                if adversarials is not None:
                    adversarials[i, s] = adv.cpu()
    return SweepResult(epsilons, labels.cpu(), clean_topk, adv_topk, adversarials)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, alpha: float, steps: int,
        norm: str = "linf", random_start: bool = False, targeted: bool = False, loss: str = "ce",
        temperature: float = 1.0, batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) in [0, 1] pixel space.

    ``steps`` steps of size ``alpha`` along sign(grad) ("linf") or grad / ||grad||_2 ("l2"), each
    followed by projection onto the eps-ball around the image and clamping to [0, 1]. random_start:
    begin at a uniform point of the L-inf ball (or a random point of the L2 ball), drawn from a CPU
    generator seeded with ``seed``. loss, temperature: see :func:`attack_loss`.
    images: (N, C, H, W) in [0, 1]; labels: (N,) true classes (targets if ``targeted``).
    Returns adversarial images (N, C, H, W) on the images' device.
    """
    labels = _check_attack_args(model, images, labels, "pixel", batch_size)
    check_choice(norm, NORMS, "norm")
    eps = check_eps(eps, upper=1.0 if norm == "linf" else None)
    alpha = check_eps(alpha, name="alpha")
    check_positive_int(steps, "steps")
    check_loss(loss, temperature)
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(images)
    for s in batch_slices(images.shape[0], batch_size):
        x, y = images[s].to(device), labels[s].to(device)
        adv = x + _random_start(x, eps, norm, generator).to(device) if random_start else x.clone()
        adv = _project(adv, x, eps, norm)
        for _ in range(steps):
            grad, _ = input_gradient(model, adv, y, loss=loss, temperature=temperature)
            step = grad.sign() if norm == "linf" else grad / _l2(grad).clamp_min(1e-12)[:, None, None, None]
            adv = _project(adv - alpha * step if targeted else adv + alpha * step, x, eps, norm)
        out[s] = adv.to(out.device)
    return out


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, (N,)."""
    return t.flatten(1).norm(dim=1)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random offset in the eps-ball: uniform per pixel (L-inf), or a random direction and radius (L2)."""
    if norm == "linf":
        return eps * (torch.rand(x.shape, generator=generator) * 2 - 1)
    noise = torch.randn(x.shape, generator=generator)
    radius = eps * torch.rand(x.shape[0], generator=generator)
    return noise * (radius / _l2(noise).clamp_min(1e-12))[:, None, None, None]


def _project(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the eps-ball around x (L-inf: clamp; L2: rescale) and into [0, 1]."""
    delta = adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)[:, None, None, None]
    return (x + delta).clamp(0, 1)


def cw_l2(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, c: float = 1.0, kappa: float = 0.0,
          steps: int = 100, search_steps: int = 5, lr: float = 0.01, batch_size: int = 128) -> torch.Tensor:
    """Carlini-Wagner L2 attack (untargeted), with a per-image binary search over the constant c.

    Optimises ``w`` with Adam, where ``x' = (tanh(w) + 1) / 2`` stays in [0, 1], minimising
    ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)``. After each of ``search_steps``
    rounds, c halves (towards the midpoint) for images that were fooled and grows tenfold (or to the
    midpoint) for those that were not. Returns, per image, the smallest-L2 adversarial image found,
    or the original image where none was (check with a prediction). images: (N, C, H, W) in [0, 1].
    """
    labels = _check_attack_args(model, images, labels, "pixel", batch_size)
    c = check_eps(c, name="c")
    kappa = check_eps(kappa, name="kappa")
    check_positive_int(steps, "steps")
    check_positive_int(search_steps, "search_steps")
    device = model_device(model)
    out = images.clone()
    for s in batch_slices(images.shape[0], batch_size):
        x, y = images[s].to(device), labels[s].to(device)
        out[s] = _cw_batch(model, x, y, c, kappa, steps, search_steps, lr).to(out.device)
    return out


def _cw_batch(model, x, y, c, kappa, steps, search_steps, lr):
    """:func:`cw_l2` on one batch already on the model's device: x (N, C, H, W), y (N,).
    Returns (N, C, H, W): the smallest-L2 adversarial found per image, else the image itself."""
    n = x.shape[0]
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), float("inf"), device=x.device)
    const = torch.full((n,), float(c), device=x.device)
    best_dist = torch.full((n,), float("inf"), device=x.device)
    best = x.clone()
    w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    for _ in range(search_steps):
        w = w0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=lr)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            adv = (torch.tanh(w) + 1) / 2
            logits = model(adv)
            dist = (adv - x).flatten(1).pow(2).sum(1)
            margin = -margin_per_image(logits, y)  # z_y - max_{j != y} z_j
            objective = (dist + const * margin.clamp(min=-kappa)).sum()
            (w.grad,) = torch.autograd.grad(objective, w)
            optimizer.step()
            with torch.no_grad():
                success = logits.argmax(1) != y
                improved = success & (dist < best_dist)
                best_dist = torch.where(improved, dist, best_dist)
                best[improved] = adv.detach()[improved]
                fooled |= success
        upper = torch.where(fooled, torch.minimum(upper, const), upper)
        lower = torch.where(fooled, lower, torch.maximum(lower, const))
        const = torch.where(upper < float("inf"), (lower + upper) / 2, const * 10)
    return best
