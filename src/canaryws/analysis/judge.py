"""The judge: should the strict canary be promoted, held or rolled back?

A Kayenta-style comparison of two cohorts of connections: the **canary** is the strict
cohort, the **baseline** the lenient cohort. Pure: the input is the
:class:`~canaryws.analysis.units.ConnectionUnit` list of
:func:`~canaryws.analysis.units.build_units`, the output a JSON-serialisable dict; no I/O.
Units of any other strategy are ignored.

What is compared
----------------
Strict rejecting what lenient skipped is the change being rolled out, not a regression,
so reason counts are reported but never judged. What counts against the canary is what
its clients suffer and what reaches downstream, each measured **per connection** (the
unit of analysis, so that one busy connection cannot outvote the others):

====================  ========  ==========  =========  =========
metric                critical  bad when    abs. tol.  rel. tol.
====================  ========  ==========  =========  =========
abnormal_close_rate   yes       increase    0.02       0.5
error_frame_rate      yes       increase    0.01       0.5
retry_rate            yes       increase    0.02       0.5
latency_p95_ms        no        increase    5 ms       0.25
accepted_rate         no        decrease    0.02       0.05
====================  ========  ==========  =========  =========

How a metric is judged
----------------------
- Fewer than ``min_values`` per-connection values in either cohort: ``nodata``.
- Otherwise a one-sided Mann–Whitney U test in the bad direction gives ``p``; the
  effect is ``canary mean − baseline mean``; the tolerance is
  ``max(abs_tolerance, rel_tolerance × |baseline mean|)``.
- ``fail`` iff ``p`` is below the metric's significance level **and** the effect is
  beyond the tolerance in the bad direction: a difference must be both real and large
  enough to matter. Else ``pass``. Critical metrics are tested at ``alpha / (number of
  critical metrics)`` (Bonferroni): together they decide a rollback, so a healthy canary
  is rolled back with probability at most ``alpha``. Other metrics use ``alpha``.
- ``marginal`` (critical metrics only): the effect is beyond the tolerance and
  ``p < hold_alpha`` (0.05) but not significant enough to fail. Too much evidence of harm
  to promote, too little to roll back: hold, and let the window fill.

Before any metric: each cohort needs ``min_connections`` connections and
``min_batches`` batches, else the comparison is ``inconclusive`` (nothing is judged).

Sample-ratio mismatch (SRM): clients (each counted once, in the cohort of its earliest
connection) should split as the flag says. With per-client expected strict shares
``p_i``, the strict count has mean ``Σp_i`` and variance ``Σp_i(1−p_i)``; a two-sided
normal test with ``p < srm_alpha`` is a mismatch: the cohorts are then not comparable
(assignment, reconnect or telemetry bias), so the verdict cannot be promote.

Verdict, in order of precedence
-------------------------------
1. ``rollback``: a critical metric fails (whatever else is true).
2. ``hold``: thin cohort, SRM mismatch, a non-critical metric fails, a critical one is
   marginal, a metric has no
   data, or the shadow comparison shows unexpected divergence (strict accepting what
   lenient did not, or both accepting different values).
3. ``promote``: otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from canaryws.analysis.units import ConnectionUnit
from canaryws.core import histogram
from canaryws.core.compare import VALUE_MISMATCH, accepted_only_kind

CANARY = "strict"
BASELINE = "lenient"
COHORTS = (CANARY, BASELINE)
TEST_NAME = "mann-whitney-u"
SRM_MIN_CLIENTS = 20  # below this the split says nothing
_HL_MAX_PAIRS = 1_000_000

Direction = Literal["increase", "decrease"]
Verdict = Literal["promote", "hold", "rollback"]


@dataclass(frozen=True)
class MetricRule:
    """One per-connection metric and how it is judged.

    ``direction`` is the bad direction: ``increase`` for a metric that hurts when it
    rises. A fail on a ``critical`` metric rolls back; on any other metric it holds.
    """

    name: str
    description: str
    critical: bool
    direction: Direction
    abs_tolerance: float
    rel_tolerance: float

    def tolerance(self, baseline_mean: float) -> float:
        return max(self.abs_tolerance, self.rel_tolerance * abs(baseline_mean))


DEFAULT_METRICS: tuple[MetricRule, ...] = (
    MetricRule("abnormal_close_rate",
               "share of connections closed with a code other than 1000, 1001 or 1012",
               critical=True, direction="increase", abs_tolerance=0.02, rel_tolerance=0.5),
    MetricRule("error_frame_rate",
               "error frames / (batches + error frames), per connection",
               critical=True, direction="increase", abs_tolerance=0.01, rel_tolerance=0.5),
    MetricRule("retry_rate",
               "share of connections opened soon after the client's previous connection closed abnormally",
               critical=True, direction="increase", abs_tolerance=0.02, rel_tolerance=0.5),
    MetricRule("latency_p95_ms",
               "95th percentile batch latency of a connection (ms), connections with enough batches",
               critical=False, direction="increase", abs_tolerance=5.0, rel_tolerance=0.25),
    MetricRule("accepted_rate",
               "accepted records / records, per connection: what reaches downstream",
               critical=False, direction="decrease", abs_tolerance=0.02, rel_tolerance=0.05),
)


@dataclass(frozen=True)
class Rules:
    """The judge's thresholds. ``min_connections`` and ``min_batches`` are per cohort,
    ``min_values`` per metric and cohort; a connection gives a latency value only with at
    least ``min_latency_batches`` batches."""

    alpha: float = 0.01
    hold_alpha: float = 0.05
    min_connections: int = 20
    min_batches: int = 20
    min_values: int = 20
    srm_alpha: float = 0.001
    min_latency_batches: int = 5
    metrics: tuple[MetricRule, ...] = field(default=DEFAULT_METRICS)

    def __post_init__(self) -> None:
        for name, value in (("alpha", self.alpha), ("hold_alpha", self.hold_alpha), ("srm_alpha", self.srm_alpha)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), not {value}")
        unknown = [m.name for m in self.metrics if m.name not in _EXTRACTORS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(_EXTRACTORS)}")
        for metric in self.metrics:
            if metric.direction not in ("increase", "decrease"):
                raise ValueError(f"{metric.name}: direction must be increase or decrease")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = [asdict(m) for m in self.metrics]
        return out


# -- per-connection values --------------------------------------------------------


def _abnormal_close_values(units: Sequence[ConnectionUnit], _rules: Rules) -> list[float]:
    return [1.0 if u.abnormal_close else 0.0 for u in units]


def _error_frame_values(units: Sequence[ConnectionUnit], _rules: Rules) -> list[float]:
    return [u.errors / (u.batches + u.errors) for u in units if u.batches + u.errors > 0]


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
        "name": rule.name,
        "description": rule.description,
        "critical": rule.critical,
        "direction": rule.direction,
        "result": result,
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


def _metric_reason(m: Mapping[str, Any]) -> str:
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
    variance = sum(p * (1.0 - p) for p in known)
    if variance <= 0.0:
        p_value = 0.0 if abs(strict - expected) > 1e-9 else 1.0
    else:
        z = (strict - expected) / math.sqrt(variance)
        p_value = math.erfc(abs(z) / math.sqrt(2.0))  # two-sided normal tail
    mismatch = p_value < rules.srm_alpha
    out.update(
        checked=True,
        mismatch=mismatch,
        p_value=p_value,
        detail=(f"{strict} {CANARY} clients of {n}, expected {_g(expected)} ({_share(expected / n)}); "
                f"p={p_value:.2g} {'<' if mismatch else '≥'} srm_alpha {rules.srm_alpha:g}"),
    )
    return out


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
          expected_strict_share: float | None = None) -> dict[str, Any]:
    """Compare the strict canary with the lenient baseline and give a verdict.

    ``expected_strict_share`` overrides the per-connection configured share for the
    sample-ratio check. The result is JSON-serialisable (no NaN or infinity); see the
    module docstring for the rules.
    """
    if expected_strict_share is not None and not 0.0 <= expected_strict_share <= 1.0:
        raise ValueError(f"expected_strict_share must be in [0, 1], not {expected_strict_share}")
    by_cohort: dict[str, list[ConnectionUnit]] = {name: [] for name in COHORTS}
    for u in units:
        if u.strategy in by_cohort:
            by_cohort[u.strategy].append(u)
    cohorts = {name: _cohort(by_cohort[name]) for name in COHORTS}

    thin = [r for name in COHORTS for r in _thin_reasons(name, cohorts[name], rules)]
    # Bonferroni over the critical metrics: together they decide a rollback, so together
    # they may raise a false one with probability alpha at most.
    critical_alpha = rules.alpha / max(1, sum(1 for rule in rules.metrics if rule.critical))
    metrics = [
        _judge_metric(rule, _EXTRACTORS[rule.name](by_cohort[CANARY], rules),
                      _EXTRACTORS[rule.name](by_cohort[BASELINE], rules), rules, inconclusive=bool(thin),
                      alpha=critical_alpha if rule.critical else rules.alpha)
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
]
