"""Small file primitives shared by the adapters that keep state in files: atomic
replacement under an advisory lock (flags file, revocation list) and owner-only secret
files created once (token secret, admin credential).

They raise ``OSError``; each caller turns it into its own error that names its file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

SECRET_FILE_MODE = 0o600


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
