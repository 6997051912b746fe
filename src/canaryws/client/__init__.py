"""The official Python client of canaryws (contract v1: docs/contract.md, docs/asyncapi.yaml).

Built on `websockets <https://websockets.readthedocs.io>`_ (its asyncio client): the
maintained, typed, pure-Python WebSocket library the service's own tests already use, with
a sans-I/O core, a strict RFC 6455 implementation and handshake errors that carry the HTTP
answer (status, ``Retry-After``, the contract's JSON body).

>>> async with connect(url, token=token) as client:           # doctest: +SKIP
...     print(client.cohort.strategy)
...     result = await client.process([" a ", "", None])
...     print([a.value for a in result.accepted])

Frames are decoded into the contract's own types (:mod:`canaryws.core.contract`), from which
the AsyncAPI document is generated too. :func:`connect_sync` is the same client for scripts.
"""

from __future__ import annotations

from canaryws.client.backoff import Reconnect
from canaryws.client.errors import (
    AnswerTimeout,
    BatchError,
    CanarywsError,
    ConnectFailed,
    ConnectionClosed,
    ContractViolation,
    GaveUp,
    HandshakeRefused,
)
from canaryws.client.session import Client, CohortUpdate, TokenProvider, check_result
from canaryws.client.sync import SyncClient, connect_sync
from canaryws.core.contract import (
    Accepted,
    CohortChange,
    CohortInfo,
    Error,
    Rejected,
    Result,
    Skipped,
    Welcome,
)

connect = Client
"""Open a session: ``async with connect(url, token=…) as client`` (or ``client = await
connect(…)`` and, at the end, ``await client.close()``). The options are :class:`Client`'s."""


__all__ = [
    "Accepted",
    "AnswerTimeout",
    "BatchError",
    "CanarywsError",
    "Client",
    "CohortChange",
    "CohortInfo",
    "CohortUpdate",
    "ConnectFailed",
    "ConnectionClosed",
    "ContractViolation",
    "Error",
    "GaveUp",
    "HandshakeRefused",
    "Reconnect",
    "Rejected",
    "Result",
    "Skipped",
    "SyncClient",
    "TokenProvider",
    "Welcome",
    "check_result",
    "connect",
    "connect_sync",
]
