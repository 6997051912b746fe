"""The handshake's admission, a plain function: every answer of docs/contract.md's refusal
table that it decides, without a server."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from canaryws.adapters.auth import Identity, TokenAuthority
from canaryws.adapters.records.admission import Admitted, Refusal, admit, normalized_origins
from canaryws.core.contract import PROTOCOL_V1


@pytest.fixture
def tokens(tmp_path: Path) -> TokenAuthority:
    return TokenAuthority.from_data_dir(tmp_path)


def _admit(tokens: TokenAuthority, headers: Sequence[tuple[bytes, bytes]], subprotocols: Sequence[str] = (),
           *, query_token: str | None = None, revoked: str | None = None,
           origins: list[str] | None = None) -> Admitted | Refusal:
    return admit(headers, subprotocols, query_token=query_token, verify=tokens.verify,
                 revoked=lambda _identity: revoked, allowed_origins=normalized_origins(origins))


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


def test_a_good_token_is_admitted_with_its_identity_subprotocol_and_claimed_version(tokens: TokenAuthority) -> None:
    token = tokens.issue("client-1", properties={"clientVersion": "2.0.0"})
    decision = _admit(tokens, [bearer(token), (b"x-canaryws-client-version", b"9" * 100)], [PROTOCOL_V1])
    assert isinstance(decision, Admitted)
    assert decision.identity.client_id == "client-1"
    assert dict(decision.identity.properties) == {"clientVersion": "2.0.0"}
    assert (decision.subprotocol, decision.claimed_version) == (PROTOCOL_V1, "9" * 64)


def test_the_browser_query_token_counts_only_without_an_authorization_header(tokens: TokenAuthority) -> None:
    good, other = tokens.issue("from-query"), tokens.issue("from-header")
    from_query = _admit(tokens, [], query_token=good)
    assert isinstance(from_query, Admitted) and from_query.identity.client_id == "from-query"
    both = _admit(tokens, [bearer(other)], query_token=good)
    assert isinstance(both, Admitted) and both.identity.client_id == "from-header"


@pytest.mark.parametrize(("case", "status", "error"), [
    ("unsupported subprotocol", 400, "unsupported_subprotocol"),
    ("two Authorization headers", 400, "duplicate_header"),
    ("two Origin headers", 400, "duplicate_header"),
    ("origin not allowed", 403, "origin_not_allowed"),
    ("no token", 401, "missing_token"),
    ("not a bearer token", 401, "missing_token"),
    ("forged token", 401, "invalid_token"),
    ("expired token", 401, "invalid_token"),
    ("revoked token", 401, "invalid_token"),
])
def test_refusals(tokens: TokenAuthority, tmp_path: Path, case: str, status: int, error: str) -> None:
    good = tokens.issue("client-1")
    forged = TokenAuthority.from_data_dir(tmp_path / "elsewhere").issue("client-1")
    expired = tokens.issue("client-1", ttl_seconds=5, now=time.time() - 60)
    headers, subprotocols, revoked, origins = [bearer(good)], [PROTOCOL_V1], None, None
    if case == "unsupported subprotocol":
        subprotocols = ["chat"]
    elif case == "two Authorization headers":
        headers = [bearer(good), bearer(forged)]
    elif case == "two Origin headers":
        headers = [bearer(good), (b"origin", b"https://a.example"), (b"origin", b"https://b.example")]
    elif case == "origin not allowed":
        headers, origins = [bearer(good), (b"origin", b"https://evil.example")], ["https://app.example"]
    elif case == "no token":
        headers = []
    elif case == "not a bearer token":
        headers = [(b"authorization", f"Basic {good}".encode())]
    elif case == "forged token":
        headers = [bearer(forged)]
    elif case == "expired token":
        headers = [bearer(expired)]
    elif case == "revoked token":
        revoked = "the client's tokens"
    decision = _admit(tokens, headers, subprotocols, revoked=revoked, origins=origins)
    assert isinstance(decision, Refusal), decision
    assert (decision.status, decision.error) == (status, error)
    assert decision.body() == {"error": error, "detail": decision.detail}
    assert ("WWW-Authenticate" in decision.headers()) == (status == 401)


def test_the_contracts_order_subprotocol_before_token(tokens: TokenAuthority) -> None:
    decision = _admit(tokens, [], ["chat"])
    assert isinstance(decision, Refusal) and decision.error == "unsupported_subprotocol"


def test_allowed_origins_compare_without_case_or_trailing_slash(tokens: TokenAuthority) -> None:
    token = tokens.issue("client-1")
    allowed = _admit(tokens, [bearer(token), (b"origin", b"HTTPS://App.Example/")], origins=["https://app.example"])
    assert isinstance(allowed, Admitted)
    no_origin = _admit(tokens, [bearer(token)], origins=["https://app.example"])  # not a browser
    assert isinstance(no_origin, Admitted)


@pytest.mark.parametrize(("retry_after", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"), (None, None)])
def test_retry_after_is_whole_seconds_at_least_one(retry_after: float | None, header: str | None) -> None:
    refusal = Refusal(429, "too_many_handshakes", "slow down", retry_after=retry_after)
    assert refusal.headers().get("Retry-After") == header


def test_identity_is_what_verify_returns(tokens: TokenAuthority) -> None:
    seen: list[Identity] = []
    token = tokens.issue("client-9")

    def revoked(identity: Identity) -> str | None:
        seen.append(identity)
        return None

    decision = admit([bearer(token)], [], query_token=None, verify=tokens.verify, revoked=revoked,
                     allowed_origins=None)
    assert isinstance(decision, Admitted) and seen == [decision.identity]
