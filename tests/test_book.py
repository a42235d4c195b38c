"""Every chapter runs under nbval in the smoke profile and reproduces its golden tables; the book
pages each list their parameters for papermill (the build itself: ``test_site.py``).

Golden tables: ``tests/golden/<chapter>/<table>.csv`` are the tidy results of each chapter at the
``smoke`` profile on a CPU. A re-run must reproduce them: the same tables, columns and rows; text,
integer and boolean columns exactly (counts, predictions, class names); floating-point columns
(rates, losses, confidences) within a relative 1e-6 (summation order may differ across batchings);
timing columns (``seconds``) are not compared. A change that means to move a number regenerates them:
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
FLOAT_RTOL, FLOAT_ATOL = 1e-6, 1e-12


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


def table_differences(expected: pd.DataFrame, actual: pd.DataFrame) -> list[str]:
    """What differs between a golden table and a re-run's, by the rules in the module docstring."""
    if list(expected.columns) != list(actual.columns):
        return [f"columns {list(actual.columns)} != golden {list(expected.columns)}"]
    if len(expected) != len(actual):
        return [f"{len(actual)} rows != golden {len(expected)}"]
    problems = []
    for column in expected.columns:
        if column in UNCOMPARED:
            continue
        want, got = expected[column], actual[column]
        if pd.api.types.is_float_dtype(want) or pd.api.types.is_float_dtype(got):
            same = np.isclose(want.astype(float), got.astype(float), rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True)
        else:
            same = (want.astype(str) == got.astype(str)).to_numpy()
        if not same.all():
            row = int(np.argmin(same))
            problems.append(f"column {column!r}, row {row}: {got.iloc[row]!r} != golden {want.iloc[row]!r}")
    return problems


def test_table_comparison_catches_a_moved_number_and_ignores_timings():
    golden = pd.DataFrame({"eps": [0.0, 0.1], "correct": [5, 3], "accuracy": [0.5, 0.3], "seconds": [1.0, 2.0]})
    assert table_differences(golden, golden.assign(seconds=[9.0, 9.0])) == []
    assert table_differences(golden, golden.assign(accuracy=[0.5, 0.3 + 1e-9])) == []
    assert table_differences(golden, golden.assign(correct=[5, 4]))
    assert table_differences(golden, golden.assign(accuracy=[0.5, 0.31]))
    assert table_differences(golden, golden.iloc[:1])
    assert table_differences(golden, golden.rename(columns={"correct": "right"}))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_under_nbval_and_reproduces_its_golden_tables(notebook, tmp_path):
    results = tmp_path / "results"
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         str(notebook)], env={"NBUTILS_RESULTS": str(results), "NBUTILS_CACHE": str(tmp_path / "cache")}, timeout=1200)
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
    problems = {name: table_differences(pd.read_csv(golden / name), pd.read_csv(produced / name)) for name in expected}
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
