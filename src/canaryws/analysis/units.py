"""Units of analysis: one per connection and cohort, added up from its summary slices.

A synthetic connection (a probe's: its summaries carry ``canaryws.synthetic`` = true) is a
unit too, marked :attr:`ConnectionUnit.synthetic`; :func:`left_out` is the rule both the
report's judge and the guard apply to leave it out of the cohort comparison and count it.

Pure: the input is the flat span dicts of
:func:`canaryws.adapters.telemetry.otlp_json_reader.read_otlp_json_lines` (or anything of
that shape); only ``records.connection`` summary spans are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from canaryws.core import histogram
from canaryws.core.summary import A_ROLE, END_CLOSED, NORMAL_CLOSE_CODES, ROLE, ConnectionSummary

# A close is normal when the client said goodbye (1000), went away (1001) or the
# service restarted (1012: not the strategy's doing, and it hits both cohorts alike).
DEFAULT_RETRY_WINDOW_S = 30.0
# The old connection's summary is emitted after its close is processed, so a quick
# reconnect may start a moment before the old span's end.
_CLOCK_SLACK_NS = 1_000_000_000


@dataclass(slots=True)
class ConnectionUnit:
    """One connection under one strategy: the unit the report compares."""

    connection_id: str
    client_id: str
    strategy: str
    start_ns: int
    end_ns: int
    closed: bool = False
    close_code: int | None = None
    batches: int = 0
    records: int = 0
    accepted: int = 0
    skipped: int = 0
    rejected: int = 0
    errors: int = 0
    reasons: dict[tuple[str, str], int] = field(default_factory=dict)  # ("rejected", "blank") -> n
    error_codes: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=histogram.empty)  # histogram.BOUNDS_MS buckets
    latency_sum_s: float = 0.0
    strict_share: float | None = None  # configured share of strict clients when it connected
    shadow_batches: int = 0
    shadow_skipped: int = 0
    shadow_records: int = 0
    shadow_divergent: int = 0
    divergence: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, reason) -> records
    retry: bool = False  # opened soon after the same client's abnormally closed connection
    synthetic: bool = False  # a probe's connection: left out of the comparison, counted apart (left_out)

    @property
    def abnormal_close(self) -> bool:
        return self.closed and self.close_code not in NORMAL_CLOSE_CODES

    def add(self, summary: ConnectionSummary, start_ns: int, end_ns: int) -> None:
        self.start_ns = min(self.start_ns, start_ns)
        self.end_ns = max(self.end_ns, end_ns)
        if summary.end == END_CLOSED:
            self.closed = True
            self.close_code = summary.close_code
        if summary.synthetic:
            self.synthetic = True
        if summary.seq == 0 or self.strict_share is None:
            self.strict_share = summary.strict_share if summary.strict_share is not None else self.strict_share
        self.batches += summary.batches
        self.records += summary.records
        self.accepted += summary.accepted
        self.skipped += summary.skipped
        self.rejected += summary.rejected
        self.errors += summary.errors
        _add_counts(self.reasons, summary.reasons)
        _add_counts(self.error_codes, summary.error_codes)
        for i, n in enumerate(summary.latency):
            self.latency[i] += n
        self.latency_sum_s += summary.latency_sum_s
        self.shadow_batches += summary.shadow_batches
        self.shadow_skipped += summary.shadow_skipped
        self.shadow_records += summary.shadow_records
        self.shadow_divergent += summary.shadow_divergent
        _add_counts(self.divergence, summary.divergence)


def _add_counts(into: dict[Any, int], more: Mapping[Any, int]) -> None:
    for key, n in more.items():
        into[key] = into.get(key, 0) + n


def summaries(spans: Iterable[Mapping[str, Any]]) -> Iterable[tuple[ConnectionSummary, int, int]]:
    """The connection summaries among ``spans``, with each span's start and end (ns)."""
    for span in spans:
        attrs = span.get("attributes") or {}
        if attrs.get(A_ROLE) != ROLE:
            continue
        try:
            summary = ConnectionSummary.from_attributes(attrs)
        except (KeyError, ValueError, TypeError):
            continue
        yield summary, int(span.get("start_ns") or 0), int(span.get("end_ns") or 0)


def build_units(
    slices: Iterable[tuple[ConnectionSummary, int, int]],
    *,
    retry_window_s: float = DEFAULT_RETRY_WINDOW_S,
) -> list[ConnectionUnit]:
    """Add up the slices of each (connection, strategy) and mark retries.

    A connection whose cohort changed contributes one unit per strategy, so each unit
    belongs to exactly one cohort.
    """
    units: dict[tuple[str, str], ConnectionUnit] = {}
    for summary, start_ns, end_ns in slices:
        key = (summary.connection_id, summary.strategy)
        unit = units.get(key)
        if unit is None:
            unit = units[key] = ConnectionUnit(summary.connection_id, summary.client_id, summary.strategy,
                                               start_ns, end_ns)
        unit.add(summary, start_ns, end_ns)
    result = sorted(units.values(), key=lambda u: (u.start_ns, u.connection_id, u.strategy))
    mark_retries(result, retry_window_s)
    return result


class SyntheticCount:
    """The synthetic connections left out of a comparison: in all, and per strategy."""

    def __init__(self, strategies: Iterable[str] = ()) -> None:
        self.by_strategy: dict[str, int] = dict.fromkeys(strategies, 0)
        self._connections: set[str] = set()
        self._count = 0

    def add(self, unit: ConnectionUnit, *, distinct: bool = True) -> None:
        """Count ``unit``. With ``distinct``, a connection counts once in all even when it gave a
        unit to each cohort (it remembers the ids: for one report, not for a guard that runs for
        weeks, which hands on one unit per connection anyway)."""
        self.by_strategy[unit.strategy] = self.by_strategy.get(unit.strategy, 0) + 1
        if not distinct:
            self._count += 1
        elif unit.connection_id not in self._connections:
            self._connections.add(unit.connection_id)
            self._count += 1

    @property
    def connections(self) -> int:
        return self._count

    def to_dict(self) -> dict[str, int]:
        """``{"connections": n, "<strategy>": units, ...}``: the report's and the guard's ``synthetic``."""
        return {"connections": self._count, **self.by_strategy}


def left_out(units: Iterable[ConnectionUnit], strategies: Iterable[str] = ()) -> tuple[
        list[ConnectionUnit], SyntheticCount]:
    """The units a cohort comparison judges, and the synthetic ones it leaves out, counted
    (``strategies`` start at 0). A probe's connections are served like any other, but they are
    not the clients whose experience the comparison is about, and they are few and regular:
    in the comparison they would dilute (or, failing, fake) the clients' evidence and skew the
    sample ratio."""
    count = SyntheticCount(strategies)
    judged: list[ConnectionUnit] = []
    for unit in units:
        if unit.synthetic:
            count.add(unit)
        else:
            judged.append(unit)
    return judged, count


def mark_retries(units: list[ConnectionUnit], window_s: float = DEFAULT_RETRY_WINDOW_S) -> None:
    """Flag each connection opened within ``window_s`` after its client's previous
    connection closed abnormally: the client retried."""
    window_ns = int(window_s * 1e9)
    by_client: dict[str, list[ConnectionUnit]] = {}
    for unit in units:
        by_client.setdefault(unit.client_id, []).append(unit)
    for client_units in by_client.values():
        if len(client_units) < 2:
            continue
        client_units.sort(key=lambda u: u.start_ns)
        last_abnormal_end: int | None = None
        seen: set[str] = set()
        for unit in client_units:
            first_unit_of_connection = unit.connection_id not in seen
            seen.add(unit.connection_id)
            gap = None if last_abnormal_end is None else unit.start_ns - last_abnormal_end
            # a connection continued under another cohort is not a new attempt
            unit.retry = first_unit_of_connection and gap is not None and -_CLOCK_SLACK_NS <= gap <= window_ns
            if unit.closed:
                last_abnormal_end = unit.end_ns if unit.abnormal_close else None


__all__ = [
    "DEFAULT_RETRY_WINDOW_S",
    "NORMAL_CLOSE_CODES",
    "ConnectionUnit",
    "SyntheticCount",
    "build_units",
    "left_out",
    "mark_retries",
    "summaries",
]
