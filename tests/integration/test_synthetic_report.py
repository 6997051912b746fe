"""A probe's connection end to end: a token issued with ``--property synthetic=true``, a real
service, real clients; the spans say synthetic, and ``canaryws report`` and ``canaryws guard
--replay`` leave the probe's connection out of the comparison and count it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from canaryws.core.summary import A_SYNTHETIC
from harness import PROTOCOL, Service, flags_doc, json_log_lines, metric_value, run_cli, send_batch

pytestmark = pytest.mark.integration

LINE = "Synthetic connections left out: 1 (strict 1, lenient 0)"


def issue(service: Service, client_id: str, *properties: str) -> str:
    args = [arg for prop in properties for arg in ("--property", prop)]
    done = run_cli("token", "issue", client_id, *args, "--data-dir", str(service.data_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


async def serve_one(service: Service, token: str, batches: int) -> str:
    """Connect with ``token``, send ``batches`` batches, close normally; the connection id."""
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(service.ws_url, additional_headers=headers, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                       open_timeout=10) as ws:
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        for n in range(batches):
            frames = await send_batch(ws, f"b{n}", ["ok", f" v{n} "])
            assert frames[-1]["type"] == "result"
    return str(welcome["connection_id"])


def by_connection(spans: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    return {str(s["attributes"].get("canaryws.connection.id")): s["attributes"] for s in spans if s["name"] == name}


def test_a_probe_connection_is_marked_left_out_of_the_report_and_counted(tmp_path: Path) -> None:
    env = {"OTEL_TRACES_SAMPLER": "always_on"}
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        probe_token = issue(service, "probe-strict-1", "synthetic=true")
        client_token = issue(service, "client-1", "clientVersion=2.4.1")

        async def both() -> tuple[str, str]:
            return (await serve_one(service, probe_token, 3), await serve_one(service, client_token, 4))

        probe, client = asyncio.run(both())
        spans = service.wait_for_spans(lambda spans: {probe, client} <= set(by_connection(spans, "records.connection")))
        metrics = service.get("/metrics").text

    # the service marks the probe's spans, and only the probe's
    connects, summaries = by_connection(spans, "records.connect"), by_connection(spans, "records.connection")
    assert connects[probe].get(A_SYNTHETIC) is True and summaries[probe].get(A_SYNTHETIC) is True
    assert A_SYNTHETIC not in connects[client] and A_SYNTHETIC not in summaries[client]
    batch_marks = [s["attributes"].get(A_SYNTHETIC) for s in spans if s["name"] == "records.batch"]
    assert sorted(batch_marks, key=str) == [None] * 4 + [True] * 3
    assert metric_value(metrics, "canaryws_synthetic_connections_total", strategy="strict") == 1
    assert metric_value(metrics, "canaryws_connections_opened_total", strategy="strict") == 2

    traces = str(service.data_dir / "traces.jsonl")
    done = run_cli("report", "--traces", traces, "--json", "--min-connections", "1", "--min-batches", "1")
    assert done.returncode in (0, 1, 2), done.stderr
    report = json.loads(done.stdout)
    assert report["synthetic"] == {"connections": 1, "strict": 1, "lenient": 0}
    strict = report["cohorts"]["strict"]
    assert (strict["connections"], strict["clients"], strict["batches"]) == (1, 1, 4)  # the client's alone
    assert report["window"]["connections"] == 1

    html = tmp_path / "report.html"
    table = run_cli("report", "--traces", traces, "--html", str(html), env={"COLUMNS": "80"})
    assert table.returncode in (0, 1, 2), table.stderr
    assert LINE in table.stdout
    assert LINE in html.read_text(encoding="utf-8")

    replay = run_cli("guard", "--replay", "--json", "--traces", traces)
    assert replay.returncode == 0, replay.stderr
    last = json.loads(replay.stdout.splitlines()[-1])
    assert last["synthetic"] == {"connections": 1, "strict": 1, "lenient": 0}
    assert last["connections"] == {"strict": 1, "lenient": 0}

    once = run_cli("guard", "--once", "--dry-run", "--traces", traces, "--flags", str(service.flags_path))
    assert once.returncode == 0, once.stderr
    (judged,) = [r for r in json_log_lines(once.stderr) if r.get("message") == "guard judged the evidence"]
    assert judged["synthetic"] == {"connections": 1, "strict": 1, "lenient": 0}
