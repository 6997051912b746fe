"""``canaryws flags`` driving a real Unleash server through its Admin API.

One unleash-server for the module, started with ``deploy/unleash/up`` on its own state
dir, port and database (``down --purge`` afterwards); the CLI runs as a subprocess with
the settings ``up`` prints, exactly as an operator would run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from canaryws.adapters.flags.file_store import read_document
from canaryws.core.flagdoc import parse_flags_document, validate_flags_data
from harness import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "unleash"
FLAGS = REPO / "flags" / "features.json"
UNLEASH_VARS = ("UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN", "UNLEASH_ENVIRONMENT", "UNLEASH_PROJECT")


@dataclass
class Server:
    settings: dict[str, str]  # what `up` printed

    @property
    def url(self) -> str:
        return self.settings["UNLEASH_URL"]

    @property
    def tokens(self) -> tuple[str, str]:
        return self.settings["UNLEASH_ADMIN_TOKEN"], self.settings["UNLEASH_API_TOKEN"]

    def client_features(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}/client/features",
            headers={"Authorization": self.settings["UNLEASH_API_TOKEN"], "Unleash-Client-Spec": "6.1.0"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_served(self, flag: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The flag as the client API serves it, once it is served and ``check`` holds (the client
        API refreshes about once a second, so a flag just created may not be served yet)."""
        deadline = time.monotonic() + timeout
        while True:
            features = [f for f in self.client_features()["features"] if f["name"] == flag]
            if features and check(features[0]):
                return features[0]
            assert time.monotonic() < deadline, f"{flag} is still served as {features}"
            time.sleep(0.2)


def _deploy(script: str, env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / script), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {key: value for key, value in os.environ.items() if key not in UNLEASH_VARS}
    env |= {
        "UNLEASH_STATE_DIR": str(tmp_path_factory.mktemp("unleash") / "state"),
        "UNLEASH_PORT": str(free_port()),
        "UNLEASH_DB": f"canaryws_cli_{uuid.uuid4().hex[:12]}",
        "CANARYWS_FLAGS": str(FLAGS),
    }
    up = _deploy("up", env, timeout=280)
    try:
        assert up.returncode == 0, f"deploy/unleash/up failed ({up.returncode}):\n{up.stderr[-4000:]}"
        settings = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
        assert settings.keys() >= {"UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN", "UNLEASH_ENVIRONMENT"}
        yield Server(settings)
    finally:
        down = _deploy("down", env, "--purge", timeout=120)
        assert down.returncode == 0, down.stderr


def canaryws(server: Server, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``canaryws`` with the settings ``up`` printed (``NAME=None`` unsets one); never shows a token."""
    full = {key: value for key, value in os.environ.items() if key not in UNLEASH_VARS and key != "CANARYWS_FLAGS"}
    full |= server.settings | {"COLUMNS": "200"}
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    done = subprocess.run(
        [sys.executable, "-m", "canaryws", *args], env=full, capture_output=True, text=True, timeout=60, check=False
    )
    for token in (*server.tokens, env.get("UNLEASH_ADMIN_TOKEN") or "", env.get("UNLEASH_API_TOKEN") or ""):
        if token:
            assert token not in done.stdout + done.stderr, f"a token was printed: {done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def show(server: Server) -> dict[str, Any]:
    done = canaryws(server, "flags", "show", "--json")
    assert done.returncode == 0, done.stderr
    listing: dict[str, Any] = json.loads(done.stdout)
    return listing


def rows(server: Server) -> dict[str, tuple[bool, int | None]]:
    return {row["name"]: (row["enabled"], row["rollout"]) for row in show(server)["flags"]}


def where(server: Server) -> str:
    return f"in Unleash {server.url} (project default, environment development)"


def admin(server: Server, method: str, path: str, body: Any = None) -> httpx.Response:
    """The Admin API directly (``path`` below ``/api/admin``), for setting up what a test needs."""
    response = httpx.request(
        method,
        f"{server.url}/admin{path}",
        json=body,
        headers={"Authorization": server.settings["UNLEASH_ADMIN_TOKEN"]},
        timeout=10,
    )
    assert response.is_success, f"{method} {path}: HTTP {response.status_code} {response.text}"
    return response


def served_names(server: Server) -> list[str]:
    return [f["name"] for f in server.client_features()["features"]]


@contextlib.contextmanager
def temporary_flags(server: Server, *names: str) -> Iterator[None]:
    """Flags created for one test in project default (enabled in development, 100 %), so
    that archiving them leaves the seeded ones to the other tests; archived and deleted
    afterwards, whatever the test did to them."""
    try:
        for name in names:
            admin(server, "POST", "/projects/default/features", {"name": name, "type": "release"})
            env_path = f"/projects/default/features/{name}/environments/development"
            parameters = {"rollout": "100", "stickiness": "userId", "groupId": name}
            admin(server, "POST", f"{env_path}/strategies", {"name": "flexibleRollout", "parameters": parameters})
            admin(server, "POST", f"{env_path}/on")
        for name in names:
            server.wait_served(name, lambda f: f["enabled"] is True)
        yield
    finally:
        for name in reversed(names):  # dependents first
            httpx.delete(
                f"{server.url}/admin/projects/default/features/{name}",
                headers={"Authorization": server.settings["UNLEASH_ADMIN_TOKEN"]},
                timeout=10,
            )
            admin(server, "DELETE", f"/archive/{name}")


# ------------------------------------------------------------------------------ tests


def test_show_lists_both_flags_from_the_server(server: Server) -> None:
    done = canaryws(server, "flags", "show")
    assert done.returncode == 0, done.stderr
    listing = show(server)
    header = done.stdout.splitlines()[0]
    assert header == (
        f"flags from Unleash {server.url} (project default, environment development, revision {listing['revision']})"
    )
    for text in ("records.strict", "records.shadow", "flexibleRollout 0% (userId)", "flexibleRollout 100% (userId)"):
        assert text in done.stdout
    assert listing["source"] == "unleash" and listing["location"] == server.url
    assert (listing["project"], listing["environment"]) == ("default", "development")
    assert rows(server) == {"records.shadow": (False, 100), "records.strict": (True, 0)}


def test_rollout_changes_the_servers_flexible_rollout(server: Server) -> None:
    before = show(server)
    done = canaryws(server, "flags", "rollout", "records.strict", "25")
    assert done.returncode == 0, done.stderr
    after = show(server)
    assert after["revision"] != before["revision"]
    assert done.stdout == (
        f"records.strict: rollout 0% -> 25% (revision {before['revision']} -> {after['revision']}) {where(server)}\n"
    )
    assert rows(server)["records.strict"] == (True, 25)
    served = server.wait_served("records.strict", lambda f: f["strategies"][0]["parameters"]["rollout"] == "25")
    assert served["strategies"] == [
        {
            "name": "flexibleRollout",
            "constraints": [],
            "parameters": {"groupId": "records.strict", "rollout": "25", "stickiness": "userId"},
            "variants": [],
        }
    ]

    again = canaryws(server, "flags", "rollout", "records.strict", "25%")
    assert (
        again.stdout
        == f"records.strict: rollout already 25% (revision {after['revision']}, unchanged) {where(server)}\n"
    )


def test_disable_and_enable_reach_the_client_api(server: Server) -> None:
    killed = canaryws(server, "flags", "disable", "records.strict")
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.startswith("records.strict: enabled -> disabled (revision ")
    assert killed.stdout.endswith(f"{where(server)}\n")
    server.wait_served("records.strict", lambda f: f["enabled"] is False)
    assert rows(server)["records.strict"][0] is False

    on = canaryws(server, "flags", "enable", "records.strict")
    assert on.returncode == 0, on.stderr
    assert on.stdout.startswith("records.strict: disabled -> enabled (revision ")
    assert on.stderr == ""
    server.wait_served("records.strict", lambda f: f["enabled"] is True)

    shadow = canaryws(server, "flags", "rollout", "records.shadow", "50")
    assert shadow.returncode == 0, shadow.stderr
    assert "records.shadow is disabled; the rollout takes effect once it is enabled" in shadow.stderr
    assert canaryws(server, "flags", "enable", "records.shadow").returncode == 0
    served = server.wait_served("records.shadow", lambda f: f["enabled"] is True)
    assert served["strategies"][0]["parameters"]["rollout"] == "50"
    assert canaryws(server, "flags", "disable", "records.shadow").returncode == 0
    assert canaryws(server, "flags", "rollout", "records.shadow", "100").returncode == 0
    assert canaryws(server, "flags", "enable", "records.shadow").stdout.startswith(
        "records.shadow: disabled -> enabled"
    )
    assert canaryws(server, "flags", "disable", "records.shadow").stdout.startswith(
        "records.shadow: enabled -> disabled"
    )
    assert canaryws(server, "flags", "disable", "records.shadow").stdout.startswith(
        "records.shadow: already disabled (revision "
    )


def test_an_unknown_flag_is_a_usage_error_listing_the_servers_flags(server: Server) -> None:
    revision = show(server)["revision"]
    for args in (("rollout", "records.strcit", "5"), ("enable", "nope"), ("disable", "nope"), ("archive", "nope")):
        done = canaryws(server, "flags", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("Error: unknown flag")
        assert "known flags: records.shadow, records.strict" in done.stderr
        assert "Usage:" not in done.stderr
    assert show(server)["revision"] == revision


def test_archive_removes_the_flag_from_the_project_and_the_client_api(server: Server) -> None:
    name = f"canaryws.archive-{uuid.uuid4().hex[:8]}"
    original = show(server)["revision"]
    with temporary_flags(server, name):
        created = show(server)["revision"]
        assert name in [row["name"] for row in show(server)["flags"]]
        done = canaryws(server, "flags", "archive", name)
        assert done.returncode == 0, done.stderr
        # Without the flag, the environment serves what it served before it was created.
        assert done.stdout == f"{name}: archived (revision {created} -> {original}) {where(server)}\n"
        assert done.stderr == ""
        assert show(server)["revision"] == original
        assert name not in [row["name"] for row in show(server)["flags"]]
        deadline = time.monotonic() + 10
        while name in served_names(server):  # the client API follows within about a second
            assert time.monotonic() < deadline, f"{name} is still served"
            time.sleep(0.2)
        assert {"records.strict", "records.shadow"} <= set(served_names(server))

        again = canaryws(server, "flags", "archive", name)
        assert again.returncode == 2
        assert again.stderr == (
            f"Error: unknown flag {name!r} in Unleash project default (known flags: records.shadow, records.strict)\n"
        )
        assert again.stdout == ""


def test_archive_of_a_flag_another_depends_on_is_refused(server: Server) -> None:
    suffix = uuid.uuid4().hex[:8]
    parent, child = f"canaryws.parent-{suffix}", f"canaryws.child-{suffix}"
    with temporary_flags(server, parent, child):
        admin(server, "POST", f"/projects/default/features/{child}/dependencies", {"feature": parent, "enabled": True})
        revision = show(server)["revision"]
        done = canaryws(server, "flags", "archive", parent)
        assert done.returncode == 1
        assert done.stderr == (
            f"Error: cannot archive {parent!r}: {child!r} depends on it in Unleash project default; "
            "remove the dependency first\n"
        )
        assert done.stdout == ""
        assert show(server)["revision"] == revision
        # The dependent first, then the flag it depended on.
        assert canaryws(server, "flags", "archive", child).returncode == 0
        assert canaryws(server, "flags", "archive", parent).returncode == 0
        assert not {parent, child} & {row["name"] for row in show(server)["flags"]}


def test_a_wrong_admin_token_is_rejected_without_showing_it(server: Server) -> None:
    wrong = "*:*." + "0123456789abcdef" * 3
    for args in (
        ("show",),
        ("rollout", "records.strict", "5"),
        ("disable", "records.strict"),
        ("archive", "records.strict"),
    ):
        done = canaryws(server, "flags", *args, UNLEASH_ADMIN_TOKEN=wrong)
        assert done.returncode == 1
        assert done.stderr.startswith(f"Error: Unleash rejected the admin token (HTTP 401) at {server.url}")
        assert done.stdout == ""
    # A client token is a valid token, but not for the Admin API.
    for command in ("disable", "archive"):
        client = canaryws(
            server, "flags", command, "records.strict", UNLEASH_ADMIN_TOKEN=server.settings["UNLEASH_API_TOKEN"]
        )
        assert client.returncode == 1
        assert client.stderr.startswith(f"Error: Unleash rejected the admin token (HTTP 403) at {server.url}")
    assert rows(server)["records.strict"][0] is True


def test_an_unreachable_server_is_an_io_error(server: Server) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"
    for args in (("show",), ("enable", "records.strict"), ("archive", "records.strict")):
        done = canaryws(server, "flags", *args, UNLEASH_URL=closed)
        assert done.returncode == 1
        assert done.stderr.startswith(f"Error: cannot reach Unleash at {closed}: ")
    export = canaryws(server, "flags", "export", "--flags", "/nonexistent/x.json", UNLEASH_URL=closed)
    assert export.returncode == 1 and export.stderr.startswith(f"Error: cannot reach Unleash at {closed}: ")


def test_explicit_flags_path_loses_to_the_server_with_a_note(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "features.json"
    path.write_bytes(FLAGS.read_bytes())
    done = canaryws(server, "flags", "show", "--json", "--flags", str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == "unleash"
    assert f"note: --flags {path} is not used: UNLEASH_URL and UNLEASH_ADMIN_TOKEN are set" in done.stderr
    assert path.read_bytes() == FLAGS.read_bytes()
    # Without the admin token the file is used, with a note that the server is elsewhere.
    local = canaryws(server, "flags", "rollout", "records.strict", "7", "--flags", str(path), UNLEASH_ADMIN_TOKEN=None)
    assert local.returncode == 0, local.stderr
    assert local.stdout.endswith(f" in {path}\n")
    assert "note: UNLEASH_URL is set but UNLEASH_ADMIN_TOKEN is not" in local.stderr
    assert rows(server)["records.strict"] != (True, 7)


def test_export_writes_the_servers_flags_atomically(server: Server, tmp_path: Path) -> None:
    # Right after a change: export waits until the client API serves it.
    assert canaryws(server, "flags", "rollout", "records.strict", "30").returncode == 0
    path = tmp_path / "bootstrap.json"
    path.write_text("{}")
    done = canaryws(server, "flags", "export", "--flags", str(path))
    assert done.returncode == 0, done.stderr
    doc = parse_flags_document(path.read_bytes())
    listing = show(server)
    assert done.stdout == f"exported 2 flags (revision {doc.revision}) to {path}\n"
    assert doc.revision == listing["revision"]
    assert set(doc.data) == {"version", "features", "segments"}
    assert doc.feature_names() == ["records.shadow", "records.strict"]

    served = server.client_features()
    by_name = {f["name"]: f for f in served["features"]}
    assert [doc.feature(name) for name in doc.feature_names()] == [by_name["records.shadow"], by_name["records.strict"]]
    assert doc.data["segments"] == served["segments"] == []
    validate_flags_data(served)  # what SDKs get is a valid document too

    # The exported file is the same flags for the file backend: same rows, same revision.
    local = canaryws(server, "flags", "show", "--json", "--flags", str(path), UNLEASH_URL=None)
    assert json.loads(local.stdout)["revision"] == listing["revision"]
    assert json.loads(local.stdout)["flags"] == listing["flags"]
    assert read_document(path).revision == doc.revision


def test_export_needs_the_client_token_and_its_environment(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "features.json"
    missing = canaryws(server, "flags", "export", "--flags", str(path), UNLEASH_API_TOKEN=None)
    assert missing.returncode == 2
    assert missing.stderr.startswith("Error: export needs UNLEASH_API_TOKEN")
    other_env = canaryws(server, "flags", "export", "--flags", str(path), UNLEASH_ENVIRONMENT="production")
    assert other_env.returncode == 1
    assert "client token for environment 'development', but UNLEASH_ENVIRONMENT is 'production'" in other_env.stderr
    wrong = canaryws(server, "flags", "export", "--flags", str(path), UNLEASH_API_TOKEN="default:development.nope")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"Error: Unleash rejected the client token (HTTP 401) at {server.url}")
    assert not path.exists()
    # Only the client token: no convergence check, still a valid export.
    only_client = canaryws(server, "flags", "export", "--flags", str(path), UNLEASH_ADMIN_TOKEN=None)
    assert only_client.returncode == 0, only_client.stderr
    assert parse_flags_document(path.read_bytes()).feature_names() == ["records.shadow", "records.strict"]
