"""Tokens: a token proves one client id, and the client properties its issuer signed, and
cannot be altered into another; the secret that signs them is used only while it is the
service user's own and private to it."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from canaryws.adapters.auth import (
    MAX_PROPERTIES,
    MAX_PROPERTY_VALUE_LENGTH,
    RESERVED_CONTEXT_NAMES,
    AcceptedTokens,
    Identity,
    InvalidClientId,
    InvalidProperty,
    SecretFileError,
    TokenAuthority,
    TokenError,
    load_or_create_secret,
    parse_property,
    validate_properties,
)
from canaryws.adapters.files import CredentialFileError

OTHER_UID = 65534  # nobody: "another user" (the suite runs as root; the check compares with os.geteuid())


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_secret_is_created_once_and_owner_only(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "data")
    second = load_or_create_secret(tmp_path / "data")
    assert first == second and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "data" / "secret.key").stat().st_mode) == 0o600


def test_issue_and_verify_round_trip(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    identity = authority.verify(authority.issue("client-7", ttl_seconds=60, now=time.time()))
    assert identity.client_id == "client-7"
    assert identity.expires_at - identity.issued_at == 60
    assert len(identity.token_id) == 16
    assert authority.verify(authority.issue("client-7")).token_id != identity.token_id


def test_tampered_subject_is_refused(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    header, payload, signature = authority.issue("client-a").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "client-b"
    with pytest.raises(TokenError):
        authority.verify(".".join([header, _b64(claims), signature]))


def test_unsigned_and_foreign_tokens_are_refused(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path / "a")
    other = TokenAuthority.from_data_dir(tmp_path / "b")
    with pytest.raises(TokenError):
        authority.verify(other.issue("client-a"))
    unsigned = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(
        {"sub": "client-a", "iss": "canaryws", "aud": "canaryws.records", "iat": 1, "exp": 2**40}
    ) + "."
    with pytest.raises(TokenError):
        authority.verify(unsigned)
    for garbage in ["", "abc", "a.b.c", "Bearer x"]:
        with pytest.raises(TokenError):
            authority.verify(garbage)


def test_expired_token_is_refused(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    token = authority.issue("client-a", ttl_seconds=10, now=1_000_000)
    with pytest.raises(TokenError, match="expired"):
        authority.verify(token)


def test_token_signed_with_the_secret_but_bad_subject_is_refused(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    forged = jwt.encode(
        {"sub": "bad id with spaces", "iss": "canaryws", "aud": "canaryws.records", "iat": 1, "exp": 2**40},
        authority.secret, algorithm="HS256",
    )
    with pytest.raises(TokenError):
        authority.verify(forged)


@pytest.mark.parametrize("client_id", ["", " x", "a b", "x" * 129, "é", "-lead"])
def test_invalid_client_ids_are_not_issued(tmp_path: Path, client_id: str) -> None:
    with pytest.raises(InvalidClientId):
        TokenAuthority.from_data_dir(tmp_path).issue(client_id)


# -- signed client properties -----------------------------------------------------------


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


def test_properties_are_signed_into_the_token_and_come_back_verified(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    token = authority.issue("client-7", properties={"tier": "gold", "clientVersion": "2.4.1"})
    assert _claims(token)["props"] == {"clientVersion": "2.4.1", "tier": "gold"}
    identity = authority.verify(token)
    assert dict(identity.properties) == {"clientVersion": "2.4.1", "tier": "gold"}
    with pytest.raises(TypeError):
        identity.properties["tier"] = "platinum"  # type: ignore[index]  # read-only


def test_a_token_without_properties_has_none_and_no_claim(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    token = authority.issue("client-7")
    assert "props" not in _claims(token)
    identity = authority.verify(token)
    assert dict(identity.properties) == {}
    assert identity == Identity(identity.client_id, identity.token_id, identity.issued_at, identity.expires_at)
    assert hash(identity) == hash(authority.verify(token))  # still usable as a key


@pytest.mark.parametrize(
    "change",
    [
        lambda claims: claims["props"].update(clientVersion="9.9.9"),
        lambda claims: claims["props"].update(beta="yes"),
        lambda claims: claims.pop("props"),
    ],
    ids=["altered", "added", "removed"],
)
def test_tampered_properties_are_refused(tmp_path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    header, payload, signature = authority.issue("client-a", properties={"clientVersion": "1.0.0"}).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    change(claims)
    with pytest.raises(TokenError, match="not valid"):
        authority.verify(".".join([header, _b64(claims), signature]))


@pytest.mark.parametrize(
    "props",
    [
        {"userId": "someone-else"},
        {"bad name": "x"},
        {"clientVersion": 2},
        {"clientVersion": ""},
        {"clientVersion": "x" * (MAX_PROPERTY_VALUE_LENGTH + 1)},
        {f"p{i}": "x" for i in range(MAX_PROPERTIES + 1)},
        ["clientVersion", "1.0"],
        "clientVersion=1.0",
    ],
)
def test_a_signed_token_with_bad_properties_is_refused(tmp_path: Path, props: object) -> None:
    """Even signed with the secret (an issuer that skipped the checks), bad properties do not pass."""
    authority = TokenAuthority.from_data_dir(tmp_path)
    forged = jwt.encode(
        {"sub": "client-a", "iss": "canaryws", "aud": "canaryws.records", "iat": 1, "exp": 2**40, "props": props},
        authority.secret, algorithm="HS256",
    )
    with pytest.raises(TokenError, match="not valid"):
        authority.verify(forged)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"userId": "x"}, "Unleash context field"),
        ({"UserID": "x"}, "Unleash context field"),
        ({"properties": "x"}, "Unleash context field"),
        ({"remoteAddress": "10.0.0.1"}, "Unleash context field"),
        ({"": "x"}, "letters, digits and _"),
        ({"9lives": "x"}, "starting with a letter"),
        ({"client-version": "x"}, "letters, digits and _"),
        ({"a" * 65: "x"}, "1-64 characters"),
        ({"clientVersion": ""}, "1-128 characters"),
        ({"clientVersion": "x" * 129}, "1-128 characters"),
        ({"clientVersion": "1.0\n"}, "printable"),
        ({"clientVersion": " 1.0"}, "leading/trailing spaces"),
        ({"clientVersion": "1\x00"}, "printable"),
        ({f"p{i}": "x" for i in range(MAX_PROPERTIES + 1)}, "at most 16 properties"),
    ],
)
def test_bad_properties_are_not_issued_and_the_error_says_why(
    tmp_path: Path, props: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidProperty, match=message):
        TokenAuthority.from_data_dir(tmp_path).issue("client-a", properties=props)


def test_every_reserved_context_name_is_refused() -> None:
    for name in RESERVED_CONTEXT_NAMES:
        with pytest.raises(InvalidProperty, match="Unleash context field"):
            validate_properties({name: "x"})
    assert dict(validate_properties({"clientVersion": "2.4.1", "region": "eu-west 1"})) == {
        "clientVersion": "2.4.1", "region": "eu-west 1"}


def test_parse_property_takes_name_equals_value() -> None:
    assert parse_property("clientVersion=2.4.1") == ("clientVersion", "2.4.1")
    assert parse_property("build=a=b") == ("build", "a=b")  # the first = separates
    with pytest.raises(InvalidProperty, match="NAME=VALUE"):
        parse_property("clientVersion")
    with pytest.raises(InvalidProperty, match="Unleash context field"):
        parse_property("sessionId=s-1")


# -- the secret file: created by the service, used only while it is the service user's own ------


def test_without_create_a_missing_secret_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match=str(tmp_path / "secret.key")):
        load_or_create_secret(tmp_path, create=False)
    assert not (tmp_path / "secret.key").exists()
    created = load_or_create_secret(tmp_path)
    assert load_or_create_secret(tmp_path, create=False) == created


def test_a_secret_planted_by_another_user_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("f" * 64 + "\n")
    path.chmod(0o600)
    os.chown(path, OTHER_UID, -1)
    for create in (True, False):
        with pytest.raises(SecretFileError) as refused:
            TokenAuthority.from_data_dir(tmp_path, create=create)
        message = str(refused.value)
        assert str(path) in message and f"uid {OTHER_UID}" in message and f"uid {os.geteuid()}" in message
        assert "planted" in message and "chown" in message and "remove it" in message
    assert path.stat().st_uid == OTHER_UID and stat.S_IMODE(path.stat().st_mode) == 0o600  # untouched
    assert isinstance(refused.value, CredentialFileError)


@pytest.mark.parametrize(("mode", "can"), [(0o644, "read"), (0o640, "read"), (0o604, "read"), (0o620, "write"),
                                           (0o602, "write"), (0o666, "write")])
def test_a_secret_that_group_or_others_can_read_or_write_is_refused_not_chmoded(
    tmp_path: Path, mode: int, can: str
) -> None:
    load_or_create_secret(tmp_path)
    path = tmp_path / "secret.key"
    path.chmod(mode)
    with pytest.raises(SecretFileError, match=f"mode {mode:04o}: group or others can {can} it") as refused:
        load_or_create_secret(tmp_path)
    assert f"chmod 600 {path}" in str(refused.value)
    assert stat.S_IMODE(path.stat().st_mode) == mode  # not fixed behind the operator's back
    path.chmod(0o600)
    assert load_or_create_secret(tmp_path)


def test_a_symlink_is_judged_by_the_file_it_points_to(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("f" * 64 + "\n")
    target.chmod(0o600)
    os.chown(target, OTHER_UID, -1)
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.key").symlink_to(target)
    with pytest.raises(SecretFileError, match="planted"):
        load_or_create_secret(data)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo_dir = tmp_path / "fifo-data"
    fifo_dir.mkdir()
    (fifo_dir / "secret.key").symlink_to(fifo)
    with pytest.raises(SecretFileError, match="not a regular file"):  # and no hang on the open
        load_or_create_secret(fifo_dir)


def test_a_short_secret_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(SecretFileError, match=f"{path} holds fewer than 32 characters"):
        load_or_create_secret(tmp_path)


class _Counting(TokenAuthority):
    """The real authority, counting the full verifications."""

    calls: list[str]

    def verify(self, token: str) -> Identity:
        self.calls.append(token)
        return super().verify(token)


def _counting(tmp_path: Path) -> _Counting:
    authority = _Counting(TokenAuthority.from_data_dir(tmp_path).secret)
    object.__setattr__(authority, "calls", [])
    return authority


def test_accepted_tokens_verify_a_token_once_then_check_only_its_expiry(tmp_path: Path) -> None:
    authority = _counting(tmp_path)
    now = [time.time()]
    tokens = AcceptedTokens(authority, clock=lambda: now[0])
    token = authority.issue("client-a", ttl_seconds=60, now=now[0])
    first = tokens.verify(token)
    assert tokens.verify(token) is first and first.client_id == "client-a"
    assert authority.calls == [token]
    now[0] = first.expires_at - 0.001  # still valid: remembered
    assert tokens.verify(token) is first and len(authority.calls) == 1
    now[0] = first.expires_at  # expired (PyJWT: once now >= exp): forgotten and verified in full again
    assert tokens.verify(token) == first and len(authority.calls) == 2


def test_an_accepted_token_that_expires_is_refused(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    tokens = AcceptedTokens(authority)
    token = authority.issue("client-a", ttl_seconds=1, now=time.time())
    assert tokens.verify(token).client_id == "client-a"
    time.sleep(max(0.0, tokens.verify(token).expires_at - time.time()) + 0.05)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token)
    assert len(tokens) == 0


def test_accepted_tokens_refuse_what_the_authority_refuses_and_keep_none_of_it(tmp_path: Path) -> None:
    authority = _counting(tmp_path / "a")
    other = TokenAuthority.from_data_dir(tmp_path / "b")
    tokens = AcceptedTokens(authority)
    good = authority.issue("client-a")
    tokens.verify(good)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "client-b"
    for bad in [other.issue("client-a"), ".".join([header, _b64(claims), signature]), good + "x", "", "a.b.c"]:
        for _ in range(2):  # refused every time: never remembered
            with pytest.raises(TokenError):
                tokens.verify(bad)
    assert len(tokens) == 1


def test_accepted_tokens_are_bounded_oldest_forgotten_first(tmp_path: Path) -> None:
    authority = _counting(tmp_path)
    tokens = AcceptedTokens(authority, max_entries=3)
    issued = [authority.issue(f"client-{i}") for i in range(5)]
    for token in issued:
        tokens.verify(token)
    assert len(tokens) == 3
    authority.calls.clear()
    for token in issued[2:]:
        tokens.verify(token)
    assert authority.calls == []  # the newest three are remembered
    tokens.verify(issued[0])
    assert authority.calls == [issued[0]]  # the oldest was forgotten: verified in full again
    assert len(tokens) == 3
    with pytest.raises(ValueError):
        AcceptedTokens(authority, max_entries=0)
