"""``canaryws serve --workers 2`` as a real process tree: a supervisor that accepts on one
listening socket and two spawned workers it hands the connections to. Connections reach both
workers; SIGTERM drains both (answers, 1012, exit 0); each worker writes its own trace file;
a flags change reaches both; a killed worker is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from canaryws.adapters.telemetry.otlp_json_reader import read_otlp_json_lines
from canaryws.core.summary import A_CLOSE_CODE, A_CONNECTION_ID
from harness import PROTOCOL, Service, flags_doc, run_cli, send_batch, send_signal, wait_exit
from wsraw import CLOSE, TEXT, RawClient, frame

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WORKERS = 2
Client = tuple[ClientConnection, dict[str, Any]]


def workers_service(tmp_path: Path, flags: dict[str, Any] | None = None, *extra: str) -> Service:
    return Service(tmp_path, flags if flags is not None else flags_doc(),
                   extra_args=["--workers", str(WORKERS), *extra])


def wait_for_logs(service: Service, predicate: Callable[[list[dict[str, Any]]], bool],
                  timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = service.log_records()
        if predicate(records):
            return records
        assert time.monotonic() < deadline, f"the log never showed it:\n{service.logs()[-3000:]}"
        time.sleep(0.05)


def serving(records: list[dict[str, Any]]) -> dict[int, int]:
    """{worker: pid} of the workers serving, from the supervisor's lines (the last per worker)."""
    return {r["worker"]: r["pid"] for r in records
            if r.get("logger") == "canaryws.workers" and r["message"] == "worker serving"}


def wait_serving(service: Service) -> dict[int, int]:
    return serving(wait_for_logs(service, lambda records: len(serving(records)) == WORKERS))


def worker_of_connections(service: Service) -> dict[str, tuple[int, int]]:
    """connection id -> (worker, pid), from each worker's "connection accepted" lines."""
    return {r["connection_id"]: (r["worker"], r["pid"]) for r in service.log_records()
            if r["message"] == "connection accepted"}


async def open_clients(service: Service, stack: contextlib.AsyncExitStack, prefix: str, count: int) -> list[Client]:
    """``count`` connections opened at once, kept open by ``stack``."""
    return list(await asyncio.gather(*(stack.enter_async_context(service.client(f"{prefix}-{n}"))
                                       for n in range(count))))


async def open_on_every_worker(service: Service, stack: contextlib.AsyncExitStack, prefix: str,
                               count: int, pids: set[int] | None = None) -> list[Client]:
    """At least ``count`` connections, more (ten at a time) until every worker (or every
    process in ``pids``) holds one: the supervisor hands each connection to the serving worker
    with the fewest (tests/integration/test_workers_balance.py), so a worker that is not
    serving yet (a replacement starting) gets none until it is."""
    wanted = pids if pids is not None else set(wait_serving(service).values())
    clients = await open_clients(service, stack, prefix, count)
    while True:
        owners = worker_of_connections(service)
        if wanted <= {owners[welcome["connection_id"]][1] for _, welcome in clients}:
            return clients
        assert len(clients) < 200, f"200 connections and not every worker got one: {owners}"
        clients += await open_clients(service, stack, f"{prefix}-{len(clients)}", 10)


def trace_files(service: Service) -> dict[int, Path]:
    return {int(p.stem.removeprefix("traces-")): p for p in service.data_dir.glob("traces-*.jsonl")}


def test_connections_are_served_by_both_workers_and_each_writes_its_own_trace_file(tmp_path: Path) -> None:
    service = workers_service(tmp_path)

    async def scenario() -> list[Client]:
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_on_every_worker(service, stack, "many", 40)
            results = await asyncio.gather(*(send_batch(ws, f"b-{n}", [" a ", "", None])
                                             for n, (ws, _) in enumerate(clients)))
            for frames in results:
                assert [f["type"] for f in frames] == ["result"]
                assert frames[0]["accepted"] == [{"index": 0, "value": "a"}]
            return clients

    with service:
        pids = wait_serving(service)
        clients = asyncio.run(scenario())
        owners = worker_of_connections(service)
        by_worker = {k: {cid for cid, (worker, _) in owners.items() if worker == k} for k in pids}
        # Each worker's summaries reach its own file (the batch processor exports every 100 ms).
        files = trace_files(service)

        def summarised(k: int) -> set[str]:
            return {s["attributes"].get(A_CONNECTION_ID) for s in read_otlp_json_lines(files[k])
                    if s["name"] == "records.connection"}

        deadline = time.monotonic() + 10
        while not all(by_worker[k] <= summarised(k) for k in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        status = service.stop()

    assert status == 0, service.logs()[-3000:]
    assert len(clients) >= 40 and {welcome["connection_id"] for _, welcome in clients} == set(owners)
    assert set(pids) == {1, 2} and len(set(pids.values())) == 2, pids
    assert all(by_worker[k] for k in pids), "a worker served no connection"
    assert {pid for _, pid in owners.values()} == set(pids.values())
    # One trace file per worker, nothing in the single-process file, each with exactly its
    # worker's connections and its own service.instance.id.
    assert sorted(files) == [1, 2] and not (service.data_dir / "traces.jsonl").exists()
    instances = set()
    for k, path in files.items():
        spans = list(read_otlp_json_lines(path, strict=True))
        assert {s["attributes"].get(A_CONNECTION_ID) for s in spans if s["name"] == "records.connect"} == by_worker[k]
        assert summarised(k) == by_worker[k]
        (instance,) = {s["resource"]["service.instance.id"] for s in spans}
        assert instance.endswith(f"-{k}")
        instances.add(instance)
    assert len(instances) == WORKERS
    # The supervisor prepared the shared state once, before the workers; each worker logged as itself.
    records = service.log_records()
    (created,) = [r for r in records if r["message"] == "admin credential created"]
    assert "worker" not in created
    ready = [r for r in records if r["message"] == "canaryws ready"]
    assert sorted((r["worker"], r["pid"]) for r in ready) == sorted(pids.items())
    # `canaryws report` reads the data dir's trace files as they are.
    done = run_cli("report", "--traces", str(service.data_dir), "--json")
    assert done.returncode in (0, 1, 2), done.stderr
    assert "skipped a line" not in done.stderr, done.stderr


def raw_clients_on_every_worker(service: Service, stack: contextlib.ExitStack, count: int) -> list[RawClient]:
    """At least ``count`` raw connections (welcome read), more until each worker holds one."""
    wanted = set(wait_serving(service).values())
    clients: list[RawClient] = []
    ids: list[str] = []
    while True:
        token = service.token(f"raw-{len(clients)}")
        headers = {"Authorization": f"Bearer {token}", "Sec-WebSocket-Protocol": PROTOCOL}
        client = stack.enter_context(RawClient.connect("127.0.0.1", service.port, headers=headers))
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        clients.append(client)
        ids.append(client.recv_json()["connection_id"])
        if len(clients) >= count:
            owners = worker_of_connections(service)
            if wanted <= {owners[cid][1] for cid in ids}:
                return clients
            assert len(clients) < 200, f"200 connections and not every worker got one: {owners}"


def test_sigterm_drains_every_worker_answers_what_it_read_closes_with_1012_and_exits_0(tmp_path: Path) -> None:
    bound = 8.0
    batches = 8  # per connection, in one TCP segment: read (queued) together, so all in flight once one is answered
    service = workers_service(tmp_path, None, "--shutdown-timeout", str(bound))

    def batch(client: int, n: int) -> bytes:
        text = json.dumps({"type": "batch", "id": f"c{client}-{n}", "records": ["x"] * 1000}, separators=(",", ":"))
        return frame(TEXT, text.encode())

    with service, contextlib.ExitStack() as stack:
        pids = wait_serving(service)
        clients = raw_clients_on_every_worker(service, stack, 16)
        for c, client in enumerate(clients):
            client.send_raw(b"".join(batch(c, n) for n in range(batches)))
        for c, client in enumerate(clients):  # each worker has read every batch of these connections
            assert client.recv_json()["id"] == f"c{c}-0"
        signalled = send_signal(service)
        for c, client in enumerate(clients):
            results = []
            while (message := client.recv_message()).opcode == TEXT:
                results.append(json.loads(message.payload))
            assert [(r["type"], r["id"], len(r["accepted"])) for r in results] == [
                ("result", f"c{c}-{n}", 1000) for n in range(1, batches)]
            assert message.opcode == CLOSE and message.close_code == 1012
            client.send_frame(CLOSE, message.payload[:2])
        status = wait_exit(service, bound + 5)
        elapsed = time.monotonic() - signalled
    assert status == 0, f"exit status {status}:\n{service.logs()[-3000:]}"
    assert elapsed < bound, f"exited {elapsed:.1f} s after SIGTERM; the bound is {bound} s"
    records = service.log_records()
    complete = [r for r in records if r.get("logger") == "canaryws.shutdown" and r["message"] == "shutdown complete"]
    assert sorted(r["worker"] for r in complete) == [1, 2]
    assert all(r["connections_drained"] is True and r["signal"] == "SIGTERM" for r in complete)
    (stopping,) = [r for r in records if r["message"] == "stopping workers"]
    assert stopping["signal"] == "SIGTERM" and stopping["workers"] == {str(k): pid for k, pid in pids.items()}
    (stopped,) = [r for r in records if r["message"] == "workers stopped"]
    assert stopped["exit_statuses"] == {"1": 0, "2": 0} and stopped["exit_status"] == 0
    assert not [r for r in records if r["level"] == "ERROR"], "errors logged during the shutdown"
    # Each worker flushed its closing summaries: every batch counted, close code 1012.
    closed = [s["attributes"] for path in trace_files(service).values() for s in read_otlp_json_lines(path)
              if s["name"] == "records.connection" and s["attributes"].get(A_CLOSE_CODE) is not None]
    assert len(closed) == len(clients)
    assert all(a[A_CLOSE_CODE] == 1012 and a["canaryws.connection.batches"] == batches for a in closed)


def test_a_flags_change_reaches_the_connections_of_both_workers(tmp_path: Path) -> None:
    service = workers_service(tmp_path, flags_doc(strict_rollout=0))

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_on_every_worker(service, stack, "flip", 10)
            assert {welcome["cohort"]["strategy"] for _, welcome in clients} == {"lenient"}
            service.write_flags(flags_doc(strict_rollout=100))
            written = time.monotonic()

            async def until_cohort_frame(n: int, ws: ClientConnection) -> list[dict[str, Any]]:
                while True:
                    frames = await send_batch(ws, f"f-{n}-{time.monotonic()}", ["", " x "])
                    if frames[0]["type"] == "cohort" or time.monotonic() - written > 5:
                        return frames
                    await asyncio.sleep(0.05)

            outcomes = await asyncio.gather(*(until_cohort_frame(n, ws) for n, (ws, _) in enumerate(clients)))
            assert time.monotonic() - written < 3
            for frames in outcomes:
                assert [f["type"] for f in frames] == ["cohort", "result"]
                assert frames[0]["reason"] == "flags_changed" and frames[0]["cohort"]["strategy"] == "strict"
                assert frames[1]["strategy"] == "strict" and frames[1]["rejected"] == [{"index": 0, "code": "empty"}]
            revisions = {frames[0]["cohort"]["flags_revision"] for frames in outcomes}
            assert len(revisions) == 1

    with service:
        asyncio.run(scenario())
    reloads = [r for r in service.log_records() if r.get("logger") == "canaryws.flags" and "->" in r["message"]]
    assert {r["worker"] for r in reloads} == {1, 2}, "each worker's own watcher applies the change"


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(tmp_path: Path) -> None:
    service = workers_service(tmp_path)

    async def answered(prefix: str, pids: set[int]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_on_every_worker(service, stack, prefix, 10, pids)
            for n, (ws, _) in enumerate(clients):
                frames = await send_batch(ws, f"{prefix}-{n}", [" y "])
                assert frames[-1]["accepted"] == [{"index": 0, "value": "y"}]

    with service:
        before = wait_serving(service)
        os.kill(before[1], signal.SIGKILL)
        after = serving(wait_for_logs(service, lambda records: serving(records).get(1) not in (None, before[1])))
        assert after[2] == before[2] and after[1] != before[1]
        asyncio.run(answered("after", set(after.values())))  # the replacement serves too
        status = service.stop()
    assert status == 0, service.logs()[-3000:]
    (died,) = [r for r in service.log_records() if r["message"].startswith("worker exited unexpectedly")]
    assert (died["level"], died["worker"], died["pid"], died["exit_status"]) == ("WARNING", 1, before[1], -9)
    assert "killed by SIGKILL" in died["message"] and died["restart_in_seconds"] == 0


def test_the_number_of_workers_is_validated_and_bad_shared_state_stops_the_supervisor(tmp_path: Path) -> None:
    args = ["serve", "--port", "1", "--data-dir", str(tmp_path / "d")]
    done = run_cli(*args, "--workers", "0")
    assert done.returncode == 2 and "--workers" in done.stderr, done.stderr
    for value in ("0", "two"):
        done = run_cli(*args, env={"CANARYWS_WORKERS": value})
        assert done.returncode == 1, done.stderr
        assert "cannot start: invalid configuration: CANARYWS_WORKERS" in done.stderr, done.stderr
    # A flags document a service cannot start on stops the supervisor before any worker exists.
    flags = tmp_path / "bad.json"
    flags.write_text('{"version": 2, "features": [{"name": "records.strict", "enabled": true, "strategies": 5}]}')
    done = run_cli(*args, "--workers", "2", "--flags", str(flags))
    assert done.returncode == 1 and "cannot start: flags document" in done.stderr, done.stderr
    assert "starting workers" not in done.stderr


def test_each_worker_gets_its_own_instance_id_and_trace_file_name() -> None:
    from canaryws.adapters.server.supervisor import instance_id_base, worker_environ
    from canaryws.adapters.telemetry.environment import resource_from_environ as _resource
    from canaryws.adapters.telemetry.environment import trace_file_name

    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.instance.id=pod%2Da"}
    base = instance_id_base(env)
    assert base == "pod-a"
    resources = [_resource("canaryws", worker_environ(env, k, base)).attributes for k in (1, 2)]
    assert [r["service.instance.id"] for r in resources] == ["pod-a-1", "pod-a-2"]
    assert all(r["deployment.environment"] == "prod" for r in resources)
    assert instance_id_base({}).endswith(f"-{os.getpid()}")
    assert trace_file_name(worker_environ({}, 2, "h-1")) == "traces-2.jsonl"
    assert trace_file_name({}) == "traces.jsonl"
