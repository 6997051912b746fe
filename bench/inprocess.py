"""The per-batch cost of canaryws' own code, without sockets or a load client, in one process.

    .venv/bin/python bench/inprocess.py [--batches 20000] [--rounds 5] [--profile OUT.html]

One connection is served through the real endpoint (``RecordsEndpoint.handle``, built by
``canaryws.app.build_service`` with production settings: strict pinned, 1 % trace
sampling, metrics on) over an in-memory ASGI channel: the handshake, then ``--batches``
batches of 30 records, then a disconnect. The same batches go through the lean loop
(decode → strict → encode, the work with nothing around it) on the same channel. Both are
timed (best of ``--rounds``) and the difference is canaryws' own cost per batch: the
cohort, limits, summary, metrics and spans. Deterministic enough to see a 1 µs change,
which the socket benchmark (bench/run.py) on a shared machine cannot.

Variants (each in a child process, since the OTel SDK reads its environment once):
``lean``, ``canaryws``, ``canaryws-telemetry-off`` (``OTEL_SDK_DISABLED=true``),
``canaryws-shadow`` (the shadow flag on: the other strategy and the comparison run
after each answer), ``lean-both`` (lean plus, inline, the lenient strategy and the
comparison of its outcome with the answer: the second strategy's own work).
``--profile`` writes a pyinstrument profile of the canaryws run. The loop is uvloop, as under
``canaryws serve``.

    .venv/bin/python bench/inprocess.py --core [--rounds 15] [--pool]

``--core`` times the work alone, no channel and no event loop: ``contract.decode_batch``,
``STRICT.process`` and ``contract.encode_result`` (what lean does per batch, and canaryws
around them), each and together, in µs per batch (best of ``--rounds``), on today's
benchmark batch and on other shapes: 1, 300 and 1,000 of its records, and batches of 30,
300 and 1,000 long mixed-script records (Latin with accents, Han, Cyrillic, emoji; up to
1,200 characters). ``--pool`` adds bench/workload.py's realistic pool (seed 2026, 3,000
batches), timed as a whole and given per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from load import batch_records  # noqa: E402

VARIANTS = ("lean", "lean-both", "canaryws", "canaryws-telemetry-off", "canaryws-shadow")
PRODUCTION_ENV = {
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.01",
    "CANARYWS_MAX_MESSAGES_PER_SECOND": "1000000",
    # one connection sends 20,000 batches as fast as it can: the work budgets would measure themselves
    "CANARYWS_MAX_BYTES_PER_SECOND": "0",
    "CANARYWS_MAX_CLIENT_BYTES_PER_SECOND": "0",
    "CANARYWS_LOG_LEVEL": "WARNING",
    # as bench/run.py's canaryws: answered without persisting (a sink's batches in flight would be
    # unanswered at the disconnect; the persist step is bench/sink_inprocess.py's business)
    "CANARYWS_SINK": "none",
}


def frames(n: int, records: int) -> list[str]:
    body = json.dumps(batch_records(records), separators=(",", ":"))
    return [f'{{"type":"batch","id":"{i}","records":{body}}}' for i in range(n)]


class Channel:
    """An ASGI WebSocket channel: connect, the frames, a disconnect; sends are counted."""

    def __init__(self, texts: list[str]) -> None:
        self.incoming: list[dict[str, Any]] = [{"type": "websocket.connect"}]
        self.incoming += [{"type": "websocket.receive", "text": t} for t in texts]
        self.incoming.append({"type": "websocket.disconnect", "code": 1000})
        self.incoming.reverse()
        self.sent = 0

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(0)  # like a socket: the event loop runs between frames
        return self.incoming.pop()

    async def send(self, message: dict[str, Any]) -> None:  # noqa: ARG002 - a sink
        self.sent += 1


async def lean_loop(channel: Channel, both: bool) -> None:
    from canaryws.core import contract
    from canaryws.core.compare import compare
    from canaryws.core.strategies import LENIENT, STRICT

    receive, send = channel.receive, channel.send
    await receive()
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        batch = contract.decode_batch(message["text"], 1000)
        outcome = STRICT.process(batch.records, 4096)
        await send({"type": "websocket.send", "text": contract.encode_result(batch.id, outcome)})
        if both:  # what a shadow is for: the other strategy and the comparison
            compare(outcome, LENIENT.process(batch.records, 4096))


def mixed_script_records(n: int) -> list[Any]:
    """Long records in several scripts (up to 1,200 characters), with today's three defects."""
    texts = ["  Grüße aus Köln — ünïcödé text %d  ", "  東京の天気は晴れです %d ",
             " plain ascii record number %d with more words ", "Здравствуйте, мир %d", " emoji 🎉🚀 %d "]
    records: list[Any] = [(texts[i % len(texts)] % i) * (1 + (i * 7919) % 20) for i in range(n)]
    if n >= 3:
        records[n // 3] = "   "
        records[n // 2] = "bad\x01value"
        records[-1] = 42
    return records


def core(rounds: int, pool: bool) -> None:
    """``--core``: decode, strict and encode alone, µs per batch (best of ``rounds``)."""
    import timeit

    from canaryws.core import contract
    from canaryws.core.strategies import STRICT

    decode, process, encode = contract.decode_batch, STRICT.process, contract.encode_result

    def frame(records: list[Any]) -> str:
        body = json.dumps(records, ensure_ascii=False, separators=(",", ":"))
        return '{"type":"batch","id":"b-1","records":' + body + "}"

    shapes = {"today (30)": frame(batch_records(30))}
    shapes.update({f"today's records x{n}": frame(batch_records(n)) for n in (1, 300, 1000)})
    shapes.update({f"mixed-script x{n}": frame(mixed_script_records(n)) for n in (30, 300, 1000)})
    print(f"{'shape':<22} {'bytes':>8} {'decode':>8} {'strict':>8} {'encode':>8} {'total':>8}  µs per batch")
    for name, text in shapes.items():
        batch = decode(text, contract.DEFAULT_MAX_RECORDS)
        outcome = process(batch.records, 4096)
        number = max(20, 200_000 // (len(text) // 50 + 20))
        parts = {
            "decode": lambda: decode(text, contract.DEFAULT_MAX_RECORDS),  # noqa: B023 - timed at once
            "strict": lambda: process(batch.records, 4096),  # noqa: B023
            "encode": lambda: encode(batch.id, outcome),  # noqa: B023
            "total": lambda: encode(batch.id, process(decode(text, 10_000).records, 4096)),  # noqa: B023
        }
        best = {k: min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6 for k, fn in parts.items()}
        print(f"{name:<22} {len(text.encode()):>8} " + " ".join(f"{best[k]:8.2f}" for k in parts))
    if pool:
        from workload import DEFAULT_SEED, generate

        frames = [b.frame(f"b-{i}").decode() for i, b in enumerate(generate(seed=DEFAULT_SEED, batches=3000).batches)]

        def all_frames() -> None:
            for text in frames:
                batch = decode(text, contract.DEFAULT_MAX_RECORDS)
                encode(batch.id, process(batch.records, 4096))

        best_s = min(timeit.repeat(all_frames, number=1, repeat=max(3, rounds // 3)))
        print(f"realistic pool, seed {DEFAULT_SEED}: {len(frames)} batches, "
              f"{best_s / len(frames) * 1e6:.1f} µs per batch (decode + strict + encode)")


def child(variant: str, batches: int, rounds: int, profile: str | None) -> None:
    """Runs in the child process: prints best µs per batch.

    canaryws runs inside its app's lifespan, as under ``canaryws serve``: the flags and
    revocation watchers and the connection sweeper run, and start-up objects are frozen
    out of the garbage collector's scans."""
    texts = frames(batches, 30)
    if variant.startswith("lean"):
        async def run_once() -> float:
            channel = Channel(texts)
            started = time.perf_counter()
            await lean_loop(channel, variant == "lean-both")
            return time.perf_counter() - started

        lifespan: Any = contextlib.nullcontext
    else:
        from starlette.websockets import WebSocket

        from canaryws.adapters.asgi.scope import CHANNEL_SCOPE_KEY
        from canaryws.adapters.auth import TokenAuthority
        from canaryws.app import build_service
        from canaryws.settings import Settings

        settings = Settings.from_env(
            flags_path=Path(os.environ["BENCH_FLAGS"]), data_dir=Path(os.environ["BENCH_DATA"])
        )
        service = build_service(settings)
        token = TokenAuthority.from_data_dir(settings.data_dir).issue("bench-client")
        endpoint = service.records
        app = service.fastapi

        def lifespan() -> Any:
            return app.router.lifespan_context(app)

        async def run_once() -> float:
            channel = Channel(texts)
            scope = {
                "type": "websocket",
                "path": "/records",
                "headers": [(b"authorization", f"Bearer {token}".encode())],
                "subprotocols": [],
                CHANNEL_SCOPE_KEY: (channel.receive, channel.send),
            }
            started = time.perf_counter()
            await endpoint.handle(WebSocket(scope, channel.receive, channel.send))
            elapsed = time.perf_counter() - started
            assert channel.sent == batches + 2, channel.sent  # accept, welcome, one answer per batch
            return elapsed

    async def measure() -> float:
        async with lifespan():
            await run_once()  # warm-up
            if profile and variant == "canaryws":
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002, async_mode="disabled")
                profiler.start()
                await run_once()
                profiler.stop()
                Path(profile).write_text(profiler.output_html())
                print(profiler.output_text(unicode=True, color=False, show_all=False), file=sys.stderr)
            return min([await run_once() for _ in range(rounds)])

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as `canaryws serve` runs
        best = runner.run(measure())
    print(json.dumps({"variant": variant, "us_per_batch": best / batches * 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", default=None, help="write a pyinstrument HTML profile of the canaryws run")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--core", action="store_true", help="time decode, strict and encode alone, on several shapes")
    parser.add_argument("--pool", action="store_true", help="with --core: also the realistic pool (bench/workload.py)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batches, args.rounds, args.profile)
        return
    if args.core:
        core(args.rounds, args.pool)
        return

    from canaryws.adapters.auth import TokenAuthority
    from canaryws.core.flagdoc import encode_flags_document, parse_flags_document, with_enabled, with_rollout

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="canaryws-inprocess-") as tmp:
        doc = with_rollout(parse_flags_document((ROOT / "flags" / "features.json").read_bytes()), "records.strict", 100)
        (Path(tmp) / "strict.json").write_bytes(encode_flags_document(doc))
        (Path(tmp) / "shadow.json").write_bytes(encode_flags_document(with_enabled(doc, "records.shadow", True)))
        TokenAuthority.from_data_dir(Path(tmp) / "data")
        for variant in args.variants.split(","):
            env = {**os.environ, **PRODUCTION_ENV, "BENCH_DATA": str(Path(tmp) / "data"),
                   "BENCH_FLAGS": str(Path(tmp) / ("shadow.json" if variant == "canaryws-shadow" else "strict.json"))}
            if variant == "canaryws-telemetry-off":
                env["OTEL_SDK_DISABLED"] = "true"
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--batches", str(args.batches),
                 "--rounds", str(args.rounds), *(["--profile", args.profile] if args.profile else [])],
                env=env, capture_output=True, text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"variant {variant} failed (exit {out.returncode}):\n{out.stderr}")
            if out.stderr.strip():
                print(out.stderr, file=sys.stderr)
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])["us_per_batch"]
    lean = results.get("lean")
    print(f"{'variant':<26} {'µs/batch':>9} {'over lean':>10}")
    for variant, us in results.items():
        over = f"{us - lean:+10.2f}" if lean is not None else ""
        print(f"{variant:<26} {us:9.2f} {over}")
    if {"canaryws-shadow", "canaryws", "lean-both", "lean"} <= results.keys():
        shadow = results["canaryws-shadow"] - results["canaryws"]
        second = results["lean-both"] - results["lean"]
        print(f"shadow cost {shadow:.2f} µs vs the second strategy's own work {second:.2f} µs: "
              f"ratio {shadow / second:.2f}")


if __name__ == "__main__":
    main()
