"""HTTP to an Unleash server: the API root and tokens checked, one ``httpx`` session, and
Unleash's answers turned into :class:`~canaryws.adapters.flags.unleash_errors.UnleashError`.

Paths are relative to ``UNLEASH_URL``, the API root such as ``http://127.0.0.1:4242/api``;
the token goes in ``Authorization``. Errors: :class:`UnleashUnreachable` (no answer),
:class:`UnleashAuthError` (401, or 403 to a read: the token is rejected),
:class:`UnleashError` (a refused change, another status, an answer that is not JSON). No
message ever contains a token.

``httpx`` is imported only when a request is made, so the rest of the CLI does not
need it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from canaryws.adapters.flags.unleash_errors import UnleashAuthError, UnleashError, UnleashUnreachable

if TYPE_CHECKING:
    import httpx

DEFAULT_TIMEOUT = 5.0
"""Seconds for connecting and for each read; Unleash on loopback answers in milliseconds."""

USER_AGENT = "canaryws-flags-cli"
_MAX_DETAIL = 300


# ------------------------------------------------------------------------- settings


def check_base_url(url: str) -> str:
    """The API root without trailing slashes; UnleashError unless it is an http(s) URL."""
    text = url.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise UnleashError(
            f"UNLEASH_URL must be the http(s) URL of the Unleash API, like http://127.0.0.1:4242/api, "
            f"got {display_url(url)!r}"
        )
    return text


def display_url(url: str) -> str:
    """``url`` for messages: without user:password and without trailing slashes."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return re.sub(r"//[^/@]*@", "//", url.strip().rstrip("/"))
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, parts.fragment))


def check_token(token: str, kind: str) -> str:
    """``token`` if it can be sent in a header (printable ASCII, no spaces); the
    UnleashError for a bad one does not show it."""
    if not token or not all("!" <= char <= "~" for char in token):
        raise UnleashError(f"the {kind} token is not a valid Unleash token: it must be printable ASCII without spaces")
    return token


# -------------------------------------------------------------------------- session


class UnleashHttp:
    """One ``httpx.Client`` session with Unleash's error conventions."""

    def __init__(self, client: httpx.Client, url: str, token: str, token_kind: str, timeout: float) -> None:
        self._client = client
        self._url = url
        self._token = token
        self._token_kind = token_kind
        self._timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        want_json: bool = True,
    ) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            raise UnleashUnreachable(
                f"cannot reach Unleash at {self._url}: no answer within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise UnleashUnreachable(self._scrub(f"cannot reach Unleash at {self._url}: {_reason(exc)}")) from None
        status = response.status_code
        if status == 401 or (status == 403 and method == "GET"):
            raise UnleashAuthError(
                self._scrub(
                    f"Unleash rejected the {self._token_kind} token (HTTP {status}) at {self._url}{_detail(response)}"
                ),
                status,
            )
        if status == 403:  # the token was good enough to read: a refused change
            raise UnleashError(
                self._scrub(f"Unleash at {self._url} refused {method} {path} (HTTP 403){_detail(response)}"),
                status,
            )
        if not 200 <= status < 300:
            raise UnleashError(
                self._scrub(f"Unleash at {self._url} answered HTTP {status} to {method} {path}{_detail(response)}"),
                status,
            )
        if not want_json:
            return None
        content_type = response.headers.get("content-type", "")
        if "json" not in content_type:
            raise UnleashError(
                f"Unleash at {self._url} answered {method} {path} with {content_type or 'no content type'}, "
                "not JSON: UNLEASH_URL must be the API root, like http://127.0.0.1:4242/api"
            )
        try:
            return response.json()
        except ValueError:
            raise UnleashError(f"Unleash at {self._url} answered {method} {path} with invalid JSON") from None

    def _scrub(self, message: str) -> str:
        return message.replace(self._token, "<token>") if self._token else message


@contextmanager
def unleash_session(
    base_url: str, token: str, token_kind: str, timeout: float, headers: Mapping[str, str] | None = None
) -> Iterator[UnleashHttp]:
    """A session on the API root ``base_url`` (checked by :func:`check_base_url`) with ``token``
    (``token_kind``, e.g. "admin" or "client", names it in messages)."""
    import httpx

    url = display_url(base_url)
    try:
        client = httpx.Client(
            base_url=base_url,
            headers={
                "Authorization": token,
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
                **(headers or {}),
            },
            timeout=httpx.Timeout(timeout),
        )
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnleashError(f"UNLEASH_URL {url!r} is not usable: {exc}") from None
    with client:
        yield UnleashHttp(client, url, token, token_kind, timeout)


# ------------------------------------------------------------------------ internals


def _detail(response: httpx.Response) -> str:
    """``: <message>`` from an Unleash error body, if it has one."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, Mapping) else None
    if not isinstance(message, str) or not message.strip():
        return ""
    message = " ".join(message.split())
    return f": {message[:_MAX_DETAIL]}{'...' if len(message) > _MAX_DETAIL else ''}"


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
