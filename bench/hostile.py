"""Hostile clients: what the most expensive frames cost, and what one client id sending them at
its limits does to another client's latency (docs/benchmarks.md, "Worst-case frames").

    .venv/bin/python bench/hostile.py                     # the full run (about 4 minutes)
    .venv/bin/python bench/hostile.py --quick --json out.json

1. **Frames** (in process, no server): each frame shape below, at most the default limits
   (``CANARYWS_MAX_FRAME_BYTES`` 1 MiB, ``CANARYWS_MAX_RECORDS`` 10,000), through the whole
   per-frame path of the service (``contract.decode_batch``, the strategy, the answer's
   encoding), for both strategies: CPU time per frame (median of ``--reps`` timings of 3
   frames each, with the spread), and per MiB of frame. The typical 30-record frame of
   ``make bench`` is the baseline of the same run.
2. **Victim under attack** (real servers, ``canaryws serve`` on loopback): a victim client (its
   own client id, one connection) sends the typical batch every 10 ms and times each answer,
   first with nobody else connected (``quiet``), then while an attacker (a separate process:
   one client id, 16 connections, the per-client cap) sends one expensive shape closed-loop
   on every connection, as fast as the server takes it. Two servers run side by side: one with
   the default limits (``defaults``) and one with the work budgets turned off
   (``CANARYWS_MAX_BYTES_PER_SECOND=0``, ``CANARYWS_MAX_CLIENT_BYTES_PER_SECOND=0``:
   ``no budgets``), so the run shows what the budgets buy. Both lift the handshake rates, since
   every client here is 127.0.0.1, and the frame rate (500/s per connection) stays on. Each
   ``--rounds`` round runs every (server, phase) once for ``--seconds``; the report gives the
   victim's p50 and p99 per phase (median over rounds, and the range), the attacker's rate,
   and the server's CPU.

The attacker's shapes are the worst per frame (``too_many_zeros``: 524,000 one-character
records, refused as ``too_many_records`` after they are read) and the worst per MiB
(``empty_strings_10k``: 10,000 records in 29 KiB, every one rejected with a reason).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from load import batch_records  # noqa: E402

MIB = 1024 * 1024
MAX_FRAME_BYTES = MIB  # the defaults of canaryws.settings.Settings
MAX_RECORDS = 10_000
PROTOCOL = "canaryws.records.v1"
ATTACK_CONNECTIONS = 16  # CANARYWS_MAX_CONNECTIONS_PER_CLIENT's default
VICTIM_INTERVAL = 0.010
ATTACK_SHAPES = ("too_many_zeros", "empty_strings_10k")
# Every client of the run is 127.0.0.1: the handshake rates would measure themselves.
LOOPBACK_FLEET = {"CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "0", "CANARYWS_MAX_HANDSHAKES_PER_SECOND": "0"}
NO_BUDGETS = {"CANARYWS_MAX_BYTES_PER_SECOND": "0", "CANARYWS_MAX_CLIENT_BYTES_PER_SECOND": "0"}


def _batch(records_json: str, batch_id: str = "w") -> str:
    return '{"type":"batch","id":"' + batch_id + '","records":[' + records_json + "]}"


def _repeat(item: str, count: int | None = MAX_RECORDS) -> str:
    """A batch of ``item`` repeated ``count`` times, or as often as fits in the frame limit."""
    room = MAX_FRAME_BYTES - len(_batch("").encode())
    fits = (room + 1) // (len(item.encode()) + 1)
    return _batch(",".join([item] * (fits if count is None else min(count, fits))))


SHAPES: dict[str, Callable[[], str]] = {
    "typical": lambda: json.dumps({"type": "batch", "id": "t", "records": batch_records(30)}),
    "strings_10k_ascii": lambda: _repeat('"' + "a" * 100 + '"'),
    "strings_10k_astral": lambda: _repeat(json.dumps("\U0001f600" * 25, ensure_ascii=False)),
    "strings_10k_escapes": lambda: _repeat('"' + "\\u00e9" * 17 + '"'),
    "strings_10k_control_at_end": lambda: _repeat('"' + "a" * 99 + '\\u0001"'),
    "empty_strings_10k": lambda: _repeat('""'),
    "numbers_10k": lambda: _repeat("1e300"),
    "nested_arrays_10k": lambda: _repeat("[" * 50 + "]" * 50),
    "objects_10k": lambda: _repeat('{"a":{"b":[1,2,{"c":null}]},"d":"xxxxxxxxxxxx"}'),
    "one_string_1mib": lambda: _batch('"' + "a" * (MAX_FRAME_BYTES - 64) + '"'),
    "too_many_zeros": lambda: _repeat("0", None),
    "too_many_empty_arrays": lambda: _repeat("[]", None),
    "not_a_message_1mib": lambda: '{"type":1,"id":"w","x":[' + ",".join(["[[[[1e300]]]]"] * 70_000) + "]}",
}


# -- 1. frames -------------------------------------------------------------------------------


def frame_costs(reps: int) -> dict[str, Any]:
    """CPU ms per frame of every shape, both strategies (the service's per-frame path)."""
    from canaryws.core import contract
    from canaryws.core.strategies import STRATEGIES

    out: dict[str, Any] = {}
    for name, build in SHAPES.items():
        frame = build()
        size = len(frame.encode())
        assert size <= MAX_FRAME_BYTES, (name, size)
        row: dict[str, Any] = {"bytes": size}
        for strategy in ("strict", "lenient"):
            process = STRATEGIES[strategy].process
            max_length = None if strategy == "lenient" else MAX_RECORDS

            def once(frame: str = frame, process: Any = process, max_length: int | None = max_length) -> str:
                try:
                    batch = contract.decode_batch(frame, MAX_RECORDS)
                except contract.MessageError as error:
                    return contract.encode_error(error)
                return contract.encode_result(batch.id, process(batch.records, max_length))

            answer = once()
            timings = []
            for _ in range(reps):
                started = time.process_time()
                for _ in range(3):
                    once()
                timings.append((time.process_time() - started) / 3 * 1000)
            median = statistics.median(timings)
            row[strategy] = {"ms": median, "ms_min": min(timings), "ms_max": max(timings),
                             "ms_per_mib": median / (size / MIB), "answer": json.loads(answer)["type"]}
        out[name] = row
    return out


# -- 2. victim under attack -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/records"

    def token(self, client_id: str) -> str:
        from canaryws.adapters.auth import TokenAuthority

        return TokenAuthority.from_data_dir(self.data_dir).issue(client_id)


@contextlib.contextmanager
def serve(name: str, root: Path, env: dict[str, str]) -> Iterator[Server]:
    import httpx

    port = _free_port()
    data_dir = root / name / "data"
    data_dir.mkdir(parents=True)
    log = (root / name / "service.log").open("wb")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CANARYWS_", "UNLEASH_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "canaryws", "serve", "--port", str(port),
         "--flags", str(ROOT / "flags" / "features.json"), "--data-dir", str(data_dir)],
        env={**base, "CANARYWS_LOG_LEVEL": "WARNING", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
             "OTEL_TRACES_SAMPLER_ARG": "0.01", **LOOPBACK_FLEET, **env},
        stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {(root / name / 'service.log').read_text()}")
            time.sleep(0.05)
        yield Server(name, port, data_dir, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _victim(url: str, token: str, seconds: float) -> list[float]:
    """Round trips (ms) of the typical batch, one every VICTIM_INTERVAL, for ``seconds``."""
    from websockets.asyncio.client import connect

    frame = json.dumps({"type": "batch", "id": "v", "records": batch_records(30)})
    latencies: list[float] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                       subprotocols=[PROTOCOL], open_timeout=30, max_size=None) as ws:  # type: ignore[list-item]
        await ws.recv()  # welcome
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            n += 1
            text = frame.replace('"v"', f'"v{n}"', 1)
            started = time.perf_counter()
            await ws.send(text)
            while True:
                answer = json.loads(await ws.recv())
                if answer.get("id") == f"v{n}":
                    break
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, VICTIM_INTERVAL - (time.perf_counter() - started)))
    return latencies


async def _attack(url: str, token: str, shape: str, connections: int, seconds: float) -> dict[str, Any]:
    """Every connection sends ``shape`` closed-loop for ``seconds``; frames and bytes sent."""
    from websockets.asyncio.client import connect

    frame = SHAPES[shape]()
    size = len(frame.encode())
    counts = [0] * connections
    ready = asyncio.Event()
    opened = 0

    async def one(k: int, end: float) -> None:
        nonlocal opened
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                           subprotocols=[PROTOCOL], open_timeout=30, max_size=None,  # type: ignore[list-item]
                           ping_interval=None) as ws:
            await ws.recv()
            opened += 1
            if opened == connections:
                ready.set()
            await ready.wait()
            loop = asyncio.get_running_loop()
            while loop.time() < end:
                await ws.send(frame)
                await ws.recv()
                counts[k] += 1

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds + 2.0  # the connections open first
    started = time.perf_counter()
    await asyncio.gather(*(one(k, end) for k in range(connections)))
    elapsed = time.perf_counter() - started
    frames = sum(counts)
    return {"shape": shape, "frames": frames, "frame_bytes": size, "seconds": elapsed,
            "mib_per_second": frames * size / MIB / elapsed}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase(server: Server, shape: str | None, seconds: float) -> dict[str, Any]:
    """The victim for ``seconds`` (alone, or while the attacker sends ``shape``)."""
    import psutil

    attacker = None
    if shape is not None:
        attacker = subprocess.Popen(
            [sys.executable, __file__, "attack", "--url", server.url, "--token", server.token("attacker"),
             "--shape", shape, "--connections", str(ATTACK_CONNECTIONS), "--seconds", str(seconds + 1.0)],
            stdout=subprocess.PIPE, text=True)
        time.sleep(2.5)  # its connections open, its frames flow
    process = psutil.Process(server.proc.pid)
    cpu = process.cpu_times()
    started = time.perf_counter()
    latencies = asyncio.run(_victim(server.url, server.token(f"victim-{time.monotonic_ns()}"), seconds))
    elapsed = time.perf_counter() - started
    after = process.cpu_times()
    out: dict[str, Any] = {
        "server": server.name, "phase": shape or "quiet", "answers": len(latencies),
        "p50_ms": _percentile(latencies, 0.50), "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies), "server_cpu": (after.user + after.system - cpu.user - cpu.system) / elapsed,
    }
    if attacker is not None:
        stdout, _ = attacker.communicate(timeout=seconds + 60)
        if attacker.returncode != 0:
            raise RuntimeError(f"the attacker failed: {stdout}")
        out["attacker"] = json.loads(stdout.strip().splitlines()[-1])
    return out


def victim_under_attack(rounds: int, seconds: float) -> dict[str, Any]:
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, serve("defaults", Path(tmp), {}) as defaults, \
            serve("no budgets", Path(tmp), NO_BUDGETS) as unbudgeted:
        for r in range(rounds):
            for server in (defaults, unbudgeted) if r % 2 == 0 else (unbudgeted, defaults):
                for shape in (None, *ATTACK_SHAPES):
                    result = phase(server, shape, seconds)
                    result["round"] = r
                    phases.append(result)
                    print(f"  round {r + 1} {server.name:10s} {result['phase']:18s} victim p50 "
                          f"{result['p50_ms']:7.2f} ms p99 {result['p99_ms']:7.2f} ms"
                          + (f"  attacker {result['attacker']['mib_per_second']:6.2f} MiB/s"
                             if "attacker" in result else ""), flush=True)
    summary: dict[str, Any] = {}
    for server in ("defaults", "no budgets"):
        for name in ("quiet", *ATTACK_SHAPES):
            rows = [p for p in phases if p["server"] == server and p["phase"] == name]
            entry: dict[str, Any] = {}
            for key in ("p50_ms", "p99_ms", "server_cpu"):
                values = [row[key] for row in rows]
                entry[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            if name != "quiet":
                rates = [row["attacker"]["mib_per_second"] for row in rows]
                entry["attacker_mib_per_second"] = {"median": statistics.median(rates), "min": min(rates),
                                                    "max": max(rates)}
            summary[f"{server} / {name}"] = entry
    return {"phases": phases, "summary": summary}


# -- report -----------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    frames = result["frames"]
    typical = frames["typical"]
    lines = ["### Worst-case frames (CPU per frame, in process)", "",
             "| shape | frame | strict ms | lenient ms | strict ms/MiB | answer |", "|---|---:|---:|---:|---:|---|"]
    for name, row in frames.items():
        lines.append(f"| `{name}` | {row['bytes'] / 1024:.0f} KiB | {row['strict']['ms']:.2f} "
                     f"({row['strict']['ms_min']:.2f}-{row['strict']['ms_max']:.2f}) | {row['lenient']['ms']:.2f} | "
                     f"{row['strict']['ms_per_mib']:.1f} | {row['strict']['answer']} |")
    worst = max(frames.items(), key=lambda item: max(item[1]["strict"]["ms"], item[1]["lenient"]["ms"]))
    per_mib = max(frames.items(), key=lambda item: item[1]["strict"]["ms_per_mib"])
    lines += ["", f"Worst per frame: `{worst[0]}`, {max(worst[1]['strict']['ms'], worst[1]['lenient']['ms']):.1f} ms; "
              f"worst per MiB: `{per_mib[0]}`, {per_mib[1]['strict']['ms_per_mib']:.0f} ms/MiB "
              f"(the typical frame: {typical['strict']['ms_per_mib']:.0f} ms/MiB).", ""]
    if "victim" in result:
        lines += ["### A victim's round trip while one client id attacks (ms; median over rounds, range)", "",
                  "| server / attacker's shape | victim p50 | victim p99 | attacker MiB/s | server CPU |",
                  "|---|---:|---:|---:|---:|"]
        for name, entry in result["victim"]["summary"].items():
            rate = entry.get("attacker_mib_per_second")
            lines.append(
                f"| {name} | {entry['p50_ms']['median']:.2f} | {entry['p99_ms']['median']:.2f} "
                f"({entry['p99_ms']['min']:.2f}-{entry['p99_ms']['max']:.2f}) | "
                + (f"{rate['median']:.2f}" if rate else "-") + f" | {entry['server_cpu']['median'] * 100:.0f} % |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    attack = sub.add_parser("attack", help="(internal) the attacker process")
    attack.add_argument("--url", required=True)
    attack.add_argument("--token", required=True)
    attack.add_argument("--shape", choices=sorted(SHAPES), required=True)
    attack.add_argument("--connections", type=int, default=ATTACK_CONNECTIONS)
    attack.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s phases, 3 timings per shape")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--frames-only", action="store_true", help="skip the victim step")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.command == "attack":
        print(json.dumps(asyncio.run(_attack(args.url, args.token, args.shape, args.connections, args.seconds))))
        return
    rounds, seconds, reps = (1, 2.0, 3) if args.quick else (args.rounds, args.seconds, args.reps)
    print(f"frames: {len(SHAPES)} shapes, {reps} timings each", flush=True)
    result: dict[str, Any] = {"settings": {"quick": args.quick, "rounds": rounds, "seconds": seconds, "reps": reps,
                                           "cores": os.cpu_count()},
                              "frames": frame_costs(reps)}
    if not args.frames_only:
        print(f"victim under attack: {rounds} round(s) of {seconds:g} s phases", flush=True)
        result["victim"] = victim_under_attack(rounds, seconds)
    report = markdown(result)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
