"""Chapter parameters: profiles, and checks on what papermill injects.

A chapter's ``parameters`` cell holds every knob with None meaning "the profile's value". Its
next cell calls :func:`settle`, which fills the Nones from the chosen profile and rejects a bad
value (wrong type, unknown profile) with an error naming the parameter, before any work starts.
"""
from __future__ import annotations

import os
from numbers import Real
from types import SimpleNamespace

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


def settle(profiles: dict[str, dict], profile: str, **given) -> SimpleNamespace:
    """The chapter's settings: ``profiles[profile]`` overridden by every non-None ``given`` value.

    Raises ValueError for an unknown profile or parameter, TypeError for a value whose type does
    not match the profile's. Returns a namespace with ``profile`` and every setting.
    """
    check_choice(profile, list(profiles), "profile")
    defaults = profiles[profile]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; this chapter takes {sorted(defaults)}")
    settled = {name: default if given.get(name) is None else _check_type(name, given[name], default)
               for name, default in defaults.items()}
    return SimpleNamespace(profile=profile, **settled)


def check_range(name: str, value: Real, low: Real, high: Real) -> Real:
    """A settled parameter that must lie in [low, high], e.g. a count of images the dataset can give."""
    if not low <= value <= high:
        raise ValueError(f"parameter {name!r} must lie in [{low}, {high}], got {value!r}")
    return value
