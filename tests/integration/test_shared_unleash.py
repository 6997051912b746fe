"""canaryws against a real, busy, company-wide Unleash server (tests/company_unleash.py: other teams'
flags in project ``default`` and in project ``payments``, every constraint operator of Unleash 8,
a custom strategy, segments, dependencies, variants), with a wildcard client token: the kill
switch, ramps and re-enables still reach open connections within refresh + 1 s; the service,
``flags show`` and ``flags export`` see the same flags of one project; the warnings are counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from canaryws.cli import main as cli_main
from canaryws.core.flagdoc import canonical_data, parse_flags_document, validate_flags_data
from company_unleash import CompanyWorld, client_features, populate, set_strategies
from harness import Service, UnleashServer, flags_doc, metric_value, send_batch

pytestmark = pytest.mark.integration

REFRESH = 1.0
SLACK = 0.4  # the clients' batch cadence (0.1 s) and scheduling


# A flag of another team in canaryws' own project with a strategy the engine does not implement
# (a custom strategy defined on the server): a warning for canaryws, never a blocker.
REGION_FLAG = "search.region-boost"


@pytest.fixture(scope="module")
def world(unleash: UnleashServer) -> CompanyWorld:
    world = populate(unleash)
    admin = {"Authorization": unleash.values["UNLEASH_ADMIN_TOKEN"]}
    httpx.post(f"{unleash.url}/admin/projects/default/features", headers=admin, timeout=10,
               json={"name": REGION_FLAG, "type": "experiment"}).raise_for_status()
    set_strategies(unleash, REGION_FLAG, "default",
                   [{"name": world.custom_strategy, "parameters": {"regions": "eu-west,eu-north"}}])
    httpx.post(f"{unleash.url}/admin/projects/default/features/{REGION_FLAG}/environments/development/on",
               headers=admin, timeout=10).raise_for_status()
    for project in ("default", None):  # the client API caches each query on its own
        wait_until(lambda project=project: any(  # type: ignore[misc]
            f["name"] == REGION_FLAG and f["enabled"]
            for f in client_features(unleash, world.token, project)["features"]), 15, REGION_FLAG)
    return world


def scoped_revision(unleash: UnleashServer, world: CompanyWorld, project: str | None) -> str:
    """The revision of what the client API serves the wildcard token for ``project`` (canonical form)."""
    served = client_features(unleash, world.token, project)
    return validate_flags_data(canonical_data(served, project=project)).revision


def canaryws(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UNLEASH_")}
    return subprocess.run([sys.executable, "-m", "canaryws", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


class OpenConnections:
    """``count`` connections that each send a batch every 0.1 s and note when their cohort changes."""

    def __init__(self, service: Service, count: int) -> None:
        self.service = service
        self.ids = [f"shared-{i:03d}" for i in range(count)]
        self.strategy: dict[str, str] = {}
        self.changed_at: dict[str, list[tuple[float, str]]] = {cid: [] for cid in self.ids}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> OpenConnections:
        self._thread.start()
        assert self._ready.wait(30), f"the connections did not open: {self.error!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None and exc[0] is None:
            raise self.error

    async def _main(self) -> None:
        try:
            await asyncio.gather(*(self._one(cid) for cid in self.ids))
        except BaseException as err:
            self.error = err
            self._ready.set()

    async def _one(self, cid: str) -> None:
        async with self.service.client(cid) as (ws, welcome):
            self.strategy[cid] = welcome["cohort"]["strategy"]
            if len(self.strategy) == len(self.ids):
                self._ready.set()
            n = 0
            while not self._stop.is_set():
                frames = await send_batch(ws, f"{cid}-{n}", [""])
                n += 1
                for frame in frames:
                    if frame["type"] == "cohort":
                        self.strategy[cid] = frame["cohort"]["strategy"]
                        self.changed_at[cid].append((time.monotonic(), frame["cohort"]["strategy"]))
                    elif frame["type"] == "result":
                        assert frame["strategy"] == self.strategy[cid], (cid, frame, self.strategy[cid])
                await asyncio.sleep(0.1)

    def share(self, strategy: str) -> float:
        return sum(s == strategy for s in self.strategy.values()) / len(self.ids)

    def wait_all(self, strategy: str, since: float, timeout: float) -> list[float]:
        """Until every connection is in ``strategy``; how long each took after ``since``."""
        deadline = time.monotonic() + timeout
        while self.share(strategy) < 1.0:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"not all {strategy} after {timeout} s: {self.share(strategy)}"
            time.sleep(0.05)
        return [next(t for t, s in reversed(self.changed_at[cid]) if s == strategy) - since for cid in self.ids
                if self.changed_at[cid]]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def shared_service(tmp_path: Path, unleash: UnleashServer, world: CompanyWorld) -> Iterator[Service]:
    """A service on the shared server with the company-wide token (it sees every project)."""
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    env = {"UNLEASH_URL": unleash.url, "UNLEASH_API_TOKEN": world.token, "UNLEASH_ENVIRONMENT": "development",
           "UNLEASH_REFRESH_INTERVAL": str(REFRESH)}
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        want = scoped_revision(unleash, world, "default")
        service.wait_for_revision(lambda st: st["revision"] == want, timeout=15)
        yield service


def test_ramps_the_kill_switch_and_re_enables_reach_open_connections_on_a_busy_server(
        shared_service: Service, unleash: UnleashServer, world: CompanyWorld, tmp_path: Path) -> None:
    service = shared_service
    status = service.get("/readyz").json()["flags"]
    assert (status["flags_from"], status["state"], status["project"]) == ("server", "ok", "default"), status
    assert status["cohort_flags"]["records.strict"] == {"state": "ok"}
    assert status["problems"] == {"custom_strategy": 1}, status["problems"]  # another team's flag
    admin_env = {**unleash.admin_env, "UNLEASH_API_TOKEN": world.token}

    with OpenConnections(service, 40) as clients:
        assert clients.share("strict") == 1.0

        # the kill switch, through the operator CLI (times count from the change on the server)
        _, since = timed_cli("disable", "records.strict", env=admin_env)
        took = clients.wait_all("lenient", since, REFRESH + 1 + 5)
        assert len(took) == 40 and max(took) <= REFRESH + 1 + SLACK, sorted(took)[-5:]

        # re-enabled: everyone back on the kept 100 %
        _, since = timed_cli("enable", "records.strict", env=admin_env)
        took = clients.wait_all("strict", since, REFRESH + 1 + 5)
        assert max(took) <= REFRESH + 1 + SLACK, sorted(took)[-5:]

        # ramped down to 50 %: about half switch, the others stay
        _, since = timed_cli("rollout", "records.strict", "50", env=admin_env)
        wait_until(lambda: 0.2 <= clients.share("lenient") <= 0.8, REFRESH + 1 + 5, "the ramp to 50 %")
        time.sleep(REFRESH + 1)
        switched = [t - since for cid in clients.ids for t, _ in clients.changed_at[cid] if t > since]
        assert switched and max(switched) <= REFRESH + 1 + SLACK, sorted(switched)[-5:]
        assert 0.2 <= clients.share("strict") <= 0.8

    # the flags the service, `flags show` and `flags export` see are the same, of project default only
    served = service.get("/readyz").json()["flags"]
    show = canaryws("flags", "show", "--json", env=admin_env)
    assert show.returncode == 0, show.stderr
    listing = json.loads(show.stdout)
    exported = tmp_path / "exported.json"
    export = canaryws("flags", "export", "--flags", str(exported), env=admin_env)
    assert export.returncode == 0, export.stderr
    doc = parse_flags_document(exported.read_bytes())
    assert served["revision"] == listing["revision"] == doc.revision
    assert not set(world.projects["payments"]) & {row["name"] for row in listing["flags"]}
    assert not set(world.projects["payments"]) & set(doc.feature_names())
    assert set(world.projects["default"]) <= set(doc.feature_names())
    # ... and the same warnings, counted by kind
    kinds: dict[str, int] = {}
    for problem in listing["problems"]:
        kinds[problem["kind"]] = kinds.get(problem["kind"], 0) + 1
    assert kinds == served["problems"] and kinds, (kinds, served["problems"])
    assert listing["cohort_flags"] == {flag: served_state(served, flag) for flag in ("records.strict",
                                                                                    "records.shadow")}
    assert "warning: 1 problem in flags canaryws does not evaluate (custom_strategy: 1)" in show.stderr
    metrics = service.get("/metrics").text
    for kind, count in kinds.items():
        assert metric_value(metrics, "canaryws_flags_problems", kind=kind, source="unleash") == count
    assert metric_value(metrics, "canaryws_flags_problems", kind="unknown_operator", source="unleash") == 0
    assert metric_value(metrics, "canaryws_flags_cohort_held", flag="records.strict", source="unleash") == 0

    # logged once per revision applied (the server's; the bootstrap file has no other flags), never per poll
    records = service.log_records()
    applied = [r for r in records if r["message"].startswith("flags from Unleash: revision")]
    warned = [r for r in records if "problem in flags canaryws does not evaluate" in r["message"]]
    assert len(applied) >= 4 and len(warned) == len(applied), (len(warned), len(applied))
    assert "Traceback" not in service.logs()


def timed_cli(*args: str, env: dict[str, str]) -> tuple[Any, float]:
    """``canaryws flags ARGS``, run in this process (click's runner: the operator's command
    without the interpreter's start, about 0.7 s of imports on the CI machine, which is not the
    flags' way to the connections); and the time it started (the change is on the server before
    it returns)."""
    since = time.monotonic()
    done = CliRunner().invoke(cli_main, ["flags", *args], env=env, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return done, since


def served_state(status: dict[str, Any], flag: str) -> str:
    state = status["cohort_flags"][flag]["state"]
    return "invalid" if state == "held" else str(state)


def test_the_service_asks_for_its_project_only(tmp_path: Path, unleash: UnleashServer, world: CompanyWorld) -> None:
    everything = scoped_revision(unleash, world, None)
    default = scoped_revision(unleash, world, "default")
    payments = scoped_revision(unleash, world, "payments")
    assert len({everything, default, payments}) == 3
    env = {"UNLEASH_URL": unleash.url, "UNLEASH_API_TOKEN": world.token, "UNLEASH_ENVIRONMENT": "development",
           "UNLEASH_REFRESH_INTERVAL": str(REFRESH), "UNLEASH_PROJECT": "payments"}
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        status = service.wait_for_revision(lambda st: st["revision"] == payments, timeout=15)
        assert status["revision"] == payments and status["project"] == "payments"
        # payments has no records.strict: every client gets the default strategy (lenient)
        assert status["cohort_flags"]["records.strict"] == {"state": "absent"}

        async def welcome() -> str:
            async with service.client("payments-client") as (_ws, frame):
                return str(frame["cohort"]["strategy"])

        assert asyncio.run(welcome()) == "lenient"


def test_start_up_waits_for_the_servers_first_answer(tmp_path: Path, unleash: UnleashServer,
                                                      world: CompanyWorld) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    env = {"UNLEASH_URL": unleash.url, "UNLEASH_API_TOKEN": world.token, "UNLEASH_REFRESH_INTERVAL": "30",
           "CANARYWS_UNLEASH_STARTUP_WAIT": "20"}
    with Service(tmp_path, flags_doc(strict_rollout=0), env=env) as service:
        # the first answer to /healthz already comes after the server's flags are in force
        status = service.get("/readyz").json()["flags"]
        assert status["flags_from"] == "server" and status["revision"] == scoped_revision(unleash, world, "default")
        (ready,) = [r for r in service.log_records() if r["message"] == "canaryws ready"]
        assert (ready["flags_source"], ready["flags_from"]) == ("unleash", "server")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An "Unleash" that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("wait", [1.0, 4.0])
def test_start_up_waits_at_most_the_startup_wait_for_a_silent_server(tmp_path: Path, silent_server: str,
                                                                     wait: float) -> None:
    env = {"UNLEASH_URL": silent_server, "UNLEASH_API_TOKEN": "default:development.x" + "0" * 40,
           "UNLEASH_REQUEST_TIMEOUT": "30", "CANARYWS_UNLEASH_STARTUP_WAIT": str(wait)}
    service = Service(tmp_path, flags_doc(strict_rollout=100), env=env)
    started = time.monotonic()
    service.start(timeout=30)
    try:
        took = time.monotonic() - started
        assert wait <= took < wait + 10, took  # waited, and then did not wait for the 30 s request timeout
        status = service.get("/readyz").json()["flags"]
        assert status["flags_from"] == "bootstrap" and status["source"] == "unleash"
        (ready,) = [r for r in service.log_records() if r["message"] == "canaryws ready"]
        assert (ready["flags_source"], ready["flags_from"]) == ("unleash", "bootstrap")
    finally:
        service.stop()


def test_a_refusing_server_does_not_make_start_up_wait(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections to it are refused
    env = {"UNLEASH_URL": f"http://127.0.0.1:{port}/api", "UNLEASH_API_TOKEN": "default:development.x" + "0" * 40,
           "CANARYWS_UNLEASH_STARTUP_WAIT": "20"}
    started = time.monotonic()
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        assert time.monotonic() - started < 15
        assert service.get("/readyz").json()["flags"]["flags_from"] == "bootstrap"


def test_the_client_api_query_is_what_the_sdk_sends(unleash: UnleashServer, world: CompanyWorld) -> None:
    """The project scope is the server's (?project=), not only canaryws' own filter."""
    response = httpx.get(f"{unleash.url}/client/features", params={"project": "payments"}, timeout=10,
                         headers={"Authorization": world.token})
    names = {f["name"] for f in response.json()["features"]}
    assert names == set(world.projects["payments"])


def test_the_whole_company_document_as_a_flags_file(tmp_path: Path, unleash: UnleashServer,
                                                    world: CompanyWorld) -> None:
    """What the server serves every project, written to a file: the file backend sees the same
    problems and still takes a ramp and the kill switch."""
    unleash.set_enabled("records.strict", True)
    served = canonical_data(client_features(unleash, world.token))
    path = tmp_path / "features.json"
    path.write_text(json.dumps(served, indent=2))
    env = {"CANARYWS_FLAGS": str(path)}
    show = canaryws("flags", "show", "--json", env=env)
    assert show.returncode == 0, show.stderr
    listing = json.loads(show.stdout)
    assert {row["name"] for row in listing["flags"]} >= set(world.flags)
    custom = [p for p in listing["problems"] if p["kind"] == "custom_strategy"]
    assert {p["flag"] for p in custom} == {REGION_FLAG, *(name for name, note in world.notes.items()
                                                          if note.custom_strategy)}
    assert listing["cohort_flags"]["records.strict"] == "ok"
    assert canaryws("flags", "rollout", "records.strict", "5", env=env).returncode == 0
    assert canaryws("flags", "disable", "records.strict", env=env).returncode == 0
    strict = parse_flags_document(path.read_bytes()).entries("records.strict")[0]
    assert strict["enabled"] is False and strict["strategies"][0]["parameters"]["rollout"] == "5"
    with Service(tmp_path / "svc", json.loads(path.read_text())) as service:
        status = service.get("/readyz").json()["flags"]
        assert status["state"] == "ok" and status["cohort_flags"]["records.strict"] == {"state": "disabled"}
        assert status["problems"]["custom_strategy"] == len(custom)
