"""The sink cross-check (canaryws.analysis.sink_check): the spans' counts against the sink's, exactly,
per strategy, the synthetic ones apart; and how the report's renderers show it."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from canaryws.adapters.sink.counts import CohortCommitted, Tally, add_rows
from canaryws.analysis.render.html import render_html
from canaryws.analysis.render.sink import sink_rows
from canaryws.analysis.render.terminal import render_terminal
from canaryws.analysis.sink_check import cross_check, span_counts
from canaryws.core.summary import ConnectionSummary


def summary(connection: str, strategy: str, batches: int, accepted: int, skipped: int = 0, rejected: int = 0,
            synthetic: bool = False) -> tuple[ConnectionSummary, int, int]:
    s = ConnectionSummary(connection, f"client-{connection}", strategy, 1, False, "rev", 0.5, synthetic=synthetic)
    s.batches, s.accepted, s.skipped, s.rejected = batches, accepted, skipped, rejected
    s.records = accepted + skipped + rejected
    return s, 1_000, 2_000


def test_span_counts_add_up_the_slices_per_strategy_with_the_synthetic_ones_apart() -> None:
    slices = [summary("a", "strict", 3, 5, rejected=4), summary("a", "strict", 1, 2),  # two slices of one connection
              summary("b", "lenient", 2, 6, skipped=1), summary("p", "strict", 4, 4, synthetic=True)]
    assert span_counts(slices) == {
        "lenient": CohortCommitted(Tally(2, 6, 1, 0), Tally()),
        "strict": CohortCommitted(Tally(4, 7, 0, 4), Tally(4, 4, 0, 0)),
    }


def test_equal_counts_match_and_every_cohort_is_shown_even_when_empty() -> None:
    spans = {"strict": CohortCommitted(Tally(10, 30, 0, 5))}
    sink = add_rows([("strict", False, 6, 20, 0, 3), ("strict", False, 4, 10, 0, 2)])  # rows add up per strategy
    check = cross_check(spans, sink)
    assert check["verdict"] == "match" and check["mismatches"] == []
    assert check["cohorts"]["strict"] == {
        "verdict": "match", "spans": {"batches": 10, "accepted": 30, "skipped": 0, "rejected": 5},
        "sink": {"batches": 10, "accepted": 30, "skipped": 0, "rejected": 5},
        "difference": {"batches": 0, "accepted": 0, "skipped": 0, "rejected": 0}, "differs": []}
    assert check["cohorts"]["lenient"]["verdict"] == "match"  # nothing on either side is a match
    assert list(check["cohorts"]) == ["strict", "lenient"] and check["compared"] == [
        "batches", "accepted", "skipped", "rejected"]
    json.dumps(check, allow_nan=False)


def test_one_batch_more_in_the_sink_is_a_mismatch_with_its_likely_causes() -> None:
    """No tolerance: one batch of one cohort is enough, and the sentence says which way and why."""
    spans = {"strict": CohortCommitted(Tally(10, 30, 0, 5)), "lenient": CohortCommitted(Tally(8, 24, 2, 0))}
    sink = {"strict": CohortCommitted(Tally(11, 33, 0, 5)), "lenient": CohortCommitted(Tally(8, 24, 2, 0))}
    check = cross_check(spans, sink)
    assert check["verdict"] == "mismatch"
    strict = check["cohorts"]["strict"]
    assert strict["verdict"] == "mismatch" and strict["differs"] == ["batches", "accepted"]
    assert strict["difference"] == {"batches": 1, "accepted": 3, "skipped": 0, "rejected": 0}
    assert check["cohorts"]["lenient"]["verdict"] == "match"
    [sentence] = check["mismatches"]
    assert sentence.startswith("strict: the sink has 1 batch more (11 vs 10), 3 accepted records more (33 vs 30)")
    assert "still open" in sentence and "--until" in sentence


def test_fewer_in_the_sink_points_at_the_window_start_and_lost_commits() -> None:
    check = cross_check({"lenient": CohortCommitted(Tally(5, 5, 0, 0))}, {"lenient": CohortCommitted(Tally(3, 3))})
    [sentence] = check["mismatches"]
    assert "2 batches fewer (3 vs 5)" in sentence and "--since" in sentence and "commits lost" in sentence


def test_other_records_in_as_many_batches_are_a_mismatch_too() -> None:
    """Skipped and rejected records are compared as exactly as the batches and accepted ones."""
    check = cross_check({"strict": CohortCommitted(Tally(2, 4, 0, 1))}, {"strict": CohortCommitted(Tally(2, 4, 1, 0))})
    assert check["verdict"] == "mismatch" and check["cohorts"]["strict"]["differs"] == ["skipped", "rejected"]
    assert "disagree about the outcomes" in check["mismatches"][0]


def test_synthetic_batches_are_compared_apart_and_count_in_the_verdict() -> None:
    spans = {"strict": CohortCommitted(Tally(4, 4), Tally(2, 2))}
    same = cross_check(spans, {"strict": CohortCommitted(Tally(4, 4), Tally(2, 2))})
    assert same["verdict"] == "match" and same["synthetic"]["strict"]["spans"]["batches"] == 2
    moved = cross_check(spans, {"strict": CohortCommitted(Tally(6, 6), Tally())})  # probe rows stored as clients'
    assert moved["verdict"] == "mismatch"
    assert [m.split(":")[0] for m in moved["mismatches"]] == ["strict", "strict (synthetic)"]


def test_a_strategy_only_one_side_knows_is_compared() -> None:
    check = cross_check({}, {"strict-v2": CohortCommitted(Tally(1, 1))})
    assert list(check["cohorts"]) == ["strict", "lenient", "strict-v2"]
    assert check["verdict"] == "mismatch" and check["mismatches"][0].startswith("strict-v2: ")


def _report(check: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": "hold", "reasons": ["strict cohort too thin"],
            "sink": {"source": "postgresql://canary:***@db.internal/canary",
                     "window": {"start": "2026-12-06T20:00:00+00:00", "end": "2026-12-06T21:00:00+00:00"}, **check}}


def test_the_terminal_shows_a_mismatch_under_the_verdict_with_its_rows() -> None:
    check = cross_check({"strict": CohortCommitted(Tally(10, 30), Tally(1, 1))},
                        {"strict": CohortCommitted(Tally(12, 36), Tally(1, 1))})
    console = Console(record=True, width=80, color_system=None)
    render_terminal(_report(check), console)
    text = console.export_text()
    assert "Sink: MISMATCH — postgresql://canary:***@db.internal/canary" in text
    assert text.index("Sink: MISMATCH") < text.index("Cohorts")  # right under the verdict
    assert "2 batches more (12 vs 10)" in text
    assert "strict: batches" in text and "+2" in text and "strict (synthetic): batches" in text
    assert "lenient (synthetic)" not in text  # synthetic rows only where there are some


def test_the_page_marks_a_mismatch_and_its_differing_rows() -> None:
    check = cross_check({"lenient": CohortCommitted(Tally(3, 3))}, {"lenient": CohortCommitted(Tally(2, 2))})
    page = render_html(_report(check))
    assert '<section id="sink" class="sink mismatch">' in page
    assert page.index('id="sink"') < page.index('id="cohorts"')
    assert '<tr class="differs"><td>lenient: batches</td><td>3</td><td>2</td><td>-1</td></tr>' in page
    assert "postgresql://canary:***@db.internal/canary" in page


def test_a_match_is_shown_plainly_and_a_report_without_sink_shows_nothing() -> None:
    check = cross_check({"strict": CohortCommitted(Tally(1, 1))}, {"strict": CohortCommitted(Tally(1, 1))})
    console = Console(record=True, width=80, color_system=None)
    render_terminal(_report(check), console)
    assert "Sink: MATCH" in console.export_text()
    assert '<section id="sink" class="sink match">' in render_html(_report(check))
    assert all(not differs for _, differs in sink_rows(_report(check)))
    bare = Console(record=True, width=80, color_system=None)
    render_terminal({"verdict": "hold", "reasons": []}, bare)
    assert "Sink" not in bare.export_text() and 'id="sink"' not in render_html({"verdict": "hold"})
