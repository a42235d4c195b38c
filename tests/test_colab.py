"""The repository's address is one setting (``_config.yml``): every Colab badge and install cell is
made from it, and a fork that changes it gets every link rewritten."""
import shutil

import nbformat

from nbutils import colab
from test_book import CHAPTERS, ROOT


def test_every_badge_and_install_cell_matches_the_book_config():
    assert colab.sync(ROOT, write=False) == []
    url, branch = colab.repository(ROOT)
    for chapter in CHAPTERS:
        cells = nbformat.read(chapter, 4).cells
        assert colab.badge_link(url, branch, chapter.name) in cells[0].source, chapter.name
        assert colab.install_line(url, colab.CHAPTER_EXTRAS.get(chapter.stem, ())) in cells[1].source, chapter.name
        assert "requirements.txt" not in cells[1].source


def test_a_fork_sets_its_address_once_and_every_link_follows(tmp_path):
    (tmp_path / "book").mkdir()
    for chapter in CHAPTERS:
        shutil.copy(chapter, tmp_path / "book" / chapter.name)
    config = (ROOT / "_config.yml").read_text()
    url, _ = colab.repository(ROOT)
    (tmp_path / "_config.yml").write_text(config.replace(url, "https://github.com/someone/fork.git")
                                          .replace("branch: main", "branch: dev"))
    assert colab.main([str(tmp_path), "--check"]) == 1
    assert sorted(colab.sync(tmp_path)) == sorted(c.name for c in CHAPTERS)
    assert colab.sync(tmp_path, write=False) == []
    for chapter in CHAPTERS:
        text = (tmp_path / "book" / chapter.name).read_text()
        assert url not in text and "github/someone/fork/blob/dev/book/" + chapter.name in text
        assert "git+https://github.com/someone/fork" in text
        before, after = nbformat.read(chapter, 4), nbformat.read(tmp_path / "book" / chapter.name, 4)
        assert [c.get("outputs") for c in before.cells] == [c.get("outputs") for c in after.cells]
