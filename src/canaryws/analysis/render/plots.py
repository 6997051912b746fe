"""The report's plots, for the page (:mod:`.html`): inline SVG drawn by matplotlib, which is
imported only when :func:`figures` or :func:`time_figures` draws.

:func:`time_figures`: per critical rate metric, the strict − lenient difference over time
with its two bands (pointwise and anytime-valid, :mod:`canaryws.analysis.timeline`) and a zero
line, above a panel sharing the time axis with the rollout percentage as a step line and the
rollout controller's decisions as markers.

:func:`figures`: the cohorts side by side. A rate metric (0/1 per connection) is each cohort's
rate with its Wilson interval; any other metric has two panels sharing both axes, lenient
(the baseline) left and strict right, with each cohort's per-connection values; then the batch
latency histogram, and the skipped and rejected records by reason.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from canaryws.analysis.render.rows import COHORTS, DASH, as_map, cohort_keys, finite, fmt_count, lookup, metrics_of
from canaryws.analysis.timeline import LEVEL, wilson
from canaryws.core.histogram import BOUNDS_MS
from canaryws.core.strategies import LENIENT, STRICT

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COHORT_COLOURS = {LENIENT.name: "#4c72b0", STRICT.name: "#dd8452"}
DIFFERENCE_COLOUR = "#8c2d04"  # the strict − lenient line
BAND_COLOUR = "#f0a35e"  # the pointwise band (opaque: the page's test finds its pixels)
ANYTIME_COLOUR = "#fbdcc0"  # the anytime-valid band, wider, drawn under it
ROLLOUT_COLOUR = "#6a3d9a"  # the rollout step line
DECISION_STYLES: dict[str, tuple[str, str]] = {  # kind -> (colour, marker)
    "start": ("#444444", "o"),
    "promote": ("#2e7d32", "^"),
    "hold": ("#f9a825", "o"),
    "pause": ("#757575", "s"),
    "resume": ("#1565c0", ">"),
    "manual_change": ("#6a1b9a", "D"),
    "rollback": ("#c62828", "v"),
    "abort": ("#7f0000", "X"),
    "complete": ("#1b5e20", "*"),
    "shadow_start": ("#00838f", "P"),
    "shadow_pass": ("#2e7d32", "P"),
    "shadow_fail": ("#c62828", "P"),
}
OTHER_DECISION = ("#555555", "d")
QUIET_DECISIONS = frozenset({"hold"})  # frequent: a marker only, no vertical line
FIGSIZE = (8.0, 2.6)
TIME_FIGSIZE = (8.0, 3.9)
SCALE_FROM = 20
"""The difference axis is scaled to the points where both cohorts have at least this many
connections (when some do): the first few connections' bands span ±100 points and would flatten
the rest; they run off the axis instead."""
DISTINCT_BARS = 10  # up to this many distinct values: one bar per value, else a histogram


def _values(metric: Mapping[str, Any], cohort: str) -> list[float]:
    raw = as_map(metric.get("values")).get(cohort)
    if not isinstance(raw, Iterable) or isinstance(raw, str):
        return []
    return [v for v in (finite(x) for x in raw) if v is not None]


def _is_rate(metric: Mapping[str, Any]) -> bool:
    """A 0/1-per-connection metric judged as a rate (the judge's ``rate-ratio`` test)."""
    return metric.get("test") == "rate-ratio"


def _counts(metric: Mapping[str, Any], cohort: str) -> tuple[int, int] | None:
    """``(events, n)`` of a rate metric's cohort, None when unknown or empty."""
    side = as_map(metric.get(cohort))
    n, events = finite(side.get("n")), finite(side.get("events"))
    if n is None or events is None or n < 1 or not 0 <= events <= n:
        return None
    return int(events), int(n)


def figures(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(svg, caption)`` of each figure of the cohorts side by side; empty when there is
    nothing to plot."""
    drawers: list[tuple[str, Any]] = []
    for metric in metrics_of(report):
        if _is_rate(metric):
            if any(_counts(metric, c) for c in COHORTS):
                caption = (f"{metric.get('name', '?')}: each cohort's rate (share of connections that ended) with "
                           f"its {LEVEL:.0%} Wilson score interval ({metric.get('result', DASH)})")
                drawers.append((caption, lambda fig, m=metric: _draw_rates(fig, m)))
        elif any(_values(metric, c) for c in COHORTS):
            caption = f"{metric.get('name', '?')}: per-connection values ({metric.get('result', DASH)})"
            drawers.append((caption, lambda fig, m=metric: _draw_metric(fig, m)))
    cohorts = as_map(report.get("cohorts"))
    if any(sum(_histogram(as_map(cohorts.get(c)))) for c in COHORTS):
        drawers.append(("batch latency (share of batches per bucket, log scale)",
                        lambda fig: _draw_latency(fig, cohorts)))
    if _reason_labels(cohorts):
        drawers.append(("skipped and rejected records by reason (share of records)",
                        lambda fig: _draw_reasons(fig, cohorts)))
    return _draw_all(drawers, "f")


def time_figures(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(svg, caption)`` of each critical rate metric's time figure (the report's
    ``timeline``); empty when there is none."""
    line = as_map(report.get("timeline"))
    series = as_map(line.get("metrics"))
    results = {str(m.get("name")): m for m in metrics_of(report)}
    rollout = _rollout_steps(line)
    decisions = _decisions(line)
    source = as_map(line.get("rollout")).get("source")
    drawers: list[tuple[str, Any]] = []
    for name, raw in series.items():
        points = _series_points(raw)
        if not points:
            continue
        metric = results.get(str(name), {})
        rollout_text = ("the rollout controller's percent" if source == "decisions"
                        else "the share the flags configured when each connection opened")
        caption = (f"{name}: strict − lenient rate, cumulative over the connections that ended since "
                   f"{line.get('start') or DASH} (percentage points). Dark band: {line.get('band') or 'pointwise'} — "
                   f"valid at any one time taken alone. Light band: {line.get('anytime_band') or 'anytime-valid'} — "
                   f"valid at all times at once. The axis fits the bands from {SCALE_FROM} connections per "
                   f"cohort on (earlier ones run off it). Below: the rollout percentage ({rollout_text})"
                   + (" and the rollout controller's decisions." if decisions else "."))
        drawers.append((caption, lambda fig, n=str(name), p=points, m=metric:
                        _draw_time(fig, n, m, p, rollout, decisions, line)))
    return _draw_all(drawers, "t")


def _draw_all(drawers: Sequence[tuple[str, Any]], prefix: str) -> list[tuple[str, str]]:
    if not drawers:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    for index, (caption, draw) in enumerate(drawers):
        # Text stays text (small SVGs; the page's font draws it); a fixed salt keeps
        # the output reproducible.
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "canaryws", "font.size": 8,
                                    "timezone": "UTC"}):
            fig = plt.figure(figsize=FIGSIZE)
            try:
                draw(fig)
                out.append((_svg(fig, f"{prefix}{index}-"), caption))
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


def _title(fig: Figure, metric: Mapping[str, Any], name: str, suffix: str = "") -> None:
    result = str(metric.get("result", DASH))
    colour = {"fail": "#c62828", "pass": "#2e7d32", "inconclusive": "#b7791f"}.get(result, "#555")
    fig.suptitle(f"{_label(name)}{suffix} — {_label(result)}", color=colour, fontweight="bold")


def _draw_rates(fig: Figure, metric: Mapping[str, Any]) -> None:
    """Each cohort's rate (events / connections that ended) with its Wilson interval: a 0/1
    metric as what it is, not as a histogram of zeros and ones."""
    fig.set_size_inches(FIGSIZE[0], 1.75)
    fig.subplots_adjust(left=0.09, right=0.985, bottom=0.27, top=0.78)
    _title(fig, metric, str(metric.get("name", "?")))
    ax = fig.add_subplot()
    positions = list(range(len(COHORTS)))
    rates, lows, highs, labels = [], [], [], []
    for cohort in COHORTS:
        counts = _counts(metric, cohort)
        interval = None if counts is None else wilson(*counts)
        if counts is None or interval is None:
            rates.append(0.0)
            lows.append(0.0)
            highs.append(0.0)
            labels.append("no data")
            continue
        events, n = counts
        rate = 100 * events / n
        rates.append(rate)
        lows.append(rate - 100 * interval[0])
        highs.append(100 * interval[1] - rate)
        labels.append(f"{rate:.2f}% [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]   {events:,} / {n:,}")
    ax.barh(positions, rates, height=0.6, color=[COHORT_COLOURS[c] for c in COHORTS],
            xerr=[lows, highs], error_kw={"ecolor": "#222", "capsize": 4, "linewidth": 1})
    top = max(r + h for r, h in zip(rates, highs, strict=True)) or 1.0
    for position, rate, high, label in zip(positions, rates, highs, labels, strict=True):
        ax.text(rate + high + top * 0.02, position, label, va="center", fontsize=7)
    ax.set_xlim(0, top * 1.6)
    ax.set_yticks(positions, list(COHORTS))
    ax.invert_yaxis()
    ax.set_xlabel(f"% of connections that ended ({LEVEL:.0%} Wilson interval)")


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


# -- over time ---------------------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    """An ISO 8601 time of the report as an aware datetime (naive means UTC), None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Point(NamedTuple):
    """A series point with a difference, in % points."""

    time: datetime
    difference: float
    low: float | None
    high: float | None
    cs_low: float | None
    cs_high: float | None
    n: int  # connections of the smaller cohort so far


def _series_points(raw: Any) -> list[_Point]:
    """The points of a series with a difference, in % points, in time order."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    out = []
    for point in raw:
        entry = as_map(point)
        moment, difference = _when(entry.get("time")), finite(entry.get("difference"))
        if moment is None or difference is None:
            continue
        bands = [finite(entry.get(k)) for k in ("low", "high", "cs_low", "cs_high")]
        low, high, cs_low, cs_high = (None if b is None else 100 * b for b in bands)
        n = min(finite(as_map(entry.get(c)).get("n")) or 0.0 for c in COHORTS)
        out.append(_Point(moment, 100 * difference, low, high, cs_low, cs_high, int(n)))
    return sorted(out, key=lambda p: p.time)


def _rollout_steps(line: Mapping[str, Any]) -> list[tuple[datetime, float]]:
    steps = as_map(line.get("rollout")).get("steps")
    if not isinstance(steps, Sequence) or isinstance(steps, str):
        return []
    out = []
    for step in steps:
        entry = as_map(step)
        moment, percent = _when(entry.get("time")), finite(entry.get("percent"))
        if moment is not None and percent is not None:
            out.append((moment, percent))
    return sorted(out, key=lambda s: s[0])


def _decisions(line: Mapping[str, Any]) -> list[tuple[datetime, str, float | None]]:
    raw = line.get("decisions")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    out = []
    for decision in raw:
        entry = as_map(decision)
        moment = _when(entry.get("time"))
        if moment is not None:
            out.append((moment, str(entry.get("kind") or "?"), finite(entry.get("percent"))))
    return sorted(out, key=lambda d: d[0])


def _percent_at(steps: Sequence[tuple[datetime, float]], moment: datetime) -> float | None:
    current = None
    for when, percent in steps:
        if when > moment:
            break
        current = percent
    return current


def _draw_time(fig: Figure, name: str, metric: Mapping[str, Any],
               points: Sequence[_Point],
               steps: Sequence[tuple[datetime, float]], decisions: Sequence[tuple[datetime, str, float | None]],
               line: Mapping[str, Any]) -> None:
    """The difference over time with its bands, above the rollout step line and the decisions."""
    import matplotlib.dates as mdates

    fig.set_size_inches(*TIME_FIGSIZE)
    fig.subplots_adjust(left=0.09, right=0.8, bottom=0.1, top=0.9, hspace=0.08)
    _title(fig, metric, name, " over time")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.4, 1.0]})
    times = [p.time for p in points]
    start = _when(line.get("start")) or times[0]
    end = _when(line.get("end")) or times[-1]
    if end <= start:  # an instant: a minute around it
        start, end = start - timedelta(seconds=30), start + timedelta(seconds=30)

    def band(anytime: bool) -> tuple[list[datetime], list[float], list[float]]:
        when, lows, highs = [], [], []
        for p in points:
            low, high = (p.cs_low, p.cs_high) if anytime else (p.low, p.high)
            if low is not None and high is not None:
                when.append(p.time)
                lows.append(low)
                highs.append(high)
        return when, lows, highs

    when, low, high = band(anytime=True)
    if when:
        top.fill_between(when, low, high, color=ANYTIME_COLOUR, linewidth=0, step=None,
                         label=f"{_level(line)} anytime-valid")
    when, low, high = band(anytime=False)
    if when:
        top.fill_between(when, low, high, color=BAND_COLOUR, linewidth=0, label=f"{_level(line)} pointwise")
    top.axhline(0.0, color="#222", linewidth=0.8)
    top.plot(times, [p.difference for p in points], color=DIFFERENCE_COLOUR, linewidth=1.5, marker="o", markersize=2,
             label="strict − lenient")
    top.set_ylim(*_difference_limits(points, SCALE_FROM))
    top.set_ylabel("strict − lenient\n(% points)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)

    if steps:
        xs = [s[0] for s in steps if s[0] <= end]
        ys = [s[1] for s in steps if s[0] <= end]
        if xs:
            xs.append(max(end, xs[-1]))
            ys.append(ys[-1])
            bottom.step(xs, ys, where="post", color=ROLLOUT_COLOUR, linewidth=1.8, label="rollout %")
            shown: set[float] = set()
            for x, level in zip(xs[:-1], ys[:-1], strict=True):
                if level not in shown:
                    shown.add(level)
                    bottom.annotate(f"{level:g}%", (max(x, start), level), textcoords="offset points", xytext=(2, 3),
                                    fontsize=7, color=ROLLOUT_COLOUR)
    peak = max([s[1] for s in steps] + [d[2] for d in decisions if d[2] is not None] + [1.0])
    bottom.set_ylim(0, peak * 1.35)
    seen: set[str] = set()
    for moment, kind, percent in decisions:
        colour, marker = DECISION_STYLES.get(kind, OTHER_DECISION)
        y = percent if percent is not None else _percent_at(steps, moment)
        label = None if kind in seen else _label(kind)
        seen.add(kind)
        bottom.plot([moment], [y if y is not None else 0.0], linestyle="none", marker=marker, markersize=6,
                    color=colour, markeredgecolor="#222", markeredgewidth=0.5, label=label, zorder=3)
        if kind not in QUIET_DECISIONS:
            for ax in (top, bottom):
                ax.axvline(moment, color=colour, linewidth=0.9, linestyle=":", zorder=1)
    bottom.set_ylabel("rollout %")
    if steps or decisions:
        bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.15), fontsize=7, frameon=False)
    else:
        bottom.text(0.5, 0.5, "rollout unknown", ha="center", va="center", transform=bottom.transAxes, color="#888")
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    bottom.set_xlim(start, end)
    bottom.set_xlabel("time (UTC)")


def _difference_limits(points: Sequence[_Point], scale_from: int) -> tuple[float, float]:
    """The difference axis: zero, every point's difference and the pointwise band of the points
    with at least ``scale_from`` connections in each cohort (all points when none has)."""
    scaled = [p for p in points if p.n >= scale_from] or list(points)
    values = [0.0, *(p.difference for p in points)]
    values += [v for p in scaled for v in (p.low, p.high) if v is not None]
    low, high = min(values), max(values)
    pad = 0.12 * (high - low) or 1.0
    return max(-100.0, low - pad), min(100.0, high + pad)


def _level(line: Mapping[str, Any]) -> str:
    level = finite(line.get("level"))
    return f"{level:.0%}" if level is not None else "95%"
