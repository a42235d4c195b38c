"""Wall-clock timing shared by the benchmark scripts (imported as a sibling module)."""
from __future__ import annotations

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
