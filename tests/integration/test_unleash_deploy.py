"""deploy/unleash: a real Unleash server (npm unleash-server 8 on Node 22) that the project starts itself.

One server for the module, with its own state dir, port and database, driven the way an operator
drives it: ``up`` (twice), the client and admin APIs with the printed tokens, ``down``, ``down --purge``.
Two more, started side by side without ``UNLEASH_DB`` as two checkouts would, show that each state
dir gets its own database and that ``down --purge`` drops only what its state dir created; and the
deploy/unleash snippet of docs/operating.md is run as written, with ``up`` failing and working.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "unleash"
FLAGS = REPO / "flags" / "features.json"
SECRET_FILES = ("client-token", "admin-token", "admin-password", "session-secret")
SETTINGS = ("UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN", "UNLEASH_ENVIRONMENT")
PSQL = ("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc")


@dataclass
class Unleash:
    state: Path
    port: int
    db: str
    env: dict[str, str]
    settings: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pid(self) -> int:
        return int((self.state / "unleash.pid").read_text())

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, f"{self.base}/api/admin{path}",
                             headers={"Authorization": self.settings["UNLEASH_ADMIN_TOKEN"]}, timeout=10)

    def client_features(self, token: str | None = None) -> httpx.Response:
        headers = {} if token is None else {"Authorization": token}
        return httpx.get(f"{self.base}/api/client/features", headers=headers, timeout=10)

    def enabled(self) -> dict[str, bool]:
        response = self.client_features(self.settings["UNLEASH_API_TOKEN"])
        assert response.status_code == 200, response.text
        return {feature["name"]: feature["enabled"] for feature in response.json()["features"]}

    def wait_enabled(self, name: str, want: bool, timeout: float = 10.0) -> None:
        # The client API serves a snapshot that unleash refreshes about once a second.
        deadline = time.monotonic() + timeout
        while (seen := self.enabled().get(name)) is not want:
            assert time.monotonic() < deadline, f"{name} still enabled={seen} after {timeout}s"
            time.sleep(0.2)


def run(script: str, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEPLOY / script), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def explain(done: subprocess.CompletedProcess[str], state: Path) -> str:
    log = state / "unleash.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else "(no log)"
    return f"exit {done.returncode}\n--- stderr\n{done.stderr}\n--- stdout\n{done.stdout}\n--- {log}\n{tail}"


def parse_settings(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines())


def up(env: dict[str, str], state: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # The first run may install node_modules (npm ci, ~25 s) before the server starts.
    done = run("up", env, timeout=timeout)
    assert done.returncode == 0, explain(done, state)
    return done


def databases() -> set[str]:
    done = subprocess.run([*PSQL, "SELECT datname FROM pg_database"], capture_output=True, text=True, check=True,
                          timeout=30)
    return set(done.stdout.split())


def sql(statement: str) -> None:
    subprocess.run([*PSQL, statement], capture_output=True, text=True, check=True, timeout=60)


def default_db(state: Path) -> str:
    """The database ``up`` names after a state dir when ``UNLEASH_DB`` is not set."""
    return "canaryws_unleash_" + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]


def recorded(state: Path) -> list[str]:
    """The databases ``up`` recorded as created for a state dir."""
    record = state / "database"
    return record.read_text().split() if record.exists() else []


def clean_env(**settings: str) -> dict[str, str]:
    """The caller's environment without any deploy/unleash or UNLEASH_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEASH_") and k != "CANARYWS_FLAGS"}
    return env | settings


def assert_failure_line(stdout: str, reason: str) -> None:
    """On failure ``up`` prints one line that, eval'd, says so on stderr, sets nothing and fails."""
    assert stdout.startswith("echo 'deploy/unleash/up failed: "), stdout
    assert stdout.endswith("' >&2; false\n") and stdout.count("\n") == 1, stdout
    assert not any(line.startswith("UNLEASH_") for line in stdout.splitlines()), stdout
    shell = subprocess.run(["bash", "-c", 'eval "$(cat)" || { echo "status $?"; env | grep "^UNLEASH_"; exit 0; }'],
                           input=stdout, env=clean_env(), capture_output=True, text=True, timeout=30, check=True)
    assert shell.stdout == "status 1\n"  # and no UNLEASH_* variable
    assert shell.stderr.startswith("deploy/unleash/up failed: "), shell.stderr
    assert reason in shell.stderr and "no UNLEASH_* settings were set" in shell.stderr, shell.stderr


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return not status.rsplit(")", 1)[1].strip().startswith("Z")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def unleash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unleash]:
    state = tmp_path_factory.mktemp("unleash") / "state"
    port = free_port()
    db = f"canaryws_unleash_test_{secrets.token_hex(4)}"
    env = {**os.environ, "UNLEASH_STATE_DIR": str(state), "UNLEASH_PORT": str(port), "UNLEASH_DB": db}
    env.pop("CANARYWS_FLAGS", None)
    try:
        done = up(env, state)
        yield Unleash(state, port, db, env, parse_settings(done.stdout))
    finally:
        run("down", env, "--purge", timeout=60)


def test_up_prints_the_settings_for_canaryws_and_keeps_its_secrets_private(unleash: Unleash) -> None:
    assert list(unleash.settings) == ["UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN",
                                      "UNLEASH_ENVIRONMENT"]
    assert unleash.settings["UNLEASH_URL"] == f"http://127.0.0.1:{unleash.port}/api"
    assert re.fullmatch(r"default:development\.[0-9a-f]{56}", unleash.settings["UNLEASH_API_TOKEN"])
    assert re.fullmatch(r"\*:\*\.[0-9a-f]{56}", unleash.settings["UNLEASH_ADMIN_TOKEN"])
    assert unleash.settings["UNLEASH_ENVIRONMENT"] == "development"

    assert stat.S_IMODE(unleash.state.stat().st_mode) == 0o700
    for name in (*SECRET_FILES, "database"):
        assert stat.S_IMODE((unleash.state / name).stat().st_mode) == 0o600, name
    assert recorded(unleash.state) == [unleash.db]  # up created it, for this state dir
    assert (unleash.state / "client-token").read_text().strip() == unleash.settings["UNLEASH_API_TOKEN"]

    # A shell takes the lines as they are (the admin token's `*` is not globbed in an assignment).
    shell = subprocess.run(["bash", "-c", 'eval "$(cat)"; printf "%s\\n" "$UNLEASH_ADMIN_TOKEN"'],
                           input="\n".join(f"{k}={v}" for k, v in unleash.settings.items()),
                           capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == unleash.settings["UNLEASH_ADMIN_TOKEN"]


def test_client_api_serves_the_seeded_flags_to_the_client_token(unleash: Unleash) -> None:
    response = unleash.client_features(unleash.settings["UNLEASH_API_TOKEN"])
    assert response.status_code == 200, response.text
    served = {feature["name"]: feature for feature in response.json()["features"]}

    strict, shadow = served["records.strict"], served["records.shadow"]
    assert strict["enabled"] is True
    assert [(s["name"], s["parameters"]) for s in strict["strategies"]] == [
        ("flexibleRollout", {"rollout": "0", "stickiness": "userId", "groupId": "records.strict"})]
    assert shadow["enabled"] is False

    # ... and, generally, every flag of flags/features.json as written there.
    for feature in json.loads(FLAGS.read_text())["features"]:
        got = served[feature["name"]]
        assert got["enabled"] == feature["enabled"], feature["name"]
        assert got["type"] == feature["type"], feature["name"]
        assert [(s["name"], s["parameters"], s["constraints"]) for s in got["strategies"]] == [
            (s["name"], s["parameters"], s["constraints"]) for s in feature["strategies"]], feature["name"]


def test_requests_without_a_valid_token_of_the_right_type_are_refused(unleash: Unleash) -> None:
    client, admin = unleash.settings["UNLEASH_API_TOKEN"], unleash.settings["UNLEASH_ADMIN_TOKEN"]
    assert unleash.client_features(None).status_code == 401
    assert unleash.client_features("default:development." + "0" * 56).status_code == 401
    assert unleash.client_features(client[:-1] + ("1" if client[-1] == "0" else "0")).status_code == 401
    # unleash 8 serves the client API to backend (client) tokens only.
    assert unleash.client_features(admin).status_code == 403

    features = f"{unleash.base}/api/admin/projects/default/features"
    assert httpx.get(features, timeout=10).status_code == 401
    assert httpx.get(features, headers={"Authorization": "*:*." + "0" * 56}, timeout=10).status_code == 401
    assert httpx.get(features, headers={"Authorization": client}, timeout=10).status_code == 403
    assert httpx.get(features, headers={"Authorization": admin}, timeout=10).status_code == 200


def test_second_up_reuses_the_server_and_seeds_only_absent_flags(unleash: Unleash, tmp_path: Path) -> None:
    pid = unleash.pid()
    # An operator turns the kill switch; the flags file of the next `up` says otherwise and adds a flag.
    toggle = unleash.admin("POST", "/projects/default/features/records.strict/environments/development/off")
    assert toggle.status_code == 200, toggle.text
    unleash.wait_enabled("records.strict", False)

    document = json.loads(FLAGS.read_text())
    extra = json.loads(json.dumps(document["features"][0]))
    extra.update(name=f"test.extra.{secrets.token_hex(3)}", enabled=True, description="seeded by the test")
    extra["strategies"] = [{"name": "default", "parameters": {}, "constraints": [
        {"contextName": "userId", "operator": "IN", "values": ["c-1"], "inverted": False,
         "caseInsensitive": False}]}]
    document["features"].append(extra)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(document))

    try:
        done = up({**unleash.env, "CANARYWS_FLAGS": str(flags)}, unleash.state, timeout=120)
        assert parse_settings(done.stdout) == unleash.settings
        assert "reusing the server" in done.stderr
        assert unleash.pid() == pid

        enabled = unleash.enabled()
        assert enabled["records.strict"] is False  # present, left to the operator
        assert enabled[extra["name"]] is True
        served = {f["name"]: f for f in unleash.client_features(unleash.settings["UNLEASH_API_TOKEN"]).json()[
            "features"]}
        assert [s["constraints"] for s in served[extra["name"]]["strategies"]] == [
            [{"contextName": "userId", "operator": "IN", "values": ["c-1"], "inverted": False,
              "caseInsensitive": False}]]
    finally:
        unleash.admin("POST", "/projects/default/features/records.strict/environments/development/on")
        unleash.admin("DELETE", f"/projects/default/features/{extra['name']}")
        unleash.admin("DELETE", f"/archive/{extra['name']}")
    unleash.wait_enabled("records.strict", True)


def test_a_state_dir_whose_tokens_the_database_lacks_fails_with_an_explanation(
        unleash: Unleash, tmp_path: Path) -> None:
    # unleash creates the initial tokens only in a database without any tokens.
    other_state, other_port = tmp_path / "other-state", free_port()
    env = {**unleash.env, "UNLEASH_STATE_DIR": str(other_state), "UNLEASH_PORT": str(other_port)}
    try:
        done = run("up", env, timeout=120)
        assert done.returncode != 0, explain(done, other_state)
        assert "refuses the admin token" in done.stderr, explain(done, other_state)
        assert_failure_line(done.stdout, "seeding")
        assert not listening(other_port)  # the server this run started is stopped again

        # The database existed: not this state dir's, so its purge leaves it (and its server) alone.
        assert recorded(other_state) == []
        purge = run("down", {k: v for k, v in env.items() if k != "UNLEASH_DB"}, "--purge", timeout=60)
        assert purge.returncode == 0, explain(purge, other_state)
        assert not other_state.exists()
        assert unleash.db in databases()
        assert unleash.enabled()["records.strict"] is True
    finally:
        run("down", env, timeout=60)


def test_without_unleash_db_a_state_dir_keeps_the_database_of_its_last_server(unleash: Unleash) -> None:
    # Its instance file names the database, as for a state dir from before per-state-dir names.
    assert (unleash.state / "instance").read_text() == f"port={unleash.port} db={unleash.db}\n"
    pid = unleash.pid()
    done = up({k: v for k, v in unleash.env.items() if k != "UNLEASH_DB"}, unleash.state, timeout=120)
    assert parse_settings(done.stdout) == unleash.settings
    assert "reusing the server" in done.stderr
    assert unleash.pid() == pid
    assert default_db(unleash.state) not in databases()


def test_down_purge_refuses_a_database_the_state_dir_did_not_create(unleash: Unleash, tmp_path: Path) -> None:
    foreign = f"canaryws_unleash_test_foreign_{secrets.token_hex(4)}"
    sql(f'CREATE DATABASE "{foreign}"')
    try:
        pid = unleash.pid()
        done = run("down", {**unleash.env, "UNLEASH_DB": foreign}, "--purge", timeout=60)
        assert done.returncode == 1, explain(done, unleash.state)
        assert f"refusing to drop database {foreign}: up did not create it for {unleash.state.resolve()}" \
            in done.stderr, done.stderr
        assert "nothing stopped, dropped or removed" in done.stderr
        # ... before touching anything: the server runs on, both databases and the state dir stay.
        assert {foreign, unleash.db} <= databases()
        assert alive(pid) and unleash.enabled()["records.strict"] is True
        assert recorded(unleash.state) == [unleash.db]
        assert all((unleash.state / name).exists() for name in SECRET_FILES)

        # Without a state dir nothing was created for it either.
        absent = {**unleash.env, "UNLEASH_STATE_DIR": str(tmp_path / "absent"), "UNLEASH_DB": foreign}
        done = run("down", absent, "--purge", timeout=60)
        assert done.returncode == 1 and f"refusing to drop database {foreign}" in done.stderr, done.stderr
        assert foreign in databases()
        # ... while a database that does not exist is nothing to refuse (a teardown after a failed up).
        done = run("down", {**absent, "UNLEASH_DB": f"{foreign}_none"}, "--purge", timeout=60)
        assert done.returncode == 0 and "does not exist; nothing to drop" in done.stderr, done.stderr
        assert not (tmp_path / "absent").exists()
    finally:
        sql(f'DROP DATABASE IF EXISTS "{foreign}" WITH (FORCE)')


def readme_snippet() -> str:
    """The first command of the deploy/unleash block of docs/operating.md (linked from README.md), as
    written: ``up``, and the service on its settings."""
    section = (REPO / "docs" / "operating.md").read_text().split("## Flags from a real Unleash server\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines: list[str] = []
    for line in block.splitlines():
        lines.append(line)
        if not line.split(" #", 1)[0].rstrip().endswith(("&&", "||", "\\", "|")):
            break
    snippet = "\n".join(lines) + "\n"
    assert "deploy/unleash/up" in snippet and "make serve" in snippet, snippet
    return snippet


@pytest.fixture
def fake_make(tmp_path: Path) -> Path:
    """A directory with a ``make`` that shows how it was called and the UNLEASH_* variables it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    make = bin_dir / "make"
    make.write_text('#!/bin/sh\nprintf "make %s\\n" "$*"\nenv | grep "^UNLEASH_" | sort\n')
    make.chmod(0o755)
    return bin_dir


def run_snippet(env: dict[str, str], fake_make: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", readme_snippet()], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False, env={**env, "PATH": f"{fake_make}{os.pathsep}{os.environ['PATH']}"})


def test_the_readme_snippet_exports_the_settings_to_the_service(unleash: Unleash, fake_make: Path) -> None:
    env = clean_env(UNLEASH_STATE_DIR=str(unleash.state), UNLEASH_PORT=str(unleash.port), UNLEASH_DB=unleash.db)
    done = run_snippet(env, fake_make)
    assert done.returncode == 0, explain(done, unleash.state)
    called, *lines = done.stdout.splitlines()
    assert called == "make serve"
    seen = dict(line.split("=", 1) for line in lines)
    assert {key: seen.get(key) for key in SETTINGS} == unleash.settings
    assert seen["UNLEASH_REFRESH_INTERVAL"] == "5"


def test_down_stops_the_server_and_up_brings_it_back_with_the_same_tokens(unleash: Unleash) -> None:
    pid = unleash.pid()
    done = run("down", unleash.env, timeout=60)
    assert done.returncode == 0, explain(done, unleash.state)
    assert not alive(pid)
    assert not (unleash.state / "unleash.pid").exists()
    assert not listening(unleash.port)

    again = run("down", unleash.env, timeout=60)
    assert again.returncode == 0, explain(again, unleash.state)
    assert "no unleash-server" in again.stderr

    done = up(unleash.env, unleash.state, timeout=120)
    assert parse_settings(done.stdout) == unleash.settings
    assert unleash.pid() != pid
    assert unleash.enabled()["records.strict"] is True


def test_down_purge_drops_the_database_and_the_state_dir(unleash: Unleash) -> None:
    assert unleash.db in databases()
    done = run("down", unleash.env, "--purge", timeout=60)
    assert done.returncode == 0, explain(done, unleash.state)
    assert unleash.db not in databases()
    assert not unleash.state.exists()
    assert not listening(unleash.port)


# -- several checkouts on one machine ----------------------------------------------


@pytest.fixture(scope="module")
def two_checkouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Unleash]]:
    """Two state dirs, as two checkouts have, started at the same time without UNLEASH_DB."""
    root = tmp_path_factory.mktemp("checkouts")
    ports: list[int] = []
    while len(ports) < 2:
        if (port := free_port()) not in ports:
            ports.append(port)
    states = [root / name / "deploy" / "unleash" / ".state" for name in ("one", "two")]
    envs = [clean_env(UNLEASH_STATE_DIR=str(state), UNLEASH_PORT=str(port))
            for state, port in zip(states, ports, strict=True)]
    try:
        procs = [subprocess.Popen([str(DEPLOY / "up")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for env in envs]
        checkouts = []
        for proc, state, port, env in zip(procs, states, ports, envs, strict=True):
            stdout, stderr = proc.communicate(timeout=300)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
            assert done.returncode == 0, explain(done, state)
            checkouts.append(Unleash(state, port, default_db(state), env, parse_settings(stdout)))
        yield checkouts
    finally:
        for env in envs:
            run("down", env, "--purge", timeout=60)


def test_state_dirs_without_unleash_db_get_their_own_databases_and_run_side_by_side(
        two_checkouts: list[Unleash]) -> None:
    one, two = two_checkouts
    assert one.db != two.db
    for checkout in (one, two):
        assert re.fullmatch(r"canaryws_unleash_[0-9a-f]{12}", checkout.db)
        assert checkout.db in databases()
        assert recorded(checkout.state) == [checkout.db]
        assert stat.S_IMODE((checkout.state / "database").stat().st_mode) == 0o600
        assert (checkout.state / "instance").read_text() == f"port={checkout.port} db={checkout.db}\n"
        assert checkout.settings["UNLEASH_URL"] == f"http://127.0.0.1:{checkout.port}/api"
        assert checkout.enabled()["records.strict"] is True
    # Each server has the tokens of its own state dir only.
    assert one.settings["UNLEASH_API_TOKEN"] != two.settings["UNLEASH_API_TOKEN"]
    assert one.client_features(two.settings["UNLEASH_API_TOKEN"]).status_code == 401
    assert two.client_features(one.settings["UNLEASH_API_TOKEN"]).status_code == 401

    # up again: the same database and server.
    pid = one.pid()
    again = up(one.env, one.state, timeout=120)
    assert parse_settings(again.stdout) == one.settings
    assert "reusing the server" in again.stderr
    assert one.pid() == pid and recorded(one.state) == [one.db]


def test_down_purge_of_one_checkout_leaves_the_other_intact(two_checkouts: list[Unleash]) -> None:
    one, two = two_checkouts
    pid_one, pid_two = one.pid(), two.pid()
    done = run("down", one.env, "--purge", timeout=60)
    assert done.returncode == 0, explain(done, one.state)
    assert f"dropping database {one.db}" in done.stderr
    assert one.db not in databases()
    assert not one.state.exists()
    assert not alive(pid_one) and not listening(one.port)

    assert two.db in databases()
    assert alive(pid_two) and two.pid() == pid_two
    assert two.enabled()["records.strict"] is True
    assert recorded(two.state) == [two.db]


def test_a_database_that_existed_before_up_is_used_but_never_dropped(tmp_path: Path) -> None:
    db = f"canaryws_unleash_test_pre_{secrets.token_hex(4)}"
    state, port = tmp_path / "state", free_port()
    env = clean_env(UNLEASH_STATE_DIR=str(state), UNLEASH_PORT=str(port), UNLEASH_DB=db)
    sql(f'CREATE DATABASE "{db}"')  # say, by an administrator, empty
    try:
        done = up(env, state)
        assert "creating database" not in done.stderr
        assert recorded(state) == []
        pid = int((state / "unleash.pid").read_text())

        refused = run("down", env, "--purge", timeout=60)
        assert refused.returncode == 1, explain(refused, state)
        assert f"refusing to drop database {db}" in refused.stderr
        assert db in databases() and alive(pid) and (state / "client-token").exists()

        done = run("down", {k: v for k, v in env.items() if k != "UNLEASH_DB"}, "--purge", timeout=60)
        assert done.returncode == 0, explain(done, state)
        assert "dropping database" not in done.stderr
        assert f"left database {db} in place" in done.stderr
        assert db in databases()
        assert not alive(pid) and not state.exists()
    finally:
        run("down", env, timeout=60)
        sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.mark.parametrize("setting, reason", [
    ({"UNLEASH_PORT": "notaport"}, "UNLEASH_PORT is not a port: notaport"),
    ({"CANARYWS_FLAGS": "/nonexistent/features.json"},
     "flags file not readable: /nonexistent/features.json (set CANARYWS_FLAGS)"),
], ids=["bad-port", "unreadable-flags"])
def test_the_readme_snippet_stops_with_a_clear_message_when_up_fails(
        setting: dict[str, str], reason: str, tmp_path: Path, fake_make: Path) -> None:
    state = tmp_path / "state"
    env = clean_env(UNLEASH_STATE_DIR=str(state), UNLEASH_PORT=str(free_port()), UNLEASH_DB="canaryws_unused") | setting
    done = run_snippet(env, fake_make)
    assert done.returncode != 0
    assert done.stdout == ""  # make serve did not run
    assert f"deploy/unleash/up failed: {reason}; no UNLEASH_* settings were set" in done.stderr, done.stderr
    assert not state.exists()

    plain = run("up", env, timeout=60)
    assert plain.returncode == 1
    assert_failure_line(plain.stdout, reason)
