"""The parameters of the book's pages, each declared once, and the checks on what papermill injects.

A page declares every parameter once (:class:`Param`): its name, type, help line, value in each
profile and rule; and the agreements between parameters, beside its profiles (:class:`Page`, one per
notebook, in :mod:`nbutils.profiles`). Everything else derives from that declaration:

* the notebook's ``parameters`` cell, which holds only what papermill injects (``name: type = None
  # help``), is written from it (``python -m nbutils.profiles`` rewrites every page's cell; a test
  fails while one is stale);
* :meth:`Page.settle`, which :func:`nbutils.chapter.start` calls in the page's first cell: the Nones
  take the profile's values, a value of the wrong type or outside its rule, parameters that disagree,
  and a name papermill injected that the page does not declare stop the run with an error naming
  them, before any data is loaded.
"""
from __future__ import annotations

import ast
import difflib
import json
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

from .checks import check_choice

PROFILE_ENV = "NBUTILS_PROFILE"
TYPES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


def _is_a(value, kind: type) -> bool:
    """``value`` has type ``kind``, where bools are not numbers, ints are floats and numpy scalars count."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return kind is bool
    if kind is int:
        return isinstance(value, Integral)
    if kind is float:
        return isinstance(value, Real)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


@dataclass(frozen=True)
class Rule:
    """The values a parameter may take: a number within [low, high] (an ``open_`` end excluded; None:
    unbounded), or one of ``choices`` (a sequence, or a function returning one, called only when
    checked). For a list parameter the rule holds for each element, whose type is ``element``, and the
    list holds at least ``min_items``."""

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


ANY = Rule()
COUNT = Rule(low=1)
PIXEL_EPS = Rule(0.0, 1.0, element=float)
POSITIVE = Rule(0.0, open_low=True, element=float)


@dataclass(frozen=True)
class Param:
    """One parameter of a page: ``name``, its ``kind`` (int, float, str, bool or list), a ``help`` line
    (the papers' values in brackets), its ``default`` in every profile unless ``profiles`` ({profile:
    value}) gives another, and its :class:`Rule`."""

    name: str
    kind: type
    help: str
    default: Any
    rule: Rule = ANY
    profiles: Mapping[str, Any] = field(default_factory=dict)

    def value(self, profile: str):
        return self.profiles.get(profile, self.default)

    def settle(self, given):
        """The value of this parameter in a run: ``given`` checked against the kind and the rule."""
        if not _is_a(given, self.kind):
            raise TypeError(f"parameter {self.name!r} must be {self.kind.__name__} like {self.default!r}, "
                            f"got {type(given).__name__} {given!r}")
        value = float(given) if self.kind is float else list(given) if self.kind is list else given
        self.rule.check(self.name, value)
        return value


def param(name: str, kind: type, help: str, default, rule: Rule = ANY, **profiles) -> Param:
    """A :class:`Param`; keyword arguments give its value in other profiles, e.g. ``smoke=2_000``."""
    return Param(name, kind, help, default, rule, profiles)


@dataclass(frozen=True)
class Page:
    """A page's declaration: its notebook ``name`` (stem), ``profiles`` ({name: what it is, e.g. its
    run time}), ``parameters``, the ``agree`` check of parameters that depend on each other (a function
    of the settled namespace raising ValueError through :func:`check_agree`), the cache kind its runs
    keep (``cache``: e.g. "models", None for none) and notes on the expected run time by (profile,
    device type)."""

    name: str
    profiles: Mapping[str, str]
    parameters: Sequence[Param]
    agree: Callable[[SimpleNamespace], None] = lambda cfg: None
    cache: str | None = None
    expected: Mapping[tuple[str, str], str] = field(default_factory=dict)
    default_profile: str = "paper"

    def __post_init__(self):
        names = [p.name for p in self.parameters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        strangers = sorted({k for p in self.parameters for k in p.profiles if k not in self.profiles})
        if repeated or strangers or "profile" in names:
            raise ValueError(f"page {self.name}: parameters declared twice {repeated}, values for unknown profiles "
                             f"{strangers}, or a parameter named 'profile'")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def defaults(self, profile: str) -> dict:
        """Every parameter's value in ``profile``."""
        check_choice(profile, list(self.profiles), "profile")
        return {p.name: p.value(profile) for p in self.parameters}

    def settle(self, profile, given: Mapping) -> SimpleNamespace:
        """The run's settings: the profile's values, overridden by every non-None ``given`` value, each
        checked against its parameter's kind and rule, then the page's agreements. A given name the page
        does not declare is refused, naming the closest declared one. Returns a namespace with
        ``profile`` and every parameter."""
        profile = check_choice(profile, list(self.profiles), "profile")
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            hints = {n: difflib.get_close_matches(n, self.names, n=1) for n in unknown}
            raise ValueError(f"unknown parameter(s) {unknown} for {self.name}; "
                             + "; ".join(f"{n!r}: did you mean {h[0]!r}?" for n, h in hints.items() if h)
                             + f" (it takes {self.names})")
        settled = {p.name: p.value(profile) if given.get(p.name) is None else p.settle(given[p.name])
                   for p in self.parameters}
        for p in self.parameters:  # a profile's own values keep the rules too
            p.rule.check(p.name, settled[p.name])
        cfg = SimpleNamespace(profile=profile, **settled)
        self.agree(cfg)
        return cfg

    def parameters_cell(self) -> str:
        """The notebook's ``parameters`` cell: one ``name: type = None  # help`` line per parameter, after
        the profile's line, which reads ``$NBUTILS_PROFILE``."""
        profiles = " | ".join(f'"{name}" ({what})' for name, what in self.profiles.items())
        lines = ["import os", "",
                 f'profile: str = os.environ.get("{PROFILE_ENV}", "{self.default_profile}")  # {profiles}']
        width = max(len(f"{p.name}: {TYPES[p.kind]} = None") for p in self.parameters) + 2
        lines += [f"{f'{p.name}: {TYPES[p.kind]} = None':<{width}}# {p.help}" for p in self.parameters]
        return "\n".join(lines)


def check_agree(condition: bool, names: Sequence[str], message: str) -> None:
    """Parameters that depend on each other: a ValueError naming them all when ``condition`` fails."""
    if not condition:
        raise ValueError(f"parameters {', '.join(repr(n) for n in names)} disagree: {message}")


def check_within(cfg: SimpleNamespace, name: str, low, high, because: Sequence[str] = ()) -> None:
    """An agreement: parameter ``name`` (a number, or each number of a list) within [low, high], where
    the bounds depend on the parameters ``because`` (named in the error with it)."""
    values = getattr(cfg, name)
    for value in values if isinstance(values, (list, tuple)) else [values]:
        check_agree(low <= value <= high, [name, *because], f"{name} must lie in [{low}, {high}], got {value!r}")


def injected(namespace: Mapping) -> dict:
    """The values papermill injected into a notebook's namespace: the names its "# Parameters" cell
    assigns (read from IPython's input history ``In``), with their current values; {} outside a
    papermill run."""
    names = []
    for source in namespace.get("In", []) or []:
        if isinstance(source, str) and source.startswith("# Parameters"):
            tree = ast.parse(source)
            names += [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                      if isinstance(t, ast.Name)]
    return {name: namespace.get(name) for name in names}


# ---------------------------------------------------------------------------------------------
# The parameters cells of the notebooks

def parameters_cell(notebook: Path) -> dict:
    """The code cell tagged ``parameters`` of a notebook (as JSON)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{notebook} has {len(tagged)} cells tagged 'parameters', not one")
    return tagged[0]


def stale_cells(book: Path, pages: Mapping[str, Page]) -> list[str]:
    """The pages whose notebook's parameters cell differs from the one its declaration writes."""
    return [name for name, page in pages.items()
            if "".join(parameters_cell(book / f"{name}.ipynb")["source"]) != page.parameters_cell()]


def write_cells(book: Path, pages: Mapping[str, Page]) -> list[str]:
    """Rewrite each stale parameters cell from its page's declaration (nothing else of the notebook
    changes); returns the pages rewritten."""
    from .files import atomic_write_text

    rewritten = []
    for name in stale_cells(book, pages):
        path = book / f"{name}.ipynb"
        notebook = json.loads(path.read_text())
        cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        source = pages[name].parameters_cell().split("\n")
        cell["source"] = [line + "\n" for line in source[:-1]] + [source[-1]]
        atomic_write_text(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        rewritten.append(name)
    return rewritten
