"""The persist step as a client and an operator see it, against a real service: contract v2's
``durable`` and ``replay``, v1 kept as it was, replays across connections and cohort changes,
the duplicate-id window, an unavailable sink (v2: ``unavailable`` frames, v1: close 1013,
``/readyz``, ``/metrics``) and its recovery, back-pressure on a slow sink, ``CANARYWS_SINK=none``,
and start-up refusals. The kill-and-restart and database-outage runs at scale are in
test_sink_durability.py; the adapters themselves in test_sink_store.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from canaryws.adapters.records.loop import AHEAD
from harness import PROTOCOL, Service, flags_doc, free_port, metric_value, send_batch
from private_postgres import fresh_database, psql

pytestmark = pytest.mark.integration

V2 = "canaryws.records.v2"
RECORDS: list[Any] = [" a ", "", None, "b\x00", 5]


async def v2_client(service: Service, client_id: str) -> Any:
    return connect(service.ws_url, additional_headers={"Authorization": f"Bearer {service.token(client_id)}"},
                   subprotocols=[V2, PROTOCOL], open_timeout=10)  # type: ignore[list-item]


async def recv_json(ws: Any, timeout: float = 10) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


# -- contract v2 with the embedded default sink (SQLite) ---------------------------------------------


def test_v2_results_are_durable_and_a_resend_elsewhere_is_the_first_outcome_replayed(tmp_path: Path) -> None:
    """With the default sink, a v2 client's welcome and results say ``durable``; the same batch
    id sent again on another connection, after the client's cohort changed and with other
    records, is answered with the outcome committed the first time (``replay: true``), and is
    neither processed nor stored again. On the same connection the duplicate-id window still
    answers ``duplicate_id``."""
    with Service(tmp_path, flags_doc(strict_rollout=0)) as service:  # everyone lenient

        async def scenario() -> None:
            async with await v2_client(service, "tenant-1") as ws:
                assert ws.subprotocol == V2
                welcome = await recv_json(ws)
                assert (welcome["protocol"], welcome["durable"], welcome["cohort"]["strategy"]) == \
                    (V2, True, "lenient")
                (first,) = await send_batch(ws, "b-1", RECORDS)
                assert (first["durable"], first["replay"], first["strategy"]) == (True, False, "lenient")
                (dup,) = await send_batch(ws, "b-1", RECORDS)
                assert (dup["type"], dup["code"]) == ("error", "duplicate_id")

            revision = service.get("/readyz").json()["flags"]["revision"]
            service.write_flags(flags_doc(strict_rollout=100))  # tenant-1 is strict from now on
            service.wait_for_revision(lambda st: st["revision"] != revision and st["state"] == "ok")
            async with await v2_client(service, "tenant-1") as ws:
                assert (await recv_json(ws))["cohort"]["strategy"] == "strict"
                (again,) = await send_batch(ws, "b-1", ["other", "records"])
                assert again["replay"] is True and again["durable"] is True
                assert {k: again[k] for k in ("strategy", "accepted", "skipped", "rejected")} == \
                    {k: first[k] for k in ("strategy", "accepted", "skipped", "rejected")}
                (fresh,) = await send_batch(ws, "b-2", RECORDS)
                assert (fresh["strategy"], fresh["replay"]) == ("strict", False)

        asyncio.run(scenario())
        sink = service.data_dir / "sink.sqlite3"
        assert sqlite_rows(sink, "SELECT batch_id, strategy, accepted_count FROM canaryws_batches ORDER BY seq") == \
            [("b-1", "lenient", 2), ("b-2", "strict", 1)]
        # a NUL in an accepted value is U+FFFD downstream (docs/sink.md); the answers keep it
        assert sqlite_rows(sink, "SELECT batch_id, record_index, value FROM canaryws_records ORDER BY batch_seq, "
                                 "record_index") == [("b-1", 0, "a"), ("b-1", 3, "b\ufffd"), ("b-2", 0, "a")]
        replayed = metric_value(service.get("/metrics").text, "canaryws_sink_batches_total", sink="sqlite",
                                outcome="replayed")
        assert replayed == 1


def test_pipelined_batches_are_answered_in_the_order_they_were_sent(tmp_path: Path) -> None:
    """A client that sends 40 frames without waiting, a frame that is not JSON and a repeated id
    among them. The service reads ahead while batches commit (at most AHEAD waiting per
    connection) and answers every frame, each once, in the order sent: the error frames after
    the answers of the batches before them. Each batch is committed once, in order."""
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        frames: list[str] = []
        expected: list[tuple[str, str]] = []
        for n in range(40):
            if n == 7:
                frames.append("not json")
                expected.append(("error", "invalid_json"))
            elif n == 19:
                frames.append(json.dumps({"type": "batch", "id": "p-3", "records": RECORDS}))
                expected.append(("error", "duplicate_id"))
            else:
                frames.append(json.dumps({"type": "batch", "id": f"p-{n}", "records": RECORDS}))
                expected.append(("result", f"p-{n}"))

        async def scenario() -> list[dict[str, Any]]:
            async with await v2_client(service, "pipeliner") as ws:
                await recv_json(ws)
                for frame in frames:
                    await ws.send(frame)
                return [await recv_json(ws, 30) for _ in frames]

        answers = asyncio.run(scenario())
        got = [(a["type"], a["id"] if a["type"] == "result" else a["code"]) for a in answers]
        assert got == expected
        sink = service.data_dir / "sink.sqlite3"
        ids = [row[0] for row in sqlite_rows(sink, "SELECT batch_id FROM canaryws_batches ORDER BY seq")]
        assert ids == [i for kind, i in expected if kind == "result"]


def test_a_v1_client_gets_the_frames_it_always_got(tmp_path: Path) -> None:
    """A client offering only v1 (or nothing) gets v1 frames, without ``durable`` or ``replay``,
    also for a replay; its batches are committed all the same."""
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:

        async def scenario() -> None:
            async with service.client("old-1") as (ws, welcome):
                assert welcome["protocol"] == PROTOCOL and "durable" not in welcome
                (result,) = await send_batch(ws, "v1-1", RECORDS)
                assert set(result) == {"type", "id", "strategy", "strategy_version", "accepted", "skipped",
                                       "rejected"}
            async with connect(service.ws_url, additional_headers={
                    "Authorization": f"Bearer {service.token('old-1')}"}, open_timeout=10) as bare:
                assert bare.subprotocol is None
                assert "durable" not in await recv_json(bare)
                (replayed,) = await send_batch(bare, "v1-1", RECORDS)
                assert replayed == result

        asyncio.run(scenario())
        assert sqlite_rows(service.data_dir / "sink.sqlite3", "SELECT count(*) FROM canaryws_batches") == [(1,)]


def test_without_a_sink_nothing_is_stored_and_v2_says_not_durable(tmp_path: Path) -> None:
    """``CANARYWS_SINK=none``: answers as before issue 25, ``durable: false`` in v2, no sink file,
    and ``/readyz`` has no sink part."""
    with Service(tmp_path, flags_doc(strict_rollout=100), env={"CANARYWS_SINK": "none"}) as service:

        async def scenario() -> None:
            async with await v2_client(service, "t") as ws:
                assert (await recv_json(ws))["durable"] is False
                (result,) = await send_batch(ws, "n-1", RECORDS)
                assert (result["durable"], result["replay"]) == (False, False)
            async with await v2_client(service, "t") as ws:
                await recv_json(ws)
                (again,) = await send_batch(ws, "n-1", RECORDS)
                assert again["replay"] is False  # nothing remembered across connections without a sink

        asyncio.run(scenario())
        assert not (service.data_dir / "sink.sqlite3").exists()
        assert "sink" not in service.get("/readyz").json()
        assert "canaryws_sink_up" not in service.get("/metrics").text


# -- an unavailable sink, and its recovery ------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database("canaryws_sink_service") as url:
        yield url


def cut_off(url: str, database: str) -> None:
    """New connections to ``database`` refused, existing ones ended: the sink is down for the service."""
    psql(url.rsplit("/", 1)[0] + "/postgres",
         f"ALTER DATABASE {database} ALLOW_CONNECTIONS false; SELECT pg_terminate_backend(pid) "
         f"FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid();")


def restore(url: str, database: str) -> None:
    psql(url.rsplit("/", 1)[0] + "/postgres", f"ALTER DATABASE {database} ALLOW_CONNECTIONS true;")


def test_an_unavailable_sink_answers_unavailable_then_recovers_by_itself(tmp_path: Path, database: str) -> None:
    """PostgreSQL refusing the service's connections: a v2 batch gets ``unavailable`` with
    ``retry_after_ms`` (the connection stays open), a v1 connection is closed with 1013, nothing
    of those batches is written, ``/readyz`` says ``unavailable`` (200; 503 with
    ``?require=sink``) and ``canaryws_sink_up`` is 0. Once the database takes connections again,
    the sink is ``ok`` within a few seconds and the same batch is committed: no restart."""
    name = database.rsplit("/", 1)[1]
    with Service(tmp_path, flags_doc(strict_rollout=100), env={"CANARYWS_SINK": database}) as service:
        assert service.get("/readyz").json()["sink"]["state"] == "ok"
        cut_off(database, name)

        async def during() -> None:
            async with await v2_client(service, "t-2") as ws:
                await recv_json(ws)
                (answer,) = await send_batch(ws, "u-1", RECORDS)
                assert (answer["type"], answer["code"], answer["id"]) == ("error", "unavailable", "u-1"), answer
                assert answer["retry_after_ms"] == 1000
                (still,) = await send_batch(ws, "u-2", RECORDS)  # the connection stays open
                assert still["code"] == "unavailable"
            async with service.client("t-1") as (old, _):
                await old.send(json.dumps({"type": "batch", "id": "v1-u", "records": RECORDS}))
                with pytest.raises(ConnectionClosed) as closed:
                    await recv_json(old)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

        asyncio.run(during())
        ready = service.get("/readyz")
        assert ready.status_code == 200 and ready.json()["sink"]["state"] == "unavailable"
        assert "last_error" not in ready.json()["sink"]  # raw error text: for the admin credential only
        assert service.get("/readyz", admin=True).json()["sink"]["last_error"]
        assert service.get("/readyz?require=sink").status_code == 503
        metrics = service.get("/metrics").text
        assert metric_value(metrics, "canaryws_sink_up", sink="postgresql") == 0
        assert metric_value(metrics, "canaryws_sink_batches_total", sink="postgresql", outcome="unavailable") >= 3
        assert metric_value(metrics, "canaryws_errors_total", strategy="strict", code="unavailable") >= 3

        restore(database, name)
        wait_until(lambda: service.get("/readyz").json()["sink"]["state"] == "ok", 15, "the sink's recovery")
        assert service.get("/readyz?require=sink").status_code == 200

        async def after() -> None:
            async with await v2_client(service, "t-2") as ws:
                await recv_json(ws)
                (result,) = await send_batch(ws, "u-1", RECORDS)
                assert (result["type"], result["durable"], result["replay"]) == ("result", True, False)

        asyncio.run(after())
        assert psql(database, "SELECT string_agg(batch_id, ',' ORDER BY batch_id) FROM canaryws_batches").strip() \
            == "u-1"
        logs = service.logs()
        assert "sink unavailable" in logs and "sink available again" in logs


def test_a_slow_sink_holds_each_connection_at_its_bound_then_answers_unavailable(tmp_path: Path,
                                                                                 database: str) -> None:
    """Back-pressure: while the sink's table is locked, each of 3 clients that pipeline 10 batches has
    AHEAD (8) of them waiting on the sink (``canaryws_sink_pending`` is 8 per connection: the rest
    stay unread in the socket buffers); after ``CANARYWS_SINK_TIMEOUT`` the waiting batches are answered
    ``unavailable``; once the lock is gone every batch has had exactly one answer."""
    env = {"CANARYWS_SINK": database, "CANARYWS_SINK_TIMEOUT": "2"}
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        release = threading.Event()
        locked = threading.Event()

        def hold_lock() -> None:
            script = "BEGIN; LOCK TABLE canaryws_idempotency IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
            proc = subprocess.Popen(["psql", "-X", "-q", "-At", database], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(script + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "locked"
            locked.set()
            release.wait(30)
            proc.stdin.write("ROLLBACK;\n")
            proc.stdin.close()
            proc.wait(10)

        holder = threading.Thread(target=hold_lock, daemon=True)
        holder.start()
        assert locked.wait(15)

        async def scenario() -> list[dict[str, Any]]:
            clients = [await v2_client(service, f"p-{i}") for i in range(3)]
            sockets = [await c.__aenter__() for c in clients]
            try:
                for ws in sockets:
                    await recv_json(ws)
                    for n in range(10):
                        await ws.send(json.dumps({"type": "batch", "id": f"s-{n}", "records": RECORDS}))
                await asyncio.sleep(1.0)
                pending = metric_value(service.get("/metrics").text, "canaryws_sink_pending", sink="postgresql")
                assert pending == 3 * AHEAD, pending  # AHEAD batches per connection, not all 30
                await asyncio.sleep(2.0)  # past CANARYWS_SINK_TIMEOUT: the waiting batches are answered unavailable
                release.set()
                answers: list[dict[str, Any]] = []
                for ws in sockets:
                    answers += [await recv_json(ws, 30) for _ in range(10)]
                return answers
            finally:
                release.set()
                for c in clients:
                    await c.__aexit__(None, None, None)

        answers = asyncio.run(scenario())
        holder.join(15)
        assert len(answers) == 30
        assert {(a["type"], a.get("code")) for a in answers} <= {("error", "unavailable"), ("result", None)}
        assert any(a.get("code") == "unavailable" for a in answers)


# -- start-up ---------------------------------------------------------------------------------------


def serve_once(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc()))
    return subprocess.run([sys.executable, "-m", "canaryws", "serve", "--port", str(free_port()), "--flags",
                           str(flags), "--data-dir", str(tmp_path / "data")], env={**_base_env(), **env},
                          capture_output=True, text=True, timeout=60)


def _base_env() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if not k.startswith(("CANARYWS_", "OTEL_", "UNLEASH_"))}


def test_a_sink_setting_that_names_no_sink_stops_the_start(tmp_path: Path) -> None:
    """``CANARYWS_SINK=mysql://…``: the service does not start and says what it accepts, without
    the URL's password."""
    done = serve_once(tmp_path, {"CANARYWS_SINK": "mysql://app:hunter2@db/x"})
    assert done.returncode != 0
    assert "cannot start: CANARYWS_SINK" in done.stderr and "postgresql://" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_a_schema_newer_than_the_release_stops_the_start(tmp_path: Path, database: str) -> None:
    """A database whose schema a newer release migrated (version above this release's latest):
    the service refuses to start and says how to migrate down."""
    from canaryws.adapters.sink.migrations import LATEST
    migrated = subprocess.run([sys.executable, "-m", "canaryws", "sink", "migrate", "--sink", database],
                              capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    psql(database, f"UPDATE canaryws_schema_version SET version = {LATEST + 1};")
    done = serve_once(tmp_path, {"CANARYWS_SINK": database})
    assert done.returncode != 0
    assert "cannot start:" in done.stderr and f"canaryws sink migrate --to {LATEST}" in done.stderr, done.stderr[-3000:]


def test_the_sink_password_never_reaches_the_logs(tmp_path: Path) -> None:
    """A PostgreSQL URL with a password that cannot be reached: the service starts with the sink
    unavailable, and neither its log nor ``/readyz`` (admin included) shows the password."""
    url = f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{free_port()}/nothing"
    with Service(tmp_path, flags_doc(), env={"CANARYWS_SINK": url}) as service:
        wait_until(lambda: service.get("/readyz").json()["sink"]["state"] == "unavailable", 15, "unavailable")
        time.sleep(1.5)  # a ping or two more
        shown = service.get("/readyz", admin=True).text + service.logs()
        assert "s3cr3t-pw" not in shown
