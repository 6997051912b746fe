"""RUNBOOK.md, executed: every ``sh`` block in it runs here, in the situation it is written for.

Each block is marked ``<!-- test: ID -->``; a test declares the blocks it runs with ``@covers``
and runs them with bash (``set -e``, after the runbook's own helper block), with the runbook's
variables pointing at a real ``canaryws serve`` (flags file or a real Unleash server), a real
guard, real WebSocket clients. ``test_the_runbook_is_well_formed`` checks that every block is
declared by some test, that every variable a block uses is in the runbook's table, that the
links and the alerts' ``runbook_url`` anchors resolve, and that the commands named in the prose
are ones the blocks run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from canaryws.core.flagdoc import validate_flags_data
from harness import (
    PROTOCOL,
    REPO,
    Service,
    UnleashServer,
    cohorts_of,
    flags_doc,
    free_port,
    metric_value,
    run_client,
    send_batch,
    write_guard_summaries,
)

pytestmark = pytest.mark.integration

RUNBOOK = REPO / "RUNBOOK.md"
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)
MARK = re.compile(r"^[ ]*<!-- test: (?P<id>[a-z0-9-]+) -->$")
HELPERS = "helpers"
REFRESH = 1.0


# -- the document -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    id: str | None
    info: str
    code: str
    line: int


def fenced_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].splitlines()
        mark = MARK.match(before[-1]) if before else None
        indent = len(match["indent"])
        code = "\n".join(line[indent:] for line in match["body"].splitlines())
        blocks.append(Block(mark["id"] if mark else None, match["info"].strip(), code, len(before) + 1))
    return blocks


def shell_blocks() -> dict[str, Block]:
    return {b.id: b for b in fenced_blocks(RUNBOOK.read_text()) if b.info == "sh" and b.id is not None}


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


# -- running blocks -----------------------------------------------------------------------------

COVERED: dict[str, list[str]] = {}  # block id -> the tests that run it
BLOCKS_OF: dict[str, tuple[str, ...]] = {}  # test name -> the blocks it runs
F = TypeVar("F", bound=Callable[..., None])


def covers(*ids: str) -> Callable[[F], F]:
    def mark(test: F) -> F:
        BLOCKS_OF[test.__name__] = ids
        for block_id in ids:
            COVERED.setdefault(block_id, []).append(test.__name__)
        return test
    return mark


@dataclass
class Ran:
    out: str
    err: str
    seconds: float


class Runbook:
    """Runs the runbook's blocks in ``cwd``, each in a fresh bash after the helper block."""

    def __init__(self, cwd: Path, declared: tuple[str, ...]) -> None:
        self.cwd = cwd
        self.declared = declared
        self.blocks = shell_blocks()
        self.ran: set[str] = set()

    def run(self, block_id: str, env: dict[str, str], expect: int = 0, timeout: float = 120) -> Ran:
        assert block_id in self.declared, f"{block_id} is not in this test's @covers"
        script = f"set -e\n{self.blocks[HELPERS].code}\n{self.blocks[block_id].code}\n"
        full_env = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
                    "LANG": "C.UTF-8", **env}
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.monotonic() - started
        self.ran.add(block_id)
        assert done.returncode == expect, (
            f"block {block_id} exited {done.returncode}, expected {expect}\n--- code\n"
            f"{self.blocks[block_id].code}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
        return Ran(done.stdout, done.stderr, seconds)


@pytest.fixture
def runbook(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runbook]:
    cwd = tmp_path / "sre"
    cwd.mkdir()
    book = Runbook(cwd, BLOCKS_OF[request.function.__name__])
    failed_before = request.session.testsfailed
    yield book
    if request.session.testsfailed == failed_before:  # the test itself passed
        missing = set(book.declared) - book.ran
        assert not missing, f"declared in @covers but never run: {sorted(missing)}"


def file_env(service: Service, **more: str) -> dict[str, str]:
    """The runbook's variables for a replica on the file backend."""
    return {"CANARYWS_URL": service.http_url, "CANARYWS_DATA_DIR": str(service.data_dir),
            "CANARYWS_FLAGS": str(service.flags_path), "TRACES": str(service.data_dir / "traces.jsonl"), **more}


def server_env(service: Service, unleash: UnleashServer, **more: str) -> dict[str, str]:
    """... and for one on the Unleash backend (the operator's admin and API tokens set)."""
    return {**file_env(service), **unleash.admin_env, **more}


def unleash_service(root: Path, unleash: UnleashServer, bootstrap: dict[str, Any], **env: str) -> Service:
    return Service(root, bootstrap, env={**unleash.service_env, "UNLEASH_REFRESH_INTERVAL": str(REFRESH), **env})


def file_flags(path: Path) -> dict[str, Any]:
    return {f["name"]: f for f in json.loads(path.read_text())["features"]}


def wait_summaries(service: Service, count: int) -> None:
    """Until the trace file holds ``count`` connection summary spans."""
    service.wait_for_spans(lambda spans: sum(s["name"] == "records.connection" for s in spans) >= count)


def wait_server_flags(service: Service) -> None:
    """Until the service serves the Unleash server's flags (not the bootstrap file)."""
    wait_until(lambda: service.get("/readyz").json()["flags"].get("flags_from") == "server", 15, "server flags")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def drive(service: Service, client_ids: list[str], batches: int, records: Callable[[int], list[Any]]) -> None:
    """Each client: one connection, ``batches`` batches, a normal close."""
    async def main() -> None:
        runs = await asyncio.gather(*(run_client(service, c, batches=batches, records=records, interval=0.005)
                                      for c in client_ids))
        assert all(r.results == batches for r in runs)
    asyncio.run(main())


def strategies_of(service: Service, client_ids: list[str]) -> dict[str, str]:
    return asyncio.run(cohorts_of(service, client_ids))


class Clients:
    """Open connections in a background thread, each sending a batch every ``interval`` s until
    the block is over; what they saw is kept for the test."""

    def __init__(self, service: Service, client_ids: list[str], interval: float = 0.1) -> None:
        self.service, self.client_ids, self.interval = service, client_ids, interval
        self.welcomes: dict[str, str] = {}
        self.cohort_frames: list[dict[str, Any]] = []
        self.results = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Clients:
        self._thread.start()
        assert self._connected.wait(30), "the clients did not connect"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None and exc[0] is None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # surfaced in the test thread
            self.error = err
        finally:
            self._connected.set()

    async def _main(self) -> None:
        async def one(cid: str) -> None:
            async with self.service.client(cid) as (ws, welcome):
                self.welcomes[cid] = welcome["cohort"]["strategy"]
                if len(self.welcomes) == len(self.client_ids):
                    self._connected.set()
                n = 0
                while not self._stop.is_set():
                    frames = await send_batch(ws, f"{cid}-{n}", ["ok", " padded ", ""])
                    n += 1
                    self.cohort_frames.extend(f for f in frames if f["type"] == "cohort")
                    self.results += frames[-1]["type"] == "result"
                    await asyncio.sleep(self.interval)

        await asyncio.gather(*(one(c) for c in self.client_ids))


def blank_heavy(n: int) -> list[Any]:
    return ["ok", f" v{n} ", "", "   "]


def clean(n: int) -> list[Any]:
    return ["ok", f"v{n}"]


# -- the document, statically -------------------------------------------------------------------


def test_the_runbook_is_well_formed() -> None:
    text = RUNBOOK.read_text()
    blocks = fenced_blocks(text)
    assert blocks, "no fenced blocks found"
    for block in blocks:
        assert block.info in ("sh", "promql"), f"line {block.line}: a ```{block.info} block; shell goes in ```sh"
        if block.info == "sh":
            assert block.id is not None, f"line {block.line}: an sh block without <!-- test: ID -->"
    ids = [b.id for b in blocks if b.info == "sh" and b.id is not None]
    assert len(ids) == len(set(ids)), f"duplicate block ids: {ids}"
    assert set(ids) == set(COVERED) | {HELPERS}, (
        f"blocks no test runs: {sorted(set(ids) - set(COVERED) - {HELPERS})}; "
        f"tests name blocks that do not exist: {sorted(set(COVERED) - set(ids))}")

    # Every variable a block reads is in the table (names in the first column).
    table = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(
        line.split("|")[1] for line in text.split("## Before you start", 1)[1].split("\n## ", 1)[0].splitlines()
        if line.startswith("| `"))))
    assert {"CANARYWS_URL", "CANARYWS_FLAGS", "TRACES", "UNLEASH_URL", "UNLEASH_ADMIN_TOKEN"} <= table, table
    shell = "\n".join(b.code for b in blocks if b.info == "sh")
    commands = "\n".join(line for line in shell.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", re.sub(r"'[^']*'", "", commands)))  # not in '...' (awk, jq)
    assert used <= table, f"variables used but not in the table: {sorted(used - table)}"

    # Links within the runbook, and the alerts' runbook_url anchors, resolve.
    anchors = {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links <= anchors, f"broken anchors: {sorted(links - anchors)}"
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    urls = {r["annotations"]["runbook_url"] for g in alerts["groups"] for r in g["rules"]}
    assert {u.split("#", 1)[1] for u in urls} <= anchors, urls
    for target in re.findall(r"\]\(((?:docs|deploy|flags)/[^)#]+)", text):
        assert (REPO / target).exists(), target

    # A command named in the prose is one a block runs (so it is executed too).
    for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"(canaryws|curl|kill|pgrep|py-spy|jq|kubectl|docker|deploy/) ", span):
            assert span in shell, f"the prose names `{span}`, which no block runs"


def test_the_runbooks_promql_parses(tmp_path: Path) -> None:
    """The SLI queries, through promtool (Debian's prometheus package, installed by make test)."""
    exprs = [b.code for b in fenced_blocks(RUNBOOK.read_text()) if b.info == "promql"]
    assert len(exprs) == 2
    rules = tmp_path / "runbook-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "runbook", "rules": [
        {"record": f"canaryws:runbook_sli_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    done = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS: 2 rules found" in done.stdout, done.stdout + done.stderr


# -- the procedures, against real processes ------------------------------------------------------


@covers("health", "stage-shadow", "stage-report", "stage-guard", "stage-widen", "rollback-file", "verify-flags",
        "verify-metrics", "verify-traces")
def test_rollout_stage_then_roll_back_on_the_flags_file(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=25)) as service:
        env = file_env(service)
        ran = runbook.run("health", env)
        assert '{"status":"ok"}' in ran.out and '"status": "ready"' in ran.out and '"state": "ok"' in ran.out

        # Stage 0: shadow on; then a day of traffic, here 120 clients with blank records: too few
        # for a promote (a tripled rate could not have been seen yet), so the report holds and
        # says how many more connections it needs; after 1,600 more it promotes.
        before = service.get("/readyz").json()["flags"]["revision"]
        runbook.run("stage-shadow", env)
        assert file_flags(service.flags_path)["records.shadow"]["enabled"] is True
        service.wait_for_revision(lambda st: st["revision"] != before)
        clients = [f"tenant-{i:03d}" for i in range(120)]
        drive(service, clients, batches=5, records=blank_heavy)
        wait_summaries(service, 120)
        ran = runbook.run("stage-report", env, expect=2)
        assert "Verdict: hold" in ran.out and "too little evidence to promote" in ran.out, ran.out
        more = [f"tenant-{i:04d}" for i in range(120, 1720)]
        drive(service, more, batches=1, records=clean)
        wait_summaries(service, 1720)

        ran = runbook.run("stage-report", env)
        assert "Verdict: promote" in ran.out, ran.out
        assert re.search(r"batches compared\s+[1-9]", ran.out), ran.out  # the shadow table has data
        assert (runbook.cwd / "canary-report.html").read_text().lstrip().lower().startswith("<!doctype html")
        ran = runbook.run("stage-guard", env)
        judged = [json.loads(line) for line in ran.err.splitlines() if "guard judged the evidence" in line]
        assert judged and judged[-1]["verdict"] == "promote", ran.err

        before = service.get("/readyz").json()["flags"]["revision"]
        ran = runbook.run("stage-widen", env)
        shown = json.loads(ran.out.strip().splitlines()[-1])
        assert {f["name"]: f["rollout"] for f in shown["flags"]}["records.strict"] == 50
        service.wait_for_revision(lambda st: st["revision"] == shown["revision"])
        ran = runbook.run("verify-flags", env)
        show, ready = (json.loads(line) for line in ran.out.strip().splitlines())
        assert show == {"revision": shown["revision"], "strict": True}
        assert ready == {"revision": shown["revision"], "state": "ok"} and shown["revision"] != before

        # Roll back while 30 strict clients send a batch every 0.1 s.
        strict_ids = [c for c, s in strategies_of(service, clients).items() if s == "strict"][:30]
        assert len(strict_ids) == 30
        with Clients(service, strict_ids) as open_clients:
            assert set(open_clients.welcomes.values()) == {"strict"}
            runbook.run("rollback-file", env)
            assert file_flags(service.flags_path)["records.strict"]["enabled"] is False
            ran = runbook.run("verify-metrics", env)
            assert "open strict connections: 0" in ran.out, ran.out + ran.err
            assert ran.seconds < 60
            assert metric_value(ran.out, "canaryws_cohort_changes_total", **{"from": "strict", "to": "lenient"}) >= 30
            ran = runbook.run("verify-flags", env)
            show, ready = (json.loads(line) for line in ran.out.strip().splitlines())
            assert show["strict"] is False and ready == {"revision": show["revision"], "state": "ok"}
        assert len(open_clients.cohort_frames) == 30
        moved = {(f["cohort"]["strategy"], f["reason"]) for f in open_clients.cohort_frames}
        assert moved == {("lenient", "flags_changed")}
        service.wait_for_spans(lambda spans: sum(
            s["attributes"].get("canaryws.summary.end") == "cohort_changed" for s in spans) >= 30)
        ran = runbook.run("verify-traces", env)
        counts = {tuple(line.split()[1:]): int(line.split()[0]) for line in ran.out.strip().splitlines()}
        assert counts[("strict", "cohort_changed")] == 30, ran.out
        assert counts[("lenient", "closed")] >= 30, ran.out  # the lenient slices of the moved connections


@covers("rollback-unleash", "verify-flags")
def test_roll_back_on_the_unleash_server(tmp_path: Path, runbook: Runbook, unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    with unleash_service(tmp_path, unleash, flags_doc(strict_rollout=100)) as service:
        env = server_env(service, unleash)
        wait_server_flags(service)
        with Clients(service, [f"u-{i}" for i in range(10)]) as open_clients:
            assert set(open_clients.welcomes.values()) == {"strict"}
            ran = runbook.run("rollback-unleash", env)
            assert "records.strict" in ran.out
            wait_until(lambda: not {f["name"]: f for f in unleash.client_features()["features"]}["records.strict"][
                "enabled"], 10, "the server to serve the change")
            wait_until(lambda: len(open_clients.cohort_frames) == 10, REFRESH + 5, "every connection to move")
            want = validate_flags_data(unleash.client_features()).revision
            service.wait_for_revision(lambda st: st["revision"] == want)
            ran = runbook.run("verify-flags", env)
            show, ready = (json.loads(line) for line in ran.out.strip().splitlines())
            assert show == {"revision": want, "strict": False} and ready == {"revision": want, "state": "ok"}
        assert {f["cohort"]["strategy"] for f in open_clients.cohort_frames} == {"lenient"}


@covers("guard-metrics", "guard-report", "guard-replay", "guard-reenable")
def test_the_guard_rolled_back_strict(tmp_path: Path, runbook: Runbook) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, strict_close=1011)  # strict's connections all end abnormally
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
    port = free_port()
    guard = subprocess.Popen(
        [sys.executable, "-m", "canaryws", "guard", "--traces", str(traces), "--flags", str(flags), "--interval", "0.2",
         "--metrics-port", str(port), "--metrics-linger", "60"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "guard.log").open("w"))
    try:
        wait_until(lambda: not file_flags(flags)["records.strict"]["enabled"], 30, "the guard to roll back")
        env = {"GUARD_URL": f"http://127.0.0.1:{port}", "CANARYWS_FLAGS": str(flags), "TRACES": str(traces)}
        ran = runbook.run("guard-metrics", env)
        assert re.search(r"^canaryws_guard_rollbacks_total 1(\.0)?$", ran.out, re.M), ran.out
        assert re.search(r'^canaryws_guard_windows_total\{verdict="rollback"\} 1', ran.out, re.M), ran.out
        assert json.loads(ran.out.strip().splitlines()[-1]) == {"enabled": False, "rollout": 50}
        ran = runbook.run("guard-report", env, expect=1)
        assert "Verdict: rollback" in ran.out and "abnormal" in ran.out, ran.out
        ran = runbook.run("guard-replay", env)  # the pipe's status is tail's
        assert ran.out.splitlines()[-1].endswith("would disable records.strict"), ran.out
        assert " rollback " in ran.out.splitlines()[-1]
        runbook.run("guard-reenable", env)
        assert file_flags(flags)["records.strict"]["enabled"] is True
        assert file_flags(flags)["records.strict"]["strategies"][0]["parameters"]["rollout"] == "50"
    finally:
        guard.terminate()
        guard.wait(30)
    log = (tmp_path / "guard.log").read_text()
    assert guard.returncode == 1, log[-3000:]
    assert "rolled back: disabled records.strict" in log


@covers("reject-metrics", "reject-clients", "reject-report")
def test_strict_rejecting_legitimate_traffic(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        env = file_env(service)
        cohorts = strategies_of(service, [f"client-{i:02d}" for i in range(40)])
        strict = sorted(c for c, s in cohorts.items() if s == "strict")
        noisy, quiet = strict[0], strict[1]
        drive(service, [noisy], batches=20, records=lambda n: ["", "  ", None, "ok"])  # 3 rejected per batch
        drive(service, [quiet], batches=10, records=lambda n: ["", "ok"])  # 1 per batch
        drive(service, [c for c in cohorts if c not in (noisy, quiet)], batches=3, records=clean)
        wait_summaries(service, 80)

        ran = runbook.run("reject-metrics", env)
        for reason, n in (("empty", 30), ("blank", 20), ("missing", 20)):
            assert metric_value(ran.out, "canaryws_records_total", strategy="strict", outcome="rejected",
                                reason=reason) == n, ran.out
        ran = runbook.run("reject-clients", env)
        assert ran.out.split() == ["60", noisy, "10", quiet], ran.out
        ran = runbook.run("reject-report", env)
        cohorts_json = json.loads(ran.out)
        rejected = {reason: v["count"] for reason, v in cohorts_json["strict"]["rejected"].items()}
        assert rejected == {"empty": 30, "blank": 20, "missing": 20}, cohorts_json
        assert cohorts_json["lenient"]["rejected"] == {} and cohorts_json["lenient"]["skipped"] == {}


@covers("flags-readyz", "flags-file-check")
def test_flags_stale_because_the_file_is_broken(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=10)) as service:
        env = file_env(service)
        good = service.get("/readyz").json()["flags"]["revision"]
        service.write_flags('{"version": 2, "features": {"records.strict": {"enabled": false}}}')
        wait_until(lambda: service.get("/readyz").json()["flags"]["state"] == "degraded", 10, "degraded flags")
        ran = runbook.run("flags-readyz", env)
        flags = json.loads(ran.out)
        assert (flags["state"], flags["revision"], flags["source"]) == ("degraded", good, "file")
        assert "features: Input should be a valid list" in flags["last_error"]
        ran = runbook.run("flags-file-check", env, expect=1)
        assert "features: Input should be a valid list" in ran.err + ran.out, ran.err


@covers("flags-readyz", "unleash-health", "unleash-bootstrap-rollback", "unleash-after-restart", "unleash-back")
def test_the_unleash_server_unreachable(tmp_path: Path, runbook: Runbook, unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    service = unleash_service(tmp_path, unleash, flags_doc(strict_rollout=100))
    env = server_env(service, unleash)
    try:
        service.start()
        wait_server_flags(service)
        unleash.down()
        wait_until(lambda: service.get("/readyz").json()["flags"].get("stale") is True, 15, "stale flags")
        ran = runbook.run("flags-readyz", env)
        assert json.loads(ran.out)["state"] == "degraded"
        ran = runbook.run("unleash-health", env)
        ready = json.loads(ran.out.splitlines()[0])
        assert ready["state"] == "degraded" and ready["stale"] is True and ready["age_seconds"] > 2
        assert "Unleash does not answer" in ran.out

        ran = runbook.run("unleash-bootstrap-rollback", env)
        assert file_flags(service.flags_path)["records.strict"]["enabled"] is False
        service.stop()
        service.start()
        ran = runbook.run("unleash-after-restart", env)
        after = json.loads(ran.out)
        assert after["flags_from"] == "bootstrap"
        assert after["revision"] == validate_flags_data(json.loads(service.flags_path.read_text())).revision
        assert strategies_of(service, ["after-restart"]) == {"after-restart": "lenient"}

        unleash.up()
        runbook.run("unleash-back", env)
        served = unleash.client_features()
        assert not next(f for f in served["features"] if f["name"] == "records.strict")["enabled"]
        want = validate_flags_data(served).revision
        assert validate_flags_data(json.loads(service.flags_path.read_text())).revision == want
        status = service.wait_for_revision(lambda st: st["revision"] == want and st.get("flags_from") == "server",
                                           timeout=15)
        assert status["state"] == "ok" and status["flags_from"] == "server", status
        assert strategies_of(service, ["after-restart"]) == {"after-restart": "lenient"}
    finally:
        service.stop()
        unleash.up()


@covers("held-readyz", "held-show", "held-disable")
def test_a_cohort_flag_is_held(tmp_path: Path, runbook: Runbook, unleash: UnleashServer) -> None:
    """records.strict gets a strategy of another team's (a custom strategy defined on the server):
    the replica keeps its last good definition; disabling it still applies."""
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    admin = {"Authorization": unleash.values["UNLEASH_ADMIN_TOKEN"]}
    strategies = f"{unleash.url}/admin/projects/default/features/records.strict/environments/development/strategies"
    created = httpx.post(f"{unleash.url}/admin/strategies", headers=admin, timeout=10,
                         json={"name": "company-region", "description": "another team's", "parameters": []})
    assert created.status_code in (201, 409), created.text  # 409: an earlier run of this module created it
    service = unleash_service(tmp_path, unleash, flags_doc(strict_rollout=100))
    env = server_env(service, unleash)
    added: str | None = None
    try:
        service.start()
        wait_server_flags(service)
        good = service.get("/readyz").json()["flags"]["revision"]
        answer = httpx.post(strategies, headers=admin, timeout=10,
                            json={"name": "company-region", "parameters": {}, "constraints": []})
        assert answer.status_code == 200, answer.text
        added = answer.json()["id"]
        wait_until(lambda: service.get("/readyz").json()["flags"]["cohort_flags"]["records.strict"]["state"]
                   == "held", REFRESH + 5, "records.strict held")

        ran = runbook.run("held-readyz", env)
        cohort_flags = json.loads(ran.out.splitlines()[0])
        assert cohort_flags["records.strict"]["state"] == "held"
        assert cohort_flags["records.strict"]["kept_revision"] == good
        assert cohort_flags["records.strict"]["problems"] == ["custom_strategy"]
        assert 'canaryws_flags_cohort_held{flag="records.strict",source="unleash"} 1' in ran.out, ran.out
        assert 'canaryws_flags_problems{kind="custom_strategy",source="unleash"} 1' in ran.out, ran.out
        ran = runbook.run("held-show", env)
        assert "warning: records.strict cannot be evaluated as intended" in ran.err, ran.err
        assert "strategy 'company-region' is not one the Unleash engine implements" in ran.err, ran.err
        assert strategies_of(service, ["held-1", "held-2"]) == {"held-1": "strict", "held-2": "strict"}

        runbook.run("held-disable", env)
        wait_until(lambda: service.get("/readyz").json()["flags"]["cohort_flags"]["records.strict"]["state"]
                   == "disabled", REFRESH + 5, "records.strict disabled")
        assert strategies_of(service, ["held-1", "held-2"]) == {"held-1": "lenient", "held-2": "lenient"}
        assert service.get("/readyz").json()["flags"]["state"] == "ok"
    finally:
        service.stop()
        if added is not None:
            httpx.delete(f"{strategies}/{added}", headers=admin, timeout=10).raise_for_status()
        unleash.set_enabled("records.strict", True)


@covers("cohort-nodata")
def test_a_cohort_gets_no_traffic(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        cohorts = strategies_of(service, [f"c-{i:02d}" for i in range(20)])

        async def traffic() -> None:
            for cid, strategy in cohorts.items():
                async with service.client(cid) as (ws, _):
                    for n in range(3):
                        if strategy == "strict":  # strict's clients only get error frames
                            await ws.send("{not json")
                            assert json.loads(await ws.recv())["code"] == "invalid_json"
                        else:
                            await send_batch(ws, f"{cid}-{n}", clean(n))
        asyncio.run(traffic())
        wait_summaries(service, 40)
        ran = runbook.run("cohort-nodata", file_env(service))
        lines = ran.out.strip().splitlines()
        assert json.loads(lines[0]) == {"name": "records.strict", "enabled": True, "rollout": 50}
        strict_n = sum(s == "strict" for s in cohorts.values())
        assert metric_value(ran.out, "canaryws_flags_strict_share", source="file") == 0.5
        assert metric_value(ran.out, "canaryws_errors_total", strategy="strict", code="invalid_json") == 3 * strict_n
        assert metric_value(ran.out, "canaryws_batches_total", strategy="strict") == 0
        report = json.loads(lines[-1])
        assert report["cohorts"]["strict"]["batches"] == 0
        assert report["cohorts"]["strict"]["errors_by_code"] == {"invalid_json": 3 * strict_n}
        assert report["cohorts"]["lenient"]["batches"] == 3 * (20 - strict_n)


@covers("telemetry")
def test_the_telemetry_pipeline_down(tmp_path: Path, runbook: Runbook) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every export fails
    with Service(tmp_path, flags_doc(strict_rollout=50),
                 env={"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}) as service:
        drive(service, [f"t-{i}" for i in range(10)], batches=5, records=clean)
        wait_until(lambda: service.get("/readyz").json()["telemetry"]["traces"] == "degraded", 30, "degraded traces")
        ran = runbook.run("telemetry", file_env(service))
        telemetry = json.loads(ran.out.splitlines()[0])
        assert telemetry["traces"] == "degraded" and telemetry["dropped_spans"] > 0
        assert telemetry["exporters"][0]["exporter"] == "otlp" and telemetry["exporters"][0]["last_error"]
        assert metric_value(ran.out, "canaryws_telemetry_spans_dropped_total", exporter="otlp",
                            reason="export_failed") > 0
        assert service.get("/readyz").status_code == 200


@covers("sink-state", "sink-status")
def test_the_sink_is_unavailable(tmp_path: Path, runbook: Runbook) -> None:
    """The playbook's situation: the replica's PostgreSQL refuses its connections. The blocks show
    the sink unavailable with its last error and the unavailable batches, and `sink status` says
    it cannot connect (exit 1); once the database is back, with no restart, they show it ok."""
    from private_postgres import fresh_database, psql

    with fresh_database("canaryws_runbook_sink") as url:
        name = url.rsplit("/", 1)[1]
        admin = url.rsplit("/", 1)[0] + "/postgres"
        with Service(tmp_path, flags_doc(strict_rollout=50), env={"CANARYWS_SINK": url}) as service:
            env = file_env(service, CANARYWS_SINK=url)
            drive(service, [f"s-{i}" for i in range(4)], batches=3, records=clean)
            psql(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false; SELECT pg_terminate_backend(pid) "
                        f"FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid();")

            async def refused_batch() -> dict[str, Any]:
                headers = {"Authorization": f"Bearer {service.token('s-9')}"}
                async with connect(service.ws_url, additional_headers=headers, open_timeout=10,
                                   subprotocols=["canaryws.records.v2"]) as ws:  # type: ignore[list-item]
                    await ws.recv()
                    frames = await send_batch(ws, "late", clean(0))
                    return frames[-1]

            assert asyncio.run(refused_batch())["code"] == "unavailable"
            ran = runbook.run("sink-state", env)
            state = json.loads(ran.out.splitlines()[0])
            assert state["sink"] == "postgresql" and state["state"] == "unavailable" and state["last_error"]
            assert metric_value(ran.out, "canaryws_sink_up", sink="postgresql") == 0
            assert metric_value(ran.out, "canaryws_sink_batches_total", sink="postgresql", outcome="committed") == 12
            assert metric_value(ran.out, "canaryws_sink_batches_total", sink="postgresql", outcome="unavailable") >= 1
            ran = runbook.run("sink-status", env, expect=1)
            assert name in ran.err and "postgres:***@" not in ran.out  # no password in the URL anyway

            psql(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true;")
            wait_until(lambda: service.get("/readyz").json()["sink"]["state"] == "ok", 15, "the sink back")
            assert json.loads(runbook.run("sink-state", env).out.splitlines()[0])["state"] == "ok"
            ran = runbook.run("sink-status", env)
            assert "canaryws_batches" in ran.out and "12" in ran.out


@covers("storm-metrics", "storm-clients", "storm-revoke")
def test_a_connection_storm(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=50), env={"CANARYWS_MAX_CONNECTIONS_PER_CLIENT": "3"}) as service:
        env = file_env(service, CLIENT_ID="looper")

        async def storm() -> None:
            for n in range(40):  # a reconnect loop
                async with service.client("looper") as (ws, _):
                    await send_batch(ws, f"l-{n}", clean(n))
            async with service.client("hog"), service.client("hog"), service.client("hog"):
                for _ in range(2):  # over the per-client cap: refused
                    with pytest.raises(InvalidStatus) as refused:
                        async with service.client("hog"):
                            pass
                    assert refused.value.response.status_code == 429
            for cid in ("calm-1", "calm-2"):
                async with service.client(cid) as (ws, _):
                    await send_batch(ws, "b", clean(0))
        asyncio.run(storm())
        service.wait_for_spans(lambda spans: sum(s["name"] == "records.connect" for s in spans) >= 45)

        ran = runbook.run("storm-metrics", env)
        assert metric_value(ran.out, "canaryws_connections_refused_total", reason="too_many_connections") == 2
        assert metric_value(ran.out, "canaryws_connections_opened_total") == 45
        assert json.loads(ran.out.strip().splitlines()[-1])["open"] == 0
        ran = runbook.run("storm-clients", env)
        assert ran.out.split()[:2] == ["40", "looper"], ran.out
        assert "hog" in ran.out and "calm-1" in ran.out

        issued_before = service.token("looper")

        async def revoke() -> None:
            async with service.client("looper") as (ws, _):
                await send_batch(ws, "before", clean(0))
                await asyncio.to_thread(runbook.run, "storm-revoke", env)
                with pytest.raises(ConnectionClosed) as closed:
                    for n in range(50):
                        await send_batch(ws, f"after-{n}", clean(n))
                        await asyncio.sleep(0.1)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            with pytest.raises(InvalidStatus) as refused:  # a token issued before the revocation
                async with connect(service.ws_url, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                                   additional_headers={"Authorization": f"Bearer {issued_before}"}):
                    pass
            assert refused.value.response.status_code == 401
        asyncio.run(revoke())
        async def calm() -> None:
            async with service.client("calm-1") as (_, welcome):
                assert welcome["type"] == "welcome"
        asyncio.run(calm())  # the others are not affected


@covers("latency-report", "latency-process", "latency-shadow-off")
def test_a_latency_regression(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=50, shadow=True)) as service:
        assert service.proc is not None
        env = file_env(service, CANARYWS_PID=str(service.proc.pid))
        drive(service, [f"l-{i:02d}" for i in range(40)], batches=8, records=blank_heavy)
        wait_summaries(service, 40)
        ran = runbook.run("latency-report", env)
        latency = json.loads(ran.out)
        for cohort in ("strict", "lenient"):
            assert 0 < latency[cohort]["p50"] <= latency[cohort]["p95"] <= latency[cohort]["p99"], latency

        ran = runbook.run("latency-process", env, timeout=60)
        assert re.search(rf"^\s*{service.proc.pid}\s.*canaryws serve", ran.out, re.M), ran.out
        profile = json.loads((runbook.cwd / "profile.json").read_text())
        assert profile["$schema"].startswith("https://www.speedscope.app/")

        before = service.get("/readyz").json()["flags"]["revision"]
        runbook.run("latency-shadow-off", env)
        assert file_flags(service.flags_path)["records.shadow"]["enabled"] is False
        service.wait_for_revision(lambda st: st["revision"] != before)
        async def shadowless() -> None:
            async with service.client("l-00") as (_, welcome):
                assert welcome["cohort"]["shadow"] is False
        asyncio.run(shadowless())


class FreezableService(Service):
    """``canaryws serve`` whose event loop blocks for good once ``<root>/freeze`` exists: a stuck
    replica (a task that never yields). The script is named ``canaryws``, like the console script,
    so that its command line reads ``.../canaryws serve ...``."""

    SCRIPT = ("import asyncio, os, sys, time\n"
              "from canaryws.adapters.records.endpoint import RecordsEndpoint\n"
              "original = RecordsEndpoint.run\n"
              "async def freeze():\n"
              "    while not os.path.exists('freeze'):\n"
              "        await asyncio.sleep(0.05)\n"
              "    time.sleep(3600)\n"
              "async def run(self):\n"
              "    task = asyncio.get_running_loop().create_task(freeze())\n"
              "    await original(self)\n"
              "RecordsEndpoint.run = run\n"
              "from canaryws.cli import main\n"
              "main(sys.argv[1:], prog_name='canaryws')\n")

    def command(self) -> list[str]:
        script = self.root / "bin" / "canaryws"
        script.parent.mkdir(exist_ok=True)
        script.write_text(self.SCRIPT)
        return [sys.executable, str(script), *super().command()[3:]]


@covers("stuck-find", "stuck-check", "stuck-restart")
def test_a_stuck_replica(tmp_path: Path, runbook: Runbook) -> None:
    service = FreezableService(tmp_path, flags_doc(), extra_args=["--shutdown-timeout", "3"])
    with service:
        assert service.proc is not None
        pid = service.proc.pid
        env = file_env(service, CANARYWS_PID=str(pid))
        (tmp_path / "freeze").touch()
        def unanswered() -> bool:
            try:
                httpx.get(f"{service.http_url}/healthz", timeout=0.5)
            except httpx.TimeoutException:
                return True
            return False
        wait_until(unanswered, 10, "the replica to stop answering")

        ran = runbook.run("stuck-find", env)
        assert re.search(rf"^{pid} ", ran.out, re.M), ran.out
        ran = runbook.run("stuck-check", env)
        assert "no answer from /healthz within 2 s" in ran.out
        assert re.search(r"^\s+freeze \(", ran.out, re.M), ran.out  # py-spy shows the stuck frame
        reaper = threading.Thread(target=service.proc.wait)  # the orchestrator reaps its child
        reaper.start()
        ran = runbook.run("stuck-restart", env, timeout=60)
        reaper.join(5)
        assert service.proc.returncode == 1, service.logs()[-3000:]  # the watchdog, at the bound
        assert ran.seconds < 10
    assert "shutdown did not finish within the shutdown timeout; forcing exit" in service.logs()


def verify_everyone_stays_strict(runbook: Runbook, env: dict[str, str], service: Service,
                                 open_clients: Clients) -> None:
    """After the flags are gone: the open connections answered more batches, all still strict
    (no cohort frame, no cohort change), and a new client is strict."""
    served = open_clients.results
    wait_until(lambda: open_clients.results >= served + 10, 10, "batches under the new flags")
    ran = runbook.run("cleanup-verify", env)
    assert metric_value(ran.out, "canaryws_connections_active", strategy="strict") == len(open_clients.client_ids)
    assert metric_value(ran.out, "canaryws_cohort_changes_total") == 0, ran.out
    assert open_clients.cohort_frames == []
    assert strategies_of(service, ["new-client"]) == {"new-client": "strict"}


@covers("cleanup-check", "cleanup-file", "cleanup-verify")
def test_flag_clean_up_on_the_flags_file(tmp_path: Path, runbook: Runbook) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100), env={"CANARYWS_DEFAULT_STRATEGY": "strict"}) as service:
        env = file_env(service)
        with Clients(service, [f"k-{i}" for i in range(5)]) as open_clients:
            ran = runbook.run("cleanup-check", env)
            assert [json.loads(line) for line in ran.out.splitlines()] == [
                {"name": "records.strict", "enabled": True, "rollout": 100},
                {"name": "records.shadow", "enabled": False, "rollout": 100}]
            before = service.get("/readyz").json()["flags"]["revision"]
            runbook.run("cleanup-file", env)
            assert json.loads(service.flags_path.read_text())["features"] == []
            service.wait_for_revision(lambda st: st["revision"] != before)
            verify_everyone_stays_strict(runbook, env, service, open_clients)


@covers("probe-metrics", "probe-once")
def test_the_synthetic_probe_is_failing(tmp_path: Path, runbook: Runbook) -> None:
    """A running probe sees its strict identity moved by a ramp to 0 % (unexpected_cohort); a round by
    hand then passes and reports strict empty; against a server that answers a wrong outcome it fails."""
    from test_probe import ProbeProcess, failures, rounds, stub_server, wrong_outcome

    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        env = file_env(service)
        probe = ProbeProcess(tmp_path, "--url", service.ws_url, "--data-dir", str(service.data_dir),
                             "--interval", "0.5")
        try:
            probe.scrape_until(lambda t: rounds(t, "success") >= 1)
            service.write_flags(flags_doc(strict_rollout=0))
            probe.scrape_until(lambda t: failures(t, "unexpected_cohort") >= 1)
            ran = runbook.run("probe-metrics", {**env, "PROBE_URL": f"http://127.0.0.1:{probe.port}"})
        finally:
            probe.stop()
        assert metric_value(ran.out, "canaryws_probe_failures_total", kind="unexpected_cohort") >= 1, ran.out
        assert metric_value(ran.out, "canaryws_probe_failures_total", kind="wrong_outcome") == 0, ran.out
        assert metric_value(ran.out, "canaryws_probe_rounds_total", result="success") >= 1, ran.out
        ran = runbook.run("probe-once", env)
        assert "PASSED" in ran.out and "cohort strict: empty" in ran.out and "lenient@1" in ran.out, ran.out
        with stub_server(wrong_outcome) as url:
            stub = url.removeprefix("ws").removesuffix("/records")
            ran = runbook.run("probe-once", {**env, "CANARYWS_URL": f"http{stub}"}, expect=1)
        assert "FAILED" in ran.out and "wrong_outcome" in ran.out, ran.out
        assert "index 6: expected rejected empty, got rejected blank" in ran.out, ran.out


def rollout_state(service: Service) -> dict[str, Any]:
    path = service.data_dir / "rollout.json"
    return json.loads(path.read_text()) if path.exists() else {}


@covers("rollout-start", "rollout-status", "rollout-pause", "rollout-promote", "rollback-file", "rollout-resume",
        "rollout-abort")
def test_a_rollout_by_the_controller_paused_promoted_killed_resumed_aborted(tmp_path: Path, runbook: Runbook) -> None:
    """The controller started as the runbook says (a day's hold: nothing is promoted by itself here), watched,
    paused, promoted by hand, paused by the kill switch, resumed, and aborted: the flags follow each step."""
    with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False)) as service:
        env = file_env(service, ROLLOUT_URL="http://127.0.0.1:9466")
        strict = lambda: (file_flags(service.flags_path)["records.strict"]["enabled"],  # noqa: E731
                          file_flags(service.flags_path)["records.strict"]["strategies"][0]["parameters"]["rollout"])
        runbook.run("rollout-start", env)
        pid = None
        try:
            wait_until(lambda: rollout_state(service).get("since_ns") is not None, 30, "the first step")
            assert strict() == (True, "1")
            ran = runbook.run("rollout-status", env)
            assert "rollout of records.strict: ramping, step 1 of 5 (1 %)" in ran.out, ran.out
            assert "controller: running, pid" in ran.out
            pid = int(ran.out.split("controller: running, pid ")[1].split()[0])
            assert metric_value(ran.out, "canaryws_rollout_percent") == 1
            assert metric_value(ran.out, "canaryws_rollout_state", state="ramping") == 1
            assert metric_value(ran.out, "canaryws_rollout_paused") == 0

            ran = runbook.run("rollout-pause", env)
            assert "the running controller" in ran.out
            wait_until(lambda: rollout_state(service).get("state") == "paused", 10, "the pause")
            assert rollout_state(service)["reason"] == "looking at a latency change"
            ran = runbook.run("rollout-status", env)
            assert metric_value(ran.out, "canaryws_rollout_paused") == 1 and "reason: looking at" in ran.out

            runbook.run("rollout-promote", env)
            wait_until(lambda: strict() == (True, "5"), 10, "the promote by hand")
            assert rollout_state(service)["decisions"][-1]["reasons"] == ["promoted by an operator"]

            runbook.run("rollback-file", env)  # the kill switch, during the hold
            wait_until(lambda: rollout_state(service).get("state") == "paused", 10, "the pause on a manual change")
            assert "kill switch" in rollout_state(service)["reason"]
            time.sleep(1)
            assert strict() == (False, "5")  # not overwritten

            runbook.run("rollout-resume", env)
            wait_until(lambda: strict() == (True, "5") and rollout_state(service).get("state") == "ramping", 30,
                       "the step set again")

            ran = runbook.run("rollout-abort", env)
            wait_until(lambda: rollout_state(service).get("state") == "aborted", 30, "the abort")
            wait_until(lambda: strict() == (False, "5"), 10, "records.strict disabled")
            os.kill(pid, 15)  # it serves its metrics 60 s after the end (for the alert); SIGTERM ends that wait
            wait_until(lambda: not _alive(pid), 15, "the controller to exit")
        finally:
            if pid is not None and _alive(pid):
                os.kill(pid, 15)
    log = [json.loads(line) for line in (runbook.cwd / "rollout.log").read_text().splitlines() if line.startswith("{")]
    kinds = [r["decision"]["kind"] for r in log if r["message"].startswith("rollout decision: ")]
    assert kinds == ["start", "pause", "resume", "promote", "manual_change", "resume", "abort"], kinds


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited process left unreaped by its new parent counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@covers("cleanup-check", "cleanup-unleash", "cleanup-verify")
def test_flag_clean_up_on_the_unleash_server(tmp_path: Path, runbook: Runbook, unleash: UnleashServer) -> None:
    """Last in the module: it archives the seeded flags."""
    unleash.set_enabled("records.shadow", False)
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    with unleash_service(tmp_path, unleash, flags_doc(strict_rollout=100),
                         CANARYWS_DEFAULT_STRATEGY="strict") as service:
        env = server_env(service, unleash)
        wait_server_flags(service)
        with Clients(service, [f"s-{i}" for i in range(5)]) as open_clients:
            ran = runbook.run("cleanup-check", env)
            assert {json.loads(line)["name"]: json.loads(line)["rollout"] for line in ran.out.splitlines()} == {
                "records.strict": 100, "records.shadow": 100}
            runbook.run("cleanup-unleash", env)
            wait_until(lambda: not unleash.client_features()["features"], 15, "the server to stop serving the flags")
            assert json.loads(service.flags_path.read_text())["features"] == []
            want = validate_flags_data(unleash.client_features()).revision
            service.wait_for_revision(lambda st: st["revision"] == want, timeout=REFRESH + 10)
            verify_everyone_stays_strict(runbook, env, service, open_clients)
