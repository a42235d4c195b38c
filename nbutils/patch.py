"""The adversarial patch attack (Brown et al. 2017) in the protocol of the UvA tutorial 10.

A patch is a (C, k, k) tensor of pixels in [0, 1] pasted over a k x k square of each image (the
pixels there are replaced). It is trained, image-independently, to make the model predict one
target class wherever it is pasted.

The tutorial's protocol, which the main paper ran (its public notebook, phlippe/uvadlc_notebooks on GitHub):

* parameterisation ``pixels = (tanh(p) + 1) / 2`` with ``p`` initialised to zeros (a grey patch);
* SGD, lr 0.1, momentum 0.8, batch 32 (last partial batch dropped), 5 epochs, cross-entropy
  towards the target, a random 90/10 train/validation split;
* one uniformly random position per image and step, no rotation or scaling;
* evaluation: 4 random placements per image, over images whose true class is not the target;
  success = the target is the top-1 (top-5) prediction.

Its evaluation pastes in place, so placements 2, 3 and 4 of an image carry 2, 3 and 4 patches.
:func:`evaluate_patch` reproduces that with ``stacked=True`` and defaults to one patch per placement.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .batching import model_device, module_mode, progress_bar, run_batched, split_indices
from .checks import (check_flag, check_fraction, check_images, check_positive_int, check_positive_number, check_seed,
                     checked_inputs)
from .files import cache_entry, cached

#: The main paper's five patch targets (Tables VII-XII) and their ImageNet class indices.
PAPER_TARGETS = {"saltshaker": 773, "soap dispenser": 804, "digital clock": 530, "piggy bank": 719, "toaster": 859}
PAPER_SIZES = [32, 48, 64]


# ---------------------------------------------------------------------------------------------
# Checks

def check_patch(patch, images: torch.Tensor | None = None, *, name: str = "patch") -> torch.Tensor:
    """A float (C, k, k) tensor in [0, 1], no larger than ``images`` (N, C, H, W) and with its C."""
    if not isinstance(patch, torch.Tensor) or not patch.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor of shape (C, k, k)")
    if patch.ndim != 3 or patch.shape[1] != patch.shape[2]:
        raise ValueError(f"{name} must have shape (C, k, k), got {tuple(patch.shape)}")
    if not torch.isfinite(patch).all() or patch.min() < 0 or patch.max() > 1:
        raise ValueError(f"{name} values must lie in [0, 1] (pixels), got min {patch.min().item():.4g}, "
                         f"max {patch.max().item():.4g}")
    if images is not None:
        _, c, h, w = images.shape
        if patch.shape[0] != c:
            raise ValueError(f"{name} has {patch.shape[0]} channels, the images have {c}")
        check_patch_size(patch.shape[-1], images)
    return patch


def check_patch_size(size, images: torch.Tensor) -> int:
    """A positive int no larger than the images' height and width."""
    check_positive_int(size, "size")
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"patch size {size} is larger than the images ({h} x {w})")
    return size


def check_target(target, model: nn.Module) -> int:
    """A class index of the model (an int in [0, num_classes))."""
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be an int class index, got {type(target).__name__} {target!r}")
    num_classes = getattr(model, "num_classes", None)
    if target < 0 or (num_classes is not None and target >= num_classes):
        raise ValueError(f"target must lie in [0, {num_classes}), got {target}")
    return target


def check_positions(positions, images: torch.Tensor, size: int) -> torch.Tensor:
    """An int tensor (N, 2) of (top, left) corners keeping a size x size patch inside the images."""
    if not isinstance(positions, torch.Tensor) or positions.dtype.is_floating_point or positions.dtype == torch.bool:
        raise TypeError("positions must be an integer torch.Tensor of shape (N, 2): (top, left) per image")
    n, _, h, w = images.shape
    if positions.shape != (n, 2):
        raise ValueError(f"positions must have shape ({n}, 2), got {tuple(positions.shape)}")
    limit = torch.tensor([h - size, w - size], device=positions.device)
    if (positions < 0).any() or (positions > limit).any():
        raise ValueError(f"positions must keep the {size} x {size} patch inside the {h} x {w} images: "
                         f"top in [0, {h - size}], left in [0, {w - size}]")
    return positions.long()


def check_index(index, n: int, name: str = "index") -> torch.Tensor:
    """A 1-D integer tensor of distinct positions in [0, n), not all of them; returned as int64 on the CPU."""
    if not isinstance(index, torch.Tensor) or index.dtype.is_floating_point or index.dtype == torch.bool or index.ndim != 1:
        raise TypeError(f"{name} must be a 1-D integer torch.Tensor of image positions")
    index = index.long().cpu()
    if len(index) == 0 or len(index) >= n or index.min() < 0 or index.max() >= n or len(index.unique()) != len(index):
        raise ValueError(f"{name} must hold between 1 and {n - 1} distinct positions in [0, {n}), got {len(index)}")
    return index


def holdout_folds(n_images: int, val_fraction: float, seed: int, folds: int) -> list[torch.Tensor]:
    """``folds`` disjoint held-out sets of ``round(n_images * val_fraction)`` image positions each.

    Fold 0 is the split :func:`train_patch` draws for ``seed`` by itself (so a run on fold 0 is the
    plain protocol); the other folds are consecutive chunks of the remaining images in an order drawn
    by the same generator. A patch trained with ``val_index=fold r`` has trained on every other
    fold's images: scoring every run's patch on the same images and placements pairs, image by
    image, the rate on images a patch trained on with the rate on images it never saw
    (:func:`protocol_effects`). Returns int64 tensors on the CPU.
    """
    check_fraction(val_fraction, "val_fraction")
    check_seed(seed)
    check_positive_int(folds, "folds")
    n_val = round(n_images * val_fraction)
    if n_val < 1 or folds * n_val >= n_images:
        raise ValueError(f"{folds} folds of {n_val} held-out images leave no training image among {n_images}")
    generator = torch.Generator().manual_seed(seed)
    rest, first = split_indices(n_images, n_val, generator)
    rest = rest[torch.randperm(len(rest), generator=generator)]
    return [first] + [rest[(r - 1) * n_val:r * n_val] for r in range(1, folds)]


# ---------------------------------------------------------------------------------------------
# Placement

def patch_pixels(parameter: torch.Tensor) -> torch.Tensor:
    """The tutorial's parameterisation: unconstrained (C, k, k) -> pixels ``(tanh(p) + 1) / 2`` in [0, 1]."""
    return (torch.tanh(parameter) + 1) / 2


def random_positions(n: int, image_size: tuple[int, int], size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) int64 (top, left) corners, uniform over every position that keeps the patch inside.

    Drawn on the CPU from ``generator``, so a seed fixes them whatever the device.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    h, w = image_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(h, w):
        raise ValueError(f"size must be an int in [1, {min(h, w)}] (the patch must fit the {h}x{w} image), got {size!r}")
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    return torch.stack([top, left], dim=1)


def place_patch(images: torch.Tensor, patch: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``images`` (N, C, H, W) with ``patch`` (C, k, k) pasted at ``positions`` (N, 2).

    Row ``i`` gets the patch over rows ``top_i .. top_i + k - 1`` and columns ``left_i .. left_i + k - 1``;
    every other pixel is unchanged and ``images`` is never modified. One batched ``index_put``;
    differentiable with respect to the patch (and the images). Checks its arguments, then
    :func:`paste`, which the training and evaluation loops call directly.
    """
    check_images(images)
    check_patch(patch, images)
    return paste(images, patch, check_positions(positions, images, patch.shape[-1]))


def paste(images: torch.Tensor, patch: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """:func:`place_patch` without the argument checks (no device synchronisation)."""
    n, c, _, _ = images.shape
    k = patch.shape[-1]
    device = images.device
    offsets = torch.arange(k, device=device)
    positions = positions.to(device)
    rows = (positions[:, 0, None] + offsets)[:, None, :, None]   # (N, 1, k, 1)
    cols = (positions[:, 1, None] + offsets)[:, None, None, :]   # (N, 1, 1, k)
    batch = torch.arange(n, device=device)[:, None, None, None]  # (N, 1, 1, 1)
    channel = torch.arange(c, device=device)[None, :, None, None]  # (1, C, 1, 1)
    return images.index_put((batch, channel, rows, cols), patch.to(images.dtype).expand(n, c, k, k))


# ---------------------------------------------------------------------------------------------
# Training

@dataclass
class TrainedPatch:
    """A trained patch and how it got there.

    patch: (C, k, k) pixels in [0, 1] on the CPU. target, size, seed: its settings.
    train_index, val_index: the split of the training images (positions in them).
    loss, target_rate: per-epoch means over the training steps (cross-entropy; fraction of patched
    training images predicted as the target, top-1). settings: the rest of the protocol.
    """

    patch: torch.Tensor
    target: int
    size: int
    seed: int
    train_index: torch.Tensor
    val_index: torch.Tensor
    loss: list[float] = field(default_factory=list)
    target_rate: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_state(self) -> dict:
        """Plain tensors, numbers and strings, loadable with ``torch.load(..., weights_only=True)``."""
        return {"patch": self.patch, "target": self.target, "size": self.size, "seed": self.seed,
                "train_index": self.train_index, "val_index": self.val_index, "loss": self.loss,
                "target_rate": self.target_rate, "settings": json.dumps(self.settings, sort_keys=True)}

    @classmethod
    def from_state(cls, state: dict) -> "TrainedPatch":
        return cls(**{**state, "settings": json.loads(state["settings"])})


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def patch_train_step(model: nn.Module, images: torch.Tensor, parameter: torch.Tensor,
                     optimizer: torch.optim.Optimizer, target: int, positions: torch.Tensor,
                     autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on the patch: paste, forward, cross-entropy towards ``target``, step.

    images: (B, C, H, W) on the model's device; parameter: the unconstrained (C, k, k) patch;
    positions: (B, 2). The gradient is taken with respect to ``parameter`` alone
    (``torch.autograd.grad``), so the model's parameters never receive one.
    Returns (loss, number of images predicted as the target), both 0-d tensors left on the device.
    """
    patched = paste(images, patch_pixels(parameter), positions)
    with _autocast(images.device, autocast_dtype):
        logits = model(patched)
    targets = torch.full((images.shape[0],), target, device=images.device, dtype=torch.long)
    loss = F.cross_entropy(logits.float(), targets)
    (parameter.grad,) = torch.autograd.grad(loss, parameter)
    optimizer.step()
    return loss.detach(), (logits.argmax(dim=1) == target).sum()


def train_patch(model: nn.Module, images: torch.Tensor, target: int, size: int, *, epochs: int = 5,
                batch_size: int = 32, lr: float = 0.1, momentum: float = 0.8, val_fraction: float = 0.1,
                val_index: torch.Tensor | None = None, seed: int = 0, autocast_dtype: torch.dtype | None = None,
                progress: bool = True) -> TrainedPatch:
    """Train a ``size`` x ``size`` patch that makes ``model`` predict class ``target``.

    images: (N, C, H, W) pixels in [0, 1] (any device; batches move to the model's). The tutorial
    protocol by default (module docstring): a seeded random split keeps ``val_fraction`` of the
    images out of training; each epoch shuffles the rest and drops the last partial batch; every
    image gets a fresh uniformly random position. One CPU generator seeded with ``seed`` draws the
    split, the shuffles and the positions. val_index: the held-out images (positions, e.g. one fold
    of :func:`holdout_folds`) instead of a random ``val_fraction`` of them; the generator then draws
    only the shuffles and positions. The model runs in eval mode; its weights are untouched.
    Returns a :class:`TrainedPatch` with per-epoch loss and training target rate.
    """
    check_images(images)
    target = check_target(target, model)
    size = check_patch_size(size, images)
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_seed(seed)
    check_positive_number(lr, "lr")
    check_fraction(momentum, "momentum", closed_low=True)
    check_fraction(val_fraction, "val_fraction", closed_low=True)
    check_flag(progress, "progress")
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    if val_index is None:
        n_val = round(images.shape[0] * val_fraction)
        if n_val >= images.shape[0]:
            raise ValueError(f"val_fraction {val_fraction} holds out all {images.shape[0]} images: none is left to train on")
        train_index, val_index = split_indices(images.shape[0], n_val, generator)
    else:
        val_index = check_index(val_index, images.shape[0], "val_index")
        kept = torch.ones(images.shape[0], dtype=torch.bool)
        kept[val_index] = False
        train_index = kept.nonzero().squeeze(1)
    steps = len(train_index) // batch_size
    if steps == 0:
        raise ValueError(f"{len(train_index)} training images make no full batch of {batch_size}")
    parameter = torch.zeros(images.shape[1], size, size, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=lr, momentum=momentum)
    losses, rates = [], []
    bar = progress_bar(range(epochs), desc=f"patch target {target}, {size}px", enabled=progress)
    with module_mode(model, training=False):
        for _ in bar:
            order = train_index[torch.randperm(len(train_index), generator=generator)]
            epoch_loss = torch.zeros((), device=device)
            epoch_hits = torch.zeros((), device=device, dtype=torch.long)
            for step in range(steps):
                batch = images[order[step * batch_size:(step + 1) * batch_size]].to(
                    device, non_blocking=images.device.type == "cpu")
                positions = random_positions(batch_size, images.shape[-2:], size, generator)
                loss, hits = patch_train_step(model, batch, parameter, optimizer, target, positions, autocast_dtype)
                epoch_loss += loss
                epoch_hits += hits
            losses.append(epoch_loss.item() / steps)  # one device sync per epoch
            rates.append(epoch_hits.item() / (steps * batch_size))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", target_rate=f"{rates[-1]:.3f}")
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum,
                "val_fraction": val_fraction, "held_out": len(val_index), "n_images": int(images.shape[0]),
                "autocast": str(autocast_dtype) if autocast_dtype else None}
    return TrainedPatch(patch_pixels(parameter).detach().cpu(), target, size, seed, train_index, val_index,
                        losses, rates, settings)


# ---------------------------------------------------------------------------------------------
# Evaluation

@dataclass
class PatchScore:
    """Per-image outcomes of a patch over several placements.

    top1_hits, top5_hits: (N,) int, placements (out of ``placements``) where the target was the
    top-1 / among the top-5 predictions; eligible: (N,) bool, true class != target.
    """

    top1_hits: torch.Tensor
    top5_hits: torch.Tensor
    eligible: torch.Tensor
    placements: int

    def rates(self, index: torch.Tensor | None = None) -> dict:
        """Top-1 and top-5 target rates (fractions in [0, 1]) over the eligible images (of ``index`` if
        given), each with its 95 % interval (``top1_low``, ``top1_high``, ...: Wilson's, widened for
        the correlation of one image's placements, :func:`nbutils.metrics.clustered_wilson_interval`),
        and the number of images and of (image, placement) trials counted."""
        from .metrics import clustered_wilson_interval

        mask = self.eligible.clone()
        if index is not None:
            keep = torch.zeros_like(mask)
            keep[index] = True
            mask &= keep
        n_images = int(mask.sum())
        if n_images == 0:
            raise ValueError("no image whose true class differs from the target: nothing to score")
        trials = n_images * self.placements
        rates = {"n_images": n_images, "n_trials": trials}
        for name, hits in (("top1", self.top1_hits[mask]), ("top5", self.top5_hits[mask])):
            low, high = clustered_wilson_interval(hits.numpy(), [self.placements] * n_images)
            rates |= {name: int(hits.sum()) / trials, f"{name}_low": low, f"{name}_high": high}
        return rates


def evaluate_patch_kernel(model: nn.Module, x: torch.Tensor, positions: torch.Tensor, *, patch: torch.Tensor,
                          target: int, stacked: bool, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hit counts of one batch on the device: x (B, C, H, W), positions (B, P, 2) for P placements.
    Returns (top-1 hits, top-k hits), each (B,) int64. Unchecked; run it in inference mode."""
    top1 = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    topk = torch.zeros_like(top1)
    current = x
    for j in range(positions.shape[1]):
        patched = paste(current, patch, positions[:, j])
        if stacked:
            current = patched
        logits = model(patched)
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        top1 += top[:, 0] == target
        topk += (top == target).any(dim=1)
    return top1, topk


def evaluate_patch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, patch: torch.Tensor, target: int,
                   *, placements: int = 4, stacked: bool = False, batch_size: int = 128, seed: int = 0,
                   k: int = 5) -> PatchScore:
    """How often ``patch`` turns the prediction into ``target``, over ``placements`` random positions per image.

    images: (N, C, H, W) pixels in [0, 1]; labels: (N,) true classes; patch: (C, s, s) in [0, 1].
    Images whose true class is the target are not counted (they cannot be "fooled" into it).
    ``stacked=True`` reproduces the tutorial's in-place bug: placement j pastes onto the image of
    placement j - 1, so it carries j patches. Positions are drawn from a CPU generator seeded with
    ``seed`` (the same positions whether stacked or not). No autograd: inference mode throughout.
    """
    images, labels = checked_inputs(model, images, labels, batch_size)
    patch = check_patch(patch, images)
    target = check_target(target, model)
    check_positive_int(placements, "placements")
    check_positive_int(k, "k")
    device, n = model_device(model), images.shape[0]
    generator = torch.Generator().manual_seed(check_seed(seed))
    positions = torch.stack([random_positions(n, images.shape[-2:], patch.shape[-1], generator)
                             for _ in range(placements)], dim=1)  # (N, placements, 2)
    kernel = partial(evaluate_patch_kernel, model, patch=patch.to(device), target=target,
                     stacked=check_flag(stacked, "stacked"), k=k)
    with module_mode(model, training=False), torch.inference_mode():
        top1, top5 = run_batched(kernel, (images, positions), device=device, batch_size=batch_size, out_device="cpu")
    return PatchScore(top1, top5, labels.cpu() != target, placements)


# ---------------------------------------------------------------------------------------------
# Cache

def cached_patch(cache_dir: str | os.PathLike, model: nn.Module, images: torch.Tensor, target: int, size: int,
                 *, seed: int = 0, **train_kwargs) -> tuple[TrainedPatch, bool]:
    """Load the patch for these settings from ``cache_dir`` if present, else train and save it.

    The key (:func:`nbutils.files.cache_entry`) is the model's name and a digest of its weights, the
    target, size, seed and training settings, a digest of the images (and of ``val_index`` when
    given) and the package's code. Returns (patch, True if it came from the cache).
    """
    name = getattr(model, "name", type(model).__name__)
    data = {"images": images, **{k: v for k, v in train_kwargs.items() if torch.is_tensor(v)}}
    settings = {"model": name, "target": target, "size": size, "seed": seed,
                **{k: v for k, v in sorted(train_kwargs.items()) if k != "progress" and k not in data}}
    path, key = cache_entry(cache_dir, f"{name}_t{target}_s{size}_seed{seed}", settings, weights=model, data=data)

    def train() -> tuple[TrainedPatch, dict]:
        trained = train_patch(model, images, target, size, seed=seed, **train_kwargs)
        return trained, trained.to_state()

    return cached(path, key, train, TrainedPatch.from_state)


# ---------------------------------------------------------------------------------------------
# Protocols and target names

#: How a trained patch is scored: (name, stacked placements?, images scored).
PROTOCOLS = (
    ("tutorial", True, "all"),        # as published: every image, training ones included; j patches at placement j
    ("one patch", False, "all"),      # the stacking bug fixed, still on every image
    ("sound", False, "held-out"),     # one patch per placement, only images the patch never trained on
)


def protocol_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trained: TrainedPatch, *,
                    placements: int = 4, seed: int = 0, batch_size: int = 128) -> dict[bool, PatchScore]:
    """Per-image hits of ``trained`` over every image, stacked (the tutorial's bug) and not: {stacked:
    :class:`PatchScore`}. Both passes paste at the same seeded positions (``seed``), so any two
    patches scored with one seed meet the same images at the same places."""
    return {stacked: evaluate_patch(model, images, labels, trained.patch, trained.target, placements=placements,
                                    stacked=stacked, seed=seed, batch_size=batch_size) for stacked in (True, False)}


def protocol_rates(scores: dict[bool, PatchScore], trained: TrainedPatch) -> list[dict]:
    """One dict per protocol of :data:`PROTOCOLS`: protocol and :meth:`PatchScore.rates` (the held-out
    score is the unstacked pass restricted to ``trained.val_index``)."""
    return [{"protocol": name, **scores[stacked].rates(None if scope == "all" else trained.val_index)}
            for name, stacked, scope in PROTOCOLS]


def score_protocols(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trained: TrainedPatch, *,
                    placements: int = 4, seed: int = 0, batch_size: int = 128) -> list[dict]:
    """Score ``trained`` under each of :data:`PROTOCOLS` with the same random positions: two passes over
    ``images`` (:func:`protocol_scores`), then :func:`protocol_rates`. Returns one dict per protocol:
    protocol, top1, top5 (fractions) with their intervals, n_images, n_trials.
    """
    scores = protocol_scores(model, images, labels, trained, placements=placements, seed=seed, batch_size=batch_size)
    return protocol_rates(scores, trained)


def image_hits(scores: dict[bool, PatchScore], trained: TrainedPatch) -> pd.DataFrame:
    """One row per eligible image: image (position), trained_on (the patch trained on it), and the
    fraction of its placements where the target was top-1 / top-5, stacked and one patch at a time
    (``stacked_top1``, ``stacked_top5``, ``single_top1``, ``single_top5``)."""
    on = torch.ones_like(scores[False].eligible)
    on[trained.val_index] = False
    keep = scores[False].eligible
    columns = {"image": keep.nonzero().squeeze(1).numpy(), "trained_on": on[keep].numpy()}
    for stacked, prefix in ((True, "stacked"), (False, "single")):
        score = scores[stacked]
        columns |= {f"{prefix}_top1": (score.top1_hits[keep] / score.placements).numpy(),
                    f"{prefix}_top5": (score.top5_hits[keep] / score.placements).numpy()}
    return pd.DataFrame(columns)


def protocol_effects(hits: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The two flaws of the tutorial's scoring, measured paired over the same images and placements.

    hits: :func:`image_hits` rows of several patches, with the columns ``by`` (e.g. model and size),
    ``run`` (which training run; runs hold out different folds, :func:`holdout_folds`) and any others
    (e.g. target). Per group of ``by`` and rank (top1, top5), in fractions:

    * **stacking**: stacked minus one-patch rate of each image, averaged over the group's patches;
    * **training images**: for each image held out by exactly one run, its one-patch rate under the
      runs that trained on it minus its rate under the run that did not, averaged over the group's
      patches (the other columns' values, e.g. targets); needs two runs or more.

    The estimate is the mean over images of those per-image differences, with a 95 % Student-t
    interval over images (the image is the unit: its placements and its patches are not
    independent). Columns: ``by``..., effect, rank, estimate, low, high, n_images.
    """
    from .metrics import mean_interval

    by = list(by)
    rows = []
    for rank in ("top1", "top5"):
        stacking = hits.assign(difference=hits[f"stacked_{rank}"] - hits[f"single_{rank}"])
        per_image = stacking.groupby(by + ["image"], sort=False)["difference"].mean().reset_index()
        rows.append(mean_interval(per_image, by, "difference").assign(effect="stacking", rank=rank))
        if hits["run"].nunique() < 2:
            continue
        patch_keys = [c for c in hits.columns if c not in by + ["run", "image", "trained_on"] and not
                      c.startswith(("stacked_", "single_"))]
        held_out = hits[~hits["trained_on"]][by + patch_keys + ["image", f"single_{rank}"]]
        seen = (hits[hits["trained_on"]].groupby(by + patch_keys + ["image"], sort=False)[f"single_{rank}"].mean()
                .rename("seen").reset_index())
        paired = held_out.merge(seen, on=by + patch_keys + ["image"])
        paired["difference"] = paired["seen"] - paired[f"single_{rank}"]
        per_image = paired.groupby(by + ["image"], sort=False)["difference"].mean().reset_index()
        rows.append(mean_interval(per_image, by, "difference").assign(effect="training images", rank=rank))
    table = pd.concat(rows, ignore_index=True).rename(columns={"mean": "estimate", "n": "n_images"})
    return table[by + ["effect", "rank", "estimate", "low", "high", "n_images"]]


def target_indices(names, class_names: list[str]) -> dict[str, int]:
    """Class indices of target class names, e.g. {"toaster": 859}; an unknown name raises ValueError."""
    if isinstance(names, str):
        raise TypeError("targets must be a list of class names, not one string")
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"unknown target class(es) {unknown}; targets must be the model's class names, "
                         f"e.g. {list(PAPER_TARGETS)}")
    return {n: class_names.index(n) for n in names}
