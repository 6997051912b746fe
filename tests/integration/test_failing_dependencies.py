"""Failing dependencies, each injected for real into a running ``canaryws serve``.

- the OTLP collector unreachable (its port closed) or slow (a loopback HTTP server that
  answers after the exporter has given up): batches keep their latency, memory stays
  bounded, every lost span is counted, one warning, ``/readyz`` says so and stays 200,
  and the exporter recovers when the collector does;
- the trace file's disk full (the file is a symlink to ``/dev/full``, where every write
  fails with ENOSPC), recovering when the path names a writable file again;
- the trace file at its size cap: rotated to one backup, owner-only, nothing lost;
- the flags file deleted while the service runs, then recreated;
- the Unleash server down when the service starts, then up (an outage in the middle of
  a run is covered by tests/integration/test_unleash_backend.py).
"""

from __future__ import annotations

import asyncio
import http.server
import os
import stat
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from canaryws.adapters.telemetry.otlp_json_reader import read_otlp_json_lines
from canaryws.analysis.traces import expand_paths, load_slices
from harness import Service, UnleashServer, flags_doc, free_port, metric_value, run_cli, send_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RECORDS = ["ok", " v ", "", None]  # every strategy answers every index; strict rejects two
DROPPED = "canaryws_telemetry_spans_dropped_total"
ROTATIONS = "canaryws_telemetry_trace_file_rotations_total"
CONNECTIONS = 20  # batches per connection stay below the per-connection burst allowance
OTLP_TIMEOUT_S = 2  # the exporter's per-export deadline, retries included


# ----------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def telemetry_status(service: Service) -> dict[str, Any]:
    ready = service.get("/readyz", admin=True)  # with the details (targets, errors)
    assert ready.status_code == 200, ready.text  # losing telemetry never costs readiness
    status: dict[str, Any] = ready.json()["telemetry"]
    return status


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def pid_of(service: Service) -> int:
    assert service.proc is not None
    return service.proc.pid


def run_batches(service: Service, prefix: str, total: int) -> list[float]:
    """``total`` batches over CONNECTIONS concurrent connections, one in flight on each;
    asserts every batch got its result with every index; returns each batch's latency."""
    per_connection = total // CONNECTIONS

    async def scenario() -> list[float]:
        latencies: list[float] = []

        async def connection(c: int) -> None:
            async with service.client(f"{prefix}-{c}") as (ws, _welcome):
                for i in range(per_connection):
                    batch_id = f"{prefix}-{c}-{i}"
                    started = time.perf_counter()
                    frames = await send_batch(ws, batch_id, RECORDS)
                    latencies.append(time.perf_counter() - started)
                    result = frames[-1]
                    assert result["type"] == "result" and result["id"] == batch_id, result
                    indexes = [e["index"] for key in ("accepted", "skipped", "rejected") for e in result[key]]
                    assert sorted(indexes) == list(range(len(RECORDS))), result

        await asyncio.gather(*(connection(c) for c in range(CONNECTIONS)))
        return latencies

    latencies = asyncio.run(scenario())
    assert len(latencies) == per_connection * CONNECTIONS
    return latencies


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def telemetry_logs(service: Service, level: str) -> list[dict[str, Any]]:
    return [r for r in service.log_records() if r.get("logger") == "canaryws.telemetry" and r.get("level") == level]


class Collector:
    """A loopback OTLP/HTTP trace receiver on a fixed port that can be stopped (the port
    closes), started again, or made slow: with ``delay`` set it holds each request that
    long before answering 200 (failure injection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.delay = 0.0
        self.release = threading.Event()
        self.batch_ids: list[str] = []
        self.spans = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Collector:
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if collector.delay:
                    collector.release.wait(collector.delay)
                    return  # the exporter gave up long ago; just drop the connection
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            collector.spans += 1
                            collector.batch_ids.extend(
                                a.value.string_value for a in span.attributes if a.key == "canaryws.batch.id")
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that gave up on a slow answer

        self._server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def slow(self, delay: float) -> None:
        self.release.clear()
        self.delay = delay

    def fast(self) -> None:
        self.delay = 0.0
        self.release.set()


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector(free_port()).start()
    try:
        yield server
    finally:
        server.fast()
        server.stop()


# ------------------------------------------------------------------------ OTLP export


@pytest.mark.parametrize("failure", ["unreachable", "slow"])
def test_a_failing_collector_costs_spans_never_latency_memory_or_readiness(
        tmp_path: Path, collector: Collector, failure: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_EXPORTER_OTLP_TIMEOUT": str(OTLP_TIMEOUT_S)}
    with Service(tmp_path, flags_doc(strict_rollout=50), env=env) as service:
        status = telemetry_status(service)
        assert (status["traces"], status["dropped_spans"]) == ("ok", 0)
        (exporter,) = status["exporters"]
        assert exporter["exporter"] == "otlp" and exporter["target"] == f"{collector.url}/v1/traces"

        # Baseline: the same service, same load, exporting to a healthy collector.
        baseline = run_batches(service, "base", 4000)
        wait_for(lambda: collector.spans >= 4000, 20, "the healthy collector received the baseline's spans")
        assert metric_value(service.get("/metrics").text, DROPPED) == 0
        before_failure = len(service.log_records())

        if failure == "unreachable":
            collector.stop()  # connection refused from now on
        else:
            collector.slow(60)  # accepts, then answers long after the exporter's timeout

        run_batches(service, "warmup", 4000)  # more spans than the queue holds (2048)
        failing = run_batches(service, "n", 4000)
        rss_n = rss_bytes(pid_of(service))
        failing += run_batches(service, "3n", 8000)
        rss_3n = rss_bytes(pid_of(service))

        # The batch path never waits for the exporter: an export now takes up to
        # OTLP_TIMEOUT_S, while batch latency stays near the healthy baseline.
        assert p50(failing) <= 2 * p50(baseline) + 0.002, (p50(failing), p50(baseline))
        assert p99(failing) <= 4 * p99(baseline) + 0.020, (p99(failing), p99(baseline))
        # Memory is bounded by the processor's queue: 8000 more batches whose spans were
        # all kept would add ~25 MB (about 3 KB a span); the margin is well below that.
        assert rss_3n - rss_n <= 0.10 * rss_n, (rss_n, rss_3n)

        # Every lost span is counted, by reason; /readyz says so and stays 200.
        status = wait_for(
            lambda: (st := telemetry_status(service))["exporters"][0]["dropped"]["export_failed"] > 0 and st,
            4 * OTLP_TIMEOUT_S + 10, "a failed export was counted")
        (exporter,) = status["exporters"]
        assert status["traces"] == "degraded" and exporter["state"] == "degraded"
        assert exporter["dropped"]["queue_full"] > 0
        assert status["dropped_spans"] == exporter["dropped_spans"] == sum(exporter["dropped"].values())
        cause = {"unreachable": "Connection refused", "slow": "timeout"}[failure]
        assert cause in exporter["last_error"], exporter["last_error"]
        first = telemetry_status(service)["dropped_spans"]
        metrics = service.get("/metrics").text
        then = telemetry_status(service)["dropped_spans"]
        counted = metric_value(metrics, DROPPED, exporter="otlp")
        assert first <= counted <= then
        assert metric_value(metrics, DROPPED, exporter="otlp", reason="queue_full") > 0
        assert metric_value(metrics, DROPPED, exporter="otlp", reason="export_failed") > 0

        # One warning, not one per batch or per retry; the SDK's own records are folded in.
        time.sleep(2 * OTLP_TIMEOUT_S)  # more failed exports
        failed_by_now = telemetry_status(service)["exporters"][0]["dropped"]["export_failed"]
        assert failed_by_now > 512  # several batches of the processor have failed by now
        warnings = telemetry_logs(service, "WARNING")
        assert len(warnings) == 1, warnings
        assert "otlp" in warnings[0]["message"] and "connection_id" not in warnings[0]
        after = service.log_records()[before_failure:]
        assert not [r for r in after if r.get("logger", "").startswith("opentelemetry")], after[-5:]
        assert "Traceback" not in service.logs()

        # Recovery: the collector answers again; the exporter is ok and spans arrive. Recovery
        # is seen at the next successful export, so there must be spans to export: the failed
        # exports may already have emptied the queue (2048 spans, 512 per export, up to
        # OTLP_TIMEOUT_S each), so new batches follow the restart.
        if failure == "unreachable":
            collector.start()
        else:
            collector.fast()
        run_batches(service, "after", 100)
        wait_for(lambda: telemetry_status(service)["traces"] == "ok", 4 * OTLP_TIMEOUT_S + 15,
                 "the exporter recovered")
        wait_for(lambda: any(b.startswith("after-") for b in collector.batch_ids), 10,
                 "spans of batches after the recovery reached the collector")
        assert telemetry_status(service)["traces"] == "ok"
        infos = [r for r in telemetry_logs(service, "INFO") if "works again" in r["message"]]
        assert len(infos) == 1, infos
        assert len(telemetry_logs(service, "WARNING")) == 1


# ---------------------------------------------------------------------- trace file


def test_a_full_disk_under_the_trace_file_is_counted_reported_once_and_recovers(tmp_path: Path) -> None:
    assert Path("/dev/full").exists(), "this test needs Linux's /dev/full (every write fails with ENOSPC)"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    trace_file = data_dir / "traces.jsonl"
    trace_file.symlink_to("/dev/full")
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        run_batches(service, "full", 400)
        status = wait_for(lambda: (st := telemetry_status(service))["traces"] == "degraded" and st, 10,
                          "the full disk is reported")
        (exporter,) = status["exporters"]
        assert exporter["exporter"] == "file" and exporter["target"] == str(trace_file)
        assert exporter["state"] == "degraded" and "No space left on device" in exporter["last_error"]
        run_batches(service, "still-full", 400)
        time.sleep(1)  # several export cycles (the harness's schedule delay is 100 ms)
        dropped = telemetry_status(service)["exporters"][0]["dropped"]
        assert dropped["export_failed"] >= 800 and dropped["queue_full"] == 0, dropped
        assert metric_value(service.get("/metrics").text, DROPPED, exporter="file", reason="export_failed") >= 800
        warnings = telemetry_logs(service, "WARNING")
        assert len(warnings) == 1, warnings
        assert "No space left on device" in warnings[0]["message"]

        # The operator points the path at a disk with space: the exporter reopens it.
        replacement = data_dir / ".traces.jsonl.new"
        replacement.write_bytes(b"")
        os.replace(replacement, trace_file)
        run_batches(service, "recovered", 100)
        wait_for(lambda: telemetry_status(service)["traces"] == "ok", 10, "the trace file recovered")
        spans = service.wait_for_spans(
            lambda s: sum(x["attributes"].get("canaryws.batch.id", "").startswith("recovered-") for x in s) == 100)
        assert sum(x["attributes"].get("canaryws.batch.id", "").startswith("recovered-") for x in spans) == 100
        assert not any(x["attributes"].get("canaryws.batch.id", "").startswith("full-") for x in spans)
        lost = telemetry_status(service)["dropped_spans"]
        run_batches(service, "later", 100)
        time.sleep(0.5)
        assert telemetry_status(service)["dropped_spans"] == lost  # nothing lost once writes succeed
        messages = [r["message"] for r in telemetry_logs(service, "INFO")]
        assert any("reopened" in m for m in messages), messages
        assert any("writes succeed again" in m for m in messages), messages
        assert len(telemetry_logs(service, "WARNING")) == 1
    assert "Traceback" not in service.logs()


def test_the_trace_file_rotates_at_its_cap_stays_owner_only_and_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    trace_file = data_dir / "traces.jsonl"
    trace_file.write_bytes(b"\n")
    trace_file.chmod(0o644)  # left world-readable by an earlier version
    cap = 128 * 1024
    with Service(tmp_path, flags_doc(strict_rollout=50), env={"CANARYWS_TRACE_FILE_MAX_BYTES": "128KiB"}) as service:
        assert stat.S_IMODE(trace_file.stat().st_mode) == 0o600  # made owner-only at start
        run_batches(service, "early", 400)
        wait_for(lambda: metric_value(service.get("/metrics").text, ROTATIONS) >= 2, 10, "the trace file rotated")
        # The two files always hold at least the last `cap` bytes less one line: the latest
        # connections (one batch each, well under 128 KiB of spans) are all there.
        run_batches(service, "late", CONNECTIONS)

        def late_batches() -> int:
            files = [trace_file, trace_file.with_name("traces.old.jsonl")]
            spans = [span for path in files if path.exists() for span in read_otlp_json_lines(path)]
            return sum(span["attributes"].get("canaryws.batch.id", "").startswith("late-") for span in spans)

        wait_for(lambda: late_batches() == CONNECTIONS, 10, "the latest batches are all in the trace files")
        status = telemetry_status(service)
        assert status["traces"] == "ok" and status["dropped_spans"] == 0, status
        rotations = metric_value(service.get("/metrics").text, ROTATIONS)
        rotated = [r for r in telemetry_logs(service, "INFO") if f"reached max_bytes={cap}" in r["message"]]
        assert len(rotated) == rotations, rotated
        assert telemetry_logs(service, "WARNING") == []
    assert sorted(p.name for p in data_dir.glob("traces*")) == ["traces.jsonl", "traces.old.jsonl"]
    for path in data_dir.glob("traces*"):
        assert path.stat().st_size <= cap and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # `report --traces <data-dir>` reads the backup too: the late connections' summaries are there.
    assert expand_paths([data_dir]) == [trace_file, data_dir / "traces.old.jsonl"]
    clients = {summary.client_id for summary, _, _ in load_slices(expand_paths([data_dir]))}
    assert {f"late-{c}" for c in range(CONNECTIONS)} <= clients
    report = run_cli("report", "--traces", str(data_dir), "--json")
    assert report.returncode in (0, 1, 2), report.stderr
    assert "Traceback" not in service.logs()


def test_a_bad_trace_file_cap_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    service = Service(tmp_path, flags_doc(), env={"CANARYWS_TRACE_FILE_MAX_BYTES": "256"})
    with pytest.raises(RuntimeError, match="exited with"):
        service.start(timeout=20)
    service.stop()
    assert "CANARYWS_TRACE_FILE_MAX_BYTES='256' is below the minimum of 64KiB" in service.logs()


# ---------------------------------------------------------------------- flags file


def test_a_deleted_flags_file_keeps_the_last_flags_says_so_once_and_recreating_it_applies(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        good = service.wait_for_revision(lambda st: st["state"] == "ok")["revision"]

        async def scenario() -> None:
            async with service.client("kept-open") as (ws, welcome):
                assert welcome["cohort"]["strategy"] == "strict"

                service.flags_path.unlink()
                status = await asyncio.to_thread(service.wait_for_revision, lambda st: st["state"] == "degraded")
                assert status["state"] == "degraded" and status["revision"] == good, status
                assert "cannot read flags file: No such file or directory" in status["last_error"]
                assert status["last_error_at"]
                assert service.get("/readyz").status_code == 200

                frames = await send_batch(ws, "while-deleted", [""])
                assert frames[-1]["strategy"] == "strict" and frames[-1]["rejected"] == [
                    {"index": 0, "code": "empty"}]
                async with service.client("new-while-deleted") as (ws2, welcome2):
                    assert welcome2["cohort"] == {**welcome["cohort"], "flags_revision": good}
                    assert (await send_batch(ws2, "b", ["x"]))[-1]["accepted"] == [{"index": 0, "value": "x"}]

                await asyncio.sleep(2.5)  # several of the watcher's once-a-second checks
                errors = [r for r in service.log_records()
                          if r.get("logger") == "canaryws.flags" and r.get("level") in ("WARNING", "ERROR")]
                assert len(errors) == 1, errors
                assert "No such file or directory" in errors[0]["message"]
                metrics = service.get("/metrics").text
                assert metric_value(metrics, "canaryws_flags_info", source="file", state="degraded") == 1
                assert metric_value(metrics, "canaryws_flags_reloads_total", source="file", result="invalid") == 1

                service.write_flags(flags_doc(strict_rollout=0))
                status = await asyncio.to_thread(
                    service.wait_for_revision, lambda st: st["revision"] != good and st["state"] == "ok")
                assert status["revision"] != good and status["state"] == "ok", status

                frames = await send_batch(ws, "after-recreate", [""])
                assert frames[0]["type"] == "cohort" and frames[0]["cohort"]["strategy"] == "lenient"
                assert frames[-1]["strategy"] == "lenient" and frames[-1]["skipped"] == [
                    {"index": 0, "reason": "empty"}]

        asyncio.run(scenario())
    assert "Traceback" not in service.logs()


# ------------------------------------------------------------------- Unleash server


def test_unleash_down_at_start_serves_the_bootstrap_then_takes_the_servers_flags(
        tmp_path: Path, unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    env = {**unleash.service_env, "UNLEASH_REFRESH_INTERVAL": "1", "CANARYWS_UNLEASH_STARTUP_WAIT": "1"}
    unleash.down()
    restarted = False
    try:
        # The bootstrap file says lenient for everyone; the server (when up) says strict.
        with Service(tmp_path, flags_doc(strict_rollout=0), env=env) as service:
            status = service.wait_for_revision(lambda st: True)
            assert status["flags_from"] == "bootstrap" and status["last_contact_at"] is None
            bootstrap = status["revision"]

            async def open_lenient() -> None:
                async with service.client("boot-1") as (ws, welcome):
                    assert welcome["cohort"]["strategy"] == "lenient"
                    assert (await send_batch(ws, "b", [""]))[-1]["skipped"] == [{"index": 0, "reason": "empty"}]

            asyncio.run(open_lenient())
            status = service.wait_for_revision(lambda st: st["state"] == "degraded", timeout=15)
            assert status["state"] == "degraded" and status["stale"] is True and status["revision"] == bootstrap
            assert service.get("/readyz").status_code == 200
            time.sleep(3)  # several polls fail: still one warning
            warnings = [r for r in service.log_records() if r.get("logger") == "canaryws.flags"
                        and r.get("level") == "WARNING" and "no answer from Unleash" in r.get("message", "")]
            assert len(warnings) == 1, warnings

            unleash.up()
            restarted = True
            unleash.set_enabled("records.strict", True)
            unleash.set_rollout("records.strict", 100)
            status = service.wait_for_revision(lambda st: st["flags_from"] == "server" and st["state"] == "ok",
                                               timeout=30)
            assert status["flags_from"] == "server" and status["state"] == "ok" and status["stale"] is False, status
            assert status["revision"] != bootstrap and status["last_contact_at"]

            async def now_strict() -> None:
                async with service.client("boot-1") as (ws, welcome):
                    assert welcome["cohort"]["strategy"] == "strict"
                    assert (await send_batch(ws, "b-strict", [""]))[-1]["rejected"] == [{"index": 0, "code": "empty"}]

            asyncio.run(now_strict())
        assert "Traceback" not in service.logs()
    finally:
        if not restarted:
            unleash.up()  # leave the module's server running for whatever runs next
