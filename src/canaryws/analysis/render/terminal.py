"""The report in a terminal, with rich: the verdict and its reasons, the cross-check with
the sink (``--sink``: :mod:`.sink`), the window and the synthetic connections left out, the
cohort table, the judgement table, the sample-ratio check and the shadow comparison (rows of
:mod:`.rows`).

Laid out for 80 columns: every metric name and column header is shown whole, and a cell
too wide for its column wraps instead of being cut short. The judgement gives each metric
two lines: its name, then its result (and whether it is critical) under it, beside the
cohorts' values, the effect, the tolerance and the p-value, each with what qualifies it
(events/connections, interval, floor) under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

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

VERDICT_STYLES = {"promote": "bold green", "hold": "bold yellow", "rollback": "bold red"}
SINK_STYLES = {"match": "green", "mismatch": "bold red"}
RESULT_STYLES = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "nodata": "dim"}

# The terminal's judgement columns: the metric's cell holds its result and critical flag too,
# so that the table fits 80 columns (the page has a column each, JUDGEMENT_COLUMNS).
METRIC_COLUMNS = ("metric", *COHORTS, "effect", "tolerance", "p-value")
_RESULT = JUDGEMENT_COLUMNS.index("result")
_CRITICAL = JUDGEMENT_COLUMNS.index("critical")
_VALUES = slice(1, _RESULT)  # a judgement row's cells from the cohorts' values to the p-value


def render_terminal(report: Mapping[str, Any], console: Console) -> None:
    """Print the report: verdict and reasons, cohorts, judgement, SRM, shadow."""
    verdict = str(report.get("verdict") or "unknown")
    style = VERDICT_STYLES.get(verdict, "bold")
    headline = Text.assemble(("Verdict: ", "bold"), (verdict, style))
    reasons = reasons_of(report)
    body: list[Text] = [headline]
    body.extend(Text.assemble(("  • ", style), reason) for reason in reasons)
    if not reasons:
        body.append(Text("  (no reasons given)", style="dim"))
    console.print(Panel(Group(*body), title="canary report", title_align="left", border_style=style, expand=True))
    _print_sink(report, console)

    window = window_line(report)
    if window is not None:
        console.print(Text.assemble(("Window: ", "bold"), window))
        files = window_files(report)
        if files:
            console.print(Text("  files: " + ", ".join(files), style="dim"), overflow="fold")
    synthetic = synthetic_line(report)
    if synthetic is not None:
        console.print(Text(synthetic))

    cohorts = Table(title="Cohorts", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    cohorts.add_column("")
    for name in COHORTS:
        cohorts.add_column(name, justify="right")
    for label, *cells in cohort_rows(report):
        cohorts.add_row(Text(label), *(Text(c) for c in cells))
    console.print(cohorts)

    _print_judgement(report, console)
    rules = rules_line(report)
    if rules:
        console.print(Text.assemble(("  rules: ", "dim"), (rules, "dim")))

    text, status = srm_line(report)
    srm_style = {"ok": "green", "mismatch": "bold red", "unchecked": "yellow"}[status]
    console.print(Text.assemble(("SRM: ", "bold"), (text, srm_style)))

    if has_shadow(report):
        shadow = Table(title="Shadow comparison", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for column in SHADOW_COLUMNS:
            shadow.add_column(column, justify="left" if not column else "right")
        for row in shadow_rows(report):
            shadow.add_row(*(Text(c) for c in row))
        console.print(shadow)
    else:
        console.print(Text("Shadow comparison: none in this window", style="dim"))


def _print_sink(report: Mapping[str, Any], console: Console) -> None:
    """The cross-check with the sink (``--sink``), right under the verdict: a mismatch in red,
    with its likely causes, and the counts side by side."""
    headline = sink_headline(report)
    if headline is None:
        return
    style = SINK_STYLES.get(sink_status(report), "bold yellow")
    body: list[Text | Table] = [Text(headline, style=style)]
    body.extend(Text.assemble(("  • ", style), line) for line in sink_mismatches(report))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for index, column in enumerate(SINK_COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right")
    for cells, differs in sink_rows(report):
        table.add_row(*(Text(c) for c in cells), style="bold red" if differs else None)
    body.append(table)
    console.print(Panel(Group(*body), title="sink cross-check", title_align="left", border_style=style, expand=True))


def _stacked(cell: str) -> Text:
    """A judgement cell on two lines, like the metric's: the value, then what qualifies it
    (``2.33% (7/300)``: the events/connections; ``×11.7 [3.12, 93.3]``: the interval;
    ``×1.1, +0.10%``: the floor; ``0.9492 (n=300)``: the connections)."""
    value, _, qualifier = cell.partition(" ")
    return Text(f"{value.removesuffix(',')}\n{qualifier}" if qualifier else value)


def _print_judgement(report: Mapping[str, Any], console: Console) -> None:
    """The judgement table, then each metric's description and detail."""
    rows = judgement_rows(report)
    if not rows:
        console.print(Text("Judgement: no metrics", style="bold"))
        return
    names = [row[0] for row in rows]
    judgement = Table(title="Judgement", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                      collapse_padding=True)
    # The name never wraps; a value too wide for its column folds (never an ellipsis).
    judgement.add_column(METRIC_COLUMNS[0], no_wrap=True, overflow="fold", min_width=max(map(len, names)))
    for column in METRIC_COLUMNS[1:]:
        judgement.add_column(column, justify="right", overflow="fold", min_width=len(column))
    for row in rows:
        result, critical = row[_RESULT], row[_CRITICAL] == "yes"
        metric = Text(row[0], style="bold")
        metric.append("\n  ")
        metric.append(result, style=RESULT_STYLES.get(result, ""))
        if critical:
            metric.append(" · critical", style="bold")
        judgement.add_row(metric, *(_stacked(cell) for cell in row[_VALUES]))
    console.print(judgement)
    notes = Table.grid(padding=(0, 1))
    notes.add_column(no_wrap=True)
    notes.add_column()
    for metric_report in metrics_of(report):
        note = metric_detail(metric_report)
        if note:
            notes.add_row(Text(" " + str(metric_report.get("name", "?")) + ":", style="bold"), Text(note, style="dim"))
    if notes.row_count:
        console.print(notes)
