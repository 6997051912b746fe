"""FileFlagSource against real files and the real watcher (watchfiles/inotify)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest

from canaryws.adapters.flags.file_source import FileFlagSource
from canaryws.adapters.flags.file_store import read_document, write_document_atomic
from canaryws.core.cohorts import STRICT_FLAG
from canaryws.core.flagdoc import (
    FlagsDocument,
    FlagsDocumentError,
    encode_flags_document,
    with_enabled,
    with_rollout,
)

REPO_FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"
APPLY_WITHIN = 1.0  # seconds: the promise made to operators
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    path = tmp_path / "features.json"
    path.write_bytes(REPO_FLAGS.read_bytes())
    return path


def shipped() -> FlagsDocument:
    return read_document(REPO_FLAGS)


def rollout(percent: int) -> FlagsDocument:
    return with_rollout(shipped(), STRICT_FLAG, percent)


class Recorder:
    def __init__(self) -> None:
        self.results: list[str] = []

    def __call__(self, result: str) -> None:
        self.results.append(result)


async def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def at_revision(source: FileFlagSource, revision: str) -> Callable[[], bool]:
    return lambda: source.revision == revision


def watching(source: FileFlagSource, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` while ``source.run()`` watches; then cancel the watcher."""

    async def main() -> None:
        task = asyncio.create_task(source.run())
        await asyncio.sleep(0.3)  # let the watcher start
        try:
            await scenario()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())


# ------------------------------------------------------------------------ load


def test_load_and_status(flags_file: Path) -> None:
    now = [1_700_000_000.0]
    source = FileFlagSource(flags_file, clock=lambda: now[0])
    snapshot = source.load()
    assert source.current is snapshot
    assert source.revision == snapshot.revision == shipped().revision
    assert snapshot.source == "file"
    now[0] += 2.5
    assert source.status() == {
        "source": "file",
        "path": str(flags_file),
        "revision": shipped().revision,
        "loaded_at": "2023-11-14T22:13:20.000Z",
        "age_seconds": 2.5,
        "state": "ok",
        "last_error": None,
        "last_error_at": None,
        "cohort_flags": {"records.strict": {"state": "ok"}, "records.shadow": {"state": "disabled"}},
        "problems": {},
    }


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "features.json"
    with pytest.raises(FlagsDocumentError, match=f"{missing}: cannot read flags file: No such file"):
        FileFlagSource(missing).load()


def test_load_refuses_a_file_whose_strict_flag_cannot_be_evaluated(flags_file: Path) -> None:
    flags_file.write_text('{"version": 2, "features": [{"name": "records.strict", "enabled": true, '
                          '"strategies": [{"name": "x"}]}, '
                          '{"name": "a", "enabled": true, "strategies": [{"name": "y"}]}]}')
    with pytest.raises(
        FlagsDocumentError, match=f"{flags_file}: .*records.strict: features\\[0\\].strategies\\[0\\].name: "
                                  "strategy 'x' is not one the Unleash engine implements"
    ):
        FileFlagSource(flags_file).load()


def test_load_accepts_problems_in_other_flags(flags_file: Path) -> None:
    flags_file.write_text('{"version": 2, "features": [{"name": "records.strict", "enabled": true, '
                          '"strategies": []}, {"name": "a", "enabled": true, "strategies": [{"name": "y"}]}]}')
    source = FileFlagSource(flags_file)
    assert source.load().cohort_state("records.strict") == "ok"
    assert source.status()["state"] == "ok"
    assert source.status()["problems"] == {"custom_strategy": 1}


def test_current_before_load_is_an_error(flags_file: Path) -> None:
    with pytest.raises(RuntimeError, match="has not been loaded"):
        _ = FileFlagSource(flags_file).current


# ---------------------------------------------------------------- reload (SIGHUP)


def test_reload_reports_ok_unchanged_invalid(flags_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    source = FileFlagSource(flags_file, on_reload=recorder)
    source.load()
    assert source.reload() == "unchanged"
    flags_file.write_bytes(encode_flags_document(rollout(30)))
    assert source.reload() == "ok"
    assert source.revision == rollout(30).revision
    flags_file.write_text("{ not json")
    with caplog.at_level(logging.ERROR, logger="canaryws.flags"):
        assert source.reload() == "invalid"
    assert source.revision == rollout(30).revision
    assert asyncio.run(source.reload_now()) == "invalid"
    assert recorder.results == ["unchanged", "ok", "invalid", "invalid"]
    (record, *_) = caplog.records
    assert record.getMessage() == (
        f"flags file rejected, keeping revision {rollout(30).revision}: "
        f"{flags_file}: invalid JSON at line 1 column 3: Expecting property name enclosed in double quotes"
    )
    assert record.exc_info is None


def test_a_failing_callback_does_not_break_reloading(flags_file: Path) -> None:
    def broken(result: str) -> None:
        raise RuntimeError("metrics are down")

    source = FileFlagSource(flags_file, on_reload=broken)
    source.load()
    flags_file.write_bytes(encode_flags_document(rollout(40)))
    assert source.reload() == "ok"
    assert source.revision == rollout(40).revision


# ------------------------------------------------------------------ hot reload


def test_an_in_place_edit_is_applied_within_a_second(flags_file: Path) -> None:
    recorder = Recorder()
    source = FileFlagSource(flags_file, on_reload=recorder)
    source.load()
    target = rollout(25)

    async def scenario() -> None:
        flags_file.write_bytes(encode_flags_document(target))
        took = await wait_until(lambda: source.revision == target.revision, APPLY_WITHIN)
        assert took < APPLY_WITHIN
        evaluation = source.current.evaluate(STRICT_FLAG, {"userId": "client-1"})
        assert evaluation.version == target.revision
        assert evaluation.reason == "split"

    watching(source, scenario)
    assert "ok" in recorder.results
    assert source.status()["state"] == "ok"


def test_an_atomic_replace_is_applied_within_a_second(flags_file: Path) -> None:
    source = FileFlagSource(flags_file)
    source.load()

    async def scenario() -> None:
        for percent in (1, 5, 25):
            target = rollout(percent)
            write_document_atomic(flags_file, target)
            await wait_until(at_revision(source, target.revision), APPLY_WITHIN)

    watching(source, scenario)


def test_an_invalid_edit_keeps_the_last_good_flags_until_fixed(
    flags_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    source = FileFlagSource(flags_file, on_reload=recorder)
    good = source.load()
    fixed = with_enabled(shipped(), "records.shadow", True)

    async def scenario() -> None:
        flags_file.write_text(flags_file.read_text().replace('"version": 2', '"version": "2"', 1))
        await wait_until(lambda: source.status()["state"] == "degraded", APPLY_WITHIN)
        status = source.status()
        assert status["revision"] == good.revision
        assert source.current is good
        assert 'version: Input should be a valid integer (got "2")' in status["last_error"]
        datetime.fromisoformat(status["last_error_at"])
        assert recorder.results == ["invalid"]

        write_document_atomic(flags_file, fixed)
        await wait_until(lambda: source.status()["state"] == "ok", APPLY_WITHIN)
        assert source.revision == fixed.revision
        assert source.status()["last_error"] is not None  # kept for the record

    with caplog.at_level(logging.INFO, logger="canaryws.flags"):
        watching(source, scenario)
    errors = [r for r in caplog.records if r.name == "canaryws.flags" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "\n" not in errors[0].getMessage()
    assert errors[0].exc_info is None
    assert recorder.results[-1] == "ok"


def test_a_deleted_file_keeps_the_last_good_flags_and_recovers(
    flags_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = FileFlagSource(flags_file)
    good = source.load()
    target = rollout(60)

    async def scenario() -> None:
        flags_file.unlink()
        await wait_until(lambda: source.status()["state"] == "degraded", APPLY_WITHIN)
        assert "No such file or directory" in source.status()["last_error"]
        assert source.current is good
        await asyncio.sleep(2.2)  # several poll intervals: the error is logged once
        flags_file.write_bytes(encode_flags_document(target))
        await wait_until(lambda: source.revision == target.revision, APPLY_WITHIN)
        assert source.status()["state"] == "ok"

    with caplog.at_level(logging.ERROR, logger="canaryws.flags"):
        watching(source, scenario)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_a_touch_without_change_is_unchanged(flags_file: Path) -> None:
    recorder = Recorder()
    source = FileFlagSource(flags_file, on_reload=recorder)
    source.load()

    async def scenario() -> None:
        os.utime(flags_file)
        await wait_until(lambda: recorder.results == ["unchanged"], APPLY_WITHIN + 0.5)

    watching(source, scenario)


def test_a_configmap_style_symlink_swap_is_applied(tmp_path: Path) -> None:
    """Kubernetes swaps a ``..data`` symlink; no event names ``features.json`` itself."""
    for version, percent in (("..v1", 0), ("..v2", 70)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "features.json").write_bytes(encode_flags_document(rollout(percent)))
    (tmp_path / "..data").symlink_to("..v1")
    flags_file = tmp_path / "features.json"
    flags_file.symlink_to("..data/features.json")
    source = FileFlagSource(flags_file)
    source.load()
    target = rollout(70)

    async def scenario() -> None:
        (tmp_path / "..data_tmp").symlink_to("..v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        await wait_until(lambda: source.revision == target.revision, APPLY_WITHIN + 0.5)

    watching(source, scenario)


def test_a_change_the_watcher_cannot_see_is_caught_by_polling(tmp_path: Path) -> None:
    """The file is a symlink into another directory: only the stat check sees edits."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.json"
    real.write_bytes(REPO_FLAGS.read_bytes())
    watched = tmp_path / "watched"
    watched.mkdir()
    flags_file = watched / "features.json"
    flags_file.symlink_to(real)
    source = FileFlagSource(flags_file, poll_interval=0.5)
    source.load()
    target = rollout(80)

    async def scenario() -> None:
        real.write_bytes(encode_flags_document(target))
        await wait_until(lambda: source.revision == target.revision, APPLY_WITHIN + 0.5)

    watching(source, scenario)


def test_a_replaced_directory_is_watched_again(tmp_path: Path) -> None:
    directory = tmp_path / "flags"
    directory.mkdir()
    flags_file = directory / "features.json"
    flags_file.write_bytes(REPO_FLAGS.read_bytes())
    source = FileFlagSource(flags_file)
    good = source.load()

    async def scenario() -> None:
        shutil.rmtree(directory)
        await wait_until(lambda: source.status()["state"] == "degraded", APPLY_WITHIN)
        assert source.current is good
        directory.mkdir()
        flags_file.write_bytes(encode_flags_document(rollout(10)))
        await wait_until(lambda: source.revision == rollout(10).revision, APPLY_WITHIN + 0.5)
        await asyncio.sleep(1.2)  # the watcher has moved to the new directory by now
        flags_file.write_bytes(encode_flags_document(rollout(20)))
        took = await wait_until(lambda: source.revision == rollout(20).revision, APPLY_WITHIN)
        assert took < 0.5  # an event, not the once-a-second stat check

    watching(source, scenario)
    assert source.status()["state"] == "ok"


def test_cancelling_the_watcher_is_prompt(flags_file: Path) -> None:
    source = FileFlagSource(flags_file)
    source.load()

    async def main() -> float:
        task = asyncio.create_task(source.run())
        await asyncio.sleep(0.3)
        start = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.5


def test_run_requires_load(flags_file: Path) -> None:
    with pytest.raises(RuntimeError, match="has not been loaded"):
        asyncio.run(FileFlagSource(flags_file).run())
