"""Argument checks shared by the public API.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, bad value)
with a message that names the offending argument, so a bad call fails at the door and not deep
inside a forward pass.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import torch


def check_images(images, *, name: str = "images", pixel_range: bool = True) -> torch.Tensor:
    """A float tensor of shape (N, C, H, W) with finite values, in [0, 1] when ``pixel_range``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (pixels in [0, 1]), got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have rank 4 (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if pixel_range and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1] pixel space (got min {images.min().item():.4g}, "
            f"max {images.max().item():.4g}); the model owns its normalisation"
        )
    return images


def check_labels(labels, n: int, *, name: str = "labels", num_classes: int | None = None) -> torch.Tensor:
    """An integer tensor of shape (n,) with values in [0, num_classes)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(labels.shape)}")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise ValueError(f"{name} must lie in {bound}, got min {labels.min().item()}, max {labels.max().item()}")
    return labels.long()


def check_eps(eps, *, name: str = "eps", upper: float | None = None) -> float:
    """A finite real number in [0, upper]."""
    if isinstance(eps, torch.Tensor) and eps.ndim == 0:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise TypeError(f"{name} must be a real number, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if math.isnan(eps) or math.isinf(eps):
        raise ValueError(f"{name} must be finite, got {eps}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0, got {eps}")
    if upper is not None and eps > upper:
        raise ValueError(f"{name} must be <= {upper} in this convention, got {eps}")
    return eps


def check_epsilons(epsilons, *, name: str = "epsilons", upper: float | None = None) -> list[float]:
    """A non-empty sequence of eps values, each checked by :func:`check_eps`."""
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, (Sequence, torch.Tensor)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(epsilons).__name__}")
    if len(epsilons) == 0:
        raise ValueError(f"{name} is empty")
    return [check_eps(e, name=f"{name}[{i}]", upper=upper) for i, e in enumerate(epsilons)]


def check_positive_int(value, name: str) -> int:
    """A positive Python int (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_positive_number(value, name: str) -> float:
    """A finite real number > 0 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not 0 < float(value) < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_seed(seed, name: str = "seed") -> int:
    """A Python int >= 0 (bools rejected)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return seed


def check_choice(value, choices: Sequence[str], name: str) -> str:
    """One of a fixed set of strings."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {list(choices)}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
    return value
