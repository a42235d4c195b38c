"""The training loop on tensors that live on the device, and its cache.

:func:`fit` keeps the whole dataset as tensors on the model's device and draws shuffled index
batches from a seeded generator: no DataLoader, no per-batch host-to-device copies, one device
synchronisation per epoch. It trains on hard labels or on soft targets at a temperature, which is
what :func:`nbutils.defences.distill` builds on. :func:`cached_fit` keeps trained weights by their
settings.
"""
from __future__ import annotations

import inspect
import os
import time
import warnings
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .batching import batch_slices, model_device, module_mode, progress_bar, run_batched
from .checks import (check_choice, check_eps, check_flag, check_fraction, check_model_fits, check_positive_int,
                     check_positive_number, check_seed,
                     checked_inputs)
from .files import cache_entry, cached, restore_module


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``-sum_k p_k log softmax(logits / T)_k``; logits, soft_targets: (N, K)."""
    return -(soft_targets * F.log_softmax(logits / temperature, dim=1)).sum(dim=1).mean()


def training_loss(logits: torch.Tensor, labels: torch.Tensor, soft_targets: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    """Cross-entropy of ``logits / T`` against hard labels, or against soft targets when given."""
    if soft_targets is not None:
        return soft_cross_entropy(logits, soft_targets, temperature)
    return F.cross_entropy(logits / temperature, labels)


@dataclass
class History:
    """Per-epoch training record: epoch, train_loss, train_acc (over the epoch's n_train images, in
    training mode as they were trained on), n_train, val_loss, val_acc (after the epoch, in eval mode),
    n_val, lr, seconds;
    ``from_cache``: the rows (and the weights) were loaded by :func:`cached_fit`, not trained now."""

    rows: list[dict] = field(default_factory=list)
    from_cache: bool = False

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def evaluate_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                  batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy of logits / T, accuracy) in eval mode and inference mode, batched.
    images, labels: already checked and on the model's device. One host read at the end."""
    def kernel(x, y):
        logits = model(x)
        return (F.cross_entropy(logits / temperature, y, reduction="sum")[None], (logits.argmax(1) == y).sum()[None])

    with module_mode(model, training=False), torch.inference_mode():
        losses, correct = run_batched(kernel, (images, labels), device=images.device, batch_size=batch_size)
    n = images.shape[0]
    return losses.sum().item() / n, correct.sum().item() / n


#: The mode the model is in while an adversarial training step crafts its adversarial part.
CRAFT_MODES = ("eval", "train")


def mixed_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, craft, adversarial_fraction: float,
                craft_mode: str) -> torch.Tensor:
    """The images a step trains on: the batch (B, C, H, W) with its last ``round(B * fraction)`` images
    replaced by adversarial ones crafted now, from the current weights, by ``craft`` (an attack's
    per-batch kernel); the first ones stay clean and the labels keep their order. The model crafts in
    ``craft_mode``: "eval" (running BatchNorm statistics, no dropout; what Keras' ``model(x)`` does in
    the source) or "train" (batch statistics, which it also updates, and dropout). No crafting when
    ``craft`` is None."""
    if craft is None:
        return images
    n_clean = images.shape[0] - round(images.shape[0] * adversarial_fraction)
    with module_mode(model, training=craft_mode == "train"):
        adversarial = craft(images[n_clean:], labels[n_clean:]).detach()
    return torch.cat([images[:n_clean], adversarial])


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                soft: torch.Tensor | None, temperature: float, index: torch.Tensor, stats: torch.Tensor,
                craft=None, adversarial_fraction: float = 0.0, craft_mode: str = "eval") -> None:
    """One optimiser step on the batch ``x[index]`` (its adversarial part crafted first when ``craft``
    is given, see :func:`mixed_batch`; the update itself runs in training mode); adds (summed loss,
    correct count) into ``stats`` (2,). Pure device work with static shapes, so it can be captured in a
    CUDA graph."""
    labels = y[index]
    logits = model(mixed_batch(model, x[index], labels, craft, adversarial_fraction, craft_mode))
    loss = training_loss(logits, labels, soft[index] if soft is not None else None, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    stats += torch.stack([loss.detach() * index.shape[0], (logits.argmax(1) == labels).sum()])


def _capture_step(step, model: nn.Module, optimizer: torch.optim.Optimizer, index: torch.Tensor,
                  stats: torch.Tensor) -> torch.cuda.CUDAGraph | None:
    """Record ``step(index)`` in a CUDA graph (PyTorch's whole-network recipe: three warm-up steps on a
    side stream, then capture), and undo the warm-up: the model's state is restored in place and Adam's
    moments and step counts are zeroed, which is Adam's fresh state. Replays then update the same tensors.
    A step that cannot be captured (e.g. an attack that draws from its own random generator) gives
    None, with a warning: the caller then runs every step eagerly, from the same restored state."""
    snapshot = {name: value.clone() for name, value in model.state_dict().items()}
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(index)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            step(index)
    except RuntimeError as err:
        warnings.warn(f"this training step cannot be captured in a CUDA graph ({str(err).splitlines()[0]}); "
                      "running it eagerly", RuntimeWarning, stacklevel=3)
        graph = None
    finally:
        model.load_state_dict(snapshot)
        for state in optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()
        stats.zero_()
    return graph


def _check_betas(betas) -> None:
    """Adam's (beta1, beta2), each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, Real) or not 0 <= beta < 1:
            raise ValueError(f"betas[{i}] must be a number in [0, 1), got {beta!r}")


def _check_soft_targets(soft_targets, shape: tuple[int, int]) -> None:
    """A finite float tensor of probabilities, (N, K)."""
    if not isinstance(soft_targets, torch.Tensor) or not soft_targets.is_floating_point():
        raise TypeError(f"soft_targets must be a floating-point torch.Tensor of shape {shape}")
    if tuple(soft_targets.shape) != shape:
        raise ValueError(f"soft_targets must have shape {shape}, got {tuple(soft_targets.shape)}")
    if not torch.isfinite(soft_targets).all() or soft_targets.min() < 0:
        raise ValueError("soft_targets must be finite probabilities (>= 0); a temperature of 0 or a diverged "
                         "teacher gives NaN")


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
        val_labels: torch.Tensor, *, epochs: int = 10, batch_size: int = 64, lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999), temperature: float = 1.0,
        soft_targets: torch.Tensor | None = None, scheduler_factor: float | None = 0.1, scheduler_patience: int = 3,
        attack=None, adversarial_fraction: float = 0.5, craft_mode: str = "eval", seed: int = 0,
        cuda_graph: bool = True, pixel_range: bool = True, progress: bool = True) -> History:
    """Train ``model`` with Adam and ReduceLROnPlateau on the validation loss (the paper's recipe;
    ``scheduler_factor=None``: a constant learning rate, as cleverhans' ``model_train``).

    images: (N, C, H, W) in [0, 1]; labels: (N,); val_*: the validation split. The loss is the
    cross-entropy of ``logits / temperature`` against the labels, or against ``soft_targets`` (N, K)
    when given (distillation). attack: an :class:`nbutils.attacks.Attack`; each step then replaces the
    last ``adversarial_fraction`` of its batch by adversarial images crafted from the current weights
    (0.5: the mixed-batch paper's 32 clean + 32 adversarial in a batch of 64; 1.0: pure adversarial
    training as Madry et al.), with the model in ``craft_mode`` while crafting (see
    :func:`mixed_batch`) and in training mode for the update. All tensors move to the model's
    device once; each epoch draws a
    permutation from a CPU generator seeded with ``seed`` (``torch.manual_seed(seed)`` also fixes
    initialisation-independent randomness such as dropout), so a seed fixes the run on a device.
    cuda_graph: on a GPU, replay every full batch's step from one CUDA graph (fused, capturable Adam
    with a tensor learning rate, so the scheduler still applies); the last, smaller batch runs eagerly.
    No effect on the CPU. pixel_range: the images must lie in [0, 1]; False lets them leave it (finite
    values only), e.g. adversarials crafted without clipping as the mixed-batch posts' FGSM.
    Returns a :class:`History` with per-epoch train/validation loss and accuracy.
    """
    images, labels = checked_inputs(model, images, labels, batch_size, pixel_range=check_flag(pixel_range, "pixel_range"))
    val_images, val_labels = checked_inputs(model, val_images, val_labels, batch_size, pixel_range=pixel_range,
                                            names=("val_images", "val_labels"))
    check_positive_int(epochs, "epochs")
    check_seed(seed)
    check_positive_number(temperature, "temperature")
    check_eps(lr, name="lr")  # finite, >= 0 (0: a frozen run, e.g. to watch the scheduler)
    _check_betas(betas)
    if scheduler_factor is not None:  # None: a constant rate
        check_fraction(scheduler_factor, "scheduler_factor")
    check_seed(scheduler_patience, "scheduler_patience")  # an int >= 0
    check_flag(cuda_graph, "cuda_graph")
    check_flag(progress, "progress")
    if soft_targets is not None:
        _check_soft_targets(soft_targets, (images.shape[0], check_model_fits(model, images)))
    craft = None
    if attack is not None:
        if not callable(getattr(attack, "kernel", None)):
            raise TypeError(f"attack must be an nbutils.attacks.Attack (attacks.get(...)), got {type(attack).__name__}")
        check_choice(craft_mode, CRAFT_MODES, "craft_mode")
        check_fraction(adversarial_fraction, "adversarial_fraction", closed_high=True)
        craft = attack.kernel(model)
    device = model_device(model)
    x, y = images.to(device), labels.to(device)
    vx, vy = val_images.to(device), val_labels.to(device)
    soft = soft_targets.to(device) if soft_targets is not None else None
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    graphed = cuda_graph and device.type == "cuda" and x.shape[0] >= batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(lr, device=device) if graphed else lr,
                                 betas=betas, fused=device.type == "cuda", capturable=graphed)
    scheduler = None if scheduler_factor is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=scheduler_factor, patience=scheduler_patience)
    stats = torch.zeros(2, device=device)
    model.train()

    def step(index):
        _train_step(model, optimizer, x, y, soft, temperature, index, stats, craft, adversarial_fraction, craft_mode)

    static_index = torch.arange(batch_size, device=device)
    graph = _capture_step(step, model, optimizer, static_index, stats) if graphed else None
    history = History()
    for epoch in progress_bar(range(1, epochs + 1), desc=f"fit {getattr(model, 'name', '')}", enabled=progress):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        stats.zero_()
        for s in batch_slices(x.shape[0], batch_size):
            if graph is not None and s.stop - s.start == batch_size:
                static_index.copy_(order[s])
                graph.replay()
            else:
                step(order[s])
        total_loss, correct = stats.tolist()
        val_loss, val_acc = evaluate_loss(model, vx, vy, temperature=temperature)
        if scheduler is not None:
            scheduler.step(val_loss)
        history.rows.append({"epoch": epoch, "train_loss": total_loss / x.shape[0], "train_acc": correct / x.shape[0],
                             "n_train": x.shape[0], "val_loss": val_loss, "val_acc": val_acc, "n_val": vx.shape[0],
                             "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - start})
    model.eval()
    return history


def cached_fit(cache_dir: str | os.PathLike | None, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               val_images: torch.Tensor, val_labels: torch.Tensor, **fit_kwargs) -> History:
    """:func:`fit`, or its saved result when ``cache_dir`` holds one for the same settings.

    The key (:func:`nbutils.files.cache_entry`) covers the model's name and its starting weights (a
    digest of its state, so a model loaded from elsewhere never hits a fresh model's entry), the
    device type, a digest of the training and validation tensors (and soft targets), every argument
    of :func:`fit` with its default filled in (an attack by what defines it:
    :meth:`nbutils.attacks.Attack.key`) and the package's code. A hit loads the weights into
    ``model`` (eval mode) with ``weights_only=True``; a miss trains and saves atomically.
    ``cache_dir`` None: always train. Returns the :class:`History`, with ``from_cache`` set on a hit.
    """
    if cache_dir is None:
        return fit(model, images, labels, val_images, val_labels, **fit_kwargs)
    arguments = inspect.signature(fit).bind(model, images, labels, val_images, val_labels, **fit_kwargs)
    arguments.apply_defaults()
    data = {name: value for name, value in arguments.arguments.items() if torch.is_tensor(value)}
    settings = {name: value.key() if callable(getattr(value, "key", None)) else value
                for name, value in arguments.arguments.items()
                if name not in ("model", "progress", "pixel_range") and name not in data}
    name = getattr(model, "name", type(model).__name__)
    path, key = cache_entry(cache_dir, f"{name}_seed{settings['seed']}",
                            dict(settings, model=name, device=model_device(model).type), weights=model, data=data)
    return cached_module(path, key, model, lambda: fit(model, images, labels, val_images, val_labels, **fit_kwargs))


def cached_module(path: Path, settings: dict, model: nn.Module, train: Callable, history_type: type = History):
    """``train()`` (which trains ``model`` and returns a ``history_type``: rows and ``from_cache``), or
    the weights and history kept at ``path`` for ``settings`` (see :func:`nbutils.files.cached`: an
    unusable or mismatched entry is set aside and retrained). A hit loads the weights into ``model``
    and puts it in eval mode."""
    def trained():
        history = train()
        return history, {"model": model.state_dict(), "history": history.rows}

    def restore(state: dict):
        rows = state["history"]  # read before touching the model: a bad entry leaves it as it was
        if not isinstance(rows, list):
            raise ValueError(f"its history is a {type(rows).__name__}, not a list of rows")
        restore_module(model, state["model"]).eval()
        return history_type(rows, from_cache=True)

    return cached(path, settings, trained, restore)[0]


