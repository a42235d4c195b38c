"""Every reading with an interval typed in a page's text, "0.785 [0.770, 0.800]" or
"73.8 % [71.7, 75.7]", is found in that page's committed results: the value and both bounds, at
the precision typed, in one row of one of its tables (``results/<profile>/<page>/*.csv``).

A re-execution that moves a number then fails here until the text is rewritten from the new
results, and a typo in a reading fails at once. Lone numbers are not checked: at three decimals
almost any value occurs somewhere among a chapter's thousands of table cells, so such a check could
not fail.
"""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_book import NOTEBOOKS, ROOT

_NUMBER = r"-?\d+(?:\.\d+)?"
#: A value, an optional percent sign and an optional "top-1"/"top-5", then "[low, high]".
READING = re.compile(rf"(?<![\w.\-])({_NUMBER})(\s*%)?(?:\s+top-[15])?\s*\[({_NUMBER}),\s*({_NUMBER})\]")


def readings(markdown: str) -> list[tuple[str, str, str, bool]]:
    """The ``(value, low, high, percent)`` readings in ``markdown``, as typed."""
    return [(m[1], m[3], m[4], bool(m[2])) for m in READING.finditer(markdown)]


def _matches(values: np.ndarray, typed: str) -> np.ndarray:
    """Which of ``values`` print as ``typed`` at its number of decimals (half a last digit either way)."""
    decimals = len(typed.partition(".")[2])
    return np.abs(values - float(typed)) <= 0.5 * 10.0 ** -decimals + 1e-9


def found_in(tables: list[pd.DataFrame], value: str, low: str, high: str, percent: bool) -> bool:
    """Whether one row of one table holds ``value``, ``low`` and ``high`` (fractions read as
    percent where ``percent``, or where the reading only fits them so)."""
    for table in tables:
        numbers = table.select_dtypes("number").to_numpy(dtype=float)
        for scale in ((100.0,) if percent else (1.0, 100.0)):
            scaled = numbers * scale
            rows = (_matches(scaled, value).any(axis=1) & _matches(scaled, low).any(axis=1)
                    & _matches(scaled, high).any(axis=1))
            if rows.any():
                return True
    return False


def page_tables(page: Path) -> list[pd.DataFrame]:
    """Every table a page committed, over all its profiles."""
    return [pd.read_csv(path) for path in sorted((ROOT / "results").glob(f"*/{page.stem}/*.csv"))]


def unfound_readings(page: Path) -> list[str]:
    notebook = json.loads(page.read_text(encoding="utf-8"))
    tables = page_tables(page)
    return [f"cell {index}: {value}{' %' if percent else ''} [{low}, {high}]"
            for index, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "markdown"
            for value, low, high, percent in readings("".join(cell["source"]))
            if not found_in(tables, value, low, high, percent)]


@pytest.mark.parametrize("page", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_interval_reading_in_a_page_is_in_its_committed_results(page):
    assert page_tables(page), f"{page.stem} has no committed results"
    assert unfound_readings(page) == []


def test_readings_are_read_as_typed_including_percent_and_top_k():
    text = "gives 0.785 [0.770, 0.800]; 73.8 % [71.7, 75.7] and 20.7 % top-1 [18.3, 23.3], top-5 [1, 2]"
    assert readings(text) == [("0.785", "0.770", "0.800", False), ("73.8", "71.7", "75.7", True),
                              ("20.7", "18.3", "23.3", True)]


def test_a_reading_is_found_only_with_its_value_and_both_bounds_in_one_row():
    tables = [pd.DataFrame({"model": ["a", "b"], "auc": [0.7849, 0.9031], "auc_low": [0.7699, 0.8921],
                            "auc_high": [0.79995, 0.9130]})]
    assert found_in(tables, "0.785", "0.770", "0.800", False)
    assert found_in(tables, "78.5", "77.0", "80.0", True)
    assert not found_in(tables, "0.786", "0.770", "0.800", False)  # a moved value
    assert not found_in(tables, "0.785", "0.770", "0.799", False)  # a bound typed wrong
    assert not found_in(tables, "0.785", "0.892", "0.913", False)  # the bounds of another row
    assert not found_in(tables, "0.785", "0.770", "0.800", True)  # a fraction typed as percent
