"""The flags of a real Unleash server: read and changed through its Admin API.

Used by ``canaryws flags`` and ``canaryws guard`` when ``UNLEASH_URL`` and
``UNLEASH_ADMIN_TOKEN`` are set
(:class:`~canaryws.adapters.flags.unleash_backend.UnleashAdminBackend` wraps
:class:`UnleashAdmin`), and by ``canaryws flags export`` to wait for the client API
(:mod:`~canaryws.adapters.flags.unleash_export`). The flags are read as the
client-features document of the environment
(:mod:`~canaryws.adapters.flags.unleash_projection`), whose flagdoc revision the CLI shows.

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
  depends on it; Unleash keeps it in its archive, where it can be revived).

Errors are :class:`~canaryws.adapters.flags.unleash_errors.UnleashError` (unreachable,
token rejected, unexpected answer) and flagdoc's :class:`FlagEditError` (unknown flag,
ambiguous rollout). No message ever contains a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.adapters.flags.unleash_http import (
    DEFAULT_TIMEOUT,
    UnleashHttp,
    check_base_url,
    check_token,
    display_url,
    unleash_session,
)
from canaryws.adapters.flags.unleash_projection import (
    as_flags_document,
    canonical_document,
    client_feature,
    client_segment,
    environment_of,
    expect_object,
    expect_objects,
    plan_rollout,
)
from canaryws.core.flagdoc import FlagEditError, FlagsDocument, dependents_of, refuse_archive_of_a_dependency
from canaryws.settings import DEFAULT_UNLEASH_ENVIRONMENT, DEFAULT_UNLEASH_PROJECT


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


class UnleashAdmin:
    """One project and environment of an Unleash server, through the Admin API."""

    def __init__(
        self,
        base_url: str,
        admin_token: str,
        *,
        environment: str = DEFAULT_UNLEASH_ENVIRONMENT,
        project: str = DEFAULT_UNLEASH_PROJECT,
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
        """Set the rollout of ``flag``'s flexibleRollout in the environment (see
        :func:`~canaryws.adapters.flags.unleash_projection.plan_rollout`)."""
        with self._session() as http:
            before = self._read(http)
            env = environment_of(self._admin_feature(before, flag), self.environment)
            strategies = expect_objects(env.get("strategies"), f"{flag}.strategies")
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

    def _session(self) -> AbstractContextManager[UnleashHttp]:
        return unleash_session(self._base_url, self._token, "admin", self._timeout)

    def _project_path(self) -> str:
        return f"/admin/projects/{quote(self.project, safe='')}"

    def _env_path(self, flag: str) -> str:
        return f"{self._project_path()}/features/{quote(flag, safe='')}/environments/{quote(self.environment, safe='')}"

    def _read(self, http: UnleashHttp) -> ServerFlags:
        overview_path = f"{self._project_path()}/overview"
        try:
            overview = http.call("GET", overview_path)
        except UnleashError as exc:
            if exc.status != 404:
                raise
            raise UnleashError(f"{exc} (is there a project {self.project!r}? check UNLEASH_PROJECT)", 404) from None
        self._check_environment(overview)
        listing = http.call("GET", f"{self._project_path()}/features")
        names = [
            str(f.get("name"))
            for f in expect_objects(expect_object(listing, "features list").get("features"), "features")
        ]
        admin: dict[str, Mapping[str, Any]] = {}
        for name in names:
            answer = http.call(
                "GET", f"{self._project_path()}/features/{quote(name, safe='')}", params={"variantEnvironments": "true"}
            )
            admin[name] = expect_object(answer, f"flag {name}")
        try:
            features = [client_feature(feature, self.environment) for feature in admin.values()]
            segments: list[dict[str, Any]] = []
            if any(strategy.get("segments") for feature in features for strategy in feature["strategies"]):
                answer = expect_object(http.call("GET", "/admin/segments"), "segments")
                segments = [client_segment(s) for s in expect_objects(answer.get("segments"), "segments")]
            data = canonical_document({"version": 2, "features": features, "segments": segments})
        except (AttributeError, KeyError, TypeError) as exc:  # a shape the projection does not know
            raise UnleashError(f"unexpected answer from Unleash at {self.url}: {exc!r}") from None
        document, problems = as_flags_document(data)
        return ServerFlags(document, problems, admin)

    def _check_environment(self, overview: Any) -> None:
        environments = expect_object(overview, "project overview").get("environments")
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
