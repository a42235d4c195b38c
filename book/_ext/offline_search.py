"""Search results with text on a site opened from disk (file://).

Sphinx's search page fetches each hit's page to show the passage around the match; a browser refuses
``fetch`` of a file:// URL, so offline every hit shows its title alone. After the build, this writes
``_static/page_texts.js`` (each page's article, scripts, styles, images and code removed); the search
page, when it is opened from disk, loads it and answers its own fetches of a page from it. Served over
http, the search page loads nothing more and fetches as before.
"""
from __future__ import annotations

import json
from pathlib import Path

from bs4 import BeautifulSoup
from sphinx.application import Sphinx

PAGE_TEXTS = "_static/page_texts.js"
FETCH_FROM_PAGE_TEXTS = """<script>
if (location.protocol === "file:") {
  document.write('<script src="_static/page_texts.js"><\\/script>');
  const root = new URL(".", location.href).pathname;  // the site's root: search.html lies there
  const fetchOnline = window.fetch.bind(window);
  window.fetch = (url, ...rest) => {
    const path = new URL(url, location.href).pathname;
    const page = path.startsWith(root) ? path.slice(root.length).replace(/\\.html$/, "") : null;
    const texts = window.NBUTILS_PAGE_TEXTS || {};
    return page !== null && page in texts
      ? Promise.resolve(new Response(`<div role="main">${texts[page]}</div>`)) : fetchOnline(url, ...rest);
  };
}
</script>"""


def main_content(html: str) -> str:
    """The page's article (the theme's ``article.bd-article``, else ``[role=main]``) as HTML, without
    scripts, styles, images, code cells' inputs or headings' "#" links."""
    soup = BeautifulSoup(html, "html.parser")
    main = soup.select_one("article.bd-article") or soup.select_one('[role="main"]')
    if main is None:
        return ""
    for element in main.select("script, style, img, svg, .cell_input, a.headerlink"):
        element.decompose()
    return main.decode_contents()


def write_page_texts(app: Sphinx, exception: Exception | None) -> None:
    out = Path(app.outdir)
    if exception is not None or app.builder.name != "html" or not (out / "search.html").is_file():
        return
    texts = {doc: main_content((out / f"{doc}.html").read_text(encoding="utf-8"))
             for doc in sorted(app.env.found_docs) if (out / f"{doc}.html").is_file()}
    (out / PAGE_TEXTS).write_text("window.NBUTILS_PAGE_TEXTS = " + json.dumps(texts) + ";\n", encoding="utf-8")
    search = out / "search.html"
    page = search.read_text(encoding="utf-8")
    search.write_text(page.replace("</head>", f"{FETCH_FROM_PAGE_TEXTS}\n</head>", 1), encoding="utf-8")


def setup(app: Sphinx) -> dict:
    app.connect("build-finished", write_page_texts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
