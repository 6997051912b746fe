"""The report over time: what the page's time plots draw, as a JSON-serialisable dict.

Pure: connection units (and, optionally, a rollout controller's decisions) in, numbers out.
:func:`timeline` gives, for each **critical rate metric** (a 0/1 outcome per connection that
ended: :data:`canaryws.analysis.judge.DEFAULT_METRICS` with the ``rate-ratio`` test), a series
over the report's window: at each of :data:`POINTS` equally spaced times (the connections'
end times binned), the **cumulative** strict and lenient rates since the window's start, their
difference (strict − lenient) and two 95 % bands for the difference:

- ``low``/``high``: the **pointwise** Newcombe hybrid-score interval (Newcombe 1998, "Interval
  estimation for the difference between independent proportions", method 10: the difference's
  interval from the two Wilson score intervals, :func:`newcombe`). At any one time, chosen
  before looking, it covers the true difference about 95 % of the time; read along the whole
  series, some point will fall outside far more often than 5 %.
- ``cs_low``/``cs_high``: an **anytime-valid** 95 % confidence sequence (:func:`anytime_difference`):
  each cohort's rate in the beta-binomial mixture confidence sequence of Robbins (1970) at
  2.5 % (:func:`canaryws.analysis.sequential.beta_binomial_cs`, the construction the judge's
  ratio interval uses), the difference between the two sequences' edges (a union bound). It
  covers the true difference **at every time at once** with probability at least 95 %, so it
  may be watched as the rollout goes (wider than the pointwise band: that is its price).

Both assume what the judge does: each connection that ended is an independent 0/1 outcome with
its cohort's rate, the same over the window (under a rate that changes, they estimate its
average over the connections so far). The judge decides on the rate *ratio*'s e-process
(:mod:`canaryws.analysis.sequential`); these bands show the difference, for the eye.

The **rollout percentage** over time is a step line: the strict share each connection's flags
configured when it opened (``strict_share`` × 100, at its start), or, given a rollout
controller's decisions (:func:`parse_decisions`), the ``percent`` of each decision; the
decisions in the window are kept to be drawn as markers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any

from canaryws.analysis.judge import BASELINE, CANARY, COHORTS, Rules, outcome
from canaryws.analysis.sequential import beta_binomial_cs
from canaryws.analysis.units import ConnectionUnit, left_out

LEVEL = 0.95
"""The confidence of both bands (and of the page's per-cohort rate intervals)."""
POINTS = 40
"""Time points per series: tens, so that ``--json`` stays small."""
MAX_STEPS = 200
"""Rollout steps kept; beyond, the step line is resampled at :data:`POINTS` times."""
MAX_DECISIONS = 500
"""Decisions kept in the window (the latest); the rest are counted in ``decisions_left_out``."""
DECISION_KINDS = ("start", "promote", "hold", "pause", "resume", "manual_change", "rollback", "abort", "complete",
                  "shadow_start", "shadow_pass", "shadow_fail")
"""The kinds a rollout controller writes (others are kept and drawn alike)."""



def band_methods(level: float = LEVEL) -> tuple[str, str]:
    """What the pointwise band and the anytime-valid band are, in words (the report says it)."""
    pct = f"{level:.0%}"
    return (f"pointwise {pct} Newcombe hybrid-score interval (the Wilson score intervals of both rates, "
            "Newcombe 1998 method 10)",
            f"anytime-valid {pct} confidence sequence (each rate's beta-binomial mixture confidence sequence, "
            f"Robbins 1970, at {(1 - level) / 2:.2%}; the difference of their edges)")


# -- intervals --------------------------------------------------------------------------


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson(events: int, n: int, level: float = LEVEL) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (``events`` in ``n``); None when ``n`` is 0."""
    if n <= 0:
        return None
    if not 0 <= events <= n:
        raise ValueError(f"events must be in [0, n], not {events} of {n}")
    z = _z(level)
    p = events / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if events == 0 else max(0.0, centre - half)
    high = 1.0 if events == n else min(1.0, centre + half)
    return low, high


def newcombe(events_c: int, n_c: int, events_b: int, n_b: int,
             level: float = LEVEL) -> tuple[float, float] | None:
    """Newcombe's hybrid-score interval for ``rate_c − rate_b`` (method 10 of Newcombe 1998):
    ``d − sqrt((p_c − l_c)² + (u_b − p_b)²)`` to ``d + sqrt((u_c − p_c)² + (p_b − l_b)²)``,
    ``(l, u)`` each rate's Wilson interval. Pointwise; None without connections in a cohort."""
    ci_c, ci_b = wilson(events_c, n_c, level), wilson(events_b, n_b, level)
    if ci_c is None or ci_b is None:
        return None
    p_c, p_b = events_c / n_c, events_b / n_b
    d = p_c - p_b
    low = d - math.sqrt((p_c - ci_c[0]) ** 2 + (ci_b[1] - p_b) ** 2)
    high = d + math.sqrt((ci_c[1] - p_c) ** 2 + (p_b - ci_b[0]) ** 2)
    return max(-1.0, low), min(1.0, high)


def anytime_difference(events_c: int, n_c: int, events_b: int, n_b: int,
                       level: float = LEVEL) -> tuple[float, float] | None:
    """An anytime-valid ``level`` confidence sequence for ``rate_c − rate_b``: each rate's
    beta-binomial confidence sequence at ``(1 − level) / 2`` (Robbins 1970), and the difference
    of their edges. Each covers its rate at all times at once with probability at least
    ``1 − (1 − level) / 2``, so (union bound) both do with at least ``level``, and then the
    difference lies in ``[low_c − high_b, high_c − low_b]``. None without connections in a cohort."""
    if n_c <= 0 or n_b <= 0:
        return None
    alpha = (1.0 - level) / 2.0
    low_c, high_c = beta_binomial_cs(events_c, n_c, alpha)
    low_b, high_b = beta_binomial_cs(events_b, n_b, alpha)
    return low_c - high_b, high_c - low_b


# -- time -------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ns: int) -> str:
    """``ns`` since the epoch as ISO 8601 UTC, to the millisecond."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def parse_iso(text: str) -> int:
    """An ISO 8601 time (naive means UTC) -> ns since the epoch."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


# -- the series -------------------------------------------------------------------------


def _point(time_ns: int, counts: Sequence[int], level: float) -> dict[str, Any]:
    n_c, events_c, n_b, events_b = counts
    point: dict[str, Any] = {"time": iso(time_ns)}
    for cohort, n, events in ((CANARY, n_c, events_c), (BASELINE, n_b, events_b)):
        interval = wilson(events, n, level)
        point[cohort] = {"n": n, "events": events, "rate": events / n if n else None,
                         "low": None if interval is None else interval[0],
                         "high": None if interval is None else interval[1]}
    pointwise = newcombe(events_c, n_c, events_b, n_b, level)
    anytime = anytime_difference(events_c, n_c, events_b, n_b, level)
    point["difference"] = events_c / n_c - events_b / n_b if n_c and n_b else None
    point["low"], point["high"] = (None, None) if pointwise is None else pointwise
    point["cs_low"], point["cs_high"] = (None, None) if anytime is None else anytime
    return point


def rate_series(ended: Sequence[ConnectionUnit], names: Sequence[str], start_ns: int, end_ns: int,
                points: int = POINTS, level: float = LEVEL) -> dict[str, list[dict[str, Any]]]:
    """Per metric in ``names``, the cumulative rates and bands at ``points`` equally spaced times
    ``start + (i + 1) (end − start) / points``: the connections of ``ended`` (closed, strict or
    lenient) whose end time is at most that time. One point when the window is an instant."""
    if points < 1:
        raise ValueError(f"points must be at least 1, not {points}")
    ordered = sorted((u for u in ended if u.closed and u.strategy in COHORTS), key=lambda u: u.end_ns)
    span = max(0, end_ns - start_ns)
    edges = [start_ns + span * (i + 1) // points for i in range(points)] if span else [end_ns]
    outcomes = {name: outcome(name) for name in names}
    counts = {name: [0, 0, 0, 0] for name in names}  # n strict, events strict, n lenient, events lenient
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    index = 0
    for edge in edges:
        while index < len(ordered) and ordered[index].end_ns <= edge:
            unit = ordered[index]
            offset = 0 if unit.strategy == CANARY else 2
            for name, happened in outcomes.items():
                counts[name][offset] += 1
                counts[name][offset + 1] += 1 if happened(unit) else 0
            index += 1
        for name in names:
            series[name].append(_point(edge, counts[name], level))
    return series


def rollout_from_units(units: Iterable[ConnectionUnit], points: int = POINTS) -> list[dict[str, Any]]:
    """The configured strict rollout (percent) over connection start times: a step at each
    change of the share recorded on the connections (those that recorded one), in start
    order. More than :data:`MAX_STEPS` changes (connections opened under an old and a new share
    interleaving) are resampled at ``points`` times: the share of the latest connection opened."""
    known = sorted(((u.start_ns, 100.0 * u.strict_share) for u in units if u.strict_share is not None),
                   key=lambda item: item[0])
    steps: list[tuple[int, float]] = []
    for start, percent in known:
        if not steps or steps[-1][1] != percent:
            steps.append((start, percent))
    if len(steps) > MAX_STEPS:
        first, last = known[0][0], known[-1][0]
        resampled: list[tuple[int, float]] = []
        index = 0
        for i in range(points + 1):
            edge = first + (last - first) * i // points
            while index + 1 < len(known) and known[index + 1][0] <= edge:
                index += 1
            if not resampled or resampled[-1][1] != known[index][1]:
                resampled.append((edge, known[index][1]))
        steps = resampled
    return [{"time": iso(start), "percent": percent} for start, percent in steps]


def rollout_from_decisions(decisions: Sequence[Mapping[str, Any]], start_ns: int | None) -> list[dict[str, Any]]:
    """The rollout percent the controller set, a step at each decision with a ``percent`` (a
    decision before ``start_ns`` gives the percent the window starts with, at its start)."""
    timed = sorted(((parse_iso(d["time"]), d["percent"]) for d in decisions if d.get("percent") is not None),
                   key=lambda item: item[0])
    steps: list[tuple[int, float]] = []
    for time_ns, percent in timed:
        if start_ns is not None and time_ns < start_ns:
            time_ns = start_ns
            if steps and steps[-1][0] == start_ns:
                steps.pop()
        if not steps or steps[-1][1] != percent:
            steps.append((time_ns, float(percent)))
    return [{"time": iso(t), "percent": p} for t, p in steps]


# -- decisions --------------------------------------------------------------------------


def parse_decisions(document: Any) -> list[dict[str, Any]]:
    """The decisions of a rollout controller's state file (its parsed JSON): ``{"decisions":
    [{"time": ISO 8601, "kind": ..., "step": n, "percent": p, "reasons": [...]}, ...], ...}``
    (other keys ignored), each as ``{"time", "kind", "step", "percent", "reasons"}`` with the time
    normalised to UTC, in time order. ``ValueError`` on anything else."""
    if not isinstance(document, Mapping) or not isinstance(document.get("decisions"), list):
        raise ValueError('a decisions file is a JSON object with a "decisions" list')
    out: list[tuple[int, dict[str, Any]]] = []
    for index, raw in enumerate(document["decisions"]):
        where = f"decision {index}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} is not an object")
        text, kind = raw.get("time"), raw.get("kind")
        if not isinstance(text, str):
            raise ValueError(f'{where} has no "time"')
        try:
            time_ns = parse_iso(text)
        except ValueError:
            raise ValueError(f"{where}: not an ISO 8601 time: {text!r}") from None
        if not isinstance(kind, str) or not kind:
            raise ValueError(f'{where} has no "kind"')
        percent = raw.get("percent")
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)
                                    or not 0.0 <= float(percent) <= 100.0):
            raise ValueError(f"{where}: percent must be a number in [0, 100], not {percent!r}")
        step = raw.get("step")
        reasons = raw.get("reasons")
        out.append((time_ns, {
            "time": iso(time_ns),
            "kind": kind,
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "percent": None if percent is None else float(percent),
            "reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [],
        }))
    out.sort(key=lambda item: item[0])
    return [decision for _, decision in out]


# -- the timeline -------------------------------------------------------------------------


def timeline(units: Sequence[ConnectionUnit], rules: Rules | None = None, *, start_ns: int | None = None,
             end_ns: int | None = None, decisions: Sequence[Mapping[str, Any]] | None = None,
             points: int = POINTS, level: float = LEVEL) -> dict[str, Any]:
    """The report's ``timeline``: the window (``start_ns`` to ``end_ns``; by default the first
    connection's start to the last one's end), each critical rate metric's series
    (:func:`rate_series`), the rollout step line and the decisions in the window (parsed by
    :func:`parse_decisions`). Synthetic units are left out, as the judge leaves them out."""
    rules = rules or Rules()
    judged, _synthetic = left_out(units, COHORTS)
    compared = [u for u in judged if u.strategy in COHORTS]
    ended = [u for u in compared if u.closed]
    start = start_ns if start_ns is not None else min((u.start_ns for u in compared), default=None)
    end = end_ns if end_ns is not None else max((u.end_ns for u in compared), default=None)
    names = [rule.name for rule in rules.metrics if rule.critical and rule.test == "rate-ratio"]
    metrics: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    if start is not None and end is not None and end >= start and ended:
        metrics = rate_series(ended, names, start, end, points, level)

    kept: list[Mapping[str, Any]] = []
    for decision in decisions or ():
        time_ns = parse_iso(decision["time"])
        if (start is None or time_ns >= start) and (end is None or time_ns <= end):
            kept.append(decision)
    left_out_decisions = max(0, len(kept) - MAX_DECISIONS)
    kept = kept[left_out_decisions:]
    from_decisions = rollout_from_decisions(decisions or (), start)
    if end is not None:
        from_decisions = [s for s in from_decisions if parse_iso(s["time"]) <= end]
    rollout = ({"source": "decisions", "steps": from_decisions} if from_decisions
               else {"source": "connections", "steps": rollout_from_units(compared, points)})
    pointwise, anytime = band_methods(level)
    return {
        "start": None if start is None else iso(start),
        "end": None if end is None else iso(end),
        "level": level,
        "band": pointwise,
        "anytime_band": anytime,
        "metrics": metrics,
        "rollout": rollout,
        "decisions": [dict(d) for d in kept],
        "decisions_left_out": left_out_decisions,
    }


__all__ = [
    "DECISION_KINDS",
    "LEVEL",
    "POINTS",
    "anytime_difference",
    "band_methods",
    "newcombe",
    "parse_decisions",
    "rate_series",
    "rollout_from_decisions",
    "rollout_from_units",
    "timeline",
    "wilson",
]
