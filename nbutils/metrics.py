"""Evaluation: batched inference and top-k error."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import nn

from .attacks import batch_slices
from .checks import check_images, check_labels, check_positive_int
from .models import model_device


def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
    """Logits (N, K) on the CPU, computed in inference mode in batches on the model's device.

    images: (N, C, H, W) in the model's input space (pixels for a nbutils Classifier; values
    outside [0, 1] are allowed, e.g. the tutorial convention's unclamped images).
    """
    check_images(images, pixel_range=False)
    check_positive_int(batch_size, "batch_size")
    device = model_device(model)
    with torch.inference_mode():
        return torch.cat([model(images[s].to(device)).float().cpu()
                          for s in batch_slices(images.shape[0], batch_size)])


def topk_probabilities(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and class indices of the k most likely classes, each (N, k)."""
    probs, index = logits.softmax(dim=1).topk(k, dim=1)
    return probs, index


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the label is among the k largest logits."""
    labels = check_labels(labels, logits.shape[0], num_classes=logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def topk_error(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Top-k error in percent: 100 * (1 - fraction of images whose label is among the top k)."""
    return 100.0 * (1.0 - topk_correct(logits, labels, k).double().mean().item())


def topk_table(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], k: int = 5) -> pd.DataFrame:
    """Tidy top-k predictions: one row per (image, rank) with image (position), true_class, rank
    (1 = most likely), class and confidence (softmax probability)."""
    probs, index = topk_probabilities(logits, k)
    return pd.DataFrame([{"image": i, "true_class": class_names[int(labels[i])], "rank": r + 1,
                          "class": class_names[int(index[i, r])], "confidence": float(probs[i, r])}
                         for i in range(logits.shape[0]) for r in range(k)])
