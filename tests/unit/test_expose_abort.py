"""ExposeAbort hands the endpoint the server's channel and abort, and takes them back when the
connection ends, so that the scope the server protocol keeps holds no reference back to it: a
closed connection's protocol then goes with it (reference counting) instead of at the garbage
collector's next pass. Under uvicorn's websockets-sansio protocol, as served."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
import websockets
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canaryws.adapters.asgi.expose_abort import ExposeAbort
from canaryws.adapters.asgi.scope import ABORT_SCOPE_KEY, CHANNEL_SCOPE_KEY, OWES_ANSWERS_SCOPE_KEY
from harness import uvicorn_serving


def serve_one_connection(app: ASGIApp) -> tuple[Scope, Any]:
    """One WebSocket connection to ``app`` under uvicorn; the scope and the server protocol the
    app was given (the protocol holds that scope for its own life)."""
    seen: list[tuple[Scope, Any]] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, getattr(receive, "__self__", None)))
        await app(scope, receive, send)

    async def scenario() -> None:
        async with uvicorn_serving(recording) as port, websockets.connect(f"ws://127.0.0.1:{port}/records") as client:
            assert await client.recv() == "welcome"
            await client.close()

    asyncio.run(scenario())
    ((scope, protocol),) = seen
    return scope, protocol


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """What the records endpoint does with the scope: the channel, the abort, the answers owed."""
    channel_receive, channel_send = scope[CHANNEL_SCOPE_KEY]
    assert callable(scope[ABORT_SCOPE_KEY])
    scope[OWES_ANSWERS_SCOPE_KEY] = lambda: channel_send is not None
    assert (await channel_receive())["type"] == "websocket.connect"
    await channel_send({"type": "websocket.accept"})
    await channel_send({"type": "websocket.send", "text": "welcome"})
    while (await channel_receive())["type"] != "websocket.disconnect":
        pass


def holds(value: Any, protocol: Any, depth: int = 4) -> bool:
    """Whether ``value`` leads to ``protocol`` or its transport in at most ``depth`` references."""
    targets = {id(protocol), id(protocol.transport)}
    frontier = [value]
    for _ in range(depth + 1):
        if any(id(item) in targets for item in frontier):
            return True
        frontier = [ref for item in frontier for ref in gc.get_referents(item)]
    return False


def test_the_scope_the_protocol_keeps_holds_nothing_of_it_once_the_connection_ended() -> None:
    scope, protocol = serve_one_connection(ExposeAbort(endpoint))
    assert protocol.scope is scope  # the protocol keeps it: an entry that held the protocol would be a cycle
    assert not {ABORT_SCOPE_KEY, CHANNEL_SCOPE_KEY, OWES_ANSWERS_SCOPE_KEY} & scope.keys()
    assert not any(holds(value, protocol) for value in scope.values())


def test_the_entries_would_have_held_it() -> None:
    # what the test above guards against: the same entries, left in the scope
    async def keeping(scope: Scope, receive: Receive, send: Send) -> None:
        scope[ABORT_SCOPE_KEY] = getattr(send, "__self__", None).transport.abort  # type: ignore[union-attr]
        scope[CHANNEL_SCOPE_KEY] = (receive, send)
        await endpoint(scope, receive, send)

    scope, protocol = serve_one_connection(keeping)
    assert all(holds(scope[key], protocol) for key in (ABORT_SCOPE_KEY, CHANNEL_SCOPE_KEY, OWES_ANSWERS_SCOPE_KEY))


@pytest.mark.parametrize("failure", [RuntimeError("the endpoint failed"), asyncio.CancelledError()])
def test_the_entries_go_when_the_endpoint_fails_too(failure: BaseException) -> None:
    scope: Scope = {"type": "websocket"}

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        assert CHANNEL_SCOPE_KEY in scope
        scope[OWES_ANSWERS_SCOPE_KEY] = lambda: False
        raise failure

    async def nothing() -> Message:
        return {}

    async def sent(_message: Message) -> None:
        return None

    with pytest.raises(type(failure)):
        asyncio.run(ExposeAbort(failing)(scope, nothing, sent))
    assert scope == {"type": "websocket"}
