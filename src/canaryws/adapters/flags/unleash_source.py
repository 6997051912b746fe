"""Flags from a real Unleash server, through the Unleash SDK (``AsyncUnleashClient``).

- **Bootstrapped** from the flags file, so the service serves before (and without) the
  server: the first snapshot is the file's document.
- **Never blocks the event loop**: the SDK's asyncio client polls on the loop with
  aiohttp; its first fetch runs in a background task. The app's start-up waits for that
  first fetch (:meth:`UnleashFlagSource.wait_first_poll`) at most
  ``CANARYWS_UNLEASH_STARTUP_WAIT`` seconds, then serves the bootstrap until the server
  answers.
- **One project**: the SDK asks for the flags of ``project`` only (``UNLEASH_PROJECT``,
  the project ``flags show`` and ``flags export`` use), and the document is put in the
  same canonical form they use, so the three see the same flags and revision.
- **Snapshots, not a shared engine**: every features document the SDK stores in its
  cache is validated (same rules as the file: problems of single flags are warnings; a
  cohort flag that cannot be evaluated keeps its last good definition) and becomes a new
  immutable :class:`FlagSnapshot` with its own revision, so cohort pinning works exactly
  as with the file and the per-batch path only compares revision strings.
- **Staleness**: every successful poll (200 or 304) counts as contact. With no contact
  for ``stale_after`` seconds the source is *degraded*: ``/readyz`` says so with the age
  of the flags, one warning is logged (the SDK's per-refresh tracebacks are filtered),
  and the last known flags stay in force. The next successful poll recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from UnleashClient.cache import BaseCache
from UnleashClient.clients.async_unleash_client import AsyncUnleashClient
from UnleashClient.constants import FEATURES_URL

from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.adapters.flags.file_store import read_document
from canaryws.adapters.flags.problems import cohort_flags_status, log_applied, problem_counts
from canaryws.adapters.telemetry.logs import iso_utc
from canaryws.core.flagdoc import FlagsDocumentError, canonical_data, parse_json, validate_flags_data

LOGGER_NAME = "canaryws.flags"
SDK_LOGGER = "UnleashClient"


class _SnapshotCache(BaseCache):
    """The SDK's cache, in memory, starting with the bootstrap document. Every features
    payload the SDK stores is forwarded to the source."""

    def __init__(self, bootstrap: str, on_features: Callable[[str], None]) -> None:
        self._data: dict[str, Any] = {FEATURES_URL: bootstrap}
        self._on_features = on_features
        self.bootstrapped = True

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value
        if key == FEATURES_URL:
            self._on_features(value)

    def mset(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            self.set(key, value)

    def get(self, key: str, default: Any | None = None) -> Any:
        return self._data.get(key, default)

    def exists(self, key: str) -> bool:
        return key in self._data

    def destroy(self) -> None:
        self._data.clear()


class _QuietSdkLogs(logging.Filter):
    """One clear warning instead of a traceback per failed refresh: the source reports
    staleness itself, so the SDK's fetch-failure records are dropped and tracebacks are
    stripped from the rest."""

    # The fetch failures (the source reports staleness itself), and what the SDK's own engine
    # says of each poll's document: canaryws evaluates with its own snapshots and reports the
    # document's problems once per revision (adapters.flags.problems).
    DROP_PREFIXES = ("Unleash Client feature fetch failed", "Getting feature flags", "Error loading features",
                     "Some features were not able to be parsed")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.DROP_PREFIXES):
            return False
        record.exc_info = None
        record.exc_text = None
        return True


class UnleashFlagSource:
    name = "unleash"

    def __init__(
        self,
        *,
        url: str,
        api_token: str,
        bootstrap_path: Path,
        app_name: str = "canaryws",
        environment: str = "development",
        project: str | None = "default",
        refresh_interval: float = 15.0,
        request_timeout: float = 5.0,
        stale_after: float | None = None,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._api_token = api_token
        self._bootstrap_path = bootstrap_path
        self._app_name = app_name
        self._environment = environment
        self._project = project
        self._refresh_interval = refresh_interval
        self._request_timeout = request_timeout
        self._stale_after = stale_after if stale_after is not None else max(2 * refresh_interval, refresh_interval + 3)
        self._on_reload = on_reload
        self._log = logging.getLogger(LOGGER_NAME)
        # The snapshot in force, None before load(); a plain attribute, so that the batch loop can
        # tell a reload by identity without a call (see current, which raises before load()).
        self.snapshot: FlagSnapshot | None = None
        self._bootstrap_raw = ""
        self._from_server = False
        self._last_contact: float | None = None
        self._started_at = time.time()
        self._problem: str | None = None  # None (ok) | "unreachable" | "invalid": degraded unless None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._first_poll = asyncio.Event()
        self._client: AsyncUnleashClient | None = None

    # -- the FlagSnapshotView provider ------------------------------------------------
    @property
    def current(self) -> FlagSnapshot:
        if self.snapshot is None:
            raise RuntimeError("UnleashFlagSource.load() was not called")
        return self.snapshot

    @property
    def revision(self) -> str:
        return self.current.revision

    def load(self) -> FlagSnapshot:
        """Bootstrap from the flags file (raises FlagsDocumentError when it is invalid)."""
        doc = read_document(self._bootstrap_path)
        self._bootstrap_raw = self._bootstrap_path.read_text()
        self.snapshot = FlagSnapshot.from_document(doc, source="unleash-bootstrap")
        self._log.info(
            "flags bootstrapped from %s: revision %s; polling Unleash at %s (project %s) every %ss",
            self._bootstrap_path, doc.revision, self._url, self._project or "any", self._refresh_interval,
        )
        log_applied(self._log, self.snapshot, None)
        return self.snapshot

    # -- SDK callbacks (on the event loop) --------------------------------------------
    def _contact(self) -> None:
        self._last_contact = time.time()
        if self._problem == "unreachable":
            self._problem = None
            self._log.warning("Unleash at %s is reachable again; flags revision %s", self._url, self.revision)

    def _features(self, raw: str) -> None:
        previous = self.current
        try:
            doc = validate_flags_data(canonical_data(parse_json(raw), project=self._project))
            if doc.revision == previous.revision and self._from_server:
                self._notify("unchanged")
                return
            snapshot = FlagSnapshot.from_document(doc, source="unleash", previous=previous)
        except FlagsDocumentError as exc:
            self._problem = "invalid"
            self._last_error = f"Unleash served a document canaryws cannot use: {exc}"
            self._last_error_at = time.time()
            self._log.error("%s; keeping revision %s", self._last_error, self.current.revision)
            self._notify("invalid")
            return
        self.snapshot = snapshot
        self._from_server = True
        if self._problem == "invalid":
            self._problem = None
        self._log.info("flags from Unleash: revision %s -> %s", previous.revision, snapshot.revision)
        log_applied(self._log, snapshot, previous)
        self._notify("ok")

    def _notify(self, result: str) -> None:
        if self._on_reload is not None:
            try:
                self._on_reload(result)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop updates
                self._log.exception("flags on_reload callback failed")

    # -- lifecycle --------------------------------------------------------------------
    async def wait_first_poll(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the SDK's first fetch to be over (answered and applied,
        or failed: a refused connection does not make start-up wait); True when the flags in
        force then come from the server. :meth:`run` must be running."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_poll.wait(), timeout)
        return self._from_server

    @property
    def flags_from(self) -> str:
        """``server`` once a document from the server is in force, else ``bootstrap``."""
        return "server" if self._from_server else "bootstrap"

    async def run(self) -> None:
        """Poll the server until cancelled (call :meth:`load` first)."""
        sdk_logger = logging.getLogger(SDK_LOGGER)
        quiet = _QuietSdkLogs()
        sdk_logger.addFilter(quiet)
        cache = _SnapshotCache(self._bootstrap_raw, self._features)
        client = AsyncUnleashClient(
            url=self._url,
            app_name=self._app_name,
            environment=self._environment,
            instance_id=f"{socket.gethostname()}-{os.getpid()}",
            refresh_interval=self._refresh_interval,  # type: ignore[arg-type]
            request_timeout=self._request_timeout,  # type: ignore[arg-type]
            request_retries=0,
            custom_headers={"Authorization": self._api_token},
            cache=cache,
            disable_metrics=True,
            project_name=self._project,
        )
        self._observe_polls(client)
        self._client = client
        watchdog = asyncio.create_task(self._watch_staleness(), name="unleash-staleness")
        try:
            try:
                await client.initialize_client()  # returns once the first fetch is over
            except Exception as exc:  # noqa: BLE001 - e.g. an invalid URL: serve the bootstrap, say why
                self._log.error("cannot start the Unleash client for %s: %s", self._url, exc)
            finally:
                self._first_poll.set()
            await asyncio.Event().wait()  # polling runs on the SDK's own scheduler tasks
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            with contextlib.suppress(Exception):
                await asyncio.shield(client.destroy())
            sdk_logger.removeFilter(quiet)

    def _observe_polls(self, client: AsyncUnleashClient) -> None:
        """Count every answered poll (200 *or* 304) as contact.

        Unleash 8 answers an unchanged poll with a 304 that carries no ETag, so the SDK
        writes nothing to its cache and the cache cannot see it. The SDK's transport
        returns a result either way (empty on failure); this thin wrapper reads it. It
        relies on the SDK's ``_transport.fetch_features`` (pinned in uv.lock; docs/dependencies.md:
        tests/unit/test_dependency_internals.py and the outage test in
        tests/integration/test_unleash_backend.py fail if it changes). The SDK's public
        surface cannot see such a poll: a 304 without an ETag writes nothing to the cache
        and emits no event, exactly like a failed poll.
        """
        transport = client._transport
        fetch = transport.fetch_features

        async def observed_fetch(etag: str = "") -> Any:
            result = await fetch(etag=etag)
            if result.raw_state is not None or getattr(result, "not_modified", False):
                self._contact()
            return result

        transport.fetch_features = observed_fetch  # type: ignore[method-assign]

    async def _watch_staleness(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self._refresh_interval / 2))
            since = self._last_contact if self._last_contact is not None else self._started_at
            silent_for = time.time() - since
            if silent_for > self._stale_after and self._problem != "unreachable":
                self._problem = "unreachable"
                origin = "server" if self._from_server else "bootstrap file"
                self._last_error = f"no answer from Unleash at {self._url} for {silent_for:.0f}s"
                self._last_error_at = time.time()
                self._log.warning(
                    "%s; serving the last known flags (revision %s, from the %s) until it answers",
                    self._last_error, self.revision, origin,
                )

    def status(self) -> dict[str, Any]:
        snapshot = self.current
        now = time.time()
        fresh_at = self._last_contact if self._last_contact is not None else snapshot.loaded_at
        return {
            "source": "unleash",
            "url": self._url,
            "revision": snapshot.revision,
            "project": self._project,
            "flags_from": self.flags_from,
            "bootstrap_path": str(self._bootstrap_path),
            "loaded_at": iso_utc(snapshot.loaded_at),
            "last_contact_at": None if self._last_contact is None else iso_utc(self._last_contact),
            "age_seconds": round(max(0.0, now - fresh_at), 3),
            "refresh_interval_seconds": self._refresh_interval,
            "state": "ok" if self._problem is None and not snapshot.held else "degraded",
            "stale": self._problem == "unreachable",
            "last_error": self._last_error,
            "last_error_at": None if self._last_error_at is None else iso_utc(self._last_error_at),
            "cohort_flags": cohort_flags_status(snapshot),
            "problems": problem_counts(snapshot),
        }
