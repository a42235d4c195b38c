"""One epoch of mixed-batch adversarial training: nbutils' fit against the loop a user would write.

The reference is what the PyImageSearch posts and torchattacks' documentation lead to: a
DataLoader over the training tensors, torchattacks' FGSM on the second half of each batch, then an
Adam step on the whole batch. Ours is ``fit(..., attack=attacks.get("fgsm", eps), adversarial_fraction
=0.5)``. Same model (SimpleCNN), data, batch size, eps and cross-entropy FGSM (clipped to [0, 1]) on
both sides. A third timing is the floor: device-resident batches, one input gradient of the
adversarial half and one training step, nothing else. Prints seconds, ratios and images/s.

    NBUTILS_DATA=../shared/data python3 benchmarks/mixed_epoch.py --n-images 10000
    python3 benchmarks/mixed_epoch.py --device cuda --n-images 60000
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
import torchattacks
from torch.utils.data import DataLoader, TensorDataset

from nbutils import attacks, data
from nbutils.batching import batch_slices, default_device
from nbutils.models import mnist_model
from nbutils.report import device_name
from nbutils.train import fit
from timing import benchmark_arguments, best_times_interleaved

EPS = 0.1


def reference_epoch(model, images, labels, batch_size, device):
    """The user's loop: DataLoader batches, torchattacks' FGSM on half of each, Adam on the whole batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    attack = torchattacks.FGSM(model, eps=EPS)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        half = x.shape[0] // 2
        mixed = torch.cat([x[:half], attack(x[half:], y[half:])])
        optimizer.zero_grad()
        F.cross_entropy(model(mixed), y).backward()
        optimizer.step()


def floor_epoch(model, images, labels, batch_size):
    """Device-resident batches: one input gradient of the adversarial half, one training step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    for s in batch_slices(images.shape[0], batch_size):
        x, y = images[s], labels[s]
        half = x.shape[0] // 2
        adv = x[half:].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y[half:]), adv)
        mixed = torch.cat([x[:half], (x[half:] + EPS * grad.sign()).clamp(0, 1)])
        optimizer.zero_grad()
        F.cross_entropy(model(mixed), y).backward()
        optimizer.step()


def main():
    args = benchmark_arguments(__doc__, n_images=10_000, batch_size=64, repeats=3, imagenet=False).parse_args()
    device = default_device(args.device)
    mnist = data.mnist(train=True).subset(range(args.n_images))
    images, labels = mnist.images, mnist.labels
    on_device = images.to(device), labels.to(device)
    attack = attacks.get("fgsm", eps=EPS)
    model = mnist_model("simple_cnn", seed=0, device=device)

    def ours():
        fit(model, images, labels, images[:1000], labels[:1000], epochs=1, batch_size=args.batch_size, lr=1e-4,
            attack=attack, adversarial_fraction=0.5, progress=False)

    best = best_times_interleaved({"ours": ours,
                                   "reference": lambda: reference_epoch(model, images, labels, args.batch_size, device),
                                   "floor": lambda: floor_epoch(model, *on_device, args.batch_size)},
                                  device, args.repeats)
    n = args.n_images
    print(f"machine: {device_name(device)}; torch {torch.__version__}")
    print(f"SimpleCNN, {n} MNIST images, batch {args.batch_size}, half of each batch FGSM eps {EPS}")
    print(f"ours (fit, incl. its validation pass on 1000 images) {best['ours']:.2f} s ({n / best['ours']:.0f} images/s)   "
          f"reference loop {best['reference']:.2f} s   floor {best['floor']:.2f} s")
    print(f"speed-up over the reference: {best['reference'] / best['ours']:.2f}x   "
          f"cost over the floor: {best['ours'] / best['floor']:.2f}x")


if __name__ == "__main__":
    main()
