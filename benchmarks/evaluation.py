"""Batched evaluation through the shared runner against a bare inference-mode forward loop.

Both sides read the same device-resident batches. ``predict`` is timed against a loop of
``model(batch)``; ``evaluate_patch`` (4 placements) against a loop of 4 forwards per batch, the
floor of any patch scoring. Prints images/s per side and the ratio ours / floor in speed (1.0: no
overhead; the target is >= 0.9).

    python3 benchmarks/evaluation.py --n-images 128                       # the stand-in, on the mirror
    python3 benchmarks/evaluation.py --model resnet101 --weights random --device cuda --n-images 2048
"""
from __future__ import annotations


import torch

from nbutils.batching import batch_slices
from nbutils.metrics import predict
from nbutils.patch import evaluate_patch
from nbutils.report import device_name
from timing import benchmark_arguments, best_times_interleaved, imagenet_inputs


def forward_floor(model, images, batch_size, passes=1):
    """``passes`` inference forwards of every batch of ``images`` (already on the device), nothing else."""
    with torch.inference_mode():
        for s in batch_slices(images.shape[0], batch_size):
            for _ in range(passes):
                model(images[s])


def main():
    args = benchmark_arguments(__doc__, n_images=128, batch_size=64, repeats=5).parse_args()
    device, model, images, labels = imagenet_inputs(args)
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
