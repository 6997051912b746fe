"""Composition: the one place where adapters are built from settings and wired, and the
whole ASGI stack is assembled (:func:`build_service`). :mod:`canaryws.serve` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.types import ASGIApp

from canaryws.adapters.admin import ADMIN_KEY_FILE, admin_credential_check, admin_router, load_or_create_admin_key
from canaryws.adapters.asgi.access_token import AccessTokenScrubber
from canaryws.adapters.asgi.drain import ConnectionDrain
from canaryws.adapters.asgi.expose_abort import ExposeAbort
from canaryws.adapters.asgi.records_route import RecordsRoute
from canaryws.adapters.auth import TokenAuthority
from canaryws.adapters.files import CredentialFileError
from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.adapters.flags.file_source import FileFlagSource
from canaryws.adapters.http import probes_router
from canaryws.adapters.records.endpoint import EndpointLimits, RecordsEndpoint
from canaryws.adapters.revocation import RevocationFileError, RevocationList
from canaryws.adapters.server.graceful import app_shutdown_budget
from canaryws.adapters.shadow import ShadowRunner
from canaryws.adapters.sink.committer import OK as SINK_OK
from canaryws.adapters.sink.committer import Committer
from canaryws.adapters.sink.migrations import SchemaTooNew
from canaryws.adapters.sink.sqlite import SWITCH_INTERVAL as SQLITE_SWITCH_INTERVAL
from canaryws.adapters.sink.url import open_sink
from canaryws.adapters.telemetry.flags import FlagsTelemetry
from canaryws.adapters.telemetry.providers import TelemetryProviders, setup_telemetry
from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.adapters.telemetry.sink import SinkTelemetry
from canaryws.core.cohorts import expected_strict_share
from canaryws.core.flagdoc import FlagsDocumentError
from canaryws.settings import Settings

if TYPE_CHECKING:
    from canaryws.adapters.flags.unleash_source import UnleashFlagSource

log = logging.getLogger("canaryws")

PROBE_PATHS = "healthz,readyz,metrics"
SINK_STARTUP_WAIT = 3.0  # seconds the start waits for the sink; beyond, it starts with the sink unavailable
# The OTel ASGI middleware leaves these alone. /records never reaches it (RecordsRoute serves it
# outside FastAPI): its span (and wrappers) would live as long as each connection; the endpoint's
# own connect span covers the handshake instead and continues a client's W3C trace context
# (docs/benchmarks.md).
UNINSTRUMENTED_URLS = PROBE_PATHS
# Headers whose values the OTel header capture (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_*)
# records as [REDACTED] (regexes, searched, case-insensitive); the instrumentation would take only
# OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS (default: none), which adds to these.
SANITIZED_HEADERS = ("authorization", "cookie", ".*token.*", ".*secret.*", ".*api[-_]?key.*", ".*password.*",
                     ".*session.*")
SANITIZE_FIELDS_VAR = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"


class SinkSettingError(ValueError):
    """``CANARYWS_SINK`` names no sink."""


class FlagSource(Protocol):
    """What the app needs from a flag source (file or Unleash server)."""

    name: str
    snapshot: FlagSnapshot | None  # the snapshot in force, as a plain attribute (None before load())

    @property
    def current(self) -> FlagSnapshot: ...

    @property
    def revision(self) -> str: ...

    def load(self) -> FlagSnapshot: ...

    def status(self) -> dict[str, Any]: ...

    async def run(self) -> None: ...


def unleash_source(flags: FlagSource) -> UnleashFlagSource | None:
    """``flags`` when it is an Unleash server's flags (whose module is then imported), else None."""
    module = sys.modules.get("canaryws.adapters.flags.unleash_source")
    return cast("UnleashFlagSource", flags) if module is not None and isinstance(flags, module.UnleashFlagSource) \
        else None


def build_flag_source(settings: Settings, on_reload: Callable[[str], None]) -> FlagSource:
    if settings.flags_backend == "unleash":
        # Imported here: aiohttp and the Unleash SDK are a third of `canaryws serve`'s imports
        # (about 0.5 s of every restart), needed only with an Unleash server's flags.
        from canaryws.adapters.flags.unleash_source import UnleashFlagSource

        assert settings.unleash_url is not None and settings.unleash_api_token is not None
        return UnleashFlagSource(
            url=settings.unleash_url,
            api_token=settings.unleash_api_token,
            bootstrap_path=settings.flags_path,
            app_name=settings.service_name,
            environment=settings.unleash_environment,
            project=settings.unleash_project,
            refresh_interval=settings.unleash_refresh_interval,
            request_timeout=settings.unleash_request_timeout,
            on_reload=on_reload,
        )
    return FileFlagSource(settings.flags_path, on_reload=on_reload)


@dataclass
class Service:
    """Everything the running app holds; exposed on ``app.state.service`` for tests.

    ``asgi`` is the whole stack a server runs, outermost first: ``drain`` (the
    :class:`ConnectionDrain` the graceful server drains at shutdown), :class:`ExposeAbort`,
    :class:`AccessTokenScrubber`, :class:`RecordsRoute` (``/records`` to ``records``), then
    ``fastapi`` (the probes, ``/admin``, under the OpenTelemetry ASGI middleware)."""

    settings: Settings
    flags: FlagSource
    tokens: TokenAuthority
    telemetry: TelemetryProviders
    records: RecordsEndpoint
    fastapi: FastAPI
    drain: ConnectionDrain
    asgi: ASGIApp


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive after start-up (modules, the OTel SDK,
    FastAPI, the flags, about 94,000 objects) to the garbage collector's permanent
    generation (``gc.freeze``), so that no later collection scans them again. Without it,
    every full collection walked them all: 45-70 ms with the event loop stopped, every
    100,000 batches or so under load (docs/benchmarks.md). Objects created later are
    collected as usual."""
    gc.collect()
    gc.freeze()


def build_service(settings: Settings) -> Service:
    """Build and wire all adapters. Loads the flags once: an invalid flags file at
    start-up raises (the service refuses to start without a good document)."""
    telemetry = setup_telemetry(
        data_dir=settings.data_dir, service_name=settings.service_name, environ=settings.environ
    )
    flags_telemetry = FlagsTelemetry(telemetry.meter_provider)
    flags = build_flag_source(settings, functools.partial(flags_telemetry.reloaded, settings.flags_backend))
    flags_telemetry.observe(flags.status, lambda: expected_strict_share(flags.current, settings.default_strategy))
    flags.load()
    tokens = TokenAuthority.from_data_dir(settings.data_dir, settings.token_ttl_seconds)
    revocations = RevocationList(settings.data_dir)
    revocations.load()
    admin_credential = load_or_create_admin_key(
        settings.admin_token_file or settings.data_dir / ADMIN_KEY_FILE, create=settings.admin_token_file is None
    )
    records_telemetry = RecordsTelemetry(
        telemetry.tracer_provider, telemetry.meter_provider, duration_registry=telemetry.duration_registry
    )
    shadow = ShadowRunner(
        records_telemetry,
        max_length=settings.max_record_length,
        sample_rate=settings.shadow_sample_rate,
    )
    try:
        sink = open_sink(settings.sink, settings.data_dir, timeout=settings.sink_timeout)
    except ValueError as exc:
        raise SinkSettingError(str(exc)) from None
    committer: Committer | None = None
    if sink is not None:
        sink_telemetry = SinkTelemetry(telemetry.meter_provider, sink.name)
        committer = group = Committer(sink, timeout=settings.sink_timeout, retention=settings.sink_retention,
                                      observe=sink_telemetry.committed, counted=sink_telemetry.batches)
        sink_telemetry.watch(lambda: group.state == SINK_OK, lambda: group.pending)

    records = RecordsEndpoint(
        flags=flags,
        tokens=tokens,
        telemetry=records_telemetry,
        limits=EndpointLimits(
            max_records=settings.max_records,
            max_record_length=settings.max_record_length,
            summary_interval=settings.summary_interval,
            max_messages_per_second=settings.max_messages_per_second,
            message_burst=settings.message_burst,
            max_connections_per_client=settings.max_connections_per_client,
            max_bytes_per_second=settings.max_bytes_per_second,
            bytes_burst=settings.bytes_burst,
            max_client_bytes_per_second=settings.max_client_bytes_per_second,
            client_bytes_burst=settings.client_bytes_burst,
            max_connections=settings.max_connections,
            max_handshakes_per_second=settings.max_handshakes_per_second,
            handshake_burst=settings.handshake_burst,
            max_source_handshakes_per_second=settings.max_source_handshakes_per_second,
            source_handshake_burst=settings.source_handshake_burst,
            send_timeout=settings.send_timeout,
            duplicate_id_window=settings.duplicate_id_window,
        ),
        shadow=shadow,
        allowed_origins=settings.allowed_origins,
        revoked=revocations.revoked,
        default_strategy=settings.default_strategy,
        app_name=settings.service_name,
        environment=settings.unleash_environment,
        committer=committer,
    )
    records_telemetry.totals.track(records.open_summaries)  # the batch metrics read the open slices too

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(flags.run(), name="flags-watcher")
        revocations_watcher = asyncio.create_task(revocations.run(), name="revocations-watcher")
        sweeper = asyncio.create_task(records.run(), name="connection-sweeper")
        committing: asyncio.Task[None] | None = None
        switch_interval = sys.getswitchinterval()
        if committer is not None and committer.sink.name == "sqlite":  # its thread's GIL handoffs (sqlite.py)
            sys.setswitchinterval(min(switch_interval, SQLITE_SWITCH_INTERVAL))
        if committer is not None:  # connect and migrate up (a schema newer than this release stops the start)
            try:
                await committer.start(SINK_STARTUP_WAIT)
            except SchemaTooNew as exc:
                log.error("cannot start: %s", exc)
                raise
            committing = asyncio.create_task(committer.run(), name="sink-committer")
        unleash = unleash_source(flags)
        if unleash is not None:  # connections wait for the server's flags, within a bound
            await unleash.wait_first_poll(settings.unleash_startup_wait)
        freeze_startup_objects()
        log.info(
            "canaryws ready",
            extra={
                "flags_source": flags.name,
                "flags_from": unleash.flags_from if unleash is not None else "file",
                "flags_path": str(settings.flags_path),
                "flags_revision": flags.revision,
                "default_strategy": settings.default_strategy,
                "traces": telemetry.trace_exporter_kind,
                "sink": committer.status() if committer is not None else "none",
            },
        )
        try:
            yield
        finally:
            # The app's share of the shutdown bound, counted from here (the connections are closed).
            shutdown_budget = app_shutdown_budget(settings.shutdown_timeout)
            shutdown_deadline = time.monotonic() + shutdown_budget
            for task in (watcher, revocations_watcher, sweeper, *([committing] if committing else [])):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if committer is not None:  # the commits under way finish; the sink's connections close
                await committer.close(max((shutdown_deadline - time.monotonic()) / 2, 0.1))
            sys.setswitchinterval(switch_interval)
            # bounded flush of spans and metrics, off the event loop, in what is left of the budget
            await asyncio.to_thread(telemetry.shutdown, max(shutdown_deadline - time.monotonic(), 0.0))

    # No OpenAPI document: it would list the admin routes to anyone.
    app = FastAPI(title="canaryws", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(
        probes_router(
            flags_status=flags.status, metrics_text=telemetry.metrics_text, telemetry_status=telemetry.status,
            is_admin=admin_credential_check(admin_credential),
            sink_status=committer.status if committer is not None else None,
        )
    )

    app.include_router(
        admin_router(
            credential=admin_credential,
            tokens=tokens,
            revocations=revocations,
            connections=records.connections_by_strategy,
        )
    )

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        excluded_urls=UNINSTRUMENTED_URLS,
        exclude_spans=["receive", "send"],
        http_capture_headers_sanitize_fields=[
            *SANITIZED_HEADERS,
            *(field.strip() for field in settings.environ.get(SANITIZE_FIELDS_VAR, "").split(",") if field.strip()),
        ],
    )
    drain = ConnectionDrain(ExposeAbort(AccessTokenScrubber(RecordsRoute(app, records.handle))))
    service = Service(settings, flags, tokens, telemetry, records, app, drain, drain)
    app.state.service = service
    return service


def startup_error(exc: Exception, settings: Settings) -> str | None:
    """The "cannot start" message for a start-up failure of the service's own state (a bad
    flags document, revocation list, token secret or admin credential), or None for another
    exception."""
    if isinstance(exc, FlagsDocumentError):
        return f"cannot start: flags document {settings.flags_path}: {exc}"
    if isinstance(exc, RevocationFileError | CredentialFileError | SinkSettingError):  # token secret, admin.key too
        return f"cannot start: {exc}"
    return None


def prepare_shared_state(settings: Settings) -> None:
    """Validate the flags document (the Unleash bootstrap too) and ``revoked.json``, and
    create the token secret and the admin credential if missing, as :func:`build_service`
    would; raises what it raises. No watcher, client or thread is started (the supervisor of
    several workers runs it once, before any worker)."""
    FileFlagSource(settings.flags_path).load()
    TokenAuthority.from_data_dir(settings.data_dir, settings.token_ttl_seconds)
    RevocationList(settings.data_dir).load()
    load_or_create_admin_key(
        settings.admin_token_file or settings.data_dir / ADMIN_KEY_FILE, create=settings.admin_token_file is None
    )


def create_app() -> ASGIApp:
    """Factory for ``uvicorn --factory canaryws.app:create_app`` (settings from CANARYWS_*)."""
    return build_service(Settings.from_env()).asgi
