"""The flags of a real Unleash server: read and changed through its Admin API.

Used by ``canaryws flags`` when ``UNLEASH_URL`` and ``UNLEASH_ADMIN_TOKEN`` are set
(:class:`canaryws.cli.flags.UnleashAdminBackend` wraps :class:`UnleashAdmin`), and by
``canaryws flags export`` (:func:`fetch_client_document`).

**The document.** The flags are presented as the client-features document the
environment serves to SDKs, rebuilt from the Admin API by :func:`client_document`
(the same projection unleash-server applies for ``/api/client/features``: the
environment's enabled state, its strategies without the disabled ones, in sort
order, parameters as strings, segment ids only when used) and put in the canonical
form of :func:`canonical_document`: ``version``, ``features`` sorted by name,
``segments`` restricted to the ones the features use, sorted by id; no ``query`` or
``meta``. Its flagdoc revision is the revision the CLI shows, and ``export`` writes
the same canonical form of ``GET /api/client/features``, so a fresh export carries
the revision ``show`` prints.

**Endpoints** (unleash-server 8.x; paths relative to ``UNLEASH_URL``, the API root
such as ``http://127.0.0.1:4242/api``; admin token in ``Authorization``):

- ``GET /admin/projects/{project}/overview``: the project exists, its environments;
- ``GET /admin/projects/{project}/features``: the project's (non-archived) flags;
- ``GET /admin/projects/{project}/features/{flag}?variantEnvironments=true``: one
  flag with its per-environment state, strategies and variants;
- ``GET /admin/segments``: only when a strategy uses segments;
- ``POST /admin/projects/{project}/features/{flag}/environments/{env}/on`` / ``off``;
- ``PATCH .../environments/{env}/strategies/{id}``: a JSON Patch of
  ``/parameters/rollout`` (keeps the strategy's constraints, segments, title);
- ``POST .../environments/{env}/strategies``: a new flexibleRollout;
- ``DELETE /admin/projects/{project}/features/{flag}``: archives the flag (in every
  environment; 202, 404 for a flag the project does not have, 403 while another flag
  depends on it; Unleash keeps it in its archive, where it can be revived);
- ``GET /client/features`` with a client (backend) token: ``export``.

Errors are :class:`UnleashError` (unreachable, token rejected, unexpected answer) and
flagdoc's :class:`FlagEditError` (unknown flag, ambiguous rollout). No message ever
contains a token.

``httpx`` is imported only when a request is made, so the rest of the CLI does not
need it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from canaryws.core.flagdoc import (
    FLEXIBLE_ROLLOUT,
    FlagEditError,
    FlagsDocument,
    FlagsDocumentError,
    canonical_data,
    compute_revision,
    dependents_of,
    refuse_archive_of_a_dependency,
    validate_flags_data,
)

if TYPE_CHECKING:
    import httpx

DEFAULT_TIMEOUT = 5.0
"""Seconds for connecting and for each read; Unleash on loopback answers in milliseconds."""

CLIENT_SPEC_VERSION = "6.1.0"
"""``Unleash-Client-Spec`` sent by ``export``: what UnleashClient 6 sends, so segments
come by reference (spec >= 4.2.0), exactly as the service's SDK receives them."""

EXPORT_CONVERGENCE_SECONDS = 5.0
"""How long ``export`` waits for the client API to serve what the Admin API shows
(the server refreshes its client-features revision about once a second)."""

_USER_AGENT = "canaryws-flags-cli"
_MAX_DETAIL = 300


class UnleashError(Exception):
    """Unleash cannot be used: bad settings, an unexpected answer. Never holds a token.

    ``status`` is the HTTP status of the answer that caused it, if any.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UnleashUnreachable(UnleashError):
    """No HTTP answer: connection refused, DNS failure, timeout."""


class UnleashAuthError(UnleashError):
    """Unleash answered 401 or 403 to the token."""


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


# ------------------------------------------------------------- documents (pure logic)


def client_document(
    admin_features: Sequence[Mapping[str, Any]],
    environment: str,
    segments: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The canonical client-features document of ``environment``, from Admin API answers.

    ``admin_features`` are ``GET /admin/projects/{p}/features/{name}`` answers,
    ``segments`` the items of ``GET /admin/segments`` (only the used ones are kept).
    """
    return canonical_document(
        {
            "version": 2,
            "features": [client_feature(feature, environment) for feature in admin_features],
            "segments": [client_segment(segment) for segment in segments],
        }
    )


def client_feature(admin: Mapping[str, Any], environment: str) -> dict[str, Any]:
    """One flag as ``/api/client/features`` serves it for ``environment``.

    Mirrors unleash-server's client projection: disabled strategies are left out,
    strategies are in sort order (then by id), parameters are strings, ``segments``
    appears only when a strategy uses some, ``dependencies`` only when there are some.
    """
    name = admin.get("name")
    env = environment_of(admin, environment)
    strategies = [s for s in _list(env.get("strategies"), f"{name}.strategies") if not s.get("disabled")]
    strategies.sort(key=_strategy_order)
    feature: dict[str, Any] = {
        "name": name,
        "type": admin.get("type"),
        "enabled": bool(env.get("enabled")),
        "project": admin.get("project"),
        "stale": admin.get("stale"),
        "strategies": [client_strategy(strategy) for strategy in strategies],
        "variants": env.get("variants") or [],
        "description": admin.get("description"),
        "impressionData": admin.get("impressionData"),
    }
    dependencies = [
        _client_dependency(dependency) for dependency in _list(admin.get("dependencies"), f"{name}.dependencies")
    ]
    if dependencies:
        feature["dependencies"] = dependencies
    return feature


def client_strategy(admin: Mapping[str, Any]) -> dict[str, Any]:
    """A strategy as the client API serves it (no id, title, sortOrder, disabled)."""
    parameters = admin.get("parameters") or {}
    strategy: dict[str, Any] = {
        "name": admin.get("name"),
        "constraints": admin.get("constraints") or [],
        "parameters": {key: _js_string(value) for key, value in parameters.items()},
        "variants": admin.get("variants") or [],
    }
    segments = sorted(admin.get("segments") or [])
    if segments:
        strategy["segments"] = segments
    return strategy


def client_segment(admin: Mapping[str, Any]) -> dict[str, Any]:
    """A segment as the client API serves it."""
    return {"id": admin.get("id"), "name": admin.get("name"), "constraints": admin.get("constraints") or []}


def canonical_document(data: Mapping[str, Any], *, project: str | None = None) -> dict[str, Any]:
    """flagdoc's :func:`~canaryws.core.flagdoc.canonical_data` (the form the service, ``show``
    and ``export`` compare), with UnleashError for what is not a client-features document."""
    try:
        return canonical_data(data, project=project)
    except FlagsDocumentError as exc:
        raise UnleashError(str(exc)) from None


def environment_of(admin: Mapping[str, Any], environment: str) -> Mapping[str, Any]:
    """The ``environments`` entry of an Admin API flag; UnleashError if it has none."""
    name = admin.get("name")
    environments = _list(admin.get("environments"), f"{name}.environments")
    for env in environments:
        if env.get("name") == environment:
            return env
    known = ", ".join(str(env.get("name")) for env in environments) or "none"
    raise UnleashError(
        f"flag {name!r} has no environment {environment!r} in Unleash (its environments: {known}); "
        "check UNLEASH_ENVIRONMENT"
    )


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What ``rollout`` has to do on the server."""

    action: Literal["unchanged", "patch", "create"]
    strategy_id: str | None = None
    body: Any = None


def plan_rollout(flag: str, environment: str, strategies: Sequence[Mapping[str, Any]], percent: int) -> RolloutPlan:
    """How to set ``flag``'s flexibleRollout in ``environment`` to ``percent``.

    ``strategies`` are the environment's Admin API strategies (disabled ones
    included). The one enabled flexibleRollout is patched; without any, one is
    created (stickiness userId, groupId = flag), like the file backend does.
    Several enabled ones are ambiguous; only disabled ones are not ours to revive.
    """
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise FlagEditError(f"rollout percent must be an integer from 0 to 100, got {percent!r}")
    rollouts = [s for s in strategies if s.get("name") == FLEXIBLE_ROLLOUT]
    active = [s for s in rollouts if not s.get("disabled")]
    if len(active) > 1:
        raise FlagEditError(
            f"{flag}: {len(active)} flexibleRollout strategies in environment {environment}, the rollout to "
            "change is ambiguous; change it in the Unleash UI"
        )
    if active:
        strategy = active[0]
        current = (strategy.get("parameters") or {}).get("rollout")
        if str(current).strip() == str(percent) or (isinstance(current, int) and current == percent):
            return RolloutPlan("unchanged", str(strategy.get("id")))
        return RolloutPlan(
            "patch",
            str(strategy.get("id")),
            [{"op": "add", "path": "/parameters/rollout", "value": str(percent)}],
        )
    if rollouts:
        raise FlagEditError(
            f"{flag}: its flexibleRollout strategy is disabled in environment {environment}; "
            "enable the strategy in the Unleash UI first"
        )
    return RolloutPlan(
        "create",
        None,
        {
            "name": FLEXIBLE_ROLLOUT,
            "constraints": [],
            "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": flag},
        },
    )


def as_flags_document(data: Mapping[str, Any]) -> tuple[FlagsDocument, tuple[str, ...]]:
    """The document, and why it is not a flags document at all (usually nothing).

    Such a document is still returned (revision of the raw data), so that an operator
    can see and fix the server's state, e.g. disable a flag. The problems of single
    flags are in the document (and ``canaryws.adapters.flags.engine.assess``).
    """
    try:
        return validate_flags_data(data), ()
    except FlagsDocumentError as exc:
        return FlagsDocument(data=json.loads(json.dumps(data)), revision=compute_revision(data)), exc.problems


# --------------------------------------------------------------------------- the API


@dataclass(frozen=True, slots=True)
class ServerFlags:
    """The flags of one project and environment at one moment."""

    document: FlagsDocument
    problems: tuple[str, ...]  # why it is not a flags document at all (usually nothing)
    admin_features: Mapping[str, Mapping[str, Any]]  # flag -> Admin API answer


@dataclass(frozen=True, slots=True)
class ServerChange:
    """A mutation: the flags before and after (the same object when nothing changed)."""

    before: ServerFlags
    after: ServerFlags


class _Http:
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
def _session(
    base_url: str, token: str, token_kind: str, timeout: float, headers: Mapping[str, str] | None = None
) -> Iterator[_Http]:
    import httpx

    url = display_url(base_url)
    try:
        client = httpx.Client(
            base_url=base_url,
            headers={
                "Authorization": token,
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
                **(headers or {}),
            },
            timeout=httpx.Timeout(timeout),
        )
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnleashError(f"UNLEASH_URL {url!r} is not usable: {exc}") from None
    with client:
        yield _Http(client, url, token, token_kind, timeout)


class UnleashAdmin:
    """One project and environment of an Unleash server, through the Admin API."""

    def __init__(
        self,
        base_url: str,
        admin_token: str,
        *,
        environment: str = "development",
        project: str = "default",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._base_url = check_base_url(base_url)
        self._token = check_token(admin_token, "admin")
        self.url = display_url(base_url)
        self.environment = environment
        self.project = project
        self._timeout = timeout

    def flags(self) -> ServerFlags:
        """The project's flags in the environment, as the client API would serve them."""
        with self._session() as http:
            return self._read(http)

    def set_enabled(self, flag: str, enabled: bool) -> ServerChange:
        """Turn ``flag`` on or off in the environment (no request when it already is)."""
        with self._session() as http:
            before = self._read(http)
            env = environment_of(self._admin_feature(before, flag), self.environment)
            if bool(env.get("enabled")) == enabled:
                return ServerChange(before, before)
            http.call("POST", f"{self._env_path(flag)}/{'on' if enabled else 'off'}", want_json=False)
            return ServerChange(before, self._read(http))

    def set_rollout(self, flag: str, percent: int) -> ServerChange:
        """Set the rollout of ``flag``'s flexibleRollout in the environment (see :func:`plan_rollout`)."""
        with self._session() as http:
            before = self._read(http)
            env = environment_of(self._admin_feature(before, flag), self.environment)
            strategies = _list(env.get("strategies"), f"{flag}.strategies")
            plan = plan_rollout(flag, self.environment, strategies, percent)
            if plan.action == "unchanged":
                return ServerChange(before, before)
            if plan.action == "patch":
                path = f"{self._env_path(flag)}/strategies/{quote(str(plan.strategy_id), safe='')}"
                http.call("PATCH", path, body=plan.body)
            else:
                http.call("POST", f"{self._env_path(flag)}/strategies", body=plan.body)
            return ServerChange(before, self._read(http))

    def archive(self, flag: str) -> ServerChange:
        """Archive ``flag`` in the project: it leaves every environment and the client API.

        Refused (FlagsDocumentError) while another flag of the project depends on it, as
        Unleash itself would refuse it (HTTP 403).
        """
        with self._session() as http:
            before = self._read(http)
            feature = self._admin_feature(before, flag)
            children = [str(name) for name in feature.get("children") or [] if name != flag]
            dependents = children + [
                name for name in dependents_of(before.admin_features.values(), flag) if name not in children
            ]
            refuse_archive_of_a_dependency(flag, dependents, f" in Unleash project {self.project}")
            try:
                http.call("DELETE", f"{self._project_path()}/features/{quote(flag, safe='')}", want_json=False)
            except UnleashError as exc:
                if exc.status != 404:
                    raise
                raise FlagEditError(f"unknown flag {flag!r} in Unleash project {self.project}") from None
            return ServerChange(before, self._read(http))

    # ----------------------------------------------------------------- internals

    def _session(self) -> AbstractContextManager[_Http]:
        return _session(self._base_url, self._token, "admin", self._timeout)

    def _project_path(self) -> str:
        return f"/admin/projects/{quote(self.project, safe='')}"

    def _env_path(self, flag: str) -> str:
        return f"{self._project_path()}/features/{quote(flag, safe='')}/environments/{quote(self.environment, safe='')}"

    def _read(self, http: _Http) -> ServerFlags:
        overview_path = f"{self._project_path()}/overview"
        try:
            overview = http.call("GET", overview_path)
        except UnleashError as exc:
            if exc.status != 404:
                raise
            raise UnleashError(f"{exc} (is there a project {self.project!r}? check UNLEASH_PROJECT)", 404) from None
        self._check_environment(overview)
        listing = http.call("GET", f"{self._project_path()}/features")
        names = [str(f.get("name")) for f in _list(_mapping(listing, "features list").get("features"), "features")]
        admin: dict[str, Mapping[str, Any]] = {}
        for name in names:
            answer = http.call(
                "GET", f"{self._project_path()}/features/{quote(name, safe='')}", params={"variantEnvironments": "true"}
            )
            admin[name] = _mapping(answer, f"flag {name}")
        try:
            features = [client_feature(feature, self.environment) for feature in admin.values()]
            segments: list[dict[str, Any]] = []
            if any(strategy.get("segments") for feature in features for strategy in feature["strategies"]):
                answer = _mapping(http.call("GET", "/admin/segments"), "segments")
                segments = [client_segment(s) for s in _list(answer.get("segments"), "segments")]
            data = canonical_document({"version": 2, "features": features, "segments": segments})
        except (AttributeError, KeyError, TypeError) as exc:  # a shape the projection does not know
            raise UnleashError(f"unexpected answer from Unleash at {self.url}: {exc!r}") from None
        document, problems = as_flags_document(data)
        return ServerFlags(document, problems, admin)

    def _check_environment(self, overview: Any) -> None:
        environments = _mapping(overview, "project overview").get("environments")
        if not isinstance(environments, list):
            return  # not in this server version's overview: the flags' own environments are checked
        names = [
            str(env.get("environment") or env.get("name")) if isinstance(env, Mapping) else str(env)
            for env in environments
        ]
        if self.environment not in names:
            raise UnleashError(
                f"environment {self.environment!r} is not enabled in Unleash project {self.project!r} at {self.url} "
                f"(its environments: {', '.join(names) or 'none'}); check UNLEASH_ENVIRONMENT"
            )

    def _admin_feature(self, flags: ServerFlags, flag: str) -> Mapping[str, Any]:
        feature = flags.admin_features.get(flag)
        if feature is None:
            known = ", ".join(flags.document.feature_names()) or "none"
            raise FlagEditError(f"unknown flag {flag!r} in Unleash project {self.project} (known flags: {known})")
        return feature


# ------------------------------------------------------------------------ the export


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
    headers = {"Unleash-Client-Spec": CLIENT_SPEC_VERSION, "UNLEASH-APPNAME": _USER_AGENT}
    with _session(base, client_token, "client", timeout, headers) as http:
        while True:
            params = {"project": project} if project is not None else None
            answer = _mapping(http.call("GET", "/client/features", params=params), "client features")
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


# ------------------------------------------------------------------------ internals


def _strategy_order(strategy: Mapping[str, Any]) -> tuple[int, int, str]:
    milestone = 0 if strategy.get("milestoneId") else 1
    sort_order = strategy.get("sortOrder")
    return (milestone, sort_order if isinstance(sort_order, int) else 0, str(strategy.get("id") or ""))


def _client_dependency(admin: Mapping[str, Any]) -> dict[str, Any]:
    dependency: dict[str, Any] = {"feature": admin.get("feature"), "enabled": admin.get("enabled")}
    if admin.get("enabled"):
        dependency["variants"] = admin.get("variants") or []
    return dependency


def _js_string(value: Any) -> str:
    """unleash-server's ``ensureStringValue``: how the client API serves parameters."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UnleashError(f"unexpected answer from Unleash for the {what}: not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise UnleashError(f"unexpected answer from Unleash: {what} is not a list of objects")
    return list(value)


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
