"""What an evaluation wraps around a defence whose gradient is broken or random, and the transfer attack.

Athalye, Carlini & Wagner ("Obfuscated gradients give a false sense of security", ICML 2018,
arXiv:1802.00420) name the two wrappers every gradient attack needs against such defences:

* :class:`BPDA` (Backward Pass Differentiable Approximation): the defence declares its
  non-differentiable preprocessing (JPEG, bit-depth reduction, a quantiser) and a differentiable
  stand-in for the backward pass (the identity by default). The forward pass is exactly the
  defence's; the gradient is the stand-in's. It is a model, so every gradient attack takes it.
* :class:`EOT` (Expectation over Transformation, Athalye et al. 2018, arXiv:1707.07397): a
  randomised defence is attacked through the mean gradient over ``samples`` of its draws
  (:func:`nbutils.attacks.losses.loss_gradient` reads ``eot_samples`` and draws them in one batch).

:class:`Transfer` crafts adversarials with any attack on a source model and hands them to the
target: the black-box baseline that a white-box attack must beat (Carlini et al. 2019, section 5).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from ..batching import model_device
from ..checks import check_positive_int
from .base import Attack, Kernel, register

Transform = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The stand-in of a preprocessing that leaves an image about where it was (JPEG, bit depth)."""
    return x


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce [0, 1] pixels to ``bits`` bits (Xu et al. 2018's feature squeezing): 2**bits - 1
    levels, round to nearest. Its gradient is zero almost everywhere: a defence that masks."""
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


class BPDA(nn.Module):
    """``model(preprocess(x))`` whose backward pass goes through ``stand_in(x)`` instead.

    Forward: exactly the defence's output, ``model(preprocess(x))``. Backward: the gradient of
    ``model(stand_in(x))`` evaluated at ``preprocess(x)`` (the straight-through form
    ``stand_in(x) + (preprocess(x) - stand_in(x)).detach()``), so that a gradient attack sees the
    defence's decision and a usable gradient. preprocess, stand_in: (N, C, H, W) -> (N, C, H, W) on
    [0, 1] pixels. ``class_scores`` of the wrapped model, if any, is kept.
    """

    def __init__(self, model: nn.Module, preprocess: Transform, stand_in: Transform = identity):
        super().__init__()
        if not callable(preprocess) or not callable(stand_in):
            raise TypeError("preprocess and stand_in must be callables on (N, C, H, W) images")
        self.model, self.preprocess, self.stand_in = model, preprocess, stand_in
        if hasattr(model, "class_scores"):
            self.class_scores = model.class_scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        approximation = self.stand_in(x)
        return self.model(approximation + (self.preprocess(x) - approximation).detach())


class EOT(nn.Module):
    """A randomised defence attacked through the mean gradient of ``samples`` draws.

    The forward pass is the wrapped model's (one draw). Every gradient attack of the package
    computes its input gradient with :func:`nbutils.attacks.losses.loss_gradient`, which, for a
    model with ``eot_samples`` = S, runs the batch S times over in one forward and averages the S
    gradients. The wrapped model must draw its randomness per image (as a batch of S copies then
    gives S independent draws).
    """

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        self.model, self.eot_samples = model, check_positive_int(samples, "samples")
        if hasattr(model, "class_scores"):
            self.class_scores = model.class_scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _transfer_kernel(inner: Kernel, device: torch.device, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return inner(x.to(device), y.to(device)).to(x.device)


@register("transfer", "Transfer")
class Transfer(Attack):
    """A transfer (black-box) attack: ``attack`` crafted on the ``source`` model, scored on the target.

    The target model is never queried: its kernel runs ``attack`` against ``source`` (on the
    source's device) and returns those images. source: a model on the same inputs as the target;
    attack: any attack of the package (e.g. ``get("pgd", eps=0.3, alpha=0.01, steps=40)``). images:
    (N, C, H, W) in [0, 1]; labels: (N,). Returns the adversarial images (N, C, H, W).
    """

    source: nn.Module
    attack: Attack

    def __post_init__(self):
        if not isinstance(self.source, nn.Module):
            raise TypeError(f"source must be a torch.nn.Module, got {type(self.source).__name__}")
        if not isinstance(self.attack, Attack):
            raise TypeError(f"attack must be an nbutils.attacks.Attack (attacks.get(...)), got "
                            f"{type(self.attack).__name__}")
        if not self.name:
            object.__setattr__(self, "name", f"Transfer from {_source_name(self.source)}: {self.attack.name}")
        super().__post_init__()

    def prepare(self, model: nn.Module) -> Kernel:
        return partial(_transfer_kernel, self.attack.prepare(self.source), model_device(self.source))

    def key(self) -> dict:
        return {"attack": self.key_name, "settings": {"source": _source_name(self.source), "attack": self.attack.key()}}


def _source_name(source: nn.Module) -> str:
    return getattr(source, "name", type(source).__name__)


transfer = Transfer.function
