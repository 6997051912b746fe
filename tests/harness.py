"""Test harness: a real ``canaryws serve`` process on a free port, real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from canaryws.adapters.auth import TokenAuthority
from canaryws.adapters.telemetry.otlp_json_file import read_otlp_json_lines

PROTOCOL = "canaryws.records.v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Service:
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
        self.env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100", "PYTHONUNBUFFERED": "1", **(env or {})}
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http_url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"service did not become healthy:\n{self.logs()}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/records"

    def token(self, client_id: str) -> str:
        if self._tokens is None:
            self._tokens = TokenAuthority.from_data_dir(self.data_dir)
        return self._tokens.issue(client_id)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.http_url}{path}", timeout=5)

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
            status = self.get("/readyz").json()["flags"]
            if predicate(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    @contextlib.asynccontextmanager
    async def client(self, client_id: str, **kwargs: Any) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
        """A connected client and its welcome frame."""
        headers = {"Authorization": f"Bearer {self.token(client_id)}"}
        async with connect(self.ws_url, additional_headers=headers, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                           open_timeout=10, **kwargs) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            yield ws, welcome


async def send_batch(ws: ClientConnection, batch_id: str, records: list[Any]) -> list[dict[str, Any]]:
    """Send a batch; return every frame up to and including its result (cohort frames first)."""
    await ws.send(json.dumps({"type": "batch", "id": batch_id, "records": records}))
    frames = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        frames.append(frame)
        if frame.get("type") in ("result", "error") and frame.get("id") == batch_id:
            return frames
