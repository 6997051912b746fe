"""Administrative HTTP API under ``/admin``: revocations and open connections.

Every route of :func:`admin_router` requires ``Authorization: Bearer <admin credential>``;
the check runs before anything else of the request (before its body is read), in the
router's route class, so a route added later cannot forget it. The credential is compared
in constant time (``hmac.compare_digest`` over SHA-256 digests, so its length does not
leak either). Without it, or with a wrong one: 401 with ``WWW-Authenticate``.

The credential is the content of ``<data-dir>/admin.key``, created on first start (random,
mode 0600, like the token secret ``secret.key``), or of the file ``CANARYWS_ADMIN_TOKEN_FILE``
names (which must exist then: a mounted secret, say). It is never logged. An ``admin.key`` not
owned by the service's user, or that group or others can read or write, is refused (another
user may have planted it); the operator's file may also be root's, and group- or
world-readable (with a warning), but never writable by group or others.

The probes ``/healthz``, ``/readyz`` and ``/metrics`` are not under ``/admin`` and stay open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response

from canaryws.adapters.auth import InvalidClientId, TokenAuthority, TokenError, validate_client_id
from canaryws.adapters.files import CredentialFileError, create_credential, read_credential
from canaryws.adapters.revocation import RevocationFileError, RevocationList, inspect_token

ADMIN_KEY_FILE = "admin.key"
REALM = "canaryws-admin"
MIN_KEY_LENGTH = 16

log = logging.getLogger("canaryws.admin")


# The error of every credential file, the token secret's included, so that whoever reports
# an unusable admin credential (``serve``'s "cannot start") reports an unusable secret too.
AdminKeyError = CredentialFileError
_RENEW_DEFAULT = "remove it and `canaryws serve` creates a new one when it starts"
_RENEW_OPERATORS = "write a new credential to it"


def load_or_create_admin_key(path: Path, *, create: bool) -> str:
    """The admin credential in ``path``. With ``create`` (the default ``<data-dir>/admin.key``),
    a missing file is created with a random credential, owner-only; otherwise (the operator's
    ``CANARYWS_ADMIN_TOKEN_FILE``) it must exist. AdminKeyError when it cannot be read, holds
    fewer than 16 characters, or is unsafe (:func:`read_credential`): ``admin.key`` must be the
    service user's and private to it; the operator's file may be root's (a mounted secret) and
    readable by group or others (a warning), never writable by them. Nothing is chmod'ed."""
    try:
        if create:
            if create_credential(path, lambda: secrets.token_urlsafe(32)):
                log.info("admin credential created", extra={"path": str(path)})
            key, _ = read_credential(path, "admin credential", renew=_RENEW_DEFAULT, error=AdminKeyError)
        else:
            key, mode = read_credential(path, "admin credential", renew=_RENEW_OPERATORS, root_may_own=True,
                                        others_may_read=True, error=AdminKeyError)
            if mode & 0o077:
                log.warning("the admin credential file is readable by others than its owner", extra={"path": str(path)})
        key = key.strip()
    except OSError as exc:
        raise AdminKeyError(f"admin credential {path}: {exc.strerror or exc}") from None
    if len(key) < MIN_KEY_LENGTH:
        raise AdminKeyError(f"admin credential {path} holds fewer than {MIN_KEY_LENGTH} characters")
    return key


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def admin_credential_check(credential: str) -> Callable[[str | None], bool]:
    """Whether an ``Authorization`` header value carries the admin credential (in constant time);
    also what ``/readyz`` asks before it shows the details an outsider must not see."""
    expected = _digest(credential)

    def check(header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(_digest(value.strip()), expected)

    return check


def _guarded(credential: str) -> type[APIRoute]:
    """A route class whose handler first checks the admin credential."""
    is_admin = admin_credential_check(credential)

    def refusal(request: Request) -> Response | None:
        header = request.headers.get("authorization")
        if header is None:
            error, detail, challenge = ("missing_credential", "send Authorization: Bearer <admin credential>",
                                        f'Bearer realm="{REALM}"')
        else:
            if is_admin(header):
                return None
            error, detail, challenge = ("invalid_credential", "the admin credential is not valid",
                                        f'Bearer realm="{REALM}", error="invalid_token"')
        log.warning("admin request refused", extra={"reason": error, "method": request.method,
                                                    "path": request.url.path})
        return _error(401, error, detail, {"WWW-Authenticate": challenge})

    class AdminRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                refused = refusal(request)
                return refused if refused is not None else await handler(request)

            return guarded

    return AdminRoute


def admin_router(
    *,
    credential: str,
    tokens: TokenAuthority,
    revocations: RevocationList,
    connections: Callable[[], Mapping[str, int]],
) -> APIRouter:
    """``/admin`` routes. ``connections()`` gives the open connections per strategy."""
    router = APIRouter(prefix="/admin", route_class=_guarded(credential))

    @router.post("/revocations")
    async def revoke(request: Request) -> Response:
        """``{"token": "<token>"}`` revokes that token; ``{"client_id": "<id>"}`` every token
        of the client issued up to now (answered once that second is over, so tokens issued
        after the answer work)."""
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            return _error(400, "invalid_request", "the body is not JSON")
        if not isinstance(body, dict) or len(body.keys() & {"token", "client_id"}) != 1:
            return _error(400, "invalid_request", 'send {"token": "<token>"} or {"client_id": "<client id>"}')
        try:
            if "token" in body:
                return await _revoke_token(body["token"])
            return await _revoke_client(body["client_id"])
        except RevocationFileError as exc:
            log.error("revocation failed: %s", exc)
            return _error(500, "revocation_failed", "the revocation list could not be written; see the service log")

    async def _revoke_token(token: object) -> Response:
        if not isinstance(token, str) or not token:
            return _error(400, "invalid_request", '"token" must be a non-empty string')
        try:
            presented = inspect_token(tokens, token)
        except TokenError as exc:
            return _error(400, "invalid_token", f"not a token of this service: {exc}")
        identity = presented.identity
        described = {"token_id": identity.token_id, "client_id": identity.client_id,
                     "expires_at": identity.expires_at}
        if presented.expired:
            return JSONResponse({"revoked": None, **described,
                                 "detail": "the token has expired: it is refused anyway; nothing to revoke"})
        if not identity.token_id:
            return _error(400, "invalid_token", "the token has no token id (jti); revoke its client instead")
        entry = await revocations.revoke_token(identity)
        log.warning("token revoked", extra={"token_id": entry.token_id, "client_id": entry.client_id, "via": "http"})
        return JSONResponse({"revoked": "token", **described, "revoked_at": entry.revoked_at})

    async def _revoke_client(client_id: object) -> Response:
        try:
            if not isinstance(client_id, str):
                raise InvalidClientId("client_id must be a string")
            validate_client_id(client_id)
        except InvalidClientId as exc:
            return _error(400, "invalid_client_id", str(exc))
        cutoff = await revocations.revoke_client(client_id)
        log.warning("client revoked", extra={"client_id": client_id, "issued_up_to": cutoff, "via": "http"})
        return JSONResponse({"revoked": "client", "client_id": client_id, "issued_up_to": cutoff})

    @router.get("/revocations")
    async def list_revocations() -> Response:
        """The list in force in this process (token ids, never token values)."""
        current = revocations.current
        return JSONResponse({
            **revocations.status(),
            "tokens": [
                {"token_id": e.token_id, "client_id": e.client_id, "expires_at": e.expires_at,
                 "revoked_at": e.revoked_at, "expired": e.expires_at <= time.time()}
                for e in sorted(current.tokens.values(), key=lambda e: (e.revoked_at, e.token_id))
            ],
            "clients": [{"client_id": cid, "issued_up_to": at} for cid, at in sorted(current.clients.items())],
        })

    @router.get("/connections")
    async def list_connections() -> Response:
        """Open WebSocket connections of this process, per strategy."""
        by_strategy = dict(connections())
        return JSONResponse({"open": sum(by_strategy.values()), "by_strategy": by_strategy})

    return router
