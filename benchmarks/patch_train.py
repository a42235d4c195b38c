"""Throughput of the patch attack's training step and evaluation, against a floor and the tutorial's way.

Training step (images/s), same model, batch and device:
  floor     a bare forward plus backward to the input, no placement, no optimiser, no bookkeeping
  ours      nbutils.patch.patch_train_step: batched paste, forward, backward to the patch, SGD step
  tutorial  the UvA tutorial's step: a per-image Python placement loop on the CPU, then .to(device)
Evaluation (images/s, 4 placements each):
  floor     4 bare inference forwards of the batch
  ours      nbutils.patch.evaluate_patch
  tutorial  torch.no_grad, per-image placement loop, 4 placements
With --precision, also bf16 autocast + channels_last against fp32 (a GPU option): step throughput,
and the target rate of a patch trained each way (needs pretrained weights to mean anything). With
--determinism, two seeded trainings with PyTorch's deterministic algorithms off and two with them on:
whether each pair gives identical patches, and what the mode costs.

    python3 benchmarks/patch_train.py --model efficientnet_lite0 --device cpu --steps 5
    python3 benchmarks/patch_train.py --model resnet101 --weights random --device cuda --precision
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from nbutils import data
from nbutils.batching import batch_slices, default_device
from nbutils.models import imagenet_model
from nbutils.patch import PAPER_TARGETS, evaluate_patch, patch_pixels, patch_train_step, random_positions, train_patch
from nbutils.report import device_name
from timing import best_time


def images_per_second(fn, n_images, device, repeats):
    """Best throughput of ``repeats`` timed calls of ``fn`` (after one warm-up call)."""
    return n_images / best_time(fn, device, repeats)[0]

TARGET = PAPER_TARGETS["piggy bank"]


def floor_step(model, batch, target):
    x = batch.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), torch.full((x.shape[0],), target, device=x.device))
    torch.autograd.grad(loss, x)


def tutorial_place(img, patch):
    """The tutorial's place_patch: a Python loop over images, pasting in place (its bug included)."""
    for i in range(img.shape[0]):
        h_offset = np.random.randint(0, img.shape[2] - patch.shape[1] - 1)
        w_offset = np.random.randint(0, img.shape[3] - patch.shape[2] - 1)
        img[i, :, h_offset:h_offset + patch.shape[1], w_offset:w_offset + patch.shape[2]] = patch_pixels(patch)
    return img


def tutorial_step(model, batch_cpu, patch, optimizer, target, device):
    img = tutorial_place(batch_cpu.clone(), patch).to(device)
    pred = model(img)
    loss = F.cross_entropy(pred, torch.full((img.shape[0],), target, device=device))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    loss.item()  # the tutorial's progress bar reads the loss every step


def tutorial_eval(model, images_cpu, patch, device, batch_size):
    with torch.no_grad():
        for s in batch_slices(images_cpu.shape[0], batch_size):
            img = images_cpu[s].clone()
            for _ in range(4):
                model(tutorial_place(img, patch).to(device)).topk(5, dim=-1)


def step_benchmarks(model, images, device, args):
    batch = images[:args.batch_size].to(device)
    generator = torch.Generator().manual_seed(0)
    ours_param = torch.zeros(3, args.size, args.size, device=device, requires_grad=True)
    ours_opt = torch.optim.SGD([ours_param], lr=0.1, momentum=0.8)
    tut_param = torch.nn.Parameter(torch.zeros(3, args.size, args.size))
    tut_opt = torch.optim.SGD([tut_param], lr=0.1, momentum=0.8)
    n = args.batch_size * args.steps
    rates = {
        "floor": images_per_second(lambda: [floor_step(model, batch, TARGET) for _ in range(args.steps)], n, device, args.repeats),
        "ours": images_per_second(lambda: [patch_train_step(
            model, batch, ours_param, ours_opt, TARGET, random_positions(args.batch_size, batch.shape[-2:], args.size, generator))
            for _ in range(args.steps)], n, device, args.repeats),
        "tutorial": images_per_second(lambda: [tutorial_step(model, images[:args.batch_size], tut_param, tut_opt, TARGET, device)
                                               for _ in range(args.steps)], n, device, args.repeats),
    }
    print(f"train step, images/s: floor {rates['floor']:.1f}   ours {rates['ours']:.1f}   tutorial {rates['tutorial']:.1f}")
    print(f"  cost ours/floor: {rates['floor'] / rates['ours']:.3f}   tutorial/ours: {rates['ours'] / rates['tutorial']:.3f}")
    return rates


def eval_benchmarks(model, images, labels, device, args):
    n = min(images.shape[0], args.eval_images)
    x, y = images[:n], labels[:n]
    patch = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def floor():
        with torch.inference_mode():
            for s in batch_slices(n, args.batch_size):
                batch = x[s].to(device)
                for _ in range(4):
                    model(batch).topk(5, dim=1)

    rates = {
        "floor": images_per_second(floor, n, device, args.repeats),
        "ours": images_per_second(lambda: evaluate_patch(model, x, y, patch, TARGET, batch_size=args.batch_size), n, device, args.repeats),
        "tutorial": images_per_second(lambda: tutorial_eval(model, x, torch.atanh(patch * 2 - 1).clamp(-10, 10), device, args.batch_size),
                                      n, device, args.repeats),
    }
    print(f"evaluation (4 placements), images/s: floor {rates['floor']:.1f}   ours {rates['ours']:.1f}   tutorial {rates['tutorial']:.1f}")
    print(f"  cost ours/floor: {rates['floor'] / rates['ours']:.3f}   tutorial/ours: {rates['ours'] / rates['tutorial']:.3f}")


def precision_benchmarks(args, device, images, labels):
    """fp32 against bf16 autocast + channels_last: step throughput and the trained patch's target rate."""
    results = {}
    for label, channels_last, dtype in (("fp32", False, None), ("bf16+channels_last", True, torch.bfloat16)):
        torch.manual_seed(0)
        model = imagenet_model(args.model, args.weights, device=device, channels_last=channels_last)
        batch = images[:args.batch_size].to(device)
        param = torch.zeros(3, args.size, args.size, device=device, requires_grad=True)
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.8)
        generator = torch.Generator().manual_seed(0)
        rate = images_per_second(lambda: [patch_train_step(
            model, batch, param, opt, TARGET, random_positions(args.batch_size, batch.shape[-2:], args.size, generator), dtype)
            for _ in range(args.steps)], args.batch_size * args.steps, device, args.repeats)
        trained = train_patch(model, images, TARGET, args.size, epochs=args.precision_epochs, autocast_dtype=dtype,
                              progress=False)
        score = evaluate_patch(model, images, labels, trained.patch, TARGET).rates(trained.val_index)
        results[label] = rate
        print(f"{label}: train step {rate:.1f} images/s; patch after {args.precision_epochs} epochs: "
              f"held-out top-1 target rate {score['top1']:.2f} %, top-5 {score['top5']:.2f} % ({score['n_images']} images)")
    print(f"bf16+channels_last speed-up over fp32: {results['bf16+channels_last'] / results['fp32']:.2f}x")


def determinism_benchmarks(args, device, images):
    """PyTorch's deterministic algorithms off, then on (chapter 2's ``deterministic`` parameter): two
    seeded trainings of one patch each way, whether they give identical patches, and the time each took."""
    import time

    from nbutils.chapter import deterministic_algorithms
    from nbutils.models import imagenet_model

    n = min(images.shape[0], args.determinism_images)
    for enabled in (False, True):
        deterministic_algorithms(enabled)
        torch.manual_seed(0)
        model = imagenet_model(args.model, args.weights, device=device)  # built in the mode, as the chapter does
        patches, seconds = [], []
        try:
            for _ in range(2):
                start = time.perf_counter()
                patches.append(train_patch(model, images[:n], TARGET, args.size, epochs=args.precision_epochs, seed=0,
                                           progress=False).patch)
                seconds.append(time.perf_counter() - start)
        except RuntimeError as err:
            print(f"deterministic {enabled}: training failed: {str(err).splitlines()[0]}")
            continue
        difference = (patches[0] - patches[1]).abs().max().item()
        print(f"deterministic {enabled}: two seeded trainings ({n} images, {args.precision_epochs} epochs) "
              f"{'identical' if difference == 0 else f'differ by up to {difference:.3g}'}; "
              f"{min(seconds):.2f} s a training")
    deterministic_algorithms(False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="weights name; 'random' times the architecture only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="patch size in pixels")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", action="store_true", help="also bf16 autocast + channels_last vs fp32")
    parser.add_argument("--precision-epochs", type=int, default=2, help="epochs of the --precision and --determinism trainings")
    parser.add_argument("--determinism", action="store_true",
                        help="also two seeded trainings with deterministic algorithms off, then on: identical? how slow?")
    parser.add_argument("--determinism-images", type=int, default=320)
    args = parser.parse_args()

    device = default_device(args.device)
    torch.manual_seed(0)
    np.random.seed(0)
    model = imagenet_model(args.model, args.weights, device=device)
    if model.weights_id == "random-init":
        n = max(args.batch_size, args.eval_images)
        images, labels = torch.rand(n, 3, 224, 224), torch.randint(0, 1000, (n,))
    else:
        sample = data.imagenet_sample()
        images, labels = sample.images, sample.labels
    print(f"machine: {device_name(device)}; torch {torch.__version__}")
    print(f"model {model.label} ({model.weights_id}), batch {args.batch_size}, patch {args.size}px, {args.steps} steps")
    step_benchmarks(model, images, device, args)
    eval_benchmarks(model, images, labels, device, args)
    if args.precision:
        precision_benchmarks(args, device, images, labels)
    if args.determinism:
        determinism_benchmarks(args, device, images)


if __name__ == "__main__":
    main()
