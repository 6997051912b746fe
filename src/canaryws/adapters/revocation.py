"""Token revocation: a list kept in ``<data-dir>/revoked.json``, shared by the CLI, the
admin HTTP API and every service process using that data dir.

The file (JSON, written by :func:`update_revocations`; hand edits must keep the shape)::

    {
      "version": 1,
      "tokens": {"<jti>": {"client_id": "tenant-42", "expires_at": 1767225600, "revoked_at": 1764633600}},
      "clients": {"<client_id>": 1764633600}
    }

- ``tokens``: single tokens, by their ``jti`` claim, with their client id and expiry (Unix
  seconds). An entry is pruned at the next write once the token has expired: it is refused
  for its expiry then anyway.
- ``clients``: every token of the client *issued at or before* that Unix second is
  revoked; tokens issued later work. Revoking returns only after that second has passed
  (:func:`wait_past`), so a token issued after the command returns always works.
  These entries are kept until removed by hand (tokens can be issued with any lifetime).

Writes take an ``fcntl`` lock on ``.revoked.json.lock`` next to the file (concurrent CLI
and HTTP writers do not lose each other's entries) and replace the file atomically
(temporary file, fsync, ``os.replace``), so a reader only ever sees a complete list.

:class:`RevocationList` is the running service's view: loaded at start-up (an invalid file
refuses the start), then watched like the flags file (``watchfiles`` on the directory,
plus a stat comparison every second). A missing file means nothing is revoked; an
unreadable or invalid one keeps the last good list and logs one warning.
:meth:`RevocationList.revoked` is two dict lookups: the endpoint calls it at every
handshake and for every open connection once a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
import msgspec

from canaryws.adapters.auth import ALGORITHM, AUDIENCE, ISSUER, Identity, TokenAuthority, TokenError
from canaryws.adapters.files import FileSignature, locked, stat_signature, watch_file, write_atomic

REVOKED_FILE = "revoked.json"
FORMAT_VERSION = 1
LOGGER_NAME = "canaryws.revocation"
REASON_TOKEN = "token revoked"
REASON_CLIENT = "client revoked"
_NEW_FILE_MODE = 0o644  # ids and times, no secrets; readable by a service running as another user


class RevocationFileError(Exception):
    """The revocation file cannot be read, parsed or written (the message names it)."""


# -- the list ------------------------------------------------------------------


class _TokenEntry(msgspec.Struct, frozen=True):
    client_id: str
    expires_at: int
    revoked_at: int


class _Document(msgspec.Struct, frozen=True):
    version: int = FORMAT_VERSION
    tokens: dict[str, _TokenEntry] = msgspec.field(default_factory=dict)
    clients: dict[str, int] = msgspec.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RevokedToken:
    token_id: str
    client_id: str
    expires_at: int
    revoked_at: int


@dataclass(frozen=True, slots=True)
class Revocations:
    """One immutable version of the list."""

    tokens: Mapping[str, RevokedToken]  # by token id (jti)
    clients: Mapping[str, int]  # client id -> every token issued at or before this Unix second

    def revoked(self, identity: Identity) -> str | None:
        """Why ``identity``'s token is revoked, or None. Two dict lookups."""
        entry = self.tokens.get(identity.token_id) if identity.token_id else None
        if entry is not None and entry.client_id == identity.client_id:
            return REASON_TOKEN
        cutoff = self.clients.get(identity.client_id)
        if cutoff is not None and identity.issued_at <= cutoff:
            return REASON_CLIENT
        return None

    def with_token(self, entry: RevokedToken) -> Revocations:
        """With ``entry`` added (an entry already there, and its time, is kept)."""
        if entry.token_id in self.tokens:
            return self
        return Revocations({**self.tokens, entry.token_id: entry}, self.clients)

    def with_client(self, client_id: str, revoked_at: int) -> Revocations:
        cutoff = max(revoked_at, self.clients.get(client_id, revoked_at))
        return Revocations(self.tokens, {**self.clients, client_id: cutoff})

    def pruned(self, now: float) -> Revocations:
        """Without the entries of tokens that have expired (refused for that anyway)."""
        return Revocations({k: v for k, v in self.tokens.items() if v.expires_at > now}, self.clients)

    def encode(self) -> bytes:
        doc = _Document(
            FORMAT_VERSION,
            {k: _TokenEntry(v.client_id, v.expires_at, v.revoked_at) for k, v in sorted(self.tokens.items())},
            dict(sorted(self.clients.items())),
        )
        return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> Revocations:
        """Parse the file's bytes; ValueError (without the file's contents) when invalid."""
        try:
            doc = msgspec.json.decode(raw, type=_Document)
        except msgspec.ValidationError as exc:
            raise ValueError(f"not a revocation list: {exc}") from None
        except msgspec.DecodeError:
            raise ValueError("not valid JSON") from None
        if doc.version != FORMAT_VERSION:
            raise ValueError(f"unsupported version {doc.version} (this service reads {FORMAT_VERSION})")
        tokens = {jti: RevokedToken(jti, e.client_id, e.expires_at, e.revoked_at) for jti, e in doc.tokens.items()}
        return cls(tokens, dict(doc.clients))


EMPTY = Revocations(MappingProxyType({}), MappingProxyType({}))


def revocations_path(data_dir: Path) -> Path:
    return Path(data_dir) / REVOKED_FILE


# -- reading and writing the file ---------------------------------------------------


def _read(path: Path) -> tuple[Revocations, FileSignature | None]:
    """The list in the file and the signature of the version read; a missing file is
    the empty list. RevocationFileError when it cannot be read or parsed."""
    try:
        with open(path, "rb") as file:
            signature = FileSignature.of(os.fstat(file.fileno()))
            raw = file.read()
    except FileNotFoundError:
        return EMPTY, None
    except OSError as exc:
        raise RevocationFileError(f"{path}: cannot read the revocation list: {exc.strerror or exc}") from None
    try:
        return Revocations.decode(raw), signature
    except ValueError as exc:
        raise RevocationFileError(f"{path}: {exc}") from None


def read_revocations(path: Path) -> Revocations:
    """The list in ``path`` (empty when the file does not exist); RevocationFileError if unusable."""
    return _read(path)[0]


def update_revocations(path: Path, edit: Callable[[Revocations], Revocations],
                       now: float | None = None) -> Revocations:
    """Apply ``edit`` to the file under an exclusive lock, prune expired token entries and
    write the result atomically; returns what was written. Errors from ``edit`` propagate
    (nothing is written)."""
    target = Path(os.path.realpath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target):
            new = edit(read_revocations(target)).pruned(time.time() if now is None else now)
            write_atomic(target, new.encode(), new_file_mode=_NEW_FILE_MODE)
    except OSError as exc:
        raise RevocationFileError(f"{path}: cannot write the revocation list: {exc.strerror or exc}") from None
    return new


# -- revoking -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenToRevoke:
    """What a presented token says about itself, once its signature is verified."""

    identity: Identity
    expired: bool


def inspect_token(tokens: TokenAuthority, token: str, now: float | None = None) -> TokenToRevoke:
    """Verify ``token``'s signature and claims, tolerating expiry (an expired token can be
    named, pointlessly). TokenError for a token this service did not issue or that was altered."""
    try:
        return TokenToRevoke(tokens.verify(token), expired=False)
    except TokenError as exc:
        if str(exc) != "token expired":
            raise
    try:
        claims = jwt.decode(
            token, tokens.secret, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
            options={"require": ["sub", "exp", "iat"], "verify_exp": False},
        )
    except jwt.InvalidTokenError:
        raise TokenError("token is not valid") from None
    client_id, jti, iat, exp = claims["sub"], claims.get("jti", ""), claims["iat"], claims["exp"]
    if not all(isinstance(v, str) for v in (client_id, jti)) or not all(isinstance(v, int) for v in (iat, exp)):
        raise TokenError("token is not valid")
    wall = time.time() if now is None else now
    return TokenToRevoke(Identity(client_id, jti, iat, exp), expired=exp <= wall)


def revoke_token(path: Path, identity: Identity, now: float | None = None) -> tuple[RevokedToken, Revocations]:
    """Add the token to the list in ``path``; returns its entry (the earlier one if it was
    revoked before) and the list written. ValueError for a token without a ``jti``
    (revoke its client instead)."""
    if not identity.token_id:
        raise ValueError("the token carries no token id (jti); revoke its client instead")
    wall = time.time() if now is None else now
    entry = RevokedToken(identity.token_id, identity.client_id, identity.expires_at, int(wall))
    new = update_revocations(path, lambda current: current.with_token(entry), wall)
    return new.tokens.get(entry.token_id, entry), new


def revoke_client(path: Path, client_id: str, now: float | None = None) -> tuple[int, Revocations]:
    """Revoke every token of ``client_id`` issued up to now (this Unix second); returns the
    cutoff. Call :func:`wait_past` (or :func:`wait_past_async`) before handing out new tokens."""
    wall = time.time() if now is None else now
    cutoff = int(wall)
    return cutoff, update_revocations(path, lambda current: current.with_client(client_id, cutoff), wall)


def wait_past(second: int) -> None:
    """Sleep until the Unix second ``second`` is over, so tokens issued afterwards (whose
    ``iat`` is a whole second) are not caught by a client revocation made in it."""
    time.sleep(max(0.0, second + 1 - time.time()))


async def wait_past_async(second: int) -> None:
    await asyncio.sleep(max(0.0, second + 1 - time.time()))


# -- the running service's view ----------------------------------------------------


class RevocationList:
    """The revocation list of a data dir: :meth:`load` once, then :meth:`run` watches it."""

    def __init__(self, data_dir: Path, *, poll_interval: float = 1.0, debounce_ms: int = 100,
                 step_ms: int = 50) -> None:
        self._path = revocations_path(data_dir)
        self._poll_interval = poll_interval
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._log = logging.getLogger(LOGGER_NAME)
        self._current = EMPTY
        self._signature: FileSignature | None = None  # of the version last read; None: missing
        self._last_error: str | None = None  # set while the file on disk is unusable
        self._failed_version: FileSignature | None = None  # the unusable version warned about

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current(self) -> Revocations:
        return self._current

    def revoked(self, identity: Identity) -> str | None:
        """Why ``identity``'s token is revoked, or None (the endpoint's ``revoked`` hook)."""
        return self._current.revoked(identity)

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self._path),
            "state": "degraded" if self._last_error is not None else "ok",
            "last_error": self._last_error,
            "tokens": len(self._current.tokens),
            "clients": len(self._current.clients),
        }

    def load(self) -> Revocations:
        """Read the file synchronously (start-up): RevocationFileError if it is unusable."""
        self._current, self._signature = _read(self._path)
        self._last_error = None
        self._log.info("revocation list %s: %d tokens, %d clients", self._path,
                       len(self._current.tokens), len(self._current.clients))
        return self._current

    def reload(self) -> bool:
        """Read the file again; True when it was usable (the list in force was replaced)."""
        signature = stat_signature(self._path)
        try:
            current, self._signature = _read(self._path)
        except RevocationFileError as exc:
            self._signature = signature  # not retried until the file changes
            if self._last_error is None or signature != self._failed_version:
                self._log.warning("revocation list rejected, keeping the last good one (%d tokens, %d clients): %s",
                                  len(self._current.tokens), len(self._current.clients), exc)
            self._last_error, self._failed_version = str(exc), signature
            return False
        self._current = current
        self._last_error = None
        self._log.info("revocation list reloaded from %s: %d tokens, %d clients", self._path,
                       len(current.tokens), len(current.clients))
        return True

    def apply(self, revocations: Revocations) -> None:
        """Put a list this process just wrote in force at once; the watcher re-reads the
        file anyway (its signature changed), so another writer's concurrent entries follow."""
        self._current = revocations

    async def revoke_token(self, identity: Identity) -> RevokedToken:
        entry, new = await asyncio.to_thread(revoke_token, self._path, identity)
        self.apply(new)
        return entry

    async def revoke_client(self, client_id: str) -> int:
        """Revoke every token of the client issued up to now; returns once that second is over."""
        cutoff, new = await asyncio.to_thread(revoke_client, self._path, client_id)
        self.apply(new)
        await wait_past_async(cutoff)
        return cutoff

    async def run(self) -> None:
        """Watch the file until cancelled (the same scheme as the flags file: the directory
        is watched, so atomic replaces are seen, and a stat comparison on every wake-up and
        every ``poll_interval`` catches a missed event)."""
        await watch_file(
            self._path,
            signature=lambda: self._signature,
            reload=self.reload,
            log=self._log,
            poll_interval=self._poll_interval,
            debounce_ms=self._debounce_ms,
            step_ms=self._step_ms,
        )
