"""Tokens: a token proves one client id and cannot be altered into another."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pytest

from canaryws.adapters.auth import (
    InvalidClientId,
    TokenAuthority,
    TokenError,
    load_or_create_secret,
)


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
