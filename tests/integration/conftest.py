"""Integration fixtures: every frame the real service sends to a test is checked against the
machine-readable contract, docs/asyncapi.yaml (tests/contract_check.py).

:func:`_frames_match_the_contract` wraps the receive path of the ``websockets`` asyncio client
(``ClientConnection.recv``, which ``async for`` over a connection also calls): each text frame a
test receives is validated by its ``type``, at the test's teardown or when the test reads its
record (validating as frames arrive would slow the client down). A frame the document does not
allow fails the test at teardown, with the frame and the schema's complaint; the test itself sees
the frame unchanged.
What tests send is not checked (many send malformed frames on purpose).

Not seen by this hook: frames read by hand from raw sockets (tests/wsraw.py: test_bad_input.py,
test_fuzz.py, part of test_workers.py), picows clients (the benchmark, driven by test_bench.py),
and clients in other processes (the blocks of test_docs_blocks.py and test_runbook.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from contract_check import ContractRecord

_current: ContractRecord | None = None
_original_recv = ClientConnection.recv


async def _checked_recv(self: ClientConnection, decode: bool | None = None) -> Any:
    message = await _original_recv(self, decode)
    record = _current
    if record is not None and (isinstance(message, str) or decode is None):
        # (with decode=False a text frame comes as bytes, indistinguishable from a binary one)
        record.received(message)  # validated later (ContractRecord): the client is not slowed down
    return message


@pytest.fixture(autouse=True)
def _frames_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> Iterator[ContractRecord]:
    """Every frame the test's websockets clients receive is validated; violations fail it at teardown."""
    global _current
    record = ContractRecord()
    monkeypatch.setattr(ClientConnection, "recv", _checked_recv)
    _current = record
    try:
        yield record
    finally:
        _current = None
    if record.violations:
        shown = "\n\n".join(record.violations[:10])
        more = f"\n\n(and {len(record.violations) - 10} more)" if len(record.violations) > 10 else ""
        pytest.fail(f"{len(record.violations)} frame(s) the service sent break docs/asyncapi.yaml:\n\n{shown}{more}",
                    pytrace=False)


@pytest.fixture
def frames_not_checked(_frames_match_the_contract: ContractRecord) -> None:
    """For a test whose client talks to a stand-in server rather than the service (e.g. one that
    sends malformed frames on purpose): its frames are not checked."""
    _frames_match_the_contract.checking = False


@pytest.fixture
def contract_record(_frames_match_the_contract: ContractRecord) -> ContractRecord:
    """The frames validated so far in this test (tests/integration/test_contract_frames.py's coverage)."""
    return _frames_match_the_contract
