"""What ``canaryws flags export`` writes: the client-features document an environment
serves to SDKs, fetched with a client (backend) token.

``GET /client/features?project={project}`` (relative to ``UNLEASH_URL``, the API root
such as ``http://127.0.0.1:4242/api``), exactly what the service's SDK client gets, put
in the canonical form of
:func:`~canaryws.adapters.flags.unleash_projection.canonical_document` and validated by
flagdoc: a fresh export carries the revision ``canaryws flags show`` prints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canaryws.adapters.flags.unleash_admin import UnleashAdmin
from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.adapters.flags.unleash_http import (
    DEFAULT_TIMEOUT,
    USER_AGENT,
    check_base_url,
    check_token,
    unleash_session,
)
from canaryws.adapters.flags.unleash_projection import as_flags_document, canonical_document, expect_object
from canaryws.core.flagdoc import FlagsDocument, FlagsDocumentError, validate_flags_data

CLIENT_SPEC_VERSION = "6.1.0"
"""``Unleash-Client-Spec`` sent by ``export``: what UnleashClient 6 sends, so segments
come by reference (spec >= 4.2.0), exactly as the service's SDK receives them."""

EXPORT_CONVERGENCE_SECONDS = 5.0
"""How long ``export`` waits for the client API to serve what the Admin API shows
(the server refreshes its client-features revision about once a second)."""


@dataclass(frozen=True, slots=True)
class ClientDocument:
    """``GET /api/client/features`` in canonical form, validated by flagdoc."""

    document: FlagsDocument
    notes: tuple[str, ...] = ()


def fetch_client_document(
    base_url: str,
    client_token: str,
    *,
    environment: str,
    project: str | None,
    admin: UnleashAdmin | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    converge_seconds: float = EXPORT_CONVERGENCE_SECONDS,
) -> ClientDocument:
    """What the environment serves to SDKs with ``client_token`` for ``project``
    (``?project=``, as the service's SDK client asks; canonical form, that project's flags
    only; None: every project the token sees).

    The token must be for ``environment`` (the server says which one it used).
    With ``admin``, waits up to ``converge_seconds`` until the client API serves
    what the Admin API shows for the admin's project (Unleash refreshes the client
    API about once a second after a change), so that an export right after a
    ``rollout`` is not one revision behind. Raises FlagsDocumentError when the answer
    is not a flags document.
    """
    base = check_base_url(base_url)
    check_token(client_token, "client")
    wanted = admin.flags().document.revision if admin is not None else None
    deadline = time.monotonic() + converge_seconds
    headers = {"Unleash-Client-Spec": CLIENT_SPEC_VERSION, "UNLEASH-APPNAME": USER_AGENT}
    with unleash_session(base, client_token, "client", timeout, headers) as http:
        while True:
            params = {"project": project} if project is not None else None
            answer = expect_object(http.call("GET", "/client/features", params=params), "client features")
            served = _served_environment(answer)
            if served is not None and served != environment:
                raise UnleashError(
                    f"UNLEASH_API_TOKEN is a client token for environment {served!r}, "
                    f"but UNLEASH_ENVIRONMENT is {environment!r}"
                )
            data = canonical_document(answer, project=project)
            if admin is None or wanted is None:
                break
            if as_flags_document(canonical_document(data, project=admin.project))[0].revision == wanted:
                break
            if time.monotonic() >= deadline:
                return ClientDocument(
                    _validated(data),
                    (
                        f"the client API still serves other flags than the Admin API shows for project "
                        f"{admin.project} after {converge_seconds:g} s; exported what the client API serves",
                    ),
                )
            time.sleep(0.25)
            wanted = admin.flags().document.revision
    return ClientDocument(_validated(data))


def _validated(data: Mapping[str, Any]) -> FlagsDocument:
    try:
        return validate_flags_data(data)
    except FlagsDocumentError as exc:
        raise FlagsDocumentError(
            [f"Unleash serves something that is not a flags document: {problem}" for problem in exc.problems]
        ) from None


def _served_environment(answer: Mapping[str, Any]) -> str | None:
    query = answer.get("query")
    if isinstance(query, Mapping) and isinstance(query.get("environment"), str):
        return str(query["environment"])
    return None
