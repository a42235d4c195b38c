"""Figures that mirror the papers': images with top-k confidence bars, error-versus-eps curves."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"), force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .files import BATCH_ENV, atomic_path  # noqa: E402

EXPLORER_EPSILONS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  # the static explorer's frames, each convention's units


def sharp_inline_figures() -> None:
    """In a notebook, draw charts as PNG at twice the pixels, shown at the same size ("retina"), so
    they stay readable at the book's page width. Figures of photographs (``fig.photographic = True``,
    set by :func:`prediction_grid`) stay at one pixel per point: doubling them would triple a
    notebook's size for no gain in what a reader can see. Outside IPython: nothing."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure, retina_figure
        from matplotlib.figure import Figure
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def png(fig):
        return print_figure(fig, "png") if getattr(fig, "photographic", False) else retina_figure(fig)

    if "inline" in matplotlib.get_backend():
        import matplotlib_inline.backend_inline  # noqa: F401  loading it sets the formatters: load it first
    shell.display_formatter.formatters["image/png"].for_type(Figure, png)


def to_hwc(image: torch.Tensor):
    """(C, H, W) pixels -> (H, W, C) numpy array clipped to [0, 1] for imshow (grey if C == 1)."""
    array = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def perturbation_image(delta: torch.Tensor) -> torch.Tensor:
    """(C, H, W) perturbation rescaled to [0, 1] for display: 0.5 is no change, 0 and 1 the largest."""
    scale = delta.abs().max().clamp_min(1e-12)
    return delta / (2 * scale) + 0.5


def topk_bars(ax, probs: Sequence[float], names: Sequence[str], true_name: str | None = None) -> None:
    """Horizontal confidence bars, most likely class on top; the true class in a second colour."""
    probs = [float(p) for p in probs]
    colours = ["tab:green" if n == true_name else "tab:blue" for n in names]
    ax.barh(range(len(probs)), probs, color=colours)
    ax.set_yticks(range(len(probs)), [f"{n} ({p:.4f})" for n, p in zip(names, probs)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")


def prediction_grid(images: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor, class_names: Sequence[str],
                    labels: torch.Tensor, *, originals: torch.Tensor | None = None, title: str = ""):
    """One row per image: the image and its top-k bars (Fig 1), or, given ``originals``, the
    original, the perturbation (rescaled), the adversarial image and its bars (Fig 2).

    images: (N, C, H, W); probs, indices: (N, k); labels: (N,). Returns the figure.
    """
    n = images.shape[0]
    panels = 2 if originals is None else 4
    fig, axes = plt.subplots(n, panels, figsize=(3.2 * panels + 1.5, 2.4 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.6]})
    fig.photographic = True  # shown at one pixel per point (see sharp_inline_figures)
    for row in range(n):
        true_name = class_names[int(labels[row])]
        pictures = [(images[row], true_name)] if originals is None else [
            (originals[row], f"original: {true_name}"),
            (perturbation_image(images[row] - originals[row]), "perturbation (rescaled)"),
            (images[row], "adversarial")]
        for col, (picture, caption) in enumerate(pictures):
            axes[row, col].imshow(to_hwc(picture), cmap="gray")
            axes[row, col].set_title(caption, fontsize=9)
            axes[row, col].axis("off")
        topk_bars(axes[row, -1], probs[row].tolist(), [class_names[int(i)] for i in indices[row]], true_name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves(table: pd.DataFrame, *, x: str = "eps", hue: str = "model", style: str | None = None,
           metrics: Sequence[str] = ("top1_error", "top5_error"), paper: pd.DataFrame | None = None,
           xlabel: str | None = None, title: str = "", percent: bool = True):
    """Metrics against ``x``, one panel per metric, one line per ``hue`` (and ``style``) group.

    percent: the metrics are fractions (errors, success rates), drawn as 0-100 %; False for other
    quantities (losses), on a free axis. paper: optional rows with the same columns, drawn dashed
    with hollow markers.
    """
    scale = 100.0 if percent else 1.0
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    keys = [hue] + ([style] if style else [])
    for ax, metric in zip(axes[0], metrics):
        for key, rows in table.groupby(keys, sort=False):
            ax.plot(rows[x], scale * rows[metric], marker="o",
                    label=" / ".join(map(str, key if isinstance(key, tuple) else (key,))))
        if paper is not None:
            for key, rows in paper.groupby(hue, sort=False):
                ax.plot(rows[x], scale * rows[metric], linestyle="--", marker="o", mfc="none", label=f"{key} (paper)")
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(metric.replace("_", " ") + (" (%)" if percent else ""))
        if percent:
            ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def band_curves(table: pd.DataFrame, *, x: str, y: str, low: str, high: str, hue: str | None = None,
                facet: str | None = None, row: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                title: str = "", percent: bool = True, logx: bool = False, paper: pd.DataFrame | None = None):
    """``y`` against ``x`` with a shaded interval [``low``, ``high``]: one panel per ``facet`` value (and
    one row of panels per ``row`` value), one line per ``hue`` value (legend under the panels, off the
    data); None: a single panel or line. percent: values are fractions drawn as 0-100 %. logx: a log
    x-axis. paper: optional rows with the columns x, y (and facet, row, hue), drawn dashed with hollow
    markers and no band. Returns the figure."""
    scale = 100.0 if percent else 1.0
    facets = list(dict.fromkeys(table[facet])) if facet else [None]
    rows_of_panels = list(dict.fromkeys(table[row])) if row else [None]
    width = 4.2 if len(facets) < 4 else 2.8
    fig, axes = plt.subplots(len(rows_of_panels), len(facets), figsize=(width * len(facets), 3.2 * len(rows_of_panels) + 0.4),
                             squeeze=False, sharey=True, sharex=True)
    for (i, row_value), (j, value) in ((a, b) for a in enumerate(rows_of_panels) for b in enumerate(facets)):
        ax = axes[i, j]
        keep = {k: v for k, v in ((facet, value), (row, row_value)) if k}
        panel = table.loc[(table[list(keep)] == pd.Series(keep)).all(axis=1)] if keep else table
        for key, rows in (panel.groupby(hue, sort=False) if hue else [(None, panel)]):
            rows = rows.sort_values(x)
            line, = ax.plot(rows[x], scale * rows[y], marker="o", markersize=3, label=None if key is None else str(key))
            ax.fill_between(rows[x], scale * rows[low], scale * rows[high], color=line.get_color(), alpha=0.2)
        published = None if paper is None else paper.loc[(paper[list(keep)] == pd.Series(keep)).all(axis=1)] if keep else paper
        for key, rows in ([] if published is None else published.groupby(hue, sort=False) if hue else [(None, published)]):
            rows = rows.sort_values(x)
            ax.plot(rows[x], scale * rows[y], linestyle="--", marker="o", markersize=3, mfc="none",
                    label="paper" if key is None else f"{key} (paper)")
        if keep:
            ax.set_title(", ".join(str(v) for v in (value, row_value) if v is not None), fontsize=10)
        if i == len(rows_of_panels) - 1:
            ax.set_xlabel(xlabel or x)
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if percent:
            ax.set_ylim(-2, 102)
    for i in range(len(rows_of_panels)):
        axes[i, 0].set_ylabel((ylabel or y) + (" (%)" if percent else ""))
    legend_rows = 0
    if hue:
        handles, labels = axes[0, 0].get_legend_handles_labels()
        # as many columns as fit the figure's width (about 13 characters of 8-point text an inch)
        ncol = max(1, min(len(labels), int(13 * fig.get_figwidth() / (max(map(len, labels)) + 4))))
        legend_rows = -(-len(labels) // ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, min(0.5, 0.05 + 0.055 * legend_rows), 1, 1))
    return fig


def sweep_curves(table: pd.DataFrame, *, x: str, y: str, hue: str | None = None, facet: str | None = None,
                 xlabel: str | None = None, ylabel: str | None = None, title: str = "", logx: bool = False,
                 percent: bool = False):
    """``y`` against a swept parameter ``x``: the mean over the rows of each (``facet``, ``hue``, x)
    group (the seeds of a sweep) with its 95 % Student-t band (:func:`nbutils.metrics.mean_interval`),
    drawn by :func:`band_curves`. percent: fractions drawn as 0-100 %."""
    from .metrics import mean_interval

    summary = mean_interval(table, [k for k in (facet, hue) if k] + [x], y)
    return band_curves(summary, x=x, y="mean", low="low", high="high", hue=hue, facet=facet, xlabel=xlabel,
                       ylabel=ylabel or y, title=title, percent=percent, logx=logx)


def facet_lines(table: pd.DataFrame, *, x: str, y: str, hue: str, facet: str, units: str | None = None,
                xlabel: str | None = None, ylabel: str | None = None, title: str = "", percent: bool = True,
                col_wrap: int = 5):
    """``y`` against ``x``, one small panel per ``facet`` value and one line per ``hue`` value (seaborn's
    ``relplot``), instead of every line in one panel. units: a column whose values are drawn as
    separate thin lines of the same colour (e.g. training runs). percent: fractions drawn as 0-100 %.
    Returns the figure."""
    import seaborn as sns

    data = table.assign(**{y: 100 * table[y]}) if percent else table
    grid = sns.relplot(data=data, x=x, y=y, hue=hue, col=facet, col_wrap=min(col_wrap, data[facet].nunique()),
                       kind="line", marker="o", markersize=4, units=units, estimator=None if units else "mean",
                       linewidth=1 if units else 1.5, alpha=0.8, palette="viridis", height=2.6, aspect=1.0,
                       facet_kws={"sharey": True})
    grid.set_titles("{col_name}")
    grid.set_axis_labels(xlabel or x, (ylabel or y) + (" (%)" if percent else ""))
    if percent:
        grid.set(ylim=(-2, 102))
    for ax in grid.axes.flat:
        ax.grid(alpha=0.3)
    sns.move_legend(grid, "lower center", bbox_to_anchor=(0.5, -0.02), ncol=data[hue].nunique(), frameon=False,
                    title=hue)
    if title:
        import textwrap
        grid.figure.suptitle(textwrap.fill(title, int(9 * grid.figure.get_figwidth())), fontsize=11)
    grid.figure.tight_layout(rect=(0, 0.08, 1, 1))
    return grid.figure


def heatmap(ax, table: pd.DataFrame, *, fmt: str = "{:.1f}", vmin: float = 0, vmax: float = 100, title: str = ""):
    """An annotated heat map of a 2-D table (rows x columns of numbers, e.g. target x patch size)."""
    image = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index])
    for (r, c), value in pd.DataFrame(table.to_numpy(dtype=float)).stack().items():
        ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=8,
                color="black" if value > (vmin + vmax) / 2 else "white")
    ax.set_xlabel(table.columns.name or "")
    ax.set_ylabel(table.index.name or "")
    ax.set_title(title, fontsize=10)
    return image


def image_grid(images: dict, *, rows: Sequence, cols: Sequence, row_label=str, col_label=str, title: str = "",
               cell: float = 1.4, captions: dict | None = None):
    """Images laid out by (row, col) key, e.g. a patch gallery (target x size); missing keys blank.

    images: {(row, col): (C, H, W) tensor in [0, 1]}; captions: optional {(row, col): text} shown
    over each image (e.g. "true -> predicted"), after the column label in the first row.
    Returns the figure.
    """
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(cell * len(cols) + 1, cell * len(rows) + 0.4), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.axis("off")
            if (r, c) in images:
                ax.imshow(to_hwc(images[(r, c)]), cmap="gray", interpolation="nearest")
            caption = (captions or {}).get((r, c), "")
            if i == 0 or caption:
                ax.set_title("\n".join(filter(None, [col_label(c) if i == 0 else "", caption])), fontsize=9)
            if j == 0:
                ax.text(-0.1, 0.5, row_label(r), transform=ax.transAxes, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save as PNG atomically (temporary file, then rename) and return the path."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    return Path(path)


def fgsm_explorer(model, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                  eps_max: float = 0.1, k: int = 5, epsilons: Sequence[float] = EXPLORER_EPSILONS):
    """Chapter 1's explorer: pick an image, move eps, switch convention; shows the original, the
    perturbation, the adversarial image and the top-k predictions. images: (N, C, H, W) in [0, 1].

    In Jupyter or Colab: a live ipywidgets explorer (any eps up to ``eps_max``). In a batch run
    (``$NBUTILS_BATCH`` set: a sweep's runs, and the committed chapters): :func:`fgsm_frames`, which
    needs neither a kernel nor the internet, over ``epsilons``; nbclient can also hang on a live
    widget's first update there (jupyter/nbclient#312)."""
    if os.environ.get(BATCH_ENV):
        from IPython.display import HTML
        return HTML(fgsm_frames(model, images, labels, class_names, epsilons=epsilons, k=k))
    import ipywidgets as widgets
    from IPython.display import display

    from .attacks import CONVENTIONS, fgsm
    from .metrics import predict, topk_probabilities

    def show(index: int, eps: float, convention: str) -> None:
        x, y = images[index:index + 1], labels[index:index + 1]
        adv = fgsm(model, x, y, eps=eps, convention=convention)
        probs, top = topk_probabilities(predict(model, adv), k)
        fig = prediction_grid(adv, probs, top, class_names, y, originals=x,
                              title=f"FGSM eps = {eps:.3f} ({convention})")
        display(fig)
        plt.close(fig)

    options = [(f"{i}: {class_names[int(labels[i])]}", i) for i in range(images.shape[0])]
    return widgets.interactive(show, index=widgets.Dropdown(options=options, description="image"),
                               eps=widgets.FloatSlider(value=0.02, min=0.0, max=eps_max, step=0.005, readout_format=".3f"),
                               convention=widgets.Dropdown(options=list(CONVENTIONS), value="normalised"))


def jpeg_data_uri(image: torch.Tensor, *, size: int = 112, quality: int = 80) -> str:
    """A (C, H, W) image in [0, 1] as a ``data:image/jpeg`` URI, resized to ``size`` pixels square."""
    import base64
    import io

    from PIL import Image
    array = (to_hwc(image) * 255).round().astype("uint8")
    picture = Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def fgsm_frames(model, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                epsilons: Sequence[float] = EXPLORER_EPSILONS, k: int = 5) -> str:
    """A self-contained HTML explorer of pre-computed FGSM frames over image x eps x convention:
    the original, the perturbation (rescaled, per convention), the adversarial image and its top-k
    predictions. Inline JPEGs and a few lines of inline script: no kernel, no internet.

    images: (N, C, H, W) in [0, 1]; labels: (N,); epsilons: in each convention's own units."""
    import html
    import json
    import re

    from .attacks import CONVENTIONS, fgsm_sweep, pixel_eps
    from .metrics import predict, topk_probabilities

    frames, perturbations = {}, {}
    for convention in CONVENTIONS:  # one input gradient per convention gives every eps (attacks.fgsm_sweep)
        sweep = fgsm_sweep(model, images, labels, epsilons=[float(e) for e in epsilons], convention=convention,
                           batch_size=images.shape[0], return_images=True)
        adversarials = sweep.adversarials.to(images.device)  # (E, N, C, H, W)
        probs, top = topk_probabilities(predict(model, adversarials.flatten(0, 1)), k)
        for j in range(len(epsilons)):
            for i in range(images.shape[0]):
                row = j * images.shape[0] + i
                frames[f"{i}|{convention}|{j}"] = {
                    "src": jpeg_data_uri(adversarials[j, i]),
                    "top": [[class_names[int(c)], round(float(p), 4)] for c, p in zip(top[row], probs[row])]}
        for i in range(images.shape[0]):  # one perturbation per convention, at the largest eps: its signs are
            # the same at every eps (clamping to [0, 1] only trims them near black and white)
            perturbations[f"{i}|{convention}"] = jpeg_data_uri(perturbation_image(adversarials[-1, i] - images[i]),
                                                               quality=70)
    convention = "normalised" if "normalised" in CONVENTIONS else CONVENTIONS[0]
    default = {"convention": convention, "eps": epsilons.index(0.02) if 0.02 in epsilons else 0}
    state = {"eps": [float(e) for e in epsilons], "conventions": list(CONVENTIONS), "default": default,
             "pixel255": {c: [round(255 * pixel_eps(model, float(e), c), 2) for e in epsilons] for c in CONVENTIONS},
             "names": [class_names[int(y)] for y in labels], "originals": [jpeg_data_uri(x) for x in images],
             "perturbations": perturbations, "frames": frames}
    first = frames[f"0|{convention}|{default['eps']}"]
    without_script = {"ORIGINAL": state["originals"][0], "PERTURBATION": perturbations[f"0|{convention}"],
                      "ADVERSARIAL": first["src"],  # what a page that runs no script (GitHub, an untrusted notebook) shows
                      "TOP": "".join(f"<li>{html.escape(name)} {p:.4f}</li>" for name, p in first["top"])}
    # inside <script>, "</script>" or "<!--" in a class name must not end the script: escape < > & in the JSON
    state_json = json.dumps(state, separators=(",", ":"))
    values = {**without_script, "STATE": state_json.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")}
    return re.sub(r"@([A-Z]+)@", lambda m: values[m.group(1)], _FRAMES_HTML)  # one pass: no inserted text is rescanned


_FRAMES_HTML = """<div class="fgsm-frames" style="font-size:0.85rem">
<div><label>image <select data-role="image"></select></label>
<label style="margin-left:1em">convention <select data-role="convention"></select></label>
<label style="margin-left:1em">eps <input data-role="eps" type="range" min="0" step="1" style="vertical-align:middle"></label>
<span data-role="readout"></span></div>
<div style="display:flex;gap:0.8em;flex-wrap:wrap;align-items:flex-start;margin-top:0.4em">
<figure style="margin:0"><img data-role="original" src="@ORIGINAL@" width="112" height="112" alt="original"><figcaption>original</figcaption></figure>
<figure style="margin:0"><img data-role="perturbation" src="@PERTURBATION@" width="112" height="112" alt="perturbation"><figcaption>perturbation (rescaled)</figcaption></figure>
<figure style="margin:0"><img data-role="adversarial" src="@ADVERSARIAL@" width="112" height="112" alt="adversarial"><figcaption>adversarial</figcaption></figure>
<ol data-role="top" style="margin:0;min-width:14em">@TOP@</ol></div></div>
<script>(function () {
  const root = document.currentScript.previousElementSibling, state = @STATE@;
  const part = (role) => root.querySelector(`[data-role="${role}"]`);
  state.names.forEach((n, i) => part("image").add(new Option(`${i}: ${n}`, i)));
  state.conventions.forEach((c) => part("convention").add(new Option(c, c)));
  part("eps").max = state.eps.length - 1;
  part("eps").value = state.default.eps;
  part("convention").value = state.default.convention;
  function show() {
    const i = part("image").value, c = part("convention").value, j = part("eps").value;
    const frame = state.frames[`${i}|${c}|${j}`];
    part("readout").textContent = `${state.eps[j]} (${state.pixel255[c][j]}/255 a pixel)`;
    part("original").src = state.originals[i];
    part("perturbation").src = state.perturbations[`${i}|${c}`];
    part("adversarial").src = frame.src;
    part("top").replaceChildren(...frame.top.map(([name, p]) => {
      const item = document.createElement("li");
      item.textContent = `${name} ${p.toFixed(4)}` + (name === state.names[i] ? "  (true class)" : "");
      return item;
    }));
  }
  root.querySelectorAll("select, input").forEach((el) => el.addEventListener("input", show));
  show();
})();</script>"""


def roc_panels(panels: dict, *, title: str = "", zoom: float | None = None):
    """ROC curves, one panel per key of ``panels``, one line per curve: ``panels`` maps a panel title
    to {curve label: (fpr (M,), tpr (M,), auc)}; the legend shows each AUC. zoom: also draw the
    corner fpr <= zoom, tpr >= 1 - zoom as an inset (the papers' curves hug it). Returns the figure."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False)
    for ax, (panel, curves_) in zip(axes[0], panels.items()):
        inset = ax.inset_axes([0.45, 0.1, 0.5, 0.5]) if zoom else None
        for label, (fpr, tpr, auc) in curves_.items():
            line, = ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
            if inset is not None:
                inset.plot(fpr, tpr, color=line.get_color())
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        if inset is not None:
            inset.set_xlim(0, zoom)
            inset.set_ylim(1 - zoom, 1)
            inset.tick_params(labelsize=7)
        ax.set(xlabel="false positive rate (clean flagged)", ylabel="true positive rate (adversarial flagged)",
               title=panel, xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
