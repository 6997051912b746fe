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


def test_token_issue_creates_an_owner_only_secret(tmp_path: Path) -> None:
    done = canaryws("token", "issue", "x-1", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 0
    assert oct((tmp_path / "d" / "secret.key").stat().st_mode & 0o777) == "0o600"
    bad = canaryws("token", "issue", "bad id", "--data-dir", str(tmp_path / "d"))
    assert bad.returncode == 2 and "client id" in bad.stderr


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
