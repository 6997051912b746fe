"""deploy/unleash: a real Unleash server (npm unleash-server 8 on Node 22) that the project starts itself.

One server for the module, with its own state dir, port and database, driven the way an operator
drives it: ``up`` (twice), the client and admin APIs with the printed tokens, ``down``, ``down --purge``.
"""

from __future__ import annotations

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
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
                           "SELECT datname FROM pg_database"], capture_output=True, text=True, check=True, timeout=30)
    return set(done.stdout.split())


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
    for name in SECRET_FILES:
        assert stat.S_IMODE((unleash.state / name).stat().st_mode) == 0o600, name
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
        assert done.stdout == ""
        assert not listening(other_port)  # the server this run started is stopped again
    finally:
        run("down", env, timeout=60)


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
