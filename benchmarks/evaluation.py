"""Batched evaluation through the shared runner against a bare inference-mode forward loop.

Both sides read the same device-resident batches. ``predict`` is timed against a loop of
``model(batch)``; ``evaluate_patch`` (4 placements) against a loop of 4 forwards per batch, the
floor of any patch scoring. Prints images/s per side and the ratio ours / floor in speed (1.0: no
overhead; the target is >= 0.9).

    python3 benchmarks/evaluation.py --n-images 128                       # the stand-in, on the mirror
    python3 benchmarks/evaluation.py --model resnet101 --weights random --device cuda --n-images 2048
"""
from __future__ import annotations

import argparse

import torch

from nbutils import data
from nbutils.batching import batch_slices, default_device
from nbutils.metrics import predict
from nbutils.models import imagenet_model
from nbutils.patch import evaluate_patch
from nbutils.report import device_name
from timing import best_times_interleaved


def forward_floor(model, images, batch_size, passes=1):
    """``passes`` inference forwards of every batch of ``images`` (already on the device), nothing else."""
    with torch.inference_mode():
        for s in batch_slices(images.shape[0], batch_size):
            for _ in range(passes):
                model(images[s])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="weights name; 'random' times the architecture only")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = default_device(args.device)
    torch.manual_seed(0)
    model = imagenet_model(args.model, args.weights, device=device)
    if model.weights_id == "random-init":
        images, labels = torch.rand(args.n_images, 3, 224, 224), torch.randint(0, 1000, (args.n_images,))
    else:
        sample = data.imagenet_sample(classes=range(args.n_images))
        images, labels = sample.images, sample.labels
    images, labels = images.to(device), labels.to(device)
    patch = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0)).to(device)
    n, bs = images.shape[0], args.batch_size

    print(f"machine: {device_name(device)}; torch {torch.__version__}")
    print(f"model {model.label} ({model.weights_id}), {n} images on {device}, batch {bs}")
    for name, ours, passes in (("predict", lambda: predict(model, images, batch_size=bs), 1),
                               ("evaluate_patch", lambda: evaluate_patch(model, images, labels, patch, 859, batch_size=bs), 4)):
        best = best_times_interleaved({"floor": lambda: forward_floor(model, images, bs, passes), "ours": ours}, device,
                                      args.repeats)
        print(f"{name:>15}: ours {passes * n / best['ours']:8.1f} images/s   floor {passes * n / best['floor']:8.1f} images/s   "
              f"speed ours/floor: {best['floor'] / best['ours']:.3f}")

if __name__ == "__main__":
    main()
