"""Test harness: a real ``canaryws serve`` process on a free port, real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from canaryws.adapters.auth import TokenAuthority
from canaryws.adapters.telemetry.otlp_json_reader import read_otlp_json_lines

PROTOCOL = "canaryws.records.v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingTransport:
    """A server protocol's transport, with its writes recorded (put in the protocol's place)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, ws: Any = "websockets-sansio", **config_options: Any) -> AsyncIterator[int]:
    """``app`` under uvicorn's websockets-sansio protocol (or ``ws``), in this event loop, on a free
    loopback port (yielded) until the block ends; ``config_options`` go to uvicorn's Config."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, ws=ws, lifespan="off", log_config=None, log_level="warning", **config_options)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


def flags_doc(strict_rollout: int = 0, strict_enabled: bool = True, shadow: bool = False) -> dict[str, Any]:
    return {
        "version": 2,
        "features": [
            {
                "name": "records.strict", "enabled": strict_enabled, "type": "release", "project": "default",
                "strategies": [{"name": "flexibleRollout", "constraints": [], "parameters": {
                    "rollout": str(strict_rollout), "stickiness": "userId", "groupId": "records.strict"}}],
            },
            {
                "name": "records.shadow", "enabled": shadow, "type": "operational", "project": "default",
                "strategies": [{"name": "flexibleRollout", "constraints": [], "parameters": {
                    "rollout": "100", "stickiness": "userId", "groupId": "records.shadow"}}],
            },
        ],
        "segments": [],
    }


def wait_healthy(proc: subprocess.Popen[bytes], http_url: str, timeout: float, what: str,
                 logs: Callable[[], str]) -> None:
    """Poll ``http_url``/healthz until it answers 200; RuntimeError (with ``logs()``) if the
    process exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{logs()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{http_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer /healthz within {timeout} s:\n{logs()}")


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status (0 for a process never started)."""
    if proc is None:
        return 0
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def write_guard_summaries(path: Path, strict_close: int, connections: int = 30) -> None:
    """Connection summaries as the service writes them, for the guard: ``connections`` per
    cohort, all closed a moment ago; strict ones with ``strict_close``, lenient ones with 1000."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
    from canaryws.adapters.telemetry.records import RecordsTelemetry
    from canaryws.core.summary import END_CLOSED, ConnectionSummary

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(path)))
    telemetry = RecordsTelemetry(provider, MeterProvider())
    now = time.time_ns()
    for i in range(2 * connections):
        strategy = "strict" if i % 2 else "lenient"
        summary = ConnectionSummary(f"conn-{i}", f"client-{i}", strategy, 1, False, "rev", 0.5,
                                    end=END_CLOSED, close_code=strict_close if strategy == "strict" else 1000)
        summary.batches = summary.records = summary.accepted = 6
        summary.latency[10] = 6
        telemetry.emit_summary(summary, now - 2_000_000_000, now - 1_000_000_000, None)
    provider.shutdown()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class LoopbackUrls:
    """``http_url`` and ``ws_url`` of something listening on 127.0.0.1:``port``."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/records"


# Every test client connects from 127.0.0.1: a fleet of many sources squeezed into one. The
# handshake rates (per source address and per process, docs/contract.md "Limits") would turn
# the suite's cohort sweeps of thousands of client ids into minutes of 429s, so a Service lifts
# them unless its test sets them (tests/integration/test_hostile_clients.py tests the defaults).
FLEET_ON_LOOPBACK = {"CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "0", "CANARYWS_MAX_HANDSHAKES_PER_SECOND": "0"}


class Service(LoopbackUrls):
    """One ``canaryws serve`` subprocess with its own flags file and data dir."""

    def __init__(self, root: Path, flags: dict[str, Any] | str | None = None,
                 env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> None:
        self.root = root
        self.flags_path = root / "flags" / "features.json"
        self.data_dir = root / "data"
        self.log_path = root / "service.log"
        self.flags_path.parent.mkdir(parents=True, exist_ok=True)
        self.write_flags(flags if flags is not None else flags_doc())
        self.port = free_port()
        self.env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", "PYTHONUNBUFFERED": "1", **FLEET_ON_LOOPBACK,
                    **(env or {})}
        for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            if env is None or var not in env:
                self.env.pop(var, None)
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._tokens: TokenAuthority | None = None

    # -- lifecycle -------------------------------------------------------------
    def command(self) -> list[str]:
        return [sys.executable, "-m", "canaryws", "serve", "--port", str(self.port),
                "--flags", str(self.flags_path), "--data-dir", str(self.data_dir), *self.extra_args]

    def start(self, timeout: float = 30.0) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.root, env=self.env, stdout=log, stderr=log)
        wait_healthy(self.proc, self.http_url, timeout, "service", self.logs)
        return self

    def stop(self, timeout: float = 15.0) -> int:
        return terminate(self.proc, timeout)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------
    def token(self, client_id: str) -> str:
        if self._tokens is None:
            self._tokens = TokenAuthority.from_data_dir(self.data_dir)
        return self._tokens.issue(client_id)

    def get(self, path: str, *, admin: bool = False) -> httpx.Response:
        """GET ``path``; with ``admin``, sending the admin credential (``/readyz`` then shows
        its details: paths, URLs, error text)."""
        headers = {"Authorization": f"Bearer {self.admin_key()}"} if admin else None
        return httpx.get(f"{self.http_url}{path}", headers=headers, timeout=5)

    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def write_flags(self, flags: dict[str, Any] | str) -> None:
        text = flags if isinstance(flags, str) else json.dumps(flags, indent=2)
        write_atomic(self.flags_path, text)

    def spans(self) -> list[dict[str, Any]]:
        path = self.data_dir / "traces.jsonl"
        return list(read_otlp_json_lines(path)) if path.exists() else []

    def wait_for_spans(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0) -> list[
            dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def wait_for_revision(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.get("/readyz", admin=True).json()["flags"]
            if predicate(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    @contextlib.asynccontextmanager
    async def client(self, client_id: str, **kwargs: Any) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
        """A connected client and its welcome frame."""
        headers = {"Authorization": f"Bearer {self.token(client_id)}", **kwargs.pop("additional_headers", {})}
        async with connect(self.ws_url, additional_headers=headers, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                           open_timeout=10, **kwargs) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            yield ws, welcome


async def cohorts_of(service: Service, client_ids: list[str], concurrency: int = 50) -> dict[str, str]:
    """Connect each client once (``concurrency`` at a time); its strategy from the welcome frame."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, str] = {}

    async def one(cid: str) -> None:
        async with sem, service.client(cid) as (_, welcome):
            out[cid] = welcome["cohort"]["strategy"]

    await asyncio.gather(*(one(c) for c in client_ids))
    return out


async def send_batch(ws: ClientConnection, batch_id: str, records: list[Any]) -> list[dict[str, Any]]:
    """Send a batch; return every frame up to and including its result (cohort frames first)."""
    await ws.send(json.dumps({"type": "batch", "id": batch_id, "records": records}))
    frames = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        frames.append(frame)
        if frame.get("type") in ("result", "error") and frame.get("id") == batch_id:
            return frames


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(re.search(rf'[{{,]{re.escape(k)}="{re.escape(v)}"', line) for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``canaryws ARGS...`` as a subprocess, as an operator runs it (``env`` on top of ours)."""
    return subprocess.run([sys.executable, "-m", "canaryws", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def json_log_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log records in a command's stderr."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def records_with_blanks(n: int) -> list[Any]:
    """A batch with good values and an empty and a blank record: lenient skips, strict rejects."""
    return ["ok", f" v{n} ", "", "  "]


@dataclass
class ClientRun:
    """What one simulated client saw."""

    client_id: str
    strategies: list[str] = field(default_factory=list)  # per connection, from the welcome frame
    results: int = 0
    gave_up: int = 0  # connections it closed with an application error code
    cohort_frames: list[dict[str, Any]] = field(default_factory=list)


async def run_client(
    service: Service,
    client_id: str,
    *,
    batches: int,
    records: Callable[[int], list[Any]],
    give_up_on_rejection: bool = False,
    give_up_code: int = 4400,
    attempts: int = 1,
    interval: float = 0.02,
    drop_after: int | None = None,
    stay_open: asyncio.Event | None = None,
) -> ClientRun:
    """A canary client: sends ``batches`` batches of ``records(n)`` on a connection.

    - ``give_up_on_rejection``: on a result with rejections the client closes with
      ``give_up_code`` and reconnects, at most ``attempts`` connections in all;
    - ``drop_after``: after that many batches the client aborts the TCP connection (no
      close frame: the server sees 1006), as a flaky network would;
    - ``stay_open``: after its batches the client keeps sending one batch every
      ``interval`` until the event is set, then closes normally.
    """
    run = ClientRun(client_id)
    for _attempt in range(attempts):
        async with service.client(client_id) as (ws, welcome):
            run.strategies.append(welcome["cohort"]["strategy"])
            n = 0
            gave_up = False
            while n < batches or (stay_open is not None and not stay_open.is_set()):
                if drop_after is not None and n >= drop_after:
                    ws.transport.abort()
                    return run
                # a batch id unique per connection: with a sink, an id the client used before is a
                # replay of its first outcome, not a batch processed (and counted) again
                frames = await send_batch(ws, f"{client_id}-{welcome['connection_id'][:12]}-{n}", records(n))
                n += 1
                run.cohort_frames.extend(f for f in frames if f["type"] == "cohort")
                result = frames[-1]
                run.results += result["type"] == "result"
                if give_up_on_rejection and result.get("rejected"):
                    await ws.close(give_up_code, "gave up: records rejected")
                    run.gave_up += 1
                    gave_up = True
                    break
                await asyncio.sleep(interval)
            if not gave_up:
                return run
        await asyncio.sleep(0.05)
    return run


REPO = Path(__file__).resolve().parent.parent
UNLEASH_DEPLOY = REPO / "deploy" / "unleash"


class UnleashServer:
    """A real unleash-server started with ``deploy/unleash/up`` on its own port, database
    and state dir; driven through its Admin API."""

    def __init__(self, root: Path) -> None:
        self.state_dir = root / "unleash-state"
        self.port = free_port()
        self.db = f"canaryws_test_{os.getpid()}_{self.port}"
        self.env = {**os.environ, "UNLEASH_STATE_DIR": str(self.state_dir), "UNLEASH_PORT": str(self.port),
                    "UNLEASH_DB": self.db, "CANARYWS_FLAGS": str(REPO / "flags" / "features.json")}
        self.values: dict[str, str] = {}

    def up(self) -> UnleashServer:
        done = subprocess.run([str(UNLEASH_DEPLOY / "up")], env=self.env, capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"deploy/unleash/up failed ({done.returncode}):\n{done.stderr[-4000:]}")
        self.values = dict(line.split("=", 1) for line in done.stdout.strip().splitlines() if "=" in line)
        return self

    def down(self, purge: bool = False) -> None:
        subprocess.run([str(UNLEASH_DEPLOY / "down"), *(["--purge"] if purge else [])], env=self.env,
                       capture_output=True, text=True, timeout=120, check=True)

    @property
    def url(self) -> str:
        return self.values["UNLEASH_URL"]

    @property
    def service_env(self) -> dict[str, str]:
        """What ``canaryws serve`` needs to take its flags from this server."""
        return {"UNLEASH_URL": self.url, "UNLEASH_API_TOKEN": self.values["UNLEASH_API_TOKEN"],
                "UNLEASH_ENVIRONMENT": self.values["UNLEASH_ENVIRONMENT"]}

    @property
    def admin_env(self) -> dict[str, str]:
        return {**self.service_env, "UNLEASH_ADMIN_TOKEN": self.values["UNLEASH_ADMIN_TOKEN"]}

    def _admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/admin{path}", json=body, timeout=10,
                                 headers={"Authorization": self.values["UNLEASH_ADMIN_TOKEN"]})
        response.raise_for_status()
        return response

    def _feature_path(self, flag: str) -> str:
        return f"/projects/default/features/{flag}/environments/{self.values['UNLEASH_ENVIRONMENT']}"

    def set_enabled(self, flag: str, enabled: bool) -> None:
        self._admin("POST", f"{self._feature_path(flag)}/{'on' if enabled else 'off'}")
        self._await_client_api(flag, lambda f: f["enabled"] is enabled)

    def set_rollout(self, flag: str, percent: int) -> None:
        strategies = self._admin("GET", f"{self._feature_path(flag)}/strategies").json()
        (strategy,) = [s for s in strategies if s["name"] == "flexibleRollout"]
        params = {**strategy["parameters"], "rollout": str(percent)}
        self._admin("PUT", f"{self._feature_path(flag)}/strategies/{strategy['id']}",
                    {"name": "flexibleRollout", "parameters": params, "constraints": strategy.get("constraints", [])})
        self._await_client_api(flag, lambda f: any(
            st["name"] == "flexibleRollout" and str(st["parameters"].get("rollout")) == str(percent)
            for st in f["strategies"]))

    def _await_client_api(self, flag: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> None:
        """The client API serves a change about a second after the Admin API takes it."""
        deadline = time.monotonic() + timeout
        while True:
            feature = next(f for f in self.client_features()["features"] if f["name"] == flag)
            if predicate(feature):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the client API never showed the change to {flag}: {feature}")
            time.sleep(0.1)

    def client_features(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/client/features", timeout=10,
                             headers={"Authorization": self.values["UNLEASH_API_TOKEN"]})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


# -- shutdown ---------------------------------------------------------------------


def send_signal(service: Service, sig: int = signal.SIGTERM) -> float:
    """Send ``sig`` to the service process; returns the ``time.monotonic()`` it was sent."""
    assert service.proc is not None and service.proc.poll() is None, "the service is not running"
    service.proc.send_signal(sig)
    return time.monotonic()


def wait_exit(service: Service, timeout: float) -> int | None:
    """The service's exit status, or None if it is still running after ``timeout`` seconds
    (it is then killed, so that the test can report it)."""
    assert service.proc is not None
    try:
        return service.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
        return None
