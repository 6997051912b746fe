"""canaryws taking its flags from a real Unleash server (started by deploy/unleash/up)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness import Service, UnleashServer, cohorts_of, flags_doc, free_port, send_batch

pytestmark = pytest.mark.integration

REFRESH = 1.0


def _service(root: Path, unleash: UnleashServer, **env: str) -> Service:
    return Service(root, flags_doc(strict_rollout=0), env={**unleash.service_env,
                                                          "UNLEASH_REFRESH_INTERVAL": str(REFRESH), **env})


def _wait_server_revision(service: Service, unleash: UnleashServer, timeout: float = 10.0) -> dict[str, object]:
    """Wait until the service serves the flags the server has now."""
    from canaryws.core.flagdoc import validate_flags_data

    want = validate_flags_data(unleash.client_features()).revision
    status = service.wait_for_revision(lambda st: st["revision"] == want, timeout=timeout)
    assert status["revision"] == want, status
    return status




def test_rollout_share_and_stickiness_from_the_server(tmp_path: Path, unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 25)
    with _service(tmp_path, unleash) as service:
        status = _wait_server_revision(service, unleash)
        assert status["source"] == "unleash" and status["flags_from"] == "server" and status["state"] == "ok"
        clients = [f"fleet-{i:05d}" for i in range(2000)]
        first = asyncio.run(cohorts_of(service, clients))
        share = sum(s == "strict" for s in first.values()) / len(first)
        assert 0.22 <= share <= 0.28, share
        sample = clients[:200]
        for _ in range(2):
            again = asyncio.run(cohorts_of(service, sample))
            assert again == {c: first[c] for c in sample}
    assert "Traceback" not in service.logs()


def test_disabling_strict_reaches_open_connections_within_refresh_plus_one_second(
        tmp_path: Path, unleash: UnleashServer) -> None:
    unleash.set_rollout("records.strict", 100)
    unleash.set_enabled("records.strict", True)
    with _service(tmp_path, unleash) as service:
        _wait_server_revision(service, unleash)

        async def scenario() -> list[float]:
            ready = asyncio.Event()
            opened: list[int] = []
            switched: list[float] = []
            t0: list[float] = []

            async def connection(i: int) -> None:
                async with service.client(f"open-{i}") as (ws, welcome):
                    assert welcome["cohort"]["strategy"] == "strict"
                    opened.append(i)
                    if len(opened) == 120:
                        ready.set()
                    await ready.wait()
                    n = 0
                    while True:
                        n += 1
                        frames = await send_batch(ws, f"{i}-{n}", [""])
                        if frames[0]["type"] == "cohort":
                            assert frames[0]["cohort"]["strategy"] == "lenient"
                            assert frames[1]["strategy"] == "lenient"
                            switched.append(time.monotonic() - t0[0])
                            return
                        assert frames[0]["strategy"] == "strict"
                        if t0 and time.monotonic() - t0[0] > 15:
                            raise AssertionError("connection never switched")
                        await asyncio.sleep(0.1)

            tasks = [asyncio.create_task(connection(i)) for i in range(120)]
            await asyncio.wait_for(ready.wait(), 60)
            await asyncio.sleep(0.3)
            t0.append(time.monotonic())
            await asyncio.to_thread(unleash.set_enabled, "records.strict", False)
            await asyncio.gather(*tasks)
            return switched

        switched = asyncio.run(scenario())
    assert len(switched) == 120
    # refresh interval + 1 s, plus the batch cadence of this client (0.1 s) and scheduling slack
    assert max(switched) <= REFRESH + 1.0 + 0.3, sorted(switched)[-5:]


def test_server_outage_keeps_last_flags_and_degrades_readiness_then_recovers(
        tmp_path: Path, unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 100)
    with _service(tmp_path, unleash) as service:
        served = _wait_server_revision(service, unleash)["revision"]
        unleash.down()
        try:
            status = service.wait_for_revision(lambda st: st["state"] == "degraded", timeout=15)
            assert status["state"] == "degraded" and status["stale"] is True
            assert status["revision"] == served
            assert status["age_seconds"] >= REFRESH
            ready = service.get("/readyz")
            assert ready.status_code == 200

            async def still_serving() -> None:
                async with service.client("outage-1") as (ws, welcome):
                    assert welcome["cohort"]["strategy"] == "strict"
                    frames = await send_batch(ws, "b", [""])
                    assert frames[-1]["rejected"] == [{"index": 0, "code": "empty"}]

            asyncio.run(still_serving())
            time.sleep(3 * REFRESH)
            warnings = [r for r in service.log_records() if r.get("logger") == "canaryws.flags"
                        and r.get("level") == "WARNING" and "no answer from Unleash" in r.get("message", "")]
            assert len(warnings) == 1, warnings
            assert "Traceback" not in service.logs()
        finally:
            unleash.up()
        unleash.set_rollout("records.strict", 0)
        status = _wait_server_revision(service, unleash, timeout=15)
        assert status["state"] == "ok" and status["stale"] is False, (status, service.logs()[-3000:])

        async def lenient_now() -> None:
            async with service.client("outage-1") as (_, welcome):
                assert welcome["cohort"]["strategy"] == "lenient"

        asyncio.run(lenient_now())


def test_serves_from_the_bootstrap_when_the_server_is_down_at_start(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    env = {"UNLEASH_URL": dead, "UNLEASH_API_TOKEN": "default:development.unused", "UNLEASH_REFRESH_INTERVAL": "1",
           "CANARYWS_UNLEASH_STARTUP_WAIT": "1"}
    started = time.monotonic()
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        assert time.monotonic() - started < 15
        status = service.get("/readyz").json()["flags"]
        assert status["source"] == "unleash" and status["flags_from"] == "bootstrap"

        async def scenario() -> None:
            async with service.client("boot-1") as (_, welcome):
                assert welcome["cohort"]["strategy"] == "strict"

        asyncio.run(scenario())
        status = service.wait_for_revision(lambda st: st["state"] == "degraded", timeout=10)
        assert status["stale"] is True
    assert "default:development.unused" not in service.logs()
    assert "Traceback" not in service.logs()
