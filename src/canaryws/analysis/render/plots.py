"""The cohorts' plots side by side, for the page (:mod:`.html`): inline SVG drawn by
matplotlib, which is imported only when :func:`figures` draws.

Each figure has two panels sharing both axes, lenient (the baseline) left and strict
right: each metric's per-connection values, the batch latency histogram, and the skipped
and rejected records by reason.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from canaryws.analysis.render.rows import COHORTS, DASH, as_map, cohort_keys, finite, fmt_count, lookup, metrics_of
from canaryws.core.histogram import BOUNDS_MS
from canaryws.core.strategies import LENIENT, STRICT

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COHORT_COLOURS = {LENIENT.name: "#4c72b0", STRICT.name: "#dd8452"}
FIGSIZE = (8.0, 2.6)
DISTINCT_BARS = 10  # up to this many distinct values: one bar per value, else a histogram


def _values(metric: Mapping[str, Any], cohort: str) -> list[float]:
    raw = as_map(metric.get("values")).get(cohort)
    if not isinstance(raw, Iterable) or isinstance(raw, str):
        return []
    return [v for v in (finite(x) for x in raw) if v is not None]


def figures(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(svg, caption)`` of each figure; empty when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers: list[tuple[str, Any]] = []
    for metric in metrics_of(report):
        if any(_values(metric, c) for c in COHORTS):
            caption = f"{metric.get('name', '?')}: per-connection values ({metric.get('result', DASH)})"
            drawers.append((caption, lambda fig, m=metric: _draw_metric(fig, m)))
    cohorts = as_map(report.get("cohorts"))
    if any(sum(_histogram(as_map(cohorts.get(c)))) for c in COHORTS):
        drawers.append(("batch latency (share of batches per bucket, log scale)",
                        lambda fig: _draw_latency(fig, cohorts)))
    if _reason_labels(cohorts):
        drawers.append(("skipped and rejected records by reason (share of records)",
                        lambda fig: _draw_reasons(fig, cohorts)))

    out: list[tuple[str, str]] = []
    for index, (caption, draw) in enumerate(drawers):
        # Text stays text (small SVGs; the page's font draws it); a fixed salt keeps
        # the output reproducible.
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "canaryws", "font.size": 8}):
            fig = plt.figure(figsize=FIGSIZE)
            try:
                draw(fig)
                out.append((_svg(fig, f"f{index}-"), caption))
            finally:
                plt.close(fig)
    return out


_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REFERENCE = re.compile(r'(url\(#|href="#)([^")]+)')


def _svg(fig: Figure, prefix: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog or doctype, no
    metadata, and every id (with its references) prefixed to be unique in the page."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Format": None, "Type": None, "Creator": None, "Date": None})
    text = buffer.getvalue()
    text = text[max(0, text.find("<svg")):].strip()
    text = _SVG_ID.sub(lambda m: f'id="{prefix}{m[1]}"', text)
    return _SVG_REFERENCE.sub(lambda m: f"{m[1]}{prefix}{m[2]}", text)


def _pair(fig: Figure, *, fixed: bool = True) -> dict[str, Axes]:
    """Two panels, one per cohort in :data:`COHORTS` order from the left, sharing both
    axes. ``fixed`` margins (numeric tick labels) lay out in half the time of the
    constrained layout."""
    if fixed:
        fig.subplots_adjust(left=0.09, right=0.985, bottom=0.17, top=0.8, wspace=0.06)
    else:
        fig.set_layout_engine("constrained")
    return dict(zip(COHORTS, fig.subplots(1, 2, sharey=True, sharex=True), strict=True))


def _no_data(ax: Axes, cohort: str) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
    ax.set_title(cohort)


def _label(text: Any) -> str:
    """Report text for a matplotlib label: a ``$`` must not start mathtext."""
    return str(text).replace("$", r"\$")


def _draw_metric(fig: Figure, metric: Mapping[str, Any]) -> None:
    """Per-connection values, values on the shared y axis: the share of connections at
    each value (few distinct values, e.g. 0/1) or in each of common bins (a histogram)."""
    name = _label(metric.get("name", "?"))
    result = str(metric.get("result", DASH))
    title_colour = {"fail": "#c62828", "pass": "#2e7d32", "inconclusive": "#b7791f"}.get(result, "#555")
    fig.suptitle(f"{name} — {_label(result)}", color=title_colour, fontweight="bold")
    values = {c: _values(metric, c) for c in COHORTS}
    everything = [v for c in COHORTS for v in values[c]]
    distinct = sorted(set(everything))
    low, high = distinct[0], distinct[-1]
    as_histogram = len(distinct) > DISTINCT_BARS
    edges: list[float] = []
    thickness = 0.0
    if as_histogram:
        bins = max(5, min(30, round(math.sqrt(len(everything)))))
        edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    else:
        gaps = [b - a for a, b in itertools.pairwise(distinct)]
        thickness = 0.8 * min(gaps) if gaps else (abs(low) * 0.1 or 0.5)
    axes = _pair(fig)
    for cohort, ax in axes.items():
        data = values[cohort]
        if not data:
            _no_data(ax, cohort)
            continue
        weight = 1 / len(data)
        colour = COHORT_COLOURS[cohort]
        if as_histogram:
            ax.hist(data, bins=edges, orientation="horizontal", weights=[weight] * len(data), color=colour, alpha=0.85)
        else:
            shares = [sum(weight for v in data if v == value) for value in distinct]
            bars = ax.barh(distinct, shares, height=thickness, color=colour, alpha=0.85)
            ax.bar_label(bars, labels=[f"{share:.1%}" if share else "" for share in shares], fontsize=7, padding=2)
        mean = sum(data) / len(data)
        ordered = sorted(data)
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        ax.axhline(mean, color="#222", linewidth=1, label=f"mean {mean:.4g}")
        ax.axhline(median, color="#222", linewidth=1, linestyle="--", label=f"median {median:.4g}")
        ax.legend(loc="best", fontsize=7, frameon=False)
        ax.set_title(f"{cohort} (n={len(data):,})")
        ax.set_xlabel("share of connections")
    left = axes[COHORTS[0]]
    left.set_ylabel(name)
    left.margins(x=0.15)


def _histogram(cohort: Mapping[str, Any]) -> list[float]:
    raw = cohort.get("latency_histogram")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    return [max(0.0, finite(v) or 0.0) for v in raw[: len(BOUNDS_MS) + 1]]


def _draw_latency(fig: Figure, cohorts: Mapping[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    step = math.sqrt(2)
    edges = [BOUNDS_MS[0] / step, *BOUNDS_MS, BOUNDS_MS[-1] * step]
    counts = {c: _histogram(as_map(cohorts.get(c))) for c in COHORTS}
    used = [i for c in COHORTS for i, n in enumerate(counts[c]) if n > 0]
    first, last = max(0, min(used) - 1), min(len(edges) - 1, max(used) + 2)
    fig.suptitle("batch latency", fontweight="bold")
    axes = _pair(fig)
    for cohort, ax in axes.items():
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
        ax.set_xlim(edges[first], edges[last])
        data = counts[cohort] + [0.0] * (len(edges) - 1 - len(counts[cohort]))
        total = sum(data)
        if not total:
            _no_data(ax, cohort)
            continue
        ax.stairs([n / total for n in data], edges, fill=True, color=COHORT_COLOURS[cohort], alpha=0.85)
        latency = as_map(as_map(cohorts.get(cohort)).get("latency_ms"))
        for quantile, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            value = finite(latency.get(quantile))
            if value is not None and value > 0:
                ax.axvline(value, color="#222", linewidth=1, linestyle=style, label=f"{quantile} {value:.3g} ms")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7, frameon=False)
        ax.set_title(f"{cohort} ({int(total):,} batches)")
        ax.set_xlabel("ms per batch")
    axes[COHORTS[0]].set_ylabel("share of batches")


def _reason_labels(cohorts: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(field, reason) for field in ("skipped", "rejected") for reason in cohort_keys(cohorts, field)]


def _draw_reasons(fig: Figure, cohorts: Mapping[str, Any]) -> None:
    labels = _reason_labels(cohorts)
    positions = list(range(len(labels)))
    fig.set_size_inches(FIGSIZE[0], max(FIGSIZE[1], 1.2 + 0.22 * len(labels)))
    fig.suptitle("skipped and rejected records", fontweight="bold")
    axes = _pair(fig, fixed=False)
    for cohort, ax in axes.items():
        side = as_map(cohorts.get(cohort))
        rates = []
        for field, reason in labels:
            entry = lookup(as_map(side.get(field)), reason)
            rates.append(100 * (finite(as_map(entry).get("rate")) or 0.0))
        colours = [COHORT_COLOURS[cohort] if field == "rejected" else "#9a9a9a" for field, _ in labels]
        bars = ax.barh(positions, rates, color=colours)
        ax.bar_label(bars, labels=[f"{r:.2f}%" if r else "" for r in rates], fontsize=7, padding=2)
        ax.set_title(f"{cohort} (records: {fmt_count(side.get('records'))})")
        ax.set_xlabel("% of records")
        ax.margins(x=0.25)
    left = axes[COHORTS[0]]
    left.set_yticks(positions, [_label(f"{field}: {reason}") for field, reason in labels])
    left.invert_yaxis()
