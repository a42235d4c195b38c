"""Parameter sweeps over the chapters: a grid of papermill runs on Dask, resumable, aggregated.

A sweep spec (YAML) names a notebook, the parameters every run shares, and a grid (the product of
lists) or an explicit list of parameter sets, optionally repeated over seeds::

    notebook: ../03_defensive_distillation.ipynb   # relative to the spec file
    parameters: {profile: smoke}                    # shared by every run
    grid: {temperature: [1.0, 10.0, 100.0]}         # or  runs: [{temperature: 1.0}, ...]
    seeds: [0, 1, 2]                                # each point once per seed (parameter ``seed``)

:func:`run_sweep` (and ``python -m nbutils.sweep SPEC``) executes each run with papermill in a Dask
worker: a ``LocalCluster`` on the loopback interface by default (one worker per GPU, pinned to it,
on a multi-GPU machine), or the cluster whose scheduler address is given. Under the output folder::

    runs/<notebook>-<digest>/   one per run, named by the digest of (notebook, parameters):
        parameters.json, notebook.ipynb (kept when a run fails), results/ (its tidy tables),
        status.json (done or failed, the failing cell's error, worker, wall time)
    tables/<name>.csv, .parquet every run's table <name> concatenated, the run's parameters as columns
    tables/runs.csv, .parquet   one row per run: parameters, state, error and provenance
    sweep.json                  the spec and every run's status

A run is complete when its status says done and its tables are on disk; a re-run of the sweep skips
it, so a crashed or grown sweep only does what is missing. A run holds an exclusive lock on its
folder while it executes (released by the operating system if its worker dies), so two sweeps
sharing an output folder never execute one run twice or write one folder at once. A run lost with
its worker is retried by Dask on another worker.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pandas as pd

from .batching import progress_bar
from .chapter import default_cache_dir, display_path
from .files import BATCH_ENV, atomic_write_text, project_root

SPEC_KEYS = {"notebook", "parameters", "grid", "runs", "seeds", "name"}
#: Parameters a sweep sets itself in every run: its results folder.
OWNED = ("results_dir",)
#: Provenance fields copied onto every aggregated row.
PROVENANCE_COLUMNS = ("device", "device_name", "git_commit", "wall_time_s")


# ---------------------------------------------------------------------------------------------
# The spec and its runs

@dataclass(frozen=True)
class Run:
    """One execution of ``notebook`` (absolute path) with ``parameters`` (JSON-like values)."""

    notebook: Path
    parameters: dict

    @property
    def notebook_id(self) -> str:
        """The notebook as the digest sees it: its path in the checkout, else its absolute path."""
        root = project_root()
        return str(self.notebook.relative_to(root)) if root and self.notebook.is_relative_to(root) else str(self.notebook)

    @property
    def name(self) -> str:
        """``<notebook stem>-<12 hex digits of SHA-256 over (notebook, parameters) as sorted JSON>``."""
        text = json.dumps({"notebook": self.notebook_id, "parameters": self.parameters}, sort_keys=True)
        return f"{self.notebook.stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@dataclass
class SweepSpec:
    """A parsed sweep: the notebook, shared ``parameters``, the ``points`` (one dict per grid point or
    listed run) and the ``seeds`` each point repeats over (empty: no repeats)."""

    notebook: Path
    parameters: dict = field(default_factory=dict)
    points: list[dict] = field(default_factory=lambda: [{}])
    seeds: list[int] = field(default_factory=list)
    name: str = ""

    def runs(self) -> list[Run]:
        """Every run: shared parameters, then the point's, then the seed (in that order of precedence)."""
        seeds = self.seeds or [None]
        return [Run(self.notebook, {**self.parameters, **point, **({} if seed is None else {"seed": seed})})
                for point in self.points for seed in seeds]


def notebook_parameters(notebook: Path) -> list[str]:
    """The names papermill reads from the notebook's ``parameters`` cell."""
    import papermill
    return list(papermill.inspect_notebook(str(notebook)))


def _check_names(names, known: Sequence[str], where: str, notebook: Path) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown} for {notebook.name}; it takes {sorted(known)}")
    owned = sorted(set(names) & set(OWNED))
    if owned:
        raise ValueError(f"{where}: {owned} is set by the sweep itself (each run writes into its own folder)")


def _grid_points(grid) -> list[dict]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"spec 'grid' must map parameter names to lists of values, got {grid!r}")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"spec 'grid': {name!r} must be a non-empty list of values, got {values!r}")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def parse_spec(spec: Mapping, *, base: Path = Path(".")) -> SweepSpec:
    """A :class:`SweepSpec` from a spec's mapping; ``base`` resolves a relative ``notebook``.

    Raises ValueError naming the key for an unknown key, a missing notebook, a parameter the notebook
    does not take, an empty grid or list, or both ``grid`` and ``runs``; TypeError for seeds that are
    not integers.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a sweep spec must be a mapping with keys {sorted(SPEC_KEYS)}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown spec key(s) {unknown}; a spec takes {sorted(SPEC_KEYS)}")
    if "notebook" not in spec:
        raise ValueError("spec 'notebook' is missing: the notebook to run")
    notebook = (base / str(spec["notebook"])).resolve()
    if not notebook.is_file():
        raise ValueError(f"spec 'notebook': no notebook at {notebook}")
    if "grid" in spec and "runs" in spec:
        raise ValueError("give the spec a 'grid' or a list of 'runs', not both")
    known = notebook_parameters(notebook)
    parameters = dict(spec.get("parameters") or {})
    _check_names(parameters, known, "spec 'parameters'", notebook)
    if "grid" in spec:
        points = _grid_points(spec["grid"])
    elif "runs" in spec:
        points = spec["runs"]
        if not isinstance(points, list) or not points or not all(isinstance(p, Mapping) for p in points):
            raise ValueError(f"spec 'runs' must be a non-empty list of parameter mappings, got {points!r}")
        points = [dict(p) for p in points]
    else:
        points = [{}]
    for point in points:
        _check_names(point, known, "spec 'grid'/'runs'", notebook)
    seeds = list(spec.get("seeds") or [])
    if seeds:
        if "seed" not in known:
            raise ValueError(f"spec 'seeds': {notebook.name} has no 'seed' parameter")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise TypeError(f"spec 'seeds' must be a list of integers, got {seeds!r}")
    return SweepSpec(notebook, parameters, points, seeds, str(spec.get("name") or notebook.stem))


def load_spec(path: str | os.PathLike, overrides: Mapping | None = None) -> SweepSpec:
    """Read a YAML sweep spec; a relative ``notebook`` is taken from the spec file's folder.

    overrides: spec keys replacing the file's (``parameters`` is merged into the file's, so a
    smaller run of the same sweep changes only what it names), e.g.
    ``{"parameters": {"n_train": 500}, "seeds": [0, 1]}``.
    """
    import yaml
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no sweep spec at {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"sweep spec {path} is not valid YAML: {err}") from None
    if overrides:
        if not isinstance(spec, Mapping):
            raise ValueError(f"sweep spec {path} must be a mapping with keys {sorted(SPEC_KEYS)}")
        merged = {**(spec.get("parameters") or {}), **(overrides.get("parameters") or {})}
        spec = {**spec, **overrides, "parameters": merged}
    return parse_spec(spec, base=path.parent)


# ---------------------------------------------------------------------------------------------
# One run, in a worker

def run_folder(out: Path, run: Run) -> Path:
    """Where ``run`` writes under the sweep's output folder ``out``."""
    return Path(out) / "runs" / run.name


def read_status(folder: Path) -> dict | None:
    """A run folder's ``status.json``, or None when absent or unreadable (treated as not run)."""
    try:
        return json.loads((Path(folder) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path) -> bool:
    """Whether the run in ``folder`` finished: its status says done and every table it listed exists."""
    status = read_status(folder)
    return bool(status and status.get("state") == "done"
                and all((Path(folder) / "results" / f"{t}.json").is_file() for t in status.get("tables", [])))


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<folder>/.lock`` (waiting for another holder); the operating
    system releases it when the holding process ends, so a dead worker leaves no stale lock."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _error_message(err: BaseException) -> tuple[str, int | None]:
    """The failing cell's ``ename: evalue`` (papermill) or the exception's, and the cell's number."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:
        return f"{ename}: {evalue}", getattr(err, "exec_count", None)
    return f"{type(err).__name__}: {err}", None


def execute_run(notebook: str, parameters: dict, folder: str, *, kernel: str = "python3") -> dict:
    """Execute one run into ``folder`` (in a worker) and return its status.

    Waits for the folder's lock; skips a run that another sweep completed meanwhile. Papermill writes
    ``notebook.ipynb`` after each cell, so a failed run keeps its partial notebook; its status holds
    the failing cell's error. The status is written atomically, last. Sets ``$NBUTILS_BATCH`` in the
    worker, for its kernels (no live widgets in a batch run: see :func:`nbutils.plots.fgsm_explorer`).
    """
    import papermill

    folder = Path(folder)
    with folder_lock(folder):
        if is_complete(folder):
            return {**read_status(folder), "skipped": True}
        results = folder / "results"
        atomic_write_text(folder / "parameters.json",
                          json.dumps({"notebook": notebook, "parameters": parameters}, indent=1) + "\n")
        started = time.time()
        status = {"worker": f"{socket.gethostname()}:{os.getpid()}", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.environ[BATCH_ENV] = "1"  # inherited by the kernel: a run in a worker is a batch run
            papermill.execute_notebook(notebook, str(folder / "notebook.ipynb"),
                                       parameters={**parameters, "results_dir": str(results)},
                                       cwd=str(Path(notebook).parent), kernel_name=kernel, progress_bar=False,
                                       log_output=False, request_save_on_cell_execute=True,
                                       extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
            tables = sorted(p.stem for p in results.glob("*.json"))
            status.update(state="done", tables=tables)
        except Exception as err:  # the run failed; the sweep goes on and records why
            message, cell = _error_message(err)
            status.update(state="failed", error=message, cell=cell,
                          traceback=traceback.format_exception_only(type(err), err)[-1].strip()[:2000])
        status["wall_time_s"] = round(time.time() - started, 1)
        atomic_write_text(folder / "status.json", json.dumps(status, indent=1) + "\n")
        return status


# ---------------------------------------------------------------------------------------------
# The cluster

def local_cluster(workers: int | None = None, *, host: str = "127.0.0.1"):
    """A Dask ``LocalCluster`` of worker processes on ``host``, one thread each.

    workers: how many; default one per GPU (each pinned to its GPU by ``CUDA_VISIBLE_DEVICES``) when
    there are GPUs, else one per 4 CPU cores (at least one). CPU threads are shared out evenly
    (``OMP_NUM_THREADS``), so parallel runs do not oversubscribe the cores. The dashboard listens on
    a free port of ``host`` (``client.dashboard_link``).
    """
    import torch
    from distributed import LocalCluster

    gpus = torch.cuda.device_count()
    cores = os.cpu_count() or 1
    n = workers or (gpus or max(1, cores // 4))
    if n < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    threads = str(max(1, cores // n))
    options = dict(host=host, threads_per_worker=1, processes=True, dashboard_address=":0",
                   env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    if gpus > 1:
        cluster = _pinned_gpu_cluster_class()(n_workers=0, **options)
        cluster.scale(n)
        return cluster
    return LocalCluster(n_workers=n, **options)


def _pinned_gpu_cluster_class():
    from distributed import LocalCluster

    class PinnedGPUCluster(LocalCluster):
        """A LocalCluster whose worker i sees only GPU i mod (number of GPUs), as dask-cuda's
        ``LocalCUDACluster`` pins them."""

        def new_worker_spec(self):
            import copy

            import torch
            index = len(self.worker_spec)
            while index in self.worker_spec:
                index += 1
            spec = copy.deepcopy(self.new_spec)
            env = dict(spec["options"].get("env") or {})
            env["CUDA_VISIBLE_DEVICES"] = str(index % max(1, torch.cuda.device_count()))
            spec["options"].update(env=env, name=index)
            return {index: spec}

    return PinnedGPUCluster


@contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """A Dask client: to the scheduler at ``scheduler`` (e.g. ``tcp://10.0.0.5:8786``), else to a
    fresh :func:`local_cluster` that is closed on exit."""
    from distributed import Client

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with local_cluster(workers) as cluster, Client(cluster) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# The sweep

@dataclass
class SweepResult:
    """What a sweep left: its output folder, one status row per run (``status``) and the aggregated
    tables by name (``tables``, including ``runs``)."""

    out: Path
    status: pd.DataFrame
    tables: dict[str, pd.DataFrame]

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise KeyError(f"no aggregated table {name!r}; the sweep has {sorted(self.tables)}")
        return self.tables[name]


def _status_row(run: Run, folder: Path, status: dict | None) -> dict:
    status = status or {"state": "pending"}
    return {"run": run.name, **{k: status.get(k) for k in ("state", "error", "cell", "wall_time_s", "worker")},
            "skipped": bool(status.get("skipped")), "parameters": run.parameters, "folder": str(folder)}


def _write_sweep_json(out: Path, spec: SweepSpec, rows: list[dict]) -> None:
    record = {"name": spec.name, "notebook": str(spec.notebook), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "counts": pd.Series([r["state"] for r in rows]).value_counts().to_dict(), "runs": rows}
    atomic_write_text(out / "sweep.json", json.dumps(record, indent=1, default=str) + "\n")


def _lost_worker_status(err: BaseException) -> dict:
    message, _ = _error_message(err)
    return {"state": "failed", "error": f"worker lost (retried by Dask until it gave up): {message}"}


def run_sweep(spec: SweepSpec | str | os.PathLike, *, out: str | os.PathLike | None = None,
              scheduler: str | None = None, workers: int | None = None, client=None,
              progress: bool = True, show_dashboard: bool = False) -> SweepResult:
    """Run every incomplete run of ``spec`` on Dask, then aggregate all complete runs' tables.

    spec: a :class:`SweepSpec` or the path of a YAML spec. out: the sweep's folder (default
    ``$NBUTILS_CACHE/sweeps/<spec name>``, else ``runs/sweeps/<spec name>`` in the checkout). scheduler: a Dask scheduler's address; None starts
    a :func:`local_cluster` of ``workers`` workers (``client``: use this Dask client instead). A
    failed run is recorded in ``sweep.json`` and the status with its error; the others go on.
    show_dashboard: print the Dask dashboard's address (the command line does; a page should not
    publish a machine's address). Returns a :class:`SweepResult`.
    """
    from distributed import as_completed

    spec = spec if isinstance(spec, SweepSpec) else load_spec(spec)
    out = Path(out) if out else default_cache_dir("sweeps") / spec.name
    out.mkdir(parents=True, exist_ok=True)
    runs = spec.runs()
    folders = [run_folder(out, run) for run in runs]
    statuses = {run.name: ({**read_status(f), "skipped": True} if is_complete(f) else None)
                for run, f in zip(runs, folders)}
    todo = [(run, f) for run, f in zip(runs, folders) if statuses[run.name] is None]
    print(f"sweep {spec.name}: {len(runs)} runs of {spec.notebook.name}, {len(runs) - len(todo)} complete, "
          f"{len(todo)} to run -> {display_path(out)}")

    def rows() -> list[dict]:
        return [_status_row(run, f, statuses[run.name]) for run, f in zip(runs, folders)]

    _write_sweep_json(out, spec, rows())
    if todo:
        with (nullcontext(client) if client is not None else connect(scheduler, workers)) as active:
            if show_dashboard and getattr(active, "dashboard_link", None):
                print(f"Dask dashboard: {active.dashboard_link}")
            futures = {active.submit(execute_run, str(run.notebook), run.parameters, str(f), pure=False): run
                       for run, f in todo}
            bar = progress_bar(as_completed(futures), desc=spec.name, total=len(futures), enabled=progress)
            for future in bar:
                run = futures[future]
                try:
                    statuses[run.name] = future.result()
                except Exception as err:  # the task itself failed: its worker died too often
                    statuses[run.name] = _lost_worker_status(err)
                _write_sweep_json(out, spec, rows())
    status = pd.DataFrame(rows())
    failed = status[status.state != "done"]
    print(f"{(status.state == 'done').sum()} done, {len(failed)} failed" +
          "".join(f"\n  {r.run}: {r.error}" for r in failed.itertuples()))
    tables = aggregate(out, runs)
    return SweepResult(out, status, tables)


# ---------------------------------------------------------------------------------------------
# Aggregation

def _cell_value(value):
    """A parameter as a table cell: scalars as they are, lists and mappings as JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _parameter_columns(parameters: dict, taken: Sequence[str]) -> dict:
    """The run's parameters as columns, each named as the parameter unless the table has a column of
    that name, then ``param_<name>``."""
    return {(f"param_{k}" if k in taken else k): _cell_value(v) for k, v in parameters.items()}


def _read_table(path: Path) -> tuple[pd.DataFrame, dict]:
    record = json.loads(path.read_text())
    return pd.DataFrame(record["rows"], columns=record["columns"]), record.get("provenance", {})


def _parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that mix types (e.g. numbers and text) as text, which Parquet can store."""
    mixed = [c for c in frame.columns if frame[c].dtype == object
             and len({type(v) for v in frame[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}) > 1]
    return frame.astype({c: str for c in mixed})


def aggregate(out: str | os.PathLike, runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """Concatenate every complete run's tables by name, with ``run``, the run's parameters and
    provenance (:data:`PROVENANCE_COLUMNS`) as leading columns; plus a ``runs`` table with one row
    per run (its state, error, parameters, provenance). Writes each as ``<out>/tables/<name>.csv``
    and ``.parquet``; returns them by name."""
    out = Path(out)
    pieces: dict[str, list[pd.DataFrame]] = {}
    run_rows = []
    for run in runs:
        folder = run_folder(out, run)
        status = read_status(folder) or {"state": "pending"}
        row = {"run": run.name, "state": status.get("state"), "error": status.get("error")}
        if is_complete(folder):
            for name in status["tables"]:
                table, prov = _read_table(folder / "results" / f"{name}.json")
                if "run" in table.columns:
                    raise ValueError(f"table {name!r} of {run.notebook.name} has a column 'run', which a sweep's "
                                     "tables keep for the run's name: rename it in the chapter")
                taken = [*table.columns, "run", *PROVENANCE_COLUMNS]
                lead = {"run": run.name, **_parameter_columns(run.parameters, taken),
                        **{k: prov.get(k) for k in PROVENANCE_COLUMNS}}
                pieces.setdefault(name, []).append(table.assign(**lead)[list(lead) + list(table.columns)])
                row.update({k: prov.get(k) for k in PROVENANCE_COLUMNS},
                           torch=prov.get("versions", {}).get("torch"))
        run_rows.append({**row, **_parameter_columns(run.parameters, [*row, *PROVENANCE_COLUMNS, "torch"])})
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in sorted(pieces.items())}
    tables["runs"] = pd.DataFrame(run_rows)
    for name, table in tables.items():
        atomic_write_text(out / "tables" / f"{name}.csv", table.to_csv(index=False))
        _write_parquet(_parquet_ready(table), out / "tables" / f"{name}.parquet")
    return tables


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    from .files import atomic_path
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


# ---------------------------------------------------------------------------------------------
# The command

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nbutils.sweep SPEC [--scheduler ADDRESS] [--workers N] [--out DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nbutils.sweep",
        description="Run a sweep of papermill runs on Dask: a LocalCluster on this machine by default, or "
                    "the cluster at --scheduler. Re-running it skips complete runs.")
    parser.add_argument("spec", help="the sweep's YAML spec")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--workers", type=int, help="workers of the local cluster (default: one per GPU, "
                                                    "else one per 4 CPU cores)")
    parser.add_argument("--out", help="the sweep's folder (default $NBUTILS_CACHE/sweeps/<spec name>, "
                                      "else runs/sweeps/<spec name>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        result = run_sweep(args.spec, out=args.out, scheduler=args.scheduler, workers=args.workers,
                           progress=not args.no_progress, show_dashboard=True)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"tables: {', '.join(sorted(result.tables))} in {display_path(result.out / 'tables')}")
    return 0 if (result.status.state == "done").all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
