"""Training loops on tensors that live on the device, and defensive distillation.

:func:`fit` keeps the whole dataset as tensors on the model's device and draws shuffled index
batches from a seeded generator: no DataLoader, no per-batch host-to-device copies, one device
synchronisation per epoch. :func:`distill` trains a student on a teacher's soft labels at a
temperature T (Papernot et al. 2016).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attacks import batch_slices
from .checks import check_images, check_labels, check_positive_int, check_positive_number, check_seed
from .models import model_device


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
    """Per-epoch training record: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds."""

    rows: list[dict] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def evaluate_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                  batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy of logits / T, accuracy) in eval mode and inference mode, batched.
    images, labels: already on the model's device."""
    was_training = model.training
    model.eval()
    total, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    with torch.inference_mode():
        for s in batch_slices(images.shape[0], batch_size):
            logits = model(images[s])
            total += F.cross_entropy(logits / temperature, labels[s], reduction="sum")
            correct += (logits.argmax(1) == labels[s]).sum()
    model.train(was_training)
    n = images.shape[0]
    return total.item() / n, correct.item() / n


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor,
        val_labels: torch.Tensor, *, epochs: int = 10, batch_size: int = 64, lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999), temperature: float = 1.0,
        soft_targets: torch.Tensor | None = None, scheduler_factor: float = 0.1, scheduler_patience: int = 3,
        seed: int = 0, progress: bool = True) -> History:
    """Train ``model`` with Adam and ReduceLROnPlateau on the validation loss (the paper's recipe).

    images: (N, C, H, W) in [0, 1]; labels: (N,); val_*: the validation split. The loss is the
    cross-entropy of ``logits / temperature`` against the labels, or against ``soft_targets`` (N, K)
    when given (distillation). All tensors move to the model's device once; each epoch draws a
    permutation from a CPU generator seeded with ``seed`` (``torch.manual_seed(seed)`` also fixes
    initialisation-independent randomness such as dropout), so a seed fixes the run on a device.
    Returns a :class:`History` with per-epoch train/validation loss and accuracy.
    """
    check_images(images)
    labels = check_labels(labels, images.shape[0], num_classes=getattr(model, "num_classes", None))
    check_images(val_images, name="val_images")
    val_labels = check_labels(val_labels, val_images.shape[0], name="val_labels")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_seed(seed)
    check_positive_number(temperature, "temperature")
    if soft_targets is not None and soft_targets.shape != (images.shape[0], model.num_classes):
        raise ValueError(f"soft_targets must have shape ({images.shape[0]}, {model.num_classes}), "
                         f"got {tuple(soft_targets.shape)}")
    device = model_device(model)
    x, y = images.to(device), labels.to(device)
    vx, vy = val_images.to(device), val_labels.to(device)
    soft = soft_targets.to(device) if soft_targets is not None else None
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=scheduler_factor,
                                                           patience=scheduler_patience)
    history = History()
    for epoch in tqdm(range(1, epochs + 1), desc=f"fit {getattr(model, 'name', '')}", disable=not progress):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for s in batch_slices(x.shape[0], batch_size):
            index = order[s]
            logits = model(x[index])
            loss = training_loss(logits, y[index], soft[index] if soft is not None else None, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * index.shape[0]
            correct += (logits.argmax(1) == y[index]).sum()
        val_loss, val_acc = evaluate_loss(model, vx, vy, temperature=temperature)
        scheduler.step(val_loss)
        history.rows.append({"epoch": epoch, "train_loss": total_loss.item() / x.shape[0],
                             "train_acc": correct.item() / x.shape[0], "val_loss": val_loss, "val_acc": val_acc,
                             "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start})
    model.eval()
    return history


def soft_labels(teacher: nn.Module, images: torch.Tensor, temperature: float, *, batch_size: int = 1000) -> torch.Tensor:
    """The teacher's softmax(logits / T) for every image, (N, K), on the teacher's device (eval mode)."""
    device = model_device(teacher)
    teacher.eval()
    with torch.inference_mode():
        return torch.cat([F.softmax(teacher(images[s].to(device)) / temperature, dim=1)
                          for s in batch_slices(images.shape[0], batch_size)])


def distill(teacher: nn.Module, student: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            val_images: torch.Tensor, val_labels: torch.Tensor, *, temperature: float,
            use_soft_labels: bool = True, **fit_kwargs) -> History:
    """Defensive distillation: train ``student`` at temperature T on ``teacher``'s soft labels.

    The teacher should itself have been trained at T (``fit(..., temperature=T)``). With
    ``use_soft_labels=False`` the student learns the hard labels at T instead: the source notebook's
    bug (it computes the soft labels and never uses them). Evaluate the student at T = 1, i.e. on
    its plain logits. Returns the student's :class:`History`.
    """
    targets = soft_labels(teacher, images, temperature) if use_soft_labels else None
    return fit(student, images, labels, val_images, val_labels, temperature=temperature, soft_targets=targets,
               **fit_kwargs)
