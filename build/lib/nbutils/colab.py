"""Colab: the repository's address as one setting, and the chapter links made from it.

``repository.url`` (and ``branch``) in the book's ``_config.yml`` is the one place the address lives.
jupyter-book's launch buttons read it; each chapter's *Open in Colab* badge and its first cell, which
installs the package on Colab, carry copies made from it by :func:`sync`. A fork sets its own
address in ``_config.yml`` and runs ``python -m nbutils.colab``; the tests fail while a copy differs.

The install cell asks for the package and the extras its chapter needs (:data:`CHAPTER_EXTRAS`),
never ``requirements.txt``: Colab brings its own PyTorch and Jupyter.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Sequence

COLAB = "https://colab.research.google.com"
BADGE = re.compile(r"\(" + re.escape(COLAB) + r"/github/[^)\s]+?/blob/[^)\s/]+/book/([^)\s/]+\.ipynb)\)")
INSTALL = re.compile(r'%pip install -q "nbutils(\[[^\]]*\])? @ git\+[^"]+"')

#: The extras each chapter's install cell asks for (the stand-in model for chapters 1-2's offline
#: and smoke profiles); a chapter not listed needs the package's dependencies only.
CHAPTER_EXTRAS = {"01_fgsm_imagenet": ["standin"], "02_adversarial_patch": ["standin"]}


def on_colab() -> bool:
    """Whether this runs in a Google Colab kernel."""
    return "google.colab" in sys.modules


def repository(root: Path) -> tuple[str, str]:
    """(url, branch) of ``repository`` in ``root/_config.yml``; the url without a trailing slash or .git."""
    import yaml
    config = yaml.safe_load((Path(root) / "_config.yml").read_text())["repository"]
    return re.sub(r"(\.git)?/?$", "", config["url"]), config.get("branch", "main")


def badge_link(url: str, branch: str, notebook: str) -> str:
    """The Colab address of ``book/<notebook>`` in the repository at ``url`` (a GitHub address)."""
    return f"({COLAB}/github/{url.removeprefix('https://github.com/')}/blob/{branch}/book/{notebook})"


def install_line(url: str, extras: Sequence[str] = ()) -> str:
    """The install cell's ``%pip`` line: the package, with ``extras``, from the repository at ``url``."""
    return f'%pip install -q "nbutils{"[" + ",".join(extras) + "]" if extras else ""} @ git+{url}"'


def sync(root: Path, *, write: bool = True) -> list[str]:
    """Make every chapter's Colab badge and install line match ``_config.yml``; returns the notebooks
    that differed (rewritten when ``write``). Only those lines change; outputs are left alone."""
    import nbformat
    url, branch = repository(root)
    changed = []
    for path in sorted((Path(root) / "book").glob("*.ipynb")):
        notebook = nbformat.read(path, 4)
        before = [cell.source for cell in notebook.cells]
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                cell.source = BADGE.sub(lambda m: badge_link(url, branch, m.group(1)), cell.source)
            elif cell.cell_type == "code":
                cell.source = INSTALL.sub(install_line(url, CHAPTER_EXTRAS.get(path.stem, ())), cell.source)
        if [cell.source for cell in notebook.cells] != before:
            changed.append(path.name)
            if write:
                nbformat.write(notebook, path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nbutils.colab [ROOT] [--check]``: sync the links (or only list those that differ)."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    root = Path(args[0]) if args else Path.cwd()
    changed = sync(root, write=not check)
    print(("differ from _config.yml: " if check else "rewritten: ") + (", ".join(changed) or "none"))
    return 1 if check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
