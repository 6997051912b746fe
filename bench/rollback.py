"""Time to rollback: from the flag change to the last open connection answering under
the new cohort, at N open connections, for the file backend and the Unleash backend.

Method. A real ``canaryws serve`` (subprocess) with records.strict at 100 %; N client
connections (one asyncio process, the ``websockets`` client) each send a one-record batch
every ``--cadence`` seconds and record when they first receive a ``cohort`` frame whose
strategy is lenient. The flag is disabled (file: an atomic rewrite of the flags file;
server: ``POST …/environments/development/off`` on the Admin API) at t0. We report, per
backend, the time from t0 to the first and the last connection switching, and the
percentiles. A connection can only switch when it sends its next batch, so up to one
cadence of the result is the client's own pacing, not the service's.

Usage:  .venv/bin/python bench/rollback.py [--connections 1000] [--cadence 0.25] [--backend file|unleash|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from websockets.asyncio.client import connect

from harness import Service, UnleashServer, flags_doc


async def measure(service: Service, n: int, cadence: float, flip: Any) -> dict[str, float]:
    opened = 0
    all_open = asyncio.Event()
    go = asyncio.Event()
    t0 = 0.0
    switched: list[float] = []

    async def client(i: int) -> None:
        nonlocal opened
        headers = {"Authorization": f"Bearer {service.token(f'rb-{i}')}"}
        async with connect(service.ws_url, additional_headers=headers, open_timeout=60, max_queue=64) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["cohort"]["strategy"] == "strict", welcome
            opened += 1
            if opened == n:
                all_open.set()
            await go.wait()
            await asyncio.sleep(cadence * (i / n))  # spread the clients over one cadence
            k = 0
            while True:
                k += 1
                await ws.send(json.dumps({"type": "batch", "id": f"{i}-{k}", "records": ["x"]}))
                frame = json.loads(await ws.recv())
                if frame["type"] == "cohort":
                    assert frame["cohort"]["strategy"] == "lenient"
                    switched.append(time.monotonic() - t0)
                    await ws.recv()  # its result
                    return
                await asyncio.sleep(cadence)

    tasks = [asyncio.create_task(client(i)) for i in range(n)]
    await asyncio.wait_for(all_open.wait(), 300)
    go.set()
    await asyncio.sleep(2 * cadence)  # steady state
    t0 = time.monotonic()
    await asyncio.to_thread(flip)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    switched.sort()
    return {
        "connections": n,
        "first_s": switched[0],
        "p50_s": statistics.median(switched),
        "p99_s": switched[int(0.99 * (len(switched) - 1))],
        "last_s": switched[-1],
    }


def run_file(n: int, cadence: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, Service(Path(tmp), flags_doc(strict_rollout=100)) as service:
        return asyncio.run(measure(service, n, cadence, lambda: service.write_flags(
            flags_doc(strict_rollout=100, strict_enabled=False))))


def run_unleash(n: int, cadence: float, refresh: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = UnleashServer(Path(tmp)).up()
        try:
            server.set_enabled("records.strict", True)
            server.set_rollout("records.strict", 100)
            env = {**server.service_env, "UNLEASH_REFRESH_INTERVAL": str(refresh)}
            with Service(Path(tmp) / "svc", flags_doc(strict_rollout=100), env=env) as service:
                from canaryws.core.flagdoc import validate_flags_data

                want = validate_flags_data(server.client_features()).revision
                service.wait_for_revision(lambda st: st["revision"] == want, timeout=30)
                return asyncio.run(measure(service, n, cadence,
                                           lambda: server.set_enabled("records.strict", False)))
        finally:
            server.down(purge=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--cadence", type=float, default=0.25)
    parser.add_argument("--refresh", type=float, default=1.0, help="UNLEASH_REFRESH_INTERVAL for the server backend")
    parser.add_argument("--backend", choices=["file", "unleash", "both"], default="both")
    args = parser.parse_args()
    results = {}
    if args.backend in ("file", "both"):
        results["file"] = run_file(args.connections, args.cadence)
    if args.backend in ("unleash", "both"):
        results[f"unleash (polling, refresh {args.refresh:g}s)"] = run_unleash(args.connections, args.cadence,
                                                                              args.refresh)
    print(f"{'backend':34} {'conns':>6} {'first':>7} {'p50':>7} {'p99':>7} {'last':>7}  (seconds after the change;"
          f" client cadence {args.cadence:g}s)")
    for name, r in results.items():
        print(f"{name:34} {r['connections']:>6} {r['first_s']:>7.2f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f}"
              f" {r['last_s']:>7.2f}")


if __name__ == "__main__":
    main()
