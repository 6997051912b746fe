"""The operator's and client's command line against a running service."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from canaryws.adapters.auth import TokenAuthority
from harness import Service, flags_doc

pytestmark = pytest.mark.integration


def canaryws(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canaryws", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_token_issue_prints_a_token_the_service_accepts(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        done = canaryws("token", "issue", "cli-client", "--data-dir", str(service.data_dir))
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip().splitlines()[-1]

        async def scenario() -> dict[str, object]:
            async with connect(service.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                welcome: dict[str, object] = json.loads(await ws.recv())
                return welcome

        assert asyncio.run(scenario())["client_id"] == "cli-client"


def test_token_issue_signs_client_properties_into_the_token(tmp_path: Path) -> None:
    with Service(tmp_path) as service:
        # serve created the secret on its first start, owner-only
        secret = service.data_dir / "secret.key"
        assert secret.stat().st_mode & 0o777 == 0o600 and secret.stat().st_uid == os.geteuid()
        done = canaryws("token", "issue", "prop-client", "--property", "clientVersion=2.4.1",
                        "--property", "tier=gold", "--data-dir", str(service.data_dir))
        assert done.returncode == 0, done.stderr
        identity = TokenAuthority.from_data_dir(service.data_dir).verify(done.stdout.strip().splitlines()[-1])
        assert (identity.client_id, dict(identity.properties)) == ("prop-client", {"clientVersion": "2.4.1",
                                                                                   "tier": "gold"})
        assert "clientVersion='2.4.1'" in done.stderr
        for args, message in [
            (["--property", "userId=someone"], "Unleash context field"),
            (["--property", "clientVersion"], "NAME=VALUE"),
            (["--property", "client version=1"], "letters, digits and _"),
            (["--property", "clientVersion=" + "9" * 129], "1-128 characters"),
            (["--property", "a=1", "--property", "a=2"], "given twice"),
        ]:
            bad = canaryws("token", "issue", "prop-client", *args, "--data-dir", str(service.data_dir))
            assert bad.returncode == 2 and message in bad.stderr and "--property" in bad.stderr, bad.stderr
            assert bad.stdout == "" and "Traceback" not in bad.stderr
        bad = canaryws("token", "issue", "bad id", "--data-dir", str(service.data_dir))
        assert bad.returncode == 2 and "client id" in bad.stderr


@pytest.mark.parametrize(
    "command",
    [("token", "issue", "x-1"), ("token", "revoke", "--client", "x-1"), ("token", "revoked")],
    ids=["issue", "revoke", "revoked"],
)
def test_token_commands_refuse_a_data_dir_no_service_initialised(tmp_path: Path, command: tuple[str, ...]) -> None:
    """``./data`` is relative: run elsewhere, a token command must not make a secret or a list no service reads."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra, cwd, shown in [([], elsewhere, elsewhere / "data"), (["--data-dir", "empty"], tmp_path, empty)]:
        done = canaryws(*command, *extra, cwd=cwd)
        assert done.returncode == 1, done.stderr
        assert f"{shown} is not the data dir of a service" in done.stderr
        assert "--data-dir" in done.stderr and "CANARYWS_DATA_DIR" in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""
    assert not (elsewhere / "data").exists() and list(empty.iterdir()) == []


def test_token_commands_use_the_service_data_dir_from_its_directory_or_the_environment(tmp_path: Path) -> None:
    with Service(tmp_path) as service:  # its data dir is <root>/data: ./data seen from the root
        done = canaryws("token", "issue", "rel-client", cwd=service.root)
        assert done.returncode == 0, done.stderr
        assert TokenAuthority.from_data_dir(service.data_dir).verify(done.stdout.strip()).client_id == "rel-client"
        env_run = subprocess.run([sys.executable, "-m", "canaryws", "token", "revoke", "--client", "rel-client"],
                                 capture_output=True, text=True, timeout=60, cwd=tmp_path.parent,
                                 env={**os.environ, "CANARYWS_DATA_DIR": str(service.data_dir)})
        assert env_run.returncode == 0, env_run.stderr
        assert "rel-client" in json.loads((service.data_dir / "revoked.json").read_text())["clients"]


@pytest.mark.parametrize(("owner", "mode"), [(65534, 0o600), (None, 0o644), (None, 0o660)],
                         ids=["another-users", "world-readable", "group-writable"])
def test_token_commands_refuse_a_secret_that_is_not_the_service_users_own(
    tmp_path: Path, owner: int | None, mode: int
) -> None:
    data = tmp_path / "data"
    TokenAuthority.from_data_dir(data)
    secret = data / "secret.key"
    secret.chmod(mode)
    if owner is not None:
        os.chown(secret, owner, -1)
    for command in (("token", "issue", "x-1"), ("token", "revoke", "--client", "x-1"), ("token", "revoked")):
        done = canaryws(*command, "--data-dir", str(data))
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert f"token secret {secret}" in done.stderr and "Traceback" not in done.stderr
        assert ("planted" if owner is not None else "group or others can") in done.stderr
    assert not (data / "revoked.json").exists()
    assert secret.stat().st_mode & 0o777 == mode  # left as it was: not chmod'ed, not chown'ed
    assert secret.stat().st_uid == (owner if owner is not None else os.geteuid())


def test_operator_ramps_a_running_service_with_the_cli(tmp_path: Path) -> None:
    clients = [f"op-{i}" for i in range(120)]
    with Service(tmp_path, flags_doc(strict_rollout=0)) as service:
        flags = str(service.flags_path)

        async def share() -> float:
            strict = 0
            for cid in clients:
                async with service.client(cid) as (_, welcome):
                    strict += welcome["cohort"]["strategy"] == "strict"
            return strict / len(clients)

        assert asyncio.run(share()) == 0.0
        rev = service.get("/readyz").json()["flags"]["revision"]
        done = canaryws("flags", "rollout", "records.strict", "50", "--flags", flags)
        assert done.returncode == 0, done.stderr
        assert "50%" in done.stdout
        service.wait_for_revision(lambda st: st["revision"] != rev)
        assert 0.3 <= asyncio.run(share()) <= 0.7
        rev = service.get("/readyz").json()["flags"]["revision"]
        assert canaryws("flags", "disable", "records.strict", "--flags", flags).returncode == 0
        service.wait_for_revision(lambda st: st["revision"] != rev)
        assert asyncio.run(share()) == 0.0
        show = canaryws("flags", "show", "--flags", flags)
        assert show.returncode == 0
        assert "records.strict" in show.stdout and "records.shadow" in show.stdout
        unknown = canaryws("flags", "enable", "records.nope", "--flags", flags)
        assert unknown.returncode == 2 and "records.strict" in unknown.stderr
        assert "Traceback" not in unknown.stderr


def test_serve_refuses_an_invalid_flags_file_with_a_clear_message(tmp_path: Path) -> None:
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps({"version": 2, "features": [{"name": "records.strict", "enabled": True,
                                                             "strategies": [{"name": "nope"}]}]}))
    done = canaryws("serve", "--flags", str(flags), "--data-dir", str(tmp_path / "d"), "--port", "1")
    assert done.returncode != 0
    assert "nope" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("env", "revoked", "expected"),
    [
        ({"CANARYWS_MAX_MESSAGES_PER_SECOND": "lots"}, None, "CANARYWS_MAX_MESSAGES_PER_SECOND='lots'"),
        ({"CANARYWS_PER_MESSAGE_DEFLATE": "maybe"}, None, "CANARYWS_PER_MESSAGE_DEFLATE='maybe'"),
        ({}, "{not json", "revoked.json"),
    ],
)
def test_serve_refuses_bad_configuration_with_a_clear_message(
    tmp_path: Path, env: dict[str, str], revoked: str | None, expected: str
) -> None:
    data = tmp_path / "d"
    data.mkdir()
    if revoked is not None:
        (data / "revoked.json").write_text(revoked)
    done = subprocess.run(
        [sys.executable, "-m", "canaryws", "serve", "--data-dir", str(data), "--port", "1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )
    assert done.returncode == 1
    assert "cannot start" in done.stderr and expected in done.stderr and "Traceback" not in done.stderr
