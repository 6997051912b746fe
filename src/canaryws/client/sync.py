"""The same client for scripts: :func:`connect_sync` runs the asynchronous
:class:`~canaryws.client.session.Client` on an event loop of its own, in a background
thread, and blocks on each call. No second implementation: every call is the async one.

>>> with connect_sync(url, token=token) as client:           # doctest: +SKIP
...     result = client.process(["a", " b "])
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from canaryws.client.session import Client
from canaryws.core.contract import CohortInfo, Result, Welcome

T = TypeVar("T")


class SyncClient:
    """A blocking handle on a :class:`Client`; thread-safe (calls are serialised by its loop)."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="canaryws.client", daemon=True)
        self._thread.start()
        try:
            self._client: Client = self._call(self._open(url, options))
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _open(url: str, options: dict[str, Any]) -> Client:
        from canaryws.client import connect  # the one place the options are read

        client: Client = await connect(url, **options)
        return client

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def welcome(self) -> Welcome | None:
        return self._client.welcome

    @property
    def cohort(self) -> CohortInfo | None:
        return self._client.cohort

    @property
    def client(self) -> Client:
        """The asynchronous client underneath (its methods must run on its own loop)."""
        return self._client

    def process(self, records: Iterable[Any], batch_id: str | None = None) -> Result:
        """:meth:`Client.process`, blocking."""
        return self._call(self._client.process(list(records), batch_id))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect_sync(url: str, **options: Any) -> SyncClient:
    """:func:`canaryws.client.connect`'s options, blocking: ``with connect_sync(url, token=t) as c:``."""
    return SyncClient(url, **options)
