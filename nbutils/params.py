"""Chapter parameters: profiles, and checks on what papermill injects.

A chapter's ``parameters`` cell holds every knob with None meaning "the profile's value". Its
next cell calls :func:`nbutils.chapter.start`, which settles them (:func:`settle`: the Nones filled
from the chosen profile) and stops a bad value before any data is loaded, with an error naming the
parameter:

* its type must be the profile's (a list's elements too, by its :class:`Rule`);
* its value must keep its :class:`Rule` of :data:`RULES` (a range, or a set of choices), the same for a
  name in every chapter (``temperature`` > 0, ``epsilons`` in [0, 1], ``models`` known names...);
* parameters that depend on each other must agree (:data:`AGREEMENTS`, per chapter: the figure's
  target among the trained ones, example images within the images loaded).
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from .checks import check_choice

PROFILE_ENV = "NBUTILS_PROFILE"


def default_profile() -> str:
    """The profile named by ``NBUTILS_PROFILE``, else "paper"."""
    return os.environ.get(PROFILE_ENV, "paper")


def _check_type(name: str, value, default):
    """``value`` must have the type of the profile's ``default`` (ints pass for floats, lists for tuples)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, Real) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise TypeError(f"parameter {name!r} must be {type(default).__name__} like {default!r}, "
                        f"got {type(value).__name__} {value!r}")
    return float(value) if isinstance(default, float) else value


@dataclass(frozen=True)
class Rule:
    """The values a chapter parameter may take: a number within [low, high] (an ``open_`` end
    excluded; None: unbounded), or one of ``choices`` (a sequence, or a function returning one,
    called only when checked). For a list parameter the rule holds for each element, whose type is
    ``element``, and the list holds at least ``min_items``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: Sequence | Callable[[], Sequence] | None = None
    element: type | None = None
    min_items: int = 1

    def describe(self, value=None) -> str:
        if self.choices is not None:
            options = list(self.options())
            if len(options) <= 12:
                return f"one of {options}"
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=3)
            return f"one of {len(options)} names" + (f"; did you mean {close}?" if close else f" such as {options[:4]}")
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"

    def options(self) -> Sequence:
        return self.choices() if callable(self.choices) else self.choices

    def check(self, name: str, value) -> None:
        """Raise TypeError or ValueError naming ``name`` (``name[i]`` for a list's element)."""
        if isinstance(value, (list, tuple)):
            if len(value) < self.min_items:
                raise ValueError(f"parameter {name!r} must hold at least {self.min_items} item(s), got {value!r}")
            for i, item in enumerate(value):
                self._check_one(f"{name}[{i}]", item, self.element)
        else:
            self._check_one(name, value, None)

    def _check_one(self, name: str, value, element: type | None) -> None:
        if element is not None and not _is_a(value, element):
            raise TypeError(f"parameter {name!r} must be {element.__name__}, got {type(value).__name__} {value!r}")
        if self.choices is not None:
            if value not in self.options():
                raise ValueError(f"parameter {name!r} must be {self.describe(value)}, got {value!r}")
        elif _is_a(value, float):
            low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
            high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
            if not (math.isfinite(value) and low_ok and high_ok):
                raise ValueError(f"parameter {name!r} must be {self.describe()}, got {value!r}")


def _is_a(value, kind: type) -> bool:
    """``value`` has type ``kind``, where bools are not numbers, ints are floats and numpy scalars count."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return kind is bool
    if kind is int:
        return isinstance(value, Integral)
    if kind is float:
        return isinstance(value, Real)
    return isinstance(value, kind)


def _imagenet_models() -> list[str]:
    from .models import IMAGENET_MODELS
    return IMAGENET_MODELS


def _paper_models() -> list[str]:
    from .models import PAPER_MODELS
    return PAPER_MODELS


def _weights_names() -> list[str]:
    from .models import IMAGENET_MODELS, weights_names
    return sorted({w for name in IMAGENET_MODELS for w in weights_names(name)})


def _imagenet_classes() -> list[str]:
    from .data import imagenet_class_names
    return imagenet_class_names()


def _imagenet_subsets() -> list[str]:
    from .data import IMAGENET_SUBSETS
    return list(IMAGENET_SUBSETS)


def _digit_datasets() -> list[str]:
    from .data import DIGIT_DATASETS
    return list(DIGIT_DATASETS)


def _model_f_layers() -> list[str]:
    from .models import mnist_model
    with torch.random.fork_rng(devices=[]):  # building the net seeds torch: leave the chapter's stream alone
        return [name for name, _ in mnist_model("model_f").named_modules() if name]


def _craft_modes() -> tuple[str, ...]:
    from .train import CRAFT_MODES
    return CRAFT_MODES


def _covariance_types() -> tuple[str, ...]:
    from .detect import COVARIANCE_TYPES
    return COVARIANCE_TYPES


_ANY = Rule()
_COUNT = Rule(low=1)
_PIXEL_EPS = Rule(0.0, 1.0, element=float)
_POSITIVE = Rule(0.0, open_low=True, element=float)
_EPOCHS = _STEPS = _COUNT

#: The rule of every chapter parameter, by name (a name means the same in every chapter).
RULES: dict[str, Rule] = {
    # run plumbing (device: checked by nbutils.batching.default_device; paths: any)
    "device": _ANY, "download": _ANY, "deterministic": _ANY, "data_dir": _ANY, "results_dir": _ANY, "cache_dir": _ANY,
    "sweeps_dir": _ANY, "scheduler": _ANY, "workers": Rule(low=0),
    "seed": Rule(low=0), "seeds": Rule(low=0, element=int),
    # data and counts (upper bounds that depend on the dataset: AGREEMENTS and the chapters' own checks)
    "dataset": Rule(choices=_imagenet_subsets), "datasets": Rule(choices=_digit_datasets, element=str),
    "n_images": Rule(low=0), "n_train": _COUNT, "n_val": _COUNT, "n_test": _COUNT, "n_tests": _COUNT,
    "n_attack": _COUNT, "n_sweep": _COUNT, "n_adaptive": _COUNT, "n_other": _COUNT, "holdout": _COUNT,
    "finetune_images": _COUNT, "selection_holdout": _COUNT,
    "example_images": Rule(low=0, element=int), "figure_images": Rule(low=0, element=int),
    "batch_size": _COUNT, "eval_batch_size": _COUNT,
    # models
    "models": Rule(choices=_imagenet_models, element=str), "weights": Rule(choices=_weights_names, element=str),
    "reference_model": Rule(choices=_paper_models), "other_nets": Rule(choices=["net", "simple_cnn"], element=str),
    "layer": Rule(choices=_model_f_layers), "layer_sweep": Rule(choices=_model_f_layers, element=str),
    # attacks, pixel units
    "epsilons": _PIXEL_EPS, "sweep_epsilons": _PIXEL_EPS, "fgsm_epsilons": _PIXEL_EPS, "eps_figure": _PIXEL_EPS,
    "eps": _PIXEL_EPS, "attack_eps": _PIXEL_EPS, "bim_eps": _PIXEL_EPS, "adaptive_eps": _PIXEL_EPS,
    "l2_eps": Rule(0.0, 28.0),  # the L2 diameter of [0, 1]^(28 x 28)
    "l2_budgets": Rule(0.0, 28.0, open_low=True, element=float), "l2_steps": _STEPS, "l2_restarts": _COUNT,
    "n_l2": _COUNT, "n_seeds": _COUNT,
    "pgd_steps": _STEPS, "pgd_restarts": _COUNT, "pgd_train_steps": _STEPS, "cw_steps": _STEPS,
    "cw_search_steps": _STEPS, "iterations": _STEPS, "deepfool_steps": _STEPS, "adaptive_steps": _STEPS,
    "deepfool_overshoot": Rule(low=0.0), "lam": _POSITIVE, "adaptive_weights": Rule(low=0.0, element=float),
    # patches
    "targets": Rule(choices=_imagenet_classes, element=str), "figure_target": Rule(choices=_imagenet_classes),
    "sizes": Rule(1, 224, element=int), "figure_size": Rule(1, 224), "placements": _COUNT, "runs": _COUNT,
    "val_fraction": Rule(0.0, 1.0, open_low=True, open_high=True),
    # training
    "epochs": _EPOCHS, "sweep_epochs": _EPOCHS, "finetune_epochs": _EPOCHS, "mixed_epochs": _EPOCHS,
    "pgd_train_epochs": _EPOCHS, "target_epochs": _EPOCHS, "substitute_epochs": _EPOCHS, "other_epochs": _EPOCHS,
    "substitute_rounds": _COUNT, "lr": _POSITIVE, "defence_lr": _POSITIVE, "momentum": Rule(0.0, 1.0, open_high=True),
    "scheduler_factor": Rule(0.0, 1.0, open_low=True, open_high=True), "scheduler_patience": Rule(low=0),
    "temperature": _POSITIVE, "sweep_temperatures": _POSITIVE, "temperatures": _POSITIVE,
    "adversarial_fraction": Rule(0.0, 1.0, open_low=True), "craft_mode": Rule(choices=_craft_modes),
    # detection
    "components_grid": Rule(low=1, element=int), "covariance_grid": Rule(choices=_covariance_types, element=str),
    "reg_covar": Rule(low=0.0), "keeps": Rule(0.0, 1.0, open_low=True, open_high=True, element=float),
}


def settle(profiles: dict[str, dict], profile: str, **given) -> SimpleNamespace:
    """The chapter's settings: ``profiles[profile]`` overridden by every non-None ``given`` value.

    Raises ValueError for an unknown profile or parameter or a value outside its :data:`RULES`,
    TypeError for a value (or a list's element) whose type does not match. Returns a namespace with ``profile`` and every setting.
    """
    check_choice(profile, list(profiles), "profile")
    defaults = profiles[profile]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; this chapter takes {sorted(defaults)}")
    settled = {name: default if given.get(name) is None else _check_type(name, given[name], default)
               for name, default in defaults.items()}
    for name, value in settled.items():
        if name in RULES:
            RULES[name].check(name, value)
    return SimpleNamespace(profile=profile, **settled)


def check_range(name: str, value: Real, low: Real, high: Real) -> Real:
    """A settled parameter that must lie in [low, high], e.g. a count of images the dataset can give."""
    if not low <= value <= high:
        raise ValueError(f"parameter {name!r} must lie in [{low}, {high}], got {value!r}")
    return value


def check_agree(condition: bool, names: Sequence[str], message: str) -> None:
    """Parameters that depend on each other: a ValueError naming them all when ``condition`` fails."""
    if not condition:
        raise ValueError(f"parameters {', '.join(repr(n) for n in names)} disagree: {message}")


def _imagenet_counts(cfg: SimpleNamespace, positions: str) -> None:
    """Chapters 1-2: ``n_images`` within the dataset, the example images within the images loaded."""
    from .data import IMAGENET_SUBSETS
    size = IMAGENET_SUBSETS[cfg.dataset]
    check_agree(cfg.n_images <= size, ["n_images", "dataset"], f"{cfg.dataset} holds {size} images, n_images is {cfg.n_images}")
    loaded = cfg.n_images or size
    outside = [i for i in getattr(cfg, positions) if i >= loaded]
    check_agree(not outside, [positions, "n_images"], f"{positions} {outside} lie beyond the {loaded} images loaded")


def _fgsm_imagenet(cfg: SimpleNamespace) -> None:
    _imagenet_counts(cfg, "example_images")


def _adversarial_patch(cfg: SimpleNamespace) -> None:
    _imagenet_counts(cfg, "figure_images")
    check_agree(cfg.figure_target in cfg.targets, ["figure_target", "targets"],
                f"the figures' patch {cfg.figure_target!r} is not among the trained targets {cfg.targets}")
    check_agree(cfg.figure_size in cfg.sizes, ["figure_size", "sizes"],
                f"the figures' patch size {cfg.figure_size} is not among the trained sizes {cfg.sizes}")
    from .data import IMAGENET_SUBSETS
    loaded = cfg.n_images or IMAGENET_SUBSETS[cfg.dataset]
    held_out = round(loaded * cfg.val_fraction)
    check_agree(held_out >= 1 and cfg.runs * held_out < loaded, ["runs", "val_fraction", "n_images"],
                f"{cfg.runs} runs each holding out their own {held_out} of the {loaded} images leave no image to "
                "train on (or hold out none)")


def _defensive_distillation(cfg: SimpleNamespace) -> None:
    outside = [i for i in cfg.figure_images if i >= cfg.n_test]
    check_agree(not outside, ["figure_images", "n_test"], f"figure_images {outside} lie beyond the {cfg.n_test} test images")


#: Checks of parameters that must agree, by chapter (run by :func:`nbutils.chapter.start` after
#: :func:`settle`, before any data is loaded; single-parameter bounds that depend on another, such as
#: ``n_attack <= n_test``, sit in the chapter's first cell as :func:`check_range` calls).
AGREEMENTS: dict[str, Callable[[SimpleNamespace], None]] = {
    "01_fgsm_imagenet": _fgsm_imagenet,
    "02_adversarial_patch": _adversarial_patch,
    "03_defensive_distillation": _defensive_distillation,
}
