// Injected into a built page before </body>: once MathJax has typeset, writes the page's faults as
// JSON into a pre element with id site-check, which the test reads from Chromium's --dump-dom.
(function () {
  const column = () => document.querySelector("article.bd-article");
  const text = (el) => (el ? el.textContent.trim() : "");
  const describe = (el) => {
    const name = el.tagName.toLowerCase();
    const cls = typeof el.className === "string" && el.className ? "." + el.className.split(/\s+/).join(".") : "";
    const src = el.getAttribute && el.getAttribute("src") ? ` src=${el.getAttribute("src").slice(-60)}` : "";
    return `${name}${cls}${src}`;
  };

  function brokenImages() {
    return [...document.images].filter((img) => !img.complete || img.naturalWidth === 0).map(describe);
  }

  function uncaptionedFigures() {
    const faults = [];
    for (const img of document.querySelectorAll("article.bd-article .cell_output img")) {
      const figure = img.closest("figure");
      if (!figure || !text(figure.querySelector("figcaption"))) faults.push(describe(img));
    }
    for (const figure of document.querySelectorAll("article.bd-article figure")) {
      if (!text(figure.querySelector("figcaption"))) faults.push(describe(figure));
    }
    return faults;
  }

  // the nearest ancestor (inside the article) that scrolls sideways: content past the column is reachable there
  function scroller(el, article) {
    for (let node = el.parentElement; node && node !== article; node = node.parentElement) {
      const overflow = getComputedStyle(node).overflowX;
      if (overflow === "auto" || overflow === "scroll") return node;
    }
    return null;
  }

  function tooWide() {
    const article = column();
    if (!article) return ["no article.bd-article on the page"];
    const right = article.getBoundingClientRect().right + 1;
    const faults = [];
    for (const el of article.querySelectorAll("img, table, svg, mjx-container, pre, iframe, video, canvas, .output")) {
      const box = (scroller(el, article) || el).getBoundingClientRect();
      if (box.width > 0 && box.right > right) faults.push(`${describe(el)} ends ${Math.round(box.right - right)} px past the column`);
    }
    return faults;
  }

  // an output image drawn at another shape than its own (a fixed height kept while the width shrank)
  function misshapenImages() {
    const faults = [];
    for (const img of document.querySelectorAll("article.bd-article .cell_output img, article.bd-article figure img")) {
      const box = img.getBoundingClientRect();
      if (!img.naturalWidth || !img.naturalHeight || !box.width || !box.height) continue;
      const drawn = box.width / box.height, natural = img.naturalWidth / img.naturalHeight;
      if (Math.abs(drawn / natural - 1) > 0.02) faults.push(`${describe(img)} drawn at ${drawn.toFixed(2)}, not ${natural.toFixed(2)}`);
    }
    return faults;
  }

  // warnings and progress bars a page shows as a red stderr block
  function stderrBlocks() {
    return [...document.querySelectorAll("article.bd-article .output.stderr, article.bd-article .stderr")]
      .map((el) => `${describe(el)}: ${text(el).slice(0, 80)}`);
  }

  function uncaptionedTables() {
    return [...document.querySelectorAll("article.bd-article .cell_output table")]
      .filter((table) => !text(table.querySelector("caption"))).map(describe);
  }

  function unrenderedMaths() {
    const faults = [];
    for (const el of document.querySelectorAll("article.bd-article .math")) {
      if (!el.querySelector("mjx-container") && !el.closest("mjx-container")) faults.push(`${describe(el)}: ${text(el).slice(0, 60)}`);
    }
    const walker = document.createTreeWalker(column() || document.body, NodeFilter.SHOW_TEXT);
    const raw = /\$\$|\\\(|\\\[|\\begin\{/;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const parent = node.parentElement;
      if (parent.closest("pre, code, script, style, .cell_input, .cell_output, mjx-container, .math")) continue;
      if (raw.test(node.textContent)) faults.push(`raw TeX: ${node.textContent.trim().slice(0, 60)}`);
    }
    return faults;
  }

  function report(extra) {
    const result = { broken_images: brokenImages(), uncaptioned_figures: uncaptionedFigures(),
                     too_wide: tooWide(), unrendered_maths: unrenderedMaths(), misshapen_images: misshapenImages(),
                     stderr_blocks: stderrBlocks(), uncaptioned_tables: uncaptionedTables(), errors: extra || [],
                     n_images: document.images.length, n_figures: document.querySelectorAll("article figure.output-figure").length,
                     n_maths: document.querySelectorAll("article .math").length };
    const pre = document.createElement("pre");
    pre.id = "site-check";
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  }

  window.addEventListener("load", () => {
    const ready = window.MathJax && MathJax.startup && MathJax.startup.promise ? MathJax.startup.promise : Promise.resolve();
    ready.then(() => report(), (err) => report([`MathJax: ${err}`]));
  });
})();
