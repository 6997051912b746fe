"""The reconnect storm: a restart closes every connection with 1012, and every client comes back.

    .venv/bin/python bench/storm.py [--connections 5000] [--rounds 3] [--servers lean,canaryws] [--json PATH]

For each server (``lean``: ``bench/apps.py lean``, uvicorn's own shutdown, which closes every
WebSocket with 1012; ``canaryws``: ``canaryws serve`` in the benchmark's production settings,
``CANARYWS_SINK=none``, its graceful drain, 1012 to every connection), each round:

1. start the server and the load client (``storm.py client``, one process, picows on uvloop):
   it opens ``--connections`` connections (a distinct client id and token each, 200 handshakes
   at a time), sends one 30-record batch on each and waits for every answer;
2. send the server SIGTERM and, once it has exited, start it again on the same port (same data
   dir, so the same token secret): a restart as ``systemctl restart`` or a replica replaced
   in place does it;
3. every client, closed by the restart, reconnects as the SDK does (``canaryws.client``): at
   once, then after each failed handshake a delay drawn by the SDK's own policy
   (:class:`canaryws.client.backoff.Reconnect`, its defaults: full jitter from 0.1 s,
   doubling, up to 30 s; seeded per connection), and once connected sends a batch again;
4. report when the last connection is answering again: from the signal (the restart's whole
   outage), and from the moment the new server answers its health check (the storm itself,
   which the server's handshake cost decides), with the new server's CPU seconds from its
   health check to the last answer, and the handshakes that failed on the way.

The SDK itself is not used as the client: 5,000 of its sessions (websockets' client, an
asyncio task each) would cost the shared 2 cores more than the server under test. The
stand-in follows it faithfully where it matters here: the same back-off code, the same
moments (reconnect at once after the close, wait only after a failure), a batch resent after
reconnecting. Times are ``time.monotonic()`` in both processes (one clock on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps.py"
FLAGS = ROOT / "flags" / "features.json"
sys.path.insert(0, str(BENCH))

from load import batch_records  # noqa: E402  (bench/ is not a package)
from run import DROPPED_PREFIXES, NO_SINK, PRODUCTION_ENV, free_port, raise_nofile  # noqa: E402

SEED = 20261207


# -- the client ---------------------------------------------------------------------------------

def client_main(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.install()
    print(json.dumps(asyncio.run(_client(args))), flush=True)


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    from picows import WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    from canaryws.client.backoff import Reconnect

    tokens = [line.strip() for line in Path(args.tokens).read_text().splitlines() if line.strip()] \
        if args.tokens else [None]
    records = json.dumps(batch_records(30), separators=(",", ":"))
    loop = asyncio.get_running_loop()
    n = args.connections
    state: dict[str, Any] = {"answered": 0, "failed_handshakes": 0, "closed": 0, "first_close": None,
             "last_answer": None}
    everyone = [loop.create_future() for _ in range(2)]  # all answered: before, after the restart
    gate = asyncio.Semaphore(200)

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ready: asyncio.Future[None] = loop.create_future()
            self.answer: asyncio.Future[None] = loop.create_future()
            self.gone: asyncio.Future[int] = loop.create_future()
            self.code = 1006

        def on_ws_connected(self, transport: WSTransport) -> None:  # noqa: ARG002
            if not args.welcome:
                self.ready.set_result(None)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                self.code = int(frame.get_close_code())
                transport.disconnect()
            elif frame.msg_type == WSMsgType.TEXT:
                if not self.ready.done():
                    self.ready.set_result(None)
                elif not self.answer.done():
                    self.answer.set_result(None)

        def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002
            if not self.gone.done():
                self.gone.set_result(self.code)

    async def life(i: int) -> None:
        policy = Reconnect(rng=random.Random(SEED + i))
        headers = None if tokens[i % len(tokens)] is None else {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
        sent = 0
        for phase in (0, 1):
            attempt = 0
            while True:
                listener: Listener | None = None
                transport: WSTransport | None = None
                try:
                    async with gate if phase == 0 else contextlib.nullcontext():
                        transport, opened = await ws_connect(Listener, args.url, extra_headers=headers,
                                                             websocket_handshake_timeout=60)
                        listener = cast(Listener, opened)
                        await asyncio.wait_for(listener.ready, 60)
                    sent += 1
                    transport.send(WSMsgType.TEXT,
                                   f'{{"type":"batch","id":"{args.id_prefix}{i}-{sent}","records":{records}}}'.encode())
                    await asyncio.wait_for(listener.answer, 60)
                    break
                except (OSError, TimeoutError, WSError):
                    if transport is not None:
                        transport.disconnect()
                    state["failed_handshakes"] += 1
                    attempt += 1
                    await asyncio.sleep(policy.delay(attempt - 1))
            state["answered"] += 1
            if phase == 1:
                state["last_answer"] = time.monotonic()
            if state["answered"] == n * (phase + 1):
                everyone[phase].set_result(None)
            assert listener is not None and transport is not None
            if phase == 0:
                await listener.gone
                state["closed"] += 1
                if state["first_close"] is None:
                    state["first_close"] = time.monotonic()
            else:
                transport.disconnect()

    tasks = [asyncio.create_task(life(i)) for i in range(n)]
    await everyone[0]
    print(f"ready {n}", flush=True)
    try:
        await asyncio.wait_for(everyone[1], args.timeout)
        recovered = True
    except TimeoutError:
        recovered = False
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"connections": n, "recovered": recovered, "answered_after": state["answered"] - n,
            "closed": state["closed"], "first_close": state["first_close"], "last_answer": state["last_answer"],
            "failed_handshakes": state["failed_handshakes"]}


# -- the orchestrator ---------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    argv: list[str]
    env: dict[str, str]
    welcome: bool
    tokens: Path | None
    health: str | None  # an HTTP path, or None: a TCP connection

    def healthy(self, port: int) -> bool:
        import socket
        import urllib.request

        if self.health is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{self.health}", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False


def _targets(workdir: Path, connections: int) -> dict[str, Target]:
    from canaryws.adapters.auth import TokenAuthority
    from canaryws.core.flagdoc import encode_flags_document, parse_flags_document, with_rollout

    base = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
    base["PYTHONUNBUFFERED"] = "1"
    data = workdir / "data"
    data.mkdir()
    authority = TokenAuthority.from_data_dir(data)
    tokens = workdir / "tokens.txt"
    tokens.write_text("".join(authority.issue(f"storm-{i}") + "\n" for i in range(connections)))
    flags = workdir / "strict.json"
    flags.write_bytes(encode_flags_document(with_rollout(parse_flags_document(FLAGS.read_bytes()),
                                                         "records.strict", 100)))
    script = Path(sys.executable).parent / "canaryws"
    canaryws = [str(script)] if script.exists() else [sys.executable, "-m", "canaryws"]
    return {
        "lean": Target("lean", [sys.executable, str(APPS), "lean", "{port}"], base, False, None, None),
        "canaryws": Target("canaryws", [*canaryws, "serve", "--port", "{port}", "--flags", str(flags), "--data-dir",
                                        str(data), "--log-level", "WARNING"],
                           {**base, **PRODUCTION_ENV, **NO_SINK}, True, tokens, "/healthz"),
    }


def _start(target: Target, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [arg.replace("{port}", str(port)) for arg in target.argv]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=target.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)


def _wait_healthy(target: Target, port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{target.name} exited at start (status {proc.returncode})")
        if target.healthy(port):
            return time.monotonic()
        time.sleep(0.02)
    raise SystemExit(f"{target.name} did not become healthy in {timeout:.0f} s")


def _cpu(proc: subprocess.Popen[bytes]) -> float:
    p = psutil.Process(proc.pid)
    total = 0.0
    for each in (p, *p.children(recursive=True)):
        try:
            t = each.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def one_storm(target: Target, workdir: Path, connections: int, prefix: str, timeout: float) -> dict[str, Any]:
    port = free_port()
    log = workdir / f"{target.name}.log"
    server = _start(target, port, log)
    client: subprocess.Popen[str] | None = None
    try:
        _wait_healthy(target, port, server)
        argv = [sys.executable, str(Path(__file__).resolve()), "client", f"ws://127.0.0.1:{port}/records",
                "--connections", str(connections), "--id-prefix", prefix, "--timeout", str(timeout)]
        if target.welcome:
            argv.append("--welcome")
        if target.tokens is not None:
            argv += ["--tokens", str(target.tokens)]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        assert client.stdout is not None
        line = client.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"the storm client did not get ready: {line!r}")
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        exited = time.monotonic()
        server = _start(target, port, log)
        healthy = _wait_healthy(target, port, server)
        cpu_at_healthy = _cpu(server)
        out, _ = client.communicate(timeout=timeout + 60)
        cpu = _cpu(server) - cpu_at_healthy
        result = json.loads(out.strip().splitlines()[-1])
        if not result["recovered"]:
            raise SystemExit(f"{target.name}: only {result['answered_after']} of {connections} connections "
                             f"answered again within {timeout:.0f} s")
        last = result["last_answer"]
        return {
            "connections": connections,
            "closed_by_restart": result["closed"],
            "drain_s": exited - signalled,
            "restart_s": healthy - signalled,
            "recovered_after_signal_s": last - signalled,
            "recovered_after_ready_s": last - healthy,
            "server_cpu_s": cpu,
            "server_cpu_us_per_connection": cpu / connections * 1e6,
            "failed_handshakes": result["failed_handshakes"],
        }
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


KEYS = ("recovered_after_ready_s", "recovered_after_signal_s", "restart_s", "drain_s", "server_cpu_s",
        "server_cpu_us_per_connection", "failed_handshakes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    client = sub.add_parser("client")
    client.add_argument("url")
    client.add_argument("--connections", type=int, default=5000)
    client.add_argument("--tokens", default=None)
    client.add_argument("--welcome", action="store_true")
    client.add_argument("--id-prefix", default="")
    client.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="lean,canaryws")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for every connection to answer again")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.mode == "client":
        raise_nofile()
        client_main(args)
        return 0
    raise_nofile()
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="canaryws-storm-"))
    try:
        targets = _targets(workdir, args.connections)
        unknown = set(names) - set(targets)
        if unknown:
            parser.error(f"--servers: unknown {', '.join(sorted(unknown))}; known: {', '.join(targets)}")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                result = one_storm(targets[name], workdir, args.connections, f"r{r}-", args.timeout)
                runs[name].append(result)
                print(f"round {r + 1}/{args.rounds} {name:<9} all {args.connections} answering "
                      f"{result['recovered_after_ready_s']:.2f} s after the new server was ready "
                      f"({result['recovered_after_signal_s']:.2f} s after the signal), server CPU "
                      f"{result['server_cpu_s']:.2f} s, {result['failed_handshakes']} failed handshakes", flush=True)
        summary = {name: {key: statistics.median(run[key] for run in results) for key in KEYS}
                   for name, results in runs.items()}
        print(f"\nReconnect storm: {args.connections} connections closed by a restart (1012), medians of "
              f"{args.rounds} rounds")
        print(f"{'server':<9} {'answering again s':>18} {'after signal s':>15} {'restart s':>10} "
              f"{'server CPU s':>13} {'CPU µs/conn':>12} {'failed hs':>10}")
        for name, s in summary.items():
            print(f"{name:<9} {s['recovered_after_ready_s']:>18.2f} {s['recovered_after_signal_s']:>15.2f} "
                  f"{s['restart_s']:>10.2f} {s['server_cpu_s']:>13.2f} {s['server_cpu_us_per_connection']:>12.0f} "
                  f"{s['failed_handshakes']:>10.0f}")
        if "lean" in summary and "canaryws" in summary:
            ratio = summary["canaryws"]["recovered_after_ready_s"] / summary["lean"]["recovered_after_ready_s"]
            cpu = summary["canaryws"]["server_cpu_s"] / summary["lean"]["server_cpu_s"]
            print(f"canaryws / lean: time to answering again {ratio:.2f}, server CPU {cpu:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"connections": args.connections, "rounds": runs,
                                                   "medians": summary}, indent=2))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
