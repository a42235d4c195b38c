"""The built book as a reader sees it: every page opened in headless Chromium.

``site/check_page.js`` is injected into a copy of each built page; once MathJax has typeset, it lists
the page's faults: a broken image, an output image or a figure without a caption, an element that
ends past the content column, and maths left as raw TeX. Chromium's ``--dump-dom`` returns them. The
search page, opened from disk, must show each hit's passage, not its title alone.
``.ci/run`` installs Debian's ``chromium`` when it is missing and sets ``NBUTILS_REQUIRE_BROWSER=1``, so
CI fails rather than skips without it.
"""
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHECKER = (Path(__file__).parent / "site" / "check_page.js").read_text()
FAULTS = ("broken_images", "uncaptioned_figures", "too_wide", "unrendered_maths", "misshapen_images", "stderr_blocks",
          "uncaptioned_tables", "errors")
#: A laptop screen (the sidebar and the content column both shown) and a phone's (the column alone).
WINDOWS = {"1280 px": "1280,1000", "400 px": "400,900"}


def toc_pages() -> list[str]:
    """Every page in ``_toc.yml``, as its path under the built site without the suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [entry["file"] for entry in toc["chapters"]]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The book built once per session (``-W``: any warning fails the build); the site's html folder."""
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(["jupyter-book", "build", str(ROOT), "--path-output", str(out), "-W", "-n", "--keep-going"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"the book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    return out / "_build" / "html"


def page_faults(page: Path, profile_dir: Path, window: str = WINDOWS["1280 px"]) -> dict:
    """Open ``page`` (with the checker injected) in headless Chromium; the checker's JSON report."""
    source = page.read_text()
    checked = page.with_name(f"checked-{page.name}")
    checked.write_text(source.replace("</body>", f"<script>{CHECKER}</script></body>", 1))
    dom = dump_dom(checked.as_uri(), profile_dir, window)
    checked.unlink()
    reports = re.findall(r'<pre id="site-check"[^>]*>(.*?)</pre>', dom, re.S)
    assert reports, f"no report from Chromium for {page.name}"
    return json.loads(html.unescape(reports[-1]))


def dump_dom(url: str, profile_dir: Path, window: str = WINDOWS["1280 px"]) -> str:
    """The DOM of ``url`` after headless Chromium has run its scripts (20 s of virtual time)."""
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={profile_dir}", f"--window-size={window}",
                             "--virtual-time-budget=20000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def browser():
    if chromium() is None:
        if os.environ.get("NBUTILS_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install -y chromium); NBUTILS_REQUIRE_BROWSER=1")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return chromium()


@pytest.mark.slow
def test_book_builds_offline_without_warnings(built_site):
    page = (built_site / "book" / "01_fgsm_imagenet.html").read_text()
    assert "Table I" in page and "<img" in page
    assert (built_site / "index.html").is_file()
    for chapter in sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book" / "sweeps.ipynb"]:
        assert "<img" in (built_site / "book" / f"{chapter.stem}.html").read_text(), chapter.stem


def test_the_checker_finds_each_kind_of_fault(browser, tmp_path):
    # a page with one of each fault, laid out like the theme's: the checker must name every kind
    gif = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    page = tmp_path / "faulty.html"
    page.write_text(f"""<html><body><article class="bd-article" style="width: 600px">
      <div class="cell_output"><img src="missing.png" alt=""></div>
      <figure><img src="{gif}" alt=""></figure>
      <figure><img src="{gif}" style="width: 200px; height: 50px" alt=""><figcaption>squashed</figcaption></figure>
      <table style="width: 900px"><tr><td>wide</td></tr></table>
      <div style="overflow-x: auto"><table style="width: 900px"><tr><td>scrolls, not a fault</td></tr></table></div>
      <div class="cell_output"><table><tr><td>no caption</td></tr></table></div>
      <div class="output stderr"><pre>UserWarning: something</pre></div>
      <p>raw $$x^2$$ maths</p><span class="math">\\(y\\)</span>
    </article></body></html>""")
    faults = page_faults(page, tmp_path / "chromium")
    assert len(faults["broken_images"]) == 1
    assert len(faults["uncaptioned_figures"]) == 2  # the output image outside a figure, the figure without a caption
    assert len(faults["too_wide"]) == 1 and faults["too_wide"][0].startswith("table")  # the scrolling one is fine
    assert len(faults["misshapen_images"]) == 1 and "4.00, not 1.00" in faults["misshapen_images"][0]
    assert len(faults["uncaptioned_tables"]) == 1 and len(faults["stderr_blocks"]) >= 1
    assert len(faults["unrendered_maths"]) == 2  # the .math span MathJax never saw, the raw $$


@pytest.mark.slow
@pytest.mark.parametrize("width", WINDOWS)
@pytest.mark.parametrize("page", toc_pages())
def test_every_page_renders_for_a_reader(browser, built_site, page, width, tmp_path):
    faults = page_faults(built_site / f"{page}.html", tmp_path / "chromium", WINDOWS[width])
    assert {kind: faults[kind] for kind in FAULTS if faults[kind]} == {}
    if page.startswith("book/0"):  # a chapter: its output figures were found, numbered and captioned
        assert faults["n_figures"] > 0


@pytest.mark.slow
def test_search_results_show_their_passage_on_a_site_opened_from_disk(browser, built_site, tmp_path):
    # Sphinx fetches each hit's page for its passage; from file:// that needs _static/page_texts.js
    dom = dump_dom((built_site / "search.html").as_uri() + "?q=masked+gradient", tmp_path / "chromium")
    passages = [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in re.findall(r'<p class="context"[^>]*>(.*?)</p>', dom, re.S)]
    assert len(passages) >= 2 and all(len(p.strip()) > 40 for p in passages), passages
    assert any("gradient" in p for p in passages)
