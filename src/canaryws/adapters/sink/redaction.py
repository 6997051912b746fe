"""Passwords out of sight: a sink URL as it may be shown, and drivers' messages cleaned.

A PostgreSQL URL (``CANARYWS_SINK``) may carry a password in its userinfo or in a
``password`` query parameter. Every log line, error, ``repr`` and CLI output shows the URL
:func:`redacted`; :func:`scrub` cleans a driver's message that might quote it.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, unquote

HIDDEN: Final = "***"
_SECRET_PARAMETER: Final = re.compile(r"(?i)([?&][^=&#]*password=)[^&#]*")
_HIDE_PARAMETER: Final = rf"\1{HIDDEN}"


def _authority_end(rest: str) -> tuple[int, int]:
    """In ``rest`` (a URL after ``scheme://``): where its query or fragment starts, and the
    last ``@`` before it (-1 when none)."""
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return query_at, rest.rfind("@", 0, query_at)


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``: the userinfo's (everything after the
    first ``:`` up to the authority's last ``@``, so that an unencoded ``@`` in a password is
    hidden too) and the value of any ``password``/``sslpassword`` query parameter."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAMETER.sub(_HIDE_PARAMETER, url)
    _, authority_end = _authority_end(rest)
    if authority_end >= 0:
        userinfo = rest[:authority_end]
        user, colon, _ = userinfo.partition(":")
        if colon:
            rest = f"{user}:{HIDDEN}{rest[authority_end:]}"
    return f"{scheme}://{_SECRET_PARAMETER.sub(_HIDE_PARAMETER, rest)}"


def passwords(url: str) -> list[str]:
    """The secrets in ``url`` as a driver might quote them: the userinfo's password (raw and
    percent-decoded) and the values of ``password`` query parameters."""
    _, sep, rest = url.partition("://")
    if not sep:
        return []
    found = []
    query_at, authority_end = _authority_end(rest)
    if authority_end >= 0:
        _, colon, secret = rest[:authority_end].partition(":")
        if colon and secret:
            found += [secret, unquote(secret)]
    query = rest[query_at + 1:] if rest[query_at:query_at + 1] == "?" else ""
    found += [value for name, value in parse_qsl(query.partition("#")[0]) if name.lower().endswith("password")]
    return [secret for secret in dict.fromkeys(found) if secret]


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) with ``url`` shown redacted and its passwords hidden."""
    text = text.replace(url, redacted(url))
    for secret in passwords(url):
        if len(secret) >= 3:  # a shorter one would hide ordinary letters, and guessing it is trivial anyway
            text = text.replace(secret, HIDDEN)
    return text
