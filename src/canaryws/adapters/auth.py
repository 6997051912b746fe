"""Client identity: signed bearer tokens proving a client id.

Tokens are JWTs (HS256, PyJWT) carrying ``sub`` = client id, ``iat``, ``exp`` and a
random ``jti``, signed with a per-deployment secret kept in ``<data-dir>/secret.key``
(created on first use, mode 0600). Altering the client id invalidates the signature,
so a client cannot choose another identity, and so cannot choose its cohort.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from canaryws.adapters.files import create_secret_file

SECRET_FILE = "secret.key"
ISSUER = "canaryws"
AUDIENCE = "canaryws.records"
ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 30 * 24 * 3600
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")


class TokenError(Exception):
    """The presented token does not prove a client id (reason is safe to show)."""


class InvalidClientId(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token proves: the client id, and the token's id and lifetime
    (for revocation and for ending a connection when its token expires)."""

    client_id: str
    token_id: str  # the ``jti`` claim; "" for a token that carries none
    issued_at: int  # Unix seconds
    expires_at: int  # Unix seconds


def validate_client_id(client_id: str) -> str:
    if not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise InvalidClientId(
            "a client id is 1-128 characters: letters, digits and . _ : @ / + -, starting with a letter or digit"
        )
    return client_id


def load_or_create_secret(data_dir: Path) -> bytes:
    """Read the signing secret, creating it (owner-only) on first use."""
    path = data_dir / SECRET_FILE
    create_secret_file(path, lambda: secrets.token_hex(32))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise TokenError(f"{path} holds no usable secret; delete it to create a new one")
    return secret.encode()


@dataclass(frozen=True, slots=True)
class TokenAuthority:
    secret: bytes
    ttl_seconds: int = DEFAULT_TTL_SECONDS

    @classmethod
    def from_data_dir(cls, data_dir: Path, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> TokenAuthority:
        return cls(load_or_create_secret(data_dir), ttl_seconds)

    def issue(self, client_id: str, ttl_seconds: int | None = None, now: float | None = None) -> str:
        validate_client_id(client_id)
        issued = int(now if now is not None else time.time())
        claims = {
            "sub": client_id,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": issued,
            "exp": issued + (ttl_seconds if ttl_seconds is not None else self.ttl_seconds),
            "jti": secrets.token_hex(8),
        }
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
        if (
            not isinstance(client_id, str)
            or not CLIENT_ID_PATTERN.fullmatch(client_id)
            or not isinstance(jti, str)
            or not isinstance(iat, int)
            or not isinstance(exp, int)
        ):
            raise TokenError("token is not valid")
        return Identity(client_id, jti, iat, exp)
