"""Atomic file writes (a result, figure, cache entry or download is either whole or absent), and the
naming, saving and loading of cache entries."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit make it readable (0644) and rename it
    onto ``path``. On an exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def settings_key(stem: str, settings: dict, suffix: str = ".pt") -> str:
    """A cache file name: ``stem`` (characters other than letters, digits, - and _ replaced by -)
    plus the first 12 hex digits of the SHA-256 of ``settings`` as sorted JSON."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    safe_stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in stem)
    return f"{safe_stem}_{digest}{suffix}"


def save_state(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` a dict of tensors and plain values atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_state(path: str | os.PathLike) -> dict:
    """Load what :func:`save_state` wrote, onto the CPU, with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)
