"""The report renderers: rich terminal output and the self-contained HTML page."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from rich.console import Console

from canaryws.analysis.judge import DEFAULT_METRICS, Rules, judge
from canaryws.analysis.render.html import render_html
from canaryws.analysis.render.plots import ANYTIME_COLOUR, BAND_COLOUR, ROLLOUT_COLOUR
from canaryws.analysis.render.terminal import METRIC_COLUMNS, render_terminal
from canaryws.analysis.timeline import parse_decisions, parse_iso, timeline, wilson
from canaryws.analysis.units import ConnectionUnit
from canaryws.core import histogram
from canaryws.core.histogram import SIZE, bucket_of

XSS_REASON = "<script>alert('x')</script> & [bold]not markup[/bold]"


def _histogram(latencies_ms: list[float]) -> list[int]:
    counts = [0] * SIZE
    for value in latencies_ms:
        counts[bucket_of(value)] += 1
    return counts


def _metric(name: str, critical: bool, direction: str, result: str, strict: list[float],
            lenient: list[float], **extra: Any) -> dict[str, Any]:
    def describe(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"n": 0, "mean": None, "median": None}
        ordered = sorted(values)
        return {"n": len(values), "mean": sum(values) / len(values), "median": ordered[len(values) // 2]}

    s, b = describe(strict), describe(lenient)
    effect = s["mean"] - b["mean"] if s["mean"] is not None and b["mean"] is not None else None
    return {
        "name": name, "description": f"{name} per connection", "critical": critical, "direction": direction,
        "result": result, "strict": s, "lenient": b, "effect": effect,
        "tolerance": 0.02 if effect is not None else None, "hodges_lehmann": effect,
        "p_value": extra.get("p_value"), "test": "mann-whitney-u", "detail": extra.get("detail", ""),
        "values": {"strict": strict, "lenient": lenient},
    }


def realistic_report() -> dict[str, Any]:
    """A rollback: strict rejects control characters and closes connections with 1006/4001."""
    n = 40
    strict_closes = [1.0 if i % 5 == 0 else 0.0 for i in range(n)]
    lenient_closes = [1.0 if i == 7 else 0.0 for i in range(n)]
    strict_accept = [0.9 + 0.002 * (i % 10) for i in range(n)]
    lenient_accept = [0.95 + 0.001 * (i % 10) for i in range(n)]
    strict_latency = [2.0 + 0.1 * i for i in range(n)]
    lenient_latency = [1.8 + 0.1 * i for i in range(n)]
    metrics = [
        _metric("abnormal_close_rate", True, "increase", "fail", strict_closes, lenient_closes,
                p_value=0.00002, detail="effect +0.175 beyond tolerance 0.02 (increase is bad); p=2e-05 < alpha 0.01"),
        _metric("error_frame_rate", True, "increase", "pass", [0.0] * n, [0.0] * n, p_value=1.0),
        _metric("latency_p95_ms", False, "increase", "pass", strict_latency, lenient_latency, p_value=0.21),
        _metric("accepted_rate", False, "decrease", "fail", strict_accept, lenient_accept, p_value=1e-9),
        _metric("retry_rate", True, "increase", "nodata", [0.1, 0.2], [], detail="too few values"),
    ]

    def cohort(**over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "clients": 20, "connections": n, "batches": 400, "records": 4000, "accepted": 3800,
            "accepted_rate": 0.95, "skipped": {"blank": {"count": 120, "rate": 0.03}}, "rejected": {},
            "error_frames": 0, "error_frame_rate": 0.0, "errors_by_code": {}, "closed": n,
            "abnormal_closes": 1, "abnormal_close_rate": 0.025, "closes_by_code": {"1000": 39, "1006": 1},
            "retries": 1, "retry_rate": 0.025,
            "latency_ms": {"p50": 1.7, "p95": 4.8, "p99": 9.5, "mean": 2.1},
            "latency_histogram": _histogram([1.0 + 0.05 * i for i in range(400)]),
        }
        base.update(over)
        return base

    strict = cohort(
        clients=21, accepted=3600, accepted_rate=0.9, skipped={},
        rejected={"blank": {"count": 120, "rate": 0.03}, "control_character": {"count": 280, "rate": 0.07}},
        error_frames=3, error_frame_rate=0.0075, errors_by_code={"invalid_batch": 3},
        abnormal_closes=8, abnormal_close_rate=0.2, closes_by_code={"1000": 32, "1006": 3, "4001": 5},
        retries=6, retry_rate=0.15, latency_ms={"p50": 2.0, "p95": 5.6, "p99": 12.25, "mean": 2.4},
        latency_histogram=_histogram([1.2 + 0.06 * i for i in range(400)]),
    )
    shadow_cohort = {
        "batches": 200, "skipped": 2, "records": 2000, "divergent": 140, "divergence_rate": 0.07,
        "by_kind": {"accepted_by_lenient_only": {"control_character": 140}}, "unexpected": 0,
        "downstream_loss": {"control_character": 140},
    }
    return {
        "verdict": "rollback",
        "reasons": [
            "abnormal_close_rate: strict 0.2 vs lenient 0.025 (+0.175, tolerance 0.02, p=2e-05) — critical",
            XSS_REASON,
        ],
        "window": {"start": "2025-01-01T10:00:00+00:00", "end": "2025-01-01T11:00:00+00:00",
                   "files": ["traces-1.jsonl", "traces-2.jsonl"], "spans": 1234, "connections": 80},
        "rules": {"alpha": 0.01, "min_connections": 20, "min_batches": 100, "min_values": 20, "srm_alpha": 0.001,
                  "min_latency_batches": 5, "metrics": []},
        "cohorts": {"strict": strict, "lenient": cohort()},
        "metrics": metrics,
        "srm": {"checked": True, "mismatch": False, "strict_clients": 21, "lenient_clients": 20,
                "expected_strict_share": 0.5, "observed_strict_share": 21 / 41, "p_value": 0.876,
                "detail": "21 strict clients of 41, expected 20.5 (50%); p=0.88 ≥ srm_alpha 0.001"},
        "shadow": {**shadow_cohort, "batches": 400, "records": 4000, "divergent": 280,
                   "by_kind": {"accepted_by_lenient_only": {"control_character": 278},
                               "value_mismatch": {"value": 2}},
                   "unexpected": 2, "downstream_loss": {"control_character": 278},
                   "cohorts": {"strict": shadow_cohort, "lenient": dict(shadow_cohort)}},
    }


def empty_report() -> dict[str, Any]:
    """An empty window: no connections, None wherever a rate or quantile would be."""

    def cohort() -> dict[str, Any]:
        return {
            "clients": 0, "connections": 0, "batches": 0, "records": 0, "accepted": 0, "accepted_rate": None,
            "skipped": {}, "rejected": {}, "error_frames": 0, "error_frame_rate": None, "errors_by_code": {},
            "closed": 0, "abnormal_closes": 0, "abnormal_close_rate": None, "closes_by_code": {},
            "retries": 0, "retry_rate": None, "latency_ms": {"p50": None, "p95": None, "p99": None, "mean": None},
            "latency_histogram": [0] * SIZE,
        }

    shadow = {"batches": 0, "skipped": 0, "records": 0, "divergent": 0, "divergence_rate": None, "by_kind": {},
              "unexpected": 0, "downstream_loss": {}}
    return {
        "verdict": "hold",
        "reasons": ["strict cohort too thin: 0 connections < 20, 0 batches < 100"],
        "rules": {"alpha": 0.01, "metrics": []},
        "cohorts": {"strict": cohort(), "lenient": cohort()},
        "metrics": [
            {**_metric("abnormal_close_rate", True, "increase", "inconclusive", [], []), "p_value": None}
        ],
        "srm": {"checked": False, "mismatch": False, "strict_clients": 0, "lenient_clients": 0,
                "expected_strict_share": None, "observed_strict_share": None, "p_value": None,
                "detail": "not checked: 0 clients < 20"},
        "shadow": {**shadow, "cohorts": {"strict": dict(shadow), "lenient": dict(shadow)}},
    }


def judged_report() -> dict[str, Any]:
    """What the judge itself returns for 300 connections per cohort, strict closing a quarter
    of them abnormally: rate-ratio rows with intervals, Mann-Whitney rows, every default metric."""
    units = []
    for i in range(600):
        strategy = "strict" if i % 2 else "lenient"
        abnormal = i % 8 == 1 if strategy == "strict" else i % 80 == 0
        batches = 5 + i % 40
        latency = histogram.empty()
        latency[bucket_of(5.0 + i % 17)] += batches
        units.append(ConnectionUnit(
            connection_id=f"k{i}", client_id=f"c{i}", strategy=strategy, start_ns=i, end_ns=i + 1, closed=True,
            close_code=1011 if abnormal else 1000, batches=batches, records=5 * batches,
            accepted=5 * batches - i % 7, skipped=0 if strategy == "strict" else i % 7,
            rejected=i % 7 if strategy == "strict" else 0, errors=1 if i % 25 == 3 else 0,
            latency=latency, latency_sum_s=batches * (5.0 + i % 17) / 1000, strict_share=0.5, retry=i % 45 == 5,
        ))
    return judge(units, Rules())


def timed_report() -> dict[str, Any]:
    """What ``canaryws report --decisions`` makes of an hour: 900 connections, the strict share
    stepping 1 → 5 → 25 %, strict closing 8 % abnormally and lenient 3 %, and a rollout
    controller's decisions (start, holds, promotes, a pause and a resume)."""
    start = parse_iso("2026-12-06T20:00:00+00:00")
    units = []
    for i in range(900):
        began = i * 3.9
        share = 0.01 if began < 900 else 0.05 if began < 2100 else 0.25
        strategy = "strict" if (i * 0.618) % 1 < share else "lenient"
        abnormal = (i * 0.377) % 1 < (0.08 if strategy == "strict" else 0.03)
        latency = histogram.empty()
        latency[bucket_of(3.0 + i % 5)] += 10
        units.append(ConnectionUnit(
            connection_id=f"k{i}", client_id=f"c{i}", strategy=strategy, start_ns=start + int(began * 1e9),
            end_ns=start + int((began + 60) * 1e9), closed=True, close_code=1006 if abnormal else 1000,
            batches=10, records=50, accepted=50, errors=1 if i % 37 == 0 else 0, latency=latency,
            latency_sum_s=0.04, strict_share=share, retry=i % 41 == 0,
        ))
    decisions = parse_decisions({"decisions": [
        {"time": "2026-12-06T20:00:00Z", "kind": "start", "step": 0, "percent": 1},
        {"time": "2026-12-06T20:10:00Z", "kind": "hold", "step": 0, "percent": 1, "reasons": ["too little"]},
        {"time": "2026-12-06T20:15:00Z", "kind": "promote", "step": 1, "percent": 5},
        {"time": "2026-12-06T20:28:00Z", "kind": "pause", "step": 1, "percent": 5},
        {"time": "2026-12-06T20:31:00Z", "kind": "resume", "step": 1, "percent": 5},
        {"time": "2026-12-06T20:35:00Z", "kind": "promote", "step": 2, "percent": 25},
        {"time": "2026-12-06T20:50:00Z", "kind": "shadow_fail", "step": 2, "percent": 25},
    ]})
    report = judge(units, Rules())
    report["timeline"] = timeline(units, Rules(), decisions=decisions)
    return report


def terminal(report: dict[str, Any], width: int = 120) -> str:
    console = Console(width=width, no_color=True, record=True)
    render_terminal(report, console)
    return console.export_text()


# -- terminal ----------------------------------------------------------------------------


def test_terminal_shows_verdict_reasons_and_cohorts() -> None:
    out = terminal(realistic_report())
    assert "rollback" in out
    assert "abnormal_close_rate: strict 0.2 vs lenient 0.025" in out
    assert XSS_REASON in out  # printed literally: rich markup in a reason is not interpreted
    lines = out.splitlines()
    header = lines[lines.index(next(line for line in lines if line.startswith("Cohorts"))) + 1]
    assert header.index("lenient") < header.index("strict")
    for label in ("clients", "connections", "batches", "records", "accepted", "error frames", "abnormal closes",
                  "retries", "latency p50 (ms)", "latency p95 (ms)", "latency p99 (ms)"):
        assert label in out
    assert "2025-01-01T10:00:00+00:00" in out and "traces-2.jsonl" in out


def _row(out: str, label: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(label))


def _judgement(out: str, metric: str) -> tuple[list[str], list[str]]:
    """A metric's two lines in the judgement table, split: its name and values, then its
    result (and critical flag) and what qualifies the values."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Judgement"))
    index = next(i for i in range(start, len(lines)) if lines[i].startswith(f" {metric} "))
    return lines[index].split(), lines[index + 1].split()


def test_terminal_cohort_rows() -> None:
    out = terminal(realistic_report())
    assert _row(out, "accepted ").split()[1:] == ["3,800", "(95.00%)", "3,600", "(90.00%)"]
    # one row per reason present in either cohort; absent in a cohort reads 0
    assert _row(out, "rejected: control_character").split()[2:] == ["0", "280", "(7.00%)"]
    assert _row(out, "rejected: blank").split()[2:] == ["0", "120", "(3.00%)"]
    assert _row(out, "skipped: blank").split()[2:] == ["120", "(3.00%)", "0"]
    assert _row(out, "abnormal closes").split()[2:] == ["1", "(2.50%)", "8", "(20.00%)"]
    assert _row(out, "closes: 1006").split()[2:] == ["1", "3"]
    assert _row(out, "closes: 4001").split()[2:] == ["0", "5"]
    assert out.index("closes: 1000") < out.index("closes: 1006") < out.index("closes: 4001")
    assert _row(out, "errors: invalid_batch").split()[2:] == ["0", "3"]
    assert _row(out, "retries").split()[1:] == ["1", "(2.50%)", "6", "(15.00%)"]
    assert _row(out, "latency p99 (ms)").split()[3:] == ["9.50", "12.25"]


def test_terminal_judgement_srm_and_shadow() -> None:
    out = terminal(realistic_report())
    header = _row(out, "metric ").split()
    assert header == ["metric", "lenient", "strict", "effect", "tolerance", "p-value"]
    # each metric: its name and values, then its result (critical or not) and the values' n
    first, second = _judgement(out, "abnormal_close_rate")
    assert first == ["abnormal_close_rate", "0.025", "0.2", "+0.175", "0.02", "2.0e-05"]
    assert second == ["fail", "·", "critical", "(n=40)", "(n=40)"]
    assert _judgement(out, "accepted_rate")[1] == ["fail", "(n=40)", "(n=40)"]
    assert _judgement(out, "retry_rate") == (["retry_rate", "—", "0.15", "—", "—", "—"],
                                             ["nodata", "·", "critical", "(n=0)", "(n=2)"])
    assert "SRM: OK: 21 strict / 20 lenient clients" in out and "51.22%" in out
    assert "Shadow comparison" in out
    assert _row(out, "divergent records").split()[2:] == ["280", "(7.00%)", "140", "(7.00%)", "140", "(7.00%)"]
    assert _row(out, "value_mismatch: value").split()[2:] == ["2", "0", "0"]
    assert _row(out, "accepted_by_lenient_only: control_character").split()[2:] == ["278", "140", "140"]
    assert _row(out, "lost: control_character").split()[2:] == ["278", "140", "140"]
    assert _row(out, "unexpected").split()[1:] == ["2", "0", "0"]


def test_terminal_rate_ratio_rows() -> None:
    """A critical metric: the rates over their events/connections, the ratio over its
    always-valid interval, the tolerated ratio over its floor."""
    report = judged_report()
    metric = next(m for m in report["metrics"] if m["name"] == "abnormal_close_rate")
    assert metric["test"] == "rate-ratio" and metric["result"] == "fail"
    first, second = _judgement(terminal(report), "abnormal_close_rate")
    interval = metric["ratio_interval"]
    assert first == ["abnormal_close_rate", "2.67%", "25.00%", f"×{metric['ratio']:.3g}", "×1.1",
                     f"{metric['p_value']:.1e}"]
    assert second == ["fail", "·", "critical", "(8/300)", "(75/300)", f"[{interval[0]:.3g},", f"{interval[1]:.3g}]",
                      "+0.10%"]


@pytest.mark.parametrize("report", [judged_report, realistic_report, empty_report])
def test_terminal_fits_80_columns_without_cutting_names(report: Callable[[], dict[str, Any]]) -> None:
    """``canaryws report`` in an 80-column terminal: every line fits, every metric name and
    judgement header is whole, nothing is cut short with an ellipsis."""
    shown = report()
    out = terminal(shown, width=80)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and "..." not in out
    assert _row(out, "metric ").split() == list(METRIC_COLUMNS)
    judged = [m["name"] for m in shown["metrics"]]
    for name in judged:
        first, second = _judgement(out, name)
        assert first[0] == name and second[0] in ("pass", "fail", "nodata", "inconclusive", "marginal")
    if report is judged_report:
        assert judged == [rule.name for rule in DEFAULT_METRICS]


def test_terminal_empty_report_does_not_crash() -> None:
    out = terminal(empty_report())
    assert "hold" in out and "strict cohort too thin" in out
    assert _row(out, "accepted ").split()[1:] == ["0", "(—)", "0", "(—)"]
    assert _row(out, "latency p50 (ms)").split()[3:] == ["—", "—"]
    assert _judgement(out, "abnormal_close_rate")[1][0] == "inconclusive"
    assert "SRM: not checked: 0 clients < 20" in out
    assert "rejected:" not in out and "closes:" not in out


def test_terminal_tolerates_missing_sections() -> None:
    out = terminal({"verdict": "promote", "reasons": []})
    assert "promote" in out and "no metrics" in out.lower() and "Shadow comparison: none" in out
    out = terminal({})
    assert "unknown" in out


# -- HTML --------------------------------------------------------------------------------


class _Checker(HTMLParser):
    """Tag balance of the elements the page is built from, and every src/href."""

    CHECKED = frozenset({"html", "head", "body", "header", "section", "table", "thead", "tbody", "tr", "th", "td",
                         "ul", "li", "figure", "figcaption", "svg", "style", "title", "h1", "h2", "p", "details"})
    VOID = frozenset({"meta", "br", "img", "link", "input", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.urls: list[str] = []
        self.text: list[str] = []
        self.svg_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value:
                self.urls.append(value)
        if tag in self.VOID:
            return
        if self.svg_depth and tag != "svg":
            return  # SVG internals are XML; only the outer element is balanced here
        if tag == "svg":
            self.svg_depth += 1
        if tag in self.CHECKED:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value:
                self.urls.append(value)

    def handle_endtag(self, tag: str) -> None:
        if self.svg_depth and tag != "svg":
            return
        if tag == "svg":
            self.svg_depth -= 1
        if tag not in self.CHECKED:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors
    assert not checker.stack, f"unclosed: {checker.stack}"
    return checker


@pytest.fixture(scope="module")
def realistic_page() -> str:
    return render_html(realistic_report())


def test_html_is_balanced_and_complete(realistic_page: str) -> None:
    page = realistic_page
    assert page.startswith("<!DOCTYPE html>")
    checker = parse(page)
    for tag in ("html", "head", "body", "header"):
        assert checker.counts.get(tag) == 1, tag
    assert page.count("<title>") == 1 and page.count("<style>") == 1  # the SVGs' own are <style type=...>
    assert checker.counts["table"] == 3  # cohorts, judgement, shadow
    assert checker.counts["section"] == 5  # + over time, plots
    text = "".join(checker.text)
    assert "Verdict: rollback" in text
    assert 'class="verdict rollback"' in page
    for label in ("rejected: control_character", "closes: 4001", "closes: 1006", "90.00%", "20.00%",
                  "SRM:", "accepted_by_lenient_only: control_character", "traces-1.jsonl"):
        assert label in text, label


def test_html_escapes_report_text(realistic_page: str) -> None:
    assert "<script>" not in realistic_page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; [bold]not markup[/bold]" in realistic_page
    assert XSS_REASON in "".join(parse(realistic_page).text)


def test_html_is_self_contained(realistic_page: str) -> None:
    checker = parse(realistic_page)
    assert not [u for u in checker.urls if not u.startswith("#")], checker.urls
    assert "<?xml" not in realistic_page and "<!DOCTYPE svg" not in realistic_page
    assert "<link" not in realistic_page and "<script" not in realistic_page and "@import" not in realistic_page
    urls = re.findall(r"https?://[^\s\"')]+", realistic_page)
    assert set(urls) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, set(urls)
    for match in re.finditer(r"https?://", realistic_page):  # only as namespace declarations
        assert re.search(r'\bxmlns(:xlink)?="$', realistic_page[max(0, match.start() - 20):match.start()])


def test_html_plots_cohorts_side_by_side(realistic_page: str) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", realistic_page, flags=re.S)
    # 5 metrics with values (retry_rate has strict values only) + latency + reasons
    assert len(svgs) == 7
    assert realistic_page.count("<figure>") == 7
    for svg in svgs:
        assert len(svg) < 300_000
        assert len(re.findall(r'id="f\d+-axes_', svg)) == 2  # two panels: lenient left, strict right
    titles = ["abnormal_close_rate — fail", "error_frame_rate — pass", "latency_p95_ms — pass",
              "accepted_rate — fail", "retry_rate — nodata", "batch latency", "skipped and rejected records"]
    for svg, title in zip(svgs, titles, strict=True):
        assert title in svg
        assert svg.index("lenient") < svg.index("strict")
    # ids are unique in the page, and every reference inside an SVG points into it
    ids = re.findall(r'\bid="([^"]+)"', realistic_page)
    assert len(ids) == len(set(ids))
    for svg in svgs:
        own = set(re.findall(r'\bid="([^"]+)"', svg))
        references = set(re.findall(r'(?:url\(#|href="#)([^")]+)', svg))
        assert references and references <= own


def test_html_empty_report() -> None:
    page = render_html(empty_report())
    checker = parse(page)
    text = "".join(checker.text)
    assert "Verdict: hold" in text and "strict cohort too thin" in text
    assert "Nothing to plot." in text and "No time series in this report." in text
    assert "<svg" not in page
    assert "—" in text


def test_html_minimal_report() -> None:
    page = render_html({"verdict": "promote", "reasons": ["all good"], "cohorts": {"strict": {}, "lenient": {}}})
    text = "".join(parse(page).text)
    assert "Verdict: promote" in text and "No metrics." in text and "No shadow comparisons" in text


def test_html_many_values_and_odd_names() -> None:
    """Thousands of connections keep the SVG small; ``$`` and markup in names are just text."""
    many = [0.001 * i for i in range(5000)]
    metric = _metric("lat$ency <b>", False, "increase", "pass", many, [v + 0.5 for v in many])
    cohort = {"records": 10, "rejected": {"$x<y>": {"count": 1, "rate": 0.1}}}
    page = render_html({"metrics": [metric], "cohorts": {"strict": cohort, "lenient": {}}})
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    assert len(svgs) == 2 and all(len(svg) < 60_000 for svg in svgs)
    assert "<b>" not in page and "lat$ency &lt;b&gt;" in page and "rejected: $x&lt;y&gt;" in page
    parse(page)


def test_html_closes_its_figures(timed_page: str) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    render_html({"metrics": [_metric("m", False, "increase", "pass", [1.0, 1.0], [1.0])]})
    render_html(timed_report())
    assert len(plt.get_fignums()) == before


# -- over time, and rates as rates ---------------------------------------------------------------


@pytest.fixture(scope="module")
def timed_page() -> str:
    return render_html(timed_report())


def _section(page: str, section: str) -> str:
    match = re.search(rf'<section id="{section}">(.*?)</section>', page, flags=re.S)
    assert match, section
    return match[1]


def test_html_draws_each_critical_rate_over_time(timed_page: str) -> None:
    """Per critical metric, one figure: the difference with both bands and a zero line above, the
    rollout step line and the decisions below, sharing the time axis; the caption says what the
    bands are."""
    parse(timed_page)
    over_time = _section(timed_page, "timeline")
    figures = re.findall(r"<figure>(.*?)</figure>", over_time, flags=re.S)
    assert len(figures) == 3
    for figure, name in zip(figures, ("abnormal_close_rate", "error_frame_rate", "retry_rate"), strict=True):
        svg, caption = figure.split("<figcaption>")
        assert f"{name} over time" in svg
        assert len(re.findall(r'id="t\d+-axes_', svg)) == 2  # the difference, the rollout below
        for colour in (BAND_COLOUR, ANYTIME_COLOUR, ROLLOUT_COLOUR):
            assert f"fill: {colour}" in svg or f"stroke: {colour}" in svg, (name, colour)
        for label in ("95% pointwise", "95% anytime-valid", "strict − lenient", "rollout %", "promote", "hold",
                      "pause", "resume", "shadow_fail", "1%", "5%", "25%", "time (UTC)"):
            assert f">{label}<" in svg, (name, label)
        assert "rollback" not in svg  # only the kinds that happened are in the legend
        assert "pointwise 95% Newcombe hybrid-score interval" in caption
        assert "anytime-valid 95% confidence sequence" in caption and "valid at all times at once" in caption
        assert "the rollout controller&#x27;s percent" in caption
    ids = re.findall(r'\bid="([^"]+)"', timed_page)
    assert len(ids) == len(set(ids))


def test_html_shows_rate_metrics_as_rates_with_wilson_intervals(timed_page: str) -> None:
    report = timed_report()
    side_by_side = _section(timed_page, "plots")
    svgs = re.findall(r"<svg\b.*?</svg>", side_by_side, flags=re.S)
    assert len(svgs) == 6  # 3 rates, latency_p95_ms, accepted_rate, batch latency
    for svg, metric in zip(svgs[:3], report["metrics"][:3], strict=True):
        assert metric["test"] == "rate-ratio" and f"{metric['name']} — " in svg
        assert len(re.findall(r'id="f\d+-axes_', svg)) == 1  # one panel: both cohorts' rates
        assert "share of connections" not in svg  # not a histogram of zeros and ones
        for cohort in ("lenient", "strict"):
            events, n = metric[cohort]["events"], metric[cohort]["n"]
            low, high = wilson(events, n) or (0.0, 0.0)
            assert f"{100 * events / n:.2f}% [{100 * low:.2f}, {100 * high:.2f}]   {events:,} / {n:,}" in svg
    for svg in svgs[3:5]:  # the Mann-Whitney metrics keep their two panels of per-connection values
        assert len(re.findall(r'id="f\d+-axes_', svg)) == 2 and "share of connections" in svg


def test_html_time_plots_tolerate_odd_timelines() -> None:
    """Missing or malformed timeline parts draw what they can, or nothing: never a crash."""
    base = timed_report()
    points = base["timeline"]["metrics"]["abnormal_close_rate"]
    odd = [
        {"metrics": {"abnormal_close_rate": "x"}},
        {"metrics": {"abnormal_close_rate": [None, {"time": "not a time", "difference": 0.1}]}},
        {"metrics": {"abnormal_close_rate": points}, "rollout": None, "decisions": [{"kind": "hold"}]},
        {"metrics": {"abnormal_close_rate": points[-1:]}, "start": points[-1]["time"], "end": points[-1]["time"],
         "decisions": [{"time": points[-1]["time"], "kind": "<b>new kind$</b>", "percent": None}]},
    ]
    drawn = []
    for line in odd:
        page = render_html({"timeline": line})  # the time figures only
        parse(page)
        drawn.append(len(re.findall(r"<figure>", _section(page, "timeline"))))
        assert "<b>" not in page
    assert drawn == [0, 0, 1, 1]
