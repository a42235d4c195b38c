"""Defences, by name.

* Defensive distillation (Papernot et al. 2016; chapter 3): :func:`soft_labels`, :func:`distill`.
* Adversarial training on mixed clean and adversarial batches (chapter 4; Goodfellow et al. 2015,
  Madry et al. 2018): :func:`adversarial_training`.
* Detection of adversarial inputs by per-class GMMs on hidden states (chapter 5) lives in
  ``nbutils.detect``, and is listed here when it lands.

Every defence trains through :func:`nbutils.train.fit` (its loop, history, scheduler and CUDA graph).
"""
from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .batching import model_device, module_mode, run_batched
from .attacks import Attack
from .checks import check_flag, check_images, check_model_fits, check_positive_int, check_positive_number
from .train import History, cached_fit


def _soft_labels_kernel(teacher: nn.Module, x: torch.Tensor, *, temperature: float) -> torch.Tensor:
    return F.softmax(teacher(x) / temperature, dim=1)


def soft_labels(teacher: nn.Module, images: torch.Tensor, temperature: float, *, batch_size: int = 1000) -> torch.Tensor:
    """The teacher's softmax(logits / T) for every image, (N, K), on the teacher's device (eval mode).
    images: (N, C, H, W) in [0, 1]."""
    images = check_images(images)
    check_model_fits(teacher, images)
    temperature = check_positive_number(temperature, "temperature")
    check_positive_int(batch_size, "batch_size")
    device = model_device(teacher)
    with module_mode(teacher, training=False), torch.inference_mode():
        return run_batched(partial(_soft_labels_kernel, teacher, temperature=temperature), (images,), device=device,
                           batch_size=batch_size, out_device=device)


def distill(teacher: nn.Module, student: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            val_images: torch.Tensor, val_labels: torch.Tensor, *, temperature: float,
            use_soft_labels: bool = True, cache_dir: str | os.PathLike | None = None, **fit_kwargs) -> History:
    """Defensive distillation: train ``student`` at temperature T on ``teacher``'s soft labels.

    The teacher should itself have been trained at T (``fit(..., temperature=T)``). With
    ``use_soft_labels=False`` the student learns the hard labels at T instead: the source notebook's
    bug (it computes the soft labels and never uses them). Evaluate the student at T = 1, i.e. on
    its plain logits. ``cache_dir``: see :func:`nbutils.train.cached_fit`. Returns the student's
    :class:`~nbutils.train.History`.
    """
    targets = soft_labels(teacher, images, temperature) if check_flag(use_soft_labels, "use_soft_labels") else None
    return cached_fit(cache_dir, student, images, labels, val_images, val_labels, temperature=temperature,
                      soft_targets=targets, **fit_kwargs)


def adversarial_training(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
                         val_labels: torch.Tensor, *, attack: Attack, adversarial_fraction: float = 0.5,
                         craft_mode: str = "eval", cache_dir: str | os.PathLike | None = None,
                         **fit_kwargs) -> History:
    """Train ``model`` on batches whose last ``adversarial_fraction`` is crafted, at every step, by
    ``attack`` against the current weights (0.5: the mixed-batch paper's 32 clean + 32 FGSM images per
    batch of 64; 1.0 with PGD: Madry et al.'s adversarial training). The model crafts in
    ``craft_mode`` ("eval", as the source's Keras code does, or "train") and updates in training mode.
    Everything else is :func:`nbutils.train.fit` (its loop, history, scheduler and CUDA graph) through
    :func:`nbutils.train.cached_fit` when ``cache_dir`` is given. Returns the :class:`~nbutils.train.History`.
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be an nbutils.attacks.Attack (attacks.get(...)), got {type(attack).__name__}")
    return cached_fit(cache_dir, model, images, labels, val_images, val_labels, attack=attack,
                      adversarial_fraction=adversarial_fraction, craft_mode=craft_mode, **fit_kwargs)
