"""Client identity: signed bearer tokens proving a client id, and the client properties
flag constraints may use.

Tokens are JWTs (HS256, PyJWT) carrying ``sub`` = client id, ``iat``, ``exp``, a random
``jti`` and, when the issuer set any, ``props``: the client's properties (a few short
``name: value`` strings, such as ``clientVersion``). They are signed with a per-deployment
secret kept in ``<data-dir>/secret.key`` (created by the service on first start, mode 0600,
and used only while it is owned by the service's user and private to it; see
:func:`canaryws.adapters.files.read_credential`). Altering the client id or a property
invalidates the signature, so a client can choose neither its identity nor the properties
the flags see, and so cannot choose its cohort.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import jwt

from canaryws.adapters.files import CredentialFileError, create_credential, read_credential
from canaryws.settings import DEFAULT_TTL_SECONDS

SECRET_FILE = "secret.key"
ISSUER = "canaryws"
AUDIENCE = "canaryws.records"
ALGORITHM = "HS256"
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")
MIN_SECRET_LENGTH = 32

PROPERTIES_CLAIM = "props"
MAX_PROPERTIES = 16
MAX_PROPERTY_NAME_LENGTH = 64
MAX_PROPERTY_VALUE_LENGTH = 128
PROPERTY_NAME_PATTERN = re.compile(rf"[A-Za-z][A-Za-z0-9_]{{0,{MAX_PROPERTY_NAME_LENGTH - 1}}}")
# The Unleash context's own fields: a property with one of these names would shadow (or be
# shadowed by) the field the service sets, in one SDK or another. Compared case-insensitively.
RESERVED_CONTEXT_NAMES = frozenset(
    {"userId", "sessionId", "appName", "environment", "currentTime", "remoteAddress", "properties"}
)
_RESERVED_FOLDED = frozenset(name.casefold() for name in RESERVED_CONTEXT_NAMES)
NO_PROPERTIES: Mapping[str, str] = MappingProxyType({})


class TokenError(Exception):
    """The presented token does not prove a client id (reason is safe to show)."""


class InvalidClientId(ValueError):
    pass


class InvalidProperty(ValueError):
    """A client property that cannot go into a token (the message says which and why)."""


class SecretFileError(CredentialFileError):
    """The token secret is missing, unsafe or unusable (the message names the file and the fix)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token proves: the client id, the token's id and lifetime (for
    revocation and for ending a connection when its token expires), and the client's
    properties as the token's issuer signed them (empty for a token that carries none)."""

    client_id: str
    token_id: str  # the ``jti`` claim; "" for a token that carries none
    issued_at: int  # Unix seconds
    expires_at: int  # Unix seconds
    # the ``props`` claim, validated (:func:`validate_properties`) and read-only
    properties: Mapping[str, str] = field(default_factory=lambda: NO_PROPERTIES, hash=False)


def validate_client_id(client_id: str) -> str:
    if not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise InvalidClientId(
            "a client id is 1-128 characters: letters, digits and . _ : @ / + -, starting with a letter or digit"
        )
    return client_id


def validate_property(name: object, value: object) -> tuple[str, str]:
    """``(name, value)`` if a token may carry them, else :class:`InvalidProperty`."""
    if not isinstance(name, str) or not PROPERTY_NAME_PATTERN.fullmatch(name):
        raise InvalidProperty(
            f"property name {name!r}: 1-{MAX_PROPERTY_NAME_LENGTH} characters, letters, digits and _, "
            "starting with a letter"
        )
    if name.casefold() in _RESERVED_FOLDED:
        raise InvalidProperty(
            f"property name {name!r} is an Unleash context field the service sets itself "
            f"({', '.join(sorted(RESERVED_CONTEXT_NAMES))}); choose another name"
        )
    if not isinstance(value, str):
        raise InvalidProperty(f"property {name}: the value must be a string")
    if not 1 <= len(value) <= MAX_PROPERTY_VALUE_LENGTH:
        raise InvalidProperty(f"property {name}: the value must be 1-{MAX_PROPERTY_VALUE_LENGTH} characters")
    if not value.isprintable() or value.strip() != value:
        raise InvalidProperty(
            f"property {name}: the value must be printable, without control characters or leading/trailing spaces"
        )
    return name, value


def validate_properties(properties: Mapping[str, str]) -> Mapping[str, str]:
    """The properties, checked (at most 16, each :func:`validate_property`), as a read-only
    mapping in name order; :class:`InvalidProperty` otherwise."""
    if len(properties) > MAX_PROPERTIES:
        raise InvalidProperty(f"at most {MAX_PROPERTIES} properties per token, not {len(properties)}")
    checked = dict(sorted(validate_property(name, value) for name, value in properties.items()))
    return MappingProxyType(checked) if checked else NO_PROPERTIES


def parse_property(assignment: str) -> tuple[str, str]:
    """``NAME=VALUE`` (the CLI's ``--property``) as a valid ``(name, value)``."""
    name, sep, value = assignment.partition("=")
    if not sep:
        raise InvalidProperty(f"{assignment!r}: write a property as NAME=VALUE, such as clientVersion=2.4.1")
    return validate_property(name, value)


_RENEW = "remove it and `canaryws serve` creates a new one when it starts; tokens signed with the old one stop working"


def load_or_create_secret(data_dir: Path, *, create: bool = True) -> bytes:
    """The signing secret in ``<data_dir>/secret.key``. With ``create`` (the service, at
    start), a missing one is created, owner-only; without it (the token CLI), it must exist.
    :class:`SecretFileError` for a missing, unreadable or unsafe file (one owned by another
    user, or readable or writable by group or others: it is neither used nor chmod'ed) or
    one that holds no usable secret."""
    path = data_dir / SECRET_FILE
    try:
        if create:
            create_credential(path, lambda: secrets.token_hex(32))
        secret, _ = read_credential(path, "token secret", renew=_RENEW, error=SecretFileError)
    except OSError as exc:
        raise SecretFileError(f"token secret {path}: {exc.strerror or exc}") from None
    secret = secret.strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise SecretFileError(f"token secret {path} holds fewer than {MIN_SECRET_LENGTH} characters; to get a "
                              f"new one, {_RENEW}")
    return secret.encode()


@dataclass(frozen=True, slots=True)
class TokenAuthority:
    secret: bytes
    ttl_seconds: int = DEFAULT_TTL_SECONDS

    @classmethod
    def from_data_dir(
        cls, data_dir: Path, ttl_seconds: int = DEFAULT_TTL_SECONDS, *, create: bool = True
    ) -> TokenAuthority:
        """The authority of the service using ``data_dir`` (see :func:`load_or_create_secret`)."""
        return cls(load_or_create_secret(data_dir, create=create), ttl_seconds)

    def issue(
        self,
        client_id: str,
        ttl_seconds: int | None = None,
        now: float | None = None,
        *,
        properties: Mapping[str, str] | None = None,
    ) -> str:
        """A token proving ``client_id`` and, signed with it, ``properties`` (the client
        properties flag constraints see). InvalidClientId / InvalidProperty when they
        cannot go into a token."""
        validate_client_id(client_id)
        props = validate_properties(properties or {})
        issued = int(now if now is not None else time.time())
        claims: dict[str, object] = {
            "sub": client_id,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": issued,
            "exp": issued + (ttl_seconds if ttl_seconds is not None else self.ttl_seconds),
            "jti": secrets.token_hex(8),
        }
        if props:
            claims[PROPERTIES_CLAIM] = dict(props)
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        """Return the identity the token proves, or raise :class:`TokenError`."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidTokenError:
            raise TokenError("token is not valid") from None
        client_id, jti, iat, exp = claims["sub"], claims.get("jti", ""), claims["iat"], claims["exp"]
        props = claims.get(PROPERTIES_CLAIM, {})
        if (
            not isinstance(client_id, str)
            or not CLIENT_ID_PATTERN.fullmatch(client_id)
            or not isinstance(jti, str)
            or not isinstance(iat, int)
            or not isinstance(exp, int)
            or not isinstance(props, dict)
        ):
            raise TokenError("token is not valid")
        try:
            properties = validate_properties(props)
        except InvalidProperty:
            raise TokenError("token is not valid") from None
        return Identity(client_id, jti, iat, exp, properties)


ACCEPTED_TOKENS = 16_384
"""How many accepted tokens :class:`AcceptedTokens` remembers: a 16-byte digest of the token
and the identity (which an open connection holds anyway), about 0.4 KiB each, at most
about 7 MiB."""


class AcceptedTokens:
    """:meth:`TokenAuthority.verify` with a bounded memory of the tokens it accepted.

    A client reconnects with the token it had (after a restart's 1012, every client at
    once), and checking it again (PyJWT: the base64url parts, the JSON claims, the HMAC, the
    registered claims) is about 100 µs of the handshake's CPU. A token accepted before is
    the same string signed by the same secret: what is left to check is its expiry, against
    the clock, as PyJWT does (valid while ``now < exp``; an expired one is forgotten and
    verified again, which refuses it). Only tokens that verified are kept, so a client
    cannot fill the memory with tokens of its own making; at most ``max_entries``, the
    oldest forgotten first. They are kept by a 128-bit BLAKE2b digest of the whole token
    (no token a client sends can be made to match another one's). Revocation is not decided
    here: the endpoint asks about every identity on every handshake, cached or not.
    """

    __slots__ = ("_accepted", "_authority", "_clock", "_max")

    def __init__(self, authority: TokenAuthority, max_entries: int = ACCEPTED_TOKENS,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._authority = authority
        self._max = max_entries
        self._clock = clock
        self._accepted: dict[bytes, Identity] = {}

    def __len__(self) -> int:
        return len(self._accepted)

    def verify(self, token: str) -> Identity:
        """The identity ``token`` proves, or :class:`TokenError`, as :meth:`TokenAuthority.verify`."""
        accepted = self._accepted
        key = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        identity = accepted.get(key)
        if identity is not None:
            if self._clock() < identity.expires_at:
                return identity
            del accepted[key]
        identity = self._authority.verify(token)
        if len(accepted) >= self._max:
            del accepted[next(iter(accepted))]
        accepted[key] = identity
        return identity
