"""Defences, by name.

* Defensive distillation (Papernot et al. 2016; chapter 3): :func:`soft_labels`, :func:`distill`.
* Adversarial training on mixed clean and adversarial batches (chapter 4; Goodfellow et al. 2015,
  Madry et al. 2018): :func:`adversarial_training`.
* Detection of adversarial inputs by per-class GMMs on hidden states (chapter 5):
  ``nbutils.detect``.
* Input transformations in front of a net (chapter 6; Guo et al. 2018, arXiv:1711.00117; Xu et al.
  2018, arXiv:1704.01155): :func:`jpeg` (quality 75), :func:`nbutils.attacks.bit_depth`,
  :func:`median_filter`, by name in :data:`TRANSFORMS`; :class:`Preprocessed` puts one in front of a
  net and gives the BPDA version an adaptive attacker uses (:meth:`Preprocessed.bpda`).
* :class:`Ensemble`: the mean of several nets' logits (the survey's ``EnsembleModel``).

Every trained defence trains through :func:`nbutils.train.fit` (its loop, history, scheduler and CUDA
graph).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import pandas as pd

import torch
import torch.nn.functional as F
from torch import nn

from .batching import model_device, module_mode, run_batched
from .attacks import BPDA, Attack, bit_depth
from .checks import (check_choice, check_flag, check_images, check_model_fits, check_positive_int,
                     check_positive_number)
from .models import freeze
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


# ---------------------------------------------------------------------------------------------
# Input transformations (chapter 6)

#: The baseline JPEG quantisation tables at quality 50 (ITU-T T.81, Annex K: luminance, chrominance).
JPEG_LUMINANCE = ((16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
                  (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
                  (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
                  (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99))
JPEG_CHROMINANCE = ((17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
                    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99)) + ((99,) * 8,) * 4
#: JFIF's RGB -> YCbCr matrix (rows Y, Cb, Cr; Cb and Cr offset by 128 levels).
YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def jpeg_table(base, quality: int) -> torch.Tensor:
    """libjpeg's scaling of a quality-50 table to ``quality`` in [1, 100]: (8, 8) float64 steps in [1, 255]."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return ((torch.tensor(base, dtype=torch.float64) * scale + 50) // 100).clamp(1, 255)


def dct_matrix(n: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n) float64: row k is the k-th cosine basis vector."""
    k, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(n, dtype=torch.float64)[None]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


def _jpeg_channels(levels: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Quantise (N, C, H, W) level-shifted samples (H, W multiples of 8) block by block: 8x8 DCT,
    rounding to ``tables`` (C, 8, 8), inverse DCT."""
    n, c, h, w = levels.shape
    d = dct_matrix().to(levels)
    blocks = levels.reshape(n, c, h // 8, 8, w // 8, 8).transpose(3, 4)
    steps = tables.to(levels)[None, :, None, None]
    coefficients = torch.round(d @ blocks @ d.T / steps) * steps
    return (d.T @ coefficients @ d).transpose(3, 4).reshape(n, c, h, w)


def jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Baseline JPEG's lossy steps at ``quality``, batched on the images' device: (N, C, H, W) in [0, 1]
    -> (N, C, H, W) in [0, 1] (C = 1 or 3).

    The image is rounded to 8-bit levels; a colour image goes to YCbCr (JFIF) without chroma
    subsampling; each channel is padded to a multiple of 8 by repeating its edge, cut into 8x8 blocks,
    transformed by the DCT, rounded to the standard tables scaled to ``quality`` (luminance for Y,
    chrominance for Cb and Cr), transformed back and rounded to levels. The entropy coding JPEG adds
    is lossless, so this is what a JPEG round trip does to the pixels, up to libjpeg's integer DCT
    (within a level or two of Pillow's on MNIST). Its gradient is zero almost everywhere (rounding):
    attack it through :class:`~nbutils.attacks.BPDA`."""
    n, c, h, w = x.shape
    levels = torch.round(x.double() * 255)
    colour = c == 3
    to_ycbcr = torch.tensor(YCBCR, dtype=torch.float64, device=x.device)
    offset = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64, device=x.device)[None, :, None, None]
    if colour:
        levels = _levels(torch.einsum("ij,njhw->nihw", to_ycbcr, levels) + offset)
    padded = F.pad(levels, (0, -w % 8, 0, -h % 8), mode="replicate")
    tables = torch.stack([jpeg_table(JPEG_LUMINANCE, quality)] + [jpeg_table(JPEG_CHROMINANCE, quality)] * 2
                         if colour else [jpeg_table(JPEG_LUMINANCE, quality)])
    decoded = _levels(_jpeg_channels(padded - 128, tables)[..., :h, :w] + 128)
    if colour:
        decoded = _levels(torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_ycbcr), decoded - offset))
    return (decoded / 255).to(x.dtype)


def _levels(samples: torch.Tensor) -> torch.Tensor:
    """Samples rounded to 8-bit levels, as libjpeg stores them between its steps."""
    return torch.round(samples).clamp(0, 255)


def median_filter(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Each pixel replaced by the median of its ``size`` x ``size`` neighbourhood (odd size; edges
    reflected), per channel, batched: (N, C, H, W) -> (N, C, H, W). Xu et al. (2018)'s spatial
    smoothing. Its gradient flows to one pixel of each window: attack it through BPDA."""
    n, c, h, w = x.shape
    half = size // 2
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    windows = F.unfold(padded.reshape(n * c, 1, h + 2 * half, w + 2 * half), size)  # (N C, size^2, H W)
    return windows.median(dim=1).values.reshape(n, c, h, w)


#: The input transformations by name: name -> (a function of the images and one setting, the setting's name,
#: its smallest and largest value).
TRANSFORMS: dict[str, tuple[Callable[..., torch.Tensor], str, int, int]] = {
    "jpeg": (jpeg, "quality", 1, 100), "bit_depth": (bit_depth, "bits", 1, 8), "median": (median_filter, "size", 1, 15)}


def transform(name: str, setting: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The input transformation ``name`` of :data:`TRANSFORMS` at its setting (JPEG's quality in
    [1, 100], bit depth's bits in [1, 8], the median filter's odd window size)."""
    function, setting_name, low, high = TRANSFORMS[check_choice(name, list(TRANSFORMS), "transform")]
    setting = check_positive_int(setting, setting_name)
    odd = setting_name == "size"
    if not low <= setting <= high or (odd and setting % 2 == 0):
        raise ValueError(f"{setting_name} must be {'an odd number ' if odd else ''}in [{low}, {high}], got {setting}")
    return partial(function, **{setting_name: setting})


class Preprocessed(nn.Module):
    """``model(preprocess(x))``: a net behind an input transformation, as the defence ships it.

    Its forward and backward passes are the transformation's own (JPEG's and bit depth's gradient is
    zero almost everywhere: a gradient attack on this module sees a masked gradient). :meth:`bpda`
    gives the same forward pass with the identity's gradient, the adaptive attacker's view (Athalye
    et al. 2018). ``name``: for tables. ``class_scores`` of the wrapped model, if any, is kept."""

    def __init__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], name: str = ""):
        super().__init__()
        if not callable(preprocess):
            raise TypeError("preprocess must be a callable on (N, C, H, W) images")
        self.model, self.preprocess = model, preprocess
        self.name = name or f"{getattr(model, 'name', type(model).__name__)} behind a transformation"
        if hasattr(model, "class_scores"):
            self.class_scores = model.class_scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def bpda(self) -> BPDA:
        """The same defence whose backward pass is the identity's: :class:`~nbutils.attacks.BPDA`."""
        wrapped = BPDA(self.model, self.preprocess)
        wrapped.name = f"{self.name} (BPDA)"
        return wrapped


class Ensemble(nn.Module):
    """The mean of ``models``' logits (the survey's ``EnsembleModel``): (N, C, H, W) -> (N, K). Every
    member takes the same [0, 1] pixels and owns its normalisation."""

    def __init__(self, models: Sequence[nn.Module], name: str = ""):
        super().__init__()
        if len(models) < 1 or not all(isinstance(m, nn.Module) for m in models):
            raise TypeError("an Ensemble needs a non-empty list of torch.nn.Module")
        self.members = nn.ModuleList(models)
        self.name = name or f"ensemble of {len(models)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


# ---------------------------------------------------------------------------------------------
# Chapter 6's suite: every defence of the book on one dataset and seed

@dataclass
class Defence:
    """One defence as chapter 6 evaluates it: ``shipped`` (the model as its authors deploy it: what a
    non-adaptive evaluation attacks), ``attackable`` (the same decisions with the gradient an adaptive
    attacker uses: BPDA for an input transformation; the shipped model otherwise), ``kind``
    ("trained", "transformation", "ensemble") and ``history`` (the training histories, a table)."""

    name: str
    shipped: nn.Module
    attackable: nn.Module
    kind: str
    history: pd.DataFrame


def defence_suite(make_model: Callable[[int], nn.Module], images: torch.Tensor, labels: torch.Tensor,
                  val_images: torch.Tensor, val_labels: torch.Tensor, *, eps: float, seed: int, epochs: int,
                  batch_size: int, lr: float, pgd_steps: int, pgd_epochs: int, mixed_fraction: float,
                  temperature: float, jpeg_quality: int, bits: int, median_size: int, ensemble_size: int,
                  cache_dir: str | os.PathLike | None = None, progress: bool = False) -> dict[str, Defence]:
    """Train (or load from ``cache_dir``) every defence of the book on one dataset at one seed.

    make_model(seed): a fresh net of the one architecture every defence shares. The defences, by name:
    "standard training"; "PGD adversarial training" (Madry et al.: every batch replaced by PGD at
    ``eps``, ``pgd_steps`` steps of 2.5 eps / steps, random start, ``pgd_epochs`` epochs); "mixed FGSM
    training" (chapter 4: ``mixed_fraction`` of each batch FGSM at ``eps``); "distillation T=100"
    (chapter 3: a teacher trained at ``temperature``, a student on its soft labels at it, deployed at
    T = 1); "JPEG 75", "bit depth 1" and "median 3x3" (each in front of the standard net, with its
    BPDA view); "ensemble" (the logit average of the standard net and ``ensemble_size - 1`` more,
    seeds 1000 + seed, 2000 + seed, ...). Every training: Adam at ``lr``, constant, ``batch_size``,
    seeded with ``seed``. images: (N, C, H, W) in [0, 1]; labels: (N,); val_*: for the histories."""
    from .attacks import get

    def trained(name: str, net_seed: int, **fit_kwargs) -> tuple[nn.Module, pd.DataFrame]:
        model = make_model(net_seed)
        settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, scheduler_factor=None, seed=net_seed,
                        progress=progress) | fit_kwargs
        history = cached_fit(cache_dir, model, images, labels, val_images, val_labels, **settings)
        return freeze(model), history.to_frame().assign(defence=name, seed=net_seed)

    standard, standard_history = trained("standard training", seed)
    pgd = get("pgd", eps=eps, alpha=2.5 * eps / pgd_steps, steps=pgd_steps, random_start=True, seed=seed)
    robust, robust_history = trained("PGD adversarial training", seed, epochs=pgd_epochs, attack=pgd,
                                     adversarial_fraction=1.0)
    mixed, mixed_history = trained("mixed FGSM training", seed, attack=get("fgsm", eps=eps),
                                   adversarial_fraction=mixed_fraction)
    teacher, teacher_history = trained("distillation teacher", seed, temperature=temperature)
    student = make_model(seed)
    student_history = distill(teacher, student, images, labels, val_images, val_labels, temperature=temperature,
                              cache_dir=cache_dir, epochs=epochs, batch_size=batch_size, lr=lr, scheduler_factor=None,
                              seed=seed, progress=progress).to_frame()
    student_history = student_history.assign(defence=f"distillation T={temperature:g}", seed=seed)
    members, member_histories = [standard], []
    for k in range(1, ensemble_size):
        member, history = trained("ensemble member", 1000 * k + seed)
        members.append(member)
        member_histories.append(history)
    suite = [Defence("standard training", standard, standard, "trained", standard_history),
             Defence("PGD adversarial training", robust, robust, "trained", robust_history),
             Defence("mixed FGSM training", mixed, mixed, "trained", mixed_history),
             Defence(f"distillation T={temperature:g}", freeze(student), freeze(student), "trained",
                     pd.concat([teacher_history, student_history], ignore_index=True))]
    for name, setting, label in (("jpeg", jpeg_quality, f"JPEG {jpeg_quality}"), ("bit_depth", bits, f"bit depth {bits}"),
                                 ("median", median_size, f"median {median_size}x{median_size}")):
        shipped = Preprocessed(standard, transform(name, setting), name=label)
        suite.append(Defence(label, shipped, shipped.bpda(), "transformation", standard_history.iloc[:0]))
    ensemble = Ensemble(members, name=f"ensemble of {ensemble_size}")
    suite.append(Defence("ensemble", ensemble, ensemble, "ensemble",
                         pd.concat([standard_history, *member_histories], ignore_index=True)))
    return {d.name: d for d in suite}
