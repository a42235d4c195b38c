"""The Fast Gradient Sign Method (Goodfellow et al. 2015, arXiv:1412.6572), once, and its eps sweep.

Conventions for eps (``convention``):

* ``"pixel"`` (default, sound): eps is in [0, 1] pixel units and the adversarial image is clamped to
  [0, 1]: ``x' = clamp(x + eps * sign(g), 0, 1)``.
* ``"normalised"`` (the UvA tutorial the main paper copied): eps is added in the model's normalised
  input space and never clamped: ``z' = z + eps * sign(g)`` with ``z = (x - mean) / std``. In pixel space
  that is ``x' = x + eps * std_c * sign(g)``, so the tutorial's eps = 0.02 moves a pixel by 0.02 * 0.226
  ~ 0.0045 ~ 1.2 / 255, and the image can leave [0, 1]. The sign of the gradient is the same in both
  spaces (std > 0), so both conventions share one gradient.

``clip=False`` keeps pixel units but leaves the image unclamped (the PyImageSearch posts' FGSM, and the
Jacobian augmentation of a black-box substitute).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
from torch import nn

from ..batching import class_scores, model_device, run_batched
from ..checks import check_choice, check_eps, check_epsilons, check_flag, check_k, check_model_fits, checked_inputs
from .base import Attack, Kernel, register
from .losses import LossFunction, check_loss, loss_gradient

CONVENTIONS = ("pixel", "normalised")


def pixel_step(model: nn.Module, convention: str) -> torch.Tensor | float:
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
    unit = pixel_step(model, check_choice(convention, CONVENTIONS, "convention"))
    return float(eps * (unit.mean() if isinstance(unit, torch.Tensor) else unit))


def fgsm_step(images: torch.Tensor, grad_sign: torch.Tensor, eps: float, unit: torch.Tensor | float,
              *, targeted: bool, clamp: bool) -> torch.Tensor:
    """One signed-gradient step of size eps * unit; away from the label, or towards it if targeted."""
    step = (eps * unit) * grad_sign
    adv = images - step if targeted else images + step
    return adv.clamp(0, 1) if clamp else adv


def fgsm_with_output(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, unit: torch.Tensor | float,
                     targeted: bool, clamp: bool, loss_fn: LossFunction) -> tuple[torch.Tensor, torch.Tensor]:
    """FGSM on one batch on the model's device, and the model's output on the clean batch (from the same
    forward pass): x (B, C, H, W), y (B,) -> ((B, C, H, W), (B, ...)). Unchecked."""
    grad, output = loss_gradient(model, x, y, loss_fn)
    return fgsm_step(x, grad.sign(), eps, unit, targeted=targeted, clamp=clamp), output


def fgsm_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **settings) -> torch.Tensor:
    """FGSM on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W). Unchecked."""
    return fgsm_with_output(model, x, y, **settings)[0]


@register("fgsm", "FGSM")
class FGSM(Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): ``x + eps * sign(grad_x loss)``.

    model: an ``nn.Module`` taking (N, C, H, W) pixels in [0, 1] and returning logits (N, K); it owns
    its normalisation. images: (N, C, H, W) in [0, 1]; labels: (N,) int64, the true classes, or the
    target classes when ``targeted`` (the attack then descends the target's loss). eps: the step in
    the ``convention``'s units (module docstring); clip: clamp to [0, 1] (default: in the "pixel"
    convention only). loss: "ce", "margin", "mse" or a callable ``(output, labels) -> (N,)``, at
    ``temperature``. Returns the adversarial images (N, C, H, W) on the images' device.
    """

    eps: float
    targeted: bool = False
    loss: str | LossFunction = "ce"
    temperature: float = 1.0
    convention: str = "pixel"
    clip: bool | None = None

    def clamps(self) -> bool:
        convention = check_choice(self.convention, CONVENTIONS, "convention")
        if self.clip is not None and check_flag(self.clip, "clip") and convention != "pixel":
            raise ValueError("clip=True clamps pixels; the 'normalised' convention never clamps")
        return convention == "pixel" if self.clip is None else self.clip

    def pixel_inputs(self) -> bool:
        return self.clamps()

    def bound(self, model: nn.Module) -> dict:
        """The checked settings of :func:`fgsm_with_output` against ``model``."""
        clamp = self.clamps()
        return dict(eps=check_eps(self.eps, upper=1.0 if self.convention == "pixel" else None),
                    unit=pixel_step(model, self.convention), targeted=check_flag(self.targeted, "targeted"),
                    clamp=clamp, loss_fn=check_loss(self.loss, self.temperature, model))

    def prepare(self, model: nn.Module) -> Kernel:
        return partial(fgsm_kernel, model, **self.bound(model))


fgsm = FGSM.function


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
        """(E,) top-k error rate, a fraction in [0, 1]."""
        return 1.0 - self.correct(k).double().mean(1)

    def to_records(self) -> list[dict]:
        """One row per eps: eps, top1_error, top5_error (fractions), n_images."""
        top1, top5 = self.error(1).tolist(), self.error(min(5, self.adv_topk.shape[-1])).tolist()
        n = int(self.labels.shape[0])
        return [{"eps": e, "top1_error": a, "top5_error": b, "n_images": n}
                for e, a, b in zip(self.epsilons, top1, top5)]


def fgsm_sweep_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilons: Sequence[float],
                      unit: torch.Tensor | float, targeted: bool, clamp: bool, loss_fn: LossFunction, k: int,
                      return_images: bool) -> tuple[torch.Tensor, ...]:
    """FGSM at every eps from one input gradient, on one batch on the device. Unchecked.

    Returns clean top-k (B, k), adversarial top-k (B, E, k) and, with ``return_images``, the
    adversarial images (B, E, C, H, W).
    """
    grad, output = loss_gradient(model, x, y, loss_fn)
    grad_sign = grad.sign()
    adv_topk, adversarials = [], []
    with torch.inference_mode():
        for eps in epsilons:
            adv = fgsm_step(x, grad_sign, eps, unit, targeted=targeted, clamp=clamp)
            adv_topk.append(class_scores(model, model(adv)).topk(k, dim=1).indices)
            if return_images:
                adversarials.append(adv)
    outputs = (class_scores(model, output).topk(k, dim=1).indices, torch.stack(adv_topk, 1))
    return (*outputs, torch.stack(adversarials, 1)) if return_images else outputs


def fgsm_sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epsilons: Sequence[float],
               targeted: bool = False, loss: str | LossFunction = "ce", temperature: float = 1.0,
               convention: str = "pixel", batch_size: int = 64, k: int = 5, return_images: bool = False,
               progress: bool = False) -> SweepResult:
    """FGSM at every eps in ``epsilons`` from ONE input gradient per batch.

    The FGSM image at eps is a function of the gradient's sign, which does not depend on eps, so each
    batch costs one forward+backward plus one inference forward per eps, instead of a forward+backward
    per eps. Results equal calling :func:`fgsm` eps by eps. Arguments as in :class:`FGSM`. Returns a
    :class:`SweepResult` with top-``k`` predictions (and the images if ``return_images``), on the CPU.
    """
    attack = FGSM(eps=0.0, targeted=targeted, loss=loss, temperature=temperature, convention=convention)
    images, labels = checked_inputs(model, images, labels, batch_size, pixel_range=attack.pixel_inputs())
    epsilons = check_epsilons(epsilons, upper=1.0 if convention == "pixel" else None)
    check_k(k, check_model_fits(model, images))
    settings = {name: value for name, value in attack.bound(model).items() if name != "eps"}
    kernel = partial(fgsm_sweep_kernel, model, epsilons=epsilons, k=k,
                     return_images=check_flag(return_images, "return_images"), **settings)
    out = run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size, out_device="cpu",
                      progress=progress, desc="fgsm_sweep")
    adversarials = out[2].transpose(0, 1) if return_images else None
    return SweepResult(epsilons, labels.cpu(), out[0], out[1].transpose(0, 1), adversarials)
