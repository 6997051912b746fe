"""The judge: should the strict canary be promoted, held or rolled back?

A comparison of two cohorts of connections: the **canary** is the strict cohort, the
**baseline** the lenient cohort. Pure: the input is the
:class:`~canaryws.analysis.units.ConnectionUnit` list of
:func:`~canaryws.analysis.units.build_units`, the output a JSON-serialisable dict; no I/O.
Units of any other strategy are ignored, and so are synthetic ones (a probe's connections:
:func:`~canaryws.analysis.units.left_out`), which the result counts apart under ``synthetic``.
``canaryws report`` judges once; ``canaryws guard``
(:mod:`canaryws.analysis.guard`) feeds the same monitors as the connections end and rolls
back on the same rule. docs/report.md explains the rules and their defaults.

What is compared
----------------
Strict rejecting what lenient skipped is the change being rolled out, not a regression,
so reason counts are reported but never judged. What counts against the canary is what
its clients suffer and what reaches downstream, **per connection** (the unit of analysis).
Which metrics, which of them are critical (a fail rolls back), their bad direction, test
and tolerances: :data:`DEFAULT_METRICS` is the table, the one place it is written
(docs/report.md's table is generated from it; ``canaryws report`` shows each metric's
description from the judgement).

A ``rate-ratio`` metric (by default, the critical ones) is a 0/1 outcome per connection,
watched by an anytime-valid rate-ratio monitor (:mod:`canaryws.analysis.sequential`): the
evidence accumulates over the connections that ended since the comparison started, its
false-rollback probability stays below its share of ``alpha`` however often it is looked
at, and a harm that starts late is still found. A critical one **fails** when its e-value
reaches ``1 / (alpha / number of critical metrics)`` (the tolerated ratio
``1 + rel_tolerance`` is the null hypothesis) *and*, over the last ``recent_s`` seconds,
the canary had at least ``min_events`` events and its rate exceeds the baseline's by at
least ``abs_tolerance`` (a small absolute floor). It is **marginal** (hold) when the e-value
reached ``1 / hold_alpha``, and **nodata** (hold) until enough connections ended that a harm
that matters (``detect_ratio`` times the baseline's rate, or ``detect_excess`` more where
that is near 0) would, on average, have reached the rollback threshold: a promote needs the
power to have seen the harm.

A ``mann-whitney`` metric (by default, the others: they only hold) is a one-sided
Mann-Whitney U test on per-connection values at ``alpha`` with a tolerance
``max(abs_tolerance, rel_tolerance x |baseline mean|)`` (fixed-horizon: looking often
inflates their false holds, never a rollback).

Before any metric: each cohort needs ``min_connections`` connections and ``min_batches``
batches, else the comparison is ``inconclusive`` (nothing is judged).

Sample-ratio mismatch (SRM): clients (each counted once, in the cohort of its earliest
connection) should split as the flag says: an anytime-valid test of the odds of being strict
against each client's configured share (a mixture over odds multipliers, as Lindon & Malek's
multinomial test of SRM), a mismatch at ``srm_alpha``; the cohorts are then not comparable,
so the verdict cannot be promote.

Verdict, in order of precedence
-------------------------------
1. ``rollback``: a critical metric fails (whatever else is true).
2. ``hold``: thin cohort, SRM mismatch, a non-critical metric fails, a critical one is
   marginal, a metric has no data, or the shadow comparison shows unexpected divergence
   (strict accepting what lenient did not, or both accepting different values).
3. ``promote``: otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from canaryws.analysis.sequential import Counts, RateRatioMonitor, exposure_to_detect
from canaryws.analysis.units import ConnectionUnit, left_out
from canaryws.core import histogram
from canaryws.core.compare import VALUE_MISMATCH, accepted_only_kind
from canaryws.core.strategies import LENIENT, STRICT

CANARY = STRICT.name
BASELINE = LENIENT.name
COHORTS = (CANARY, BASELINE)
TEST_NAME = "mann-whitney-u"
SRM_MIN_CLIENTS = 20  # below this the split says nothing
_HL_MAX_PAIRS = 1_000_000

Direction = Literal["increase", "decrease"]
Verdict = Literal["promote", "hold", "rollback"]


Test = Literal["rate-ratio", "mann-whitney"]


@dataclass(frozen=True)
class MetricRule:
    """One per-connection metric and how it is judged.

    ``direction`` is the bad direction: ``increase`` for a metric that hurts when it
    rises. A fail on a ``critical`` metric rolls back; on any other metric it holds.
    ``test``: ``rate-ratio`` (a 0/1 outcome per connection, anytime-valid; the tolerance is
    the ratio ``1 + rel_tolerance`` with the absolute floor ``abs_tolerance``) or
    ``mann-whitney`` (tolerance ``max(abs_tolerance, rel_tolerance x |baseline mean|)``).
    """

    name: str
    description: str
    critical: bool
    direction: Direction
    abs_tolerance: float
    rel_tolerance: float
    test: Test = "mann-whitney"

    def tolerance(self, baseline_mean: float) -> float:
        return max(self.abs_tolerance, self.rel_tolerance * abs(baseline_mean))


DEFAULT_METRICS: tuple[MetricRule, ...] = (
    MetricRule("abnormal_close_rate",
               "share of connections closed with a code other than 1000, 1001 or 1012",
               critical=True, direction="increase", abs_tolerance=0.001, rel_tolerance=0.1, test="rate-ratio"),
    MetricRule("error_frame_rate",
               "share of connections that got at least one error frame",
               critical=True, direction="increase", abs_tolerance=0.001, rel_tolerance=0.1, test="rate-ratio"),
    MetricRule("retry_rate",
               "share of connections opened soon after the client's previous connection closed abnormally",
               critical=True, direction="increase", abs_tolerance=0.001, rel_tolerance=0.1, test="rate-ratio"),
    MetricRule("latency_p95_ms",
               "95th percentile batch latency of a connection (ms), connections with enough batches",
               critical=False, direction="increase", abs_tolerance=5.0, rel_tolerance=0.25),
    MetricRule("accepted_rate",
               "accepted records / records, per connection: what reaches downstream",
               critical=False, direction="decrease", abs_tolerance=0.02, rel_tolerance=0.05),
)
"""The judge's metric table: the one place it is written. docs/report.md's table is generated
from it (``tests/unit/test_judge.py`` checks it cell for cell)."""


@dataclass(frozen=True)
class Rules:
    """The judge's thresholds. ``min_connections`` and ``min_batches`` are per cohort,
    ``min_values`` per Mann-Whitney metric and cohort; a connection gives a latency value
    only with at least ``min_latency_batches`` batches. The rate-ratio monitors tick every
    ``tick_s`` seconds of the connections' end times, start a new candidate harm every
    ``block_s`` and judge the floor over the last ``recent_s``; a fail needs ``min_events``
    canary events in that window. A promote needs, for each rate metric, the exposure at
    which a harm that matters (``detect_ratio`` times the lenient rate, or ``detect_excess``
    more where that is near 0) would have been caught."""

    alpha: float = 0.01
    hold_alpha: float = 0.05
    min_connections: int = 20
    min_batches: int = 20
    min_values: int = 20
    srm_alpha: float = 0.001
    min_latency_batches: int = 5
    min_events: int = 3
    detect_ratio: float = 3.0
    detect_excess: float = 0.02
    tick_s: float = 30.0
    block_s: float = 600.0
    recent_s: float = 3600.0
    metrics: tuple[MetricRule, ...] = field(default=DEFAULT_METRICS)

    def __post_init__(self) -> None:
        for name, value in (("alpha", self.alpha), ("hold_alpha", self.hold_alpha), ("srm_alpha", self.srm_alpha)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), not {value}")
        for name, number in (("tick_s", self.tick_s), ("block_s", self.block_s), ("recent_s", self.recent_s),
                             ("detect_excess", self.detect_excess)):
            if number <= 0:
                raise ValueError(f"{name} must be positive, not {number}")
        unknown = [m.name for m in self.metrics if m.name not in _EXTRACTORS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(_EXTRACTORS)}")
        for metric in self.metrics:
            if metric.direction not in ("increase", "decrease"):
                raise ValueError(f"{metric.name}: direction must be increase or decrease")
            if metric.test == "rate-ratio" and (metric.name not in _OUTCOMES or metric.direction != "increase"):
                raise ValueError(f"{metric.name}: the rate-ratio test is for the 0/1 outcomes {sorted(_OUTCOMES)}, "
                                 "bad when they increase")

    @property
    def critical_alpha(self) -> float:
        """Each critical metric's share of ``alpha`` (Bonferroni: together they decide a rollback)."""
        return self.alpha / max(1, sum(1 for rule in self.metrics if rule.critical))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = [asdict(m) for m in self.metrics]
        return out


# -- per-connection values --------------------------------------------------------


def _abnormal_close_values(units: Sequence[ConnectionUnit], _rules: Rules) -> list[float]:
    return [1.0 if u.abnormal_close else 0.0 for u in units]


def _error_frame_values(units: Sequence[ConnectionUnit], _rules: Rules) -> list[float]:
    return [1.0 if u.errors > 0 else 0.0 for u in units]


def _retry_values(units: Sequence[ConnectionUnit], _rules: Rules) -> list[float]:
    return [1.0 if u.retry else 0.0 for u in units]


def _latency_p95_values(units: Sequence[ConnectionUnit], rules: Rules) -> list[float]:
    values = []
    for u in units:
        if u.batches >= rules.min_latency_batches:
            q = histogram.quantile(u.latency, 0.95)
            if q is not None:
                values.append(float(q))
    return values


def _accepted_values(units: Sequence[ConnectionUnit], _rules: Rules) -> list[float]:
    return [u.accepted / u.records for u in units if u.records > 0]


_OUTCOMES: dict[str, Callable[[ConnectionUnit], bool]] = {
    "abnormal_close_rate": lambda u: u.abnormal_close,
    "error_frame_rate": lambda u: u.errors > 0,
    "retry_rate": lambda u: u.retry,
}
"""The 0/1 outcome of each rate-ratio metric, per connection that ended."""


def outcome(name: str) -> Callable[[ConnectionUnit], bool]:
    """The 0/1 outcome of the rate-ratio metric ``name`` (for the report's time series,
    :mod:`canaryws.analysis.timeline`); ``KeyError`` for a metric that is not one."""
    return _OUTCOMES[name]


_EXTRACTORS: dict[str, Callable[[Sequence[ConnectionUnit], Rules], list[float]]] = {
    "abnormal_close_rate": _abnormal_close_values,
    "error_frame_rate": _error_frame_values,
    "retry_rate": _retry_values,
    "latency_p95_ms": _latency_p95_values,
    "accepted_rate": _accepted_values,
}


# -- numbers -------------------------------------------------------------------


def _num(x: float | np.floating[Any] | None) -> float | None:
    """A plain finite float, or None."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _ratio(n: float, d: float) -> float | None:
    return _num(n / d) if d else None


def _g(x: float) -> str:
    return f"{x:.3g}"


def _share(x: float) -> str:
    return f"{x * 100:.3g}%"


def mann_whitney_p(canary: Sequence[float], baseline: Sequence[float], direction: Direction) -> float:
    """One-sided Mann–Whitney U p-value that the canary is shifted in ``direction``.

    1.0 when every value of both samples is the same (no evidence either way)."""
    a = np.asarray(canary, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if a.size == 0 or b.size == 0:
        return 1.0
    first = a[0]
    if np.all(a == first) and np.all(b == first):
        return 1.0
    alternative = "greater" if direction == "increase" else "less"
    from scipy import stats  # imported on use: it costs about 2 s, and only the report needs it

    result = stats.mannwhitneyu(a, b, alternative=alternative, method="auto")
    p = float(result.pvalue)
    return p if math.isfinite(p) else 1.0


def hodges_lehmann(canary: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Median of the pairwise differences canary − baseline: a robust shift estimate.

    Above a million pairs both samples are thinned to evenly spaced order statistics,
    which is deterministic and keeps the estimate close."""
    a = np.sort(np.asarray(canary, dtype=float))
    b = np.sort(np.asarray(baseline, dtype=float))
    if a.size == 0 or b.size == 0:
        return None
    if a.size * b.size > _HL_MAX_PAIRS:
        k = math.sqrt(a.size * b.size / _HL_MAX_PAIRS)
        a = a[np.linspace(0, a.size - 1, max(1, int(a.size / k))).round().astype(int)]
        b = b[np.linspace(0, b.size - 1, max(1, int(b.size / k))).round().astype(int)]
    return _num(np.median(np.subtract.outer(a, b)))


def _describe(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "median": None}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "mean": _num(arr.mean()), "median": _num(np.median(arr))}


# -- metrics -------------------------------------------------------------------


def _judge_metric(rule: MetricRule, canary: list[float], baseline: list[float], rules: Rules,
                  *, inconclusive: bool, alpha: float) -> dict[str, Any]:
    c, b = _describe(canary), _describe(baseline)
    effect = tolerance = None
    if c["mean"] is not None and b["mean"] is not None:
        effect = _num(c["mean"] - b["mean"])
        tolerance = _num(rule.tolerance(b["mean"]))
    p_value: float | None = None
    if inconclusive:
        result, detail = "inconclusive", "not judged: a cohort is below the minimum sample"
    elif len(canary) < rules.min_values or len(baseline) < rules.min_values:
        result = "nodata"
        detail = (f"too few values: {CANARY} {len(canary)}, {BASELINE} {len(baseline)} "
                  f"(minimum {rules.min_values} each)")
    else:
        assert effect is not None and tolerance is not None
        p_value = mann_whitney_p(canary, baseline, rule.direction)
        bad = effect if rule.direction == "increase" else -effect
        beyond = bad > tolerance
        significant = p_value < alpha
        if beyond and significant:
            result = "fail"
        elif beyond and rule.critical and p_value < rules.hold_alpha:
            result = "marginal"  # a large effect with some evidence: not enough to roll back, too much to promote
        else:
            result = "pass"
        detail = (f"effect {effect:+.3g} {'beyond' if beyond else 'within'} tolerance {_g(tolerance)} "
                  f"({rule.direction} is bad); p={p_value:.2g} {'<' if significant else '≥'} alpha {alpha:.3g}")
    return {
        **_metric_head(rule, result),
        CANARY: c,
        BASELINE: b,
        "effect": effect,
        "tolerance": tolerance,
        "hodges_lehmann": hodges_lehmann(canary, baseline),
        "p_value": p_value,
        "test": TEST_NAME,
        "detail": detail,
        "values": {CANARY: [float(v) for v in canary], BASELINE: [float(v) for v in baseline]},
    }


# -- rate-ratio metrics (anytime-valid) ------------------------------------------


class RateWatch:
    """One rate-ratio metric watched as connections end: its monitor, and when (if ever) it
    first warranted a rollback. Fed by :func:`feed` (the report) and by the guard."""

    def __init__(self, rule: MetricRule, rules: Rules, *, keep_values: bool = True) -> None:
        """``keep_values``: keep each connection's 0/1 value, for the report's plots (the guard,
        which runs for weeks, does not)."""
        self.rule = rule
        self.keep_values = keep_values
        self.rules = rules
        self.alpha = rules.critical_alpha if rule.critical else rules.alpha
        self.monitor = RateRatioMonitor(1.0 + rule.rel_tolerance, block_s=rules.block_s, recent_s=rules.recent_s)
        self.failed_at_s: float | None = None  # monitor seconds of the first tick that warranted a fail
        self.values: dict[str, list[float]] = {CANARY: [], BASELINE: []}  # per connection, for the plots

    def add(self, t_s: float, tick: Counts) -> None:
        self.monitor.add(t_s, tick)
        if self.failed_at_s is None and self._warrants_fail():
            self.failed_at_s = t_s

    def _warrants_fail(self) -> bool:
        if self.monitor.log_e < math.log(1.0 / self.alpha):
            return False
        recent = self.monitor.recent()
        excess = recent.excess()
        return recent.events_c >= self.rules.min_events and excess is not None and excess >= self.rule.abs_tolerance

    def _short_by(self) -> float | None:
        """How many more connections (both cohorts) the comparison needs before it could
        promote, None when it has enough: the exposure at which a harm that matters (a
        ``detect_ratio`` times higher canary rate, or ``detect_excess`` more where the baseline
        is near 0) reaches the rollback threshold on average (:func:`exposure_to_detect`)."""
        total, rules = self.monitor.total, self.rules
        exposure = total.exposure_c + total.exposure_b
        needed = exposure_to_detect(total, self.monitor.rho0, rules.detect_ratio, rules.detect_excess, self.alpha)
        if needed is not None and exposure >= needed:
            return None
        return math.inf if needed is None else needed - exposure

    def result(self, *, inconclusive: bool) -> dict[str, Any]:
        """The metric's judgement now (``fail`` once it has warranted a rollback)."""
        rule, rules, monitor = self.rule, self.rules, self.monitor
        total, recent = monitor.total, monitor.recent()
        rate_c, rate_b = total.rates()
        e_value = math.exp(min(monitor.log_e, 700.0))
        e_max = math.exp(min(monitor.max_log_e, 700.0))
        low, high = monitor.interval(self.alpha)
        needed: float | None = None
        pooled = total.events_c + total.events_b
        threshold = 1.0 / self.alpha
        if inconclusive:
            result, detail = "inconclusive", "not judged: a cohort is below the minimum sample"
        elif self.failed_at_s is not None:
            result = "fail"
            detail = (f"e-value reached {_g(threshold)} (max {_g(e_max)}) with {recent.events_c} {CANARY} events in "
                      f"the last {_g(rules.recent_s / 60)} min and an excess of {_share(recent.excess() or 0.0)} "
                      f">= {_share(rule.abs_tolerance)}")
        elif (short := self._short_by()) is not None:
            result = "nodata"
            more = "connections in both cohorts" if math.isinf(short) else f"about {short:,.0f} more connections"
            detail = (f"too little evidence to promote: {pooled} events in {total.exposure_c + total.exposure_b} "
                      f"connections; {more} before a {_g(rules.detect_ratio)}x rate (or "
                      f"+{_share(rules.detect_excess)}) would reach the rollback threshold")
        else:
            needed = monitor.exposure_needed(self.alpha)
            result = "marginal" if e_max >= 1.0 / rules.hold_alpha else "pass"
            detail = (f"e-value {_g(e_value)} (max {_g(e_max)}) < {_g(threshold)}; ratio "
                      f"{_fmt_ratio(total.ratio())} [{_fmt_ratio(low)}, {_fmt_ratio(high)}], tolerated "
                      f"{_g(1 + rule.rel_tolerance)} (+{_share(rule.abs_tolerance)})")
            if needed is not None and needed > 0:
                detail += f"; about {needed:,.0f} more connections would decide a rollback at the recent effect"
        return {
            **_metric_head(rule, result),
            "test": "rate-ratio",
            CANARY: {"n": total.exposure_c, "events": total.events_c, "mean": rate_c},
            BASELINE: {"n": total.exposure_b, "events": total.events_b, "mean": rate_b},
            "effect": total.excess(),
            "ratio": _num(total.ratio()),
            "ratio_interval": [_num(low), _num(high)],
            "tolerance": {"ratio": 1.0 + rule.rel_tolerance, "excess": rule.abs_tolerance},
            "recent": {"seconds": rules.recent_s, "ratio": _num(recent.ratio()), "excess": recent.excess(),
                       CANARY: {"n": recent.exposure_c, "events": recent.events_c},
                       BASELINE: {"n": recent.exposure_b, "events": recent.events_b}},
            "e_value": _num(e_value),
            "e_max": _num(e_max),
            "threshold": threshold,
            "p_value": _num(monitor.p_value),
            "connections_needed": None if needed is None else round(needed),
            "detail": detail,
            "values": {c: list(v) for c, v in self.values.items()},
        }


def rate_watches(rules: Rules, *, keep_values: bool = True) -> list[RateWatch]:
    """A watch for each rate-ratio metric of ``rules``."""
    return [RateWatch(rule, rules, keep_values=keep_values) for rule in rules.metrics if rule.test == "rate-ratio"]


def tick_counts(units: Iterable[ConnectionUnit], watches: Sequence[RateWatch]) -> dict[str, Counts]:
    """The exposure and events of ended connections, per rate-ratio metric."""
    counts = {w.rule.name: [0, 0, 0, 0] for w in watches}
    for unit in units:
        if not unit.closed or unit.strategy not in COHORTS:
            continue
        canary = unit.strategy == CANARY
        for watch in watches:
            entry = counts[watch.rule.name]
            happened = _OUTCOMES[watch.rule.name](unit)
            entry[0 if canary else 1] += 1
            if happened:
                entry[2 if canary else 3] += 1
            if watch.keep_values:
                watch.values[CANARY if canary else BASELINE].append(1.0 if happened else 0.0)
    return {name: Counts(*entry) for name, entry in counts.items()}


def feed(watches: Sequence[RateWatch], units: Sequence[ConnectionUnit], start_ns: int | None = None,
         tick_s: float | None = None) -> None:
    """Feed the connections that ended (in ``tick_s`` ticks of their end times, from
    ``start_ns`` or the first end) to the watches."""
    ended = sorted((u for u in units if u.closed and u.strategy in COHORTS), key=lambda u: u.end_ns)
    if not ended or not watches:
        return
    tick_ns = int((tick_s or watches[0].rules.tick_s) * 1e9)
    origin = ended[0].end_ns if start_ns is None else start_ns
    index = 0
    while index < len(ended):
        tick = max(0, (ended[index].end_ns - origin) // tick_ns)
        end = origin + (tick + 1) * tick_ns
        batch = []
        while index < len(ended) and ended[index].end_ns < end:
            batch.append(ended[index])
            index += 1
        t_s = (end - origin) / 1e9
        for name, counts in tick_counts(batch, watches).items():
            next(w for w in watches if w.rule.name == name).add(t_s, counts)


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "?"
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _metric_head(rule: MetricRule, result: str) -> dict[str, Any]:
    """What every metric's judgement starts with."""
    return {"name": rule.name, "description": rule.description, "critical": rule.critical,
            "direction": rule.direction, "result": result}


def _metric_reason(m: Mapping[str, Any]) -> str:
    if m.get("test") == "rate-ratio":
        text = (f"{m['name']}: {CANARY} {_share(m[CANARY]['mean'] or 0.0)} vs {BASELINE} "
                f"{_share(m[BASELINE]['mean'] or 0.0)} (ratio {_fmt_ratio(m['ratio'])} "
                f"[{_fmt_ratio(m['ratio_interval'][0])}, {_fmt_ratio(m['ratio_interval'][1])}], e-value "
                f"{_g(m['e_max'])}, rollback at {_g(m['threshold'])})")
        if m["result"] == "marginal":
            return text + " — critical, not enough evidence to roll back: hold for more data"
        return text + " — critical" if m["critical"] else text
    text = (f"{m['name']}: {CANARY} {_g(m[CANARY]['mean'])} vs {BASELINE} {_g(m[BASELINE]['mean'])} "
            f"({m['effect']:+.3g}, tolerance {_g(m['tolerance'])}, p={m['p_value']:.2g})")
    if m["result"] == "marginal":
        return text + " — critical, not significant enough to roll back: hold for more data"
    return text + " — critical" if m["critical"] else text


# -- cohorts -------------------------------------------------------------------


def _sorted_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: counts[k] for k in sorted(counts)}


def _cohort(units: Sequence[ConnectionUnit]) -> dict[str, Any]:
    """Cohort-level totals and rates (descriptive; the judgement uses per-connection values)."""
    connections = len(units)
    batches = sum(u.batches for u in units)
    records = sum(u.records for u in units)
    accepted = sum(u.accepted for u in units)
    errors = sum(u.errors for u in units)
    by_reason: dict[str, dict[str, int]] = {"skipped": {}, "rejected": {}}
    errors_by_code: dict[str, int] = {}
    closes_by_code: dict[str, int] = {}
    for u in units:
        for (kind, reason), n in u.reasons.items():
            if kind in by_reason:
                by_reason[kind][reason] = by_reason[kind].get(reason, 0) + n
        for code, n in u.error_codes.items():
            errors_by_code[code] = errors_by_code.get(code, 0) + n
        if u.closed:
            key = "unknown" if u.close_code is None else str(u.close_code)
            closes_by_code[key] = closes_by_code.get(key, 0) + 1
    abnormal = sum(1 for u in units if u.abnormal_close)
    retries = sum(1 for u in units if u.retry)
    merged = histogram.merge(u.latency for u in units)
    latency_sum_s = sum(u.latency_sum_s for u in units)

    def reasons(kind: str) -> dict[str, dict[str, Any]]:
        counts = by_reason[kind]
        return {r: {"count": counts[r], "rate": _ratio(counts[r], records)} for r in sorted(counts)}

    return {
        "clients": len({u.client_id for u in units}),
        "connections": connections,
        "batches": batches,
        "records": records,
        "accepted": accepted,
        "accepted_rate": _ratio(accepted, records),
        "skipped": reasons("skipped"),
        "rejected": reasons("rejected"),
        "error_frames": errors,
        "error_frame_rate": _ratio(errors, batches + errors),
        "errors_by_code": _sorted_counts(errors_by_code),
        "closed": sum(1 for u in units if u.closed),
        "abnormal_closes": abnormal,
        "abnormal_close_rate": _ratio(abnormal, connections),
        "closes_by_code": _sorted_counts(closes_by_code),
        "retries": retries,
        "retry_rate": _ratio(retries, connections),
        "latency_ms": {
            "p50": _num(histogram.quantile(merged, 0.50)),
            "p95": _num(histogram.quantile(merged, 0.95)),
            "p99": _num(histogram.quantile(merged, 0.99)),
            "mean": _ratio(latency_sum_s * 1000.0, batches),
        },
        "latency_histogram": merged,
    }


def _thin_reasons(name: str, cohort: Mapping[str, Any], rules: Rules) -> list[str]:
    short = []
    if cohort["connections"] < rules.min_connections:
        short.append(f"{cohort['connections']} connections < {rules.min_connections}")
    if cohort["batches"] < rules.min_batches:
        short.append(f"{cohort['batches']} batches < {rules.min_batches}")
    return [f"{name} cohort too thin: {', '.join(short)}"] if short else []


# -- sample-ratio mismatch -------------------------------------------------------


def _srm(units: Sequence[ConnectionUnit], rules: Rules, expected_share: float | None) -> dict[str, Any]:
    """Do clients split between the cohorts as configured?

    Each client counts once, in the cohort of its earliest connection, with the expected
    strict share it was assigned under (``expected_share`` for all, when given)."""
    earliest: dict[str, ConnectionUnit] = {}
    for u in sorted(units, key=lambda u: (u.start_ns, u.connection_id, u.strategy)):
        earliest.setdefault(u.client_id, u)
    n = len(earliest)
    strict = sum(1 for u in earliest.values() if u.strategy == CANARY)
    shares = [expected_share if expected_share is not None else u.strict_share for u in earliest.values()]
    unknown = sum(1 for s in shares if s is None)
    known = [float(s) for s in shares if s is not None]
    out: dict[str, Any] = {
        "checked": False,
        "mismatch": False,
        "strict_clients": strict,
        "lenient_clients": n - strict,
        "expected_strict_share": expected_share if expected_share is not None else (
            _num(sum(known) / n) if n and not unknown else None),
        "observed_strict_share": _ratio(strict, n),
        "p_value": None,
        "detail": "",
    }
    if n < SRM_MIN_CLIENTS:
        out["detail"] = f"not checked: {n} clients < {SRM_MIN_CLIENTS}"
        return out
    if unknown:
        out["detail"] = (f"not checked: expected strict share unknown for {unknown} of {n} clients "
                         "(pass the expected share to check)")
        return out
    expected = sum(known)
    p_value = srm_p_value([(float(s), u.strategy == CANARY) for s, u in zip(shares, earliest.values(), strict=True)
                           if s is not None])
    mismatch = p_value < rules.srm_alpha
    out.update(
        checked=True,
        mismatch=mismatch,
        p_value=p_value,
        detail=(f"{strict} {CANARY} clients of {n}, expected {_g(expected)} ({_share(expected / n)}); "
                f"always-valid p={p_value:.2g} {'<' if mismatch else '≥'} srm_alpha {rules.srm_alpha:g}"),
    )
    return out


SRM_ODDS: tuple[float, ...] = (0.1, 0.2, 1 / 3, 0.5, 2 / 3, 1.5, 2.0, 3.0, 5.0, 10.0)
"""The odds multipliers the sample-ratio test mixes over, both ways."""


def srm_p_value(clients: Sequence[tuple[float, bool]]) -> float:
    """The always-valid p-value (``1 / e``) that the clients were strict with their configured
    share. Each client is strict with probability ``s`` under H0 and ``t s / (t s + 1 - s)``
    under an odds multiplier ``t``; the e-value is the mean over :data:`SRM_ODDS` of the
    likelihood ratios, a martingale under H0 in whatever order the clients come (so its value
    now is valid however often the check is made, and does not depend on that order)."""
    log_e = [0.0] * len(SRM_ODDS)
    for share, strict in clients:
        if share <= 0.0 or share >= 1.0:
            if strict != (share >= 1.0):
                return 0.0  # a client the configuration cannot put there
            continue
        for j, odds in enumerate(SRM_ODDS):
            alt = odds * share / (odds * share + 1.0 - share)
            log_e[j] += math.log(alt / share) if strict else math.log((1.0 - alt) / (1.0 - share))
    peak = max(log_e)
    mixture = peak + math.log(sum(math.exp(v - peak) for v in log_e) / len(SRM_ODDS))
    return min(1.0, math.exp(-mixture))


# -- shadow --------------------------------------------------------------------

UNEXPECTED_ONLY = accepted_only_kind(CANARY)  # strict should accept a subset of what lenient accepts
DOWNSTREAM_LOSS = accepted_only_kind(BASELINE)  # the intended change: lenient passed, strict did not


def _shadow(units: Iterable[ConnectionUnit]) -> dict[str, Any]:
    batches = skipped = records = divergent = 0
    by_kind: dict[str, dict[str, int]] = {}
    for u in units:
        batches += u.shadow_batches
        skipped += u.shadow_skipped
        records += u.shadow_records
        divergent += u.shadow_divergent
        for (kind, reason), n in u.divergence.items():
            reasons = by_kind.setdefault(kind, {})
            reasons[reason] = reasons.get(reason, 0) + n
    unexpected = sum(n for kind in (VALUE_MISMATCH, UNEXPECTED_ONLY) for n in by_kind.get(kind, {}).values())
    return {
        "batches": batches,
        "skipped": skipped,
        "records": records,
        "divergent": divergent,
        "divergence_rate": _ratio(divergent, records),
        "by_kind": {k: _sorted_counts(by_kind[k]) for k in sorted(by_kind)},
        "unexpected": unexpected,
        "downstream_loss": _sorted_counts(by_kind.get(DOWNSTREAM_LOSS, {})),
    }


def _shadow_reason(shadow: Mapping[str, Any]) -> str:
    parts = [f"{kind}/{reason} {n}"
             for kind in (VALUE_MISMATCH, UNEXPECTED_ONLY)
             for reason, n in shadow["by_kind"].get(kind, {}).items()]
    return (f"unexpected shadow divergence: {shadow['unexpected']} records ({', '.join(parts)}); "
            f"{CANARY} should accept a subset of what {BASELINE} accepts, with the same values")


# -- the judgement ---------------------------------------------------------------


def judge(units: Sequence[ConnectionUnit], rules: Rules = Rules(), *,
          expected_strict_share: float | None = None, start_ns: int | None = None) -> dict[str, Any]:
    """Compare the strict canary with the lenient baseline and give a verdict.

    ``expected_strict_share`` overrides the per-connection configured share for the
    sample-ratio check; ``start_ns`` is when the comparison starts (the rate-ratio monitors'
    clock; default the first connection's end). Synthetic units are left out of everything
    judged and counted in ``synthetic`` (``{"connections": n, "strict": units, "lenient":
    units}``). The result is JSON-serialisable (no NaN or infinity); see the module docstring
    for the rules.
    """
    if expected_strict_share is not None and not 0.0 <= expected_strict_share <= 1.0:
        raise ValueError(f"expected_strict_share must be in [0, 1], not {expected_strict_share}")
    judged, synthetic = left_out(units, COHORTS)  # a probe's connections: counted, not compared
    by_cohort: dict[str, list[ConnectionUnit]] = {name: [] for name in COHORTS}
    for u in judged:
        if u.strategy in by_cohort:
            by_cohort[u.strategy].append(u)
    cohorts = {name: _cohort(by_cohort[name]) for name in COHORTS}

    thin = [r for name in COHORTS for r in _thin_reasons(name, cohorts[name], rules)]
    watches = {w.rule.name: w for w in rate_watches(rules)}
    feed(list(watches.values()), by_cohort[CANARY] + by_cohort[BASELINE], start_ns)
    metrics = [
        watches[rule.name].result(inconclusive=bool(thin)) if rule.name in watches else
        _judge_metric(rule, _EXTRACTORS[rule.name](by_cohort[CANARY], rules),
                      _EXTRACTORS[rule.name](by_cohort[BASELINE], rules), rules, inconclusive=bool(thin),
                      alpha=rules.critical_alpha if rule.critical else rules.alpha)
        for rule in rules.metrics
    ]
    srm = _srm([u for name in COHORTS for u in by_cohort[name]], rules, expected_strict_share)
    shadow_cohorts = {name: _shadow(by_cohort[name]) for name in COHORTS}
    shadow = _shadow(by_cohort[CANARY] + by_cohort[BASELINE])
    shadow["cohorts"] = shadow_cohorts

    critical_fails = [m for m in metrics if m["result"] == "fail" and m["critical"]]
    other_fails = [m for m in metrics if m["result"] == "marginal" or (m["result"] == "fail" and not m["critical"])]
    nodata = [m for m in metrics if m["result"] == "nodata"]
    reasons = [_metric_reason(m) for m in critical_fails]
    reasons += thin
    if srm["mismatch"]:
        reasons.append(f"sample-ratio mismatch: {srm['strict_clients']} {CANARY} clients of "
                       f"{srm['strict_clients'] + srm['lenient_clients']}, expected "
                       f"{_share(srm['expected_strict_share'])} (p={srm['p_value']:.2g})")
    reasons += [_metric_reason(m) for m in other_fails]
    reasons += [f"{m['name']}: no data, {m['detail']}" for m in nodata]
    if shadow["unexpected"]:
        reasons.append(_shadow_reason(shadow))

    verdict: Verdict
    if critical_fails:
        verdict = "rollback"
    elif reasons:
        verdict = "hold"
    else:
        verdict = "promote"
        srm_text = "no sample-ratio mismatch" if srm["checked"] else f"sample ratio {srm['detail']}"
        reasons.append(f"all {len(metrics)} metrics within tolerance; {srm_text}")

    return {
        "verdict": verdict,
        "reasons": reasons,
        "rules": rules.to_dict(),
        "cohorts": cohorts,
        "metrics": metrics,
        "srm": srm,
        "shadow": shadow,
        "synthetic": synthetic.to_dict(),
    }


__all__ = [
    "BASELINE",
    "CANARY",
    "DEFAULT_METRICS",
    "MetricRule",
    "Rules",
    "hodges_lehmann",
    "judge",
    "mann_whitney_p",
    "outcome",
]
