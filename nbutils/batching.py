"""The ground floor of the computation: devices, train/eval modes, index batches and splits,
progress bars, and the one batch loop.

:func:`run_batched` is the only "for each batch: move it to the device, run, gather" loop in the
package. Attacks, prediction, patch scoring, the metrics and the training loop's evaluation hand it
an unchecked per-batch kernel; their public entry points validate the arguments once, before it
runs. The loop itself never synchronises with the device: outputs are copied back without
blocking and the host waits once, at the end.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from tqdm import tqdm


def default_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; otherwise a device torch knows ("cpu", "cuda", "cuda:1",
    "mps") and that this machine has. Anything else is a ValueError naming ``device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU; use 'auto' or 'cpu'")
    return chosen


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (cpu for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def class_scores(model: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """The (N, K) class scores in a model's ``output``: ``model.class_scores(output)`` where the model
    defines it (e.g. a detector head whose output appends other columns to the logits), else the
    output itself. Every attack and metric that picks a class reads it through this helper."""
    read = getattr(model, "class_scores", None)
    return read(output) if callable(read) else output


@contextmanager
def module_mode(model: nn.Module, *, training: bool):
    """Run ``model`` in train (dropout on, batch statistics) or eval mode (no dropout, running
    BatchNorm statistics), restoring afterwards the mode of every submodule as it was (a wrapper in
    training mode around a frozen net must not leave the net in training mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def dropout_on(model: nn.Module):
    """Eval mode except for the dropout layers, which draw masks as in training (a net tested the way
    a source that never called ``model.eval()`` tested it, without BatchNorm learning from the test
    data); every module's mode is restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n) in chunks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def split_indices(n: int, n_val: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random split of range(n) into (train, val) index tensors, val of size ``n_val``."""
    if not 0 <= n_val < n:
        raise ValueError(f"n_val must lie in [0, {n}), got {n_val}")
    order = torch.randperm(n, generator=generator)
    return order[n_val:], order[:n_val]


def progress_bar(iterable: Iterable, *, desc: str | None = None, total: int | None = None, enabled: bool = True,
                 leave: bool = True) -> tqdm:
    """A text progress bar on stderr: it shows in a terminal, in a notebook and in papermill's log
    alike (a widget bar would not reach the log), updated at most every 2 s to keep notebooks small.
    enabled: a bool, the public functions' ``progress`` argument (so "no" is refused, not shown)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"progress must be True or False, got {type(enabled).__name__} {enabled!r}")
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=leave, file=sys.stderr, mininterval=2.0,
                dynamic_ncols=False, ncols=100)


Kernel = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]


def run_batched(kernel: Kernel, tensors: Sequence[torch.Tensor], *, device: torch.device, batch_size: int,
                out_device: torch.device | str | None = None, progress: bool = False,
                desc: str | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``kernel(*batch)`` on consecutive batches of ``tensors`` moved to ``device``, gathered along dim 0.

    tensors: each (N, ...), sliced together. kernel: takes one batch of each, already on ``device``,
    and returns a tensor (B, ...) or a tuple of them. Outputs are copied to ``out_device`` (default:
    the first tensor's device) without blocking; the host waits for the device once, after the last
    batch. Inputs are copied without blocking only from the CPU (a copy back to the host must land
    before the kernel reads it). Returns the concatenated output(s). No argument checks: callers
    validate first.
    """
    n = tensors[0].shape[0]
    out_device = torch.device(out_device) if out_device is not None else tensors[0].device
    parts = []
    bar = progress_bar(batch_slices(n, batch_size), total=math.ceil(n / batch_size), desc=desc, enabled=progress,
                       leave=False)
    for s in bar:
        out = kernel(*(t[s].to(device, non_blocking=t.device.type == "cpu") for t in tensors))
        if isinstance(out, torch.Tensor):
            parts.append(out.to(out_device, non_blocking=True))
        else:
            parts.append(tuple(o.to(out_device, non_blocking=True) for o in out))
    if device.type == "cuda" and out_device.type != "cuda":
        torch.cuda.synchronize(device)  # the non-blocking copies back have landed
    elif device.type != "cpu" and out_device.type != device.type:
        getattr(torch, device.type).synchronize()  # e.g. mps
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat(column) for column in zip(*parts))
