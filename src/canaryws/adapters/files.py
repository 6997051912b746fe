"""Small file primitives shared by the adapters that keep state in files: atomic
replacement under an advisory lock and a watcher (flags file, revocation list), and
owner-only secret files created once (token secret, admin credential).

They raise ``OSError``; each caller turns it into its own error that names its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

SECRET_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What identifies one version of a file cheaply (a stat, no read)."""

    mtime_ns: int
    size: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileSignature:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def stat_signature(path: Path) -> FileSignature | None:
    """The signature of ``path`` (symlinks followed), or None if it cannot be stat'ed."""
    try:
        return FileSignature.of(os.stat(path))
    except OSError:
        return None


async def watch_file(
    path: Path,
    *,
    signature: Callable[[], FileSignature | None],
    reload: Callable[[], object],
    log: logging.Logger,
    poll_interval: float,
    debounce_ms: int,
    step_ms: int,
) -> None:
    """Call ``reload()`` whenever ``path`` changes, until cancelled.

    The directory is watched (so atomic replaces are seen). An event naming the file
    reloads; any other wake-up (another entry changing, or the ``poll_interval`` timeout)
    reloads only if the file's stat signature differs from ``signature()``, the version
    last read. If the directory cannot be watched (missing, no inotify) this polls every
    ``poll_interval`` and retries, with one warning; if it is replaced, the new one is
    watched. An exception from ``reload`` is logged and watching goes on.
    """

    def wakeup(names: set[str]) -> None:
        try:
            if path.name in names or stat_signature(path) != signature():
                reload()
        except Exception:
            log.exception("unexpected error while reloading %s", path)

    directory = path.parent
    warned = False
    while True:
        try:
            watched = _identity(directory)
            watcher = awatch(
                directory,
                watch_filter=None,
                debounce=debounce_ms,
                step=step_ms,
                rust_timeout=max(1, int(poll_interval * 1000)),
                yield_on_timeout=True,
                recursive=False,
            )
            async with contextlib.aclosing(watcher):
                async for changes in watcher:
                    warned = False
                    wakeup({Path(changed).name for _, changed in changes})
                    if _identity(directory) != watched:
                        break  # the directory was replaced: watch the new one
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep watching whatever happens; the service relies on it
            if not warned:
                log.warning("cannot watch %s (%s); polling every %.1fs until it can", directory, exc, poll_interval)
                warned = True
            await asyncio.sleep(poll_interval)
            wakeup(set())


def _identity(directory: Path) -> tuple[int, int]:
    """(device, inode) of a directory; OSError when it is missing."""
    st = os.stat(directory)
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<name>.lock`` next to ``target``, for writers that
    read, edit and replace it (readers need none: replacement is atomic)."""
    with open(target.parent / f".{target.name}.lock", "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def write_atomic(target: Path, payload: bytes, *, new_file_mode: int = 0o644) -> None:
    """Replace ``target`` with ``payload``: a temporary file in the same directory, written
    and fsynced with the existing file's mode (``new_file_mode`` for a new one), renamed
    over ``target``, then the directory fsynced. Readers see the old or the new content,
    never a mix; on failure the temporary file is removed and ``target`` is untouched."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = new_file_mode
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_secret_file(path: Path, make_secret: Callable[[], str]) -> bool:
    """Create ``path`` holding ``make_secret()`` if it does not exist, owner-only from the
    start (``O_EXCL``, so two processes starting together agree on one secret), and make an
    existing one owner-only. True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    except FileExistsError:
        created = False
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(make_secret() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        created = True
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, SECRET_FILE_MODE)
    return created
