"""Cohorts decided by the Unleash engine, pinned per connection, switched on flag changes."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from harness import Service, cohorts_of, flags_doc, metric_value, send_batch

pytestmark = pytest.mark.integration




@pytest.mark.parametrize(("rollout", "low", "high"), [(0, 0.0, 0.0), (25, 0.20, 0.30), (100, 1.0, 1.0)])
def test_rollout_share(tmp_path: Path, rollout: int, low: float, high: float) -> None:
    clients = [f"tenant-{i:04d}" for i in range(400)]
    with Service(tmp_path, flags_doc(strict_rollout=rollout)) as service:
        cohorts = asyncio.run(cohorts_of(service, clients))
    share = sum(s == "strict" for s in cohorts.values()) / len(cohorts)
    assert low <= share <= high, share


def test_cohort_is_sticky_across_reconnects(tmp_path: Path) -> None:
    clients = [f"sticky-{i}" for i in range(60)]
    with Service(tmp_path, flags_doc(strict_rollout=50)) as service:
        first = asyncio.run(cohorts_of(service, clients))
        for _ in range(3):
            assert asyncio.run(cohorts_of(service, clients)) == first
    assert 0 < sum(s == "strict" for s in first.values()) < len(clients)


def test_ramping_up_never_moves_a_strict_client_back(tmp_path: Path) -> None:
    clients = [f"ramp-{i}" for i in range(200)]
    with Service(tmp_path, flags_doc(strict_rollout=10)) as service:
        before = asyncio.run(cohorts_of(service, clients))
        old_revision = service.get("/readyz").json()["flags"]["revision"]
        service.write_flags(flags_doc(strict_rollout=40))
        status = service.wait_for_revision(lambda st: st["revision"] != old_revision and st["state"] == "ok")
        assert status["revision"] != old_revision
        after = asyncio.run(cohorts_of(service, clients))
    assert all(after[c] == "strict" for c, s in before.items() if s == "strict")
    assert sum(s == "strict" for s in after.values()) > sum(s == "strict" for s in before.values())


def test_open_connection_switches_at_a_batch_boundary(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=0)) as service:
        async def scenario() -> None:
            async with service.client("switcher") as (ws, welcome):
                assert welcome["cohort"]["strategy"] == "lenient"
                old_revision = welcome["cohort"]["flags_revision"]
                frames = await send_batch(ws, "b-1", ["", " x "])
                assert [f["type"] for f in frames] == ["result"]
                assert frames[0]["strategy"] == "lenient"

                # an unrelated edit changes the revision but not this client's treatment: no cohort frame
                doc = flags_doc(strict_rollout=0)
                doc["features"][0]["description"] = "edited"
                service.write_flags(doc)
                edited = service.wait_for_revision(lambda st: st["revision"] != old_revision)["revision"]
                assert edited != old_revision
                frames = await send_batch(ws, "b-2", [""])
                assert [f["type"] for f in frames] == ["result"]

                t0 = time.monotonic()
                service.write_flags(flags_doc(strict_rollout=100))
                # the change is applied within 1 s of the write (hot reload)
                while True:
                    frames = await send_batch(ws, f"b-{time.monotonic()}", ["", " x "])
                    if frames[0]["type"] == "cohort" or time.monotonic() - t0 > 3:
                        break
                    await asyncio.sleep(0.05)
                assert time.monotonic() - t0 < 1.5
                assert [f["type"] for f in frames] == ["cohort", "result"]
                cohort_frame, result = frames
                assert cohort_frame["reason"] == "flags_changed"
                assert cohort_frame["cohort"]["strategy"] == "strict"
                assert cohort_frame["cohort"]["flags_revision"] == service.get("/readyz").json()["flags"]["revision"]
                assert service.get("/readyz").json()["flags"]["state"] == "ok"
                assert result["strategy"] == "strict"
                assert result["rejected"] == [{"index": 0, "code": "empty"}]
                assert result["accepted"] == [{"index": 1, "value": "x"}]
                # the kill switch reaches the open connection the same way
                service.write_flags(flags_doc(strict_rollout=100, strict_enabled=False))
                frames = await until_cohort_frame(ws)
                assert frames[0]["cohort"]["strategy"] == "lenient"
                assert frames[1]["strategy"] == "lenient" and frames[1]["skipped"] == [{"index": 0, "reason": "empty"}]

        asyncio.run(scenario())


async def until_cohort_frame(ws: ClientConnection, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Batches every 50 ms until one is answered after a cohort frame (or ``timeout`` s): its frames."""
    started = time.monotonic()
    while True:
        frames = await send_batch(ws, f"k-{time.monotonic()}", [""])
        if frames[0]["type"] == "cohort" or time.monotonic() - started > timeout:
            return frames
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "broken",
    [
        "{ this is not json",
        json.dumps([1, 2, 3]),
        json.dumps({"version": 2, "features": "nope"}),
    ],
    ids=["bad-json", "wrong-top-level", "wrong-shape"],
)
def test_broken_flags_file_keeps_the_last_good_flags(tmp_path: Path, broken: str) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        good = service.get("/readyz").json()["flags"]["revision"]
        service.write_flags(broken)
        status = service.wait_for_revision(lambda st: st["state"] == "degraded")
        assert status["state"] == "degraded"
        assert status["revision"] == good
        assert status["last_error"]
        ready = service.get("/readyz")
        assert ready.status_code == 200

        async def scenario() -> None:
            async with service.client("after-break") as (ws, welcome):
                assert welcome["cohort"]["strategy"] == "strict"
                assert welcome["cohort"]["flags_revision"] == good
                frames = await send_batch(ws, "b", [""])
                assert frames[-1]["rejected"] == [{"index": 0, "code": "empty"}]

        asyncio.run(scenario())
        metrics = service.get("/metrics").text
        assert 'result="invalid"' in metrics and "canaryws_flags_reloads" in metrics
        errors = [r for r in service.log_records() if r.get("level") == "ERROR" and r.get("logger") == "canaryws.flags"]
        assert errors, service.logs()
        assert "Traceback" not in service.logs()
        # recovery: a good document is applied and the state is ok again
        service.write_flags(flags_doc(strict_rollout=0))
        status = service.wait_for_revision(lambda st: st["state"] == "ok" and st["revision"] != good)
        assert status["state"] == "ok" and status["revision"] != good


def test_a_strict_flag_the_engine_cannot_evaluate_is_held_and_disabling_it_still_applies(tmp_path: Path) -> None:
    """A document whose records.strict has a custom strategy (another team's, say) is applied
    except for records.strict, which keeps its last good definition; the kill switch applies."""
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        good = service.get("/readyz").json()["flags"]["revision"]
        broken = flags_doc(strict_rollout=0)
        broken["features"][0]["strategies"].append({"name": "myCustomStrategy", "parameters": {}})
        broken["features"].append({"name": "payments.other", "enabled": True, "strategies": [
            {"name": "default", "constraints": [{"contextName": "userId", "operator": "REGEX", "value": "^a"}]}]})
        service.write_flags(broken)
        status = service.wait_for_revision(lambda st: st["revision"] != good)
        assert status["state"] == "degraded"
        assert status["cohort_flags"]["records.strict"] == {
            "state": "held", "since": status["cohort_flags"]["records.strict"]["since"], "kept_revision": good,
            "problems": ["custom_strategy"]}
        assert service.get("/readyz").status_code == 200
        assert service.get("/readyz?require=cohort-flags").status_code == 503
        assert service.get("/readyz?require=everything").status_code == 400

        async def scenario() -> None:
            async with service.client("after-break") as (ws, welcome):
                assert welcome["cohort"]["strategy"] == "strict"  # the kept 100 %, not the served 0 %
                frames = await send_batch(ws, "b", [""])
                assert frames[-1]["rejected"] == [{"index": 0, "code": "empty"}]
                # the kill switch, on the same broken definition, reaches the open connection
                killed = copy.deepcopy(broken)
                killed["features"][0]["enabled"] = False
                service.write_flags(killed)
                frames = await until_cohort_frame(ws)
                assert frames[0]["cohort"]["strategy"] == "lenient"

        metrics = service.get("/metrics").text
        assert metric_value(metrics, "canaryws_flags_cohort_held", flag="records.strict", source="file") == 1
        assert metric_value(metrics, "canaryws_flags_problems", kind="custom_strategy", source="file") == 1
        asyncio.run(scenario())
        status = service.get("/readyz").json()["flags"]
        assert status["state"] == "ok" and status["cohort_flags"]["records.strict"] == {"state": "disabled"}
        assert service.get("/readyz?require=cohort-flags").status_code == 200
        metrics = service.get("/metrics").text
        assert metric_value(metrics, "canaryws_flags_cohort_held", flag="records.strict", source="file") == 0
        errors = [r for r in service.log_records() if r.get("level") == "ERROR" and r.get("logger") == "canaryws.flags"]
        assert len(errors) == 1 and errors[0]["message"].startswith("records.strict as served in revision")
        assert "Traceback" not in service.logs()


def test_service_refuses_to_start_on_an_invalid_flags_file(tmp_path: Path) -> None:
    service = Service(tmp_path, "{ nope")
    with pytest.raises(RuntimeError, match="flags"):
        service.start(timeout=20)
    assert service.proc is not None and service.proc.returncode != 0
