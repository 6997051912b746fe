"""The flags as the endpoint reads them, and the evaluation context's clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from canaryws.core.cohorts import FlagSnapshotView


def now_iso() -> str:
    """Now, as the Unleash SDKs write the context's ``currentTime`` (``datetime.isoformat``
    in UTC, e.g. ``2026-12-06T17:04:20.123456+00:00``)."""
    return datetime.now(UTC).isoformat()


class FlagsInForce(Protocol):
    """The flag source as the endpoint reads it (canaryws.app.FlagSource)."""

    @property
    def current(self) -> FlagSnapshotView:
        """The snapshot in force."""
        ...

    @property
    def snapshot(self) -> FlagSnapshotView | None:
        """The same snapshot as a plain attribute: a new object whenever a reload is applied,
        so that the batch loop notices a reload with one identity test."""
        ...
