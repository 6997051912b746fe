"""Flags from a local file, hot-reloaded.

The source watches the file's *parent directory* (so atomic rename-replace, editors'
swap files, delete-and-recreate and Kubernetes ConfigMap symlink swaps are all seen)
and applies a new revision within about a second. A missing or unreadable file, or one
that is not a flags document at all, is logged on one line and rejected: the last good
snapshot stays in force and :meth:`FileFlagSource.status` reports ``"degraded"`` until
the file is valid again. Problems of single flags do not stop an update (see
``canaryws.adapters.flags.engine``): a cohort flag that cannot be evaluated as intended
keeps its last good definition (``"degraded"`` too), everything else is applied.

Besides filesystem events, the watch loop wakes up every ``poll_interval`` seconds and
compares the file's ``(mtime_ns, size, inode, device)`` with the version last read,
so a missed event cannot leave the service stale.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from canaryws.adapters.files import FileSignature, watch_file
from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.adapters.flags.file_store import read_flags_bytes
from canaryws.adapters.flags.problems import cohort_flags_status, log_applied, problem_counts
from canaryws.adapters.telemetry.logs import iso_utc
from canaryws.core.flagdoc import FlagsDocumentError, parse_flags_document

ReloadResult = Literal["ok", "unchanged", "invalid"]

LOGGER_NAME = "canaryws.flags"


class FileFlagSource:
    """A flags file, loaded once synchronously and then watched by :meth:`run`.

    ``on_reload(result)`` is called after every reload attempt with ``"ok"`` (a new
    revision was applied), ``"unchanged"`` (the file changed, the revision did not) or
    ``"invalid"`` (the file was rejected; the last good snapshot stays in force).
    """

    name = "file"

    def __init__(
        self,
        path: Path,
        *,
        on_reload: Callable[[str], None] | None = None,
        poll_interval: float = 1.0,
        debounce_ms: int = 100,
        step_ms: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        self._on_reload = on_reload
        self._poll_interval = poll_interval
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._clock = clock
        self._log = logging.getLogger(LOGGER_NAME)
        # The snapshot in force, None before load(); a plain attribute, so that the batch loop can
        # tell a reload by identity without a call (see current, which raises before load()).
        self.snapshot: FlagSnapshot | None = None
        self._signature: FileSignature | None = None  # of the version last read
        self._degraded = False
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current(self) -> FlagSnapshot:
        """The snapshot in force (the last good one). RuntimeError before :meth:`load`."""
        if self.snapshot is None:
            raise RuntimeError(f"flags file {self._path} has not been loaded; call load() first")
        return self.snapshot

    @property
    def revision(self) -> str:
        return self.current.revision

    def load(self) -> FlagSnapshot:
        """Load the file synchronously; FlagsDocumentError (naming the path) if it is unusable.

        Meant for startup, where the service refuses to start without valid flags.
        """
        raw, signature = read_flags_bytes(self._path)
        try:
            snapshot = FlagSnapshot.from_document(parse_flags_document(raw), source=self.name, loaded_at=self._clock())
        except FlagsDocumentError as exc:
            raise FlagsDocumentError([f"{self._path}: {p}" for p in exc.problems]) from None
        self.snapshot = snapshot
        self._signature = signature
        self._degraded = False
        self._log.info(
            "flags loaded from %s: revision %s (%d features)",
            self._path,
            snapshot.revision,
            len(snapshot.document.feature_names()),
        )
        log_applied(self._log, snapshot, None)
        return snapshot

    def reload(self) -> ReloadResult:
        """Read the file once and apply it if valid and new (also used for SIGHUP)."""
        current = self.current
        try:
            raw, signature = read_flags_bytes(self._path)
        except FlagsDocumentError as exc:
            self._signature = None
            return self._reject(str(exc))
        self._signature = signature
        try:
            doc = parse_flags_document(raw)
            if doc.revision == current.revision:
                self._mark_valid()
                return self._notify("unchanged")
            snapshot = FlagSnapshot.from_document(doc, source=self.name, loaded_at=self._clock(), previous=current)
        except FlagsDocumentError as exc:
            return self._reject(f"{self._path}: {exc}")
        self.snapshot = snapshot
        self._mark_valid()
        self._log.info(
            "flags reloaded from %s: revision %s -> %s",
            self._path,
            current.revision,
            snapshot.revision,
        )
        log_applied(self._log, snapshot, current)
        return self._notify("ok")

    async def reload_now(self) -> ReloadResult:
        """:meth:`reload`, for async callers."""
        return self.reload()

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: source, path, revision, age and whether the file is healthy."""
        snapshot = self.current
        return {
            "source": self.name,
            "path": str(self._path),
            "revision": snapshot.revision,
            "loaded_at": iso_utc(snapshot.loaded_at),
            "age_seconds": round(max(0.0, self._clock() - snapshot.loaded_at), 3),
            "state": "degraded" if self._degraded or snapshot.held else "ok",
            "last_error": self._last_error,
            "last_error_at": None if self._last_error_at is None else iso_utc(self._last_error_at),
            "cohort_flags": cohort_flags_status(snapshot),
            "problems": problem_counts(snapshot),
        }

    async def run(self) -> None:
        """Watch the file until cancelled; call :meth:`load` first.

        Changes to the file itself force a reload; any other wake-up (other entries of
        the directory changing, or the ``poll_interval`` timeout) reloads only if the
        file's signature changed. If the directory cannot be watched (it is missing,
        or inotify is unavailable) the loop falls back to polling and retries; if it
        is replaced, the new directory is watched.
        """
        self.current  # noqa: B018 - fail fast when load() was not called
        await watch_file(
            self._path,
            signature=lambda: self._signature,
            reload=self.reload,
            log=self._log,
            poll_interval=self._poll_interval,
            debounce_ms=self._debounce_ms,
            step_ms=self._step_ms,
        )

    def _reject(self, message: str) -> ReloadResult:
        self._degraded = True
        self._last_error = message
        self._last_error_at = self._clock()
        self._log.error("flags file rejected, keeping revision %s: %s", self.current.revision, message)
        return self._notify("invalid")

    def _mark_valid(self) -> None:
        if self._degraded:
            self._degraded = False
            self._log.info("flags file %s is valid again", self._path)

    def _notify(self, result: ReloadResult) -> ReloadResult:
        if self._on_reload is not None:
            try:
                self._on_reload(result)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop reloading
                self._log.exception("flags on_reload callback failed")
        return result
