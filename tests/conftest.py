"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import UnleashServer

UNLEASH_VARIABLES = ("UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN", "UNLEASH_ENVIRONMENT",
                     "UNLEASH_REFRESH_INTERVAL", "UNLEASH_PROJECT")


@pytest.fixture(autouse=True)
def _no_ambient_unleash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer shell with ``deploy/unleash/up`` exported must not turn file-backend
    tests into server tests (or let them change that server). Tests that want a server
    pass its variables explicitly."""
    for name in UNLEASH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def unleash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnleashServer]:
    """A real unleash-server for the module (``deploy/unleash/up``), purged afterwards."""
    server = UnleashServer(tmp_path_factory.mktemp("unleash")).up()
    try:
        yield server
    finally:
        server.down(purge=True)
