"""Gradient attacks on classifiers that take [0, 1] pixel images: FGSM (and its eps sweep), PGD,
C&W-L2, and chapter 5's BIM, iterative L2 and DeepFool.

The contract. Every attack is a function

    attack(model, images, labels, *, eps, targeted=False, loss="ce", temperature=1.0,
           batch_size=..., progress=False, **its own settings) -> adversarial images

* ``model``: an ``nn.Module`` taking (N, C, H, W) pixels in [0, 1] and returning logits (N, K); it
  owns its normalisation (:class:`nbutils.models.Classifier`).
* ``images``: (N, C, H, W) floating point in [0, 1]; ``labels``: (N,) int64, the true classes, or
  the target classes when ``targeted`` (the attack then descends the target's loss).
* ``eps``: the perturbation budget in pixel units (L-inf unless the attack says otherwise).
* ``loss``: the per-image loss the attack ascends, a name from :data:`LOSSES` ("ce": cross-entropy
  of ``logits / temperature``; "margin": Carlini-Wagner's ``max_{j != y} z_j - z_y``, which never
  saturates; "mse": squared error between the one-hot label and the softmax, the PyImageSearch
  posts' FGSM) or a callable ``(logits (N, K), labels (N,)) -> (N,)``.
* Returns the adversarial images, (N, C, H, W), on the images' device and of their dtype.

Each attack is a public entry point that validates its arguments once; a ``prepare_*`` function
that checks its settings and returns the per-batch kernel ``(x, y) -> adversarial x`` (tensors
already on the device, no host synchronisation); and that kernel, which the shared runner
:func:`nbutils.batching.run_batched` applies batch by batch and a trainer calls inside its step.
:func:`get` packs an attack and its settings into one value, an :class:`Attack`, for tables,
trainers and sweeps; ``Attack.kernel(model)`` is its per-batch kernel.

Conventions for FGSM's eps (``convention``):

* ``"pixel"`` (default, sound): eps is in [0, 1] pixel units and the adversarial image is clamped
  to [0, 1]: ``x' = clamp(x + eps * sign(g), 0, 1)``.
* ``"normalised"`` (the UvA tutorial the main paper copied): eps is added in the model's
  normalised input space and never clamped: ``z' = z + eps * sign(g)`` with ``z = (x - mean) / std``.
  In pixel space that is ``x' = x + eps * std_c * sign(g)``, so the tutorial's eps = 0.02 moves a
  pixel by 0.02 * 0.226 ~ 0.0045 ~ 1.2 / 255, and the image can leave [0, 1]. The sign of the
  gradient is the same in both spaces (std > 0), so both conventions share one gradient.

Losses are summed over the batch before differentiation, so each image's gradient is independent of
the batch it is computed in.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .batching import model_device, run_batched
from .checks import (check_choice, check_eps, check_epsilons, check_flag, check_k, check_model_fits, check_positive_int,
                     check_positive_number, check_seed, checked_inputs)

CONVENTIONS = ("pixel", "normalised")
NORMS = ("linf", "l2")
LOSSES = ("ce", "margin", "mse")
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Losses and gradients

def margin_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (N,): positive once the image is
    misclassified. logits: (N, K); labels: (N,)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true


def mse_per_image(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-image mean squared error between the one-hot label and ``softmax(logits / T)`` (N,): the
    loss of the PyImageSearch FGSM that the mixed-batch paper copied (Keras' ``MeanSquaredError``)."""
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return (torch.softmax(logits / temperature, dim=1) - one_hot).pow(2).mean(dim=1)


def loss_function(loss: str | LossFunction = "ce", temperature: float = 1.0) -> LossFunction:
    """The per-image loss ``(logits (N, K), labels (N,)) -> (N,)`` named by ``loss`` (see the module
    docstring), or ``loss`` itself when it is a callable. Unchecked: see :func:`check_loss`."""
    if callable(loss):
        return loss
    if loss == "ce":
        return lambda logits, labels: F.cross_entropy(logits / temperature, labels, reduction="none")
    if loss == "mse":
        return partial(mse_per_image, temperature=temperature)
    return margin_per_image


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str | LossFunction = "ce",
                temperature: float = 1.0) -> torch.Tensor:
    """The summed loss an attack ascends (labels: true classes) or descends (labels: targets), 0-d.
    logits: (N, K); labels: (N,)."""
    return loss_function(loss, temperature)(logits, labels).sum()


def check_loss(loss, temperature) -> LossFunction:
    """A loss name from :data:`LOSSES` or a callable, and a positive, finite temperature; returns
    the per-image loss function."""
    if not callable(loss):
        check_choice(loss, LOSSES, "loss")
    check_positive_number(temperature, "temperature")
    return loss_function(loss, temperature)


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   loss: str | LossFunction = "ce", temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed attack loss with respect to the input images (no parameter gradients).

    images: (N, C, H, W) on the model's device; labels: (N,) int64. Unchecked.
    Returns (gradient (N, C, H, W), logits (N, K) detached).
    """
    return _input_gradient(model, images, labels, loss_function(loss, temperature))


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFunction):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(loss_fn(logits, y).sum(), x)
    return grad, logits.detach()


# ---------------------------------------------------------------------------------------------
# FGSM

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


def fgsm_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, unit: torch.Tensor | float,
                targeted: bool, clamp: bool, loss_fn: LossFunction) -> torch.Tensor:
    """FGSM on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W). Unchecked."""
    grad, _ = _input_gradient(model, x, y, loss_fn)
    return fgsm_step(x, grad.sign(), eps, unit, targeted=targeted, clamp=clamp)


def _check_convention(model, images, labels, convention, batch_size):
    """Shared checks of the FGSM entry points; returns (images, labels, pixel unit of eps, eps upper bound)."""
    check_choice(convention, CONVENTIONS, "convention")
    images, labels = checked_inputs(model, images, labels, batch_size, pixel_range=convention == "pixel")
    return images, labels, pixel_step(model, convention), 1.0 if convention == "pixel" else None


def prepare_fgsm(model: nn.Module, *, eps: float, targeted: bool = False, loss: str | LossFunction = "ce",
                 temperature: float = 1.0, convention: str = "pixel") -> Callable:
    """Check FGSM's settings; returns its per-batch kernel ``(x (B, C, H, W), y (B,)) -> (B, C, H, W)``."""
    check_choice(convention, CONVENTIONS, "convention")
    return partial(fgsm_kernel, model, eps=check_eps(eps, upper=1.0 if convention == "pixel" else None),
                   unit=pixel_step(model, convention), targeted=check_flag(targeted, "targeted"),
                   clamp=convention == "pixel", loss_fn=check_loss(loss, temperature))


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, targeted: bool = False,
         loss: str | LossFunction = "ce", temperature: float = 1.0, convention: str = "pixel", batch_size: int = 128,
         progress: bool = False) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): ``x + eps * sign(grad_x loss)``.

    The attack contract (module docstring); eps in the given ``convention``'s units.
    Returns adversarial images (N, C, H, W) on the images' device.
    """
    images, labels, _, _ = _check_convention(model, images, labels, convention, batch_size)
    kernel = prepare_fgsm(model, eps=eps, targeted=targeted, loss=loss, temperature=temperature, convention=convention)
    return run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size,
                       progress=progress, desc="fgsm")


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
    grad, logits = _input_gradient(model, x, y, loss_fn)
    grad_sign = grad.sign()
    adv_topk, adversarials = [], []
    with torch.inference_mode():
        for eps in epsilons:
            adv = fgsm_step(x, grad_sign, eps, unit, targeted=targeted, clamp=clamp)
            adv_topk.append(model(adv).topk(k, dim=1).indices)
            if return_images:
                adversarials.append(adv)
    outputs = (logits.topk(k, dim=1).indices, torch.stack(adv_topk, 1))
    return (*outputs, torch.stack(adversarials, 1)) if return_images else outputs


def fgsm_sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epsilons: Sequence[float],
               targeted: bool = False, loss: str | LossFunction = "ce", temperature: float = 1.0,
               convention: str = "pixel", batch_size: int = 64, k: int = 5, return_images: bool = False,
               progress: bool = False) -> SweepResult:
    """FGSM at every eps in ``epsilons`` from ONE input gradient per batch.

    The FGSM image at eps is a function of the gradient's sign, which does not depend on eps, so
    each batch costs one forward+backward plus one inference forward per eps, instead of a
    forward+backward per eps. Results equal calling :func:`fgsm` eps by eps. Arguments as in the
    attack contract. Returns a :class:`SweepResult` with top-``k`` predictions (and the images if
    ``return_images``), on the CPU.
    """
    images, labels, unit, upper = _check_convention(model, images, labels, convention, batch_size)
    epsilons = check_epsilons(epsilons, upper=upper)
    check_k(k, check_model_fits(model, images))
    kernel = partial(fgsm_sweep_kernel, model, epsilons=epsilons, unit=unit, clamp=convention == "pixel", k=k,
                     targeted=check_flag(targeted, "targeted"), loss_fn=check_loss(loss, temperature),
                     return_images=check_flag(return_images, "return_images"))
    out = run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size, out_device="cpu",
                      progress=progress, desc="fgsm_sweep")
    adversarials = out[2].transpose(0, 1) if return_images else None
    return SweepResult(epsilons, labels.cpu(), out[0], out[1].transpose(0, 1), adversarials)


# ---------------------------------------------------------------------------------------------
# PGD

def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, (N,)."""
    return t.flatten(1).norm(dim=1)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A random offset in the eps-ball: uniform per pixel (L-inf), or a random direction and radius (L2)."""
    if norm == "linf":
        return eps * (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device)
    return noise * (radius / _l2(noise).clamp_min(1e-12))[:, None, None, None]


def _project(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the eps-ball around x (L-inf: clamp; L2: rescale) and into [0, 1]."""
    delta = adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)[:, None, None, None]
    return (x + delta).clamp(0, 1)


def _pgd_run(model, x, y, *, eps, alpha, steps, norm, targeted, loss_fn, generator) -> torch.Tensor:
    """One PGD run from the image (generator None) or from a random point of the ball."""
    adv = x + _random_start(x, eps, norm, generator) if generator is not None else x.clone()
    adv = _project(adv, x, eps, norm)
    for _ in range(steps):
        grad, _ = _input_gradient(model, adv, y, loss_fn)
        step = grad.sign() if norm == "linf" else grad / _l2(grad).clamp_min(1e-12)[:, None, None, None]
        adv = _project(adv - alpha * step if targeted else adv + alpha * step, x, eps, norm)
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
    done = _succeeded(model, best, y, targeted)
    for _ in range(restarts - 1):
        adv = _pgd_run(model, x, y, **settings)
        success = _succeeded(model, adv, y, targeted)
        best = torch.where((success & ~done)[:, None, None, None], adv, best)
        done = done | success
    return best


def _succeeded(model: nn.Module, adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(B,) bool: the attack reached its goal (the target class, or any class but the label)."""
    with torch.no_grad():
        predicted = model(adv).argmax(1)
    return predicted == y if targeted else predicted != y


def prepare_pgd(model: nn.Module, *, eps: float, alpha: float, steps: int, norm: str = "linf",
                random_start: bool = False, restarts: int = 1, targeted: bool = False, loss: str | LossFunction = "ce",
                temperature: float = 1.0, seed: int = 0) -> Callable:
    """Check PGD's settings; returns its per-batch kernel ``(x, y) -> adversarial x``. The random
    start's generator lives on the model's device, seeded with ``seed``."""
    check_choice(norm, NORMS, "norm")
    seed, restarts = check_seed(seed), check_positive_int(restarts, "restarts")
    random_start = check_flag(random_start, "random_start")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (without it every restart is the same run)")
    generator = torch.Generator(model_device(model)).manual_seed(seed) if random_start else None
    return partial(pgd_kernel, model, eps=check_eps(eps, upper=1.0 if norm == "linf" else None),
                   alpha=check_eps(alpha, name="alpha"), steps=check_positive_int(steps, "steps"), norm=norm,
                   targeted=check_flag(targeted, "targeted"), loss_fn=check_loss(loss, temperature),
                   generator=generator, restarts=restarts)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, alpha: float, steps: int,
        norm: str = "linf", random_start: bool = False, restarts: int = 1, targeted: bool = False,
        loss: str | LossFunction = "ce", temperature: float = 1.0, batch_size: int = 128, seed: int = 0,
        progress: bool = False) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) in [0, 1] pixel space.

    ``steps`` steps of size ``alpha`` along sign(grad) ("linf") or grad / ||grad||_2 ("l2"), each
    followed by projection onto the eps-ball (of that norm) around the image and clamping to [0, 1].
    random_start: begin at a uniform point of the L-inf ball (or a random point of the L2 ball),
    drawn from a generator on the model's device seeded with ``seed``; ``restarts``: that many
    random starts, each image keeping the first that succeeds. Otherwise the attack contract
    (module docstring). Returns adversarial images (N, C, H, W) on the images' device.
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    kernel = prepare_pgd(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                         restarts=restarts, targeted=targeted, loss=loss, temperature=temperature, seed=seed)
    return run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size, progress=progress,
                       desc="pgd")


# ---------------------------------------------------------------------------------------------
# The iterative attacks of the I-defender paper (chapter 5): PGD without a random start

def _prepare_without_start(model, norm, eps, alpha, steps, targeted, loss, temperature) -> Callable:
    """PGD's kernel without a random start, of step ``alpha`` or, when None, ``eps / steps`` (the
    budget is reached in exactly ``steps`` steps)."""
    steps = check_positive_int(steps, "steps")
    return prepare_pgd(model, eps=eps, alpha=check_eps(eps) / steps if alpha is None else alpha, steps=steps,
                       norm=norm, targeted=targeted, loss=loss, temperature=temperature)


def prepare_bim(model: nn.Module, *, eps: float, alpha: float | None = None, steps: int = 10, targeted: bool = False,
                loss: str | LossFunction = "ce", temperature: float = 1.0) -> Callable:
    """Check BIM's settings; returns its per-batch kernel ``(x, y) -> adversarial x``."""
    return _prepare_without_start(model, "linf", eps, alpha, steps, targeted, loss, temperature)


def bim(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, alpha: float | None = None,
        steps: int = 10, targeted: bool = False, loss: str | LossFunction = "ce", temperature: float = 1.0,
        batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """Basic Iterative Method, the iterative L-inf attack (Kurakin et al. 2017; the I-defender paper's eq. 2).

    ``steps`` signed-gradient steps of size ``alpha`` (default ``eps / steps``), each clipped to the
    L-inf eps-ball around the image and to [0, 1]: PGD without a random start. Otherwise the attack
    contract (module docstring). Returns adversarial images (N, C, H, W) on the images' device.
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    kernel = prepare_bim(model, eps=eps, alpha=alpha, steps=steps, targeted=targeted, loss=loss, temperature=temperature)
    return run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size, progress=progress,
                       desc="bim")


def prepare_iterative_l2(model: nn.Module, *, eps: float, alpha: float | None = None, steps: int = 10,
                         targeted: bool = False, loss: str | LossFunction = "ce", temperature: float = 1.0) -> Callable:
    """Check the iterative L2 attack's settings; returns its per-batch kernel ``(x, y) -> adversarial x``."""
    return _prepare_without_start(model, "l2", eps, alpha, steps, targeted, loss, temperature)


def iterative_l2(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, alpha: float | None = None,
                 steps: int = 10, targeted: bool = False, loss: str | LossFunction = "ce", temperature: float = 1.0,
                 batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    """The iterative L2 attack (Metzen et al. 2017; the I-defender paper's eq. 3).

    ``steps`` steps of L2 length ``alpha`` (default ``eps / steps``) along ``grad / ||grad||_2``, each
    projected back onto the L2 eps-ball around the image (eps in pixel units: the L2 norm of the
    perturbation of [0, 1] images) and clamped to [0, 1]: L2 PGD without a random start. Otherwise
    the attack contract. Returns adversarial images (N, C, H, W) on the images' device.
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    kernel = prepare_iterative_l2(model, eps=eps, alpha=alpha, steps=steps, targeted=targeted, loss=loss,
                                  temperature=temperature)
    return run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size, progress=progress,
                       desc="iterative_l2")


# ---------------------------------------------------------------------------------------------
# DeepFool

def _class_gradients(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) at x and the input gradients of the logits of ``classes`` (B, J) per image:
    (B, J, C, H, W), one backward pass per column."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        chosen = logits.gather(1, classes)
        grads = [torch.autograd.grad(chosen[:, j].sum(), x, retain_graph=j + 1 < classes.shape[1])[0]
                 for j in range(classes.shape[1])]
    return logits.detach(), torch.stack(grads, 1)


def deepfool_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, overshoot: float,
                    candidates: int, eps: float | None) -> torch.Tensor:
    """DeepFool on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W). Unchecked.

    Each step linearises the logits at the current image, takes the nearest linearised boundary
    between the label and one of the ``candidates`` - 1 other classes ranked highest on the clean
    image, and adds the step that crosses it (plus 1e-4 of its direction); the total perturbation r
    is applied as ``x + (1 + overshoot) r``. An image stops moving once it is misclassified. A fixed
    number of steps and masked updates: no host synchronisation.
    """
    with torch.no_grad():
        clean = model(x)
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
        total = total * (eps / ((1 + overshoot) * _l2(total)).clamp_min(1e-12)).clamp(max=1.0)[:, None, None, None]
    return (x + (1 + overshoot) * total).clamp(0, 1)


def prepare_deepfool(model: nn.Module, *, steps: int = 50, overshoot: float = 0.02, candidates: int = 10,
                     eps: float | None = None, targeted: bool = False) -> Callable:
    """Check DeepFool's settings; returns its per-batch kernel ``(x, y) -> adversarial x``."""
    if check_flag(targeted, "targeted"):
        raise ValueError("deepfool is untargeted: it crosses the nearest decision boundary, whichever class lies "
                         "behind it; use pgd or cw_l2 with targeted=True for a target class")
    if check_positive_int(candidates, "candidates") < 2:
        raise ValueError(f"candidates must be at least 2 (the label and one other class), got {candidates}")
    return partial(deepfool_kernel, model, steps=check_positive_int(steps, "steps"),
                   overshoot=check_eps(overshoot, name="overshoot"), candidates=candidates,
                   eps=None if eps is None else check_eps(eps))


def deepfool(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 50, overshoot: float = 0.02,
             candidates: int = 10, eps: float | None = None, targeted: bool = False, batch_size: int = 128,
             progress: bool = False) -> torch.Tensor:
    """DeepFool (Moosavi-Dezfooli et al. 2016), the minimal L2 perturbation that crosses the nearest
    linearised decision boundary, iterated until the image is misclassified (at most ``steps`` steps).

    As the authors' reference code: steps of ``(|f_l| / ||w_l|| + 1e-4) w_l / ||w_l||`` towards the
    nearest of the ``candidates`` - 1 classes ranked highest on the clean image, accumulated into r
    and applied as ``clamp(x + (1 + overshoot) r, 0, 1)``. torchattacks' DeepFool instead applies the
    overshoot and the clamp at every step and has no 1e-4; one step on a linear model is the same
    in both. ``eps``: an optional L2 budget (pixel units) the final perturbation is scaled into;
    None: unbounded. Untargeted only; it uses the logits, so ``loss`` and ``temperature`` do not
    apply. Otherwise the attack contract. Returns adversarial images (N, C, H, W) on the images' device.
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    kernel = prepare_deepfool(model, steps=steps, overshoot=overshoot, candidates=candidates, eps=eps, targeted=targeted)
    return run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size, progress=progress,
                       desc="deepfool")


# ---------------------------------------------------------------------------------------------
# Carlini-Wagner L2

@torch.enable_grad()  # the optimisation needs gradients even when called under no_grad
def cw_l2_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, targeted: bool,
                 loss_fn: LossFunction, c: float, kappa: float, steps: int, search_steps: int,
                 lr: float) -> torch.Tensor:
    """:func:`cw_l2` on one batch on the model's device: x (B, C, H, W), y (B,) -> (B, C, H, W): the
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
            logits = model(adv)
            dist = (adv - x).flatten(1).pow(2).sum(1)
            objective = (dist + const * (sign * loss_fn(logits, y)).clamp(min=-kappa)).sum()
            (w.grad,) = torch.autograd.grad(objective, w)
            optimizer.step()
            with torch.no_grad():
                predicted = logits.argmax(1)
                success = predicted == y if targeted else predicted != y
                improved = success & (dist < best_dist)
                best_dist = torch.where(improved, dist, best_dist)
                best = torch.where(improved[:, None, None, None], adv.detach(), best)
                fooled |= success
        upper = torch.where(fooled, torch.minimum(upper, const), upper)
        lower = torch.where(fooled, lower, torch.maximum(lower, const))
        const = torch.where(upper < float("inf"), (lower + upper) / 2, const * 10)
    return best


def cw_l2(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float | None = None,
          targeted: bool = False, loss: str | LossFunction = "margin", temperature: float = 1.0, c: float = 1.0,
          kappa: float = 0.0, steps: int = 100, search_steps: int = 5, lr: float = 0.01, batch_size: int = 128,
          progress: bool = False) -> torch.Tensor:
    """Carlini-Wagner L2 attack, with a per-image binary search over the constant c.

    Optimises ``w`` with Adam, where ``x' = (tanh(w) + 1) / 2`` stays in [0, 1], minimising
    ``||x' - x||_2^2 + c * max(-m, -kappa)`` with ``m`` the margin of the label (untargeted: ``m =
    max_{j != y} z_j - z_y``; targeted: ``m = z_t - max_{j != t} z_j``). After each of ``search_steps``
    rounds, c halves (towards the midpoint) for images that were fooled and grows tenfold (or to the
    midpoint) for those that were not. ``eps``: an L2 budget (None: unbounded); adversarials found
    farther away are discarded. ``loss``: "margin" (C&W's), or a callable that, like the margin, turns
    positive once the attack succeeds ("ce" is refused: it never changes sign). Otherwise the
    attack contract. Returns, per image, the smallest-L2 adversarial image found, or the original
    image where none was (check with a prediction).
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    kernel = prepare_cw_l2(model, eps=eps, targeted=targeted, loss=loss, temperature=temperature, c=c, kappa=kappa,
                           steps=steps, search_steps=search_steps, lr=lr)
    return run_batched(kernel, (images, labels), device=model_device(model), batch_size=batch_size,
                       progress=progress, desc="cw_l2")


def prepare_cw_l2(model: nn.Module, *, eps: float | None = None, targeted: bool = False,
                  loss: str | LossFunction = "margin", temperature: float = 1.0, c: float = 1.0, kappa: float = 0.0,
                  steps: int = 100, search_steps: int = 5, lr: float = 0.01) -> Callable:
    """Check C&W-L2's settings; returns its per-batch kernel ``(x, y) -> adversarial x``."""
    if loss in ("ce", "mse"):
        raise ValueError(f"loss {loss!r} cannot drive cw_l2 (it never changes sign at the decision boundary); "
                         "use loss='margin' or a margin-like callable")
    return partial(cw_l2_kernel, model, eps=None if eps is None else check_eps(eps), targeted=check_flag(targeted, "targeted"),
                   loss_fn=check_loss(loss, temperature), c=check_positive_number(c, "c"), kappa=check_eps(kappa, name="kappa"),
                   steps=check_positive_int(steps, "steps"), search_steps=check_positive_int(search_steps, "search_steps"),
                   lr=check_positive_number(lr, "lr"))


# ---------------------------------------------------------------------------------------------
# Attacks as values

#: The attacks of the contract, by the name :func:`get` takes: (function, its kernel's prepare, display name).
ATTACKS = {"fgsm": (fgsm, prepare_fgsm, "FGSM"), "pgd": (pgd, prepare_pgd, "PGD"), "cw_l2": (cw_l2, prepare_cw_l2, "C&W-L2"),
           "bim": (bim, prepare_bim, "BIM"), "iterative_l2": (iterative_l2, prepare_iterative_l2, "Iterative-L2"),
           "deepfool": (deepfool, prepare_deepfool, "DeepFool")}
_NOT_SETTINGS = ("model", "images", "labels")
_RUNNER_SETTINGS = ("batch_size", "progress")


@dataclass
class Attack:
    """An attack of the contract with its settings: ``attack(model, images, labels) -> adversarial images``.

    attack: the function's name in :data:`ATTACKS`; settings: its keyword arguments; name: a
    readable name for tables and figures. Calling it with extra keywords overrides the settings.
    Plain data (picklable), so it travels to worker processes.
    """

    attack: str
    settings: dict = field(default_factory=dict)
    name: str = ""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **overrides) -> torch.Tensor:
        function = ATTACKS[self.attack][0]
        return function(model, images, labels, **{**self.settings, **overrides})

    def key(self) -> dict:
        """What defines this attack's effect, e.g. to key a cache: the attack and its settings, without
        the display name and the runner's settings (callables by qualified name)."""
        return {"attack": self.attack, "settings": {
            k: getattr(v, "__qualname__", v) if callable(v) else v
            for k, v in sorted(self.settings.items()) if k not in _RUNNER_SETTINGS}}

    def kernel(self, model: nn.Module) -> Callable:
        """The per-batch kernel ``(x, y) -> adversarial x`` against ``model``, settings checked now,
        for a loop that already holds its batches on the device (e.g. an adversarial training step)."""
        prepare = ATTACKS[self.attack][1]
        return prepare(model, **{k: v for k, v in self.settings.items() if k not in _RUNNER_SETTINGS})


def get(attack: str, /, *, name: str | None = None, **settings) -> Attack:
    """An :class:`Attack`: ``attack`` (a key of :data:`ATTACKS`) with ``settings`` (its keyword
    arguments, e.g. ``get("pgd", eps=0.3, alpha=0.01, steps=40)``). An unknown attack or setting is
    an error here; the values are checked when it runs. ``name`` defaults to e.g.
    "PGD (eps=0.3, alpha=0.01, steps=40)"."""
    check_choice(attack, list(ATTACKS), "attack")
    function, _, display = ATTACKS[attack]
    accepted = [p for p in inspect.signature(function).parameters if p not in _NOT_SETTINGS]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown} for attack {attack!r}; it takes {accepted}")
    if name is None:
        shown = ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                          for key, value in settings.items() if key not in ("batch_size", "progress"))
        name = f"{display} ({shown})" if shown else display
    elif not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return Attack(attack, dict(settings), name)
