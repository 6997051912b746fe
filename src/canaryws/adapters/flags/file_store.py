"""Reading and writing the flags file (used by the operator CLI and the file source).

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``, fsync
of the directory), so the running service's watcher only ever sees a complete old or
a complete new document. :func:`update_document` serialises read-edit-write cycles
with an ``fcntl`` lock on a sidecar ``.<name>.lock`` file, so concurrent CLI writers
do not lose each other's updates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from canaryws.adapters.files import FileSignature, locked, write_atomic
from canaryws.core.flagdoc import (
    FlagsDocument,
    FlagsDocumentError,
    encode_flags_document,
    parse_flags_document,
    validate_flags_data,
)

_NEW_FILE_MODE = 0o644


def read_flags_bytes(path: Path) -> tuple[bytes, FileSignature]:
    """The file's bytes and the signature of the version read (from ``fstat``).

    Raises FlagsDocumentError naming the path on any OSError.
    """
    try:
        with open(path, "rb") as file:
            signature = FileSignature.of(os.fstat(file.fileno()))
            return file.read(), signature
    except OSError as exc:
        raise FlagsDocumentError(f"{path}: cannot read flags file: {_os_reason(exc)}") from None


def read_document(path: Path) -> FlagsDocument:
    """Read and validate the flags file; FlagsDocumentError names the path."""
    raw, _ = read_flags_bytes(path)
    try:
        return parse_flags_document(raw)
    except FlagsDocumentError as exc:
        raise FlagsDocumentError([f"{path}: {problem}" for problem in exc.problems]) from None


def write_document_atomic(path: Path, doc: FlagsDocument) -> None:
    """Replace the file at ``path`` with ``doc`` atomically, keeping its permissions.

    A symlink at ``path`` is followed: its target is replaced, the link is kept.
    Raises FlagsDocumentError naming the path on any OSError.
    """
    target = Path(os.path.realpath(path))
    payload = encode_flags_document(doc)
    try:
        write_atomic(target, payload, new_file_mode=_NEW_FILE_MODE)
    except OSError as exc:
        raise FlagsDocumentError(f"{path}: cannot write flags file: {_os_reason(exc)}") from None


def update_document(path: Path, edit: Callable[[FlagsDocument], FlagsDocument]) -> tuple[FlagsDocument, FlagsDocument]:
    """Apply ``edit`` to the file under an exclusive lock; returns ``(old, new)``.

    The new document is validated again before it is written, and nothing is
    written when the revision does not change. Errors from ``edit`` propagate
    unchanged (the file is left untouched).
    """
    with _locked(path):
        old = read_document(path)
        new = validate_flags_data(edit(old).data)
        if new.revision != old.revision:
            write_document_atomic(path, new)
        return old, new


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    target = Path(os.path.realpath(path))
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(target))
        except OSError as exc:
            raise FlagsDocumentError(f"{path}: cannot lock {target}: {_os_reason(exc)}") from None
        yield


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
