"""What every renderer shows, as rows of formatted cells: the report read defensively.

A key that is absent, a ``None`` or an empty cohort formats as :data:`DASH` (or a note)
instead of failing, so a report of an empty window still renders. The terminal
(:mod:`.terminal`) and the page (:mod:`.html`) lay these rows out; neither formats a
number itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from canaryws.core.strategies import LENIENT, STRICT

COHORTS = (LENIENT.name, STRICT.name)  # the report's cohorts, in display order: the baseline first
DASH = "—"

Row = tuple[str, ...]


# -- reading ---------------------------------------------------------------------------


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def finite(value: Any) -> float | None:
    """A finite number, or None (for None, bools, strings, NaN, ±inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def lookup(mapping: Mapping[str, Any], key: str) -> Any:
    """``mapping[key]`` also when the report was built with int keys (close codes)."""
    if key in mapping:
        return mapping[key]
    for k, v in mapping.items():
        if str(k) == key:
            return v
    return None


def _code_order(code: str) -> tuple[int, float, str]:
    """Numeric codes in numeric order, then anything else."""
    try:
        number = float(code)
    except ValueError:
        return (1, 0.0, code)
    return (0, number, code) if math.isfinite(number) else (1, 0.0, code)


def cohort_keys(cohorts: Mapping[str, Any], field: str) -> list[str]:
    """The keys of ``cohort[field]`` in either cohort: numeric codes in numeric order, then the rest."""
    keys: set[str] = set()
    for name in COHORTS:
        keys.update(str(k) for k in as_map(as_map(cohorts.get(name)).get(field)))
    return sorted(keys, key=_code_order)


def metrics_of(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The report's metric judgements (those that are mappings)."""
    metrics = report.get("metrics")
    if not isinstance(metrics, Sequence) or isinstance(metrics, str):
        return []
    return [m for m in metrics if isinstance(m, Mapping)]


def reasons_of(report: Mapping[str, Any]) -> list[str]:
    reasons = report.get("reasons")
    if isinstance(reasons, str):
        return [reasons]
    if not isinstance(reasons, Iterable):
        return []
    return [str(r) for r in reasons]


def window_files(report: Mapping[str, Any]) -> list[str]:
    files = as_map(report.get("window")).get("files")
    return [str(f) for f in files] if isinstance(files, Sequence) and not isinstance(files, str) else []


def has_shadow(report: Mapping[str, Any]) -> bool:
    return bool(as_map(report.get("shadow")))


# -- formatting ------------------------------------------------------------------------


def fmt_count(value: Any) -> str:
    number = finite(value)
    if number is None:
        return DASH
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.2f}"


def fmt_rate(value: Any) -> str:
    """A fraction as a percentage with two decimals; "—" when unknown."""
    number = finite(value)
    return DASH if number is None else f"{number * 100:.2f}%"


def fmt_ms(value: Any) -> str:
    number = finite(value)
    return DASH if number is None else f"{number:,.2f}"


def fmt_value(value: Any, *, signed: bool = False) -> str:
    number = finite(value)
    if number is None:
        return DASH
    return f"{number:+.4g}" if signed else f"{number:.4g}"


def fmt_p(value: Any) -> str:
    number = finite(value)
    if number is None:
        return DASH
    return f"{number:.1e}" if 0 < number < 1e-4 else f"{number:.4f}"


def _count_and_rate(count: Any, rate: Any) -> str:
    return f"{fmt_count(count)} ({fmt_rate(rate)})"


def _count_of(mapping: Any, key: str) -> str:
    """The formatted count ``mapping[key]``, 0 when absent."""
    return fmt_count(lookup(as_map(mapping), key) or 0)


# -- the cohorts -----------------------------------------------------------------------


def cohort_rows(report: Mapping[str, Any]) -> list[Row]:
    """The cohort table: ``(label, *cohorts)`` rows of formatted cells, one cell per :data:`COHORTS`."""
    cohorts = as_map(report.get("cohorts"))
    sides = [as_map(cohorts.get(name)) for name in COHORTS]

    def row(label: str, cell: Any) -> Row:
        return (label, *(cell(side) for side in sides))

    rows: list[Row] = [
        row("clients", lambda c: fmt_count(c.get("clients"))),
        row("connections", lambda c: fmt_count(c.get("connections"))),
        row("batches", lambda c: fmt_count(c.get("batches"))),
        row("records", lambda c: fmt_count(c.get("records"))),
        row("accepted", lambda c: _count_and_rate(c.get("accepted"), c.get("accepted_rate"))),
    ]
    for field in ("skipped", "rejected"):
        for reason in cohort_keys(cohorts, field):

            def reason_cell(c: Mapping[str, Any], field: str = field, reason: str = reason) -> str:
                entry = lookup(as_map(c.get(field)), reason)
                if entry is None:
                    return "0"
                entry = as_map(entry)
                return _count_and_rate(entry.get("count"), entry.get("rate"))

            rows.append(row(f"{field}: {reason}", reason_cell))
    rows.append(row("error frames", lambda c: _count_and_rate(c.get("error_frames"), c.get("error_frame_rate"))))
    for code in cohort_keys(cohorts, "errors_by_code"):
        rows.append(row(f"errors: {code}", lambda c, code=code: _count_of(c.get("errors_by_code"), code)))
    rows.append(row("closed", lambda c: fmt_count(c.get("closed"))))
    rows.append(
        row("abnormal closes", lambda c: _count_and_rate(c.get("abnormal_closes"), c.get("abnormal_close_rate")))
    )
    for code in cohort_keys(cohorts, "closes_by_code"):
        rows.append(row(f"closes: {code}", lambda c, code=code: _count_of(c.get("closes_by_code"), code)))
    rows.append(row("retries", lambda c: _count_and_rate(c.get("retries"), c.get("retry_rate"))))
    for quantile in ("p50", "p95", "p99"):
        rows.append(row(f"latency {quantile} (ms)", lambda c, q=quantile: fmt_ms(as_map(c.get("latency_ms")).get(q))))
    return rows


# -- the judgement ---------------------------------------------------------------------

JUDGEMENT_COLUMNS = ("metric", *(f"{name} mean" for name in COHORTS), "effect", "tolerance", "p-value", "result",
                     "critical")
"""The columns of :func:`judgement_rows`."""


def _mean_cell(side: Any) -> str:
    side = as_map(side)
    mean = fmt_value(side.get("mean"))
    n = finite(side.get("n"))
    return mean if n is None else f"{mean} (n={fmt_count(n)})"


def _rate_cell(side: Any) -> str:
    side = as_map(side)
    return f"{fmt_rate(side.get('mean'))} ({fmt_count(side.get('events'))}/{fmt_count(side.get('n'))})"


def _ratio_text(value: Any) -> str:
    number = finite(value)
    if number is None:
        return "inf" if value == "inf" or (isinstance(value, float) and math.isinf(value)) else DASH
    return f"{number:.3g}"


def judgement_rows(report: Mapping[str, Any]) -> list[Row]:
    """One row per metric, cells as :data:`JUDGEMENT_COLUMNS`. A rate-ratio metric shows its
    rates (events/connections), the ratio with its always-valid interval as the effect, the
    tolerated ratio and floor, and its always-valid p-value (1 / the highest e-value)."""
    rows: list[Row] = []
    for metric in metrics_of(report):
        if metric.get("test") == "rate-ratio":
            interval = metric.get("ratio_interval") or [None, None]
            tolerance = as_map(metric.get("tolerance"))
            rows.append((
                str(metric.get("name", "?")),
                *(_rate_cell(metric.get(name)) for name in COHORTS),
                f"×{_ratio_text(metric.get('ratio'))} [{_ratio_text(interval[0])}, {_ratio_text(interval[1])}]",
                f"×{_ratio_text(tolerance.get('ratio'))}, +{fmt_rate(tolerance.get('excess'))}",
                fmt_p(metric.get("p_value")),
                str(metric.get("result", DASH)),
                "yes" if metric.get("critical") else "no",
            ))
            continue
        rows.append((
            str(metric.get("name", "?")),
            *(_mean_cell(metric.get(name)) for name in COHORTS),
            fmt_value(metric.get("effect"), signed=True),
            fmt_value(metric.get("tolerance")),
            fmt_p(metric.get("p_value")),
            str(metric.get("result", DASH)),
            "yes" if metric.get("critical") else "no",
        ))
    return rows


def metric_detail(metric: Mapping[str, Any]) -> str:
    """Description, bad direction (unless the detail gives it) and detail of a metric."""
    description, direction, detail = (str(metric.get(k) or "") for k in ("description", "direction", "detail"))
    if direction and f"{direction} is bad" in detail:
        direction = ""
    return "; ".join(p for p in (description, f"{direction} is bad" if direction else "", detail) if p)


def srm_line(report: Mapping[str, Any]) -> tuple[str, str]:
    """The sample-ratio-mismatch check as one line, and its status: ok, mismatch or unchecked."""
    srm = as_map(report.get("srm"))
    detail = str(srm.get("detail") or "")
    if not srm.get("checked"):
        if detail.startswith("not checked"):
            return (detail, "unchecked")
        return (f"not checked{': ' + detail if detail else ''}", "unchecked")
    status = "mismatch" if srm.get("mismatch") else "ok"
    text = (
        f"{status.upper()}: {fmt_count(srm.get('strict_clients'))} strict / "
        f"{fmt_count(srm.get('lenient_clients'))} lenient clients, strict share "
        f"{fmt_rate(srm.get('observed_strict_share'))} (expected {fmt_rate(srm.get('expected_strict_share'))}), "
        f"p = {fmt_p(srm.get('p_value'))}"
    )
    return (text, status)


def window_line(report: Mapping[str, Any]) -> str | None:
    window = report.get("window")
    if not isinstance(window, Mapping):
        return None
    files = window_files(report)
    start = window.get("start") or DASH
    end = window.get("end") or DASH
    parts = [
        f"{start} → {end}",
        f"{len(files)} file{'' if len(files) == 1 else 's'}",
        f"{fmt_count(window.get('spans'))} spans",
        f"{fmt_count(window.get('connections'))} connections",
    ]
    return " · ".join(parts)


def synthetic_line(report: Mapping[str, Any]) -> str | None:
    """``Synthetic connections left out: 3 (strict 1, lenient 2)``: the probe connections the
    comparison did not judge; None for a report without the count."""
    synthetic = report.get("synthetic")
    if not isinstance(synthetic, Mapping):
        return None
    parts = ", ".join(f"{name} {fmt_count(synthetic.get(name) or 0)}" for name in (STRICT.name, LENIENT.name))
    return f"Synthetic connections left out: {fmt_count(synthetic.get('connections') or 0)} ({parts})"


def rules_line(report: Mapping[str, Any]) -> str | None:
    rules = as_map(report.get("rules"))
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in rules.items()
             if k != "metrics" and not isinstance(v, Mapping | list)]
    return ", ".join(parts) if parts else None


# -- the shadow comparison -------------------------------------------------------------

SHADOW_COLUMNS = ("", "all", *COHORTS)


def shadow_rows(report: Mapping[str, Any]) -> list[Row]:
    """The shadow comparison: ``(label, all, *cohorts)`` rows (the strategy serving the cohort is primary)."""
    shadow = as_map(report.get("shadow"))
    per_cohort = as_map(shadow.get("cohorts"))
    sides = [shadow, *(as_map(per_cohort.get(name)) for name in COHORTS)]

    def row(label: str, cell: Any) -> Row:
        return (label, *(cell(side) for side in sides))

    rows: list[Row] = [
        row("batches compared", lambda s: fmt_count(s.get("batches"))),
        row("batches skipped", lambda s: fmt_count(s.get("skipped"))),
        row("records compared", lambda s: fmt_count(s.get("records"))),
        row("divergent records", lambda s: _count_and_rate(s.get("divergent"), s.get("divergence_rate"))),
    ]
    pairs: set[tuple[str, str]] = set()
    for side in sides:
        for kind, reasons in as_map(side.get("by_kind")).items():
            pairs.update((str(kind), str(reason)) for reason in as_map(reasons))
    for kind, reason in sorted(pairs):

        def pair_cell(s: Mapping[str, Any], kind: str = kind, reason: str = reason) -> str:
            return _count_of(lookup(as_map(s.get("by_kind")), kind), reason)

        rows.append(row(f"  {kind}: {reason}", pair_cell))
    losses: set[str] = set()
    for side in sides:
        losses.update(str(k) for k in as_map(side.get("downstream_loss")))
    rows.append(row("downstream loss", lambda s: fmt_count(sum(
        n for n in (finite(v) for v in as_map(s.get("downstream_loss")).values()) if n is not None
    ))))
    for reason in sorted(losses):
        rows.append(row(f"  lost: {reason}", lambda s, r=reason: _count_of(s.get("downstream_loss"), r)))
    rows.append(row("unexpected", lambda s: fmt_count(s.get("unexpected"))))
    return rows
