"""Every chapter runs under nbval in the smoke profile; the book builds offline without errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def run(args, **kwargs):
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NBUTILS_PROFILE": "smoke"},
                            **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    return result


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks in book/"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_committed_chapters_carry_no_injected_parameters(notebook):
    # a papermill-injected cell would pin its profile and override NBUTILS_PROFILE under nbval
    import nbformat
    cells = nbformat.read(notebook, 4).cells
    assert not [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1


@pytest.mark.slow
@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_under_nbval_in_the_smoke_profile(notebook):
    run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         str(notebook)], timeout=1200)


@pytest.mark.slow
def test_book_builds_offline_without_warnings(tmp_path):
    result = run(["jupyter-book", "build", str(ROOT), "--path-output", str(tmp_path), "-W", "-n", "--keep-going"],
                 timeout=900)
    html = tmp_path / "_build" / "html"
    page = (html / "book" / "01_fgsm_imagenet.html").read_text()
    assert "Table I" in page and "<img" in page, result.stdout[-2000:]
    assert (html / "index.html").is_file()
    for chapter in CHAPTERS:  # every chapter is in the table of contents and rendered with its figures
        assert "<img" in (html / "book" / f"{chapter.stem}.html").read_text(), chapter.stem
