"""Plots: forecasts (each series' recent history, point forecast and quantile bands) and word
alignments (one heatmap per translated text), each request's in one image.

Built on matplotlib's object-oriented API with the non-interactive Agg canvas (no pyplot, no
window, no change to the process's backend). matplotlib is the optional `plot` extra and is
imported only when a plot is drawn.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from seqcast.client.client import ForecastResult, SeriesForecast, Translation
from seqcast.client.series_csv import NamedSeries

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_PANELS = 12  # more panels than this are unreadable in one image; the rest are left out


class MatplotlibMissingError(ImportError):
    """Plotting was asked for but matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raises `MatplotlibMissingError`, saying what to install, when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise MatplotlibMissingError("plotting needs matplotlib: pip install 'seqcast[plot]'")


def plot_forecasts(
    series: Sequence[NamedSeries], result: ForecastResult, path: str | Path, history: int | None = None
) -> Path:
    """Draws one panel per series (the first `MAX_PANELS`) and writes the image to `path`.

    `series` are the histories that were forecast, in request order. Each panel shows the last
    `history` values of its series (default: those the model used plus a horizon's worth, but no
    more than 4 horizons or 48 values, whichever is more), the point forecast and the bands
    between quantile levels symmetric around 0.5, darker towards the middle. The x axis shows time
    stamps when the series has them (the forecast continuing their step), else step indices. The
    image format follows the suffix of `path` (PNG without one). Returns `path`.
    """
    if len(series) != len(result.forecasts):
        raise ValueError(
            f"{len(series)} series but {len(result.forecasts)} forecasts; pass the series that were forecast"
        )
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = min(len(series), MAX_PANELS)
    ncols = 1 if panels <= 3 else 2 if panels <= 8 else 3
    nrows = math.ceil(panels / ncols)
    figure = Figure(figsize=(6.4 * ncols, 2.6 * nrows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, s, forecast in zip(axes, series, result.forecasts):
        _panel(ax, s, forecast, result.point, history)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small", loc="upper left")
    title = f"{result.model} (version {result.model_version}): {result.point} forecast"
    if len(series) > panels:
        title += f"\nfirst {panels} of {len(series)} series shown; {len(series) - panels} left out"
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return Path(path)


def _panel(ax: Axes, s: NamedSeries, forecast: SeriesForecast, point: str, history: int | None) -> None:
    horizon = len(forecast.point)
    if history is None:
        history = min(forecast.context_used + horizon, max(4 * horizon, 48))
    keep = max(1, min(history, len(s.values)))
    future = s.future_times(horizon)
    past_x: Sequence[datetime | int]
    future_x: Sequence[datetime | int]
    if s.times is not None and future is not None:
        past_x, future_x = s.times[-keep:], future
        _date_axis(ax)
    else:
        n = len(s.values)
        past_x, future_x = range(n - keep, n), range(n, n + horizon)
    past_y = s.values[-keep:]

    ax.plot(past_x, past_y, color="black", linewidth=1, label="history")
    bands = _bands(list(forecast.quantiles))
    for k, (low, high) in enumerate(bands):  # outermost first, so inner bands paint over it
        ax.fill_between(
            future_x, forecast.quantiles[low], forecast.quantiles[high], linewidth=0,
            color=_shade(k, len(bands)), label=f"{low:g}–{high:g}",
        )
    # Start the forecast line at the last observation so history and forecast join.
    ax.plot([past_x[-1], *future_x], [past_y[-1], *forecast.point], color="C0", linewidth=1.5, label=point)
    if 0 < forecast.context_used < keep:
        ax.axvline(past_x[-forecast.context_used], color="grey", linestyle=":", linewidth=1, label="context start")
    ax.set_title(f"{s.name} ({forecast.context_used} values used)", fontsize="medium")
    ax.grid(alpha=0.3)


def _bands(levels: list[float]) -> list[tuple[float, float]]:
    """Pairs of levels symmetric around 0.5 (e.g. (0.1, 0.9), (0.25, 0.75)), outermost first."""
    return [
        (low, high)
        for low in sorted(levels)
        for high in levels
        if low < 0.5 and math.isclose(low + high, 1.0, abs_tol=1e-9)
    ]


def _shade(k: int, n: int) -> tuple[float, float, float]:
    """The k-th of n band colours: the point line's blue mixed into white, more of it inwards."""
    from matplotlib.colors import to_rgb

    weight = 0.2 + 0.4 * (k / (n - 1) if n > 1 else 0.5)
    red, green, blue = to_rgb("C0")
    return 1 - weight * (1 - red), 1 - weight * (1 - green), 1 - weight * (1 - blue)


def _date_axis(ax: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def plot_alignments(texts: Sequence[str], results: Sequence[Translation], path: str | Path) -> Path:
    """Draws one heatmap per translated text (the first `MAX_PANELS`) and writes the image to `path`.

    `results` are the translations of `texts`, requested with alignments. In each panel the
    columns are the source tokens, the rows the output tokens, both labelled with their tokenizer
    pieces, and darker cells are larger weights (each row sums to 1). The image format follows the
    suffix of `path` (PNG without one). Returns `path`.
    """
    if len(texts) != len(results):
        raise ValueError(f"{len(texts)} texts but {len(results)} translations; pass the texts that were translated")
    if any(r.alignments is None for r in results):
        raise ValueError("the translations carry no alignments: request them with alignments=True")
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = min(len(results), MAX_PANELS)
    shown = [r.alignments for r in results[:panels] if r.alignments is not None]
    # Cells of about the same size in every panel: widths by source tokens, heights by output tokens.
    columns = max(len(a.source_tokens) for a in shown)
    heights = [max(len(a.target_tokens), 1) for a in shown]
    figure = Figure(figsize=(max(5.0, 0.5 * columns + 2.5), 0.3 * sum(heights) + 2.2 * panels + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, squeeze=False, gridspec_kw={"height_ratios": [h + 6 for h in heights]}).ravel()
    for ax, text, result in zip(axes, texts, results):
        _heatmap(ax, text, result)
    title = "word alignments"
    if len(results) > panels:
        title += f"\nfirst {panels} of {len(results)} texts shown; {len(results) - panels} left out"
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return Path(path)


def _heatmap(ax: Axes, text: str, result: Translation) -> None:
    alignments = result.alignments
    assert alignments is not None
    weights = alignments.weights or [[0.0] * len(alignments.source_tokens)]
    ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(alignments.source_tokens)), alignments.source_tokens, rotation=60, ha="right",
                  rotation_mode="anchor", fontsize="small")
    ax.set_yticks(range(len(alignments.target_tokens)), alignments.target_tokens, fontsize="small")
    ax.set_xlabel("source tokens")
    ax.set_ylabel("output tokens")
    ax.set_title(f"{_shorten(text)}\n→ {_shorten(result.text)}", fontsize="medium")


def _shorten(text: str, most: int = 60) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"
