"""Tidy results with provenance, and paper-versus-run tables.

Every chapter writes its tables as CSV beside a JSON file of provenance (what ran, on what, with
which versions, how long), through atomic writes, so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from .files import atomic_write_text, project_root

VERSIONED = ("torch", "torchvision", "timm", "numpy", "pandas", "nbutils", "torchattacks", "scikit-learn")


def package_versions(names=VERSIONED) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers (absent ones omitted)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The checkout's HEAD commit (with '+dirty' if a tracked file outside the chapters' outputs,
    ``results/`` and ``runs/``, is modified: a chapter or a sweep rewriting committed results leaves
    the code it runs unchanged), ``$NBUTILS_GIT_COMMIT`` when set (a copy of the tree without its .git,
    e.g. on a remote GPU), or None outside a git checkout."""
    if os.environ.get("NBUTILS_GIT_COMMIT"):
        return os.environ["NBUTILS_GIT_COMMIT"]
    root = project_root()
    if root is None:
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)runs"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def device_name(device: torch.device | str) -> str:
    """A readable name for the device: the GPU's product name, or the CPU's and its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def cpu_description() -> dict:
    """The CPU's model name (Linux's /proc/cpuinfo, else :func:`platform.processor`), the vector
    kernels PyTorch dispatches to on it (ATen's capability: "AVX512", "AVX2", or "DEFAULT" under
    ``ATEN_CPU_CAPABILITY=default``) and the thread count. A seeded CPU run repeats exactly only
    where all three match: each changes the order of floating-point sums, hence every trained net."""
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"model": model, "kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory so far in MiB: PyTorch's peak allocation on a GPU, the process's peak resident set
    on the CPU (Linux and macOS report it in different units)."""
    device = torch.device(device)
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def provenance(*, seed: int | None, device: torch.device | str, profile: str, started: float, commit: str | None = None,
               **details) -> dict:
    """What produced a result: versions, device (and the CPU, :func:`cpu_description`), seed, profile,
    wall time since ``started``, the code's commit (``commit``, read when the run started, before it
    wrote anything; else read now) and ``details`` (model and weights ids, dataset and count,
    parameters). peak_memory_mb: the process's peak resident memory on the CPU, or the peak memory
    PyTorch allocated on the GPU."""
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "profile": profile, "seed": seed,
            "device": str(device), "device_name": device_name(device), "wall_time_s": round(time.time() - started, 1),
            "peak_memory_mb": peak_memory_mb(device), "cpu": cpu_description(),
            "git_commit": commit or git_commit(), "platform": platform.platform(), "versions": package_versions(),
            **details}


def write_results(table: pd.DataFrame, name: str, folder: Path, provenance: dict) -> tuple[Path, Path]:
    """Write ``<folder>/<name>.csv`` and ``<folder>/<name>.json`` (provenance plus the rows)."""
    folder = Path(folder)
    csv_path = atomic_write_text(folder / f"{name}.csv", table.to_csv(index=False))
    record = {"provenance": provenance, "columns": list(table.columns), "rows": json.loads(table.to_json(orient="records"))}
    json_path = atomic_write_text(folder / f"{name}.json", json.dumps(record, indent=1, default=str) + "\n")
    return csv_path, json_path


def paper_vs_run(paper: pd.DataFrame, run: pd.DataFrame, on: list[str], values: list[str],
                 extra: list[str] = ()) -> pd.DataFrame:
    """Join the paper's numbers with this run's on the key columns ``on``.

    Returns the keys, the run's ``extra`` columns (e.g. weights, so that several runs of one paper
    row stay separate rows), then for each value column v: ``v (paper)``, ``v (run)``,
    ``v (run - paper)``. Rows missing on either side keep NaN, so nothing is dropped silently.
    """
    extra = list(extra)
    merged = paper[on + values].merge(run[on + extra + values], on=on, how="outer", suffixes=(" (paper)", " (run)"))
    columns = list(on) + extra
    for v in values:
        merged[f"{v} (run - paper)"] = merged[f"{v} (run)"] - merged[f"{v} (paper)"]
        columns += [f"{v} (paper)", f"{v} (run)", f"{v} (run - paper)"]
    return merged[columns]


def stack_rates(table: pd.DataFrame, rates: dict[str, str]) -> pd.DataFrame:
    """Long form of several rate columns, for one panel per rate: ``rates`` maps a column to its
    label; each row of ``table`` becomes one row per rate with ``rate`` (the label), ``value`` and,
    where the table has ``<column>_low`` and ``<column>_high``, ``low`` and ``high``."""
    parts = []
    for column, label in rates.items():
        bounds = {f"{column}_low": "low", f"{column}_high": "high"}
        other = [c for r in rates for c in (r, f"{r}_low", f"{r}_high") if c in table.columns and c != column
                 and c not in bounds]
        parts.append(table.drop(columns=other).rename(columns={column: "value", **bounds}).assign(rate=label))
    return pd.concat(parts, ignore_index=True)


def readable(column) -> str:
    """A column name as a header a reader can read: words, not snake_case ("target_accuracy" ->
    "target accuracy")."""
    return str(column).replace("_", " ")


def view(table: pd.DataFrame, *, intervals=(), digits: int = 2, caption: str = "", keep: Sequence[str] = (),
         formats: dict[str, str] | None = None, percent: Sequence[str] = ()):
    """``table`` as a reader should see it (a pandas Styler): no index; the columns that hold one value
    on every row moved into the caption and those with no value dropped (those in ``keep`` stay);
    floats to ``digits`` places, a missing value as a dash, counts (columns named ``n``, ``n_*``,
    ``correct`` or ``total``) without decimals; each rate in ``intervals`` shown as
    ``rate [low, high]``; headers as words (:func:`readable`); text escaped for HTML. formats: {column:
    format string} for columns shown otherwise, e.g. ``{"eps": "{:g}"}``.

    intervals: column names whose bounds are ``<name>_low`` and ``<name>_high``, or a mapping
    {column: (low column, high column)}; the bound columns are dropped from the view.
    percent: columns that hold fractions (rates, and differences of rates) to show as percentages
    (their interval bounds too); the table itself is not changed. Results keep fractions: this is
    the one place they become percent."""
    import hashlib

    if table.columns.duplicated().any():
        raise ValueError(f"duplicate column names: {list(table.columns[table.columns.duplicated()])}")
    bounds = dict(intervals) if isinstance(intervals, dict) else {c: (f"{c}_low", f"{c}_high") for c in intervals}
    missing = [c for column, pair in bounds.items() for c in (column, *pair) if c not in table.columns]
    missing += [c for c in percent if c not in table.columns]
    if missing:
        raise ValueError(f"interval or percent columns {missing} are not in the table, which has {list(table.columns)}")
    formats = dict(formats or {})
    scaled = [c for column in percent for c in (column, *bounds.get(column, ()))]
    table = table.assign(**{c: 100 * table[c] for c in scaled})

    def text(column, value) -> str:
        if pd.isna(value):
            return "–"
        if column in formats:
            return formats[column].format(value)
        return f"{value:.{digits}f}" if isinstance(value, float) and not float(value).is_integer() else str(value)

    shown = table.copy()
    for column, (low, high) in bounds.items():
        shown[column] = [("–" if pd.isna(v) else f"{v:.{digits}f}" + ("" if pd.isna(lo) or pd.isna(hi) else
                                                                    f" [{lo:.{digits}f}, {hi:.{digits}f}]"))
                         for v, lo, hi in zip(shown[column], shown[low], shown[high])]
    shown = shown.drop(columns=[c for pair in bounds.values() for c in pair])
    empty = [] if shown.empty else [c for c in shown.columns if c not in keep and shown[c].isna().all()]
    constant = [c for c in shown.columns if len(shown) > 1 and c not in [*keep, *empty] and shown[c].nunique() == 1
                and shown[c].notna().all()]
    title = "; ".join(([caption] if caption else []) + [f"{readable(c)}: {text(c, shown[c].iloc[0])}" for c in constant])
    shown = shown.drop(columns=constant + empty)
    counts = {c: "{:.0f}" for c in shown.columns if str(c) in ("n", "correct", "total") or str(c).startswith("n_")}
    chosen = counts | {c: f for c, f in formats.items() if c in shown.columns}
    shown = shown.rename(columns=readable)
    styler = shown.style.hide(axis="index").format({readable(c): f for c, f in chosen.items()}, precision=digits,
                                                  na_rep="–", escape="html")
    styler.set_uuid("v" + hashlib.sha1((title + shown.to_csv()).encode()).hexdigest()[:10])  # same table, same HTML
    return styler.set_table_attributes('class="dataframe"').set_caption(title)


def print_provenance(record: dict) -> None:
    """Print a provenance record as aligned key: value lines."""
    for key, value in record.items():
        print(f"{key:>14}: {value}")
    sys.stdout.flush()


#: The committed runs' time and memory, by chapter, profile and device type, read from ``results/``
#: by :func:`measured_runs` and shipped with the package (Colab installs it without ``results/``).
MEASURED_FILE = Path(__file__).with_name("measured_runs.json")


def measured_runs(results_root: Path) -> dict:
    """{chapter: {profile: {device type: {wall_time_s, peak_memory_mb, device_name}}}} from the
    provenance of the committed results (``results_root/<profile>/<chapter>/*.json``); peak memory
    is None for runs made before it was recorded."""
    runs: dict = {}
    for table in sorted(Path(results_root).glob("*/*/*.json")):
        record = json.loads(table.read_text()).get("provenance", {})
        chapter, profile = table.parent.name, table.parent.parent.name
        if "wall_time_s" in record and "device" in record:
            device = torch.device(record["device"]).type
            runs.setdefault(chapter, {}).setdefault(profile, {})[device] = {
                "wall_time_s": record["wall_time_s"], "peak_memory_mb": record.get("peak_memory_mb"),
                "device_name": record.get("device_name")}
    return runs


def measured_run(chapter: str, profile: str, device_type: str) -> str | None:
    """How long, and with how much memory, the committed run of this chapter, profile and device type
    took, in words; None when there is none."""
    runs = json.loads(MEASURED_FILE.read_text()) if MEASURED_FILE.is_file() else {}
    found = runs.get(chapter, {}).get(profile, {}).get(device_type)
    if found is None:
        return None
    memory = (f"peak memory {found['peak_memory_mb'] / 1024:.1f} GiB" if found["peak_memory_mb"] is not None
              else "memory not recorded")
    return f"the committed run took {found['wall_time_s'] / 60:.1f} min, {memory}, on {found['device_name']}"


def main(argv: list[str] | None = None) -> int:
    """``python -m nbutils.report [RESULTS]``: rewrite the package's table of measured runs from the
    committed results (default: the checkout's ``results/``)."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else (project_root() or Path.cwd()) / "results"
    atomic_write_text(MEASURED_FILE, json.dumps(measured_runs(root), indent=1, sort_keys=True) + "\n")
    print(f"{MEASURED_FILE.name}: {sum(len(p) for c in measured_runs(root).values() for p in c.values())} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------------
# What reproduced: one row per chapter, read from the committed results

#: The profiles whose committed results speak for a chapter, the largest first.
PROFILE_PREFERENCE = ("paper", "offline", "cpu", "reduced", "offline-cpu")


def _committed(results_root: Path, chapter: str, table: str) -> tuple[pd.DataFrame, str] | None:
    """The chapter's ``table`` from its largest committed profile, and that profile; None if none."""
    for profile in PROFILE_PREFERENCE:
        path = Path(results_root) / profile / chapter / f"{table}.csv"
        if path.is_file():
            return pd.read_csv(path), profile
    return None


def _row(chapter: str, claim: str, found, pick, columns: tuple[str, str, str, str], why: str, *,
         for_scale: str | None = None) -> dict:
    """A summary row: the paper's number and the run's with its interval (``columns``: paper, run, low,
    high) from the row ``pick`` selects in the committed table; the verdict says whether the paper's
    number lies in the interval, or is ``for_scale`` (e.g. "another model") when the run cannot
    reproduce it."""
    if found is None:
        return {"chapter": chapter, "claim": claim, "profile": "not run", "paper": float("nan"), "run": float("nan"),
                "low": float("nan"), "high": float("nan"), "verdict": "not run yet", "why": why}
    table, profile = found
    paper, run, low, high = (float(table[pick(table)].iloc[0][c]) for c in columns)
    verdict = (f"{for_scale}: for scale only" if for_scale else "reproduced" if low <= paper <= high
               else "not reproduced: the paper lies above" if paper > high else "not reproduced: the paper lies below")
    return {"chapter": chapter, "claim": claim, "profile": profile, "paper": paper, "run": run, "low": low,
            "high": high, "verdict": verdict, "why": why}


#: The survey's "up to 50 %" for PGD adversarial training (Madry et al.'s CIFAR-10 figure, quoted for MNIST).
SURVEY_PGD_TRAINING = 0.5


def _with_column(found, name: str, value: float):
    """``found`` (a committed table and its profile, or None) with a constant column added."""
    return None if found is None else (found[0].assign(**{name: value}), found[1])


def reproduction_summary(results_root: str | os.PathLike) -> pd.DataFrame:
    """What reproduced, chapter by chapter: each paper's key number, this book's committed run of it
    (with its 95 % interval, from the largest committed profile under ``results_root``), whether the
    paper's number lies inside that interval, and why it does or does not, in a phrase. Rates are
    fractions."""
    root = Path(results_root)
    rows = [
        _row("1. FGSM on ImageNet", "top-1 error under FGSM at eps 0.02 (normalised)",
             _committed(root, "01_fgsm_imagenet", "fgsm_sweep_paper_vs_run"),
             lambda t: t["eps"] == 0.02, ("top1_error (paper)", "top1_error (run)", "top1_error_low", "top1_error_high"),
             "the paper's ResNet-101 cannot be downloaded here; the stand-in errs as often at the same budget",
             for_scale="another model"),
        _row("2. Adversarial patch", "top-1 success of the 64-pixel piggy-bank patch",
             _committed(root, "02_adversarial_patch", "tables_7_12_paper_vs_run"),
             lambda t: (t["target"] == "piggy bank") & (t["size"] == 64), ("top1 (paper)", "top1 (run)", "top1_low",
                                                                            "top1_high"),
             "the stand-in, not the paper's models; the tutorial's stacked placements inflate every rate",
             for_scale="another model"),
        _row("3. Defensive distillation", "distilled net's accuracy under FGSM at eps 0.3, as the source scores it",
             _committed(root, "03_defensive_distillation", "tables_13_14_seeds"),
             lambda t: (t["model"] == "distilled") & (t["eps"] == 0.3) & (t["protocol"] == "source"),
             ("accuracy (paper)", "accuracy (run)", "accuracy_low", "accuracy_high"),
             "the defence masks the gradient: margin attacks leave it near 0"),
        _row("4. Mixed batches", "mixed net's accuracy on the stale adversarial test set",
             _committed(root, "04_mixed_batch_training", "table_1_paper_vs_run"),
             lambda t: (t["model"] == "mixed") & (t["images"] == "adversarial, stale (posts)"),
             ("accuracy (paper)", "accuracy (run)", "accuracy_low", "accuracy_high"),
             "a stale, transfer evaluation; PGD breaks the net"),
        _row("5. I-defender", "detection AUC, black-box FGSM at eps 0.3, MNIST",
             _committed(root, "05_gmm_detection", "tables_3_5_paper_vs_run"),
             lambda t: (t["dataset"] == "mnist") & (t["eps"] == 0.3),
             ("I-defender AUC (paper)", "auc_all", "auc_all_low", "auc_all_high"),
             "see the chapter's four candidate causes"),
        _row("6. Evaluating defences", "PGD-trained net's accuracy under the adaptive cascade, MNIST eps 0.3 "
                                       "(the survey: \"up to 50 %\")",
             _with_column(_committed(root, "06_evaluating_defences", "report_card"), "survey", SURVEY_PGD_TRAINING),
             lambda t: (t["dataset"] == "mnist") & (t["defence"] == "PGD adversarial training"),
             ("survey", "adaptive", "adaptive_low", "adaptive_high"),
             "the survey's 50 % is CIFAR-10's; Madry et al. report about 89-93 % on MNIST, at full training",
             for_scale="another dataset"),
    ]
    return pd.DataFrame(rows)
