"""Where ``canaryws rollout`` keeps its state: one JSON file, replaced atomically under an
edit lock (:func:`canaryws.adapters.files.locked`), and the controller's lease beside it.

- **The state file** (``rollout.json``): the controller's durable state and the operators'
  requests (``requests``: pause, resume, abort) for a running controller to apply. Every
  writer reads, edits and replaces it under the edit lock (:meth:`RolloutStore.edit`), so a
  request written while the controller saves is not lost; readers need no lock.
- **The lease** (``<state>.lease``): an exclusive ``fcntl.flock`` held for a controller's
  lifetime, with its holder (pid, host, start time) written into it. The kernel releases it
  when the process ends, SIGKILL included, so a dead controller never blocks the next one.
  ``flock`` is local to a host (or a filesystem whose locks work across hosts): two
  controllers on two hosts with their own copies of the state are not prevented (in
  Kubernetes: one replica, strategy ``Recreate``).

The documents are plain JSON here; what they mean is :mod:`canaryws.analysis.rollout`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from canaryws.adapters.files import locked, write_atomic

MAX_REQUESTS = 100  # operators' requests waiting for a controller (older ones are dropped)


class StoreError(Exception):
    """The state file cannot be read (not JSON, not an object) or written; the message names it."""


class LeaseHeld(Exception):
    """Another controller holds the lease: ``holder`` is what it wrote (pid, host, started)."""

    def __init__(self, path: Path, holder: dict[str, Any] | None) -> None:
        self.path, self.holder = path, holder
        who = "another process" if not holder else (
            f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}")
        super().__init__(f"a rollout controller already runs on this state ({who} holds {path})")


class RolloutStore:
    """The state file at ``path`` and its lease."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lease_path = path.with_name(path.name + ".lease")

    def read(self) -> dict[str, Any] | None:
        """The state document, or None when there is none yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StoreError(f"cannot read the rollout state {self.path}: {error}") from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise StoreError(f"the rollout state {self.path} is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise StoreError(f"the rollout state {self.path} is not a JSON object")
        return data

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """The document (empty when there is none) under the edit lock; written back when the
        block ends without an exception, and only if it changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.path):
            before = self.read() or {}
            doc = json.loads(json.dumps(before))
            yield doc
            if doc != before:
                self._write(doc)

    def _write(self, doc: dict[str, Any]) -> None:
        try:
            write_atomic(self.path, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
        except OSError as error:
            raise StoreError(f"cannot write the rollout state {self.path}: {error}") from None

    def archive(self) -> Path | None:
        """Move a finished state aside (``<name>.<UTC time>.done``, which no trace reader takes
        for a trace file); the new name, or None when there was none. Call it under :meth:`edit`
        or while holding the lease."""
        if not self.path.exists():
            return None
        target = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.done")
        os.replace(self.path, target)
        return target

    # -- requests -------------------------------------------------------------------------
    def add_request(self, request: dict[str, Any]) -> None:
        """Queue an operator's request for the running controller."""
        with self.edit() as doc:
            requests = doc.setdefault("requests", [])
            requests.append(request)
            del requests[:-MAX_REQUESTS]

    def take_requests(self) -> list[dict[str, Any]]:
        """The queued requests, removed from the file (the controller applies them)."""
        if not self.path.exists():
            return []
        with self.edit() as doc:
            requests = doc.pop("requests", None) or []
        return [r for r in requests if isinstance(r, dict)]

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the state with ``doc``, keeping the requests queued since they were taken."""
        with self.edit() as current:
            requests = current.get("requests")
            current.clear()
            current.update(doc)
            if requests:
                current["requests"] = requests
            else:
                current.pop("requests", None)

    # -- the lease ------------------------------------------------------------------------
    def acquire(self) -> Lease:
        """The controller's lease, held until :meth:`Lease.release` or the process ends;
        :class:`LeaseHeld` at once when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lease_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the lease's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise LeaseHeld(self.lease_path, self.holder()) from None
        except BaseException:
            handle.close()
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        return Lease(handle, holder)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease now (what it wrote), or None when no controller holds it."""
        try:
            handle = open(self.lease_path, encoding="utf-8")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    data = json.loads(handle.read() or "{}")
                except ValueError:
                    data = {}
                return data if isinstance(data, dict) and data else {"pid": None}
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None


class Lease:
    """A held lease (see :meth:`RolloutStore.acquire`)."""

    def __init__(self, handle: IO[str], holder: dict[str, Any]) -> None:
        self._handle: IO[str] | None = handle
        self.holder = holder

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


__all__ = ["Lease", "LeaseHeld", "RolloutStore", "StoreError"]
