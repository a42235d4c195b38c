"""Attacks on classifiers that take [0, 1] pixel images, each defined once (:mod:`.base`).

The contract. Every attack is a function ``attack(model, images, labels, *, <its settings>,
batch_size=128, progress=False) -> adversarial images`` and a value ``get(name, **settings)``:

* ``model``: an ``nn.Module`` taking (N, C, H, W) pixels in [0, 1] and returning logits (N, K); it
  owns its normalisation (:class:`nbutils.models.Classifier`). A model whose output carries more
  than the class scores says how to read them (``class_scores``, :func:`nbutils.batching.class_scores`).
* ``images``: (N, C, H, W) floating point in [0, 1]; ``labels``: (N,) int64, the true classes, or
  the target classes when ``targeted`` (the attack then descends the target's loss).
* ``eps``: the perturbation budget in pixel units of the attack's norm (L-inf unless it says
  otherwise); FGSM's ``convention="normalised"`` reproduces the tutorial the main paper copied.
* ``loss``: the per-image loss the attack ascends (:mod:`.losses`).
* Returns the adversarial images, (N, C, H, W), on the images' device and of their dtype.

Attacks by module: :mod:`.fgsm` (FGSM and its one-gradient eps sweep), :mod:`.pgd` (PGD, BIM,
iterative L2), :mod:`.minimal` (DeepFool, C&W-L2), :mod:`.apgd` (Auto-PGD, APGD-T), :mod:`.square`
(Square Attack, gradient-free), :mod:`.wrappers` (BPDA and EOT for defences that break or randomise
the gradient; the transfer attack). :mod:`nbutils.evaluate` runs them as a worst-case cascade.
"""
from .apgd import APGD, apgd
from .base import ATTACKS, Attack, Kernel, get, register
from .fgsm import CONVENTIONS, FGSM, SweepResult, fgsm, fgsm_step, fgsm_sweep, fgsm_with_output, pixel_eps, pixel_step
from .losses import (LOSSES, LossFunction, attack_loss, check_loss, cross_entropy_per_image, dlr_per_image,
                     dlr_targeted_per_image, input_gradient, loss_function, loss_gradient, margin_per_image,
                     mse_per_image)
from .minimal import CWL2, DeepFool, cw_l2, deepfool
from .pgd import BIM, NORMS, PGD, IterativeL2, bim, iterative_l2, pgd
from .square import Square, square
from .wrappers import BPDA, EOT, Transfer, bit_depth, identity, transfer

__all__ = ["APGD", "apgd", "Attack", "attack_loss", "ATTACKS", "BIM", "bim", "bit_depth", "BPDA", "check_loss",
           "CONVENTIONS", "cross_entropy_per_image", "cw_l2", "CWL2", "DeepFool", "deepfool", "dlr_per_image",
           "dlr_targeted_per_image", "EOT", "FGSM", "fgsm", "fgsm_step", "fgsm_sweep", "fgsm_with_output", "get",
           "identity", "input_gradient", "iterative_l2", "IterativeL2", "Kernel", "loss_function", "loss_gradient",
           "LOSSES", "LossFunction", "margin_per_image", "mse_per_image", "NORMS", "PGD", "pgd", "pixel_eps",
           "pixel_step", "register", "Square", "square", "SweepResult", "Transfer", "transfer"]
