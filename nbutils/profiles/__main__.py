"""``python -m nbutils.profiles [--check]``: rewrite every page's parameters cell from its declaration;
with --check, only list the stale ones and fail if there are any."""
import sys
from pathlib import Path

from ..files import project_root
from ..params import stale_cells, write_cells
from . import PAGES


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    book = (project_root() or Path.cwd()) / "book"
    if "--check" in args:
        stale = stale_cells(book, PAGES)
        print("stale parameters cells: " + (", ".join(stale) if stale else "none"))
        return 1 if stale else 0
    print("rewrote: " + (", ".join(write_cells(book, PAGES)) or "nothing"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
