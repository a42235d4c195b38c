"""The intro's "what reproduced" table, read from the committed results when the book is built.

``{reproduction-summary}`` with the results folder as its argument (relative to the repository root)
renders :func:`nbutils.report.reproduction_summary` as a table: each chapter's key number in its
paper, this book's committed run of it with its 95 % interval, the verdict and the reason. The table
is never typed: a re-run that changes a number changes the page at the next build.
"""
from __future__ import annotations

import math
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parents[2]  # the repository: book/_ext/reproduction.py
HEADERS = ("chapter", "the paper's key number", "paper", "this run [95 % interval]", "profile", "verdict", "why")


def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _cells(row) -> tuple[str, ...]:
    run = "–" if math.isnan(row.run) else f"{row.run:.3f} [{row.low:.3f}, {row.high:.3f}]"
    return row.chapter, row.claim, _number(row.paper), run, row.profile, row.verdict, row.why


def _table(rows: list[tuple[str, ...]], caption: str) -> nodes.table:
    table = nodes.table(classes=["reproduction-summary"])
    table += nodes.title(caption, caption)
    group = nodes.tgroup(cols=len(HEADERS))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in HEADERS)
    for part, lines in ((nodes.thead(), [HEADERS]), (nodes.tbody(), rows)):
        for line in lines:
            row = nodes.row()
            for text in line:
                row += nodes.entry("", nodes.paragraph(text=text))
            part += row
        group += part
    return table


class ReproductionSummary(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from nbutils.report import reproduction_summary

        env = self.state.document.settings.env
        results = ROOT / self.arguments[0]
        env.note_dependency(str(results))
        summary = reproduction_summary(results)
        caption = "What reproduced: each paper's key number and this book's committed run of it"
        return [_table([_cells(row) for row in summary.itertuples()], caption)]


def setup(app: Sphinx) -> dict:
    app.add_directive("reproduction-summary", ReproductionSummary)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
