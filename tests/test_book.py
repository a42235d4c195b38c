"""Every chapter runs under nbval in the smoke profile and reproduces its golden tables; the book
pages each list their parameters for papermill (the build itself: ``test_site.py``).

Golden tables: ``tests/golden/<chapter>/<table>.csv`` are the tidy results of each chapter at the
``smoke`` profile on a CPU, run (written and compared) with PyTorch's portable CPU kernels
(``ATEN_CPU_CAPABILITY=default``, ``PORTABLE_KERNELS``): the same code path on every x86 CPU, where
the kernels PyTorch would pick (AVX2, AVX-512) differ from one CPU to the next. A re-run must
reproduce them on any machine of this kind; what still differs there (the thread count, oneDNN's own
choice of instructions) moves them within tolerances that also hold against the kernels PyTorch
picks (tested below). The same tables, columns and rows always; the values by what can move them
(:func:`table_differences`):

* text and booleans (names, classes, protocols) exactly;
* integers exactly (sizes, counts of images, trials, epochs, seeds, positions), except counts of
  outcomes of a trained model (``correct...``, ``n_successful``, ``n_unflipped``, ``zero_count``, and
  a cascade's ``n_attacked`` and ``n_broken``):
  within two binomial standard deviations plus two items;
* chapter 1 trains nothing: its floats (errors, confidences) come from forward passes of fixed
  weights and move with the kernels by rounding, and by the sign of a near-zero gradient flipping
  FGSM's step on a pixel or two: within 1e-3 + 1e-4 relative;
* every other chapter trains (a net, or a patch), and another CPU's rounding sends training down a
  slightly different path, like another seed: a rate (a fraction with a 95 % interval in the table)
  may move by sqrt(a**2 + b**2), a and b the two runs' 95 % half-widths: the 95 % bound of the
  difference of two such independent estimates (sqrt(2) half-widths where they agree; one
  half-width alone fails about one re-run in six); the lowest and highest of a rate over seeds
  (``accuracy_min``, ``accuracy_max``) move as the rate does; a rate at a threshold the run
  calibrates on its own data (a detector's ``detection_...``, ``false_alarm_...`` and ``evaded_...``
  at ID-95/99 or a held-out point) moves with its threshold as well, within twice that; a fraction
  with a count of images in the table but no interval (a training history's accuracies, over its
  ``n_train`` and ``n_val`` images; an attack's success or unconverged share), by its Wilson
  half-width at 99.9 % (``UNBOUNDED_Z``) plus two images; any other float (a loss, a distance, a
  log-likelihood) by 10 % plus 1e-3;
* sizes on a grid (a bisection's minimal eps: a median and its order-statistic bounds, in a table
  with a ``resolution`` column, the grid's step) move by one step more than the rule above allows,
  as one image crossing a grid point moves an order statistic by a whole step; the step itself
  compares exactly;
* a statistic one run cannot compute (NaN: an AUC over fewer than two successful attacks) where the
  other's says nothing either (taken over fewer than five outcomes, or with a 95 % interval wider
  than half of [0, 1]) passes; against an informative number, it fails;
* timing columns (``seconds``) are not compared.

What the tolerances still catch is tested on a real pipeline
(:func:`test_golden_tolerances_catch_a_wrong_eps_a_changed_attack_and_swapped_labels_but_not_another_cpu`):
a net trained and attacked as the chapters do, against itself with a wrong eps, another attack and
swapped labels, each of which must fail, and retrained under ``ATEN_CPU_CAPABILITY=default``, which
must pass. A change that means to move a number regenerates the tables:
``NBUTILS_UPDATE_GOLDEN=1 python3 -m pytest tests/test_book.py -k golden``, and says why in its commit.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = CHAPTERS + [ROOT / "book" / "sweeps.ipynb"]  # every page with a parameters cell
GOLDEN = ROOT / "tests" / "golden"
UNCOMPARED = ("seconds",)
#: Chapters whose tables come from fixed weights only (no training of any kind).
UNTRAINED = ("01_fgsm_imagenet",)
#: Integer columns that count outcomes of a trained model (prefixes), compared within sampling noise.
OUTCOME_COUNTS = ("correct", "n_successful", "n_unflipped", "zero_count", "n_attacked", "n_broken")
#: Columns that hold the number of images (or trials) a row's rates are taken over, in order of preference.
DENOMINATORS = ("n_images", "total", "n_trials", "n")
#: Rates a training history takes over a set of its own, and the column that counts it.
RATE_COUNTS = {"train_acc": "n_train", "val_acc": "n_val", "agreement": "n_val"}
#: The outcome count each statistic over a subset of the images is taken over.
SUBSET_COUNTS = {"auc_successful": "n_successful", "auc_unflipped": "n_unflipped"}
#: Fewer outcomes than this make a statistic over them uninformative (DeLong's interval included).
FEW_OUTCOMES = 5
#: Rates at a threshold calibrated on the run's own data (prefixes): they move with the threshold too.
THRESHOLD_RATES = ("detection_", "false_alarm_", "evaded_")
#: The column holding the step of the grid a row's sizes lie on (a bisection's): they move by one step more.
GRID_STEP = "resolution"
#: The normal quantile of the bound on a fraction the table gives no interval for (99.9 %, not 95 %):
#: a training accuracy follows its net's whole path, an attack's unconverged share its inner state,
#: and both moved by more than a binomial 95 % bound on CI's portable-kernel run of chapter 6
#: (0.040 to 0.0505 of 2,000 images, 0.32 to 0.46 of 100).
UNBOUNDED_Z = 3.29
#: The CPU kernels the chapters' golden runs use: PyTorch's portable ones, the same on every x86 CPU.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default"}


def run(args, env=None, **kwargs):
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "NBUTILS_PROFILE": "smoke", **(env or {})}, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    return result


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks in book/"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_chapters_carry_no_injected_parameters(notebook):
    # a papermill-injected cell would pin its profile and override NBUTILS_PROFILE under nbval
    import nbformat
    cells = nbformat.read(notebook, 4).cells
    assert not [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_ran_every_code_cell_once_top_to_bottom(notebook):
    # a code cell added or edited after the run shows no output of its own: its count is missing or out of order
    import nbformat
    counts = [c.execution_count for c in nbformat.read(notebook, 4).cells if c.cell_type == "code" and c.source.strip()]
    assert None not in counts and counts == sorted(set(counts)), counts


def _denominator(table: pd.DataFrame, column: str):
    """The number of images ``column``'s rate is taken over: its own count, else the row's (None: none)."""
    counts = [RATE_COUNTS[column]] if column in RATE_COUNTS else []
    return next((table[c].astype(float) for c in counts + list(DENOMINATORS) if c in table.columns), None)


def _rate_of(column: str) -> str:
    """The rate a column belongs to: itself, or the rate it bounds (``_low``, ``_high``) or ranges
    over seeds (``_min``, ``_max``)."""
    for suffix in ("_low", "_high", "_min", "_max"):
        column = column.removesuffix(suffix)
    return column


def _tolerances(column: str, golden: pd.DataFrame, actual: pd.DataFrame, trained: bool) -> np.ndarray | None:
    """Per-row tolerance of a float or outcome-count column (None: compare exactly); see the docstring."""
    if column == GRID_STEP:
        return None
    tolerance = _sampling_tolerances(column, golden, actual, trained)
    if tolerance is not None and GRID_STEP in golden.columns and pd.api.types.is_float_dtype(golden[column]):
        tolerance = tolerance + golden[GRID_STEP].astype(float).to_numpy()
    return tolerance


def _half_widths(rate: str, golden: pd.DataFrame, actual: pd.DataFrame) -> np.ndarray:
    """sqrt(a**2 + b**2) of the two runs' 95 % half-widths of ``rate`` (one run's where the other has none)."""
    a, b = ((t[f"{rate}_high"] - t[f"{rate}_low"]).abs().astype(float).to_numpy() / 2 for t in (golden, actual))
    a, b = np.where(np.isnan(a), b, a), np.where(np.isnan(b), a, b)
    return np.sqrt(a ** 2 + b ** 2)


def _sampling_tolerances(column: str, golden: pd.DataFrame, actual: pd.DataFrame, trained: bool) -> np.ndarray | None:
    """What another CPU's rounding moves a column by, as sampling noise (None: compare exactly)."""
    want = golden[column]
    if column.startswith(OUTCOME_COUNTS) and pd.api.types.is_integer_dtype(want) and trained:
        n = _denominator(golden, column)
        v = want.abs().astype(float).to_numpy()
        spread = v * (1 - v / n.to_numpy()) if n is not None else v
        return 2 + 2 * np.sqrt(np.clip(spread, 0, None))
    if not pd.api.types.is_float_dtype(want):
        return None
    values = want.astype(float).to_numpy()
    if not trained:
        return 1e-3 + 1e-4 * np.abs(values)
    rate = _rate_of(column)
    if f"{rate}_low" in golden.columns and f"{rate}_high" in golden.columns:
        widths = _half_widths(rate, golden, actual) + 1e-9
        return 2 * widths if column.startswith(THRESHOLD_RATES) else widths
    n = _denominator(golden, column)
    if n is not None and np.nanmin(values, initial=0) >= 0 and np.nanmax(values, initial=0) <= 1:
        p = np.nan_to_num(values)
        return UNBOUNDED_Z * np.sqrt(p * (1 - p) / n.to_numpy() + 1 / (4 * n.to_numpy() ** 2)) + 2 / n.to_numpy()
    return 0.1 * np.abs(values) + 1e-3


def _uninformative(column: str, expected: pd.DataFrame, actual: pd.DataFrame) -> np.ndarray:
    """Rows where ``column``'s statistic says nothing in either run: taken over fewer than
    ``FEW_OUTCOMES`` outcomes, or with a 95 % interval wider than half of [0, 1]."""
    rate = _rate_of(column)
    few = np.zeros(len(expected), dtype=bool)
    if SUBSET_COUNTS.get(rate) in expected.columns:
        few = np.fmin(*(t[SUBSET_COUNTS[rate]].astype(float).to_numpy() for t in (expected, actual))) < FEW_OUTCOMES
    if f"{rate}_low" not in expected.columns or f"{rate}_high" not in expected.columns:
        return few
    spans = [(t[f"{rate}_high"] - t[f"{rate}_low"]).astype(float).to_numpy() for t in (expected, actual)]
    return few | (np.fmax(spans[0], spans[1]) > 0.5)


def table_differences(expected: pd.DataFrame, actual: pd.DataFrame, *, trained: bool = True) -> list[str]:
    """What differs between a golden table and a re-run's beyond what another CPU can move
    (the module docstring's rules; ``trained``: the table comes from a chapter that trains)."""
    if list(expected.columns) != list(actual.columns):
        return [f"columns {list(actual.columns)} != golden {list(expected.columns)}"]
    if len(expected) != len(actual):
        return [f"{len(actual)} rows != golden {len(expected)}"]
    problems = []
    for column in expected.columns:
        if column in UNCOMPARED:
            continue
        want, got = expected[column], actual[column]
        tolerance = _tolerances(column, expected, actual, trained)
        if tolerance is not None:
            a, b = want.astype(float).to_numpy(), got.astype(float).to_numpy()
            tolerance = np.nan_to_num(tolerance, nan=0.0)  # a row without the numbers a tolerance needs: exact
            with np.errstate(invalid="ignore"):  # inf - inf: equal infinities compare as equal below
                same = (a == b) | (np.abs(a - b) <= tolerance) | (np.isnan(a) & np.isnan(b))
            same |= (np.isnan(a) ^ np.isnan(b)) & _uninformative(column, expected, actual)
        else:
            same = (want.astype(str) == got.astype(str)).to_numpy()
        if not same.all():
            row = int(np.argmin(same))
            problems.append(f"column {column!r}, row {row}: {got.iloc[row]!r} != golden {want.iloc[row]!r}"
                            + (f" (tolerance {tolerance[row]:.3g})" if tolerance is not None else ""))
    return problems


def test_table_comparison_catches_a_moved_number_and_ignores_timings():
    golden = pd.DataFrame({"eps": [0.0, 0.1], "correct": [5, 3], "accuracy": [0.5, 0.3], "seconds": [1.0, 2.0],
                           "name": ["a", "b"]})
    assert table_differences(golden, golden.assign(seconds=[9.0, 9.0]), trained=False) == []
    assert table_differences(golden, golden.assign(accuracy=[0.5, 0.3 + 1e-5]), trained=False) == []
    assert table_differences(golden, golden.assign(correct=[5, 4]), trained=False)
    assert table_differences(golden, golden.assign(accuracy=[0.5, 0.31]), trained=False)
    assert table_differences(golden, golden.iloc[:1])
    assert table_differences(golden, golden.rename(columns={"correct": "right"}))
    assert table_differences(golden, golden.assign(name=["a", "c"]))


def test_a_trained_rate_may_move_within_its_interval_and_not_beyond():
    golden = pd.DataFrame({"accuracy": [0.5], "accuracy_low": [0.4], "accuracy_high": [0.6], "n_images": [100],
                           "correct": [50], "total": [100]})
    assert table_differences(golden, golden.assign(accuracy=[0.56], accuracy_low=[0.46], correct=[56])) == []
    assert table_differences(golden, golden.assign(accuracy=[0.65]))
    wider = golden.assign(accuracy=[0.62], accuracy_low=[0.45], accuracy_high=[0.79])  # a run less sure of itself
    assert table_differences(golden, wider) == table_differences(wider, golden) == []  # either one the golden
    assert table_differences(golden, golden.assign(n_images=[101]))          # a count of images: exact
    assert table_differences(golden, golden.assign(correct=[70]))            # 20 of 100 is no rounding
    detected = pd.DataFrame({"detection_0.95": [0.5], "detection_0.95_low": [0.4], "detection_0.95_high": [0.6],
                             "auc_successful": [0.55], "auc_successful_low": [0.02], "auc_successful_high": [1.0]})
    assert table_differences(detected, detected.assign(**{"detection_0.95": [0.63]})) == []  # its threshold moved
    assert table_differences(detected, detected.assign(**{"detection_0.95": [0.8]}))
    assert table_differences(detected, detected.assign(auc_successful=[np.nan], auc_successful_low=[np.nan],
                                                       auc_successful_high=[np.nan])) == []  # 1 success, not 2
    informative = detected.assign(auc_successful_low=[0.5], auc_successful_high=[0.6])
    assert table_differences(informative, informative.assign(auc_successful=[np.nan]))
    two = informative.assign(n_successful=[2])                                  # over 2 successes: says nothing
    assert table_differences(two, two.assign(auc_successful=[np.nan], n_successful=[1])) == []
    assert table_differences(two.assign(n_successful=[40]), two.assign(auc_successful=[np.nan], n_successful=[40]))
    sizes = pd.DataFrame({"median": [0.05625], "median_low": [0.0375], "median_high": [0.075], "n": [50],
                          "resolution": [0.0375]})
    assert table_differences(sizes, sizes.assign(median_high=[0.1125])) == []  # one image crossed a grid point
    assert table_differences(sizes, sizes.assign(median_high=[0.3]))
    assert table_differences(sizes, sizes.assign(resolution=[0.01875]))
    assert table_differences(sizes, sizes.assign(median_high=[0.13])) == []
    continuous = sizes.drop(columns="resolution")                              # the same move without a grid
    assert table_differences(continuous, continuous.assign(median_high=[0.13]))
    history = pd.DataFrame({"train_acc": [0.041], "n_train": [2000], "val_acc": [0.6], "n_val": [20], "n_images": [2000]})
    assert table_differences(history, history.assign(train_acc=[0.035])) == []  # 12 of 2,000 images
    assert table_differences(history.assign(train_acc=[0.04]), history.assign(train_acc=[0.0505])) == []  # CI's
    assert table_differences(history, history.assign(train_acc=[0.06]))         # 38 of 2,000 is no rounding
    assert table_differences(history, history.assign(val_acc=[0.35])) == []     # 5 of its own 20, not of 2,000
    assert table_differences(history.assign(n_val=[2000]), history.assign(n_val=[2000], val_acc=[0.65]))
    over_seeds = golden.assign(accuracy_min=[0.45], accuracy_max=[0.55])       # a rate's extremes over seeds
    assert table_differences(over_seeds, over_seeds.assign(accuracy_min=[0.5])) == []
    assert table_differences(over_seeds, over_seeds.assign(accuracy_max=[0.7]))


def _attacked_accuracy_table(eps: float, attack: str = "fgsm", roll_labels: bool = False) -> pd.DataFrame:
    """A chapter's pipeline at smoke scale: an MNIST net trained one epoch on 2,000 images, then the
    accuracy of 500 test images under an attack reported at eps 0.1, with its Wilson interval."""
    import torch

    from nbutils import attacks, data, metrics, train
    from nbutils.models import mnist_model

    mnist, test = data.mnist(train=True).subset(range(2000)), data.mnist(train=False).subset(range(500))
    model = mnist_model("net", seed=0)
    train.fit(model, mnist.images, mnist.labels, test.images[:100], test.labels[:100], epochs=1, batch_size=64,
              lr=1e-3, progress=False)
    labels = test.labels.roll(1) if roll_labels else test.labels
    suite = [attacks.get(attack, eps=eps, **({"alpha": eps / 4, "steps": 10} if attack == "pgd" else {}), name="attack")]
    table = metrics.robustness_table({"net": model}, suite, test.images, labels, batch_size=250)
    return table.drop(columns=["seconds", "attack"]).assign(eps=0.1)


def test_golden_tolerances_catch_a_wrong_eps_a_changed_attack_and_swapped_labels_but_not_another_cpu(tmp_path):
    golden = _attacked_accuracy_table(0.1)
    for mutant in (_attacked_accuracy_table(0.08), _attacked_accuracy_table(0.1, attack="pgd"),
                   _attacked_accuracy_table(0.1, roll_labels=True)):
        assert table_differences(golden, mutant), mutant
    script = ("import sys; sys.path.insert(0, 'tests'); from test_book import _attacked_accuracy_table; "
              f"_attacked_accuracy_table(0.1).to_csv({str(tmp_path / 'other_cpu.csv')!r}, index=False)")
    run([sys.executable, "-c", script], env=PORTABLE_KERNELS, timeout=600)
    other_cpu = pd.read_csv(tmp_path / "other_cpu.csv")
    assert table_differences(golden, other_cpu[golden.columns]) == []


@pytest.mark.slow
@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_under_nbval_and_reproduces_its_golden_tables(notebook, tmp_path):
    results = tmp_path / "results"
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         str(notebook)], timeout=1200,
        env={"NBUTILS_RESULTS": str(results), "NBUTILS_CACHE": str(tmp_path / "cache"), **PORTABLE_KERNELS})
    produced = results / "smoke" / notebook.stem
    golden = GOLDEN / notebook.stem
    if os.environ.get("NBUTILS_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for table in produced.glob("*.csv"):
            shutil.copy(table, golden / table.name)
    expected = sorted(p.name for p in golden.glob("*.csv"))
    assert expected, f"no golden tables in {golden}"
    assert sorted(p.name for p in produced.glob("*.csv")) == expected
    trained = notebook.stem not in UNTRAINED
    problems = {name: table_differences(pd.read_csv(golden / name), pd.read_csv(produced / name), trained=trained)
                for name in expected}
    assert not any(problems.values()), {name: p for name, p in problems.items() if p}


def parameters_cell_names(notebook: Path) -> list[str]:
    """The names the ``parameters`` cell assigns, read by Python's own parser."""
    import ast

    import nbformat
    cell = next(c for c in nbformat.read(notebook, 4).cells if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    return [node.target.id if isinstance(node, ast.AnnAssign) else node.targets[0].id
            for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_lists_every_parameter_with_its_type_and_help_and_takes_it_without_warning(notebook, tmp_path, caplog):
    import logging

    import papermill
    names = parameters_cell_names(notebook)
    listed = papermill.inspect_notebook(str(notebook))
    assert list(listed) == names
    for name, info in listed.items():
        assert info["inferred_type_name"] not in ("None", "", None) and info["help"], name
    with caplog.at_level(logging.WARNING, logger="papermill"):
        papermill.execute_notebook(str(notebook), str(tmp_path / "prepared.ipynb"), prepare_only=True,
                                   parameters={name: None for name in names if name != "profile"} | {"profile": "smoke"})
    assert "unknown parameter" not in caplog.text
