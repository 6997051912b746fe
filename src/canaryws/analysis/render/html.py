"""The report as one self-contained HTML page: the tables of :mod:`.rows`, then the critical
rates over time and the cohorts' plots side by side (:mod:`.plots`: inline SVG, no script, no
external resources)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from canaryws.analysis.render.plots import figures, time_figures
from canaryws.analysis.render.rows import (
    COHORTS,
    JUDGEMENT_COLUMNS,
    SHADOW_COLUMNS,
    cohort_rows,
    has_shadow,
    judgement_rows,
    metric_detail,
    metrics_of,
    reasons_of,
    rules_line,
    shadow_rows,
    srm_line,
    synthetic_line,
    window_files,
    window_line,
)
from canaryws.analysis.render.sink import SINK_COLUMNS, sink_headline, sink_mismatches, sink_rows, sink_status

RESULT_CLASSES = frozenset({"pass", "fail", "inconclusive", "nodata"})  # the results _CSS colours

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
.sink { border-left: .5rem solid #888; padding: .5rem 1rem; margin-top: 1rem; }
.sink.match { border-color: #2e7d32; } .sink.mismatch { border-color: #c62828; background: #fdecea; }
tr.differs td { color: #c62828; font-weight: bold; }
figure { margin: 1rem 0; } figure svg { width: 100%; max-width: 60rem; height: auto; }
figcaption { color: #555; font-size: .85rem; }
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


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


def _figures(drawn: Sequence[tuple[str, str]], nothing: str) -> list[str]:
    if not drawn:
        return [f'<p class="meta">{_e(nothing)}</p>']
    return [f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>" for svg, caption in drawn]


def _sink_section(report: Mapping[str, Any]) -> list[str]:
    """The cross-check with the sink (``--sink``), right under the verdict; a mismatch in red."""
    headline = sink_headline(report)
    if headline is None:
        return []
    status = sink_status(report)
    out = [f'<section id="sink" class="sink {_e(status)}"><h2>Sink cross-check</h2>',
           f'<p><strong class="{_e(status)}">{_e(headline)}</strong></p>']
    mismatches = sink_mismatches(report)
    if mismatches:
        out.append('<ul class="mismatches">' + "".join(f"<li>{_e(m)}</li>" for m in mismatches) + "</ul>")
    rows = ["<table>", "<thead><tr>", *(f"<th>{_e(c)}</th>" for c in SINK_COLUMNS), "</tr></thead>", "<tbody>"]
    for cells, differs in sink_rows(report):
        rows.append('<tr class="differs">' if differs else "<tr>")
        rows.extend(f"<td>{_e(c)}</td>" for c in cells)
        rows.append("</tr>")
    rows.append("</tbody></table>")
    out += ["".join(rows), "</section>"]
    return out


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
    reasons = reasons_of(report)
    if reasons:
        parts.append('<ul class="reasons">' + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    else:
        parts.append('<p class="meta">No reasons given.</p>')
    parts.append("</header>")
    parts += _sink_section(report)

    window = window_line(report)
    if window is not None:
        parts.append(f'<p class="meta">Window: {_e(window)}</p>')
        files = window_files(report)
        if files:
            items = "".join(f"<li>{_e(f)}</li>" for f in files)
            parts.append(f'<details class="meta"><summary>files</summary><ul>{items}</ul></details>')
    synthetic = synthetic_line(report)
    if synthetic is not None:
        parts.append(f'<p class="meta" id="synthetic">{_e(synthetic)}</p>')

    parts.append('<section id="cohorts"><h2>Cohorts</h2>')
    parts.append(_html_table(("", *COHORTS), cohort_rows(report)))
    parts.append("</section>")

    parts.append('<section id="judgement"><h2>Judgement</h2>')
    metrics = metrics_of(report)
    if metrics:
        rows = [(*row, metric_detail(m)) for row, m in zip(judgement_rows(report), metrics, strict=True)]

        def judgement_class(index: int, cell: str) -> str:
            if index == JUDGEMENT_COLUMNS.index("result"):
                return cell if cell in RESULT_CLASSES else ""
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
    if has_shadow(report):

        def shadow_class(index: int, cell: str) -> str:
            return "indent" if index == 0 and cell.startswith("  ") else ""

        parts.append(_html_table(SHADOW_COLUMNS, shadow_rows(report), shadow_class))
    else:
        parts.append('<p class="meta">No shadow comparisons in this window.</p>')
    parts.append("</section>")

    parts.append('<section id="timeline"><h2>Over time</h2>')
    parts += _figures(time_figures(report), "No time series in this report.")
    parts.append("</section>")
    parts.append('<section id="plots"><h2>Cohorts side by side</h2>')
    parts += _figures(figures(report), "Nothing to plot.")
    parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
