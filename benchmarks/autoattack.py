"""The evaluation engine's "standard" cascade against torchattacks' AutoAttack, and APGD's step
against a bare forward+backward.

Same trained MNIST net (chapter 3's student, 1 epoch on 10,000 images, seed 0), the same first
--n-images test images and eps on the same device. Three timings, one run each (the attacks are
seconds to minutes long; the cascade is deterministic under its seed):

  ours          nbutils.evaluate.evaluate(..., attacks="standard", checks=False): APGD-CE, APGD-T
                (9 targets), Square (5,000 queries), each run on the images still robust; APGD with
                --apgd-steps steps (AutoAttack's 100; torchattacks' default is 10)
  torchattacks  torchattacks.AutoAttack(version="standard"): APGD-CE, APGD-T, FAB-T, Square (5,000),
                with torchattacks' defaults (10 steps)
  APGD step     attacks.apgd at --apgd-steps steps on all images, against --apgd-steps + 1 bare input
                gradients of the summed cross-entropy (``torch.autograd.grad``): best of --repeats

Prints each side's robust accuracy and time and the ratio ours / torchattacks (target <= 0.5 at
robust accuracies within 0.5 point), where our time goes (per attack, and Square's queries), and
the APGD step's cost over the floor (target <= 1.05).

    NBUTILS_DATA=../shared/data OMP_NUM_THREADS=1 python3 benchmarks/autoattack.py --n-images 200
    python3 benchmarks/autoattack.py --device cuda --n-images 10000 --batch-size 1000
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import torchattacks

from nbutils import attacks, data, evaluate, train
from nbutils.batching import batch_slices, default_device
from nbutils.metrics import predict
from nbutils.models import freeze, mnist_model
from nbutils.report import device_name
from timing import benchmark_arguments, best_times_interleaved, synchronize

EPS = 0.1


def trained_net(device: torch.device):
    train_set, test_set = data.mnist(train=True), data.mnist(train=False)
    model = mnist_model("student", seed=0)
    train.fit(model, train_set.images[:10_000], train_set.labels[:10_000], test_set.images[-500:],
              test_set.labels[-500:], epochs=1, batch_size=64, lr=1e-3, progress=False)
    return freeze(model).to(device), test_set


def gradient_floor(model, images, labels, batch_size, passes):
    """``passes`` input gradients of the summed cross-entropy per batch, nothing else."""
    for s in batch_slices(images.shape[0], batch_size):
        x = images[s].detach().requires_grad_(True)
        for _ in range(passes):
            torch.autograd.grad(F.cross_entropy(model(x), labels[s], reduction="sum"), x)


def main():
    parser = benchmark_arguments(__doc__, n_images=200, batch_size=500, repeats=3, imagenet=False)
    parser.add_argument("--apgd-steps", type=int, default=100)
    args = parser.parse_args()
    device = default_device(args.device)
    model, test_set = trained_net(device)
    x, y = test_set.images[:args.n_images].to(device), test_set.labels[:args.n_images].to(device)
    print(f"machine: {device_name(device)}; torch {torch.__version__}; torchattacks {torchattacks.__version__}")
    print(f"MNIST student net, {args.n_images} images, eps {EPS} (L-inf), clean accuracy "
          f"{(predict(model, x).argmax(1) == y.cpu()).double().mean():.4f}")

    suite = [a.replace(steps=args.apgd_steps) if a.key_name == "apgd" else a
             for a in evaluate.standard(EPS, batch_size=args.batch_size)]
    synchronize(device)
    start = time.perf_counter()
    ours = evaluate.evaluate(model, x, y, eps=EPS, attacks=suite, checks=False, batch_size=args.batch_size)
    ours_time = time.perf_counter() - start
    start = time.perf_counter()
    reference = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0)(x, y)
    synchronize(device)
    reference_time = time.perf_counter() - start
    ours_accuracy = ours.curve["robust_accuracy"].item()
    reference_accuracy = (predict(model, reference).argmax(1) == y.cpu()).double().mean().item()
    print(f"ours (APGD {args.apgd_steps} steps): robust {ours_accuracy:.4f} in {ours_time:.1f} s")
    print(f"torchattacks AutoAttack standard:   robust {reference_accuracy:.4f} in {reference_time:.1f} s")
    print(f"time ours / torchattacks: {ours_time / reference_time:.3f}; robust accuracy difference "
          f"{100 * (ours_accuracy - reference_accuracy):+.1f} points")
    for row in ours.per_attack.itertuples():
        queries = f", {row.n_attacked * 5000} image-queries at most" if row.attack == "Square" else ""
        print(f"  {row.attack:<8} attacked {row.n_attacked:>6}, broke {row.n_broken:>5}, {row.seconds:7.1f} s"
              f" ({row.seconds / ours_time:.0%}){queries}")

    steps = args.apgd_steps
    best = best_times_interleaved({
        "floor": lambda: gradient_floor(model, x, y, args.batch_size, steps + 1),
        "apgd": lambda: attacks.apgd(model, x, y, eps=EPS, steps=steps, batch_size=args.batch_size)}, device,
        args.repeats)
    print(f"APGD-CE, {steps} steps: {1000 * best['apgd'] / (steps + 1):.2f} ms per gradient, floor "
          f"{1000 * best['floor'] / (steps + 1):.2f} ms; ours / floor {best['apgd'] / best['floor']:.3f}")


if __name__ == "__main__":
    main()
