"""A fresh virtual environment holding only the package and its extras (what a chapter's install
cell asks for, plus a notebook runner) runs every chapter at ``smoke``: no file of the checkout's
``requirements.txt`` is needed. It installs PyTorch into the venv (several GB), so it runs only when
``NBUTILS_FRESH_ENV=1``; its last measured run is in the README."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from test_book import CHAPTERS, ROOT

EXTRAS = "standin,notebook"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NBUTILS_FRESH_ENV") != "1", reason="set NBUTILS_FRESH_ENV=1 (installs PyTorch)")
def test_the_package_and_its_extras_alone_run_every_chapter_at_smoke(tmp_path):
    venv, source = tmp_path / "venv", tmp_path / "source"
    # a copy of the package's sources: pip's in-tree build must not write into the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "runs", "results", "_build", "build", "data",
                                                                "*.egg-info", "__pycache__", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    started = time.perf_counter()
    subprocess.run([python, "-m", "pip", "install", "-q", f"{source}[{EXTRAS}]"], check=True, timeout=3600)
    print(f"install: {time.perf_counter() - started:.0f} s")
    subprocess.run([python, "-m", "ipykernel", "install", "--prefix", str(venv), "--name", "fresh"], check=True)
    env = {**os.environ, "NBUTILS_PROFILE": "smoke", "NBUTILS_RESULTS": str(tmp_path / "results"),
           "NBUTILS_CACHE": str(tmp_path / "cache"), "JUPYTER_PATH": str(venv / "share" / "jupyter"),
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONNOUSERSITE": "1"}
    for chapter in CHAPTERS:
        started = time.perf_counter()
        subprocess.run([python, "-m", "papermill", str(chapter), str(tmp_path / chapter.name), "--cwd",
                        str(chapter.parent), "-k", "fresh", "--no-progress-bar"], check=True, env=env, timeout=1800,
                       cwd=tmp_path)
        print(f"{chapter.stem}: {time.perf_counter() - started:.0f} s")
        assert any((tmp_path / "results" / "smoke" / chapter.stem).glob("*.csv")), chapter.stem
