"""PostgreSQL for tests of the persist step: a fresh database on the machine's shared cluster,
or a private instance of the test's own that it may stop and start.

- :func:`fresh_database`: ``CREATE DATABASE`` with a unique name on the shared cluster
  (127.0.0.1:5432, trust auth, user ``postgres``; ``CANARYWS_TEST_PG_HOST``/``_PORT``/``_USER``
  override), ``DROP DATABASE ... WITH (FORCE)`` afterwards. The cluster itself is never touched.
- :class:`PrivatePostgres`: ``initdb`` into a directory of its own, ``pg_ctl start`` on a free
  port of 127.0.0.1 with its socket in that directory, trust auth. Stopping it harms no other
  test. PostgreSQL refuses to run as root: under root the binaries run as the ``postgres``
  user (``runuser``), and the directory is made under the system's temporary directory
  (pytest's ``tmp_path`` is private to root, so that user could not reach it).

The binaries are the newest of ``/usr/lib/postgresql/*/bin`` (``CANARYWS_TEST_PG_BIN`` names
another directory); none found is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import free_port

SHARED_HOST = os.environ.get("CANARYWS_TEST_PG_HOST", "127.0.0.1")
SHARED_PORT = int(os.environ.get("CANARYWS_TEST_PG_PORT", "5432"))
SHARED_USER = os.environ.get("CANARYWS_TEST_PG_USER", "postgres")
SERVER_USER = "postgres"  # who runs a private instance when the tests run as root


def postgres_bin() -> Path:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres`` (the newest major version)."""
    if given := os.environ.get("CANARYWS_TEST_PG_BIN"):
        return Path(given)
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    if not found:
        raise RuntimeError("no PostgreSQL binaries in /usr/lib/postgresql/*/bin (set CANARYWS_TEST_PG_BIN)")
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)


def psql(url: str, sql: str, timeout: float = 60) -> str:
    """Run ``sql`` with ``psql`` (unaligned, tuples only, stopping at the first error); its output."""
    done = subprocess.run([str(postgres_bin() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           "-d", url, "-c", sql], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"psql {sql[:80]!r} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def query_json(url: str, select: str) -> list[dict[str, Any]]:
    """The rows of ``select`` as dicts, read through ``json_agg`` (arrays stay lists)."""
    out = psql(url, f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({select}) q")
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def _shared_url(database: str) -> str:
    return f"postgresql://{SHARED_USER}@{SHARED_HOST}:{SHARED_PORT}/{database}"


def unique_name(prefix: str = "canaryws_sink_test") -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def fresh_database(prefix: str = "canaryws_sink_test") -> Iterator[str]:
    """A new, empty database on the shared cluster; yields its URL (``postgresql://...``).
    Dropped afterwards, with whatever connections are still open to it."""
    name = unique_name(prefix)
    psql(_shared_url("postgres"), f'CREATE DATABASE "{name}"')
    try:
        yield _shared_url(name)
    finally:
        psql(_shared_url("postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivatePostgres:
    """A PostgreSQL instance of one test's own, on 127.0.0.1:``port`` (trust auth, user
    ``postgres``). ``start``/``stop`` may be called mid-test; ``destroy`` stops it at once
    and removes its files."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="canaryws-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.sockets.mkdir()
        self._as_other: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._as_other = ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self._as_other, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                               f"{self.logs()[-4000:]}")
        return done

    def init(self) -> PrivatePostgres:
        # --no-sync: only initdb's final flush is skipped; the server keeps fsync on.
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-locale", "--no-sync")
        return self

    def start(self) -> PrivatePostgres:
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=40 -c shared_buffers=32MB")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "-o", options, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    @property
    def running(self) -> bool:
        done = subprocess.run([*self._as_other, str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True, text=True, timeout=30)
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; its URL."""
        psql(self.url(), f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.data.exists() and self.running:
                self.stop("immediate")
        for _ in range(50):  # a server just stopped may still be removing its socket
            try:
                shutil.rmtree(self.root)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            return self.init().start()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc: object) -> None:
        self.destroy()
