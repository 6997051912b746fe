"""The sink cross-check: what the spans say each cohort answered, against what the sink committed.

Pure. Every well-formed batch a connection answers is committed to the sink before its answer
is sent, and counted on the connection's summary once answered; a replay (a batch whose
``(client id, batch id)`` was committed before) is answered from the sink, written nowhere and
counted on no summary. So, over a window whose edges no connection's summary slice straddles,
the connection summaries and the sink's ``canaryws_batches`` rows count the same batches, with
the same accepted, skipped and rejected records, per strategy: :func:`cross_check` compares
them **exactly** (no tolerance), the clients' and, apart, the synthetic ones (a probe's).

A difference is reported, never hidden, and never changes the report's verdict: the verdict
judges the clients' experience from the spans, this checks that the spans and the sink tell
the same story. The legitimate causes of a difference (docs/report.md, "Cross-checking with
the sink"): a window edge inside a slice (``--since`` counts slices that ended after it, with
batches committed before it: the spans count more; ``--until`` leaves out slices that ended
after it, with batches committed before it: the sink counts more), connections still open
(their current slice is not emitted yet: the sink counts more), a replica's trace file not
given (the sink counts more), and the clocks of a PostgreSQL server and the service. Anything
else is lost telemetry, or a sink that lost or duplicated commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from canaryws.adapters.sink.counts import COUNTS, CohortCommitted, Tally
from canaryws.analysis.judge import COHORTS
from canaryws.core.summary import ConnectionSummary

MATCH: Final = "match"
MISMATCH: Final = "mismatch"
Verdict = Literal["match", "mismatch"]

COMPARED: Final = COUNTS
"""What must be equal, exactly: batches, and accepted, skipped and rejected records."""

_MORE_IN_SINK = ("the sink committed batches no summary in the window counts: connections still open (their "
                 "slice is not emitted yet), a window ending inside a slice (--until), a replica's trace file "
                 "not given, or lost spans")
_MORE_IN_SPANS = ("the summaries count batches the sink has no row for in the window: a window starting inside a "
                  "slice (--since), another sink than the service's, or commits lost")
_OTHER_RECORDS = ("as many batches with other records: the sink and the summaries disagree about the outcomes (or "
                  "batches more and fewer cancel out across the window's edges)")


def span_counts(slices: Iterable[tuple[ConnectionSummary, int, int]]) -> dict[str, CohortCommitted]:
    """What the connection summaries ``slices`` (summary, start ns, end ns) counted, per strategy:
    batches answered and their records by outcome, the clients' and, apart, the synthetic ones."""
    clients: dict[str, Tally] = {}
    synthetic: dict[str, Tally] = {}
    for summary, _start, _end in slices:
        into = synthetic if summary.synthetic else clients
        tally = Tally(summary.batches, summary.accepted, summary.skipped, summary.rejected)
        into[summary.strategy] = into.get(summary.strategy, Tally()) + tally
    return {name: CohortCommitted(clients.get(name, Tally()), synthetic.get(name, Tally()))
            for name in sorted(clients.keys() | synthetic.keys())}


def _strategies(*sides: Mapping[str, CohortCommitted]) -> list[str]:
    """The cohorts first (strict, lenient), then any other strategy either side names."""
    others = sorted({name for side in sides for name in side} - set(COHORTS))
    return [*COHORTS, *others]


def _compare(spans: Tally, sink: Tally) -> dict[str, Any]:
    difference = {name: getattr(sink, name) - getattr(spans, name) for name in COMPARED}
    differs = [name for name in COMPARED if difference[name]]
    return {
        "verdict": MISMATCH if differs else MATCH,
        "spans": spans.to_dict(),
        "sink": sink.to_dict(),
        "difference": difference,  # sink - spans
        "differs": differs,
    }


def _sentence(label: str, row: Mapping[str, Any]) -> str:
    """``strict: the sink has 3 batches more than the spans (118 vs 115), 6 accepted more (...)``."""
    parts = []
    for name in row["differs"]:
        delta = row["difference"][name]
        noun = ("batch" if name == "batches" else f"{name} record") + ("" if abs(delta) == 1 else
                                                                         "es" if name == "batches" else "s")
        parts.append(f"{abs(delta):,} {noun} {'more' if delta > 0 else 'fewer'} "
                     f"({row['sink'][name]:,} vs {row['spans'][name]:,})")
    batches = row["difference"]["batches"]
    why = _MORE_IN_SINK if batches > 0 else _MORE_IN_SPANS if batches < 0 else _OTHER_RECORDS
    return f"{label}: the sink has {', '.join(parts)} than the spans; {why}"


def cross_check(spans: Mapping[str, CohortCommitted], sink: Mapping[str, CohortCommitted]) -> dict[str, Any]:
    """Compare the spans' counts with the sink's, per strategy, exactly.

    The result (JSON-serialisable; the report's ``sink`` without ``source`` and ``window``)::

        {"verdict": "match" | "mismatch",
         "compared": ["batches", "accepted", "skipped", "rejected"],
         "cohorts": {"strict": {"verdict", "spans": {...}, "sink": {...}, "difference": {...},
                                "differs": [...]}, "lenient": {...}},
         "synthetic": {"strict": {...}, "lenient": {...}},
         "mismatches": ["strict: the sink has 3 batches more ... than the spans; <likely causes>", ...]}

    ``difference`` is sink - spans. Every strategy either side names is compared (strict and
    lenient always). ``mismatch`` when any count of any strategy differs, synthetic ones included.
    """
    names = _strategies(spans, sink)
    empty = CohortCommitted()
    cohorts = {name: _compare(spans.get(name, empty).clients, sink.get(name, empty).clients) for name in names}
    synthetic = {name: _compare(spans.get(name, empty).synthetic, sink.get(name, empty).synthetic) for name in names}
    mismatches = [_sentence(name, row) for name, row in cohorts.items() if row["verdict"] == MISMATCH]
    mismatches += [_sentence(f"{name} (synthetic)", row) for name, row in synthetic.items()
                   if row["verdict"] == MISMATCH]
    return {
        "verdict": MISMATCH if mismatches else MATCH,
        "compared": list(COMPARED),
        "cohorts": cohorts,
        "synthetic": synthetic,
        "mismatches": mismatches,
    }


__all__ = ["COMPARED", "MATCH", "MISMATCH", "cross_check", "span_counts"]
