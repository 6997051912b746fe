"""The handshake's decision, as a plain function: :func:`admit` reads the upgrade request's
headers and offered subprotocols and says who the client is (:class:`Admitted`) or why it
is refused (:class:`Refusal`, the HTTP answer of docs/contract.md, "Endpoint and
handshake"). No I/O: the token is verified and the revocations consulted through the
callables it is given, and the endpoint sends the answer.

The order is the contract's: subprotocol, repeated headers, origin, token, revocation. (The
limits a handshake meets before, the handshake rates and the connection cap, are
:mod:`canaryws.adapters.records.gate`'s; the per-client cap, after, the endpoint's.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from canaryws.adapters.auth import Identity, TokenError
from canaryws.core import contract

CLIENT_VERSION_HEADER = b"x-canaryws-client-version"
SINGLE_HEADERS = (b"authorization", b"origin")
"""Headers a handshake may carry once: with two, which one counts would be the server's guess
(and a proxy and the service might guess differently)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    identity: Identity
    subprotocol: str | None  # the one to answer with (None: the client offered none)
    claimed_version: str | None  # X-Canaryws-Client-Version, first 64 characters: advisory only


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    error: str  # the contract's error code, also the refusal's metric reason
    detail: str
    retry_after: float | None = None  # seconds; sent as a whole number, at least 1

    def headers(self) -> dict[str, str]:
        """The answer's headers: ``WWW-Authenticate`` for a 401, ``Retry-After`` when set."""
        headers = {"WWW-Authenticate": f'Bearer realm="canaryws", error="{self.error}"'} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


def normalized_origins(origins: Iterable[str] | None) -> frozenset[str] | None:
    """``CANARYWS_ALLOWED_ORIGINS`` as :func:`admit` compares them (lower case, no trailing slash)."""
    return None if origins is None else frozenset(o.lower().rstrip("/") for o in origins)


def admit(
    headers: Iterable[tuple[bytes, bytes]],
    subprotocols: Iterable[str],
    *,
    query_token: str | None,
    verify: Callable[[str], Identity],
    revoked: Callable[[Identity], str | None],
    allowed_origins: frozenset[str] | None,
) -> Admitted | Refusal:
    """Who the client of this upgrade request is, or why it is refused.

    ``headers``: the request's (ASGI: lower-case names); ``query_token``: the browser's
    ``?access_token=``, used when no ``Authorization`` header is sent; ``verify`` raises
    :class:`TokenError` for a token it does not accept; ``revoked`` names a revocation that
    applies to the identity (None when none does); ``allowed_origins`` as
    :func:`normalized_origins` gives them (None: any origin)."""
    ok, subprotocol = contract.negotiate_subprotocol(list(subprotocols))
    if not ok:
        return Refusal(400, "unsupported_subprotocol",
                       f"supported subprotocols: {', '.join(contract.SUPPORTED_PROTOCOLS)}")
    found = _single_headers(headers)
    if isinstance(found, Refusal):
        return found
    origin = found.get(b"origin")
    if allowed_origins is not None and origin is not None and origin.lower().rstrip("/") not in allowed_origins:
        return Refusal(403, "origin_not_allowed", f"origin {origin[:200]!r} is not allowed")
    token = _bearer(found.get(b"authorization"), query_token)
    if token is None:
        return Refusal(401, "missing_token", "send Authorization: Bearer <token>")
    try:
        identity = verify(token)
    except TokenError as exc:
        return Refusal(401, "invalid_token", str(exc))
    if revoked(identity) is not None:
        return Refusal(401, "invalid_token", "token revoked")
    version = found.get(CLIENT_VERSION_HEADER)
    return Admitted(identity, subprotocol, None if version is None else version[:64])


def _single_headers(headers: Iterable[tuple[bytes, bytes]]) -> Mapping[bytes, str] | Refusal:
    """The headers :func:`admit` reads, decoded; a Refusal when one of :data:`SINGLE_HEADERS`
    comes twice. (The client version, advisory, keeps its first occurrence.)"""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in SINGLE_HEADERS:
            if name in found:
                return Refusal(400, "duplicate_header", f"send one {name.decode().title()} header, not several")
            found[name] = value.decode("latin-1")
        elif name == CLIENT_VERSION_HEADER and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _bearer(authorization: str | None, query_token: str | None) -> str | None:
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return query_token or None
