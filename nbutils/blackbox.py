"""The black-box attacker's substitute (Papernot et al., "Practical Black-Box Attacks against Machine
Learning", 2017, arXiv:1602.02697), as Defense-GAN's ``blackbox.py`` (Samangouei et al. 2018, code
kabkabm/defensegan, after cleverhans' MNIST tutorial) runs it, which chapter 5 reproduces.

The attacker holds a few labelled images and can query the target (the "oracle") for labels only.
:func:`train_substitute` trains a substitute on them, then alternates: augment the set with
:func:`jacobian_augmentation` (each image stepped by ``lam`` along the sign of the substitute's
gradient of its label's probability), ask the oracle to label the new half, train again. Adversarial
examples are then crafted on the substitute and sent to the target.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from .attacks import FGSM
from .batching import model_device, module_mode, run_batched
from .checks import check_choice, check_eps, check_model_fits, check_positive_int, check_seed, checked_inputs
from .files import cache_entry, state_digest
from .metrics import class_logits
from .train import cached_module, fit


def _label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """softmax(logits)_y per image (N,)."""
    return logits.softmax(1).gather(1, labels[:, None]).squeeze(1)


def jacobian_augmentation(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lam: float, *,
                          batch_size: int = 512) -> torch.Tensor:
    """The new points of one Jacobian-based augmentation: ``x + lam * sign(d softmax(model(x))_y / dx)``
    for each image x with label y, (N, C, H, W), in eval mode, not clipped to [0, 1] (as cleverhans'
    ``jacobian_augmentation``); a negative ``lam`` steps down the label's probability. images: (N, C,
    H, W); labels: (N,) the labels the substitute was trained on. Unchecked (see :func:`train_substitute`)."""
    step = FGSM(eps=abs(lam), loss=_label_probability, clip=False, targeted=lam < 0)  # up (down) softmax_y, unclamped
    with module_mode(model, training=False):
        return run_batched(step.prepare(model), (images, labels), device=model_device(model), batch_size=batch_size,
                           out_device=images.device)


def oracle_labels(oracle: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """The labels the black box answers for ``images`` (N, C, H, W): its argmax, (N,) int64 on the
    images' device; the attacker sees nothing else."""
    with module_mode(oracle, training=False):
        return class_logits(oracle, images, batch_size=batch_size, out_device=images.device).argmax(1)


@dataclass
class SubstituteHistory:
    """One row per training round: round, n_images (the substitute's training set), train_acc (on its
    oracle labels), val_acc (on the true labels of the validation images), agreement (fraction of the
    validation images where substitute and oracle predict the same class), n_val (the validation
    images), seconds."""

    rows: list[dict] = field(default_factory=list)
    from_cache: bool = False

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


#: How the augmentation step's sign moves over the rounds: "constant" (+lam every round, Papernot et
#: al. 2017's text) or "cleverhans" (cleverhans' black-box tutorial, which Defense-GAN's blackbox.py
#: copies: ``lmbda_coef = 2 * int(int(rho / 3) != 0) - 1``, i.e. -lam for the first three rounds, then +lam).
LAM_SCHEDULES = ("constant", "cleverhans")


def augmentation_step(lam: float, round_: int, schedule: str) -> float:
    """The signed step of the augmentation after round ``round_`` (0-based) under ``schedule``."""
    return lam if schedule == "constant" or round_ >= 3 else -lam


def _train_rounds(substitute, oracle, images, labels, val_images, val_labels, *, rounds, lam, lam_schedule, epochs,
                  batch_size, lr, seed) -> SubstituteHistory:
    history = SubstituteHistory()
    oracle_val = oracle_labels(oracle, val_images)
    for round_ in range(rounds):
        rows = fit(substitute, images, labels, val_images, val_labels, epochs=epochs, batch_size=batch_size, lr=lr,
                   scheduler_factor=None, seed=seed + round_, pixel_range=False, progress=False).rows
        agreement = (oracle_labels(substitute, val_images) == oracle_val).double().mean().item()
        history.rows.append({"round": round_, "n_images": images.shape[0], "train_acc": rows[-1]["train_acc"],
                             "val_acc": rows[-1]["val_acc"], "agreement": agreement, "n_val": val_images.shape[0],
                             "seconds": sum(r["seconds"] for r in rows)})
        if round_ < rounds - 1:
            new = jacobian_augmentation(substitute, images, labels, augmentation_step(lam, round_, lam_schedule))
            images, labels = torch.cat([images, new]), torch.cat([labels, oracle_labels(oracle, new)])
    return history


def train_substitute(substitute: nn.Module, oracle: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     val_images: torch.Tensor, val_labels: torch.Tensor, *, rounds: int = 6, lam: float = 0.1,
                     lam_schedule: str = "cleverhans", epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0, cache_dir: str | os.PathLike | None = None) -> SubstituteHistory:
    """Train ``substitute`` against the black box ``oracle`` by Jacobian-based dataset augmentation.

    images, labels: the attacker's initial set (Defense-GAN: the first 150 test images with their true
    labels); val_images, val_labels: images the attacker never trains on, for the history only.
    ``rounds`` rounds (Defense-GAN's ``data_aug`` = 6): train ``epochs`` epochs with Adam at ``lr``,
    constant, batches of ``batch_size`` (a fresh optimiser each round, the weights carried over, as
    cleverhans' ``model_train``); then, except after the last round, double the set with
    :func:`jacobian_augmentation` at step ``lam``, its sign by ``lam_schedule`` (:data:`LAM_SCHEDULES`;
    default: the source's), and label the new half by querying the oracle. The
    set grows to ``len(images) * 2 ** (rounds - 1)``. Augmented points may leave [0, 1] (the source
    does not clip). ``cache_dir``: keep the trained weights by the settings, the oracle's weights and
    the data (a hit loads them, with ``weights_only=True``). Returns a :class:`SubstituteHistory`.
    """
    images, labels = checked_inputs(substitute, images, labels, batch_size)
    val_images, val_labels = checked_inputs(substitute, val_images, val_labels, batch_size,
                                            names=("val_images", "val_labels"))
    check_model_fits(oracle, images, name="images (for the oracle)")
    settings = dict(rounds=check_positive_int(rounds, "rounds"), lam=check_eps(lam, name="lam"),
                    lam_schedule=check_choice(lam_schedule, LAM_SCHEDULES, "lam_schedule"),
                    epochs=check_positive_int(epochs, "epochs"), batch_size=batch_size, lr=lr, seed=check_seed(seed))
    device = model_device(substitute)

    def train() -> SubstituteHistory:
        return _train_rounds(substitute, oracle, images.to(device), labels.to(device), val_images.to(device),
                             val_labels.to(device), **settings)

    if cache_dir is None:
        return train()
    name = getattr(substitute, "name", type(substitute).__name__)
    path, key = cache_entry(cache_dir, f"substitute_{name}_seed{seed}",
                            dict(settings, substitute=name, oracle=state_digest(oracle), device=device.type),
                            weights=substitute, data={"images": images, "labels": labels, "val": val_images})
    return cached_module(path, key, substitute, train, SubstituteHistory)
