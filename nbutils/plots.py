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


def use_book_theme() -> None:
    """The one look of every figure of the book: seaborn's whitegrid style and colour-blind palette,
    text sized for the page's width."""
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.85,
                  rc={"axes.titlesize": 10, "figure.titlesize": 11})


def sharp_inline_figures() -> None:
    """In a notebook, draw charts as PNG at twice the pixels, shown at the same size ("retina"), so
    they stay readable at the book's page width, in the book's theme (:func:`use_book_theme`). Figures of photographs (``fig.photographic = True``,
    set by :func:`prediction_grid`) stay at one pixel per point: doubling them would triple a
    notebook's size for no gain in what a reader can see. Outside IPython: nothing."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure, retina_figure
        from matplotlib.figure import Figure
    except ImportError:
        return
    use_book_theme()
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
    ax.set_yticks(range(len(probs)), [f"{n} ({p:.4f})" for n, p in zip(names, probs)], fontsize=10)
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
    # about the content column's width at one pixel per point, so the labels are drawn at their size
    fig, axes = plt.subplots(n, panels, figsize=(2.4 * panels + 1.6, 2.2 * n), squeeze=False,
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
            axes[row, col].set_title(caption, fontsize=10)
            axes[row, col].axis("off")
        topk_bars(axes[row, -1], probs[row].tolist(), [class_names[int(i)] for i in indices[row]], true_name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _legend_below(fig, handles, labels, *, title: str | None = None) -> None:
    """One legend for the whole figure, under its panels (never over the data), in as many columns as
    fit its width (about 13 characters of 8-point text an inch), and room made for it."""
    if not labels:
        return
    ncol = max(1, min(len(labels), int(13 * fig.get_figwidth() / (max(map(len, labels)) + 4))))
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False, title=title,
               title_fontsize=8)
    fig.tight_layout(rect=(0, min(0.4, (0.25 + 0.18 * rows + (0.2 if title else 0)) / fig.get_figheight()), 1, 1))


def _title(fig, title: str) -> None:
    if title:
        import textwrap
        fig.suptitle(textwrap.fill(title, int(9.5 * fig.get_figwidth())), fontsize=11)


def _line_with_band(data: pd.DataFrame, *, x: str, y: str, low: str | None, high: str | None, color=None, label=None,
                    dashed: bool = False) -> None:
    """One line of a FacetGrid panel, sorted by ``x``, with its interval [low, high] shaded (seaborn's
    ``map_dataframe`` calls it per panel and hue); ``dashed``: a published series, hollow markers, no band."""
    rows = data.sort_values(x)
    ax = plt.gca()
    style = dict(linestyle="--", mfc="none") if dashed else {}
    ax.plot(rows[x], rows[y], marker="o", markersize=3.5, color=color, label=label, **style)
    if low is not None and not dashed:
        ax.fill_between(rows[x], rows[low], rows[high], color=color, alpha=0.2, linewidth=0)


def band_curves(table: pd.DataFrame, *, x: str, y: str, low: str, high: str, hue: str | None = None,
                facet: str | None = None, row: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                title: str = "", percent: bool = True, logx: bool = False, paper: pd.DataFrame | None = None):
    """``y`` against ``x`` with its interval [``low``, ``high``] shaded (seaborn's FacetGrid): one panel
    per ``facet`` value (and one row of panels per ``row`` value), one colour per ``hue`` value, one
    legend under the panels; None: a single panel or line. percent: values are fractions drawn as
    0-100 %. logx: a log x-axis. paper: optional rows with the columns x, y (and facet, row, hue),
    drawn dashed with hollow markers and no band, in their hue's colour. Returns the figure."""
    import seaborn as sns

    scale = 100.0 if percent else 1.0
    data = table.assign(**{c: scale * table[c] for c in (y, low, high)})
    hues = list(dict.fromkeys(data[hue])) if hue else [None]
    extra = [] if paper is None or not hue else [k for k in dict.fromkeys(paper[hue]) if k not in hues]
    palette = dict(zip(hues + extra, sns.color_palette(n_colors=len(hues) + len(extra)))) if hue else None
    n_facets = data[facet].nunique() if facet else 1
    width = 3.8 if n_facets < 4 else 2.7
    grid = sns.FacetGrid(data, col=facet, row=row, hue=hue, palette=palette, hue_order=hues if hue else None,
                         sharey=True, sharex=True, height=3.2, aspect=width / 3.2, despine=False, margin_titles=False)
    grid.map_dataframe(_line_with_band, x=x, y=y, low=low, high=high)
    if paper is not None:
        published = paper.assign(**{y: scale * paper[y]})
        for key, ax in grid.axes_dict.items() if (facet or row) else [(None, grid.ax)]:
            values = dict(zip([k for k in (row, facet) if k], key if isinstance(key, tuple) else (key,)))
            panel = published.loc[(published[list(values)] == pd.Series(values)).all(axis=1)] if values else published
            plt.sca(ax)
            for name, rows in (panel.groupby(hue, sort=False) if hue else [(None, panel)]):
                _line_with_band(rows, x=x, y=y, low=None, high=None, color=palette[name] if hue else "grey",
                                label=f"{name} (paper)" if hue else "paper", dashed=True)
    if facet or row:
        grid.set_titles(template=", ".join(t for t, k in (("{col_name}", facet), ("{row_name}", row)) if k))
    grid.set_axis_labels(xlabel or x, (ylabel or y) + (" (%)" if percent else ""))
    if logx:
        grid.set(xscale="log")
    if percent:
        grid.set(ylim=(-2, 102))
    handles, labels = {}, []
    for ax in grid.axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    _title(grid.figure, title)
    if hue or paper is not None:
        _legend_below(grid.figure, [handles[k] for k in labels], labels)
    else:
        grid.figure.tight_layout()
    return grid.figure


def curves(table: pd.DataFrame, *, x: str = "eps", hue: str = "model", style: str | None = None,
           metrics: Sequence[str] = ("top1_error", "top5_error"), paper: pd.DataFrame | None = None,
           xlabel: str | None = None, title: str = "", percent: bool = True):
    """Metrics against ``x``, one panel per metric (seaborn's ``relplot``), one colour per ``hue`` and
    one line style per ``style`` value. percent: the metrics are fractions (errors, success rates),
    drawn as 0-100 %; False for other quantities (losses), each on its own axis. paper: optional rows
    with the same columns, drawn dashed with hollow markers. Returns the figure."""
    import seaborn as sns

    scale = 100.0 if percent else 1.0
    readable = {m: m.replace("_", " ") + (" (%)" if percent else "") for m in metrics}
    long = table.melt(id_vars=[c for c in (x, hue, style) if c], value_vars=list(metrics), var_name="metric",
                      value_name="value").assign(metric=lambda t: t["metric"].map(readable))
    long["value"] = scale * long["value"]
    grid = sns.relplot(data=long, x=x, y="value", hue=hue, style=style, col="metric", kind="line", marker="o",
                       markersize=5, errorbar=None, height=3.3, aspect=1.3, facet_kws={"sharey": percent},
                       legend=False)
    hues = list(dict.fromkeys(long[hue]))
    palette = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    if paper is not None:
        for metric, ax in grid.axes_dict.items():
            source = next(m for m, label in readable.items() if label == metric)
            for name, rows in paper.groupby(hue, sort=False):
                ax.plot(rows[x], scale * rows[source], linestyle="--", marker="o", mfc="none", color="grey",
                        label=f"{name} (paper)")
    grid.set_titles("{col_name}")
    grid.set_axis_labels(xlabel or x, "")
    if percent:
        grid.set(ylim=(-2, 102))
    from matplotlib.lines import Line2D
    styles = list(dict.fromkeys(long[style])) if style else []
    handles = [Line2D([], [], color=palette[h], marker="o") for h in hues]
    handles += [Line2D([], [], color="black", linestyle=ls) for ls, _ in zip(["-", "--", ":", "-."], styles)]
    labels = [str(h) for h in hues] + [str(s) for s in styles]
    if paper is not None:
        handles.append(Line2D([], [], color="grey", linestyle="--", marker="o", mfc="none"))
        labels.append("paper")
    _title(grid.figure, title)
    _legend_below(grid.figure, handles, labels)
    return grid.figure


def sweep_curves(table: pd.DataFrame, *, x: str, y: str, total: str, hue: str | None = None, facet: str | None = None,
                 xlabel: str | None = None, ylabel: str | None = None, title: str = "", logx: bool = False,
                 percent: bool = False):
    """A rate ``y`` against a swept parameter ``x``: the mean over the rows of each (``facet``, ``hue``, x)
    group (the seeds of a sweep), with the envelope of the rows' 95 % Wilson intervals over their
    ``total`` trials (:func:`nbutils.metrics.seed_envelope`, within [0, 1]), drawn by :func:`band_curves`.
    percent: fractions drawn as 0-100 %."""
    from .metrics import seed_envelope

    summary = seed_envelope(table, [k for k in (facet, hue) if k] + [x], y, total)
    return band_curves(summary, x=x, y=y, low=f"{y}_low", high=f"{y}_high", hue=hue, facet=facet, xlabel=xlabel,
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
                       linewidth=1 if units else 1.5, alpha=0.8, height=2.6, aspect=1.0, facet_kws={"sharey": True},
                       legend=False)
    grid.set_titles("{col_name}")
    grid.set_axis_labels(xlabel or x, (ylabel or y) + (" (%)" if percent else ""))
    if percent:
        grid.set(ylim=(-2, 102))
    from matplotlib.lines import Line2D
    hues = list(dict.fromkeys(data[hue]))
    palette = sns.color_palette(n_colors=len(hues))
    _title(grid.figure, title)
    _legend_below(grid.figure, [Line2D([], [], color=c, marker="o") for c in palette], [str(h) for h in hues],
                  title=hue)
    return grid.figure


def heatmap(ax, table: pd.DataFrame, *, fmt: str = "{:.1f}", vmin: float = 0, vmax: float = 100, title: str = ""):
    """An annotated heat map of a 2-D table (rows x columns of numbers, e.g. target x patch size),
    seaborn's ``heatmap`` on ``ax``; fmt: a format string for each cell's value."""
    import seaborn as sns

    annotations = table.map(lambda v: "" if pd.isna(v) else fmt.format(v))
    sns.heatmap(table.astype(float), ax=ax, annot=annotations, fmt="", cmap="viridis", vmin=vmin, vmax=vmax, cbar=False,
                annot_kws={"fontsize": 8}, linewidths=0.5, linecolor="white")
    ax.set_xlabel(table.columns.name or "")
    ax.set_ylabel(table.index.name or "")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", rotation=0)
    return ax


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


def _executed_without_a_frontend() -> bool:
    """Whether the running cell came from a kernel client that draws no widgets: nbclient (papermill,
    nbconvert) sends its cells with ``allow_stdin=False``; JupyterLab, Notebook, Colab and VS Code allow
    stdin. Outside a kernel (a script, the tests) this is False."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return kernel is not None and not getattr(kernel, "_allow_stdin", True)


def fgsm_explorer(model, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                  eps_max: float = 0.1, k: int = 5, epsilons: Sequence[float] = EXPLORER_EPSILONS):
    """Chapter 1's explorer: pick an image, move eps, switch convention; shows the original, the
    perturbation, the adversarial image and the top-k predictions. images: (N, C, H, W) in [0, 1].

    In Jupyter or Colab: a live ipywidgets explorer (any eps up to ``eps_max``). In a batch run
    (``$NBUTILS_BATCH`` set: a sweep's runs, and the committed chapters; or a cell sent by nbclient,
    which papermill, nbconvert and the tests use): :func:`fgsm_frames`, which needs neither a kernel
    nor the internet, over ``epsilons``; nbclient can hang on a live widget's first update
    (jupyter/nbclient#312)."""
    if os.environ.get(BATCH_ENV) or _executed_without_a_frontend():
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


def roc_panels(panels: dict, *, title: str = "", log_fpr: bool = False):
    """ROC curves, one panel per key of ``panels``, one line per curve: ``panels`` maps a panel title
    to {curve label: (fpr (M,), tpr (M,), auc)}; the legend shows each AUC. log_fpr: a second row of
    the same curves on a log false-positive axis, from 0.001, where a detector's useful operating
    points lie (the papers' curves hug that corner). Returns the figure."""
    import seaborn as sns

    rows = 2 if log_fpr else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(4.6 * len(panels), 3.9 * rows + 1.2), squeeze=False)
    handles = {}
    for column, (panel, curves_) in enumerate(panels.items()):
        colours = dict(zip(curves_, sns.color_palette(n_colors=len(curves_))))
        for row in range(rows):
            ax = axes[row, column]
            for label, (fpr, tpr, auc) in curves_.items():
                line, = ax.plot(fpr, tpr, color=colours[label], label=f"{label} (AUC {auc:.3f})")
                handles.setdefault(f"{panel}: {label} (AUC {auc:.3f})", line)
            ax.plot([1e-3, 1] if row else [0, 1], [1e-3, 1] if row else [0, 1], color="grey", lw=0.8, ls=":")
            ax.set(xlabel="false positive rate (clean flagged)" + (", log scale" if row else ""),
                   ylabel="true positive rate (adversarial flagged)", ylim=(0, 1.01),
                   title=panel if row == 0 else f"{panel}, low false-alarm rates")
            if row:
                ax.set_xscale("log")
                ax.set_xlim(1e-3, 1)
            else:
                ax.set_xlim(0, 1)
        axes[0, column].legend(fontsize=7, loc="lower right", frameon=True)
    _title(fig, title)
    fig.tight_layout()
    return fig


def _dots_with_bars(data: pd.DataFrame, *, x: str, y: str, low: str, high: str, order: Sequence[str], offset: float,
                    color=None, label=None, **_):
    """One dot per row at (x, position of y in ``order`` + offset) with a bar from low to high."""
    ax = plt.gca()
    positions = data[y].map({name: i for i, name in enumerate(order)}) + offset
    below, above = (data[x] - data[low]).clip(lower=0), (data[high] - data[x]).clip(lower=0)  # rounding: never < 0
    ax.errorbar(data[x], positions, xerr=[below, above], fmt="o", color=color,
                label=label, markersize=5, capsize=2, linewidth=1.2)


def report_card(card: pd.DataFrame, *, evaluations: dict[str, str], defence: str = "defence", facet: str = "dataset",
                title: str = ""):
    """The report card as a figure: per ``facet`` panel, one row per defence and, per evaluation, its
    accuracy with its interval (seaborn's FacetGrid). evaluations: {column: label}, each column a
    fraction with ``<column>_low`` and ``<column>_high``; drawn as percentages. Returns the figure."""
    import seaborn as sns

    order = list(dict.fromkeys(card[defence]))
    long = pd.concat([card[[facet, defence]].assign(evaluation=label, value=100 * card[column],
                                                    low=100 * card[f"{column}_low"], high=100 * card[f"{column}_high"])
                      for column, label in evaluations.items()], ignore_index=True)
    labels = list(evaluations.values())
    palette = dict(zip(labels, sns.color_palette(n_colors=len(labels))))
    grid = sns.FacetGrid(long, col=facet, hue="evaluation", hue_order=labels, palette=palette, sharey=True,
                         height=0.42 * len(order) + 1.4, aspect=1.15, despine=False)
    for k, label in enumerate(labels):
        offset = (k - (len(labels) - 1) / 2) * 0.22
        for ax, (_, panel) in zip(grid.axes.flat, long.groupby(facet, sort=False)):
            plt.sca(ax)
            _dots_with_bars(panel[panel["evaluation"] == label], x="value", y=defence, low="low", high="high",
                            order=order, offset=offset, color=palette[label], label=label)
    for ax in grid.axes.flat:
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(len(order) - 0.5, -0.5)
        ax.set_xlim(-2, 102)
        ax.grid(axis="x", alpha=0.3)
    grid.set_titles(template="{col_name}")
    grid.set_axis_labels("accuracy (%)", "")
    handles, names = grid.axes.flat[0].get_legend_handles_labels()
    _title(grid.figure, title)
    _legend_below(grid.figure, handles, names)
    return grid.figure
