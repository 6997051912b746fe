"""``canaryws probe`` against a real ``canaryws serve`` (healthy, with its flags moving) and against
small broken stub servers that speak the handshake and welcome correctly but answer wrongly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from canaryws.adapters.auth import TokenAuthority
from canaryws.core.strategies import STRICT
from harness import PROTOCOL, Service, flags_doc, free_port, json_log_lines, metric_value, run_cli

pytestmark = pytest.mark.integration

KINDS = ("contract_violation", "wrong_outcome", "unexpected_cohort", "refused_handshake", "timeout",
         "connection_error", "unknown_version", "empty_cohort")
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class ProbeProcess:
    """``canaryws probe ARGS`` as a subprocess with its metrics on a free port."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.stderr_path = tmp_path / f"probe-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "canaryws", "probe", *args, "--metrics-port", str(self.port)],
            stdout=subprocess.PIPE, stderr=self.stderr_path.open("w"), text=True)

    def scrape(self) -> str:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        return ""

    def scrape_until(self, done: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the probe exited {self.proc.returncode}:\n{self.stderr()}"
            text = self.scrape()
            if text and done(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"not seen within {timeout} s:\n{text}\n--- stderr\n{self.stderr()[-3000:]}")

    def stop(self, timeout: float = 20) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def failures(text: str, kind: str) -> float:
    return metric_value(text, "canaryws_probe_failures_total", kind=kind)


def rounds(text: str, result: str) -> float:
    return metric_value(text, "canaryws_probe_rounds_total", result=result)


def probe_once(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli("probe", "--once", *args, timeout=timeout)


def assert_no_token_in(text: str, *tokens: str) -> None:
    assert not JWT.search(text), "a JWT reached the output"
    for token in tokens:
        assert token not in text


# -- a real service -----------------------------------------------------------------------------


def test_a_healthy_service_passes_with_issued_identities_in_both_cohorts(tmp_path: Path) -> None:
    """--data-dir: the probe issues probe-<n> tokens, finds one identity per strategy, every golden
    batch matches, exit 0; its metrics show the round while it lingers."""
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        probe = ProbeProcess(tmp_path, "--url", service.ws_url, "--data-dir", str(service.data_dir), "--once",
                             "--metrics-linger", "60")
        try:
            text = probe.scrape_until(lambda t: rounds(t, "success") + rounds(t, "failure") >= 1)
        finally:
            status, out = probe.stop()
        service_log = service.logs()
    assert status == 0, out + probe.stderr()
    assert rounds(text, "success") == 1 and rounds(text, "failure") == 0, text
    for kind in KINDS:  # every kind exported from 0
        assert re.search(rf'^canaryws_probe_failures_total\{{kind="{kind}"\}} 0\.0$', text, re.M), kind
    for strategy in ("strict", "lenient"):
        assert metric_value(text, "canaryws_probe_cohort_identities", strategy=strategy) == 1, text
        assert metric_value(text, "canaryws_probe_batch_seconds_count", strategy=strategy) == 4, text
    assert metric_value(text, "canaryws_probe_handshake_seconds_count") == 2
    assert metric_value(text, "canaryws_probe_last_success_timestamp_seconds") > time.time() - 120
    assert out.startswith(f"probe round against {service.ws_url}: PASSED"), out
    assert re.search(r"probe-\d+\s+strict@1 .* 4 golden batches", out), out
    assert re.search(r"probe-\d+\s+lenient@1 .* 4 golden batches", out), out
    logs = json_log_lines(probe.stderr())
    summary = [r for r in logs if r["message"] == "probe round"]
    assert summary and summary[0]["result"] == "success" and summary[0]["identities"] == {"lenient": 1, "strict": 1}
    assert_no_token_in(probe.stderr() + out + service_log)
    assert "probe-0" in service_log  # the service saw the probe's own client ids


def test_a_token_file_probes_each_token_and_learns_its_cohort(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        tokens = [service.token(f"watcher-{i}") for i in range(3)]
        token_file = tmp_path / "tokens"
        token_file.write_text("# the probe's identities\n" + "\n".join(tokens) + "\n\n")
        done = probe_once("--url", service.ws_url, "--token-file", str(token_file))
    assert done.returncode == 0, done.stdout + done.stderr
    for i in range(3):
        assert re.search(rf"watcher-{i}\s+strict@1 ", done.stdout), done.stdout
    # rollout 100 %: nobody is lenient; reported, and not a failure without --expect-cohort
    assert "cohort lenient: empty" in done.stdout
    assert_no_token_in(done.stdout + done.stderr, *tokens)


def test_an_expected_cohort_that_is_empty_fails_the_round(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=0)) as service:
        done = probe_once("--url", service.ws_url, "--data-dir", str(service.data_dir), "--expect-cohort", "strict",
                          "--search-tries", "20")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "empty_cohort 1" in done.stdout, done.stdout
    empty = [r for r in json_log_lines(done.stderr) if r["message"] == "cohort empty"]
    assert [r["strategy"] for r in empty] == ["strict"] and empty[0]["tries"] == 20


def test_a_bad_token_is_a_refused_handshake(tmp_path: Path) -> None:
    forged = TokenAuthority(b"not-the-service-secret-not-the-service-secret").issue("intruder")
    token_file = tmp_path / "tokens"
    token_file.write_text(forged + "\n")
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        done = probe_once("--url", service.ws_url, "--token-file", str(token_file))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused_handshake 1" in done.stdout
    (line,) = [r for r in json_log_lines(done.stderr) if r["message"] == "probe failure"]
    assert line["kind"] == "refused_handshake" and "HTTP 401 invalid_token" in line["detail"], line
    assert line["identity"] == "token-file line 1"
    assert_no_token_in(done.stdout + done.stderr, forged)


def test_flags_moving_the_probes_cohort_between_rounds_is_unexpected_cohort(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        probe = ProbeProcess(tmp_path, "--url", service.ws_url, "--data-dir", str(service.data_dir),
                             "--interval", "0.5")
        try:
            probe.scrape_until(lambda t: rounds(t, "success") >= 1)
            service.write_flags(flags_doc(strict_rollout=0))  # the strict identity moves to lenient
            text = probe.scrape_until(lambda t: failures(t, "unexpected_cohort") >= 1 and rounds(t, "failure") >= 1,
                                      timeout=30)
        finally:
            status, _ = probe.stop()
    assert status == 0, probe.stderr()  # SIGTERM ends it normally
    assert rounds(text, "failure") >= 1
    moved = [r for r in json_log_lines(probe.stderr()) if r.get("kind") == "unexpected_cohort"]
    assert moved and "in lenient@1, was in strict@1" in moved[0]["detail"], moved
    assert sum(failures(text, k) for k in KINDS) == failures(text, "unexpected_cohort")


def test_a_data_dir_without_the_services_secret_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-data-dir"
    empty.mkdir()
    done = probe_once("--url", "ws://127.0.0.1:9/records", "--data-dir", str(empty))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds no secret.key" in done.stderr
    assert list(empty.iterdir()) == []  # nothing written


# -- broken stub servers ------------------------------------------------------------------------

WELCOME = {"type": "welcome", "protocol": PROTOCOL, "connection_id": "stub-1", "client_id": "stub-client",
           "cohort": {"strategy": "strict", "strategy_version": 1, "shadow": False, "flags_revision": "stub"}}


def strict_answer(batch: dict[str, Any]) -> dict[str, Any]:
    out = STRICT.process(batch["records"], 4096)
    return {"type": "result", "id": batch["id"], "strategy": "strict", "strategy_version": 1,
            "accepted": [{"index": i, "value": v} for i, v in out.accepted], "skipped": [],
            "rejected": [{"index": i, "code": c} for i, c in out.rejected]}


def wrong_outcome(batch: dict[str, Any]) -> dict[str, Any] | None:
    """A well-formed result with one reason changed (empty is called blank)."""
    answer = strict_answer(batch)
    answer["rejected"] = [{**r, "code": "blank"} if r["code"] == "empty" else r for r in answer["rejected"]]
    return answer


def malformed(batch: dict[str, Any]) -> dict[str, Any] | None:
    """A result that does not account for every index (the first accepted record is missing)."""
    answer = strict_answer(batch)
    answer["accepted"] = answer["accepted"][1:]
    return answer


def silent(batch: dict[str, Any]) -> dict[str, Any] | None:
    return None


def strict_v2(batch: dict[str, Any]) -> dict[str, Any] | None:
    """A strict v2 the golden corpus does not know (its welcome says v2 too)."""
    return {**strict_answer(batch), "strategy_version": 2}


@contextlib.contextmanager
def stub_server(answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> Iterator[str]:
    """A WebSocket server on a free port that accepts any token, sends a correct welcome, and
    answers each batch with ``answer(batch)`` (None: never)."""
    port = free_port()
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None
    loop = asyncio.new_event_loop()

    version = 2 if answer is strict_v2 else 1

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({**WELCOME, "cohort": {**WELCOME["cohort"], "strategy_version": version}}))
        async for frame in ws:
            reply = answer(json.loads(frame))
            if reply is not None:
                await ws.send(json.dumps(reply))

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        async with serve(handler, "127.0.0.1", port, subprotocols=[PROTOCOL]):  # type: ignore[list-item]
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"ws://127.0.0.1:{port}/records"
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


@pytest.mark.parametrize(("answer", "kind", "detail"), [
    (wrong_outcome, "wrong_outcome", "index 6: expected rejected empty, got rejected blank"),
    (malformed, "contract_violation", ""),
    (silent, "timeout", "no answer within 1 s"),
    (strict_v2, "unknown_version", "no expectation for strict@2"),
], ids=["wrong-outcome", "malformed-result", "never-answers", "unknown-version"])
def test_a_broken_server_fails_the_round_with_its_kind(tmp_path: Path, answer: Callable[[dict[str, Any]], Any],
                                                        kind: str, detail: str) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("stub-token-accepted-by-anything\n")
    with stub_server(answer) as url:
        done = probe_once("--url", url, "--token-file", str(token_file), "--timeout", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout.splitlines()[0]
    lines = [r for r in json_log_lines(done.stderr) if r["message"] == "probe failure"]
    assert lines and {r["kind"] for r in lines} == {kind}, lines
    assert lines[0]["identity"] == "stub-client" and lines[0]["batch"] == "reasons"
    assert detail in lines[0]["detail"], lines[0]
    summary = [r for r in json_log_lines(done.stderr) if r["message"] == "probe round"]
    assert summary[-1]["result"] == "failure" and kind in summary[-1]["failures"]
