"""A PGD step: nbutils.attacks.pgd against a bare forward+backward and against torchattacks' PGD.

Same model, images, batches, eps, step size and number of steps on the same device, every tensor
already there. Three timings, best of --repeats interleaved rounds:

  floor         per batch and step: the input gradient of the summed cross-entropy
                (``torch.autograd.grad``), nothing else (no sign, projection or clamp)
  ours          nbutils.attacks.pgd (L-inf, random start, cross-entropy)
  torchattacks  torchattacks.PGD with the same settings

Prints milliseconds per step and the ratios ours / floor (target <= 1.05) and ours / torchattacks
(target <= 1.0), and the robust accuracy each attack leaves (the random starts differ, so they
agree only to sampling noise).

    NBUTILS_DATA=../shared/data python3 benchmarks/pgd_step.py --n-images 1000
    python3 benchmarks/pgd_step.py --model model_f --device cuda --n-images 10000 --batch-size 1000
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchattacks

from nbutils import attacks, data
from nbutils.batching import batch_slices, default_device
from nbutils.models import mnist_model
from nbutils.report import device_name
from timing import benchmark_arguments, best_times_interleaved

EPS, STEPS = 0.3, 10


def floor_attack(model, images, labels, batch_size, steps):
    """``steps`` input gradients of every batch: the arithmetic any PGD must do."""
    for s in batch_slices(images.shape[0], batch_size):
        x, y = images[s], labels[s]
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)


def reference_attack(model, images, labels, batch_size, steps):
    attack = torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / steps, steps=steps, random_start=True)
    return torch.cat([attack(images[s], labels[s]) for s in batch_slices(images.shape[0], batch_size)])


def robust_accuracy(model, adversarial, labels):
    with torch.inference_mode():
        return (model(adversarial).argmax(1) == labels).double().mean().item()


def main():
    parser = benchmark_arguments(__doc__, n_images=1000, batch_size=500, repeats=3, imagenet=False)
    parser.add_argument("--model", default="net", help="an MNIST net of nbutils.models.mnist_model")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    device = default_device(args.device)
    torch.manual_seed(0)
    model = mnist_model(args.model, seed=0, device=device).eval()
    test = data.mnist(train=False).subset(range(args.n_images))
    images, labels = test.images.to(device), test.labels.to(device)
    bs, steps = args.batch_size, args.steps
    results = {}

    def ours():
        results["ours"] = attacks.pgd(model, images, labels, eps=EPS, alpha=2.5 * EPS / steps, steps=steps,
                                      random_start=True, batch_size=bs)

    def reference():
        results["torchattacks"] = reference_attack(model, images, labels, bs, steps)

    best = best_times_interleaved({"floor": lambda: floor_attack(model, images, labels, bs, steps), "ours": ours,
                                   "torchattacks": reference}, device, args.repeats)
    per_step = {name: 1000 * seconds / steps for name, seconds in best.items()}
    print(f"machine: {device_name(device)}; torch {torch.__version__}")
    print(f"model {args.model} (random init), {args.n_images} MNIST test images, batch {bs}, "
          f"L-inf eps {EPS}, {steps} steps")
    print("ms per step: " + "   ".join(f"{name} {ms:.2f}" for name, ms in per_step.items()))
    print(f"ours/floor: {best['ours'] / best['floor']:.3f}   ours/torchattacks: {best['ours'] / best['torchattacks']:.3f}")
    print("robust accuracy left: " + "   ".join(f"{name} {robust_accuracy(model, adv, labels):.4f}"
                                                 for name, adv in results.items()))


if __name__ == "__main__":
    main()
