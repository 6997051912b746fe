"""Which :class:`~canaryws.adapters.flags.backend.FlagBackend` the ``flags`` commands and the
guard use: an Unleash server's Admin API when ``UNLEASH_URL`` and ``UNLEASH_ADMIN_TOKEN``
are set (project ``UNLEASH_PROJECT``, environment ``UNLEASH_ENVIRONMENT``; see
:class:`canaryws.settings.UnleashSettings`), else the flags file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from canaryws.adapters.flags.backend import FlagBackend
from canaryws.adapters.flags.file_backend import FileFlagBackend
from canaryws.adapters.flags.unleash_backend import UnleashAdminBackend
from canaryws.settings import UnleashSettings


def select_backend(flags_path: Path, unleash: UnleashSettings) -> FlagBackend:
    """Unleash if ``unleash`` has a URL and an admin token, else the flags file at ``flags_path``."""
    if unleash.url is not None and unleash.admin_token is not None:
        return UnleashAdminBackend(
            unleash.url, unleash.admin_token, environment=unleash.environment, project=unleash.project
        )
    return FileFlagBackend(flags_path)


def open_backend(flags_path: Path, environ: Mapping[str, str] | None = None) -> FlagBackend:
    """:func:`select_backend` with the ``UNLEASH_*`` variables of ``environ`` (default ``os.environ``)."""
    return select_backend(flags_path, UnleashSettings.from_env(environ))
