"""The run helper every chapter calls once, at the top, after its ``parameters`` cell.

    run = chapter.start("03_defensive_distillation", PROFILES, globals(), cache="models")
    cfg = run.cfg

:func:`start` settles the parameters (each read once from the notebook's namespace, where the
``parameters`` cell and papermill put them; None takes the profile's value), picks the device,
seeds torch, makes the results and cache folders and starts the clock of the provenance record.

Where a run writes, unless its parameters say otherwise:

* results: ``$NBUTILS_RESULTS/<profile>/<chapter>/`` when that variable is set (the committed runs set
  it to the checkout's ``results/``), else ``<checkout>/runs/results/<profile>/<chapter>/``, so a
  re-run never touches committed files;
* caches (trained nets, patches): ``$NBUTILS_CACHE/<kind>/`` when set, else ``<checkout>/runs/<kind>/``.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Mapping

import pandas as pd
import torch

from . import params, plots, report
from .batching import default_device
from .data import add_data_root
from .colab import on_colab
from .files import cache_entry, cached, project_root

RESULTS_ENV = "NBUTILS_RESULTS"
CACHE_ENV = "NBUTILS_CACHE"


def runs_root() -> Path:
    """``runs/`` of the checkout (git-ignored), or ``./runs`` when the package is installed without one."""
    return (project_root() or Path.cwd()) / "runs"


def display_path(path: Path) -> str:
    """``path`` relative to the checkout when inside it, else under ``$NBUTILS_RESULTS`` or
    ``$NBUTILS_CACHE`` when inside those (provenance names no machine's folders)."""
    path = Path(path).resolve()
    bases = [(project_root(), "")] + [(Path(os.environ[v]).resolve(), f"${v}/") for v in (RESULTS_ENV, CACHE_ENV)
                                      if os.environ.get(v)]
    for base, label in bases:
        if base is not None and path.is_relative_to(base):
            return label + str(path.relative_to(base))
    return str(path)


def default_results_dir(profile: str, chapter: str) -> Path:
    """``$NBUTILS_RESULTS/<profile>/<chapter>``, else ``runs/results/<profile>/<chapter>``."""
    base = os.environ.get(RESULTS_ENV)
    return (Path(base) if base else runs_root() / "results") / profile / chapter


def default_cache_dir(kind: str) -> Path:
    """``$NBUTILS_CACHE/<kind>``, else ``runs/<kind>``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else runs_root()) / kind


_DEFAULT_FORMATWARNING = warnings.formatwarning


def portable_formatwarning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` with the file named relative to the checkout, or from its package
    inside site-packages, so a committed notebook's warnings name no machine's folders."""
    shown = display_path(filename) if os.path.isabs(filename) else filename
    if os.path.isabs(shown) and "site-packages" in Path(shown).parts:
        shown = str(Path(*Path(shown).parts[Path(shown).parts.index("site-packages") + 1:]))
    return _DEFAULT_FORMATWARNING(message, category, shown, lineno, line)


def deterministic_algorithms(enabled: bool) -> None:
    """PyTorch's deterministic algorithms on or off: on, a seeded run gives the same numbers on the same
    device (cuDNN's autotuner off, cuBLAS with a fixed workspace, and an error from any op that has no
    deterministic version); off, the defaults (faster on a GPU, where e.g. cuDNN's backward may
    differ from run to run)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled


@dataclass
class ChapterRun:
    """One execution of a chapter: its settled parameters ``cfg``, ``device``, ``results`` and ``cache``
    folders, start time and the code's ``commit`` as it was at the start (a run that writes into a
    tracked folder must not read its own outputs as a modified tree). :meth:`save` writes its tables
    with one provenance record."""

    chapter: str
    cfg: SimpleNamespace
    device: torch.device
    results: Path
    cache: Path | None
    started: float
    commit: str | None

    def provenance(self, **details) -> dict:
        """The provenance record of this run so far: versions, device, seed, profile, wall time, the
        parameters and ``details`` (models and weights, data and counts)."""
        paths = {"results": display_path(self.results)}
        if self.cache is not None:
            paths["cache"] = display_path(self.cache)
        return report.provenance(seed=getattr(self.cfg, "seed", None), device=self.device, profile=self.cfg.profile,
                                 started=self.started, commit=self.commit, chapter=self.chapter, **details, folders=paths,
                                 parameters=vars(self.cfg))

    def save(self, tables: Mapping[str, pd.DataFrame], **details) -> dict:
        """Write every table as ``<results>/<name>.csv`` and ``.json`` with one provenance record, print
        the record and return it."""
        record = self.provenance(**details)
        for name, table in tables.items():
            report.write_results(table, name, self.results, record)
        print(f"{len(tables)} tables in {display_path(self.results)}")
        report.print_provenance(record)
        return record

    def resumable(self, step: str, settings: Mapping, compute: Callable[[], dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
        """The tables of one finished ``step`` (e.g. one model's sweep), kept in the run's cache as soon as
        ``compute()`` returns them, so a re-run after an interruption (a Colab runtime that died) repeats
        no finished step. The entry is keyed by the chapter, ``step``, ``settings``, the device type and
        the package's code (:func:`nbutils.files.cache_entry`: an entry of other code, or a mismatched or
        unreadable one, is recomputed)."""
        path, key = cache_entry(self.cache, f"{self.chapter}_{step}",
                                {"chapter": self.chapter, "step": step, **settings, "device": self.device.type})

        def run_step():
            tables = compute()
            return tables, {"tables": {name: table.to_dict("list") for name, table in tables.items()}}

        tables, resumed = cached(path, key, run_step,
                                 lambda state: {name: pd.DataFrame(columns) for name, columns in state["tables"].items()})
        if resumed:
            print(f"{step}: finished in an earlier run, read from {display_path(path)}")
        return tables


def start(page: str | params.Page, namespace: Mapping) -> ChapterRun:
    """Settle a page's parameters and prepare its run; the first call of every chapter's setup cell.

    page: the notebook's stem (its declaration in :data:`nbutils.profiles.PAGES`), or a
    :class:`nbutils.params.Page`; namespace: the notebook's ``globals()``, holding ``profile`` and
    every declared parameter (None: the profile's value), and what papermill injected. A bad value,
    parameters that disagree, or an injected name the page does not declare stop the run with an error
    naming them (:meth:`nbutils.params.Page.settle`), before any data is loaded. Parameters
    ``device``, ``seed``, ``deterministic``, ``data_dir``, ``results_dir`` and ``cache_dir`` (for a
    page that keeps a cache) are acted on here. Before the work starts it prints the committed run's
    measured time and peak memory (:func:`nbutils.report.measured_run`) and the page's note on the
    expected run time for this profile and device.
    """
    if isinstance(page, str):
        from .profiles import PAGES
        page = PAGES[params.check_choice(page, list(PAGES), "page")]
    warnings.formatwarning = portable_formatwarning
    plots.sharp_inline_figures()
    given = {**{name: namespace.get(name) for name in page.names}, **params.injected(namespace)}
    given.pop("profile", None)
    cfg = page.settle(namespace.get("profile"), given)
    if getattr(cfg, "data_dir", ""):
        add_data_root(cfg.data_dir)
    if hasattr(cfg, "seed"):  # a page that only gathers runs (the sweeps) has none
        torch.manual_seed(cfg.seed)
    if on_colab() and namespace.get("download") is None and hasattr(cfg, "download"):
        cfg.download = True  # Colab has the internet: fetch the paper's weights and data
    deterministic_algorithms(getattr(cfg, "deterministic", False))
    device = default_device(cfg.device)
    results = Path(cfg.results_dir) if getattr(cfg, "results_dir", "") else default_results_dir(cfg.profile, page.name)
    results.mkdir(parents=True, exist_ok=True)
    cache_dir = None
    if page.cache is not None:
        cache_dir = Path(cfg.cache_dir) if getattr(cfg, "cache_dir", "") else default_cache_dir(page.cache)
        cache_dir.mkdir(parents=True, exist_ok=True)
    run = ChapterRun(page.name, cfg, device, results, cache_dir, time.time(), report.git_commit())
    print(f"{page.name}, profile {cfg.profile}: device {device} ({report.device_name(device)}); "
          f"results -> {display_path(results)}" + (f"; cache -> {display_path(cache_dir)}" if cache_dir else ""))
    if hasattr(cfg, "deterministic"):
        print("deterministic algorithms " + ("on: seeded runs repeat exactly on this device (slower on a GPU)"
                                             if cfg.deterministic else "off: seeded GPU runs may differ slightly"))
    notes = [report.measured_run(page.name, cfg.profile, device.type), page.expected.get((cfg.profile, device.type))]
    print(f"expected time and memory ({cfg.profile} on {device.type}): "
          + ("; ".join(note for note in notes if note) or "not measured for this profile and device"))
    return run
