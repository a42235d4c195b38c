"""The ground floor for files: the checkout's root, atomic writes (a result, figure, cache entry or
download is either whole or absent), SHA-256 digests of files and tensors, and the naming, saving and
loading of cache entries."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")

#: Set in the kernels of a sweep's runs and of the committed chapters' runs: a batch run, where no one
#: moves a live widget (chapter 1's explorer is then a static page, :func:`nbutils.plots.fgsm_explorer`).
BATCH_ENV = "NBUTILS_BATCH"


def project_root() -> Path | None:
    """The checkout this package lives in (the folder holding ``_toc.yml``), or None when installed."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "_toc.yml").is_file() and (folder / "nbutils").is_dir():
            return folder
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (hex), e.g. to key a cache by its data."""
    array = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{array.dtype}{tuple(array.shape)}".encode())
    digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 (hex) over the tensor digests of a module's state dict, in order: the identity of its
    weights, e.g. to key a cache entry trained from them."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(f"{name}:{tensor_digest(value)}".encode())
    return digest.hexdigest()


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


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def settings_key(stem: str, settings: dict, suffix: str = ".pt") -> str:
    """A cache file name: ``stem`` (characters other than letters, digits, - and _ replaced by -)
    plus the first 12 hex digits of the SHA-256 of ``settings`` as sorted JSON."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    safe_stem = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in stem)
    return f"{safe_stem}_{digest}{suffix}"


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """SHA-256 (hex) over the package's source files (``nbutils/**/*.py``, by path): the identity of
    the code that made a cache entry, so that an entry made by other code is never mistaken for this
    code's."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(f"{source.relative_to(package).as_posix()}\0".encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def cache_entry(folder: str | os.PathLike, stem: str, settings: dict, *, weights: torch.nn.Module | None = None,
                data: dict | None = None) -> tuple[Path, dict]:
    """The one way every cache of the package names and keys an entry (trained nets, patches,
    substitutes, a chapter's finished steps).

    The key holds ``settings`` (JSON-like values), a digest of the starting ``weights`` (the module's
    state, :func:`state_digest`), a digest of each tensor of ``data`` ({name: tensor}) and the digest
    of the package's code (:func:`code_digest`). The file name is ``<stem>_<digest of the key without
    the code>.pt``: after a change of code the entry is found, reported as made by other code and
    recomputed (:func:`cached`), instead of being silently bypassed. Returns (path, key)."""
    key = {**settings, "weights": state_digest(weights) if weights is not None else None,
           "data": {name: tensor_digest(tensor) for name, tensor in sorted((data or {}).items())}}
    return Path(folder) / settings_key(stem, key), {**key, "code": code_digest()}


def save_state(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` a dict of tensors and plain values atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_state(path: str | os.PathLike) -> dict:
    """Load what :func:`save_state` wrote, onto the CPU, with ``weights_only=True``."""
    return torch.load(path, map_location="cpu", weights_only=True)


#: The key under which a cache entry records the settings it was made with.
ENTRY_SETTINGS = "cache_settings"


def _settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def _settings_difference(recorded, wanted: str) -> str:
    """What differs between the settings an entry records and those asked for, e.g. "target: 5, asked 3"."""
    if not isinstance(recorded, str):
        return "it records no settings"
    old, new = json.loads(recorded), json.loads(wanted)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "it was made with other settings: " + "; ".join(f"{k}: {old.get(k)!r}, asked {new.get(k)!r}" for k in keys)


def _only_code_differs(recorded, wanted: str) -> bool:
    """The entry's settings equal the wanted ones but for the package's code digest."""
    if not isinstance(recorded, str):
        return False
    old, new = json.loads(recorded), json.loads(wanted)
    return "code" in new and {k: v for k, v in old.items() if k != "code"} == {k: v for k, v in new.items() if k != "code"}


def set_aside(path: Path, reason: str) -> Path:
    """Move an unusable cache entry to ``<path>.bad-<time>`` (kept for a post-mortem, never read
    again), warn naming both paths and the reason, and return the new path."""
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    warnings.warn(f"cache entry {path} is unusable ({reason}); moved to {aside.name} and recomputed", RuntimeWarning,
                  stacklevel=3)
    return aside


def cached(path: str | os.PathLike, settings: dict, compute: Callable[[], tuple[T, dict]],
           restore: Callable[[dict], T]) -> tuple[T, bool]:
    """A value kept on disk by its settings: ``restore(state)`` of the entry at ``path`` when it holds
    these ``settings``, else ``compute()`` -> (value, state to save), saved atomically with the settings.

    An entry that cannot be read (truncated, corrupt, not tensors-only: ``weights_only`` refuses a
    pickle payload), that records other settings (swapped or renamed) or that ``restore`` rejects
    (another model's weights) is moved aside (:func:`set_aside`) and recomputed; one made by another
    version of the code (:func:`cache_entry`) is recomputed in place, with a warning. Returns (value,
    True if it came from the entry).
    """
    path, wanted = Path(path), _settings_json(settings)
    if path.is_file():
        try:
            state = load_state(path)
            recorded = state.get(ENTRY_SETTINGS) if isinstance(state, dict) else None
            if recorded != wanted and _only_code_differs(recorded, wanted):
                warnings.warn(f"cache entry {path.name} was made by another version of the package's code; recomputed",
                              RuntimeWarning, stacklevel=2)
            elif recorded != wanted:
                raise ValueError(_settings_difference(recorded, wanted))
            else:
                return restore({k: v for k, v in state.items() if k != ENTRY_SETTINGS}), True
        except Exception as err:  # any unreadable or mismatched entry: set it aside, never trust it
            set_aside(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300])
    value, state = compute()
    save_state({**state, ENTRY_SETTINGS: wanted}, path)
    return value, False


def restore_module(module: torch.nn.Module, state: dict) -> torch.nn.Module:
    """Load ``state`` into ``module`` only when it has exactly the module's keys and shapes (else
    ValueError, with the module untouched: ``load_state_dict`` would have copied part of it)."""
    own = module.state_dict()
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise ValueError(f"its weights do not fit {getattr(module, 'name', type(module).__name__)} "
                         f"(other keys or shapes)")
    module.load_state_dict(state)
    return module
