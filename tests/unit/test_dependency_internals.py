"""Other libraries' internals canaryws relies on, where they offer no public way.

Each test pins one row of the upgrade checklist (docs/dependencies.md, linked from README.md's
"Dependency notes") that no other test pins directly: an upgrade that moves the internal fails
here, with its name. The OpenTelemetry SDK's are pinned in test_providers.py and
test_sampling.py, the Unleash engine's in test_flag_problems.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import websockets
from aiohttp import web

from canaryws.adapters.flags.unleash_source import UnleashFlagSource
from harness import uvicorn_serving

FEATURES = Path(__file__).resolve().parents[2] / "flags" / "features.json"


def test_uvicorn_hands_a_websocket_app_its_protocols_bound_receive_and_send() -> None:
    """``ConnectionDrain`` and ``ExposeAbort`` (canaryws.adapters.asgi) read the server
    protocol behind ``receive``/``send`` (``__self__``): its inbound ``queue`` and its
    ``transport`` (``abort``, ``pause_reading``/``resume_reading``)."""
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        protocol = getattr(receive, "__self__", None)
        transport = getattr(protocol, "transport", None)
        seen["queue"] = isinstance(getattr(protocol, "queue", None), asyncio.Queue)
        seen["same protocol"] = getattr(send, "__self__", None) is protocol
        seen["abort"] = callable(getattr(transport, "abort", None))
        seen["flow control"] = all(
            callable(getattr(transport, name, None)) for name in ("is_reading", "pause_reading", "resume_reading")
        )
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async def scenario() -> None:
        async with uvicorn_serving(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/") as client:
            await client.wait_closed()

    asyncio.run(scenario())
    assert seen == {"queue": True, "same protocol": True, "abort": True, "flow control": True}


def test_unleash_sdk_polls_answered_304_without_an_etag_count_as_contact(tmp_path: Path) -> None:
    """``UnleashFlagSource`` wraps the SDK's ``AsyncUnleashClient._transport.fetch_features``
    to see every answered poll: Unleash 8 answers an unchanged one with a 304 that carries no
    ETag, which the SDK's public surface (its cache, its events) cannot tell from a failure."""
    bootstrap = tmp_path / "features.json"
    document = FEATURES.read_text()
    bootstrap.write_text(document)
    polls: list[int] = []

    async def features(_request: web.Request) -> web.Response:
        if not polls:
            polls.append(200)
            return web.Response(text=document, content_type="application/json", headers={"ETag": '"v1"'})
        polls.append(304)
        return web.Response(status=304)  # unchanged, and no ETag: as Unleash 8 answers

    async def register(_request: web.Request) -> web.Response:
        return web.Response(status=202)

    async def scenario() -> tuple[str | None, str | None, dict[str, Any]]:
        server = web.Application()
        server.router.add_get("/api/client/features", features)
        server.router.add_post("/api/client/register", register)
        runner = web.AppRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        source = UnleashFlagSource(
            url=f"http://127.0.0.1:{port}/api", api_token="*:development.test", bootstrap_path=bootstrap,
            refresh_interval=0.1, stale_after=60.0,
        )
        source.load()
        running = asyncio.create_task(source.run())
        try:
            assert await source.wait_first_poll(5.0)
            after_200 = source.status()["last_contact_at"]
            for _ in range(500):
                if polls.count(304) >= 3:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)
            return after_200, source.status()["last_contact_at"], source.status()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await runner.cleanup()

    after_200, after_304s, status = asyncio.run(scenario())
    assert polls.count(304) >= 3, polls
    assert after_200 is not None and after_304s is not None and after_304s > after_200, (after_200, after_304s)
    assert status["flags_from"] == "server" and status["stale"] is False and status["last_error"] is None
