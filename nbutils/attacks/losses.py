"""The losses an attack ascends, and the input gradient every gradient attack takes.

A loss is a per-image function ``(output (N, ...), labels (N,)) -> (N,)``. The named ones (:data:`LOSSES`)
read the model's class scores (:func:`nbutils.batching.class_scores`, so a detector head that appends
columns to its logits is never misread): "ce", the cross-entropy of ``logits / temperature``;
"margin", Carlini-Wagner's ``max_{j != y} z_j - z_y``, which never saturates; "mse", the squared error
between the one-hot label and the softmax (the PyImageSearch posts' FGSM); "dlr", Croce & Hein's
difference-of-logits ratio (arXiv:2003.01690, eq. 3), the margin divided by ``z_pi1 - z_pi3``, so that
it is invariant to shifting and scaling the logits (it needs 3 classes). A callable is used as given,
on the model's whole output. Losses are summed over the batch before differentiation, so each image's
gradient is independent of the batch it is computed in.

A model may declare ``eot_samples`` (:class:`nbutils.attacks.wrappers.EOT`): :func:`loss_gradient`
then averages the gradient of the loss over that many forward passes of a randomised model
(Expectation over Transformation, Athalye et al. 2018, arXiv:1707.07397), in one batched pass.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import class_scores, model_device
from ..checks import check_choice, check_positive_number, checked_inputs

LOSSES = ("ce", "margin", "mse", "dlr")
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def margin_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (N,): positive once the image is
    misclassified. logits: (N, K); labels: (N,)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true


def dlr_per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image difference-of-logits ratio (Croce & Hein 2020, arXiv:2003.01690, eq. 3) (N,):
    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted logits;
    positive once the image is misclassified, unchanged when the logits are shifted or scaled.
    logits: (N, K) with K >= 3; labels: (N,)."""
    if logits.shape[1] < 3:
        raise ValueError(f"loss 'dlr' needs at least 3 classes (it divides by z_pi1 - z_pi3), the model gives "
                         f"{logits.shape[1]}; use loss='margin' or 'ce'")
    top = logits.topk(3, dim=1).values
    return margin_per_image(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_per_image(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image targeted difference-of-logits ratio of APGD-T (Croce & Hein 2020, eq. 4) (N,):
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, ascended to move the image from its label y
    towards the target t. logits: (N, K) with K >= 4; labels, targets: (N,)."""
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model gives {logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    difference = logits.gather(1, targets[:, None]) - logits.gather(1, labels[:, None])
    return difference.squeeze(1) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def mse_per_image(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-image mean squared error between the one-hot label and ``softmax(logits / T)`` (N,): the
    loss of the PyImageSearch FGSM that the mixed-batch paper copied (Keras' ``MeanSquaredError``)."""
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return (torch.softmax(logits / temperature, dim=1) - one_hot).pow(2).mean(dim=1)


def cross_entropy_per_image(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-image cross-entropy of ``logits / T`` (N,)."""
    return F.cross_entropy(logits / temperature, labels, reduction="none")


_NAMED = {"ce": cross_entropy_per_image, "mse": mse_per_image}
_SCALE_FREE = {"margin": margin_per_image, "dlr": dlr_per_image}  # no temperature: a ratio or difference of logits


def _on_class_scores(loss: Callable, model: nn.Module | None, output: torch.Tensor, labels: torch.Tensor):
    return loss(output if model is None else class_scores(model, output), labels)


def loss_function(loss: str | LossFunction = "ce", temperature: float = 1.0,
                  model: nn.Module | None = None) -> LossFunction:
    """The per-image loss ``(output, labels) -> (N,)`` named by ``loss`` (see the module docstring),
    reading ``model``'s class scores when given, or ``loss`` itself when it is a callable. Unchecked:
    see :func:`check_loss`."""
    if callable(loss):
        return loss
    named = _SCALE_FREE[loss] if loss in _SCALE_FREE else partial(_NAMED[loss], temperature=temperature)
    return partial(_on_class_scores, named, model)


def check_loss(loss, temperature, model: nn.Module | None = None) -> LossFunction:
    """A loss name from :data:`LOSSES` or a callable, and a positive, finite temperature; returns the
    per-image loss function (on ``model``'s class scores when given)."""
    if not callable(loss):
        check_choice(loss, LOSSES, "loss")
    check_positive_number(temperature, "temperature")
    return loss_function(loss, temperature, model)


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str | LossFunction = "ce",
                temperature: float = 1.0) -> torch.Tensor:
    """The summed loss an attack ascends (labels: true classes) or descends (labels: targets), 0-d.
    logits: (N, K); labels: (N,). Checks the loss and temperature."""
    return check_loss(loss, temperature)(logits, labels).sum()


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFunction
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' input gradient: d sum(loss_fn(model(x), y)) / dx, (B, C, H, W), and the model's
    output (B, ...) detached. Tensors on the model's device; unchecked (see :func:`input_gradient`).
    The model's parameters receive no gradient. A model with ``eot_samples`` = S > 1 (a randomised
    defence behind :class:`nbutils.attacks.wrappers.EOT`) sees the batch S times over in one forward
    (y (B, ...) repeated alike), and the gradient is the mean of the S draws' gradients; the output
    returned is the first draw's."""
    samples = getattr(model, "eot_samples", 1)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        if samples == 1:
            output = model(x)
            (grad,) = torch.autograd.grad(loss_fn(output, y).sum(), x)
            return grad, output.detach()
        output = model(x.repeat(samples, *(1,) * (x.ndim - 1)))
        repeated = y.repeat(samples, *(1,) * (y.ndim - 1))
        (grad,) = torch.autograd.grad(loss_fn(output, repeated).sum() / samples, x)
    return grad, output[:x.shape[0]].detach()


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                   loss: str | LossFunction = "ce", temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed attack loss with respect to the input images, in one batch.

    images: (N, C, H, W) finite floats (any range: adversarial images may have left [0, 1]); labels:
    (N,) int64 class indices of the model's output. loss, temperature: as in the module docstring
    (an unknown name or a temperature that is not positive and finite is refused). Returns (gradient
    (N, C, H, W), output (N, K) detached), on the model's device.
    """
    images, labels = checked_inputs(model, images, labels, images.shape[0] if isinstance(images, torch.Tensor) else 1,
                                    pixel_range=False)
    device = model_device(model)
    return loss_gradient(model, images.to(device), labels.to(device), check_loss(loss, temperature, model))
