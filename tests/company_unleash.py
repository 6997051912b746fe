"""A busy, company-wide Unleash server, as other teams leave it, for canaryws to be tested against.

:func:`populate` turns a fresh :class:`harness.UnleashServer` (open-source unleash-server 8.2.0,
``deploy/unleash/up``) into a server on which several teams keep their flags next to
canaryws's ``records.strict`` and ``records.shadow``, in two projects: ``default`` and the
payments team's ``payments``. Everything but the creation of project ``payments`` goes through
the real Admin API with the admin token (see "The second project" below). It creates:

- project ``payments`` (:data:`OTHER_PROJECT`) with the payments team's flags: a custom
  strategy, SEMVER_GTE/SEMVER_LTE and REGEX constraints, a segment scoped to ``payments``, a
  dependency within the project, strategy variants, a disabled flag, and
  ``records.payment-receipts``, whose ``records.`` prefix (canaryws's) means nothing to Unleash;
  and a backend token scoped to it (:attr:`CompanyWorld.project_tokens`);
- flags of other teams that together use every constraint operator the server offers
  (:data:`OPERATORS`, checked against ``ALL_OPERATORS`` of the installed server by
  :func:`server_operators`), with ``inverted`` and ``caseInsensitive`` variants, on
  ``userId``, ``appName``, ``environment``, ``currentTime``, ``remoteAddress`` and custom
  properties (``email``, ``appVersion``, ``seats``, ``accountAgeDays``, ``tenant``,
  ``tenantTier``: the last a context field with legal values, also used as stickiness);
- a custom strategy type (:data:`CUSTOM_STRATEGY`, with list, percentage, boolean, number
  and string parameters) and a flag using it; the built-in ``remoteAddress`` (with a
  CIDR) and ``applicationHostname`` strategies;
- segments (global ones, one scoped to each project, one that no flag uses) and flags using them;
- flag dependencies: children of ``platform.new-infra`` (on it being enabled, on its
  variant ``blue``, on it being disabled), named ``ui.*`` so that ``?namePrefix=ui.``
  (:data:`MISSING_PARENT_QUERY`) serves children whose parent is not in the document; a
  parent and child archived together, then the child revived;
- strategy variants (variable and fixed weights, json/string payloads) and environment
  variants (csv/number payloads, an override);
- disabled flags, an enabled flag without strategies, a disabled strategy, a stale flag,
  impression data, every flag type, 250 values in one constraint, tags, a flag named
  ``records.*`` like canaryws's;
- a backend token for every project (``*``) in environment ``development``:
  :attr:`CompanyWorld.token`, the kind of token a company-wide deployment hands to canaryws.

The second project. An Enterprise server creates ``payments`` with ``POST /api/admin/projects``;
the open-source server has no such route (404, below), and nothing else in its API makes a
project. So :func:`populate` asks for it first (it is taken on a server that has the route) and,
refused with 404, writes the project into the server's own PostgreSQL database
(:func:`create_project_in_database`: ``psql`` to ``server.db`` at 127.0.0.1:5432 as
``postgres``, or ``UNLEASH_PG_HOST``/``_PORT``/``_USER`` of the server's environment) with
:data:`PROJECT_SQL`, the rows Enterprise's ``ProjectService.createProject`` writes
(``project-store.create``, ``feature-environment-store.connectProject`` for every enabled
environment, a ``project-created`` event), in one transaction::

    BEGIN;
    INSERT INTO projects (id, name, description)
        VALUES ('payments', 'Payments', 'Payments team');
    INSERT INTO project_settings (project, default_stickiness, project_mode)
        VALUES ('payments', 'default', 'open');
    INSERT INTO project_environments (project_id, environment_name)
        SELECT 'payments', name FROM environments WHERE enabled;
    INSERT INTO events (type, created_by, project, data)
        SELECT 'project-created', 'canaryws-tests (SQL)', id,
               json_build_object('id', id, 'name', name, 'description', description,
                                 'mode', 'open', 'defaultStickiness', 'default')
        FROM projects WHERE id = 'payments';
    COMMIT;

Left out: the project owner role (``role_user``; the admin token is no user) and Enterprise's
change-request settings. It works at once, without restarting the server: the server keeps no
project cache (``project-store`` ``hasActiveProject``, which feature creation checks, reads the
table each time); the OSS guard in ``rbac-middleware`` (only project ``default``) applies to
users, not to an admin API token; the client API filters flags by their ``project`` column. After
that the normal Admin API creates flags, strategies, segments, dependencies and tokens in
``payments``; ``GET /api/admin/projects/payments/overview`` and ``.../features`` answer 200. What
still shows it is an OSS server: ``GET /api/admin/projects`` lists ``default`` only (the OSS
``project-store.getAll`` filters on ``id = 'default'``, and so does the UI's project list), and
``GET /api/admin/projects/payments`` (an Enterprise route) is 404.

What the open-source server 8.2.0 allows and refuses (each refusal is asked for again by
:func:`populate` and recorded in :attr:`CompanyWorld.refusals`):

- projects: no ``POST /api/admin/projects`` route (404 "The path you were looking for
  (/api/admin/projects) is not available."), so ``payments`` is made in the database (above);
  no ``.../changeProject`` route to move a flag (404); ``features-batch/import`` refuses admin
  tokens (400, it wants a personal access token). Across projects: a dependency on a flag of
  another project is refused (404 "Cannot add the dependency. Both the parent and the child
  feature must belong to project ..."), and so is a strategy using a segment scoped to another
  project (400 "The segments X with id N does not belong to project ...").
- custom strategy types (``POST /api/admin/strategies``), context fields with legal values,
  segments (``POST /api/admin/segments``, global or with ``project``): allowed.
- dependencies: allowed within one project, one level only ("Transitive dependency
  detected...", 403), on an active parent only ("No active feature X exists", 403, for an
  archived or a non-existent one). A child has one parent: a second ``POST .../dependencies``
  silently replaces the first (``ui.search-infra-promo``). Archiving a parent that has a
  child is refused, one by one (``DELETE``) or in a batch: 403 "You can not archive/delete
  this feature since other features depend on it." Archiving parent and child in one batch
  is allowed and deletes the dependency; a revived child comes back disabled and without
  it. So the client API never serves a dependency on an archived parent; a parent is only
  missing from a document that a ``namePrefix`` (or ``tag``) query cut.
- variants: strategy variants are allowed; ``PUT .../environments/{env}/variants`` on a flag
  without environment variants is refused (403 "Environment variants deprecated for
  feature: X. Use strategy variants instead.", unless the server runs with
  ``UNLEASH_EXPERIMENTAL_ENABLE_LEGACY_VARIANTS``), but the create call still takes
  ``variants`` and puts them on every environment; after that ``PUT`` is allowed.
- constraints: REGEX cannot be ``inverted`` (400 "REGEX operator cannot be inverted.").
- tokens: a ``backend`` token with ``projects: ["*"]`` (secret ``*:development.…``) is allowed,
  and one with ``projects: ["payments"]``.

How the client API (``GET /api/client/features``, :func:`client_features`) serves it: with
``Unleash-Client-Spec`` >= 4.2.0 (UnleashClient 6 sends 6.1.0, the default here) strategies
name their segments by id (``"segments": [1, 2]``) and a top-level ``segments`` list holds the
segments in use (not the unused one, and all of them whatever ``?project=``); without the
header there is no ``segments`` list and the segments' constraints are appended to the
strategy's ``constraints``. Projects: every feature has its ``"project"``; ``?project=payments``
serves only that project's flags to the wildcard token; a token scoped to ``default`` (the one
``up`` prints) gets ``default``'s flags only, with ``?project=payments`` too (a project outside its
scope is not added). Dependencies: ``{"feature": p, "enabled": true, "variants": [...]}``,
or ``{"feature": p, "enabled": false}``. Disabled strategies are left out; enabling a flag
without strategies gives it ``flexibleRollout`` 100 %. Single-value operators come with
``"value"`` and ``"values": []``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import UNLEASH_DEPLOY, UnleashServer

ENVIRONMENT = "development"
DEFAULT_PROJECT = "default"
OTHER_PROJECT = "payments"
OTHER_PROJECT_BODY: dict[str, str] = {"id": OTHER_PROJECT, "name": "Payments", "description": "Payments team"}
"""What ``POST /api/admin/projects`` is asked to create (and :data:`PROJECT_SQL` writes)."""
CLIENT_SPEC = "6.1.0"
"""``Unleash-Client-Spec`` that UnleashClient 6 sends; >= 4.2.0 makes the server serve segments by id."""

CUSTOM_STRATEGY = "company-region"
CANARYWS_FLAGS = ("records.strict", "records.shadow")

OPERATORS: tuple[str, ...] = (
    "NOT_IN", "IN", "STR_ENDS_WITH", "STR_STARTS_WITH", "STR_CONTAINS",
    "NUM_EQ", "NUM_GT", "NUM_GTE", "NUM_LT", "NUM_LTE",
    "DATE_AFTER", "DATE_BEFORE",
    "SEMVER_EQ", "SEMVER_GT", "SEMVER_LT", "SEMVER_GTE", "SEMVER_LTE",
    "REGEX",
)
"""``ALL_OPERATORS`` of unleash-server 8.2.0 (``dist/lib/util/constants.js``); no ``IN_CIDR``:
CIDRs exist only as the ``IPs`` parameter of the ``remoteAddress`` strategy."""

REFUSAL_KEYS = (
    "create project", "move flag to project", "cross-project dependency", "segment of another project",
    "archive parent with child", "archive parent with child (batch)",
    "inverted REGEX",
    "dependency on archived parent", "dependency on missing parent", "transitive dependency",
    "environment variants",
)

UNLEASH_SERVER_PACKAGE = UNLEASH_DEPLOY / "node_modules" / "unleash-server"

PROJECT_SQL = """\
BEGIN;
INSERT INTO projects (id, name, description)
    VALUES ('payments', 'Payments', 'Payments team');
INSERT INTO project_settings (project, default_stickiness, project_mode)
    VALUES ('payments', 'default', 'open');
INSERT INTO project_environments (project_id, environment_name)
    SELECT 'payments', name FROM environments WHERE enabled;
INSERT INTO events (type, created_by, project, data)
    SELECT 'project-created', 'canaryws-tests (SQL)', id,
           json_build_object('id', id, 'name', name, 'description', description,
                             'mode', 'open', 'defaultStickiness', 'default')
    FROM projects WHERE id = 'payments';
COMMIT;
"""
"""Creates project ``payments`` (:data:`OTHER_PROJECT_BODY`) as Enterprise's ``POST
/api/admin/projects`` does; quoted in the module docstring, which says why."""


def create_project_in_database(server: UnleashServer, sql: str = PROJECT_SQL) -> None:
    """Run ``sql`` with ``psql`` on the server's PostgreSQL database (``server.db``; host, port
    and user as ``deploy/unleash/up`` takes them: ``UNLEASH_PG_*`` of the server's environment,
    else 127.0.0.1, 5432, postgres); stops at the first error, so the transaction is rolled back."""
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
               "-h", server.env.get("UNLEASH_PG_HOST", "127.0.0.1"), "-p", server.env.get("UNLEASH_PG_PORT", "5432"),
               "-U", server.env.get("UNLEASH_PG_USER", "postgres"), "-d", server.db]
    try:
        done = subprocess.run(command, input=sql, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    except FileNotFoundError as error:
        raise RuntimeError("psql is needed to create a project on an open-source Unleash server") from error
    if done.returncode != 0:
        raise RuntimeError(f"psql on database {server.db} failed ({done.returncode}): {done.stderr.strip()}")


def server_operators(package: Path = UNLEASH_SERVER_PACKAGE) -> list[str]:
    """``ALL_OPERATORS`` as the installed unleash-server defines it (its ``dist`` source)."""
    text = (package / "dist" / "lib" / "util" / "constants.js").read_text()
    match = re.search(r"ALL_OPERATORS = \[(.*?)\]", text, re.S)
    if match is None:
        raise RuntimeError(f"no ALL_OPERATORS in {package}/dist/lib/util/constants.js")
    return re.findall(r"\b([A-Z_]+)\b", match.group(1))


def server_version(package: Path = UNLEASH_SERVER_PACKAGE) -> str:
    version: str = json.loads((package / "package.json").read_text())["version"]
    return version


def load_engine(document: dict[str, Any]) -> tuple[Any, str | None]:
    """A yggdrasil ``UnleashEngine`` (what UnleashClient 6 evaluates with) holding ``document``,
    and the engine's compile warnings (None if there are none). ``UnleashEngine.take_state``
    drops them, so this calls the library's ``take_state`` itself: its JSON answer has
    ``status_code`` ``Error`` and the per-toggle warnings in ``error_message`` then."""
    from yggdrasil_engine.engine import UnleashEngine

    engine = UnleashEngine()
    text = json.dumps(document)
    pointer = engine.lib.take_state(engine.state, text.encode())
    try:
        answer = json.loads(ctypes.cast(pointer, ctypes.c_char_p).value or b"{}")
    finally:
        engine.lib.free_response(pointer)
    engine.custom_strategy_handler.update_strategies(text)  # as UnleashEngine.take_state does
    warnings = None if answer.get("status_code") == "Ok" else str(answer.get("error_message"))
    return engine, warnings


# -- what populate returns -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """What the server answered to something a team tried."""

    method: str
    path: str
    status: int
    message: str


@dataclass
class FlagNote:
    """Which features of Unleash one created flag exercises."""

    project: str
    wanted_project: str
    team: str
    type: str
    enabled: bool
    operators: list[str] = field(default_factory=list)
    inverted: bool = False
    case_insensitive: bool = False
    context_fields: list[str] = field(default_factory=list)
    strategies: list[str] = field(default_factory=list)
    custom_strategy: bool = False
    segments: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    missing_parent_with: dict[str, str] = field(default_factory=dict)  # client API query that omits the parent
    strategy_variants: bool = False
    environment_variants: bool = False
    stale: bool = False
    impression_data: bool = False
    tags: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # free-text remarks

    @property
    def features(self) -> list[str]:
        """Short labels of what the flag exercises."""
        out = [f"operators {','.join(self.operators)}"] if self.operators else []
        out += ["inverted"] * self.inverted + ["caseInsensitive"] * self.case_insensitive
        out += [f"custom strategy {s}" for s in self.strategies if self.custom_strategy and s == CUSTOM_STRATEGY]
        out += [f"segment {s}" for s in self.segments]
        out += [f"parent {p}" for p in self.parents]
        out += ["missing parent"] * bool(self.missing_parent_with)
        out += ["strategy variants"] * self.strategy_variants + ["environment variants"] * self.environment_variants
        out += ["stale"] * self.stale + ["impressionData"] * self.impression_data + ["disabled"] * (not self.enabled)
        return out + self.extra


@dataclass
class CompanyWorld:
    """The populated server, for assertions."""

    token: str  # backend token, projects ["*"], environment development
    project_tokens: dict[str, str]  # project -> backend token scoped to it, environment development
    projects: dict[str, list[str]]  # project -> served flags created by populate (canaryws's not included)
    notes: dict[str, FlagNote]  # every flag populate created that is served, by name
    operators: list[str]  # every operator used, in the order of OPERATORS
    custom_strategy: str
    segments: dict[str, int]  # name -> id, including the unused one
    used_segments: dict[str, int]
    archived: list[str]  # flags populate archived (not served)
    refusals: dict[str, Refusal]
    missing_parent_query: dict[str, str]  # client API query serving children without their parent
    served_names: list[str]  # every flag the wildcard token is served after populate (canaryws's too)
    server_version: str  # unleash-server package version
    other_project_via_sql: bool  # True: the API refused it, so PROJECT_SQL made it in the database

    @property
    def flags(self) -> list[str]:
        return [name for names in self.projects.values() for name in names]

    @property
    def other_project_created(self) -> bool:
        return OTHER_PROJECT in self.projects


# -- Admin API ------------------------------------------------------------------------


class AdminError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.request.method} {response.request.url} -> HTTP {response.status_code}: "
                         f"{response.text[:800]}")
        self.response = response


class _Admin:
    def __init__(self, server: UnleashServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=f"{server.url}/admin", timeout=15,
                                 headers={"Authorization": server.values["UNLEASH_ADMIN_TOKEN"]})

    def close(self) -> None:
        self.http.close()

    def attempt(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.attempt(method, path, body)
        if not response.is_success:
            raise AdminError(response)
        return response.json() if response.content else None

    def refused(self, method: str, path: str, body: Any = None) -> Refusal | None:
        """None if the server took it; else what it said."""
        response = self.attempt(method, path, body)
        if response.is_success:
            return None
        try:
            message = str(response.json().get("message", response.text))
        except ValueError:
            message = response.text
        return Refusal(method.upper(), f"/api/admin{path}", response.status_code, message)


def _feature(project: str, flag: str) -> str:
    return f"/projects/{project}/features/{flag}"


def _env(project: str, flag: str) -> str:
    return f"{_feature(project, flag)}/environments/{ENVIRONMENT}"


def client_features(server: UnleashServer, token: str, project: str | list[str] | None = None, *,
                    spec: str | None = CLIENT_SPEC, **query: str) -> dict[str, Any]:
    """``GET /api/client/features`` with ``token``; ``?project=`` if given (several: repeated),
    other query parameters (``namePrefix``, ``tag``) as keywords. ``spec``: the
    ``Unleash-Client-Spec`` header (None: not sent, so segments come inlined)."""
    projects = [project] if isinstance(project, str) else project or []
    params: list[tuple[str, str | int | float | bool | None]] = [("project", p) for p in projects]
    params += list(query.items())
    headers = {"Authorization": token, "UNLEASH-APPNAME": "canaryws-tests"}
    if spec is not None:
        headers["Unleash-Client-Spec"] = spec
    response = httpx.get(f"{server.url}/client/features", params=params, headers=headers, timeout=15)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def set_strategies(server: UnleashServer, flag: str, project: str, strategies: list[dict[str, Any]]) -> list[
        dict[str, Any]]:
    """Replace the strategies of ``flag`` in ``development`` by ``strategies`` (Admin API bodies);
    the created strategies as the server returns them."""
    admin = _Admin(server)
    try:
        return _replace_strategies(admin, project, flag, strategies)
    finally:
        admin.close()


def _replace_strategies(admin: _Admin, project: str, flag: str, strategies: list[dict[str, Any]]) -> list[
        dict[str, Any]]:
    for old in admin.call("GET", f"{_env(project, flag)}/strategies"):
        admin.call("DELETE", f"{_env(project, flag)}/strategies/{old['id']}")
    return [admin.call("POST", f"{_env(project, flag)}/strategies", _strategy_body(s)) for s in strategies]


def _strategy_body(strategy: dict[str, Any]) -> dict[str, Any]:
    return {"constraints": [], "parameters": {}, "variants": [], "segments": [], **strategy}


# -- the world ------------------------------------------------------------------------


def _c(context: str, operator: str, *values: str, inverted: bool = False, case_insensitive: bool = False,
       single: bool = False) -> dict[str, Any]:
    """A constraint; ``single``: ``value`` (NUM_*, DATE_*, SEMVER_*, REGEX) instead of ``values``."""
    constraint: dict[str, Any] = {"contextName": context, "operator": operator, "inverted": inverted,
                                  "caseInsensitive": case_insensitive}
    if single:
        (constraint["value"],) = values
    else:
        constraint["values"] = list(values)
    return constraint


def _rollout(percent: int, stickiness: str = "default", group: str | None = None, **extra: Any) -> dict[str, Any]:
    params = {"rollout": str(percent), "stickiness": stickiness}
    if group is not None:
        params["groupId"] = group
    return {"name": "flexibleRollout", "parameters": params, **extra}


@dataclass
class _Flag:
    name: str
    team: str
    type: str = "release"
    project: str = DEFAULT_PROJECT  # where it is created
    enabled: bool = True
    strategies: list[dict[str, Any]] = field(default_factory=list)
    segment_names: list[list[str]] = field(default_factory=list)  # per strategy
    environment_variants: list[dict[str, Any]] = field(default_factory=list)
    parents: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    stale: bool = False
    impression_data: bool = False
    extra: list[str] = field(default_factory=list)
    wanted_project: str = ""  # the same as project (kept for FlagNote.wanted_project)

    def __post_init__(self) -> None:
        self.wanted_project = self.project


SEGMENTS: list[dict[str, Any]] = [
    {"name": "beta-testers", "description": "Users in the company beta programme (growth team)",
     "constraints": [
         _c("userId", "IN", "beta-001", "beta-002", "beta-003", "qa-lead"),
         _c("email", "STR_ENDS_WITH", "@beta.example.com", case_insensitive=True)]},
    {"name": "internal-network", "description": "Office and VPN address ranges (platform team)",
     "project": DEFAULT_PROJECT,
     "constraints": [_c("remoteAddress", "STR_STARTS_WITH", "10.", "192.168.")]},
    {"name": "mobile-modern", "description": "Mobile apps new enough for the redesign (mobile team)",
     "constraints": [_c("appVersion", "SEMVER_GTE", "3.0.0", single=True)]},
    {"name": "payments-paying-tenants", "description": "Tenants on a paid plan (payments team)",
     "project": OTHER_PROJECT,
     "constraints": [_c("tenantTier", "IN", "pro", "enterprise")]},
    {"name": "unused-old-cohort", "description": "Left over from a finished experiment; no flag uses it",
     "constraints": [_c("userId", "NOT_IN", "old-1", "old-2", inverted=True)]},
]
UNUSED_SEGMENT = "unused-old-cohort"

CUSTOM_STRATEGY_DEFINITION: dict[str, Any] = {
    "name": CUSTOM_STRATEGY,
    "title": "Company region",
    "description": "Rolls out per data-centre region (payments team's own SDK implements it)",
    "parameters": [
        {"name": "regions", "type": "list", "description": "Regions, e.g. eu-west-1", "required": True},
        {"name": "rolloutPercent", "type": "percentage", "description": "Share within the regions",
         "required": False},
        {"name": "strictMode", "type": "boolean", "description": "Fail closed on unknown region",
         "required": False},
        {"name": "maxUsers", "type": "number", "description": "Cap on users", "required": False},
        {"name": "note", "type": "string", "description": "Free text", "required": False},
    ],
}

CONTEXT_FIELDS: list[dict[str, Any]] = [
    {"name": "tenantTier", "description": "Customer plan (billing team)", "stickiness": True,
     "legalValues": [{"value": "free"}, {"value": "pro", "description": "Paid"}, {"value": "enterprise"}]},
]

STRATEGY_VARIANTS: list[dict[str, Any]] = [
    {"name": "blue", "weight": 500, "weightType": "variable", "stickiness": "default",
     "payload": {"type": "json", "value": '{"color": "#0000ff", "rounded": true}'}},
    {"name": "green", "weight": 300, "weightType": "fix", "stickiness": "default",
     "payload": {"type": "string", "value": "green"}},
    {"name": "control", "weight": 500, "weightType": "variable", "stickiness": "default"},
]


def _flags() -> list[_Flag]:
    vip_users = [f"vip-{i:04d}" for i in range(250)]  # the server's constraintValues limit
    return [
        # -- payments team, in project payments -----------------------------------------------------
        _Flag("checkout.one-click", "payments", "release", OTHER_PROJECT, strategies=[
            _rollout(25, "userId", "checkout.one-click", title="EU cards first", constraints=[
                _c("userId", "IN", "alice@example.com", "BOB@EXAMPLE.COM", case_insensitive=True),
                _c("appName", "NOT_IN", "legacy-monolith", "checkout-batch"),
                _c("environment", "IN", "production", "development")])],
            tags=["team-payments"]),
        _Flag("billing.seat-pricing", "payments", "experiment", OTHER_PROJECT, strategies=[
            _rollout(100, "tenantTier", "billing.seat-pricing", constraints=[
                _c("seats", "NUM_GTE", "5", single=True),
                _c("seats", "NUM_LT", "500", single=True),
                _c("accountAgeDays", "NUM_GT", "30", single=True),
                _c("tenantTier", "IN", "pro", "enterprise")]),
            {"name": "default", "sortOrder": 1, "constraints": [
                _c("seats", "NUM_EQ", "1", single=True, inverted=True),
                _c("accountAgeDays", "NUM_LTE", "7", single=True)]}],
            extra=["custom stickiness tenantTier (context field with legal values)"]),
        _Flag(f"payments.{CUSTOM_STRATEGY}-wallet", "payments", "release", OTHER_PROJECT, strategies=[
            {"name": CUSTOM_STRATEGY, "parameters": {"regions": "eu-west-1,eu-central-1", "rolloutPercent": "40",
                                                     "strictMode": "true", "maxUsers": "10000",
                                                     "note": "wallet launch"},
             "constraints": [_c("tenantTier", "IN", "enterprise")]}]),
        _Flag("checkout.paypal-express", "payments", "kill-switch", OTHER_PROJECT, enabled=False, strategies=[
            _rollout(100, constraints=[_c("appName", "STR_CONTAINS", "checkout", case_insensitive=True)])],
            parents=[{"feature": "checkout.one-click"}],
            extra=["disabled in development, with strategies", "dependency within project payments"]),
        _Flag("records.payment-receipts", "payments", "release", OTHER_PROJECT, strategies=[
            _rollout(100, "userId", "records.payment-receipts", title="apps 2.5-3.2 of EU/UK tenants", constraints=[
                _c("appVersion", "SEMVER_GTE", "2.5.0", single=True),
                _c("appVersion", "SEMVER_LTE", "3.2.0", single=True),
                _c("tenant", "REGEX", r"^acme-(eu|uk)$", single=True, case_insensitive=True)],
                variants=[
                    {"name": "pdf", "weight": 700, "weightType": "variable", "stickiness": "userId",
                     "payload": {"type": "string", "value": "application/pdf"}},
                    {"name": "html", "weight": 300, "weightType": "variable", "stickiness": "userId"}])],
            segment_names=[["payments-paying-tenants"]], tags=["team-payments"],
            extra=["name shares canaryws's records. prefix, in another project"]),
        # -- search team ----------------------------------------------------------------------------
        _Flag("search.ranking-v2", "search", "experiment", strategies=[
            _rollout(50, "sessionId", "ranking", constraints=[
                _c("userId", "STR_STARTS_WITH", "beta-", "Staff-", case_insensitive=True),
                _c("email", "STR_ENDS_WITH", "@example.com"),
                _c("appName", "STR_CONTAINS", "search", inverted=True)])],
            environment_variants=[
                {"name": "bm25", "weight": 500, "weightType": "variable", "stickiness": "default",
                 "payload": {"type": "csv", "value": "title,body,tags"},
                 "overrides": [{"contextName": "userId", "values": ["beta-001"]}]},
                {"name": "neural", "weight": 500, "weightType": "variable", "stickiness": "default",
                 "payload": {"type": "number", "value": "0.75"}}],
            impression_data=True, tags=["team-search"]),
        _Flag("search.autocomplete", "search", "release", strategies=[
            _rollout(100, "userId", constraints=[_c("appName", "IN", "web", "ios", "android")])],
            segment_names=[["beta-testers", "internal-network"]]),
        # -- mobile team ----------------------------------------------------------------------------
        _Flag("mobile.new-onboarding", "mobile", "release", strategies=[
            {"name": "default", "title": "new app versions", "constraints": [
                _c("appVersion", "SEMVER_GTE", "2.3.0", single=True),
                _c("appVersion", "SEMVER_LT", "3.0.0-beta.1", single=True)]},
            {"name": "default", "title": "except the broken ones", "constraints": [
                _c("appVersion", "SEMVER_EQ", "1.9.9", single=True, inverted=True),
                _c("appVersion", "SEMVER_GT", "1.0.0", single=True),
                _c("appVersion", "SEMVER_LTE", "4.0.0", single=True, inverted=True)]}]),
        _Flag("mobile.dark-mode", "mobile", "release", strategies=[
            {"name": "default"}, _rollout(10, "userId", "mobile.dark-mode")],
            segment_names=[["mobile-modern"], ["beta-testers"]]),
        # -- marketing team -------------------------------------------------------------------------
        _Flag("marketing.black-friday", "marketing", "operational", strategies=[
            {"name": "default", "constraints": [
                _c("currentTime", "DATE_AFTER", "2026-11-27T00:00:00.000Z", single=True),
                _c("currentTime", "DATE_BEFORE", "2026-12-01T00:00:00.000Z", single=True)]},
            {"name": "default", "disabled": True, "title": "dry run (disabled strategy)", "constraints": [
                _c("currentTime", "DATE_BEFORE", "2020-01-01T00:00:00.000Z", single=True, inverted=True)]}],
            stale=True, extra=["a disabled strategy (the client API leaves it out)"]),
        # -- platform team --------------------------------------------------------------------------
        _Flag("platform.internal-ips", "platform", "permission", strategies=[
            {"name": "remoteAddress", "parameters": {"IPs": "10.0.0.0/8, 192.168.1.1, ::1"}},
            _rollout(100, "random", constraints=[
                _c("remoteAddress", "REGEX", r"^172\.(1[6-9]|2\d|3[01])\.", single=True),
                _c("tenant", "REGEX", r"^acme-(eu|us)$", single=True, case_insensitive=True),
                _c("remoteAddress", "NOT_IN", "172.16.0.66")])],
            extra=["remoteAddress strategy with a CIDR", "stickiness random"]),
        _Flag("platform.hostname-pinned", "platform", "operational", strategies=[
            {"name": "applicationHostname", "parameters": {"hostNames": "worker-1,worker-2"}}],
            extra=["applicationHostname strategy"]),
        _Flag("platform.new-infra", "platform", "release", strategies=[
            _rollout(100, "default", "platform.new-infra", variants=STRATEGY_VARIANTS)]),
        _Flag("platform.always-on", "platform", "operational", extra=["enabled without strategies"]),
        # -- ui team: children of platform.new-infra ----------------------------------------------
        _Flag("ui.new-infra-banner", "ui", parents=[{"feature": "platform.new-infra"}],
              strategies=[{"name": "default"}]),
        _Flag("ui.new-infra-blue-theme", "ui", parents=[
            {"feature": "platform.new-infra", "enabled": True, "variants": ["blue"]}],
            strategies=[{"name": "default"}]),
        _Flag("ui.search-infra-promo", "ui", parents=[
            {"feature": "platform.new-infra"}, {"feature": "search.autocomplete", "enabled": True}],
            strategies=[_rollout(50, "userId")],
            extra=["two dependencies added: the second replaced the first (one parent per child)"]),
        _Flag("ui.legacy-infra-notice", "ui", parents=[{"feature": "platform.new-infra", "enabled": False}],
              strategies=[{"name": "default"}]),
        # -- support and data teams -----------------------------------------------------------------
        _Flag("support.vip-queue", "support", "permission", strategies=[
            {"name": "default", "constraints": [_c("userId", "IN", *vip_users)]}],
            extra=["250 constraint values"]),
        _Flag("records.archive-export", "data", "release", enabled=False, strategies=[_rollout(5, "userId")],
              extra=["name shares canaryws's records. prefix"]),
        # -- legacy: a parent and child archived together; the child is revived -----------------
        _Flag("legacy.checkout-v1", "payments", "release", parents=[], strategies=[{"name": "default"}]),
        _Flag("legacy.checkout-v1-banner", "ui", "release", parents=[{"feature": "legacy.checkout-v1"}],
              strategies=[{"name": "default"}]),
    ]


LEGACY_PARENT, LEGACY_CHILD = "legacy.checkout-v1", "legacy.checkout-v1-banner"
MISSING_PARENT_QUERY = {"namePrefix": "ui."}
"""A client API query serving the ``ui.*`` children without their parents."""

_worlds: weakref.WeakKeyDictionary[UnleashServer, CompanyWorld] = weakref.WeakKeyDictionary()


def populate(server: UnleashServer, timeout: float = 30.0) -> CompanyWorld:
    """Make ``server`` a busy company-wide server (see the module docstring); waits until the
    client API serves it all. Needs a fresh server (only canaryws's seeded flags on it); a
    second call for the same server object returns the first world."""
    if server in _worlds:
        return _worlds[server]
    admin = _Admin(server)
    try:
        world = _populate(server, admin, timeout)
    finally:
        admin.close()
    _worlds[server] = world
    return world


def _populate(server: UnleashServer, admin: _Admin, timeout: float) -> CompanyWorld:
    missing = set(OPERATORS) ^ set(server_operators())
    if missing:
        raise RuntimeError(f"the installed unleash-server's operators differ from OPERATORS: {sorted(missing)}")
    flags = _flags()
    existing = {f["name"] for f in admin.call("GET", f"/projects/{DEFAULT_PROJECT}/features")["features"]}
    if existing & {f.name for f in flags} or admin.call("GET", "/segments")["segments"] \
            or admin.attempt("GET", f"/projects/{OTHER_PROJECT}/overview").status_code != 404:
        raise RuntimeError("populate needs a fresh Unleash server (its flags, segments or projects exist already)")
    refusals: dict[str, Refusal] = {}

    # -- projects: through the API if the server has the route (Enterprise), else in its database --
    refusal = admin.refused("POST", "/projects", OTHER_PROJECT_BODY)
    if refusal is not None:
        if refusal.status != 404:
            raise RuntimeError(f"the server refused to create project {OTHER_PROJECT}: {refusal}")
        refusals["create project"] = refusal
        create_project_in_database(server)
    admin.call("GET", f"/projects/{OTHER_PROJECT}/overview")  # the server sees it (it caches no projects)

    # -- server-wide definitions ----------------------------------------------------------
    admin.call("POST", "/strategies", CUSTOM_STRATEGY_DEFINITION)
    for context_field in CONTEXT_FIELDS:
        admin.call("POST", "/context", context_field)
    segments: dict[str, int] = {}
    for segment in SEGMENTS:
        segments[segment["name"]] = int(admin.call("POST", "/segments", segment)["id"])
    token = admin.call("POST", "/api-tokens", {"tokenName": "company-wide-backend", "type": "backend",
                                               "projects": ["*"], "environment": ENVIRONMENT})["secret"]
    project_tokens = {
        DEFAULT_PROJECT: server.values["UNLEASH_API_TOKEN"],  # the token `up` prints: default:development
        OTHER_PROJECT: admin.call("POST", "/api-tokens", {
            "tokenName": f"{OTHER_PROJECT}-backend", "type": "backend", "projects": [OTHER_PROJECT],
            "environment": ENVIRONMENT})["secret"]}

    # -- flags ----------------------------------------------------------------------------
    for flag in flags:
        # Environment variants: PUT .../variants is refused on a flag without any (deprecated,
        # 403 unless the server runs with UNLEASH_EXPERIMENTAL_ENABLE_LEGACY_VARIANTS), but the
        # create call still takes "variants" and puts them on every environment of the flag, as
        # flags from before the deprecation have them.
        admin.call("POST", f"/projects/{flag.project}/features", {
            "name": flag.name, "type": flag.type, "impressionData": flag.impression_data,
            "description": f"{flag.team} team's flag",
            **({"variants": flag.environment_variants} if flag.environment_variants else {})})
        for i, strategy in enumerate(flag.strategies):
            names = flag.segment_names[i] if i < len(flag.segment_names) else []
            admin.call("POST", f"{_env(flag.project, flag.name)}/strategies",
                       _strategy_body({**strategy, "segments": [segments[n] for n in names]}))
        if flag.environment_variants:  # now that it has some, PUT is allowed: set them once more
            admin.call("PUT", f"{_env(flag.project, flag.name)}/variants", flag.environment_variants)
        for tag in flag.tags:
            admin.call("POST", f"/features/{flag.name}/tags", {"type": "simple", "value": tag})
    for flag in flags:  # parents exist now
        for parent in flag.parents:
            admin.call("POST", f"{_feature(flag.project, flag.name)}/dependencies", parent)
        admin.call("POST", f"{_env(flag.project, flag.name)}/{'on' if flag.enabled else 'off'}")
    stale = [f.name for f in flags if f.stale]
    for project in {f.project for f in flags if f.stale}:
        admin.call("POST", f"/projects/{project}/stale",
                   {"features": [f.name for f in flags if f.stale and f.project == project], "stale": True})

    # -- what the server refuses ------------------------------------------------------------
    by_name = {f.name: f for f in flags}
    moved = admin.refused("POST", f"{_feature(DEFAULT_PROJECT, 'search.autocomplete')}/changeProject",
                          {"newProjectId": OTHER_PROJECT})
    if moved is None:  # a server that can move flags: put it back
        admin.call("POST", f"{_feature(OTHER_PROJECT, 'search.autocomplete')}/changeProject",
                   {"newProjectId": DEFAULT_PROJECT})
    else:
        refusals["move flag to project"] = moved
    variants_path = f"{_env(DEFAULT_PROJECT, 'search.autocomplete')}/variants"
    env_variants = admin.refused("PUT", variants_path, [{"name": "x", "weight": 1000, "weightType": "variable",
                                                         "stickiness": "default"}])
    if env_variants is None:
        admin.call("PUT", variants_path, [])
    else:
        refusals["environment variants"] = env_variants
    legacy = by_name[LEGACY_PARENT].project
    archive_parent = admin.refused("DELETE", _feature(legacy, LEGACY_PARENT))
    if archive_parent is None:
        raise AssertionError(f"the server archived {LEGACY_PARENT} although {LEGACY_CHILD} depends on it")
    refusals["archive parent with child"] = archive_parent
    batch = admin.refused("POST", f"/projects/{legacy}/archive", {"features": [LEGACY_PARENT]})
    if batch is None:
        raise AssertionError(f"the server archived {LEGACY_PARENT} (batch) although {LEGACY_CHILD} depends on it")
    refusals["archive parent with child (batch)"] = batch
    regex = admin.refused("POST", f"{_env(DEFAULT_PROJECT, 'platform.internal-ips')}/strategies", _strategy_body(
        {"name": "default", "constraints": [_c("appName", "REGEX", "^x", single=True, inverted=True)]}))
    if regex is not None:
        refusals["inverted REGEX"] = regex
    infra = by_name["platform.new-infra"]
    transitive = admin.refused("POST", f"{_feature(infra.project, infra.name)}/dependencies",
                               {"feature": "search.autocomplete"})
    if transitive is None:
        raise AssertionError(f"the server let {infra.name}, a parent, depend on another flag")
    refusals["transitive dependency"] = transitive
    across = admin.refused("POST", f"{_feature(OTHER_PROJECT, 'billing.seat-pricing')}/dependencies",
                           {"feature": "search.autocomplete"})
    if across is None:
        raise AssertionError(f"the server let a flag of {OTHER_PROJECT} depend on one of {DEFAULT_PROJECT}")
    refusals["cross-project dependency"] = across
    foreign_segment = admin.refused("POST", f"{_env(DEFAULT_PROJECT, 'search.autocomplete')}/strategies",
                                    _strategy_body({"name": "default", "segments": [
                                        segments[s["name"]] for s in SEGMENTS if s.get("project") == OTHER_PROJECT]}))
    if foreign_segment is None:
        raise AssertionError(f"the server let a flag of {DEFAULT_PROJECT} use a segment of {OTHER_PROJECT}")
    refusals["segment of another project"] = foreign_segment
    # Archiving parent and child together is allowed; it drops the child's dependency.
    admin.call("POST", f"/projects/{legacy}/archive", {"features": [LEGACY_PARENT, LEGACY_CHILD]})
    admin.call("POST", f"/projects/{legacy}/revive", {"features": [LEGACY_CHILD]})
    for key, absent in (("dependency on archived parent", LEGACY_PARENT),
                        ("dependency on missing parent", "no.such-flag")):
        refused = admin.refused("POST", f"{_feature(legacy, LEGACY_CHILD)}/dependencies", {"feature": absent})
        if refused is None:
            raise AssertionError(f"the server took a dependency of {LEGACY_CHILD} on {absent}")
        refusals[key] = refused
    # The revived child is disabled; turn it back on as its team would.
    admin.call("POST", f"{_env(legacy, LEGACY_CHILD)}/on")

    # -- notes, then wait for the client API --------------------------------------------------
    served = [f for f in flags if f.name != LEGACY_PARENT]
    notes = {f.name: _note(f, segments) for f in served}
    notes[LEGACY_CHILD].parents = []
    notes[LEGACY_CHILD].extra.append(f"revived after archiving with its parent {LEGACY_PARENT}: no dependency")
    for note in notes.values():
        if note.parents and note.team == "ui" and not any(p.startswith("ui.") for p in note.parents):
            note.missing_parent_with = dict(MISSING_PARENT_QUERY)
    for name in stale:
        notes[name].stale = True
    projects: dict[str, list[str]] = {}
    for f in served:
        projects.setdefault(f.project, []).append(f.name)
    used = [op for op in OPERATORS if any(op in n.operators for n in notes.values())
            or any(c["operator"] == op for s in SEGMENTS if s["name"] != UNUSED_SEGMENT for c in s["constraints"])]
    used_segments = {n: i for n, i in segments.items() if any(n in note.segments for note in notes.values())}
    document = _await_served(server, token, notes, timeout)
    return CompanyWorld(
        token=token, project_tokens=project_tokens, projects=projects, notes=notes, operators=used,
        custom_strategy=CUSTOM_STRATEGY, segments=segments, used_segments=used_segments, archived=[LEGACY_PARENT],
        refusals=refusals, missing_parent_query=dict(MISSING_PARENT_QUERY),
        served_names=sorted(f["name"] for f in document["features"]), server_version=server_version(),
        other_project_via_sql="create project" in refusals)


def _note(flag: _Flag, segments: dict[str, int]) -> FlagNote:
    served = [s for s in flag.strategies if not s.get("disabled")]  # disabled strategies are not served
    constraints = [c for s in served for c in s.get("constraints", [])]
    return FlagNote(
        project=flag.project, wanted_project=flag.wanted_project, team=flag.team, type=flag.type, enabled=flag.enabled,
        operators=[op for op in OPERATORS if any(c["operator"] == op for c in constraints)],
        inverted=any(c["inverted"] for c in constraints),
        case_insensitive=any(c["caseInsensitive"] for c in constraints),
        context_fields=sorted({c["contextName"] for c in constraints}),
        strategies=[s["name"] for s in served],
        custom_strategy=any(s["name"] == CUSTOM_STRATEGY for s in served),
        segments=[n for s, names in zip(flag.strategies, flag.segment_names, strict=False) if not s.get("disabled")
                  for n in names if n in segments],
        parents=[p["feature"] for p in flag.parents[-1:]],  # a new dependency replaces the old one
        strategy_variants=any(s.get("variants") for s in served),
        environment_variants=bool(flag.environment_variants),
        impression_data=flag.impression_data, tags=list(flag.tags), extra=list(flag.extra))


def _await_served(server: UnleashServer, token: str, notes: dict[str, FlagNote], timeout: float) -> dict[str, Any]:
    """Poll the client API (about a second behind the Admin API) until it serves every flag
    of ``notes`` as created; the document."""
    deadline = time.monotonic() + timeout
    while True:
        document = client_features(server, token)
        served = {f["name"]: f for f in document["features"]}
        lagging = [name for name, note in notes.items() if not _served_as_noted(served.get(name), note)]
        if not lagging:
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"the client API does not serve these flags as created: {lagging}")
        time.sleep(0.2)


def _served_as_noted(feature: dict[str, Any] | None, note: FlagNote) -> bool:
    if feature is None or feature["enabled"] is not note.enabled or feature.get("stale", False) is not note.stale:
        return False
    parents = sorted(d["feature"] for d in feature.get("dependencies", []))
    return parents == sorted(note.parents) and (bool(feature.get("variants")) is note.environment_variants)
