"""Suite-wide fixtures."""

from __future__ import annotations

import pytest

UNLEASH_VARIABLES = ("UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN", "UNLEASH_ENVIRONMENT",
                     "UNLEASH_REFRESH_INTERVAL", "UNLEASH_PROJECT")


@pytest.fixture(autouse=True)
def _no_ambient_unleash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer shell with ``deploy/unleash/up`` exported must not turn file-backend
    tests into server tests (or let them change that server). Tests that want a server
    pass its variables explicitly."""
    for name in UNLEASH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
