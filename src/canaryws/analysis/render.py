"""Renderers of a canary report (the dict :func:`canaryws.analysis.judge.judge` returns).

- :func:`render_terminal` prints it with rich: the verdict and its reasons, the cohort
  table, the judgement table, the sample-ratio check and the shadow comparison;
- :func:`render_html` returns one self-contained HTML page: the same tables, then the
  cohorts' plots side by side (inline SVG drawn by matplotlib, no external resources).

Both read the report defensively: a key that is absent, a ``None`` or an empty cohort
renders as "—" (or a note) instead of failing, so a report of an empty window still
renders. Matplotlib is imported only when a page is rendered.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from canaryws.core.histogram import BOUNDS_MS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COHORTS = ("lenient", "strict")
DASH = "—"
VERDICT_STYLES = {"promote": "bold green", "hold": "bold yellow", "rollback": "bold red"}
RESULT_STYLES = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "nodata": "dim"}
COHORT_COLOURS = {"lenient": "#4c72b0", "strict": "#dd8452"}
FIGSIZE = (8.0, 2.6)

Row = tuple[str, ...]


# -- reading and formatting ------------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    """A finite number, or None (for None, bools, strings, NaN, ±inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def fmt_count(value: Any) -> str:
    number = _number(value)
    if number is None:
        return DASH
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.2f}"


def fmt_rate(value: Any) -> str:
    """A fraction as a percentage with two decimals; "—" when unknown."""
    number = _number(value)
    return DASH if number is None else f"{number * 100:.2f}%"


def fmt_ms(value: Any) -> str:
    number = _number(value)
    return DASH if number is None else f"{number:,.2f}"


def fmt_value(value: Any, *, signed: bool = False) -> str:
    number = _number(value)
    if number is None:
        return DASH
    return f"{number:+.4g}" if signed else f"{number:.4g}"


def fmt_p(value: Any) -> str:
    number = _number(value)
    if number is None:
        return DASH
    return f"{number:.1e}" if 0 < number < 1e-4 else f"{number:.4f}"


def _count_and_rate(count: Any, rate: Any) -> str:
    return f"{fmt_count(count)} ({fmt_rate(rate)})"


def _code_order(code: str) -> tuple[int, float, str]:
    """Numeric codes in numeric order, then anything else."""
    try:
        number = float(code)
    except ValueError:
        return (1, 0.0, code)
    return (0, number, code) if math.isfinite(number) else (1, 0.0, code)


def _keys(cohorts: Mapping[str, Any], field: str) -> list[str]:
    """The keys of ``cohort[field]`` in either cohort: numeric codes in numeric order, then the rest."""
    keys: set[str] = set()
    for name in COHORTS:
        keys.update(str(k) for k in _map(_map(cohorts.get(name)).get(field)))
    return sorted(keys, key=_code_order)


def _count_of(mapping: Any, key: str) -> str:
    """The formatted count ``mapping[key]``, 0 when absent."""
    return fmt_count(_lookup(_map(mapping), key) or 0)


def _lookup(mapping: Mapping[str, Any], key: str) -> Any:
    """``mapping[key]`` also when the report was built with int keys (close codes)."""
    if key in mapping:
        return mapping[key]
    for k, v in mapping.items():
        if str(k) == key:
            return v
    return None


def cohort_rows(report: Mapping[str, Any]) -> list[Row]:
    """The cohort table: ``(label, lenient, strict)`` rows of formatted cells."""
    cohorts = _map(report.get("cohorts"))
    sides = [_map(cohorts.get(name)) for name in COHORTS]

    def row(label: str, cell: Any) -> Row:
        return (label, *(cell(side) for side in sides))

    rows: list[Row] = [
        row("clients", lambda c: fmt_count(c.get("clients"))),
        row("connections", lambda c: fmt_count(c.get("connections"))),
        row("batches", lambda c: fmt_count(c.get("batches"))),
        row("records", lambda c: fmt_count(c.get("records"))),
        row("accepted", lambda c: _count_and_rate(c.get("accepted"), c.get("accepted_rate"))),
    ]
    for field in ("skipped", "rejected"):
        for reason in _keys(cohorts, field):

            def reason_cell(c: Mapping[str, Any], field: str = field, reason: str = reason) -> str:
                entry = _lookup(_map(c.get(field)), reason)
                if entry is None:
                    return "0"
                entry = _map(entry)
                return _count_and_rate(entry.get("count"), entry.get("rate"))

            rows.append(row(f"{field}: {reason}", reason_cell))
    rows.append(row("error frames", lambda c: _count_and_rate(c.get("error_frames"), c.get("error_frame_rate"))))
    for code in _keys(cohorts, "errors_by_code"):
        rows.append(row(f"errors: {code}", lambda c, code=code: _count_of(c.get("errors_by_code"), code)))
    rows.append(row("closed", lambda c: fmt_count(c.get("closed"))))
    rows.append(
        row("abnormal closes", lambda c: _count_and_rate(c.get("abnormal_closes"), c.get("abnormal_close_rate")))
    )
    for code in _keys(cohorts, "closes_by_code"):
        rows.append(row(f"closes: {code}", lambda c, code=code: _count_of(c.get("closes_by_code"), code)))
    rows.append(row("retries", lambda c: _count_and_rate(c.get("retries"), c.get("retry_rate"))))
    for quantile in ("p50", "p95", "p99"):
        rows.append(row(f"latency {quantile} (ms)", lambda c, q=quantile: fmt_ms(_map(c.get("latency_ms")).get(q))))
    return rows


JUDGEMENT_COLUMNS = ("metric", "lenient mean", "strict mean", "effect", "tolerance", "p-value", "result", "critical")


def _mean_cell(side: Any) -> str:
    side = _map(side)
    mean = fmt_value(side.get("mean"))
    n = _number(side.get("n"))
    return mean if n is None else f"{mean} (n={fmt_count(n)})"


def _rate_cell(side: Any) -> str:
    side = _map(side)
    return f"{fmt_rate(side.get('mean'))} ({fmt_count(side.get('events'))}/{fmt_count(side.get('n'))})"


def _ratio_text(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "inf" if value == "inf" or (isinstance(value, float) and math.isinf(value)) else DASH
    return f"{number:.3g}"


def judgement_rows(report: Mapping[str, Any]) -> list[Row]:
    """One row per metric. A rate-ratio metric shows its rates (events/connections), the ratio
    with its always-valid interval as the effect, the tolerated ratio and floor, and its
    always-valid p-value (1 / the highest e-value)."""
    rows: list[Row] = []
    for metric in _metrics(report):
        if metric.get("test") == "rate-ratio":
            interval = metric.get("ratio_interval") or [None, None]
            tolerance = _map(metric.get("tolerance"))
            rows.append((
                str(metric.get("name", "?")),
                _rate_cell(metric.get("lenient")),
                _rate_cell(metric.get("strict")),
                f"×{_ratio_text(metric.get('ratio'))} [{_ratio_text(interval[0])}, {_ratio_text(interval[1])}]",
                f"×{_ratio_text(tolerance.get('ratio'))}, +{fmt_rate(tolerance.get('excess'))}",
                fmt_p(metric.get("p_value")),
                str(metric.get("result", DASH)),
                "yes" if metric.get("critical") else "no",
            ))
            continue
        rows.append((
            str(metric.get("name", "?")),
            _mean_cell(metric.get("lenient")),
            _mean_cell(metric.get("strict")),
            fmt_value(metric.get("effect"), signed=True),
            fmt_value(metric.get("tolerance")),
            fmt_p(metric.get("p_value")),
            str(metric.get("result", DASH)),
            "yes" if metric.get("critical") else "no",
        ))
    return rows


def _metrics(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    metrics = report.get("metrics")
    if not isinstance(metrics, Sequence) or isinstance(metrics, str):
        return []
    return [m for m in metrics if isinstance(m, Mapping)]


def _reasons(report: Mapping[str, Any]) -> list[str]:
    reasons = report.get("reasons")
    if isinstance(reasons, str):
        return [reasons]
    if not isinstance(reasons, Iterable):
        return []
    return [str(r) for r in reasons]


def srm_line(report: Mapping[str, Any]) -> tuple[str, str]:
    """The sample-ratio-mismatch check as one line, and its status: ok, mismatch or unchecked."""
    srm = _map(report.get("srm"))
    detail = str(srm.get("detail") or "")
    if not srm.get("checked"):
        if detail.startswith("not checked"):
            return (detail, "unchecked")
        return (f"not checked{': ' + detail if detail else ''}", "unchecked")
    status = "mismatch" if srm.get("mismatch") else "ok"
    text = (
        f"{status.upper()}: {fmt_count(srm.get('strict_clients'))} strict / "
        f"{fmt_count(srm.get('lenient_clients'))} lenient clients, strict share "
        f"{fmt_rate(srm.get('observed_strict_share'))} (expected {fmt_rate(srm.get('expected_strict_share'))}), "
        f"p = {fmt_p(srm.get('p_value'))}"
    )
    return (text, status)


def window_line(report: Mapping[str, Any]) -> str | None:
    window = report.get("window")
    if not isinstance(window, Mapping):
        return None
    files = _window_files(report)
    start = window.get("start") or DASH
    end = window.get("end") or DASH
    parts = [
        f"{start} → {end}",
        f"{len(files)} file{'' if len(files) == 1 else 's'}",
        f"{fmt_count(window.get('spans'))} spans",
        f"{fmt_count(window.get('connections'))} connections",
    ]
    return " · ".join(parts)


def _window_files(report: Mapping[str, Any]) -> list[str]:
    files = _map(report.get("window")).get("files")
    return [str(f) for f in files] if isinstance(files, Sequence) and not isinstance(files, str) else []


def rules_line(report: Mapping[str, Any]) -> str | None:
    rules = _map(report.get("rules"))
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in rules.items()
             if k != "metrics" and not isinstance(v, Mapping | list)]
    return ", ".join(parts) if parts else None


SHADOW_COLUMNS = ("", "all", "lenient", "strict")


def _has_shadow(report: Mapping[str, Any]) -> bool:
    return bool(_map(report.get("shadow")))


def shadow_rows(report: Mapping[str, Any]) -> list[Row]:
    """The shadow comparison: ``(label, all, lenient, strict)`` rows (the strategy serving the cohort is primary)."""
    shadow = _map(report.get("shadow"))
    per_cohort = _map(shadow.get("cohorts"))
    sides = [shadow, *(_map(per_cohort.get(name)) for name in COHORTS)]

    def row(label: str, cell: Any) -> Row:
        return (label, *(cell(side) for side in sides))

    rows: list[Row] = [
        row("batches compared", lambda s: fmt_count(s.get("batches"))),
        row("batches skipped", lambda s: fmt_count(s.get("skipped"))),
        row("records compared", lambda s: fmt_count(s.get("records"))),
        row("divergent records", lambda s: _count_and_rate(s.get("divergent"), s.get("divergence_rate"))),
    ]
    pairs: set[tuple[str, str]] = set()
    for side in sides:
        for kind, reasons in _map(side.get("by_kind")).items():
            pairs.update((str(kind), str(reason)) for reason in _map(reasons))
    for kind, reason in sorted(pairs):

        def pair_cell(s: Mapping[str, Any], kind: str = kind, reason: str = reason) -> str:
            return _count_of(_lookup(_map(s.get("by_kind")), kind), reason)

        rows.append(row(f"  {kind}: {reason}", pair_cell))
    losses: set[str] = set()
    for side in sides:
        losses.update(str(k) for k in _map(side.get("downstream_loss")))
    rows.append(row("downstream loss", lambda s: fmt_count(sum(
        n for n in (_number(v) for v in _map(s.get("downstream_loss")).values()) if n is not None
    ))))
    for reason in sorted(losses):
        rows.append(row(f"  lost: {reason}", lambda s, r=reason: _count_of(s.get("downstream_loss"), r)))
    rows.append(row("unexpected", lambda s: fmt_count(s.get("unexpected"))))
    return rows


# -- terminal --------------------------------------------------------------------------


def render_terminal(report: Mapping[str, Any], console: Console) -> None:
    """Print the report: verdict and reasons, cohorts, judgement, SRM, shadow."""
    verdict = str(report.get("verdict") or "unknown")
    style = VERDICT_STYLES.get(verdict, "bold")
    headline = Text.assemble(("Verdict: ", "bold"), (verdict, style))
    reasons = _reasons(report)
    body: list[Text] = [headline]
    body.extend(Text.assemble(("  • ", style), reason) for reason in reasons)
    if not reasons:
        body.append(Text("  (no reasons given)", style="dim"))
    console.print(Panel(Group(*body), title="canary report", title_align="left", border_style=style, expand=True))

    window = window_line(report)
    if window is not None:
        console.print(Text.assemble(("Window: ", "bold"), window))
        files = _window_files(report)
        if files:
            console.print(Text("  files: " + ", ".join(files), style="dim"), overflow="fold")

    cohorts = Table(title="Cohorts", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    cohorts.add_column("")
    for name in COHORTS:
        cohorts.add_column(name, justify="right")
    for label, *cells in cohort_rows(report):
        cohorts.add_row(Text(label), *(Text(c) for c in cells))
    console.print(cohorts)

    judgement = Table(title="Judgement", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in JUDGEMENT_COLUMNS:
        judgement.add_column(column, justify="left" if column in ("metric", "result", "critical") else "right")
    rows = judgement_rows(report)
    for row in rows:
        *cells, result, critical = row
        judgement.add_row(
            *(Text(c) for c in cells),
            Text(result, style=RESULT_STYLES.get(result, "")),
            Text(critical, style="bold" if critical == "yes" else "dim"),
        )
    if rows:
        console.print(judgement)
        notes = Table.grid(padding=(0, 1))
        notes.add_column(no_wrap=True)
        notes.add_column()
        for metric in _metrics(report):
            note = _metric_detail(metric)
            if note:
                notes.add_row(Text(" " + str(metric.get("name", "?")) + ":", style="bold"), Text(note, style="dim"))
        if notes.row_count:
            console.print(notes)
    else:
        console.print(Text("Judgement: no metrics", style="bold"))
    rules = rules_line(report)
    if rules:
        console.print(Text.assemble(("  rules: ", "dim"), (rules, "dim")))

    text, status = srm_line(report)
    srm_style = {"ok": "green", "mismatch": "bold red", "unchecked": "yellow"}[status]
    console.print(Text.assemble(("SRM: ", "bold"), (text, srm_style)))

    if _has_shadow(report):
        shadow = Table(title="Shadow comparison", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in SHADOW_COLUMNS:
            shadow.add_column(column, justify="left" if not column else "right")
        for row in shadow_rows(report):
            shadow.add_row(*(Text(c) for c in row))
        console.print(shadow)
    else:
        console.print(Text("Shadow comparison: none in this window", style="dim"))


# -- HTML ------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; background: #fff; }
h1 { margin: 0 0 .5rem 0; font-size: 1.6rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.verdict { border-left: .5rem solid #888; padding: .8rem 1rem; background: #f6f6f6; }
.verdict.promote { border-color: #2e7d32; background: #edf7ed; }
.verdict.hold { border-color: #f9a825; background: #fff8e1; }
.verdict.rollback { border-color: #c62828; background: #fdecea; }
.verdict ul { margin: .3rem 0 0 0; }
.meta { color: #555; font-size: .9rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td.detail { text-align: left; white-space: normal; color: #555; font-size: .82rem; min-width: 16rem; }
thead th { border-bottom: 2px solid #bbb; }
td.indent { padding-left: 1.6rem; }
.pass { color: #2e7d32; } .fail { color: #c62828; font-weight: bold; }
.inconclusive { color: #b7791f; } .nodata { color: #888; }
.ok { color: #2e7d32; } .mismatch { color: #c62828; font-weight: bold; } .unchecked { color: #b7791f; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .85rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(columns: Sequence[str], rows: Iterable[Sequence[str]],
                cell_classes: Callable[[int, str], str] | None = None) -> str:
    out = ["<table>", "<thead><tr>", *(f"<th>{_e(c)}</th>" for c in columns), "</tr></thead>", "<tbody>"]
    for row in rows:
        out.append("<tr>")
        for index, cell in enumerate(row):
            cls = cell_classes(index, cell) if cell_classes else ""
            attr = f' class="{_e(cls)}"' if cls else ""
            out.append(f"<td{attr}>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML page: inline CSS and inline SVG plots, no external resources."""
    verdict = str(report.get("verdict") or "unknown")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>canary report: {_e(verdict)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f'<header class="verdict {_e(verdict)}"><h1>Verdict: {_e(verdict)}</h1>',
    ]
    reasons = _reasons(report)
    if reasons:
        parts.append('<ul class="reasons">' + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    else:
        parts.append('<p class="meta">No reasons given.</p>')
    parts.append("</header>")

    window = window_line(report)
    if window is not None:
        parts.append(f'<p class="meta">Window: {_e(window)}</p>')
        files = _window_files(report)
        if files:
            items = "".join(f"<li>{_e(f)}</li>" for f in files)
            parts.append(f'<details class="meta"><summary>files</summary><ul>{items}</ul></details>')

    parts.append('<section id="cohorts"><h2>Cohorts</h2>')
    parts.append(_html_table(("", *COHORTS), cohort_rows(report)))
    parts.append("</section>")

    parts.append('<section id="judgement"><h2>Judgement</h2>')
    metrics = _metrics(report)
    if metrics:
        rows = [(*row, _metric_detail(m)) for row, m in zip(judgement_rows(report), metrics, strict=True)]

        def judgement_class(index: int, cell: str) -> str:
            if index == JUDGEMENT_COLUMNS.index("result"):
                return cell if cell in RESULT_STYLES else ""
            return "detail" if index == len(JUDGEMENT_COLUMNS) else ""

        parts.append(_html_table((*JUDGEMENT_COLUMNS, "detail"), rows, judgement_class))
    else:
        parts.append('<p class="meta">No metrics.</p>')
    rules = rules_line(report)
    if rules:
        parts.append(f'<p class="meta">Rules: {_e(rules)}</p>')
    text, status = srm_line(report)
    parts.append(f'<p id="srm"><strong>SRM:</strong> <span class="{_e(status)}">{_e(text)}</span></p>')
    parts.append("</section>")

    parts.append('<section id="shadow"><h2>Shadow comparison</h2>')
    if _has_shadow(report):

        def shadow_class(index: int, cell: str) -> str:
            return "indent" if index == 0 and cell.startswith("  ") else ""

        parts.append(_html_table(SHADOW_COLUMNS, shadow_rows(report), shadow_class))
    else:
        parts.append('<p class="meta">No shadow comparisons in this window.</p>')
    parts.append("</section>")

    parts.append('<section id="plots"><h2>Cohorts side by side</h2>')
    figures = _figures(report)
    if figures:
        for svg, caption in figures:
            parts.append(f'<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>')
    else:
        parts.append('<p class="meta">Nothing to plot.</p>')
    parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _metric_detail(metric: Mapping[str, Any]) -> str:
    """Description, bad direction (unless the detail gives it) and detail of a metric."""
    description, direction, detail = (str(metric.get(k) or "") for k in ("description", "direction", "detail"))
    if direction and f"{direction} is bad" in detail:
        direction = ""
    return "; ".join(p for p in (description, f"{direction} is bad" if direction else "", detail) if p)


# -- plots -----------------------------------------------------------------------------


def _values(metric: Mapping[str, Any], cohort: str) -> list[float]:
    raw = _map(metric.get("values")).get(cohort)
    if not isinstance(raw, Iterable) or isinstance(raw, str):
        return []
    return [v for v in (_number(x) for x in raw) if v is not None]


def _figures(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(svg, caption)`` of each figure; empty when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers: list[tuple[str, Any]] = []
    for metric in _metrics(report):
        if any(_values(metric, c) for c in COHORTS):
            caption = f"{metric.get('name', '?')}: per-connection values ({metric.get('result', DASH)})"
            drawers.append((caption, lambda fig, m=metric: _draw_metric(fig, m)))
    cohorts = _map(report.get("cohorts"))
    if any(sum(_histogram(_map(cohorts.get(c)))) for c in COHORTS):
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


def _pair(fig: Figure, *, fixed: bool = True) -> tuple[Axes, Axes]:
    """Two panels, lenient left and strict right, sharing both axes. ``fixed`` margins
    (numeric tick labels) lay out in half the time of the constrained layout."""
    if fixed:
        fig.subplots_adjust(left=0.09, right=0.985, bottom=0.17, top=0.8, wspace=0.06)
    else:
        fig.set_layout_engine("constrained")
    left, right = fig.subplots(1, 2, sharey=True, sharex=True)
    return left, right


def _no_data(ax: Axes, cohort: str) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
    ax.set_title(cohort)


def _label(text: Any) -> str:
    """Report text for a matplotlib label: a ``$`` must not start mathtext."""
    return str(text).replace("$", r"\$")


DISTINCT_BARS = 10  # up to this many distinct values: one bar per value, else a histogram


def _draw_metric(fig: Figure, metric: Mapping[str, Any]) -> None:
    """Per-connection values, values on the shared y axis: the share of connections at
    each value (few distinct values, e.g. 0/1) or in each of common bins (a histogram)."""
    name = _label(metric.get("name", "?"))
    result = str(metric.get("result", DASH))
    title_colour = {"fail": "#c62828", "pass": "#2e7d32", "inconclusive": "#b7791f"}.get(result, "#555")
    fig.suptitle(f"{name} — {_label(result)}", color=title_colour, fontweight="bold")
    values = {c: _values(metric, c) for c in COHORTS}
    everything = values["lenient"] + values["strict"]
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
    axes = dict(zip(COHORTS, _pair(fig), strict=True))
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
    axes["lenient"].set_ylabel(name)
    axes["lenient"].margins(x=0.15)


def _histogram(cohort: Mapping[str, Any]) -> list[float]:
    raw = cohort.get("latency_histogram")
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    return [max(0.0, _number(v) or 0.0) for v in raw[: len(BOUNDS_MS) + 1]]


def _draw_latency(fig: Figure, cohorts: Mapping[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    step = math.sqrt(2)
    edges = [BOUNDS_MS[0] / step, *BOUNDS_MS, BOUNDS_MS[-1] * step]
    counts = {c: _histogram(_map(cohorts.get(c))) for c in COHORTS}
    used = [i for c in COHORTS for i, n in enumerate(counts[c]) if n > 0]
    first, last = max(0, min(used) - 1), min(len(edges) - 1, max(used) + 2)
    fig.suptitle("batch latency", fontweight="bold")
    axes = dict(zip(COHORTS, _pair(fig), strict=True))
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
        latency = _map(_map(cohorts.get(cohort)).get("latency_ms"))
        for quantile, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            value = _number(latency.get(quantile))
            if value is not None and value > 0:
                ax.axvline(value, color="#222", linewidth=1, linestyle=style, label=f"{quantile} {value:.3g} ms")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7, frameon=False)
        ax.set_title(f"{cohort} ({int(total):,} batches)")
        ax.set_xlabel("ms per batch")
    axes["lenient"].set_ylabel("share of batches")


def _reason_labels(cohorts: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(field, reason) for field in ("skipped", "rejected") for reason in _keys(cohorts, field)]


def _draw_reasons(fig: Figure, cohorts: Mapping[str, Any]) -> None:
    labels = _reason_labels(cohorts)
    positions = list(range(len(labels)))
    fig.set_size_inches(FIGSIZE[0], max(FIGSIZE[1], 1.2 + 0.22 * len(labels)))
    fig.suptitle("skipped and rejected records", fontweight="bold")
    axes = dict(zip(COHORTS, _pair(fig, fixed=False), strict=True))
    for cohort, ax in axes.items():
        side = _map(cohorts.get(cohort))
        rates = []
        for field, reason in labels:
            entry = _lookup(_map(side.get(field)), reason)
            rates.append(100 * (_number(_map(entry).get("rate")) or 0.0))
        colours = [COHORT_COLOURS[cohort] if field == "rejected" else "#9a9a9a" for field, _ in labels]
        bars = ax.barh(positions, rates, color=colours)
        ax.bar_label(bars, labels=[f"{r:.2f}%" if r else "" for r in rates], fontsize=7, padding=2)
        ax.set_title(f"{cohort} (records: {fmt_count(side.get('records'))})")
        ax.set_xlabel("% of records")
        ax.margins(x=0.25)
    axes["lenient"].set_yticks(positions, [_label(f"{field}: {reason}") for field, reason in labels])
    axes["lenient"].invert_yaxis()


__all__ = ["render_html", "render_terminal"]
