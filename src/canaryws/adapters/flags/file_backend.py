"""The flags file as a :class:`~canaryws.adapters.flags.backend.FlagBackend`: every change is
an edit of the document, validated and written atomically under a lock (see ``file_store``);
a running service applies it within about a second (``file_source``)."""

from __future__ import annotations

from pathlib import Path

from canaryws.adapters.flags.backend import (
    FlagArchive,
    FlagChange,
    FlagListing,
    listing_of,
    other_strategies_notes,
    problem_notes,
    row_of,
)
from canaryws.adapters.flags.engine import assess
from canaryws.adapters.flags.file_store import read_document, update_document
from canaryws.core.flagdoc import FlagsDocument, with_enabled, with_rollout, without_feature


class FileFlagBackend:
    """The local flags file, edited atomically under a lock (see ``file_store``)."""

    source = "file"

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def location(self) -> str:
        return str(self._path)

    def describe(self) -> FlagListing:
        return listing_of(self.source, self.location, read_document(self._path))

    def set_rollout(self, flag: str, percent: int) -> FlagChange:
        old, new = update_document(self._path, lambda doc: with_rollout(doc, flag, percent))
        return self._change(flag, old, new, other_strategies_notes(new, flag) + problem_notes(assess(new)))

    def set_enabled(self, flag: str, enabled: bool) -> FlagChange:
        old, new = update_document(self._path, lambda doc: with_enabled(doc, flag, enabled))
        return self._change(flag, old, new, problem_notes(assess(new)))

    def archive(self, flag: str) -> FlagArchive:
        old, new = update_document(self._path, lambda doc: without_feature(doc, flag))
        return FlagArchive(flag, row_of(old, flag), old.revision, new.revision, self.location)

    def _change(self, flag: str, old: FlagsDocument, new: FlagsDocument, notes: tuple[str, ...] = ()) -> FlagChange:
        return FlagChange(
            flag=flag,
            before=row_of(old, flag),
            after=row_of(new, flag),
            old_revision=old.revision,
            new_revision=new.revision,
            location=self.location,
            notes=notes,
        )
