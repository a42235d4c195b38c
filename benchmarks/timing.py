"""Wall-clock timing and the command line shared by the benchmark scripts (imported as a sibling module)."""
from __future__ import annotations

import argparse
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer brackets it; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeats: int = 1, *, warmup: bool = True):
    """(best wall time in seconds of ``repeats`` calls of ``fn``, the last call's result), after one
    untimed warm-up call unless ``warmup`` is False."""
    result = fn() if warmup else None
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def best_times_interleaved(functions: dict, device: torch.device, repeats: int = 3) -> dict:
    """{name: best wall time in seconds} over ``repeats`` rounds that call every function once in turn
    (after one untimed warm-up round), so that drifts of a shared machine hit every side alike."""
    for fn in functions.values():
        fn()
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def benchmark_arguments(doc: str, *, n_images: int, batch_size: int, repeats: int,
                        imagenet: bool = True) -> argparse.ArgumentParser:
    """The options every script takes (--n-images, --batch-size, --device, --repeats, with this
    script's defaults), and --model / --weights for the ImageNet ones."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if imagenet:
        parser.add_argument("--model", default="efficientnet_lite0")
        parser.add_argument("--weights", default=None, help="weights name; 'random' times the architecture only")
    parser.add_argument("--n-images", type=int, default=n_images)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def imagenet_inputs(args: argparse.Namespace):
    """(device, model, images, labels) for an ImageNet benchmark: the seeded model named by the
    arguments, and either random images (random-init weights: timing only) or the offline sample."""
    from nbutils import data
    from nbutils.batching import default_device
    from nbutils.models import imagenet_model

    device = default_device(args.device)
    torch.manual_seed(0)
    model = imagenet_model(args.model, args.weights, device=device)
    if model.weights_id == "random-init":
        return device, model, torch.rand(args.n_images, 3, 224, 224), torch.randint(0, 1000, (args.n_images,))
    sample = data.imagenet_sample(classes=range(args.n_images))
    return device, model, sample.images, sample.labels
