"""bench/run.py's goal ratios per round: the shadow cost is undefined in a round where the
second strategy's own work (lean-both - lean) does not measure above zero; the sink ratios
compare each sink with the same service without one, and a sink that was silently off fails
the run."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def round_of(cpu: dict[str, float]) -> list[dict[str, Any]]:
    return [{"server": name, "cpu_us_per_msg": us, "rate": 1000.0} for name, us in cpu.items()]


def shadow_cost(run: ModuleType, rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    ratio = next(r for r in run.RATIOS if r.name == "shadow cost")
    values = [run.ratio_value(ratio, {r["server"]: r for r in results}) for results in rounds]
    median = run.median(values)
    return {"per_round": values, "median": median, "met": ratio.met(median)}


def test_a_round_whose_second_strategy_work_is_not_positive_has_no_shadow_ratio() -> None:
    run = load_run()
    defined = round_of({"canaryws": 60.0, "canaryws-shadow": 80.0, "lean": 50.0, "lean-both": 70.0})
    negative = round_of({"canaryws": 60.0, "canaryws-shadow": 80.0, "lean": 70.0, "lean-both": 50.0})
    zero = round_of({"canaryws": 60.0, "canaryws-shadow": 80.0, "lean": 50.0, "lean-both": 50.0})

    assert shadow_cost(run, [defined]) == {"per_round": [1.0], "median": 1.0, "met": True}
    # the noisy rounds drop out of the median instead of reading as -1.0 (a goal "met")
    assert shadow_cost(run, [defined, negative, zero])["median"] == 1.0
    only_noise = shadow_cost(run, [negative, zero])
    assert only_noise == {"per_round": [None, None], "median": None, "met": False}


def test_settings_of_a_run_limited_to_some_servers_go_into_the_json_document() -> None:
    run = load_run()
    args = run.parse_args(["--servers", "lean,canaryws", "--rounds", "2"])
    settings = run.Settings.from_args(args)
    document = json.loads(json.dumps(settings.to_json()))
    assert document["only"] == ["canaryws", "lean"]
    assert document["rounds"] == 2 and document["scale"] is False
    assert run.Settings.from_args(run.parse_args([])).to_json()["only"] is None


# -- the persist step's servers and ratios --------------------------------------------------------

def test_the_sink_ratios_compare_each_sink_with_the_same_service_without_one() -> None:
    """Each sink server against canaryws-w8: the same service without a sink, driven like the sink
    servers (8 batches in flight per connection), side by side with them in a round."""
    run = load_run()
    ratios = {r.name: r for r in run.RATIOS}
    postgresql, sqlite = ratios["postgresql sink / none"], ratios["sqlite sink / none"]
    assert (postgresql.numerator, postgresql.denominator, postgresql.goal) == ("canaryws-postgres", "canaryws-w8",
                                                                               ">= 0.7")
    assert (sqlite.numerator, sqlite.denominator, sqlite.goal) == ("canaryws-sqlite", "canaryws-w8", ">= 0.5")
    assert run.PIPELINED == "canaryws-w8" and run.SINK_WINDOW == 8
    # side by side with canaryws-w8 in a round
    order = list(run.ROUND_ORDER)
    at = order.index("canaryws-w8")
    assert order[at + 1:at + 3] == ["canaryws-postgres", "canaryws-sqlite"]

    def one_round(postgres_rate: float, sqlite_rate: float) -> list[dict[str, Any]]:
        rates = {"echo": 3000.0, "lean": 1100.0, "canaryws": 1000.0, "canaryws-w8": 1000.0,
                 "canaryws-postgres": postgres_rate,
                 "canaryws-sqlite": sqlite_rate, "canaryws-telemetry-off": 1000.0, "canaryws-shadow": 900.0,
                 "lean-both": 1000.0, "naive": 200.0}
        return [{"server": name, "rate": rate, "cpu_us_per_msg": 1e6 / rate, "messages": int(rate),
                 **{k: 1.0 for k in ("p50_ms", "p99_ms", "p999_ms", "server_cpu_util", "client_cpu_util",
                                     "other_cpu_util", "steal_util")}, "bad_answers": 0}
                for name, rate in rates.items()]

    summary = run.summarize([one_round(800.0, 450.0), one_round(650.0, 520.0), one_round(750.0, 600.0)])
    assert summary["ratios"]["postgresql sink / none"]["per_round"] == [0.8, 0.65, 0.75]
    assert summary["ratios"]["postgresql sink / none"]["median"] == 0.75
    assert summary["ratios"]["postgresql sink / none"]["met"] is True
    assert summary["ratios"]["sqlite sink / none"]["median"] == 0.52
    assert summary["ratios"]["sqlite sink / none"]["met"] is True
    assert run.summarize([one_round(650.0, 450.0)])["ratios"]["sqlite sink / none"]["met"] is False
    # left out by --servers: not reported
    partial = [[r for r in one_round(800.0, 450.0) if r["server"] != "canaryws-postgres"]]
    assert "postgresql sink / none" not in run.summarize(partial)["ratios"]


def test_canaryws_and_its_variants_run_without_a_sink_and_the_sink_servers_with_theirs(tmp_path: Path,
                                                                                       monkeypatch: Any) -> None:
    run = load_run()
    monkeypatch.setattr(run.Bench, "has_workers_option", lambda self: True)
    settings = run.Settings.from_args(run.parse_args(["--quick", "--postgres",
                                                      "postgresql://bench:pw@db.example:6543/admin"]))
    bench = run.Bench(settings, tmp_path)
    bench.plan()
    servers = bench.servers
    for name in ("canaryws", "canaryws-telemetry-off", "canaryws-shadow", "canaryws-2workers"):
        assert servers[name].env["CANARYWS_SINK"] == "none", name
        assert servers[name].sink == "none" and not servers[name].persists
    sqlite = servers["canaryws-sqlite"]
    assert sqlite.env["CANARYWS_SINK"] == "sqlite" and sqlite.sink == "sqlite" and sqlite.persists
    assert sqlite.sink_location == str(tmp_path / "data" / "canaryws-sqlite" / "sink.sqlite3")
    postgres = servers["canaryws-postgres"]
    assert postgres.env["CANARYWS_SINK"] == f"postgresql://bench:pw@db.example:6543/{bench.database}"
    assert postgres.sink == "postgresql" and postgres.sink_location == postgres.env["CANARYWS_SINK"]
    assert bench.database.startswith("canaryws_bench_")
    # the idle step's server keeps the service's default sink, unchecked
    assert "CANARYWS_SINK" not in servers["canaryws-idle"].env and servers["canaryws-idle"].sink is None
    # the production settings apply to all of them
    for name in ("canaryws", "canaryws-sqlite", "canaryws-postgres"):
        assert servers[name].env["OTEL_TRACES_SAMPLER_ARG"] == "0.01"
    # the JSON document shows no password
    assert run.Settings.to_json(settings)["postgres"] == "postgresql://bench:***@db.example:6543/admin"


def test_an_unreachable_postgresql_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    run = load_run()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = run.Settings.from_args(run.parse_args(["--postgres", f"postgresql://postgres@127.0.0.1:{port}/x"]))
    bench = run.Bench(settings, tmp_path)
    with pytest.raises(run.BenchError, match=rf"canaryws-postgres needs PostgreSQL.*127\.0\.0\.1:{port}"):
        bench.create_database()
    assert not bench.database_created


METRICS_BEFORE = """\
# HELP canaryws_sink_commits_total Group commits, by result (ok, failed)
# TYPE canaryws_sink_commits_total counter
canaryws_sink_commits_total{otel_scope_name="canaryws.sink",result="ok",sink="sqlite"} 10.0
canaryws_sink_commit_duration_seconds_bucket{le="0.001",result="ok",sink="sqlite"} 4.0
canaryws_sink_commit_duration_seconds_bucket{le="0.002",result="ok",sink="sqlite"} 9.0
canaryws_sink_commit_duration_seconds_bucket{le="+Inf",result="ok",sink="sqlite"} 10.0
canaryws_sink_commit_duration_seconds_count{result="ok",sink="sqlite"} 10.0
canaryws_sink_commit_duration_seconds_sum{result="ok",sink="sqlite"} 0.012
canaryws_sink_batches_total{outcome="committed",sink="sqlite"} 50.0
canaryws_batches_total{strategy="strict"} 50.0
"""
METRICS_AFTER = """\
canaryws_sink_commits_total{otel_scope_name="canaryws.sink",result="ok",sink="sqlite"} 110.0
canaryws_sink_commits_total{otel_scope_name="canaryws.sink",result="failed",sink="sqlite"} 1.0
canaryws_sink_commit_duration_seconds_bucket{le="0.001",result="ok",sink="sqlite"} 14.0
canaryws_sink_commit_duration_seconds_bucket{le="0.002",result="ok",sink="sqlite"} 59.0
canaryws_sink_commit_duration_seconds_bucket{le="+Inf",result="ok",sink="sqlite"} 110.0
canaryws_sink_commit_duration_seconds_count{result="ok",sink="sqlite"} 110.0
canaryws_sink_commit_duration_seconds_sum{result="ok",sink="sqlite"} 0.212
canaryws_sink_batches_total{outcome="committed",sink="sqlite"} 1050.0
"""


def test_what_the_sink_did_in_a_run_comes_from_its_metrics_differences() -> None:
    run = load_run()
    window = run.sink_window(run.sink_counters(METRICS_BEFORE), run.sink_counters(METRICS_AFTER), rows=1000,
                             wall=2.0)
    assert window["commits"] == 100 and window["commits_failed"] == 1
    assert window["batches_committed"] == 1000 and window["batches_per_commit"] == 10.0
    assert window["commits_per_s"] == 50.0
    assert abs(window["commit_ms_mean"] - 2.0) < 1e-9  # 0.2 s over 100 commits
    assert window["commit_ms_p50_le"] == 2.0  # 10 of 100 under 1 ms, 50 under 2 ms
    assert window["commit_ms_p99_le"] == float("inf")
    assert abs(window["commit_busy"] - 0.1) < 1e-9
    # no sink metric yet: zeros, not an error
    empty = run.sink_counters("canaryws_batches_total 5.0\n")
    assert empty["commits_ok"] == 0 and empty["buckets"] == {}
    assert run.sink_window(empty, empty, rows=0, wall=1.0)["batches_per_commit"] is None


def test_a_sink_that_did_not_receive_the_answered_batches_fails_the_run() -> None:
    run = load_run()
    run.check_sink_rows("canaryws-sqlite", rows=1200, answers=1000)  # the warm-up's batches too
    with pytest.raises(run.BenchError, match="0 new rows"):
        run.check_sink_rows("canaryws-sqlite", rows=0, answers=1000)
    with pytest.raises(run.BenchError, match="did not receive"):
        run.check_sink_rows("canaryws-postgres", rows=999, answers=1000)


def test_readyz_must_show_the_sink_a_server_was_given(monkeypatch: Any, tmp_path: Path) -> None:
    run = load_run()

    def server(sink: str, readyz: dict[str, Any]) -> Any:
        s = run.Server("s", [], {}, tmp_path / "log", sink=sink)
        monkeypatch.setattr(s, "readyz", lambda: readyz)
        return s

    ok = {"status": "ready", "sink": {"sink": "postgresql", "state": "ok"}}
    assert server("postgresql", ok).sink_ready() is True
    assert server("postgresql", {"sink": {"sink": "postgresql", "state": "starting"}}).sink_ready() is False
    assert server("none", {"status": "ready"}).sink_ready() is True
    with pytest.raises(run.BenchError, match="no sink part"):
        server("sqlite", {"status": "ready"}).sink_ready()
    with pytest.raises(run.BenchError, match="shows"):
        server("sqlite", ok).sink_ready()
    with pytest.raises(run.BenchError, match="CANARYWS_SINK=none"):
        server("none", ok).sink_ready()


def test_the_tail_and_cpu_ratios_divide_p999_and_cpu_per_message_not_the_rates() -> None:
    run = load_run()
    ratios = {r.name: r for r in run.RATIOS}
    tail, cpu = ratios["p99.9 canaryws / lean"], ratios["CPU per msg 2workers / canaryws"]
    results = {"canaryws": {"rate": 900.0, "p999_ms": 9.0, "cpu_us_per_msg": 60.0},
               "lean": {"rate": 1000.0, "p999_ms": 6.0, "cpu_us_per_msg": 50.0},
               "canaryws-2workers": {"rate": 1500.0, "p999_ms": 7.0, "cpu_us_per_msg": 63.0}}
    assert run.ratio_value(tail, results) == 1.5 and tail.met(1.5) is True and tail.met(1.51) is False
    assert run.ratio_value(cpu, results) == 63.0 / 60.0 and cpu.met(63.0 / 60.0) is True
    assert ratios["canaryws / lean"].goal == ">= 0.95" and ratios["telemetry on / off"].goal == ">= 0.95"
    assert ratios["canaryws / echo"].goal == ">= 0.50"
