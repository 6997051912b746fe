"""Credentials over a real service: revoking tokens (CLI and admin HTTP) ends their open
connections and refuses their handshakes; the admin API needs its credential; and no token
or secret reaches the logs, the trace file or /metrics, even at DEBUG with every request
header captured."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from canaryws.adapters.admin import AdminKeyError, load_or_create_admin_key
from canaryws.adapters.auth import TokenAuthority
from harness import PROTOCOL, Service, flags_doc, free_port, run_cli, send_batch

pytestmark = pytest.mark.integration

REVOKED_WITHIN = 5.0  # seconds: the watcher sees the file within ~1 s, the sweep runs every second


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("creds"), flags_doc(strict_rollout=50)) as svc:
        yield svc


def admin_key(service: Service) -> str:
    return (service.data_dir / "admin.key").read_text().strip()


def admin(service: Service, method: str, path: str, *, credential: str | None = None,
          body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """An ``/admin`` request; ``credential`` None uses the service's admin key, "" sends none."""
    key = admin_key(service) if credential is None else credential
    sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return httpx.request(method, f"{service.http_url}{path}", json=body, headers=sent, timeout=10)


def revoke_cli(service: Service, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "canaryws", "token", "revoke", *args,
                           "--data-dir", str(service.data_dir)],
                          input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


async def open_with(service: Service, token: str, **kwargs: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(service.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                       subprotocols=[PROTOCOL], open_timeout=10, **kwargs)  # type: ignore[list-item]
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 10))


async def refusal(service: Service, token: str, url: str | None = None) -> tuple[int, dict[str, Any]]:
    """The handshake's HTTP refusal: status and JSON body."""
    headers = {} if url else {"Authorization": f"Bearer {token}"}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url or service.ws_url, additional_headers=headers, open_timeout=10):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def ended_by_revocation(ws: ClientConnection, since: float) -> float:
    """Wait for the server's close; assert it is 1008 "token revoked"; seconds it took."""
    await asyncio.wait_for(ws.wait_closed(), REVOKED_WITHIN + 5)
    assert (ws.close_code, ws.close_reason) == (1008, "token revoked")
    return time.monotonic() - since


async def revoke(service: Service, via: str, *, token: str | None = None, client_id: str | None = None) -> None:
    if via == "cli":
        args = ("-",) if token is not None else ("--client", str(client_id))
        done = await asyncio.to_thread(revoke_cli, service, *args, stdin=token)
        assert token is None or token not in done.stdout + done.stderr
    else:
        body = {"token": token} if token is not None else {"client_id": client_id}
        answer = await asyncio.to_thread(admin, service, "POST", "/admin/revocations", body=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["revoked"] == ("token" if token is not None else "client")


# -- revocation ------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["cli", "http"])
def test_revoking_a_token_ends_its_connection_and_refuses_it_while_the_clients_other_token_works(
    service: Service, via: str
) -> None:
    client = f"rev-token-{via}"
    doomed, other = service.token(client), service.token(client)

    async def scenario() -> None:
        ws_doomed, _ = await open_with(service, doomed)
        ws_other, _ = await open_with(service, other)
        try:
            assert (await send_batch(ws_doomed, "d-1", ["x"]))[-1]["type"] == "result"
            started = time.monotonic()
            await revoke(service, via, token=doomed)
            took = await ended_by_revocation(ws_doomed, started)
            assert took < REVOKED_WITHIN
            # the client's other token is untouched: its connection goes on, and it connects again
            assert (await send_batch(ws_other, "o-1", ["y"]))[-1]["accepted"] == [{"index": 0, "value": "y"}]
            status, body = await refusal(service, doomed)
            assert (status, body) == (401, {"error": "invalid_token", "detail": "token revoked"})
            status, _ = await refusal(service, "", url=f"{service.ws_url}?access_token={doomed}")
            assert status == 401
            again, welcome = await open_with(service, other)
            assert welcome["client_id"] == client
            await again.close()
        finally:
            await ws_other.close()

    asyncio.run(scenario())
    listed = admin(service, "GET", "/admin/revocations").json()
    (entry,) = [t for t in listed["tokens"] if t["client_id"] == client]
    assert entry["token_id"] == TokenAuthority.from_data_dir(service.data_dir).verify(doomed).token_id
    assert doomed not in json.dumps(listed)


@pytest.mark.parametrize("via", ["cli", "http"])
def test_revoking_a_client_ends_all_its_connections_and_a_newly_issued_token_gets_in(
    service: Service, via: str
) -> None:
    client, bystander = f"rev-client-{via}", f"bystander-{via}"
    old_tokens = [service.token(client) for _ in range(3)]

    async def scenario() -> None:
        doomed = [await open_with(service, token) for token in old_tokens]
        ws_bystander, _ = await open_with(service, service.token(bystander))
        try:
            started = time.monotonic()
            await revoke(service, via, client_id=client)
            fresh = service.token(client)  # issued after the revocation returned
            took = await asyncio.gather(*(ended_by_revocation(ws, started) for ws, _ in doomed))
            assert max(took) < REVOKED_WITHIN
            for token in old_tokens:
                assert await refusal(service, token) == (401, {"error": "invalid_token", "detail": "token revoked"})
            ws_fresh, welcome = await open_with(service, fresh)
            assert welcome["client_id"] == client
            assert (await send_batch(ws_fresh, "f-1", ["z"]))[-1]["type"] == "result"
            await asyncio.sleep(1.5)  # a sweep or more later, the new connection is still open
            assert (await send_batch(ws_fresh, "f-2", ["z"]))[-1]["type"] == "result"
            await ws_fresh.close()
            assert (await send_batch(ws_bystander, "b-1", ["w"]))[-1]["type"] == "result"
        finally:
            await ws_bystander.close()

    asyncio.run(scenario())


def test_token_revoked_lists_ids_clients_and_expiry_but_no_token_value(service: Service) -> None:
    token = service.token("listed-1")
    revoke_cli(service, token)
    revoke_cli(service, "--client", "listed-2")
    table = run_cli("token", "revoked", "--data-dir", str(service.data_dir))
    as_json = run_cli("token", "revoked", "--json", "--data-dir", str(service.data_dir))
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    jti = TokenAuthority.from_data_dir(service.data_dir).verify(token).token_id
    listed = json.loads(as_json.stdout)
    entry = next(t for t in listed["tokens"] if t["token_id"] == jti)
    assert entry["client_id"] == "listed-1" and entry["expires_at"] > time.time()
    assert any(c["client_id"] == "listed-2" for c in listed["clients"])
    assert jti in table.stdout and "listed-1" in table.stdout and "listed-2" in table.stdout
    for output in (table.stdout, table.stderr, as_json.stdout):
        assert token not in output and token.split(".")[2] not in output


def test_revoking_an_expired_token_is_accepted_and_pointless_a_foreign_one_is_refused(
    service: Service, tmp_path: Path
) -> None:
    ours = TokenAuthority.from_data_dir(service.data_dir)
    expired = ours.issue("old-1", ttl_seconds=10, now=time.time() - 100)
    done = revoke_cli(service, expired)
    assert "expired" in done.stdout and "changes nothing" in done.stdout
    answer = admin(service, "POST", "/admin/revocations", body={"token": expired})
    assert answer.status_code == 200 and answer.json()["revoked"] is None and "expired" in answer.json()["detail"]
    assert ours.verify(ours.issue("old-1")).token_id not in json.dumps(admin(service, "GET", "/admin/revocations")
                                                                      .json())
    foreign = TokenAuthority.from_data_dir(tmp_path / "elsewhere").issue("old-1")
    cli = run_cli("token", "revoke", foreign, "--data-dir", str(service.data_dir))
    assert cli.returncode == 1 and "not a token of the service" in cli.stderr
    answer = admin(service, "POST", "/admin/revocations", body={"token": foreign})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_token"
    for args in ((), ("tok", "--client", "x")):
        usage = run_cli("token", "revoke", *args, "--data-dir", str(service.data_dir))
        assert usage.returncode == 2
    for body in ({}, {"token": "a", "client_id": "b"}, {"client_id": "bad id"}, {"token": 7}, [1]):
        assert admin(service, "POST", "/admin/revocations", body=body).status_code == 400


# -- the admin API ---------------------------------------------------------------------------


ADMIN_ROUTES = [("GET", "/admin/revocations", None), ("GET", "/admin/connections", None),
                ("POST", "/admin/revocations", {"client_id": "never-revoked"})]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_a_missing_or_wrong_credential(
    service: Service, method: str, path: str, body: Any
) -> None:
    key = admin_key(service)
    missing = admin(service, method, path, credential="", body=body)
    assert missing.status_code == 401 and missing.json()["error"] == "missing_credential"
    assert missing.headers["www-authenticate"] == 'Bearer realm="canaryws-admin"'
    wrong_ones = [key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", service.token("admin-wannabe"), "x"]
    for wrong in wrong_ones:
        refused = admin(service, method, path, credential=wrong, body=body)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_credential"
        assert refused.headers["www-authenticate"] == 'Bearer realm="canaryws-admin", error="invalid_token"'
    basic = admin(service, method, path, credential="", body=body, headers={"Authorization": f"Basic {key}"})
    assert basic.status_code == 401
    query = httpx.request(method, f"{service.http_url}{path}?access_token={key}", json=body, timeout=10)
    assert query.status_code == 401  # the credential goes in the header only
    # nothing was done by the refused POSTs
    assert all(c["client_id"] != "never-revoked" for c in admin(service, "GET", "/admin/revocations").json()["clients"])
    # the probes stay open
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert service.get(probe).status_code == 200


def test_admin_connections_counts_open_connections_per_strategy(service: Service) -> None:
    clients = [f"count-{i}" for i in range(12)]

    none = {"open": 0, "by_strategy": {"strict": 0, "lenient": 0}}

    async def connections(until: dict[str, Any]) -> dict[str, Any]:
        """/admin/connections once it shows ``until`` (the server may still be closing some)."""
        deadline = time.monotonic() + 5
        while True:
            seen: dict[str, Any] = (await asyncio.to_thread(admin, service, "GET", "/admin/connections")).json()
            if seen == until or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.05)

    async def scenario() -> tuple[dict[str, Any], dict[str, int], dict[str, Any], dict[str, Any]]:
        before = await connections(none)  # other tests' connections are gone
        opened = [await open_with(service, service.token(cid)) for cid in clients]
        expected = {"strict": 0, "lenient": 0}
        for _, welcome in opened:
            expected[welcome["cohort"]["strategy"]] += 1
        during = (await asyncio.to_thread(admin, service, "GET", "/admin/connections")).json()
        for ws, _ in opened:
            await ws.close()
        return before, expected, during, await connections(none)

    before, expected, during, after = asyncio.run(scenario())
    assert before == none
    assert expected["strict"] and expected["lenient"]  # the 50 % rollout gave both cohorts
    assert during == {"open": len(clients), "by_strategy": expected}
    assert after == none


def test_the_admin_credential_can_come_from_a_file_of_the_operators(tmp_path: Path) -> None:
    key_file = tmp_path / "mounted" / "admin-credential"
    key_file.parent.mkdir()
    key = secrets.token_hex(24)
    key_file.write_text(key + "\n")
    key_file.chmod(0o400)
    with Service(tmp_path / "svc", env={"CANARYWS_ADMIN_TOKEN_FILE": str(key_file)}) as svc:
        assert admin(svc, "GET", "/admin/connections", credential=key).status_code == 200
        assert admin(svc, "GET", "/admin/connections", credential=key[:-1]).status_code == 401
        assert not (svc.data_dir / "admin.key").exists()
    missing = Service(tmp_path / "svc2", env={"CANARYWS_ADMIN_TOKEN_FILE": str(tmp_path / "absent")})
    with pytest.raises(RuntimeError, match="service exited"):
        missing.start(timeout=30)
    assert "admin credential" in missing.logs() and str(tmp_path / "absent") in missing.logs()


def test_the_default_admin_credential_is_created_owner_only_and_kept(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    with svc:
        first = admin_key(svc)
    assert (svc.data_dir / "admin.key").stat().st_mode & 0o777 == 0o600 and len(first) >= 32
    with svc:
        assert admin_key(svc) == first
        assert admin(svc, "GET", "/admin/revocations", credential=first).status_code == 200


OTHER_UID = 65534  # nobody: "another user" (the suite runs as root; the checks compare with os.geteuid())


@pytest.mark.parametrize("name", ["secret.key", "admin.key"])
@pytest.mark.parametrize(("owner", "mode", "reason"), [
    (OTHER_UID, 0o600, "planted"),
    (None, 0o644, "group or others can read it"),
    (None, 0o622, "group or others can write it"),
], ids=["another-users", "world-readable", "writable"])
def test_serve_refuses_a_credential_file_that_is_not_the_service_users_own(
    tmp_path: Path, name: str, owner: int | None, mode: int, reason: str
) -> None:
    """A secret.key (or admin.key) someone else planted in the data dir would let them forge tokens
    (or call the admin API): the service does not start on it, and leaves it as it is."""
    data = tmp_path / "svc" / "data"
    data.mkdir(parents=True)
    planted = data / name
    planted.write_text(secrets.token_hex(32) + "\n")
    planted.chmod(mode)
    if owner is not None:
        os.chown(planted, owner, -1)
    svc = Service(tmp_path / "svc")
    with pytest.raises(RuntimeError, match="service exited"):
        svc.start(timeout=30)
    logs = svc.logs()
    assert "cannot start" in logs and f"{planted}" in logs and reason in logs and "Traceback" not in logs
    assert planted.stat().st_mode & 0o777 == mode  # not chmod'ed
    assert planted.stat().st_uid == (owner if owner is not None else os.geteuid())


def test_a_token_forged_with_a_planted_secret_never_gets_in(tmp_path: Path) -> None:
    """The scenario of the issue: another user plants secret.key, forges a token with it, and the
    service must not accept it. It does not start; once the operator removes the file, the service
    makes its own secret and the forged token is refused."""
    data = tmp_path / "svc" / "data"
    data.mkdir(parents=True)
    planted = data / "secret.key"
    planted.write_text("f" * 64 + "\n")
    planted.chmod(0o600)
    os.chown(planted, OTHER_UID, -1)
    forged = TokenAuthority(b"f" * 64).issue("forger")
    svc = Service(tmp_path / "svc")
    with pytest.raises(RuntimeError, match="service exited"):
        svc.start(timeout=30)
    planted.unlink()
    with svc:
        assert asyncio.run(refusal(svc, forged)) == (401, {"error": "invalid_token", "detail": "token is not valid"})


@pytest.mark.parametrize(("owner", "mode", "accepted"), [
    (None, 0o600, True),
    (None, 0o440, True),  # a mounted secret readable by the pod's group: accepted, with a warning
    (None, 0o644, True),
    (None, 0o620, False),
    (None, 0o602, False),
    (OTHER_UID, 0o400, False),
], ids=["private", "group-readable", "world-readable", "group-writable", "world-writable", "another-users"])
def test_the_operators_admin_credential_file_may_be_readable_but_never_writable_by_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, owner: int | None, mode: int, accepted: bool
) -> None:
    key_file = tmp_path / "admin-credential"
    key_file.write_text(secrets.token_hex(24) + "\n")
    key_file.chmod(mode)
    if owner is not None:
        os.chown(key_file, owner, -1)
    if accepted:
        assert len(load_or_create_admin_key(key_file, create=False)) == 48
        assert ("readable by others than its owner" in caplog.text) == bool(mode & 0o077)
    else:
        with pytest.raises(AdminKeyError, match=f"admin credential {key_file}") as refused:
            load_or_create_admin_key(key_file, create=False)
        assert "planted" in str(refused.value) if owner is not None else "can write it" in str(refused.value)
    assert key_file.stat().st_mode & 0o777 == mode


def test_the_default_admin_credential_must_be_private_to_the_service_user(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    created = load_or_create_admin_key(key_file, create=True)
    assert key_file.stat().st_mode & 0o777 == 0o600 and load_or_create_admin_key(key_file, create=True) == created
    key_file.chmod(0o640)
    with pytest.raises(AdminKeyError, match="group or others can read it"):
        load_or_create_admin_key(key_file, create=True)
    key_file.chmod(0o600)
    os.chown(key_file, OTHER_UID, -1)
    with pytest.raises(AdminKeyError, match="planted"):
        load_or_create_admin_key(key_file, create=True)


# -- no secret reaches logs, traces or metrics ---------------------------------------------------


def test_no_token_or_secret_reaches_logs_traces_or_metrics(tmp_path: Path) -> None:
    unleash_api_token = f"*:development.{secrets.token_hex(24)}"
    cookie_secret = secrets.token_hex(16)
    api_key = secrets.token_hex(16)
    env = {
        "CANARYWS_LOG_LEVEL": "DEBUG",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": ".*",
        # a flags server that never answers: the SDK sends its API token and fails, over and over
        "UNLEASH_URL": f"http://127.0.0.1:{free_port()}/api",
        "UNLEASH_API_TOKEN": unleash_api_token,
        "UNLEASH_REFRESH_INTERVAL": "1",
        "CANARYWS_UNLEASH_STARTUP_WAIT": "0.5",
    }
    svc = Service(tmp_path, flags_doc(strict_rollout=50), env=env, extra_args=["--log-level", "DEBUG"]).start()
    try:
        ours = TokenAuthority.from_data_dir(svc.data_dir)
        header_token, query_token, revoked_http, revoked_cli = (ours.issue(f"sec-{i}") for i in range(4))
        expired = ours.issue("sec-x", ttl_seconds=5, now=time.time() - 60)
        foreign = TokenAuthority.from_data_dir(tmp_path / "other").issue("sec-y")
        head, payload, signature = ours.issue("sec-z").split(".")
        altered = f"{head}.{payload}.{signature[:-4]}AAAA"
        malformed = f"{secrets.token_hex(20)}.{secrets.token_hex(8)}"
        wrong_admin = secrets.token_urlsafe(32)
        key = admin_key(svc)
        # (the WebSocket handshake's DEBUG header lines: see the test below)
        extra_headers = {"Cookie": f"session={cookie_secret}", "X-Api-Key": api_key}
        version = {"X-Canaryws-Client-Version": "capture-me/1.0"}

        async def exercise() -> None:
            async with connect(svc.ws_url, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                               additional_headers={"Authorization": f"Bearer {header_token}", **version},
                               open_timeout=10) as ws_header:
                await ws_header.recv()
                await send_batch(ws_header, "h-1", ["a", ""])
            async with connect(f"{svc.ws_url}?access_token={query_token}&lang=en", open_timeout=10,
                               additional_headers=version) as ws_query:
                await ws_query.recv()
                await send_batch(ws_query, "q-1", ["b"])
            for bad in (expired, foreign, altered, malformed):
                status, _ = await refusal(svc, bad)
                assert status == 401
                status, _ = await refusal(svc, "", url=f"{svc.ws_url}?access_token={bad}")
                assert status == 401
            ws_revoked, _ = await open_with(svc, revoked_http)
            await revoke(svc, "http", token=revoked_http)
            await ended_by_revocation(ws_revoked, time.monotonic())
            ws_revoked, _ = await open_with(svc, revoked_cli)
            await revoke(svc, "cli", token=revoked_cli)
            await ended_by_revocation(ws_revoked, time.monotonic())
            for gone in (revoked_http, revoked_cli):
                assert (await refusal(svc, gone))[0] == 401

        asyncio.run(exercise())
        for credential in ("", wrong_admin, header_token):
            assert admin(svc, "GET", "/admin/connections", credential=credential, headers=extra_headers
                         ).status_code == 401
        assert admin(svc, "GET", "/admin/revocations", headers=extra_headers).status_code == 200
        assert admin(svc, "POST", "/admin/revocations", credential=wrong_admin, body={"token": query_token}
                     ).status_code == 401
        assert httpx.get(f"{svc.http_url}/admin/connections?access_token={query_token}", timeout=10
                         ).status_code == 401
        assert httpx.get(f"{svc.http_url}/healthz?access_token={query_token}", timeout=10).status_code == 200
        time.sleep(2.5)  # a few failed polls of the flags server
        metrics = svc.get("/metrics").text
    finally:
        assert svc.stop() == 0
    logs = svc.logs()
    traces = (svc.data_dir / "traces.jsonl").read_text()

    # the scenario happened, with DEBUG logs and header capture on
    records = svc.log_records()
    assert any(r["level"] == "DEBUG" for r in records), "no DEBUG records: is the level applied?"
    assert any(r.get("message") == "token revoked" for r in records)
    assert any("Unleash" in r.get("message", "") for r in records)  # the flags server was tried
    # header capture is on: the admin HTTP requests' spans carry their headers (the WebSocket
    # handshakes have the endpoint's connect span instead, which records no headers)
    assert '"http.request.header.x_api_key"' in traces and '"http.request.header.user_agent"' in traces
    assert '"http.request.header.authorization"' in traces and '"http.request.header.cookie"' in traces
    assert "[REDACTED]" in traces
    assert "canaryws_connections_refused_total" in metrics

    secret_values = {
        "secret.key": (svc.data_dir / "secret.key").read_text().strip(),
        "admin.key": key,
        "wrong admin credential": wrong_admin,
        "UNLEASH_API_TOKEN": unleash_api_token,
        "UNLEASH_API_TOKEN secret part": unleash_api_token.split(".", 1)[1],
        "cookie": cookie_secret,
        "api key": api_key,
    }
    for name, token in {"header": header_token, "query": query_token, "revoked via http": revoked_http,
                        "revoked via cli": revoked_cli, "expired": expired, "foreign": foreign,
                        "altered": altered, "malformed": malformed}.items():
        secret_values[f"{name} token"] = token
        secret_values[f"{name} token's last part"] = token.rsplit(".", 1)[1]
    for where, text in (("service stdout/stderr", logs), ("traces.jsonl", traces), ("/metrics", metrics)):
        leaked = [name for name, value in secret_values.items() if value in text]
        assert not leaked, f"{', '.join(leaked)} found in {where}"
    assert os.path.getsize(svc.data_dir / "traces.jsonl") > 0


def test_debug_logs_of_a_websocket_handshake_redact_every_credential_header(tmp_path: Path) -> None:
    cookie_secret, basic_secret = secrets.token_hex(16), secrets.token_hex(16)
    with Service(tmp_path, extra_args=["--log-level", "DEBUG"]) as svc:

        async def handshakes() -> None:
            for headers in ({"Cookie": f"session={cookie_secret}"}, {"Authorization": f"Basic {basic_secret}"}):
                with pytest.raises(InvalidStatus):
                    async with connect(svc.ws_url, additional_headers=headers, open_timeout=10):
                        pass

        asyncio.run(handshakes())
    assert any(r["level"] == "DEBUG" and r["message"].startswith("< ") for r in svc.log_records())
    assert cookie_secret not in svc.logs() and basic_secret not in svc.logs()
