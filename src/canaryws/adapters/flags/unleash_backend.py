"""An Unleash server's flags as a :class:`~canaryws.adapters.flags.backend.FlagBackend`: one
project and environment, changed through the Admin API
(:class:`~canaryws.adapters.flags.unleash_admin.UnleashAdmin`)."""

from __future__ import annotations

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
from canaryws.adapters.flags.unleash_admin import ServerFlags, UnleashAdmin
from canaryws.settings import DEFAULT_UNLEASH_ENVIRONMENT, DEFAULT_UNLEASH_PROJECT


class UnleashAdminBackend:
    """The flags of one project and environment of an Unleash server, via its Admin API.

    The revision is the flagdoc revision of the environment's client-features
    document (canonical form, see ``unleash_projection``): the revision ``export`` writes.
    """

    source = "unleash"

    def __init__(
        self,
        base_url: str,
        admin_token: str,
        *,
        environment: str = DEFAULT_UNLEASH_ENVIRONMENT,
        project: str = DEFAULT_UNLEASH_PROJECT,
    ) -> None:
        self._admin = UnleashAdmin(base_url, admin_token, environment=environment, project=project)

    @property
    def location(self) -> str:
        return self._admin.url

    @property
    def where(self) -> str:
        """The location for people: server, project and environment."""
        return f"Unleash {self._admin.url} (project {self._admin.project}, environment {self._admin.environment})"

    def describe(self) -> FlagListing:
        flags = self._admin.flags()
        return listing_of(self.source, self.location, flags.document, project=self._admin.project,
                          environment=self._admin.environment, fatal=flags.problems)

    def set_rollout(self, flag: str, percent: int) -> FlagChange:
        change = self._admin.set_rollout(flag, percent)
        notes = other_strategies_notes(change.after.document, flag) + _server_notes(change.after)
        return self._change(flag, change.before, change.after, notes)

    def set_enabled(self, flag: str, enabled: bool) -> FlagChange:
        change = self._admin.set_enabled(flag, enabled)
        notes: tuple[str, ...] = ()
        before, after = row_of(change.before.document, flag), row_of(change.after.document, flag)
        if enabled and before.strategies != after.strategies:
            notes = (
                f"{flag} had no active strategy in environment {self._admin.environment}, so Unleash added "
                f"its default one: {after.strategies}",
            )
        return self._change(flag, change.before, change.after, notes + _server_notes(change.after))

    def archive(self, flag: str) -> FlagArchive:
        change = self._admin.archive(flag)
        return FlagArchive(
            flag,
            row_of(change.before.document, flag),
            change.before.document.revision,
            change.after.document.revision,
            self.where,
            _server_notes(change.after),
        )

    def _change(self, flag: str, old: ServerFlags, new: ServerFlags, notes: tuple[str, ...]) -> FlagChange:
        return FlagChange(
            flag=flag,
            before=row_of(old.document, flag),
            after=row_of(new.document, flag),
            old_revision=old.document.revision,
            new_revision=new.document.revision,
            location=self.where,
            notes=notes,
        )


def _server_notes(flags: ServerFlags) -> tuple[str, ...]:
    if flags.problems:
        return (f"this is not a flags document canaryws can use: {'; '.join(flags.problems[:5])}",)
    return problem_notes(assess(flags.document))
