"""The sink cross-check (``report["sink"]``, :mod:`canaryws.analysis.sink_check`) as a headline
and rows of formatted cells, read defensively like :mod:`.rows`: the terminal and the page lay
them out (a mismatch first and loud, right under the verdict)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canaryws.analysis.render.rows import COHORTS, DASH, Row, as_map, finite, fmt_count

SINK_COLUMNS = ("", "spans", "sink", "sink − spans")
_LABELS = {"batches": "batches", "accepted": "accepted records", "skipped": "skipped records",
           "rejected": "rejected records"}


def sink_of(report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The report's cross-check with the sink, or None (a report without ``--sink``)."""
    sink = report.get("sink")
    return sink if isinstance(sink, Mapping) else None


def sink_status(report: Mapping[str, Any]) -> str:
    """``match``, ``mismatch``, or ``unknown``."""
    verdict = as_map(sink_of(report)).get("verdict")
    return verdict if verdict in ("match", "mismatch") else "unknown"


def sink_headline(report: Mapping[str, Any]) -> str | None:
    """``Sink: MATCH — sqlite:///data/sink.sqlite3, committed 2026-… → 2026-…``."""
    sink = sink_of(report)
    if sink is None:
        return None
    window = as_map(sink.get("window"))
    start, end = window.get("start") or DASH, window.get("end") or DASH
    status = sink_status(report)
    what = {"match": "the spans and the sink count the same batches and records",
            "mismatch": "the spans and the sink disagree (the verdict is the spans')"}.get(status, "")
    return (f"Sink: {status.upper()} — {sink.get('source') or DASH}, committed {start} → {end}"
            + (f": {what}" if what else ""))


def sink_mismatches(report: Mapping[str, Any]) -> list[str]:
    mismatches = as_map(sink_of(report)).get("mismatches")
    return [str(m) for m in mismatches] if isinstance(mismatches, list) else []


def _strategies(side: Mapping[str, Any]) -> list[str]:
    """The cohorts in display order (the baseline first), then any other strategy."""
    return [*COHORTS, *sorted(str(k) for k in side if k not in COHORTS)]


def _signed(value: Any) -> str:
    number = finite(value)
    if number is None:
        return DASH
    return "0" if number == 0 else f"{int(number):+,}"


def _has_counts(row: Mapping[str, Any]) -> bool:
    return any(finite(as_map(row.get(side)).get(name)) for side in ("spans", "sink") for name in _LABELS)


def sink_rows(report: Mapping[str, Any]) -> list[tuple[Row, bool]]:
    """``((label, spans, sink, difference), differs)`` per strategy and count: the clients',
    then the synthetic ones (only where either side counted any)."""
    sink = as_map(sink_of(report))
    out: list[tuple[Row, bool]] = []
    for group, suffix in (("cohorts", ""), ("synthetic", " (synthetic)")):
        side = as_map(sink.get(group))
        for strategy in _strategies(side):
            row = as_map(side.get(strategy))
            if not row or (suffix and not _has_counts(row)):
                continue
            differs = {str(d) for d in row.get("differs") or []}
            for name, label in _LABELS.items():
                cells = (f"{strategy}{suffix}: {label}", fmt_count(as_map(row.get("spans")).get(name)),
                         fmt_count(as_map(row.get("sink")).get(name)), _signed(as_map(row.get("difference")).get(name)))
                out.append((cells, name in differs))
    return out


__all__ = ["SINK_COLUMNS", "sink_headline", "sink_mismatches", "sink_of", "sink_rows", "sink_status"]
