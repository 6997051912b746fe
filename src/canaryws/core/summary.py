"""The per-connection summary: what one connection did under one cohort, over one slice of time.

The service keeps one :class:`ConnectionSummary` per open connection and emits it as a
``records.connection`` span when the slice ends: at close, when the connection's cohort
changes (so every summary belongs to exactly one cohort), and every summary interval on
long-lived connections (so a moving window sees them). The report and the guard read
the spans back with :meth:`ConnectionSummary.from_attributes` and add up the slices of a
connection: the connection is the unit of analysis.

The attribute names below are the wire format of that span; this module is the one
place that writes and reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from canaryws.core import histogram
from canaryws.core.cohorts import Cohort
from canaryws.core.compare import Divergence
from canaryws.core.strategies.outcome import Outcome

A_ROLE = "canaryws.span.role"  # what a span is: connect, batch, connection (samplers and readers key on it)
ROLE = "connection"  # the role of a summary span

# A connection is synthetic (a probe's, not a client's) when its token carries the signed
# property ``synthetic`` = ``true``: it is served like any other, and left out of the cohort
# comparison (counted apart) by ``canaryws report`` and ``canaryws guard``.
SYNTHETIC_PROPERTY = "synthetic"
SYNTHETIC_VALUE = "true"

# Closes that say nothing about the strategy: normal closure, going away, service restart.
NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1012})

END_INTERVAL = "interval"
END_COHORT_CHANGED = "cohort_changed"
END_CLOSED = "closed"

A_CONNECTION_ID = "canaryws.connection.id"
A_CLIENT_ID = "canaryws.client.id"
A_STRATEGY = "canaryws.strategy"
A_STRATEGY_VERSION = "canaryws.strategy.version"
A_SHADOW = "canaryws.shadow"
A_REVISION = "canaryws.flags.revision"
A_EXPECTED_SHARE = "canaryws.flags.strict_share"
A_SEQ = "canaryws.summary.seq"
A_END = "canaryws.summary.end"
A_CLOSE_CODE = "canaryws.connection.close_code"
A_SYNTHETIC = "canaryws.synthetic"  # true on a synthetic connection's spans; absent means not synthetic
_C = "canaryws.connection."
A_LATENCY_BUCKETS = "canaryws.connection.latency.buckets"
A_LATENCY_SUM = "canaryws.connection.latency.sum_s"
_S = "canaryws.shadow."
A_SHADOW_DIVERGENCE = "canaryws.shadow.divergence."
_TOTALS = ("batches", "records", "accepted", "skipped", "rejected", "errors")
_SHADOW_TOTALS = ("batches", "records", "divergent", "skipped")


@dataclass(slots=True)
class ConnectionSummary:
    """Counts of one connection under one cohort, over one slice of its life."""

    connection_id: str
    client_id: str
    strategy: str
    strategy_version: int
    shadow: bool
    flags_revision: str
    strict_share: float | None = None  # the configured share of strict clients, when known
    seq: int = 0  # the slice's number within the connection, from 0
    end: str | None = None  # why the slice ended: interval, cohort_changed, closed
    close_code: int | None = None  # set on the closed slice only
    synthetic: bool = False  # a probe's connection (:func:`is_synthetic`), not a client's
    batches: int = 0
    records: int = 0
    accepted: int = 0
    skipped: int = 0
    rejected: int = 0
    errors: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)  # "blank" -> n (see :attr:`reasons`)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=histogram.empty)
    latency_sum_s: float = 0.0
    shadow_batches: int = 0  # batches compared with the other strategy
    shadow_skipped: int = 0  # batches the shadow did not run for (sampled out, error)
    shadow_records: int = 0
    shadow_divergent: int = 0
    divergence: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, reason) -> records
    shadow_work_s: float = 0.0  # time the comparisons took; a process metric only, not a span attribute

    def add(self, outcome: Outcome, seconds: float) -> None:
        """Count one answered batch that took ``seconds`` (called once per batch, so kept
        lean: reasons are tallied by their string, without building a per-batch counts
        dict). The batch loop calls it after its loop round's answers are out."""
        self.batches += 1
        accepted = len(outcome.accepted)
        skipped = outcome.skipped
        rejected = outcome.rejected
        self.accepted += accepted
        self.records += accepted + len(skipped) + len(rejected)
        if skipped:
            self.skipped += len(skipped)
            tally = self.skipped_reasons
            for _, reason in skipped:
                tally[reason] = tally.get(reason, 0) + 1
        if rejected:
            self.rejected += len(rejected)
            tally = self.rejected_reasons
            for _, reason in rejected:
                tally[reason] = tally.get(reason, 0) + 1
        self.latency[histogram.bucket_of(seconds * 1000.0)] += 1
        self.latency_sum_s += seconds

    @property
    def reasons(self) -> dict[tuple[str, str], int]:
        """Records by ``(outcome, reason)``: ``("rejected", "empty") -> n`` (a new dict; safe to
        read from another thread while the batch loop counts)."""
        counts = {("skipped", reason): n for reason, n in list(self.skipped_reasons.items())}
        counts.update((("rejected", reason), n) for reason, n in list(self.rejected_reasons.items()))
        return counts

    def add_error(self, code: str) -> None:
        self.errors += 1
        self.error_codes[code] = self.error_codes.get(code, 0) + 1

    def add_shadow(self, divergence: Divergence, work_s: float = 0.0) -> None:
        """Count one shadow comparison that took ``work_s`` seconds."""
        self.shadow_batches += 1
        self.shadow_records += divergence.records
        self.shadow_work_s += work_s
        if divergence.divergent:
            self.shadow_divergent += divergence.divergent
            totals = self.divergence
            for key, n in divergence.counts.items():
                totals[key] = totals.get(key, 0) + n

    @classmethod
    def opening(cls, connection_id: str, client_id: str, cohort: Cohort, strict_share: float | None,
                seq: int = 0, *, synthetic: bool = False) -> ConnectionSummary:
        """An empty summary for a connection's slice under ``cohort``."""
        return cls(connection_id, client_id, cohort.strategy, cohort.strategy_version, cohort.shadow,
                   cohort.flags_revision, strict_share, seq=seq, synthetic=synthetic)

    def next_slice(self, cohort: Cohort, strict_share: float | None) -> ConnectionSummary:
        """A fresh, empty summary for the same connection's next slice."""
        return self.opening(self.connection_id, self.client_id, cohort, strict_share, self.seq + 1,
                            synthetic=self.synthetic)

    # -- the span's attributes -------------------------------------------------

    def to_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            A_ROLE: ROLE,
            A_CONNECTION_ID: self.connection_id,
            A_CLIENT_ID: self.client_id,
            A_STRATEGY: self.strategy,
            A_STRATEGY_VERSION: self.strategy_version,
            A_SHADOW: self.shadow,
            A_REVISION: self.flags_revision,
            A_SEQ: self.seq,
            A_END: self.end or END_INTERVAL,
        }
        if self.strict_share is not None:
            attrs[A_EXPECTED_SHARE] = self.strict_share
        if self.close_code is not None:
            attrs[A_CLOSE_CODE] = self.close_code
        if self.synthetic:
            attrs[A_SYNTHETIC] = True
        for name in _TOTALS:
            attrs[_C + name] = getattr(self, name)
        for (kind, reason), n in self.reasons.items():
            attrs[f"{_C}{kind}.{reason}"] = n
        for code, n in self.error_codes.items():
            attrs[f"{_C}errors.{code}"] = n
        if self.batches:
            attrs[A_LATENCY_BUCKETS] = list(self.latency)
            attrs[A_LATENCY_SUM] = self.latency_sum_s
        if self.shadow_batches or self.shadow_skipped:
            for name in _SHADOW_TOTALS:
                attrs[_S + name] = getattr(self, "shadow_" + name)
            for (kind, reason), n in self.divergence.items():
                attrs[f"{A_SHADOW_DIVERGENCE}{kind}.{reason}"] = n
        return attrs

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any]) -> ConnectionSummary:
        """Read a summary back from a span's attributes (``KeyError``/``ValueError`` if not one)."""
        share = attrs.get(A_EXPECTED_SHARE)
        close = attrs.get(A_CLOSE_CODE)
        synthetic = attrs.get(A_SYNTHETIC)  # a bool from the SDK and from JSON; absent: not synthetic
        summary = cls(
            connection_id=str(attrs[A_CONNECTION_ID]),
            client_id=str(attrs[A_CLIENT_ID]),
            strategy=str(attrs[A_STRATEGY]),
            strategy_version=int(attrs.get(A_STRATEGY_VERSION, 0)),
            shadow=bool(attrs.get(A_SHADOW, False)),
            flags_revision=str(attrs.get(A_REVISION, "")),
            strict_share=None if share is None else float(share),
            seq=int(attrs.get(A_SEQ, 0)),
            end=str(attrs.get(A_END) or (END_INTERVAL if close is None else END_CLOSED)),
            close_code=None if close is None else int(close),
            synthetic=synthetic is True or synthetic == SYNTHETIC_VALUE,
        )
        for name in _TOTALS:
            setattr(summary, name, int(attrs.get(_C + name, 0)))
        for name in _SHADOW_TOTALS:
            setattr(summary, "shadow_" + name, int(attrs.get(_S + name, 0)))
        buckets = attrs.get(A_LATENCY_BUCKETS)
        if isinstance(buckets, list | tuple):  # a list from JSON, a tuple from the SDK
            summary.latency = [int(n) for n in buckets[: histogram.SIZE]] + [0] * (histogram.SIZE - len(buckets))
        summary.latency_sum_s = float(attrs.get(A_LATENCY_SUM, 0.0))
        for key, value in attrs.items():
            if key.startswith(_C):
                kind, _, reason = key[len(_C):].partition(".")
                if kind == "skipped" and reason:
                    summary.skipped_reasons[reason] = int(value)
                elif kind == "rejected" and reason:
                    summary.rejected_reasons[reason] = int(value)
                elif kind == "errors" and reason:
                    summary.error_codes[reason] = int(value)
            elif key.startswith(A_SHADOW_DIVERGENCE):
                kind, _, reason = key[len(A_SHADOW_DIVERGENCE):].partition(".")
                summary.divergence[(kind, reason)] = int(value)
        return summary


def is_synthetic(properties: Mapping[str, str]) -> bool:
    """Whether a connection with these verified client properties is synthetic: the property
    ``synthetic`` is exactly ``true``."""
    return properties.get(SYNTHETIC_PROPERTY) == SYNTHETIC_VALUE


__all__ = [
    "A_ROLE",
    "A_SYNTHETIC",
    "END_CLOSED",
    "END_COHORT_CHANGED",
    "END_INTERVAL",
    "ROLE",
    "SYNTHETIC_PROPERTY",
    "ConnectionSummary",
    "is_synthetic",
]
