"""The app's start-up: what is alive once it is up leaves the garbage collector's scans."""

from __future__ import annotations

import asyncio
import gc
import shutil
from pathlib import Path

from canaryws.app import build_service
from canaryws.settings import Settings

FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"


def test_objects_alive_after_startup_are_frozen_and_later_ones_are_not(tmp_path: Path) -> None:
    shutil.copy(FLAGS, tmp_path / "features.json")
    settings = Settings.from_env(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
        flags_path=tmp_path / "features.json",
        data_dir=tmp_path / "data",
    )
    service = build_service(settings)
    app = service.fastapi
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    async def during_startup() -> tuple[int, bool, bool]:
        async with app.router.lifespan_context(app):
            later = [object()]  # a container made after start-up
            alive = {id(o) for o in gc.get_objects()}  # generations 0-2, not the permanent one
            return gc.get_freeze_count(), id(service.records) in alive, id(later) in alive

    try:
        frozen, endpoint_scanned, later_scanned = asyncio.run(during_startup())
    finally:
        gc.unfreeze()
    assert frozen > 10_000  # the modules, the SDK and the app's objects
    assert not endpoint_scanned  # built at start-up: in the permanent generation
    assert later_scanned  # created afterwards: collected as usual
