"""Argument checks shared by the public API.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, bad value)
with a message that names the offending argument, so a bad call fails at the door and not deep
inside a forward pass.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

import torch
from torch import nn

from .batching import class_scores, model_device, module_mode


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
    low, high = (float(v) for v in torch.aminmax(images.detach()))  # one pass; NaN propagates into both
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if pixel_range and (low < 0 or high > 1):
        raise ValueError(f"{name} must lie in [0, 1] pixel space (got min {low:.4g}, max {high:.4g}); "
                         "the model owns its normalisation")
    return images.clone() if images.is_inference() else images  # made under inference_mode: usable by autograd


def check_labels(labels, n: int, *, name: str = "labels", num_classes: int | None = None) -> torch.Tensor:
    """An integer tensor of shape (n,) with values in [0, num_classes); returned as int64."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(labels.shape)}")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise ValueError(f"{name} must lie in {bound}, got min {labels.min().item()}, max {labels.max().item()}")
    return labels.clone().long() if labels.is_inference() else labels.long()


def check_logits(logits, *, name: str = "logits") -> torch.Tensor:
    """A float tensor of shape (N, K), N and K > 0, with finite values (NaN logits are a diverged
    model, not a 100 % error)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor of shape (N, K), got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.ndim != 2 or 0 in logits.shape:
        raise ValueError(f"{name} must have shape (N, K) with N, K > 0, got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} contain NaN or infinite values (a diverged model or a NaN input)")
    return logits


def check_k(k, num_classes: int, name: str = "k") -> int:
    """An int in [1, num_classes]: how many of the largest scores count."""
    if check_positive_int(k, name) > num_classes:
        raise ValueError(f"{name} must be at most the {num_classes} classes, got {k}")
    return k


def check_indices(indices, size: int, name: str) -> list[int]:
    """A sequence of Python (or numpy) ints, each in [0, size): positions in a dataset of ``size`` items."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, (Sequence, range, torch.Tensor)):
        raise TypeError(f"{name} must be a sequence of ints, got {type(indices).__name__}")
    values = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"{name}[{i}] must be an int, got {type(value).__name__} {value!r}")
        if not 0 <= value < size:
            raise ValueError(f"{name}[{i}] must lie in [0, {size}), got {value}")
    return [int(v) for v in values]


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


def check_fraction(value, name: str, *, closed_low: bool = False, closed_high: bool = False) -> float:
    """A real number between 0 and 1: (0, 1) by default, an end included when ``closed_low`` /
    ``closed_high`` (bools rejected)."""
    interval = f"{'[' if closed_low else '('}0, 1{']' if closed_high else ')'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number in {interval}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not ((0 <= value if closed_low else 0 < value) and (value <= 1 if closed_high else value < 1)):
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


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


def check_flag(value, name: str) -> bool:
    """A Python bool (or numpy bool); a string such as "no" or a 0/1 int is refused."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_model_fits(model, images: torch.Tensor, *, name: str = "images") -> int:
    """Run ``model`` on the first of ``images`` (eval mode, inference mode, on the model's device) and
    return the number of classes it outputs. An input the model cannot take (channels, size, dtype)
    raises ValueError naming ``name`` instead of a torch error from deep inside a forward pass."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and images.dtype != weight.dtype:
        raise ValueError(f"{name} have dtype {images.dtype} but the model's weights are {weight.dtype}; "
                        f"convert them with {name}.to({weight.dtype})")
    try:
        with module_mode(model, training=False), torch.inference_mode():
            logits = class_scores(model, model(images[:1].to(model_device(model))))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{name} of shape {tuple(images.shape)} do not fit the model "
                         f"({type(model).__name__}): {str(err).splitlines()[0]}") from err
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f"the model must return logits of shape (N, K) for {name}, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return logits.shape[1]


def checked_inputs(model, images, labels, batch_size, *, pixel_range: bool = True, names=("images", "labels")):
    """The checks every batched entry point makes once: images (N, C, H, W) finite (in [0, 1] when
    ``pixel_range``) that fit the model, labels (N,) in [0, number of classes the model outputs),
    and a positive batch size. Returns (images, labels as int64), usable by autograd even when they
    were made under ``torch.inference_mode``."""
    images = check_images(images, name=names[0], pixel_range=pixel_range)
    num_classes = check_model_fits(model, images, name=names[0])
    labels = check_labels(labels, images.shape[0], name=names[1], num_classes=num_classes)
    check_positive_int(batch_size, "batch_size")
    return images, labels
