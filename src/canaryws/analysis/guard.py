"""The guard's decision rule, fed as connections end: the one rule of ``canaryws guard``,
``canaryws guard --replay`` and the simulations of docs/guard.md.

Pure (no I/O, no clock): slices (:data:`~canaryws.analysis.traces.Slice`) go in through
:meth:`Guard.add_slices`, time goes in through :meth:`Guard.judge`.

- **Units as they close.** :class:`UnitStream` adds up each connection's summary slices and
  hands on a unit once its connection closed, with its retry flag (opened within the retry
  window after the same client's abnormal close). Open units are bounded: a connection
  without a slice for ``max_open_s`` is forgotten.
- **Evidence since the configuration took effect.** Each summary carries the strict share
  its flags configured. The guard judges one *stage* at a time: it starts with the first
  connection (or at ``since_ns``), and a connection that opened later under another share
  starts a new stage (the evidence so far is dropped; connections still closing under the
  old share are left out).
- **The rule.** The critical rate-ratio metrics of :mod:`canaryws.analysis.judge` are fed in
  ticks of ``rules.tick_s`` of the connections' end times since the stage start
  (:class:`~canaryws.analysis.judge.RateWatch`): a metric fails once its e-value reached its
  share of ``alpha`` with the recent floor met, and the verdict is then ``rollback``, the
  same rule ``canaryws report`` applies. Holding for thin cohorts, no data and marginal
  evidence is the report's too; the guard does not judge what only holds (latency, accepted
  rate, SRM, shadow): that needs every connection kept, and it never rolls back.
- **Synthetic connections** (a probe's) are left out, as the report leaves them out
  (:func:`~canaryws.analysis.units.left_out`): they start no stage and feed no metric, and
  the judgement counts them under ``synthetic`` since the guard started.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from canaryws.analysis.judge import BASELINE, CANARY, COHORTS, RateWatch, Rules, rate_watches, tick_counts
from canaryws.analysis.sequential import Counts
from canaryws.analysis.traces import Slice
from canaryws.analysis.units import DEFAULT_RETRY_WINDOW_S, ConnectionUnit, SyntheticCount
from canaryws.core.summary import END_CLOSED

_CLOCK_SLACK_NS = 1_000_000_000  # as in units.mark_retries: a reconnect may start a moment before the old span ends
_UNSET = object()


class UnitStream:
    """Connection units from summary slices as they arrive; each is handed on once closed."""

    def __init__(self, retry_window_s: float = DEFAULT_RETRY_WINDOW_S, max_open_s: float = 86_400.0) -> None:
        self._window_ns = int(retry_window_s * 1e9)
        self._max_open_ns = int(max_open_s * 1e9)
        self._open: dict[tuple[str, str], ConnectionUnit] = {}
        self._first: set[tuple[str, str]] = set()  # units that hold their connection's first slice
        self._abnormal: dict[str, deque[int]] = {}  # client -> end times of its recent abnormal closes
        self._latest_ns = 0

    @property
    def open_units(self) -> int:
        return len(self._open)

    def add(self, slices: Iterable[Slice]) -> list[ConnectionUnit]:
        """The units whose connection closed in ``slices``, in the order their close came."""
        closed: list[ConnectionUnit] = []
        for summary, start_ns, end_ns in slices:
            key = (summary.connection_id, summary.strategy)
            unit = self._open.get(key)
            if unit is None:
                unit = self._open[key] = ConnectionUnit(summary.connection_id, summary.client_id, summary.strategy,
                                                        start_ns, end_ns)
            if summary.seq == 0:
                self._first.add(key)
            unit.add(summary, start_ns, end_ns)
            self._latest_ns = max(self._latest_ns, end_ns)
            if summary.end == END_CLOSED:
                for other in [k for k in self._open if k[0] == summary.connection_id]:  # its earlier cohorts too
                    del self._open[other]
                    first = other in self._first
                    self._first.discard(other)
                    if other == key:
                        self._close(unit, first)
                        closed.append(unit)
        self._prune()
        return closed

    def _close(self, unit: ConnectionUnit, first: bool) -> None:
        recent = self._abnormal.get(unit.client_id)
        unit.retry = first and recent is not None and any(
            -_CLOCK_SLACK_NS <= unit.start_ns - end <= self._window_ns for end in recent)
        if unit.abnormal_close:
            self._abnormal.setdefault(unit.client_id, deque(maxlen=4)).append(unit.end_ns)

    def _prune(self) -> None:
        horizon = self._latest_ns - self._max_open_ns
        for key in [k for k, u in self._open.items() if u.end_ns < horizon]:
            del self._open[key]
            self._first.discard(key)
        forget = self._latest_ns - self._window_ns - self._max_open_ns - _CLOCK_SLACK_NS
        for client in [c for c, ends in self._abnormal.items() if ends[-1] < forget]:
            del self._abnormal[client]


@dataclass
class _Cohort:
    connections: int = 0
    batches: int = 0


class Guard:
    """The evidence of the current stage and the decision on it (see the module docstring)."""

    def __init__(self, rules: Rules | None = None, *, since_ns: int | None = None,
                 retry_window_s: float = DEFAULT_RETRY_WINDOW_S) -> None:
        rules = Rules() if rules is None else rules
        self.rules = rules
        self._since_ns = since_ns
        self._stream = UnitStream(retry_window_s)
        self._pending: list[ConnectionUnit] = []
        self._share: object = _UNSET
        self.stages = 0
        self.start_ns: int | None = None
        self._tick_ns = int(rules.tick_s * 1e9)
        self.synthetic = SyntheticCount(COHORTS)  # left out since the guard started (one unit per connection)
        self._reset(since_ns)

    def _reset(self, start_ns: int | None) -> None:
        self.start_ns = start_ns
        self._cursor: int | None = start_ns  # the end of the last tick fed
        self._watches: list[RateWatch] = rate_watches(self.rules, keep_values=False)
        self._cohorts = {name: _Cohort() for name in COHORTS}
        self._pending = []
        self.stages += 1

    # -- input ------------------------------------------------------------------------------
    def add_slices(self, slices: Iterable[Slice]) -> None:
        """Summary slices as they arrive (any order within a connection's life)."""
        for unit in self._stream.add(slices):
            self.add_unit(unit)

    def add_unit(self, unit: ConnectionUnit) -> None:
        """A connection that closed (with its retry flag)."""
        if unit.strategy not in COHORTS or (self._since_ns is not None and unit.end_ns < self._since_ns):
            return
        if unit.synthetic:  # a probe's: counted, not compared (as units.left_out, one unit at a time)
            self.synthetic.add(unit, distinct=False)
            return
        if self._share is _UNSET:
            self._share = unit.strict_share
            if self.start_ns is None:
                self.stages -= 1  # the first stage, not a new one
                self._reset(unit.start_ns)
        elif unit.strict_share != self._share:
            if self.start_ns is not None and unit.start_ns < self.start_ns:
                return  # opened under an earlier configuration
            self._share = unit.strict_share
            self._reset(unit.start_ns)
        self._pending.append(unit)

    def add_counts(self, t_s: float, counts: Mapping[str, Counts], batches: Mapping[str, int] | None = None) -> None:
        """One tick of already counted evidence (what :meth:`judge` derives from the units of a
        tick): per metric, the connections that ended and their events. Simulations feed the
        rule this way."""
        by_name = {w.rule.name: w for w in self._watches}
        any_counts = next(iter(counts.values()), Counts())
        self._cohorts[CANARY].connections += any_counts.exposure_c
        self._cohorts[BASELINE].connections += any_counts.exposure_b
        for cohort, n in (batches or {}).items():
            self._cohorts[cohort].batches += n
        for name, tick in counts.items():
            by_name[name].add(t_s, tick)

    def _advance(self, now_ns: int) -> None:
        """Feed the connections that ended by ``now_ns``, in ticks of at most ``tick_s`` of their
        end times, the last one ending at ``now_ns`` (so a judgement sees everything before it;
        the ticks need not be equal, only chosen without looking at the outcomes)."""
        if self.start_ns is None or self._cursor is None:
            return
        self._pending.sort(key=lambda u: u.end_ns)
        while self._cursor < now_ns:
            if not self._pending or self._pending[0].end_ns > now_ns:  # nothing to count up to now
                self._cursor = now_ns
                self._feed([], now_ns)
                return
            end = min(self._cursor + self._tick_ns, now_ns)
            count = 0
            while count < len(self._pending) and self._pending[count].end_ns <= end:
                count += 1
            ready, self._pending = self._pending[:count], self._pending[count:]
            self._cursor = end
            self._feed(ready, end)

    def _feed(self, ready: list[ConnectionUnit], end_ns: int) -> None:
        assert self.start_ns is not None
        batches = {name: sum(u.batches for u in ready if u.strategy == name) for name in COHORTS}
        self.add_counts(max(0.0, (end_ns - self.start_ns) / 1e9), tick_counts(ready, self._watches), batches)

    # -- the decision -----------------------------------------------------------------------
    def _thin(self) -> list[str]:
        rules = self.rules
        thin = [f"{name} cohort too thin: {c.connections} connections < {rules.min_connections}"
                for name, c in self._cohorts.items() if c.connections < rules.min_connections]
        thin += [f"{name} cohort too thin: {c.batches} batches < {rules.min_batches}"
                 for name, c in self._cohorts.items() if c.batches < rules.min_batches]
        return thin

    def failed(self) -> list[str]:
        """The critical metrics that show harm now (empty while a cohort is thin): the
        rollback rule, without the report around it."""
        if self._thin():
            return []
        return [w.rule.name for w in self._watches if w.rule.critical and w.failed_at_s is not None]

    def judge(self, now_ns: int) -> dict[str, Any]:
        """The verdict on the stage's evidence up to ``now_ns``: ``rollback`` once a critical
        metric failed (and the cohorts are not thin: :meth:`failed`), ``hold`` while the
        evidence is thin or marginal, ``promote`` otherwise."""
        self._advance(now_ns)
        thin = self._thin()
        metrics = [w.result(inconclusive=bool(thin)) for w in self._watches]
        failed = [m for m in metrics if m["result"] == "fail" and m["critical"]]
        holding = [m for m in metrics if m["result"] in ("marginal", "nodata")]
        reasons = [f"{m['name']}: {m['detail']}" for m in failed] + thin
        reasons += [f"{m['name']}: {m['detail']}" for m in holding]
        verdict = "rollback" if failed else "hold" if reasons else "promote"
        if verdict == "promote":
            reasons.append(f"no critical metric shows harm, with enough evidence ({len(metrics)} metrics)")
        return {
            "verdict": verdict,
            "reasons": reasons,
            "stage": {"start_ns": self.start_ns, "strict_share": None if self._share is _UNSET else self._share,
                      "number": self.stages},
            "connections": {name: c.connections for name, c in self._cohorts.items()},
            "synthetic": self.synthetic.to_dict(),
            "metrics": [{k: v for k, v in m.items() if k != "values"} for m in metrics],
        }
