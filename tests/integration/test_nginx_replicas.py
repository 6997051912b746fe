"""Two ``canaryws serve`` replicas behind a real nginx (deploy/nginx/canaryws.conf, rendered with
the test's ports) as the WebSocket load balancer, both taking their flags from one real Unleash
server and sharing the token secret. A client id gets the same cohort through either replica; a
flag change reaches both; a rolling restart (SIGTERM to one replica) loses no answer and
duplicates none, as clients reconnect through nginx and resend what was not answered. No token
reaches nginx's logs, not even when a restart makes nginx log refused connects of browser clients
(``?access_token=``); the replicas rate-limit handshakes by the client address nginx forwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from canaryws.core.flagdoc import validate_flags_data
from harness import (
    PROTOCOL,
    REPO,
    LoopbackUrls,
    Service,
    UnleashServer,
    flags_doc,
    free_port,
    send_batch,
    send_signal,
    terminate,
    wait_exit,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NGINX = Path("/usr/sbin/nginx")
SITE_CONF = REPO / "deploy" / "nginx" / "canaryws.conf"
REFRESH = 1.0
STRICT = "records.strict"
Connected = tuple[ClientConnection, dict[str, Any]]


# -- nginx ----------------------------------------------------------------------------


def render_site(conf: str, listen_port: int, replica_ports: list[int], log_dir: Path) -> str:
    """deploy/nginx/canaryws.conf with the test's listen address, replicas and log files;
    everything else exactly as shipped."""
    block = re.search(r"^upstream canaryws_replicas \{\n.*?^\}", conf, flags=re.S | re.M)
    assert block, "no `upstream canaryws_replicas { ... }` block in the config"
    servers = re.findall(r"^(\s*)server\s+\S+((?:\s+[^;\s]+)*);\n", block.group(0), flags=re.M)
    assert servers, "no server line in the upstream block"
    indent, params = servers[0]
    ours = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in replica_ports)
    upstream = re.sub(r"^\s*server\s+\S+(?:\s+[^;\s]+)*;\n", "", block.group(0), flags=re.M)
    upstream = upstream[:-1] + ours + "}"
    site = conf[: block.start()] + upstream + conf[block.end():]
    site, listens = re.subn(r"^(\s*)listen\s+[^;]+;", rf"\g<1>listen 127.0.0.1:{listen_port};", site, flags=re.M)
    assert listens == 1, f"expected one listen directive, found {listens}"
    site, logs = re.subn(r"/var/log/nginx/", f"{log_dir}/", site)
    assert logs == 2, f"expected the access and error log paths, found {logs}"
    return site


class Nginx(LoopbackUrls):
    """nginx in the foreground, everything (pid, logs, temp files) under ``root``."""

    def __init__(self, root: Path, replica_ports: list[int], edit: Callable[[str], str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.replica_ports = replica_ports
        self.edit = edit  # a change to the shipped file (a control experiment), applied before rendering
        self.conf = root / "nginx.conf"
        self.access_log = root / "canaryws.access.log"
        self.error_log = root / "canaryws.error.log"
        self.main_log = root / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = SITE_CONF.read_text()
        site = render_site(self.edit(conf) if self.edit else conf, self.port, self.replica_ports, self.root)
        (self.root / "canaryws.conf").write_text(site)
        temp = "\n".join(f"    {kind}_temp_path {self.root / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf.write_text(
            f"worker_processes 1;\npid {self.root / 'nginx.pid'};\nerror_log {self.main_log} notice;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n{temp}\n    include {self.root / 'canaryws.conf'};\n}}\n"
        )

    def command(self, *extra: str) -> list[str]:
        return [str(NGINX), "-p", f"{self.root}/", "-c", str(self.conf), "-e", str(self.main_log), *extra]

    def start(self, timeout: float = 15.0) -> Nginx:
        self.write_config()
        checked = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, f"nginx -t refused the config:\n{checked.stderr}\n{self.main_log_text()}"
        out = (self.root / "nginx.out").open("ab")
        self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stdout=out, stderr=out)
        try:
            wait_healthy(self.proc, self.http_url, timeout, "nginx", self.main_log_text)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        terminate(self.proc, 10)

    def main_log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.main_log, self.root / "nginx.out")
                         if p.exists())

    def access_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []

    def logs(self) -> dict[str, str]:
        """Every file nginx wrote to: access log, the site's error log, the main error log, stdout/stderr."""
        return {p.name: p.read_text(errors="replace") for p in
                (self.access_log, self.error_log, self.main_log, self.root / "nginx.out") if p.exists()}


@pytest.fixture(scope="module")
def nginx_binary() -> Path:
    if not (NGINX.is_file() and os.access(NGINX, os.X_OK)):
        pytest.fail(f"nginx is required at {NGINX} for this test: install the Debian package nginx-light "
                    "(apt-get install nginx-light); CI installs it")
    return NGINX


# -- the replicas ---------------------------------------------------------------------


class ReplicaLog:
    """A replica's JSON log, read incrementally."""

    def __init__(self, service: Service) -> None:
        self.path = service.log_path
        self.offset = 0
        self.records: list[dict[str, Any]] = []
        self.accepted: dict[str, dict[str, Any]] = {}  # connection id -> "connection accepted"
        self.closed: dict[str, dict[str, Any]] = {}  # connection id -> "connection closed"

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    continue
                self.records.append(rec)
                if rec.get("logger") == "canaryws.records" and rec.get("message") == "connection accepted":
                    self.accepted[rec["connection_id"]] = rec
                elif rec.get("logger") == "canaryws.records" and rec.get("message") == "connection closed":
                    self.closed[rec["connection_id"]] = rec


class Cluster:
    """Two replicas (own roots and logs, the same token secret, one Unleash server) behind nginx."""

    NAMES = ("replica-a", "replica-b")

    def __init__(self, root: Path, unleash: UnleashServer) -> None:
        env = {**unleash.service_env, "UNLEASH_REFRESH_INTERVAL": str(REFRESH)}
        self.unleash = unleash
        self.replicas = [Service(root / name, flags_doc(strict_rollout=0), env=env) for name in self.NAMES]
        first = self.replicas[0]
        first.token("secret-maker")  # creates <data-dir>/secret.key
        for other in self.replicas[1:]:
            other.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(first.data_dir / "secret.key", other.data_dir / "secret.key")
        self.logs = [ReplicaLog(r) for r in self.replicas]
        self.nginx = Nginx(root / "nginx", [r.port for r in self.replicas])

    def __enter__(self) -> Cluster:
        with contextlib.ExitStack() as stack:
            for replica in self.replicas:
                stack.enter_context(replica)
            self.nginx.start()
            stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.nginx.stop()
        for replica in self.replicas:
            replica.stop()

    def token(self, client_id: str) -> str:
        return self.replicas[0].token(client_id)

    @contextlib.asynccontextmanager
    async def client(self, client_id: str, *, token: str | None = None, query_token: bool = False,
                     headers: dict[str, str] | None = None, via: Nginx | None = None) -> AsyncIterator[Connected]:
        """A client connected through nginx (``via``, else the cluster's), and its welcome frame. The token
        goes in the ``Authorization`` header, or with ``query_token`` as a browser sends it (``?access_token=``)."""
        url, extra, token = (via or self.nginx).ws_url, dict(headers or {}), token or self.token(client_id)
        if query_token:
            url += f"?access_token={token}"
        else:
            extra["Authorization"] = f"Bearer {token}"
        async with connect(url, additional_headers=extra, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                           open_timeout=10, close_timeout=5) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert welcome["type"] == "welcome", welcome
            yield ws, welcome

    def replica_of(self, connection_id: str, timeout: float = 5.0) -> int:
        """Which replica (0 or 1) holds the connection, from its "connection accepted" log line
        (written before the welcome is sent)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, log in enumerate(self.logs):
                log.refresh()
                if connection_id in log.accepted:
                    return index
            assert time.monotonic() < deadline, f"no replica logged connection {connection_id}"
            time.sleep(0.02)

    def wait_server_revision(self, timeout: float = 15.0) -> str:
        """Wait until every running replica serves the flags the Unleash server has now."""
        want = validate_flags_data(self.unleash.client_features()).revision
        for replica in self.replicas:
            if replica.proc is None or replica.proc.poll() is not None:
                continue
            status = replica.wait_for_revision(lambda st: st["revision"] == want, timeout=timeout)
            assert status["revision"] == want, (replica.root.name, status)
            assert (status["source"], status["flags_from"], status["state"]) == ("unleash", "server", "ok"), status
            assert replica.get("/readyz").status_code == 200
        return want

    async def on_both(self, client_id: str, stack: contextlib.AsyncExitStack,
                      attempts: int = 6) -> dict[int, Connected]:
        """Connections of ``client_id`` through nginx, held open (by ``stack``) until each replica
        holds one: with ``least_conn`` the second goes to the other replica. {replica: (ws, welcome)}."""
        welcomes: dict[int, Connected] = {}
        for _ in range(attempts):
            ws, welcome = await stack.enter_async_context(self.client(client_id))
            welcomes.setdefault(self.replica_of(welcome["connection_id"]), (ws, welcome))
            if len(welcomes) == len(self.replicas):
                return welcomes
        raise AssertionError(f"{attempts} connections of {client_id} through nginx and not every replica got one: "
                             f"{sorted(welcomes)}")


@pytest.fixture(scope="module")
def cluster(nginx_binary: Path, tmp_path_factory: pytest.TempPathFactory, unleash: UnleashServer) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("nginx-cluster"), unleash) as running:
        yield running
    for replica in running.replicas:
        assert "Traceback" not in replica.logs(), replica.logs()[-3000:]


def set_flags(unleash: UnleashServer, *, enabled: bool, rollout: int) -> None:
    unleash.set_enabled(STRICT, enabled)
    unleash.set_rollout(STRICT, rollout)


# -- the tests ------------------------------------------------------------------------


def test_a_client_gets_the_same_cohort_through_either_replica(cluster: Cluster) -> None:
    set_flags(cluster.unleash, enabled=True, rollout=50)
    revision = cluster.wait_server_revision()

    async def scenario() -> None:
        # One client, connecting again and again through nginx: each replica serves it, and the
        # cohort (and the treatment of a batch) is the same on both.
        seen: dict[int, list[tuple[str, str]]] = {}
        for n in range(8):
            async with cluster.client("sticky-1") as (ws, welcome):
                frames = await send_batch(ws, f"b-{n}", [" a ", ""])
                assert [f["type"] for f in frames] == ["result"], frames
                assert welcome["cohort"]["flags_revision"] == revision
                seen.setdefault(cluster.replica_of(welcome["connection_id"]), []).append(
                    (welcome["cohort"]["strategy"], frames[0]["strategy"]))
        assert sorted(seen) == [0, 1], f"nginx sent every connection to one replica: {seen}"
        treatments = {t for ts in seen.values() for t in ts}
        assert len(treatments) == 1, seen
        ((welcomed, applied),) = treatments
        assert welcomed == applied, seen

        # Many client ids at a 50 % rollout: each id's cohort agrees across the replicas.
        cohorts: dict[str, dict[int, str]] = {}
        for i in range(150):
            client_id = f"fleet-{i:04d}"
            async with contextlib.AsyncExitStack() as stack:
                welcomes = await cluster.on_both(client_id, stack)
            assert all(w["cohort"]["flags_revision"] == revision for _, w in welcomes.values()), welcomes
            cohorts[client_id] = {replica: w["cohort"]["strategy"] for replica, (_, w) in welcomes.items()}
        disagree = {c: by_replica for c, by_replica in cohorts.items() if len(set(by_replica.values())) != 1}
        assert not disagree, f"cohorts differ between the replicas: {disagree}"
        strict = sum(by_replica[0] == "strict" for by_replica in cohorts.values())
        assert 45 <= strict <= 105, f"{strict} of 150 ids strict at a 50 % rollout"

    asyncio.run(scenario())




def test_a_flag_change_reaches_both_replicas(cluster: Cluster) -> None:
    unleash = cluster.unleash
    set_flags(unleash, enabled=True, rollout=0)
    before = cluster.wait_server_revision()

    def change(action: Any, *args: Any) -> str:
        """Apply a change on the Unleash server; once its client API serves it, both replicas
        show its revision on /readyz within a refresh interval (plus scheduling slack)."""
        action(*args)
        served = time.monotonic()
        revision = cluster.wait_server_revision()
        assert time.monotonic() - served <= REFRESH + 2.0, time.monotonic() - served
        return revision

    async def new_connections(prefix: str, strategy: str, revision: str) -> None:
        """Fresh client ids through nginx, each held on both replicas: all get ``strategy``."""
        for i in range(5):
            async with contextlib.AsyncExitStack() as stack:
                for replica, (_, welcome) in (await cluster.on_both(f"{prefix}-{i}", stack)).items():
                    assert (welcome["cohort"]["strategy"], welcome["cohort"]["flags_revision"]) == (
                        strategy, revision), (replica, welcome)

    async def switched(held: dict[int, Connected], n: int, strategy: str, revision: str) -> None:
        """The connection held open on each replica moves to ``strategy`` at its next batch."""
        for replica, (ws, _) in held.items():
            frames = await send_batch(ws, f"held-{n}", [" a ", ""])
            assert [f["type"] for f in frames] == ["cohort", "result"], (replica, frames)
            assert frames[0]["cohort"]["strategy"] == strategy, (replica, frames)
            assert frames[0]["cohort"]["flags_revision"] == revision, (replica, frames)
            assert frames[1]["strategy"] == strategy, (replica, frames)

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            held = await cluster.on_both("held-1", stack)
            for replica, (_, welcome) in held.items():
                assert (welcome["cohort"]["strategy"], welcome["cohort"]["flags_revision"]) == (
                    "lenient", before), (replica, welcome)
            await new_connections("before", "lenient", before)

            ramped = await asyncio.to_thread(change, unleash.set_rollout, STRICT, 100)
            assert ramped != before
            await switched(held, 1, "strict", ramped)
            await new_connections("ramped", "strict", ramped)

            killed = await asyncio.to_thread(change, unleash.set_enabled, STRICT, False)  # the kill switch
            assert killed not in (before, ramped)
            await switched(held, 2, "lenient", killed)
            await new_connections("killed", "lenient", killed)

    asyncio.run(scenario())


def test_nginx_forwards_the_client_address_and_logs_no_token(cluster: Cluster) -> None:
    """nginx passes the client's address on (X-Forwarded-For, which the replicas trust from it: see
    the next test for what they do with it) and logs neither kind of token."""
    header_token, query_token = cluster.token("log-header"), cluster.token("log-query")

    async def scenario() -> None:
        async with cluster.client("log-header", token=header_token,
                                  headers={"X-Forwarded-For": "198.51.100.23"}) as (ws, _):
            assert (await send_batch(ws, "b-1", ["x"]))[-1]["type"] == "result"
        async with cluster.client("log-query", token=query_token, query_token=True) as (ws, _):
            assert (await send_batch(ws, "b-1", ["x"]))[-1]["type"] == "result"

    asyncio.run(scenario())

    # Access log lines are written when the WebSocket ends.
    deadline = time.monotonic() + 5
    while not (lines := [line for line in cluster.nginx.access_lines() if 'xff="198.51.100.23"' in line]):
        assert time.monotonic() < deadline, cluster.nginx.access_lines()[-5:]
        time.sleep(0.05)
    assert '"GET /records HTTP/1.1" 101 ' in lines[0], lines
    text = cluster.nginx.access_log.read_text()
    assert '"GET /records HTTP/1.1" 101 ' in text
    for secret in (header_token, query_token, "access_token", "Bearer"):
        assert secret not in text, f"{secret[:20]}... in the access log"
    for service in cluster.replicas:
        assert header_token not in service.logs() and query_token not in service.logs()
    # the replica logs the client's address (the one X-Forwarded-For named), not nginx's
    accepted = [r for service in cluster.replicas for r in service.log_records()
                if r.get("message") == "connection accepted" and r.get("client_id") == "log-header"]
    assert [r["client_address"] for r in accepted] == ["198.51.100.23"], accepted

    # Only the endpoint and the probes are public.
    assert httpx.get(f"{cluster.nginx.http_url}/readyz", timeout=5).status_code == 200
    for path in ("/metrics", "/admin/revocations"):
        assert httpx.get(f"{cluster.nginx.http_url}{path}", timeout=5).status_code == 404, path



def test_the_replicas_limit_handshakes_per_client_address_behind_nginx(nginx_binary: Path, tmp_path: Path) -> None:
    """A replica behind nginx applies its per-source handshake limit (docs/contract.md "Limits") to
    the address X-Forwarded-For names (nginx appends its peer; uvicorn trusts it from 127.0.0.1),
    not to nginx's own address: one address over its burst is refused (429), another still gets in.
    If the replica keyed on nginx's address, every client behind nginx would share one budget."""
    env = {"CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "0.01", "CANARYWS_SOURCE_HANDSHAKE_BURST": "2"}
    with Service(tmp_path / "replica", flags_doc(), env=env) as replica:
        nginx = Nginx(tmp_path / "nginx", [replica.port]).start()
        token = replica.token("behind-nginx")
        try:
            async def handshake(address: str) -> int:
                headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
                try:
                    async with connect(nginx.ws_url, additional_headers=headers,
                                       subprotocols=[PROTOCOL], open_timeout=10):  # type: ignore[list-item]
                        return 101
                except InvalidStatus as refused:
                    return refused.response.status_code

            async def scenario() -> list[int]:
                return [await handshake(address) for address in
                        ("198.51.100.23", "198.51.100.23", "198.51.100.23", "203.0.113.7")]

            assert asyncio.run(scenario()) == [101, 101, 429, 101]
        finally:
            nginx.stop()
        lines = nginx.access_lines()
        assert [line.split('"GET /records HTTP/1.1" ')[1][:3] for line in lines if "/records" in line] == [
            "101", "101", "429", "101"], lines
        for name, text in nginx.logs().items():
            assert token not in text, name

# -- rolling restart ------------------------------------------------------------------


@dataclass
class Conn:
    connection_id: str
    results: int = 0
    close_code: int | None = None


@dataclass
class Streamer:
    """A client that streams batches (up to ``WINDOW`` unanswered) and, when the server closes
    with 1012, reconnects through nginx and resends every batch it had no answer to."""

    client_id: str
    sent: list[str] = field(default_factory=list)  # every batch id, when first sent
    resent: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # sent, not answered yet, oldest first
    answers: Counter[str] = field(default_factory=Counter)  # batch id -> results received
    errors: list[dict[str, Any]] = field(default_factory=list)
    connections: list[Conn] = field(default_factory=list)
    burst_sent_at: int | None = None  # results on its connection when it had sent its burst

    @property
    def answered(self) -> int:
        return sum(self.answers.values())


WINDOW = 4  # batches a client keeps unanswered: there are batches in flight when the signal comes
INTERVAL = 0.05  # the client tops its window up this often
BURST = 20  # batches each client sends at once just before the SIGTERM, beyond its window
FILLER = 1_000  # records per batch besides the batch's own: each batch takes the replica a while


def batch_frame(batch_id: str) -> str:
    return json.dumps({"type": "batch", "id": batch_id, "records": [f" {batch_id} ", "", *["r"] * FILLER]})


async def receive(ws: ClientConnection, run: Streamer, conn: Conn) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "result":
                batch_id = frame["id"]
                # The answer to that batch, whatever the cohort: its record 0, then the filler.
                assert frame["accepted"][0] == {"index": 0, "value": batch_id}, frame["accepted"][:2]
                assert len(frame["accepted"]) == 1 + FILLER, len(frame["accepted"])
                run.answers[batch_id] += 1
                conn.results += 1
                if batch_id in run.pending:
                    run.pending.remove(batch_id)
            elif frame["type"] != "cohort":
                run.errors.append(frame)


async def stream(cluster: Cluster, run: Streamer, stop: asyncio.Event, burst: asyncio.Event) -> None:
    n = 0
    while True:
        async with cluster.client(run.client_id) as (ws, welcome):
            conn = Conn(welcome["connection_id"])
            run.connections.append(conn)
            receiver = asyncio.create_task(receive(ws, run, conn))
            with contextlib.suppress(ConnectionClosed):
                for batch_id in list(run.pending):  # what the previous connection left unanswered
                    run.resent.append(batch_id)
                    await ws.send(batch_frame(batch_id))
                while not stop.is_set() and not receiver.done():
                    bursting = burst.is_set() and run.burst_sent_at is None
                    while len(run.pending) < (WINDOW + BURST if bursting else WINDOW):
                        batch_id = f"{run.client_id}-{n}"
                        n += 1
                        run.sent.append(batch_id)
                        run.pending.append(batch_id)
                        await ws.send(batch_frame(batch_id))
                    if bursting:
                        run.burst_sent_at = conn.results
                    await asyncio.sleep(INTERVAL)
                deadline = time.monotonic() + 10  # stopping: wait for the answers still owed
                while run.pending and not receiver.done():
                    assert time.monotonic() < deadline, f"{run.client_id}: no answer to {run.pending}"
                    await asyncio.sleep(0.02)
                if not receiver.done():
                    await ws.close()
            await asyncio.wait_for(receiver, 10)
            conn.close_code = ws.close_code
        if stop.is_set() and not run.pending:
            return
        assert conn.close_code == 1012, f"{run.client_id}: connection closed with {conn.close_code}"


async def until(predicate: Any, timeout: float, what: str, tasks: list[asyncio.Task[None]]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for task in tasks:
            if task.done():
                task.result()  # a client that failed: its error
                raise AssertionError(f"a client stopped early, waiting for: {what}")
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for: {what}"
        await asyncio.sleep(0.05)


def test_rolling_restart_through_nginx_loses_and_duplicates_no_answer(
        nginx_binary: Path, tmp_path: Path, unleash: UnleashServer) -> None:
    set_flags(unleash, enabled=True, rollout=50)
    runs = [Streamer(f"roll-{i}") for i in range(6)]
    with Cluster(tmp_path, unleash) as cluster:
        cluster.wait_server_revision()
        stopped, kept = cluster.replicas
        placed: dict[str, int] = {}

        async def scenario() -> None:
            stop, burst = asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(stream(cluster, run, stop, burst)) for run in runs]
            try:
                await until(lambda: all(run.answered >= 10 for run in runs), 20, "10 answers each", tasks)
                for run in runs:
                    placed[run.client_id] = await asyncio.to_thread(cluster.replica_of,
                                                                    run.connections[0].connection_id)
                assert sorted(set(placed.values())) == [0, 1], f"nginx put every client on one replica: {placed}"

                # Every client sends a burst, and the signal comes while the replica works through
                # them: some were read and are answered before the 1012, the rest are resent.
                burst.set()
                await until(lambda: all(run.burst_sent_at is not None for run in runs), 10, "the bursts", tasks)
                send_signal(stopped)
                status = await asyncio.to_thread(wait_exit, stopped, 15)
                assert status == 0, f"exit status {status}:\n{stopped.logs()[-3000:]}"

                moved = [run for run in runs if placed[run.client_id] == 0]
                await until(lambda: all(len(run.connections) == 2 and run.connections[1].results >= 10
                                        for run in moved), 20, "the moved clients answered again", tasks)
                mark = {run.client_id: run.answered for run in runs}
                await until(lambda: all(run.answered >= mark[run.client_id] + 10 for run in runs), 20,
                            "every client still answered", tasks)
            finally:
                stop.set()
                outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

        asyncio.run(scenario())

        for log in cluster.logs:
            log.refresh()
        for run in runs:
            # Every batch id sent got exactly one result, whichever connection and replica.
            assert not run.errors, (run.client_id, run.errors)
            assert not run.pending, (run.client_id, run.pending)
            assert set(run.answers) == set(run.sent), (run.client_id, set(run.sent) ^ set(run.answers))
            assert all(count == 1 for count in run.answers.values()), (
                run.client_id, {b: c for b, c in run.answers.items() if c != 1})
            owners = [cluster.replica_of(conn.connection_id) for conn in run.connections]
            if placed[run.client_id] == 0:
                # Closed with 1012 after the stopped replica sent every answer it owed, then one
                # reconnection, through nginx, to the other replica, which served it to the end.
                first, second = run.connections
                assert owners == [0, 1], (run.client_id, owners)
                assert first.close_code == 1012, (run.client_id, first)
                closed = cluster.logs[0].closed[first.connection_id]
                assert closed["close_code"] == 1012 and closed["batches"] == first.results, (closed, first)
                assert second.close_code == 1000, (run.client_id, second)
            else:
                (only,) = run.connections
                assert owners == [1] and only.close_code == 1000, (run.client_id, owners, only)
    (complete,) = [r for r in cluster.logs[0].records if r.get("message") == "shutdown complete"]
    assert complete["signal"] == "SIGTERM" and complete["connections_drained"] is True, complete
    for service in cluster.replicas:
        assert "Traceback" not in service.logs(), service.logs()[-3000:]

    # nginx tried the stopped replica for a reconnection, was refused, and passed it to the other.
    failed_over = [line for line in cluster.nginx.access_lines()
                   if f"upstream=127.0.0.1:{stopped.port}, 127.0.0.1:{kept.port} " in line]
    assert failed_over, cluster.nginx.access_lines()[-10:]
    assert all('"GET /records HTTP/1.1" 101 ' in line and "upstream_status=502, 101" in line
               for line in failed_over), failed_over
    moved = [r for r in runs if placed[r.client_id] == 0]
    print(f"batches sent {sum(len(r.sent) for r in runs)}; moved clients {len(moved)}: answered after the burst "
          f"{sum(r.connections[0].results - (r.burst_sent_at or 0) for r in moved)}, unanswered at the 1012 and "
          f"resent {sum(len(r.resent) for r in moved)}; failovers in nginx {len(failed_over)}")


# -- no token in nginx's logs ---------------------------------------------------------


def without_records_error_log(conf: str) -> str:
    """The control: the shipped file without its one defence for /records' error log, so that
    /records logs at the server's level (warn) like any location."""
    site, n = re.subn(r"^\s*error_log /dev/null;\n", "", conf, flags=re.M)
    assert n == 1, "deploy/nginx/canaryws.conf no longer sets `error_log /dev/null;` in /records"
    return site


async def hold(cluster: Cluster, nginx: Nginx, client_id: str, token: str, stop: asyncio.Event,
               connections: list[str]) -> None:
    """A browser-like client (token in the URL) holding a WebSocket through ``nginx``; when the
    replica closes it with 1012, it reconnects at once, as docs/contract.md asks."""
    while True:
        async with cluster.client(client_id, token=token, query_token=True, via=nginx) as (ws, welcome):
            connections.append(welcome["connection_id"])
            closed, stopping = asyncio.create_task(ws.wait_closed()), asyncio.create_task(stop.wait())
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            stopping.cancel()
            if stop.is_set():
                return
            assert ws.close_code == 1012, f"{client_id}: closed with {ws.close_code}"


def test_a_replica_restart_leaves_no_token_in_nginx_logs(
        nginx_binary: Path, tmp_path: Path, unleash: UnleashServer) -> None:
    """Browsers (``?access_token=``) connected through nginx while one replica is stopped (SIGTERM)
    and started again: nginx's connects to the stopped replica are refused, which nginx logs as
    errors quoting the request line (the control, the same file without `error_log /dev/null` in
    /records, shows the tokens landing in its error log). With the shipped file no token value is in
    any file nginx writes, while the access log records every connection, failover and refusal, and
    the error log still gets the probes' upstream errors (with no query string possible)."""
    set_flags(unleash, enabled=True, rollout=50)
    held: dict[str, list[str]] = {}  # client id -> its connection ids, in order
    shipped_tokens: dict[str, str] = {}
    control_tokens: dict[str, str] = {}
    with Cluster(tmp_path, unleash) as cluster:
        cluster.wait_server_revision()
        stopped, kept = cluster.replicas
        ports = [r.port for r in cluster.replicas]
        control = Nginx(tmp_path / "nginx-control", ports, edit=without_records_error_log).start()
        probes = Nginx(tmp_path / "nginx-probes", ports).start()  # no WebSocket: fresh upstream state
        stray = cluster.token("stray")
        try:
            async def scenario() -> None:
                stop = asyncio.Event()
                tasks: list[asyncio.Task[None]] = []
                try:
                    # Four held connections through each nginx, one at a time: least_conn puts two on
                    # each replica, so each nginx has clients to move off the stopped one.
                    for nginx, tokens, prefix in ((cluster.nginx, shipped_tokens, "shipped"),
                                                  (control, control_tokens, "control")):
                        for i in range(4):
                            client_id = f"{prefix}-{i}"
                            tokens[client_id] = cluster.token(client_id)
                            held[client_id] = []
                            tasks.append(asyncio.create_task(
                                hold(cluster, nginx, client_id, tokens[client_id], stop, held[client_id])))
                            await until(lambda c=client_id: bool(held[c]), 10, f"{client_id} connected", tasks)
                    first = {c: await asyncio.to_thread(cluster.replica_of, conns[0]) for c, conns in held.items()}
                    for prefix in ("shipped", "control"):
                        on = sorted(r for c, r in first.items() if c.startswith(prefix))
                        assert on == [0, 0, 1, 1], f"{prefix}: replicas of the held connections {first}"

                    send_signal(stopped)
                    status = await asyncio.to_thread(wait_exit, stopped, 15)
                    assert status == 0, f"exit status {status}:\n{stopped.logs()[-3000:]}"
                    moved = [c for c, r in first.items() if r == 0]
                    await until(lambda: all(len(held[c]) >= 2 for c in moved), 20, "the moved clients reconnected",
                                tasks)

                    # While it is down: the probes through a fresh nginx meet the refusal too, and
                    # requests with a token where none belongs are turned away.
                    for _ in range(4):
                        assert httpx.get(f"{probes.http_url}/healthz", timeout=5).status_code == 200
                    for path in (f"/healthz?access_token={stray}", f"/records&access_token={stray}",
                                 f"/records/{stray}", "/metrics"):
                        response = httpx.get(f"{cluster.nginx.http_url}{path}", timeout=5)
                        assert response.status_code == 404, (path[:24], response.status_code)

                    # Started again, it gets connections again once nginx's fail_timeout (10 s) is over.
                    await asyncio.to_thread(stopped.start)
                    deadline = time.monotonic() + 20
                    n = 0
                    while True:
                        client_id = f"after-{n}"
                        shipped_tokens[client_id] = await asyncio.to_thread(cluster.token, client_id)
                        async with cluster.client(client_id, token=shipped_tokens[client_id],
                                                  query_token=True) as (_, welcome):
                            replica = await asyncio.to_thread(cluster.replica_of, welcome["connection_id"])
                        if replica == 0:
                            break
                        assert time.monotonic() < deadline, "the restarted replica got no connection from nginx"
                        n += 1
                        await asyncio.sleep(0.5)
                finally:
                    stop.set()
                    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome

            asyncio.run(scenario())
        finally:
            control.stop()
            probes.stop()
    # nginx is stopped: every access-log line (written as each WebSocket ends) is in the files.

    # The control: without `error_log /dev/null` in /records, the refused connects quote the tokens.
    control_errors = control.logs()["canaryws.error.log"]
    assert "connect() failed" in control_errors and "while connecting to upstream" in control_errors, control_errors
    leaked = [c for c, token in control_tokens.items() if token in control_errors]
    assert leaked, f"the control scenario put no token in the error log, so it proves nothing:\n{control_errors}"

    # The shipped file: no token value, and not the parameter either, in any file nginx wrote.
    tokens = [*shipped_tokens.values(), stray]
    for nginx in (cluster.nginx, probes):
        for name, text in nginx.logs().items():
            for token in tokens:
                assert token not in text, f"a token in {nginx.root.name}/{name}"
            assert "access_token" not in text, f"access_token in {nginx.root.name}/{name}:\n{text[-2000:]}"
            assert "Bearer" not in text, f"Bearer in {nginx.root.name}/{name}"

    # What is recorded instead. The access log: every connection (101), the failovers, the refused
    # strays (their path redacted when it holds the token)...
    access = cluster.nginx.access_lines()
    connections = sum(len(conns) for c, conns in held.items() if c.startswith("shipped")) + sum(
        c.startswith("after-") for c in shipped_tokens)
    assert sum('"GET /records HTTP/1.1" 101 ' in line for line in access) == connections, access[-20:]
    failed_over = [line for line in access if f"upstream=127.0.0.1:{stopped.port}, 127.0.0.1:{kept.port} " in line]
    assert failed_over and all("upstream_status=502, 101" in line for line in failed_over), access[-20:]
    assert any('"GET /healthz HTTP/1.1" 404 ' in line for line in access), access[-10:]
    assert sum('"GET [REDACTED] HTTP/1.1" 404 ' in line for line in access) == 2, access[-10:]
    # ...and /records wrote nothing to the error log: its upstream errors are not logged, by design.
    assert 'request: "GET /records' not in cluster.nginx.logs().get("canaryws.error.log", "")
    # The error log keeps the probes' refused connects, whose request line holds no query string.
    probe_errors = probes.logs()["canaryws.error.log"]
    refused = [line for line in probe_errors.splitlines() if "connect() failed" in line]
    assert refused, probe_errors
    assert all(f'upstream: "http://127.0.0.1:{stopped.port}/healthz"' in line and
               'request: "GET /healthz HTTP/1.1"' in line for line in refused), refused

