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

from .checks import check_choice, check_eps, check_epsilons, check_images, check_labels, check_positive_int
from .models import model_device

CONVENTIONS = ("pixel", "normalised")


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n) in chunks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy with respect to the input images.

    images: (N, C, H, W) on the model's device; labels: (N,) int64.
    Returns (gradient (N, C, H, W), logits (N, K) detached). No parameter gradients are formed.
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
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


def _check_attack_args(model, images, labels, convention, batch_size):
    check_choice(convention, CONVENTIONS, "convention")
    check_images(images, pixel_range=convention == "pixel")
    labels = check_labels(labels, images.shape[0], num_classes=getattr(model, "num_classes", None))
    check_positive_int(batch_size, "batch_size")
    return labels


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, targeted: bool = False,
         convention: str = "pixel", batch_size: int = 128) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015).

    images: (N, C, H, W) pixels in [0, 1]; labels: (N,) true classes, or target classes when
    ``targeted`` (the step then descends the target's loss). eps: step size in the given convention
    (see the module docstring). Minibatched by ``batch_size`` on the model's device.
    Returns adversarial images (N, C, H, W) on the images' device.
    """
    labels = _check_attack_args(model, images, labels, convention, batch_size)
    eps = check_eps(eps, upper=1.0 if convention == "pixel" else None)
    device, unit = model_device(model), _pixel_step(model, convention)
    out = torch.empty_like(images)
    for s in batch_slices(images.shape[0], batch_size):
        x, y = images[s].to(device), labels[s].to(device)
        grad, _ = input_gradient(model, x, y)
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
