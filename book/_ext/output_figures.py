"""Numbered, captioned figures for a notebook cell's image outputs, with captions kept in cell metadata.

myst-nb's own ``mystnb.figure`` cell option wraps *every* display output of a cell (tables too) in one
figure with one name. Here a code cell's metadata holds ``"captions": ["...", ...]``: the k-th image
output of the cell becomes a numbered figure with caption k modulo the list's length, so a loop that
draws the same figures for every model (one caption, or Fig. 1 and Fig. 2 per model) is captioned
whatever the number of models. A number of images that is not a multiple of the list's length, or
captions that are not a list of strings, is a build warning (an error under ``-W``). Captions live
beside the code, so they survive a papermill re-run, and a re-run changes no code cell to add one.
"""
from __future__ import annotations

import re
from html import escape

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def _is_image_bundle(node: nodes.Node) -> bool:
    return (isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"
            and any(child.get("mime_type") in IMAGE_TYPES for child in node.children))


def _caption(text: str) -> nodes.caption:
    return nodes.caption(text, text)


def _captioned_cells(document: nodes.document, key: str):
    """(cell, captions) for every code cell whose metadata holds ``key``: a non-empty list of
    strings; any other value is a build warning and the cell is skipped."""
    for cell in list(document.findall(nodes.container)):
        if cell.get("nb_element") != "cell_code":
            continue
        captions = (cell.get("cell_metadata") or {}).get(key)
        if captions is None:
            continue
        if not (isinstance(captions, list) and captions and all(isinstance(c, str) for c in captions)):
            logger.warning(f"cell {cell.get('cell_index')}: {key!r} must be a list of strings, got {captions!r}",
                           location=cell)
            continue
        yield cell, captions


class OutputFigures(SphinxTransform):
    """Wrap each image output of a cell whose metadata has ``captions`` in a numbered figure."""

    default_priority = 200

    def apply(self, **kwargs) -> None:
        number = 0
        for cell, captions in _captioned_cells(self.document, "captions"):
            bundles = [node for node in cell.findall(nodes.container) if _is_image_bundle(node)]
            if len(bundles) % len(captions):
                logger.warning(f"cell {cell.get('cell_index')}: {len(bundles)} image outputs for {len(captions)} captions "
                               f"(the images must be a whole number of rounds of the captions)", location=cell)
            for k, bundle in enumerate(bundles):
                number += 1
                figure = nodes.figure(ids=[f"output-figure-{number}"], classes=["output-figure"])
                self.document.set_id(figure)
                bundle.replace_self(figure)
                figure += bundle
                figure += _caption(captions[k % len(captions)])


def _caption_tables(html: str, captions: list[str], first: int) -> tuple[str, int]:
    """Give each ``<table>`` of ``html`` that has no caption the next of ``captions`` (cyclically,
    from index ``first``); returns the new HTML and the next index."""
    parts = re.split(r"(<table\b[^>]*>)", html)
    for k in range(1, len(parts), 2):
        if not parts[k + 1].lstrip().startswith("<caption"):
            parts[k] += f"<caption>{escape(captions[first % len(captions)])}</caption>"
            first += 1
    return "".join(parts), first


class OutputTables(SphinxTransform):
    """Number the captioned HTML tables of a page's cell outputs (``report.view`` gives each a
    caption): "Table k: ..." in page order, as figures are numbered. A plain table a cell displays
    (a DataFrame shown as it is) takes its caption from the cell's metadata, ``"table_captions":
    ["...", ...]``, as images take theirs from ``captions``."""

    default_priority = 201

    def apply(self, **kwargs) -> None:
        for cell, captions in _captioned_cells(self.document, "table_captions"):
            first = 0
            for raw in list(cell.findall(nodes.raw)):
                if raw.get("format") == "html" and "<table" in raw.astext():
                    html, first = _caption_tables(raw.astext(), captions, first)
                    raw.replace_self(nodes.raw(html, html, format="html"))
        number = 0
        for raw in list(self.document.findall(nodes.raw)):
            if raw.get("format") != "html" or "<caption>" not in raw.astext():
                continue
            parts = raw.astext().split("<caption>")
            for k in range(1, len(parts)):
                number += 1
                parts[k] = f'<span class="table-number">Table {number}:</span> ' + parts[k]
            html = "<caption>".join(parts)
            raw.replace_self(nodes.raw(html, html, format="html"))


def setup(app: Sphinx) -> dict:
    app.add_transform(OutputFigures)
    app.add_transform(OutputTables)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
