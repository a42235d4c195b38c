"""The attack contract: one definition per attack, from which its public function, :func:`get` and a
trainer's per-batch kernel all derive.

An attack is a frozen dataclass whose fields are its settings (eps, steps, loss...), registered under
a name with :func:`register`, with one method, ``prepare(model)``, that checks the settings and returns
the per-batch kernel ``(x (B, C, H, W), y (B,)) -> adversarial x`` (tensors already on the model's
device; no argument checks and no host synchronisation inside, so that a training step can call it
and a CUDA graph can capture it). Everything else comes from :class:`Attack`:

* ``attack(model, images, labels)`` checks the inputs once, prepares the kernel once and runs it over
  the batches with :func:`nbutils.batching.run_batched`;
* ``attack.run(model, images, labels)`` does the same for inputs a caller has already checked (an
  evaluation that attacks one set of images many times pays the checks once);
* ``attack.kernel(model)`` is the prepared kernel, for a loop that holds its batches on the device;
* ``Attack.function`` (e.g. ``attacks.pgd``) is the public function ``pgd(model, images, labels, *,
  eps, alpha, steps, ...)``, its signature and docstring made from the dataclass;
* ``get("pgd", eps=0.3, ...)`` builds the dataclass by name, refusing an unknown attack or setting.

Adding an attack is one class: a registered dataclass with its ``prepare``.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Callable, ClassVar

import torch
from torch import nn

from ..batching import model_device, run_batched
from ..checks import check_flag, checked_inputs

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The attacks by name: the registered dataclasses (see :func:`register`).
ATTACKS: dict[str, type["Attack"]] = {}

#: Fields every attack has that are not its settings: they change how it runs, never its result.
RUNNER_FIELDS = ("name", "batch_size", "progress")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """The base of every attack: its settings are the subclass's fields.

    name: a readable name for tables and figures (default: the title and every setting that differs
    from its default, e.g. "PGD (eps=0.3, alpha=0.01, steps=40)"); batch_size: images per batch;
    progress: a progress bar over the batches. Instances are plain, picklable values.
    """

    name: str = dataclasses.field(default="", compare=False)
    batch_size: int = dataclasses.field(default=128, compare=False)
    progress: bool = dataclasses.field(default=False, compare=False)

    key_name: ClassVar[str] = ""   # the name the attack is registered under, e.g. "pgd"
    title: ClassVar[str] = ""      # its display name, e.g. "PGD"

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if not self.name:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            shown = ", ".join(f"{key}={_shown(value)}" for key, value in self.settings.items()
                              if value is not defaults[key] and value != defaults[key])
            object.__setattr__(self, "name", f"{self.title} ({shown})" if shown else self.title)

    @property
    def settings(self) -> dict:
        """The attack's settings (every field but the runner's: name, batch_size, progress)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNNER_FIELDS}

    def key(self) -> dict:
        """What defines the attack's effect, e.g. to key a cache: its registered name and settings
        (callables by qualified name)."""
        return {"attack": self.key_name, "settings": {
            k: getattr(v, "__qualname__", v) if callable(v) else v for k, v in sorted(self.settings.items())}}

    def prepare(self, model: nn.Module) -> Kernel:
        """Check the settings against ``model`` and return the per-batch kernel. Every attack defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines no prepare(model)")

    def pixel_inputs(self) -> bool:
        """Whether the images must lie in [0, 1] (an attack whose output may leave that range, such as
        FGSM without clipping, also takes images outside it)."""
        return True

    def kernel(self, model: nn.Module) -> Kernel:
        """The per-batch kernel ``(x, y) -> adversarial x`` against ``model``, settings checked now."""
        return self.prepare(model)

    def run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The adversarial images for inputs the caller has checked (:func:`nbutils.checks.checked_inputs`),
        batch by batch on the model's device; (N, C, H, W) on the images' device."""
        return run_batched(self.prepare(model), (images, labels), device=model_device(model),
                           batch_size=self.batch_size, progress=check_flag(self.progress, "progress"),
                           desc=self.key_name)

    def replace(self, **changes) -> "Attack":
        """A copy with some settings changed (an unknown name is refused, naming the closest one)."""
        _refuse_unknown(type(self), changes)
        return dataclasses.replace(self, **changes)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **changes) -> torch.Tensor:
        """Attack ``images`` (N, C, H, W) in [0, 1] with ``labels`` (N,) (the true classes, or the targets
        of a targeted attack): the inputs and settings are checked once, then :meth:`run`. ``changes``
        override settings for this call."""
        attack = self.replace(**changes) if changes else self
        images, labels = checked_inputs(model, images, labels, attack.batch_size, pixel_range=attack.pixel_inputs())
        return attack.run(model, images, labels)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return getattr(value, "__name__", str(value)) if callable(value) else str(value)


def _accepted(cls: type[Attack]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "name"]


def _refuse_unknown(cls: type[Attack], settings: dict) -> None:
    accepted = _accepted(cls)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        close = {name: difflib.get_close_matches(name, accepted, n=1) for name in unknown}
        hints = "; ".join(f"did you mean {c[0]!r} for {n!r}?" for n, c in close.items() if c)
        raise TypeError(f"unknown setting(s) {unknown} for attack {cls.key_name!r}; it takes {accepted}"
                        + (f" ({hints})" if hints else ""))


def get(attack: str, /, *, name: str | None = None, **settings) -> Attack:
    """The attack registered as ``attack`` with ``settings``, e.g. ``get("pgd", eps=0.3, alpha=0.01,
    steps=40)``: an unknown attack or setting is an error here; the values are checked when it runs.
    ``name``: its name in tables (default: made from the settings)."""
    if attack not in ATTACKS:
        close = difflib.get_close_matches(str(attack), list(ATTACKS), n=1)
        raise ValueError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    cls = ATTACKS[attack]
    _refuse_unknown(cls, settings)
    return cls(name=name or "", **settings)


def _public_function(cls: type[Attack]) -> Callable:
    """``attack(model, images, labels, *, <settings>, batch_size, progress)``, with the dataclass's
    docstring and a signature listing its settings and their defaults."""
    def attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **settings) -> torch.Tensor:
        return get(cls.key_name, **settings)(model, images, labels)

    fixed = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in ("model", "images", "labels")]
    own = [f for f in dataclasses.fields(cls) if f.name not in RUNNER_FIELDS] + \
          [f for f in dataclasses.fields(cls) if f.name in RUNNER_FIELDS[1:]]
    keywords = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                  default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
                for f in own]
    attack.__signature__ = inspect.Signature(fixed + keywords, return_annotation="torch.Tensor")
    attack.__name__ = attack.__qualname__ = cls.key_name
    attack.__module__ = cls.__module__
    attack.__doc__ = cls.__doc__
    return attack


def register(key: str, title: str) -> Callable[[type], type[Attack]]:
    """Make a subclass of :class:`Attack` a frozen dataclass of its settings, registered as ``key``
    (:func:`get`'s name) and shown as ``title``, with its public function as ``cls.function``."""
    def wrap(cls: type) -> type[Attack]:
        if not issubclass(cls, Attack):
            raise TypeError(f"{cls.__name__} must subclass nbutils.attacks.Attack")
        cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        cls.key_name, cls.title = key, title
        cls.function = staticmethod(_public_function(cls))
        ATTACKS[key] = cls
        return cls
    return wrap
