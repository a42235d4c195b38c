"""One MNIST epoch of nbutils.train.fit against the PyTorch MNIST example's DataLoader loop.

Both train the paper's Net (nbutils.models.mnist_model("net")) from the same initialisation with
Adam (lr 1e-4), the same batch size and the same device, on the same 50,000 training images, and
both end the epoch with a validation pass over 10,000 images. The reference reads
torchvision's MNIST through a DataLoader with ToTensor (the example's style, minus its
Normalize, which the paper's source does not use). Prints seconds per epoch and the speed-up.

    python3 benchmarks/train_epoch.py --device cpu
    python3 benchmarks/train_epoch.py --device cuda --workers 4
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Subset

from nbutils import data
from nbutils.batching import default_device
from nbutils.models import mnist_model
from nbutils.report import device_name
from nbutils.train import fit
from timing import best_time


def loaders(root, batch_size, workers):
    """The example's DataLoaders over the same 50k/10k split: (train, validation)."""
    dataset = torchvision.datasets.MNIST(root, train=True, download=False, transform=torchvision.transforms.ToTensor())
    return (DataLoader(Subset(dataset, range(50_000)), batch_size=batch_size, shuffle=True, num_workers=workers),
            DataLoader(Subset(dataset, range(50_000, 60_000)), batch_size=1000, num_workers=workers))


def loading_only(root, batch_size, workers):
    """One pass over both loaders with no model: the part of the reference that fit removes."""
    return sum(x.shape[0] for loader in loaders(root, batch_size, workers) for x, _ in loader)


def dataloader_epoch(model, root, device, batch_size, workers):
    """The PyTorch examples' train() and test() loops for one epoch, on the same 50k/10k split."""
    train_loader, val_loader = loaders(root, batch_size, workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in val_loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
    return correct / 10_000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the reference")
    args = parser.parse_args()
    device = default_device(args.device)
    train = data.mnist(train=True)
    x, y = train.images[:50_000], train.labels[:50_000]
    vx, vy = train.images[50_000:], train.labels[50_000:]

    warm = mnist_model("net", seed=0, device=device)  # CUDA context, cuDNN and cuBLAS set-up, outside the timings
    fit(warm, x[:640], y[:640], vx[:100], vy[:100], epochs=1, batch_size=args.batch_size, progress=False)
    root = str(data.resolve("mnist").path.parent)
    timings = {}
    sides = ("fit", "fit, no CUDA graph", "dataloader") if device.type == "cuda" else ("fit", "dataloader")
    for name in sides:
        model = mnist_model("net", seed=0, device=device)
        if name.startswith("fit"):
            epoch = lambda: fit(model, x, y, vx, vy, epochs=1, batch_size=args.batch_size, lr=1e-4,  # noqa: E731
                                cuda_graph=name == "fit", progress=False).rows[0]["val_acc"]
        else:
            epoch = lambda: dataloader_epoch(model, root, device, args.batch_size, args.workers)  # noqa: E731
        timings[name], acc = best_time(epoch, device, warmup=False)
        print(f"{name}: {timings[name]:.1f} s for one epoch, validation accuracy {acc:.4f}")
    loading, _ = best_time(lambda: loading_only(root, args.batch_size, args.workers), device, warmup=False)
    ceiling = timings["dataloader"] / max(timings["dataloader"] - loading, 1e-9)
    print(f"data loading alone: {loading:.1f} s; removing it entirely would give at most {ceiling:.2f}x")
    print(f"machine: {device_name(device)}; torch {torch.__version__}; batch {args.batch_size}; "
          f"DataLoader workers {args.workers}")
    for name in sides[:-1]:
        print(f"speed-up of {name} over the DataLoader loop: {timings['dataloader'] / timings[name]:.2f}x")


if __name__ == "__main__":
    main()
