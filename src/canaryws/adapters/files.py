"""Small file primitives shared by the adapters that keep state in files: atomic
replacement under an advisory lock and a watcher (flags file, revocation list), and
owner-only credential files created once and read only while they stay private
(token secret, admin credential).

They raise ``OSError`` (and :func:`read_credential` :class:`CredentialFileError` for an unsafe
file); each caller turns it into its own error that names its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

SECRET_FILE_MODE = 0o600
MAX_CREDENTIAL_CHARS = 4096  # read no more of a credential file (they hold one short line)


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


class CredentialFileError(Exception):
    """A secret or credential file is missing, unsafe or unusable. The message names the
    file and what to do, never its content."""


def create_credential(path: Path, make_secret: Callable[[], str]) -> bool:
    """Create ``path`` holding ``make_secret()`` if nothing is there yet, owner-only from the
    start (``O_EXCL``, so two processes starting together agree on one secret; ``O_NOFOLLOW``,
    so a planted symlink is not followed). An existing file is left alone: whether it may be
    used is :func:`read_credential`'s decision. True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, SECRET_FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(make_secret() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def read_credential(
    path: Path,
    what: str,
    *,
    renew: str,
    root_may_own: bool = False,
    others_may_read: bool = False,
    error: type[CredentialFileError] = CredentialFileError,
) -> tuple[str, int]:
    """The content and mode of the credential file ``path`` (``what`` names it in messages),
    read only if nobody but the service's user could have written it or read it.

    Refused with ``error``, whose message names the file and the fix (``renew`` says how to
    get a new one, e.g. "remove it and the service creates a new one"): a file that is
    not regular; one not owned by the service's effective user (``os.geteuid()``), or by root
    with ``root_may_own`` (an operator's mounted secret); one group or others may write; one
    group or others may read, unless ``others_may_read``. The checks apply to the opened file
    (``fstat``), so it cannot be swapped in between. Nothing is chmod'ed or chown'ed: a file
    another user could have planted, changed or read is the operator's to judge. OSError when
    the file cannot be opened or read."""
    # O_NONBLOCK: a FIFO planted in its place must not hang the start (it is refused below)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "r", encoding="utf-8", errors="surrogateescape") as fh:
        st = os.fstat(fh.fileno())
        problem = _credential_problem(st, root_may_own=root_may_own, others_may_read=others_may_read)
        if problem is not None:
            raise error(problem.format(what=what, path=path, renew=renew, user=_user_arg(os.geteuid())))
        return fh.read(MAX_CREDENTIAL_CHARS), stat.S_IMODE(st.st_mode)


def _credential_problem(st: os.stat_result, *, root_may_own: bool, others_may_read: bool) -> str | None:
    """A message template ({what}, {path}, {renew}, {user}) for an unsafe file, or None."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return "{what} {path} is not a regular file, so it is not used. To get a new one, {renew}"
    euid = os.geteuid()
    if st.st_uid != euid and not (root_may_own and st.st_uid == 0):
        runner = _describe_user(euid) + (" (or root)" if root_may_own and euid != 0 else "")
        return (
            f"{{what}} {{path}} is owned by {_describe_user(st.st_uid)}, not by the user running canaryws, {runner}: "
            "another user may have planted it, so it is not used (nor chmod'ed). If it is the deployment's own: "
            "chown {user} {path} && chmod 600 {path}. Otherwise {renew}"
        )
    if mode & 0o022:
        return (
            f"{{what}} {{path}} has mode {mode:04o}: group or others can write it, so it is not used (someone else "
            "may have changed it). If its content is the deployment's own: chmod 600 {path}. Otherwise {renew}"
        )
    if mode & 0o044 and not others_may_read:
        return (
            f"{{what}} {{path}} has mode {mode:04o}: group or others can read it, so it is not used. "
            "Make it private with chmod 600 {path}; if someone else may have read it, {renew}"
        )
    return None


def _describe_user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _user_arg(uid: int) -> str:
    """``uid`` as ``chown`` takes it: the name when there is one."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
