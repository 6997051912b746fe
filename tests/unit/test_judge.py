"""The judge: verdicts on built cohorts, SRM, shadow, JSON safety, false-alarm rate and power."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from canaryws.analysis.judge import DEFAULT_METRICS, MetricRule, Rules, hodges_lehmann, mann_whitney_p
from canaryws.analysis.judge import judge as judge_with_defaults
from canaryws.analysis.units import ConnectionUnit
from canaryws.core import histogram

_counter = 0
SMALL = Rules(detect_excess=0.9)  # these cohorts are small: only a 90-point harm "matters", so they can promote


def judge(units: Sequence[ConnectionUnit], rules: Rules = SMALL, **kw: Any) -> dict[str, Any]:
    return judge_with_defaults(units, rules, **kw)



def unit(
    strategy: str,
    *,
    client_id: str | None = None,
    batches: int = 20,
    records: int | None = None,
    accepted: int | None = None,
    reasons: dict[tuple[str, str], int] | None = None,
    errors: int = 0,
    close_code: int | None = 1000,
    retry: bool = False,
    latency_ms: float = 10.0,
    strict_share: float | None = 0.5,
    start_ns: int | None = None,
    divergence: dict[tuple[str, str], int] | None = None,
) -> ConnectionUnit:
    """One connection; by default healthy: 20 batches of 5 records, all accepted, closed 1000."""
    global _counter
    _counter += 1
    records = 5 * batches if records is None else records
    accepted = records if accepted is None else accepted
    reasons = dict(reasons or {})
    latency = histogram.empty()
    latency[histogram.bucket_of(latency_ms)] += batches
    divergence = dict(divergence or {})
    return ConnectionUnit(
        connection_id=f"conn-{_counter}",
        client_id=client_id if client_id is not None else f"client-{_counter}",
        strategy=strategy,
        start_ns=_counter if start_ns is None else start_ns,
        end_ns=(_counter if start_ns is None else start_ns) + 1,
        closed=close_code is not None,
        close_code=close_code,
        batches=batches,
        records=records,
        accepted=accepted,
        skipped=sum(n for (kind, _), n in reasons.items() if kind == "skipped"),
        rejected=sum(n for (kind, _), n in reasons.items() if kind == "rejected"),
        errors=errors,
        reasons=reasons,
        error_codes={"bad_batch": errors} if errors else {},
        latency=latency,
        latency_sum_s=batches * latency_ms / 1000.0,
        strict_share=strict_share,
        shadow_batches=batches if divergence else 0,
        shadow_records=records if divergence else 0,
        shadow_divergent=sum(divergence.values()),
        divergence=divergence,
        retry=retry,
    )


def cohort(strategy: str, n: int, *, bad: int | None = None, **kw: Any) -> list[ConnectionUnit]:
    """``n`` connections built with ``kw`` (only the first ``bad`` of them when given; the rest healthy)."""
    return [unit(strategy, **(kw if bad is None or i < bad else {})) for i in range(n)]


def metric(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in report["metrics"] if m["name"] == name)


def results(report: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["result"] for m in report["metrics"]}


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, allow_nan=False)


# -- verdicts --------------------------------------------------------------------


def test_identical_healthy_cohorts_promote() -> None:
    report = judge(cohort("strict", 50) + cohort("lenient", 50))
    assert report["verdict"] == "promote"
    assert set(results(report).values()) == {"pass"}
    assert report["srm"]["checked"] and not report["srm"]["mismatch"]
    assert report["reasons"] == ["all 5 metrics within tolerance; no sample-ratio mismatch"]
    assert report["cohorts"]["strict"]["connections"] == 50
    assert report["cohorts"]["lenient"]["batches"] == 1000


def test_abnormal_closes_of_strict_clients_roll_back() -> None:
    units = cohort("strict", 50, bad=30, close_code=1011) + cohort("lenient", 50, bad=1, close_code=1011)
    report = judge(units)
    assert report["verdict"] == "rollback"
    m = metric(report, "abnormal_close_rate")
    assert m["result"] == "fail" and m["test"] == "rate-ratio"
    assert m["strict"] == {"n": 50, "events": 30, "mean": pytest.approx(0.6)}
    assert m["lenient"] == {"n": 50, "events": 1, "mean": pytest.approx(0.02)}
    assert m["effect"] == pytest.approx(0.58) and m["ratio"] == pytest.approx(30.0)
    assert m["tolerance"] == {"ratio": 1.1, "excess": 0.001}
    low, high = m["ratio_interval"]
    assert 1.1 < low < 30.0 < high
    assert m["e_max"] >= m["threshold"] == pytest.approx(300.0) and m["p_value"] < 1e-4
    assert report["reasons"][0].startswith("abnormal_close_rate: strict 60% vs lenient 2% (ratio 30 [")
    assert report["reasons"][0].endswith("rollback at 300) — critical")
    c = report["cohorts"]["strict"]
    assert c["abnormal_closes"] == 30 and c["abnormal_close_rate"] == pytest.approx(0.6)
    assert c["closes_by_code"] == {"1000": 20, "1011": 30}


def test_normal_close_codes_and_open_connections_are_not_abnormal() -> None:
    units = (cohort("strict", 30, bad=10, close_code=1012) + cohort("strict", 10, close_code=None)
             + cohort("lenient", 40, bad=10, close_code=1001))
    report = judge(units)
    assert metric(report, "abnormal_close_rate")["strict"]["mean"] == 0.0
    assert report["cohorts"]["strict"]["closed"] == 30
    assert report["verdict"] == "promote"


def test_strict_rejecting_what_lenient_skipped_is_not_a_regression() -> None:
    strict = cohort("strict", 40, records=100, accepted=90, reasons={("rejected", "blank"): 10})
    lenient = cohort("lenient", 40, records=100, accepted=90, reasons={("skipped", "blank"): 10})
    report = judge(strict + lenient)
    assert report["verdict"] == "promote"
    assert report["cohorts"]["strict"]["rejected"] == {"blank": {"count": 400, "rate": 0.1}}
    assert report["cohorts"]["strict"]["skipped"] == {}
    assert report["cohorts"]["lenient"]["skipped"] == {"blank": {"count": 400, "rate": 0.1}}
    assert report["cohorts"]["lenient"]["accepted_rate"] == pytest.approx(0.9)


def test_error_frames_roll_back() -> None:
    units = cohort("strict", 40, bad=20, errors=5) + cohort("lenient", 40)
    report = judge(units)
    assert report["verdict"] == "rollback"
    assert results(report)["error_frame_rate"] == "fail"
    assert metric(report, "error_frame_rate")["strict"]["mean"] == pytest.approx(0.5)  # connections with any
    assert report["cohorts"]["strict"]["error_frames"] == 100
    assert report["cohorts"]["strict"]["errors_by_code"] == {"bad_batch": 100}
    assert report["cohorts"]["strict"]["error_frame_rate"] == pytest.approx(100 / 900)


def test_retries_roll_back() -> None:
    report = judge(cohort("strict", 40, bad=20, retry=True) + cohort("lenient", 40, bad=1, retry=True))
    assert report["verdict"] == "rollback"
    assert results(report)["retry_rate"] == "fail"
    assert report["cohorts"]["strict"]["retries"] == 20


def test_latency_regression_holds_and_does_not_roll_back() -> None:
    report = judge(cohort("strict", 40, latency_ms=40.0) + cohort("lenient", 40, latency_ms=10.0))
    assert report["verdict"] == "hold"
    assert results(report)["latency_p95_ms"] == "fail"
    assert [r.split(":")[0] for r in report["reasons"]] == ["latency_p95_ms"]
    assert not report["reasons"][0].endswith("critical")
    assert report["cohorts"]["strict"]["latency_ms"]["mean"] == pytest.approx(40.0)
    assert report["cohorts"]["strict"]["latency_ms"]["p95"] > report["cohorts"]["lenient"]["latency_ms"]["p95"]


def test_small_latency_difference_within_tolerance_passes() -> None:
    # Significant (every strict value is higher) but below max(5 ms, 25 %): pass.
    report = judge(cohort("strict", 40, latency_ms=2.0) + cohort("lenient", 40, latency_ms=1.0))
    m = metric(report, "latency_p95_ms")
    assert m["p_value"] < 0.01
    assert m["result"] == "pass"


def test_short_connections_give_no_latency_value() -> None:
    report = judge(cohort("strict", 40, batches=4) + cohort("lenient", 40, batches=4))
    m = metric(report, "latency_p95_ms")
    assert m["result"] == "nodata" and m["strict"]["n"] == 0 and m["strict"]["mean"] is None
    assert report["verdict"] == "hold"
    assert any(r.startswith("latency_p95_ms: no data") for r in report["reasons"])


def test_accepted_rate_drop_holds() -> None:
    strict = cohort("strict", 40, records=100, accepted=80, reasons={("rejected", "control_character"): 20})
    lenient = cohort("lenient", 40, records=100, accepted=99, reasons={("skipped", "blank"): 1})
    report = judge(strict + lenient)
    assert report["verdict"] == "hold"
    m = metric(report, "accepted_rate")
    assert m["result"] == "fail" and m["direction"] == "decrease"
    assert m["effect"] == pytest.approx(-0.19)
    assert m["tolerance"] == pytest.approx(0.05 * 0.99)


def test_accepted_rate_increase_is_not_bad() -> None:
    strict = cohort("strict", 40, records=100, accepted=99)
    lenient = cohort("lenient", 40, records=100, accepted=80)
    assert results(judge(strict + lenient))["accepted_rate"] == "pass"


def test_thin_cohort_holds_and_is_inconclusive() -> None:
    report = judge(cohort("strict", 12, close_code=1011) + cohort("lenient", 50))
    assert report["verdict"] == "hold"
    assert set(results(report).values()) == {"inconclusive"}
    assert all(m["p_value"] is None for m in report["metrics"] if m["test"] == "mann-whitney-u")
    assert "strict cohort too thin: 12 connections < 20" in report["reasons"]


def test_thin_cohort_by_batches() -> None:
    report = judge(cohort("strict", 30, batches=3) + cohort("lenient", 30, batches=3), Rules(min_batches=100))
    assert report["verdict"] == "hold"
    assert "strict cohort too thin: 90 batches < 100" in report["reasons"]
    assert "lenient cohort too thin: 90 batches < 100" in report["reasons"]


def test_clients_who_give_up_after_one_batch_are_not_too_thin_to_judge() -> None:
    strict = cohort("strict", 30, batches=1, close_code=4400)
    report = judge(strict + cohort("lenient", 30, batches=1))
    assert report["verdict"] == "rollback", report["reasons"]


def test_empty_input_has_both_cohorts() -> None:
    report = judge([])
    assert report["verdict"] == "hold"
    for name in ("strict", "lenient"):
        c = report["cohorts"][name]
        assert c["connections"] == 0 and c["accepted_rate"] is None and c["latency_ms"]["p95"] is None
        assert c["latency_histogram"] == [0] * histogram.SIZE
    assert report["srm"]["checked"] is False
    dumps(report)


# -- sample-ratio mismatch -------------------------------------------------------


def test_srm_detected_when_strict_clients_are_missing() -> None:
    report = judge(cohort("strict", 100) + cohort("lenient", 300))
    srm = report["srm"]
    assert srm["checked"] and srm["mismatch"]
    assert (srm["strict_clients"], srm["lenient_clients"]) == (100, 300)
    assert srm["expected_strict_share"] == 0.5 and srm["observed_strict_share"] == 0.25
    assert srm["p_value"] < 1e-10
    assert report["verdict"] == "hold"
    assert any(r.startswith("sample-ratio mismatch: 100 strict clients of 400, expected 50% (p=")
               for r in report["reasons"])


def test_srm_not_detected_at_the_configured_split() -> None:
    report = judge(cohort("strict", 100, strict_share=0.25) + cohort("lenient", 300, strict_share=0.25))
    assert report["srm"]["checked"] and not report["srm"]["mismatch"]
    assert report["srm"]["p_value"] == pytest.approx(1.0)
    assert report["verdict"] == "promote"
    # The same cohorts at an explicit 50 % are a mismatch.
    assert judge(cohort("strict", 100) + cohort("lenient", 300), expected_strict_share=0.5)["srm"]["mismatch"]


def test_srm_counts_each_client_once_in_its_earliest_cohort() -> None:
    units = []
    for i in range(60):
        first = "strict" if i % 2 else "lenient"
        units.append(unit(first, client_id=f"c{i}", start_ns=i))
        # Later reconnects all land in lenient: they must not count as more lenient clients.
        units += [unit("lenient", client_id=f"c{i}", start_ns=1000 + i + k) for k in range(3)]
    srm = judge(units)["srm"]
    assert (srm["strict_clients"], srm["lenient_clients"]) == (30, 30)
    assert not srm["mismatch"]


def test_srm_with_varying_per_client_shares() -> None:
    # The share went from 10 % to 90 %: 100 clients each; 10 + 90 strict is as expected.
    before = cohort("strict", 10, strict_share=0.1) + cohort("lenient", 90, strict_share=0.1)
    after = cohort("strict", 90, strict_share=0.9) + cohort("lenient", 10, strict_share=0.9)
    srm = judge(before + after)["srm"]
    assert srm["checked"] and not srm["mismatch"]
    assert srm["expected_strict_share"] == pytest.approx(0.5)
    assert srm["p_value"] == pytest.approx(1.0)
    # 300 clients came at 10 %, 100 at 90 %: 120 strict clients (30 %) are as expected,
    # though a single 50 % share would call them a mismatch ...
    mixed = cohort("strict", 30, strict_share=0.1) + cohort("lenient", 270, strict_share=0.1) \
        + cohort("strict", 90, strict_share=0.9) + cohort("lenient", 10, strict_share=0.9)
    srm = judge(mixed)["srm"]
    assert srm["checked"] and not srm["mismatch"]
    assert srm["expected_strict_share"] == pytest.approx(0.3)
    assert judge(mixed, expected_strict_share=0.5)["srm"]["mismatch"]
    # ... and 180 strict clients (45 %) are a mismatch that a single 50 % share would miss.
    skewed = cohort("strict", 90, strict_share=0.1) + cohort("lenient", 210, strict_share=0.1) \
        + cohort("strict", 90, strict_share=0.9) + cohort("lenient", 10, strict_share=0.9)
    srm = judge(skewed)["srm"]
    assert srm["checked"] and srm["mismatch"] and srm["p_value"] < 1e-10
    assert not judge(skewed, expected_strict_share=0.5)["srm"]["mismatch"]


def test_srm_with_deterministic_shares() -> None:
    ok = judge(cohort("strict", 30, strict_share=1.0) + cohort("lenient", 30, strict_share=0.0))["srm"]
    assert ok["checked"] and not ok["mismatch"] and ok["p_value"] == 1.0
    bad = judge(cohort("strict", 30, strict_share=0.0) + cohort("lenient", 30, strict_share=0.0))["srm"]
    assert bad["checked"] and bad["mismatch"] and bad["p_value"] == 0.0


def test_srm_not_checked_when_shares_unknown() -> None:
    report = judge(cohort("strict", 30) + cohort("lenient", 29) + [unit("lenient", strict_share=None)])
    srm = report["srm"]
    assert srm["checked"] is False and srm["mismatch"] is False and srm["p_value"] is None
    assert srm["expected_strict_share"] is None
    assert "unknown for 1 of 60 clients" in srm["detail"]
    assert report["verdict"] == "promote"
    assert judge(cohort("strict", 30) + cohort("lenient", 29) + [unit("lenient", strict_share=None)],
                 expected_strict_share=0.5)["srm"]["checked"]


def test_srm_not_checked_with_few_clients() -> None:
    units: list[ConnectionUnit] = []
    for i in range(25):
        units.append(unit("strict", client_id=f"s{i % 5}"))
        units.append(unit("lenient", client_id=f"l{i % 5}"))
    srm = judge(units)["srm"]
    assert srm["checked"] is False and "10 clients < 20" in srm["detail"]


# -- shadow ----------------------------------------------------------------------


def test_expected_shadow_divergence_is_reported_as_downstream_loss() -> None:
    strict = cohort("strict", 30, bad=30, divergence={("accepted_by_lenient_only", "control_character"): 2})
    lenient = cohort("lenient", 30, bad=30, divergence={("accepted_by_lenient_only", "control_character"): 1})
    report = judge(strict + lenient)
    shadow = report["shadow"]
    assert shadow["divergent"] == 90 and shadow["unexpected"] == 0
    assert shadow["downstream_loss"] == {"control_character": 90}
    assert shadow["by_kind"] == {"accepted_by_lenient_only": {"control_character": 90}}
    assert shadow["divergence_rate"] == pytest.approx(90 / 6000)
    assert shadow["cohorts"]["strict"]["divergent"] == 60 and shadow["cohorts"]["lenient"]["divergent"] == 30
    assert "cohorts" not in shadow["cohorts"]["strict"]
    assert report["verdict"] == "promote"


@pytest.mark.parametrize("kind", [("value_mismatch", "value"), ("accepted_by_strict_only", "blank")])
def test_unexpected_shadow_divergence_holds(kind: tuple[str, str]) -> None:
    report = judge(cohort("strict", 30, bad=1, divergence={kind: 3}) + cohort("lenient", 30))
    assert report["shadow"]["unexpected"] == 3
    assert report["verdict"] == "hold"
    assert report["reasons"][0].startswith(f"unexpected shadow divergence: 3 records ({kind[0]}/{kind[1]} 3)")


def test_no_shadow_data() -> None:
    shadow = judge(cohort("strict", 30) + cohort("lenient", 30))["shadow"]
    assert shadow["records"] == 0 and shadow["divergence_rate"] is None and shadow["by_kind"] == {}


# -- precedence, schema, numbers ---------------------------------------------------


def test_rollback_wins_over_srm_and_holds() -> None:
    units = cohort("strict", 50, bad=40, close_code=1011, latency_ms=50.0) + cohort("lenient", 200)
    report = judge(units)
    assert report["srm"]["mismatch"]
    assert results(report)["latency_p95_ms"] == "fail"
    assert report["verdict"] == "rollback"
    assert report["reasons"][0].startswith("abnormal_close_rate")
    assert any(r.startswith("sample-ratio mismatch") for r in report["reasons"])


def test_schema_and_json_without_nan() -> None:
    units = (cohort("strict", 25, bad=3, close_code=None, batches=0, records=0)
             + cohort("lenient", 25, bad=5, batches=2, errors=1))
    report = judge(units)
    text = dumps(report)  # raises on NaN / inf / numpy types
    assert json.loads(text) == report
    assert set(report) == {"verdict", "reasons", "rules", "cohorts", "metrics", "srm", "shadow", "synthetic"}
    assert set(report["cohorts"]) == {"strict", "lenient"}
    assert set(report["cohorts"]["strict"]) == {
        "clients", "connections", "batches", "records", "accepted", "accepted_rate", "skipped", "rejected",
        "error_frames", "error_frame_rate", "errors_by_code", "closed", "abnormal_closes", "abnormal_close_rate",
        "closes_by_code", "retries", "retry_rate", "latency_ms", "latency_histogram"}
    for m in report["metrics"]:
        if m["test"] == "rate-ratio":
            assert set(m) == {"name", "description", "critical", "direction", "result", "test", "strict", "lenient",
                              "effect", "ratio", "ratio_interval", "tolerance", "recent", "e_value", "e_max",
                              "threshold", "p_value", "connections_needed", "detail", "values"}
            values = [m["effect"], m["ratio"], *m["ratio_interval"], m["e_value"], m["e_max"], m["p_value"]]
        else:
            assert set(m) == {"name", "description", "critical", "direction", "result", "strict", "lenient", "effect",
                              "tolerance", "hodges_lehmann", "p_value", "test", "detail", "values"}
            assert m["test"] == "mann-whitney-u"
            values = [m["effect"], m["tolerance"], m["hodges_lehmann"], m["p_value"]]
        for value in (*values, m["strict"]["mean"]):
            assert value is None or type(value) is float
        assert all(type(v) is float for v in m["values"]["strict"] + m["values"]["lenient"])
    assert set(report["srm"]) == {"checked", "mismatch", "strict_clients", "lenient_clients", "expected_strict_share",
                                  "observed_strict_share", "p_value", "detail"}
    assert set(report["shadow"]) == {"batches", "skipped", "records", "divergent", "divergence_rate", "by_kind",
                                     "unexpected", "downstream_loss", "cohorts"}
    assert report["rules"]["alpha"] == 0.01 and len(report["rules"]["metrics"]) == 5
    assert report["rules"]["metrics"][0] == {
        "name": "abnormal_close_rate", "description": DEFAULT_METRICS[0].description, "critical": True,
        "direction": "increase", "abs_tolerance": 0.001, "rel_tolerance": 0.1, "test": "rate-ratio"}
    # The rate metrics count the connections that ended; without batches no latency value; without
    # records no accepted rate.
    assert metric(report, "error_frame_rate")["strict"]["n"] == 22
    assert metric(report, "accepted_rate")["strict"]["n"] == 22
    assert metric(report, "latency_p95_ms")["lenient"]["n"] == 20


def test_degenerate_all_zero_data_passes_with_p_one() -> None:
    report = judge(cohort("strict", 30) + cohort("lenient", 30))
    for name in ("abnormal_close_rate", "error_frame_rate", "retry_rate"):
        m = metric(report, name)
        assert m["result"] == "pass" and m["p_value"] == 1.0 and m["e_max"] == 1.0
        assert m["effect"] == 0.0 and m["ratio"] is None and m["ratio_interval"] == [None, None]
    assert mann_whitney_p([0.0] * 5, [0.0] * 5, "increase") == 1.0
    assert mann_whitney_p([3.0] * 5, [3.0] * 5, "decrease") == 1.0


def test_mann_whitney_direction() -> None:
    low, high = [1.0, 2.0, 3.0, 4.0] * 10, [5.0, 6.0, 7.0, 8.0] * 10
    assert mann_whitney_p(high, low, "increase") < 1e-6
    assert mann_whitney_p(high, low, "decrease") > 0.99
    assert mann_whitney_p(low, high, "decrease") < 1e-6


def test_hodges_lehmann() -> None:
    assert hodges_lehmann([3.0, 4.0, 5.0], [1.0, 2.0]) == pytest.approx(2.5)
    assert hodges_lehmann([], [1.0]) is None
    rng = np.random.default_rng(0)
    a, b = rng.normal(10.0, 1.0, 3000), rng.normal(7.0, 1.0, 2000)  # 6e6 pairs: thinned
    estimate = hodges_lehmann(a.tolist(), b.tolist())
    assert estimate == pytest.approx(3.0, abs=0.1)
    assert estimate == hodges_lehmann(a.tolist(), b.tolist())


def test_custom_rules() -> None:
    strict_latency = MetricRule("latency_p95_ms", "p95", critical=True, direction="increase",
                                abs_tolerance=5.0, rel_tolerance=0.25)
    rules = Rules(metrics=(strict_latency,), min_connections=10, min_batches=10, min_values=10)
    report = judge(cohort("strict", 15, latency_ms=40.0) + cohort("lenient", 15), rules)
    assert report["verdict"] == "rollback"
    assert [m["name"] for m in report["metrics"]] == ["latency_p95_ms"]
    with pytest.raises(ValueError, match="unknown metrics"):
        Rules(metrics=(MetricRule("cpu", "", critical=True, direction="increase", abs_tolerance=0, rel_tolerance=0),))
    with pytest.raises(ValueError):
        judge([], expected_strict_share=1.5)


def test_other_strategies_are_ignored() -> None:
    report = judge(cohort("strict", 30) + cohort("lenient", 30) + cohort("experimental", 30, close_code=1011))
    assert report["verdict"] == "promote"
    assert report["srm"]["strict_clients"] + report["srm"]["lenient_clients"] == 60


# -- simulation: false alarms and power ----------------------------------------------

_BOUNDS = np.asarray(histogram.BOUNDS_MS)


def simulate(rng: np.random.Generator, strategy: str, n: int, *, first: int = 0, abnormal: float = 0.03,
             retry: float = 0.02, error: float = 0.005, latency_median_ms: float = 20.0,
             accepted: float = 0.95, share: float = 0.5) -> list[ConnectionUnit]:
    """``n`` connections (one client each) drawn from one distribution.

    Batches per connection uniform in 5..50, about 5 records per batch; per-connection
    accepted rate ~ Beta with mean ``accepted`` (sd ≈ 0.02); error frames binomial per
    batch; per-batch latency lognormal around a per-connection median (itself lognormal
    around ``latency_median_ms``); abnormal close and retry Bernoulli per connection.
    """
    batches = rng.integers(5, 51, n)
    records = batches + rng.poisson(4 * batches)
    p_accept = rng.beta(100 * accepted, 100 * (1 - accepted), n)
    accepted_n = rng.binomial(records, p_accept)
    errors = rng.binomial(batches, error)
    abnormal_close = rng.random(n) < abnormal
    retried = rng.random(n) < retry
    conn_mu = math.log(latency_median_ms) + rng.normal(0.0, 0.3, n)
    owner = np.repeat(np.arange(n), batches)
    values_ms = np.exp(conn_mu[owner] + rng.normal(0.0, 0.5, owner.size))
    buckets = np.searchsorted(_BOUNDS, values_ms, side="left")
    hist = np.bincount(owner * histogram.SIZE + buckets, minlength=n * histogram.SIZE).reshape(n, histogram.SIZE)
    sums_s = np.bincount(owner, weights=values_ms, minlength=n) / 1000.0
    kind = "rejected" if strategy == "strict" else "skipped"
    units = []
    for i in range(n):
        k = first + i
        dropped = int(records[i] - accepted_n[i])
        units.append(ConnectionUnit(
            connection_id=f"k{k}", client_id=f"c{k}", strategy=strategy, start_ns=k, end_ns=k + 1,
            closed=True, close_code=1011 if abnormal_close[i] else 1000,
            batches=int(batches[i]), records=int(records[i]), accepted=int(accepted_n[i]),
            skipped=dropped if kind == "skipped" else 0, rejected=dropped if kind == "rejected" else 0,
            errors=int(errors[i]), reasons={(kind, "blank"): dropped} if dropped else {},
            error_codes={"bad_batch": int(errors[i])} if errors[i] else {},
            latency=hist[i].tolist(), latency_sum_s=float(sums_s[i]), strict_share=share,
            retry=bool(retried[i])))
    return units


def healthy_canary(seed: int) -> list[ConnectionUnit]:
    """60..400 clients assigned 50/50 at random, both cohorts from the same distributions."""
    rng = np.random.default_rng(seed)
    total = int(rng.integers(60, 401))
    n_strict = int(rng.binomial(total, 0.5))
    return simulate(rng, "strict", n_strict) + simulate(rng, "lenient", total - n_strict, first=n_strict)


DEFAULTS = Rules()


def verdict_counts(runs: Sequence[list[ConnectionUnit]], rules: Rules = DEFAULTS) -> dict[str, int]:
    counts = {"promote": 0, "hold": 0, "rollback": 0}
    for units in runs:
        counts[judge(units, rules)["verdict"]] += 1
    return counts


def test_false_alarm_rate_on_healthy_canaries() -> None:
    seeds = 500
    counts = verdict_counts([healthy_canary(seed) for seed in range(seeds)], SMALL)
    assert sum(counts.values()) == seeds
    assert counts["rollback"] <= 0.01 * seeds, counts  # measured: none
    assert counts["hold"] <= 0.05 * seeds, counts


def test_a_healthy_but_small_canary_is_held_until_a_tripling_could_have_been_seen() -> None:
    """With the default rules, 60 to 400 connections at a 3 % abnormal-close rate are too few to
    promote: a tripled rate would not yet have reached the rollback threshold."""
    seeds = 100
    reports = [judge_with_defaults(healthy_canary(seed)) for seed in range(seeds)]
    assert {r["verdict"] for r in reports} == {"hold"}
    detail = metric(reports[0], "abnormal_close_rate")["detail"]
    assert detail.startswith("too little evidence to promote:") and "before a 3x rate (or +2%) would reach" in detail


def test_power_against_a_real_regression() -> None:
    seeds = 200
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        runs.append(simulate(rng, "strict", 150, abnormal=0.30) + simulate(rng, "lenient", 150, first=150))
    counts = verdict_counts(runs)
    assert counts["rollback"] >= 0.95 * seeds, counts  # measured: all 200
    assert counts["promote"] == 0, counts


def test_a_thin_regression_is_held_not_promoted() -> None:
    runs = []
    for seed in range(100):
        rng = np.random.default_rng(20_000 + seed)
        runs.append(simulate(rng, "strict", 50, abnormal=0.30) + simulate(rng, "lenient", 50, first=50))
    counts = verdict_counts(runs)
    assert counts["promote"] == 0 and counts["rollback"] >= 20, counts  # measured: 69 holds, 31 rollbacks


def metric_table(metrics: Sequence[MetricRule] = DEFAULT_METRICS) -> list[str]:
    """The metric table of docs/report.md, as generated from ``metrics`` (Markdown lines)."""

    def tolerance(rule: MetricRule) -> str:
        if rule.test == "rate-ratio":
            return f"ratio {1 + rule.rel_tolerance:g}, floor +{rule.abs_tolerance * 100:g} pt"
        return f"max({rule.abs_tolerance:g}, {rule.rel_tolerance * 100:g} % of the lenient mean)"

    lines = ["| metric | description | critical | bad direction | test | tolerance |", "|---|---|---|---|---|---|"]
    lines += [f"| `{rule.name}` | {rule.description} | {'yes' if rule.critical else 'no'} | {rule.direction} "
              f"| {rule.test} | {tolerance(rule)} |" for rule in metrics]
    return lines


def test_the_metric_table_in_docs_is_generated_from_the_code() -> None:
    """docs/report.md's metric table is DEFAULT_METRICS, cell for cell: when a metric changes,
    paste the table this test prints into the docs."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / "docs" / "report.md").read_text().splitlines()
    expected = metric_table()
    start = lines.index(expected[0]) if expected[0] in lines else -1
    shown = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:])) if start >= 0 else []
    assert shown == expected, "docs/report.md's metric table should be:\n" + "\n".join(expected)
