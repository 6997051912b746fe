"""Fuzzing ``/records`` with Hypothesis against a real server (docs/contract.md, "Bad input").

Each example is one session of a real WebSocket client (the ``websockets`` library): a
sequence of text frames — well-formed batches with random records (tests/records_data.py),
mutations of well-formed batches, resent batches, random JSON values, random message-like
objects, random text — written back to back, then a sentinel batch. Concurrently, some
examples open a second, raw connection (tests/wsraw.py) and write 1–3 random frames: any
opcode, RSV bits, masking, fragmentation, close payloads.

The expected answers come from an independent model of the contract written here (Python's
``json`` module, not the service's msgspec decoder): the error code and id echo of every
malformed frame, the exact outcome of every record of every well-formed batch under the
connection's strategy, duplicate ids over the window, and, for the raw connection, the RFC
6455 close code of every protocol violation. Asserted:

- every text frame gets exactly one answer, in order (the sentinel's result comes right
  after the last expected answer: nothing lost, duplicated or reordered);
- every answer is the model's (each record of each well-formed batch: exactly one outcome);
- protocol violations close with the model's code, never 1011; the rest is answered and the
  raw connection still serves a good batch;
- the server never crashes: it is alive after each example, and at the end its log has no
  traceback, no failed connection and no 1011.

Runtime is bounded: ``CANARYWS_FUZZ_EXAMPLES`` examples (default 300, under 10 s), derandomized
so CI runs are reproducible; set ``CANARYWS_FUZZ_SEED`` to explore other sequences (the seed is
printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st

from harness import PROTOCOL, Service, flags_doc
from records_data import json_values, records_strategy
from wsraw import BINARY, CLOSE, CONT, PING, PONG, TEXT, ConnectionEnded, RawClient, close_payload, frame

pytestmark = pytest.mark.integration

MAX_RECORDS = 12  # records_strategy draws up to 40: too_many_records is reachable
MAX_LENGTH = 10  # tricky_text and st.text() reach it: too_long is reachable
MAX_FRAME = 65_536
WINDOW = 8  # duplicate-id window: resent batches are refused, or accepted once forgotten
EXAMPLES = int(os.environ.get("CANARYWS_FUZZ_EXAMPLES", "300"))
SEED = os.environ.get("CANARYWS_FUZZ_SEED")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "CANARYWS_MAX_RECORDS": str(MAX_RECORDS),
        "CANARYWS_MAX_RECORD_LENGTH": str(MAX_LENGTH),
        "CANARYWS_MAX_FRAME_BYTES": str(MAX_FRAME),
        "CANARYWS_DUPLICATE_ID_WINDOW": str(WINDOW),
        # No sink: the model is the contract of one connection, and every example reuses the same
        # two client ids and ids like "b-0", which a sink would answer as replays of an earlier
        # example's batch (that is the sink's contract: tests/integration/test_sink_*.py).
        "CANARYWS_SINK": "none",
    }
    with Service(tmp_path_factory.mktemp("fuzz"), flags_doc(strict_rollout=50), env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def clients(service: Service) -> dict[str, str]:
    """A client id of each cohort."""
    found: dict[str, str] = {}

    async def probe(client_id: str) -> str:
        async with service.client(client_id) as (_, welcome):
            return str(welcome["cohort"]["strategy"])

    for i in range(200):
        found.setdefault(asyncio.run(probe(f"fuzz-{i}")), f"fuzz-{i}")
        if len(found) == 2:
            return found
    raise AssertionError(f"no client of each cohort: {found}")


# -- the model: what the contract says each frame gets ----------------------------------------

CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # contract: Cc minus TAB


def outcome(strategy: str, records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """The contract's strict v1 / lenient v1, record by record."""
    accepted: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if record is None:
            reason = "missing"
        elif not isinstance(record, str):
            reason = "not_a_string"
        elif record == "":
            reason = "empty"
        elif not record.strip():
            reason = "blank"
        elif strategy == "strict" and CONTROL.search(record.strip()):
            reason = "control_character"
        elif strategy == "strict" and len(record.strip()) > MAX_LENGTH:
            reason = "too_long"
        else:
            accepted.append({"index": i, "value": record.strip()})
            continue
        if strategy == "strict":
            rejected.append({"index": i, "code": reason})
        else:
            skipped.append({"index": i, "reason": reason})
    return {"accepted": accepted, "skipped": skipped, "rejected": rejected}


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers every (key, value) pair, duplicates included."""

    pairs: list[tuple[str, Any]]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)  # the last duplicate wins, as in the service
    obj.pairs = pairs
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 256


class Model:
    """One connection as the contract describes it: its strategy and its duplicate-id window."""

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.window: deque[str] = deque(maxlen=WINDOW)

    def answer(self, text: str) -> dict[str, Any]:
        """The answer to a text frame (an error's ``detail`` left out)."""
        try:
            # (integers over 4,300 digits would be refused here and not always by the service;
            # nothing below generates them)
            message = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_object)
        except (ValueError, RecursionError):
            return self._error("invalid_json", None)
        if _has_surrogate(message):
            return self._error("invalid_json", None)  # lone surrogate escapes
        if not isinstance(message, _Object):
            return self._error("invalid_message", None)
        known = [(k, v) for k, v in message.pairs if k in ("type", "id", "records")]
        typed = {k for k, _ in known} == {"type", "id", "records"} and all(
            (k == "type" and v == "batch") or (k == "id" and _usable_id(v)) or (k == "records" and isinstance(v, list))
            for k, v in known)  # every occurrence of a field is checked, not only the last
        # A number no float64 holds (1e400, which Python's json reads as inf) is valid JSON and
        # only a number to the contract (issue 21): never invalid_json, wherever it stands.
        echo = message["id"] if _usable_id(message.get("id")) else None
        if not typed:
            kind = message.get("type")
            if isinstance(kind, str) and kind != "batch":
                return self._error("unknown_type", echo)
            return self._error("invalid_message", echo)
        records = message["records"]
        if len(records) > MAX_RECORDS:
            return self._error("too_many_records", echo)
        if echo in self.window:
            return self._error("duplicate_id", echo)
        self.window.append(echo)
        return {"type": "result", "id": echo, "strategy": self.strategy, "strategy_version": 1,
                **outcome(self.strategy, records)}

    @staticmethod
    def _error(code: str, echo: str | None) -> dict[str, Any]:
        return {"type": "error", "id": echo, "code": code}


def check(answer: dict[str, Any], expected: dict[str, Any], frame_text: str) -> None:
    if expected["type"] == "error":
        assert set(answer) == {"type", "id", "code", "detail"} and isinstance(answer["detail"], str), answer
        assert 0 < len(answer["detail"]) <= 1000, answer  # quotes at most 64 characters of the input
        answer = {k: v for k, v in answer.items() if k != "detail"}
    assert answer == expected, f"frame {frame_text[:300]!r}\n got {answer}\nwant {expected}"
    if answer["type"] == "result":  # exactly one outcome per record
        indexes = [e["index"] for name in ("accepted", "skipped", "rejected") for e in answer[name]]
        assert len(indexes) == len(set(indexes)), answer


# -- frames ------------------------------------------------------------------------------------

TOKENS = ['"', ",", "]", "}", "{", "[", ":", "null", "\\", "\\u", "\\ud800", "\\udc00", "NaN", "1e999", "-0",
          " ", "\ufeff", "\x00", "\x7f", "0", '"type"', '"batch"', '"id"', '"records"']
mutation = st.tuples(
    st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate"]),
    st.floats(0, 1), st.floats(0, 1),
    st.sampled_from(TOKENS) | st.text(max_size=4),
)


def mutate(text: str, ops: list[tuple[str, float, float, str]]) -> str:
    for op, a, b, token in ops:
        i, j = sorted((int(a * len(text)), int(b * len(text))))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + token + text[i:]
        elif op == "replace":
            text = text[:i] + token + text[i + 1:]
        elif op == "truncate":
            text = text[:i]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


message_like = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["batch", "BATCH", "subscribe", ""]) | json_values,
    "id": st.text(max_size=6) | json_values | st.just("i" * 257),
    "records": records_strategy | json_values,
    "extra": json_values,
})
action = st.one_of(
    st.tuples(st.just("batch"), records_strategy),
    st.tuples(st.just("batch"), records_strategy),  # twice the weight
    st.tuples(st.just("mutate"), records_strategy, st.lists(mutation, min_size=1, max_size=3)),
    st.tuples(st.just("resend"), st.integers(0, 30)),
    st.tuples(st.just("json"), json_values | message_like, st.booleans()),
    st.tuples(st.just("text"), st.text(max_size=40)),
)


def materialize(actions: list[tuple[Any, ...]]) -> list[str]:
    """Text frames, with fresh batch ids (resent frames repeat an earlier one verbatim)."""
    frames: list[str] = []
    batches: list[str] = []
    for n, act in enumerate(actions):
        kind = act[0]
        if kind == "batch":
            text = json.dumps({"type": "batch", "id": f"b-{n}", "records": act[1]})
            batches.append(text)
        elif kind == "mutate":
            text = mutate(json.dumps({"type": "batch", "id": f"m-{n}", "records": act[1]}), act[2])
        elif kind == "resend":
            if not batches:
                continue
            text = batches[act[1] % len(batches)]
        elif kind == "json":
            text = json.dumps(act[1], ensure_ascii=act[2])
        else:
            text = act[1]
        if len(text.encode()) < MAX_FRAME:  # larger frames are protocol-level (1009), tested apart
            frames.append(text)
    return frames


# -- raw frames and the RFC 6455 model ---------------------------------------------------------


@dataclass(frozen=True)
class RawFrame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    mask: bool = True

    def encode(self) -> bytes:
        return frame(self.opcode, self.payload, fin=self.fin, rsv=self.rsv, mask=self.mask)


VALID_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, *range(3000, 5000)}


@dataclass
class RawExpectation:
    answers: list[str]  # texts of the complete text messages, in order
    pongs: list[bytes]
    close: int | None = None  # the server's close code (None: the connection stays open)
    echo: bytes | None = None  # the client closed: the server echoes this payload
    dropped_ok: bool = False  # answers and pongs before the close may be missing (see below)
    open_fragment: bool = False  # the frames end inside a fragmented message


def rfc_model(frames: list[RawFrame]) -> RawExpectation:
    """What a conforming server does with these frames, in the order the service checks them."""
    exp = RawExpectation([], [])
    fragment: tuple[int, bytes] | None = None

    def ends(code: int, parser: bool = True) -> RawExpectation:
        exp.close = code
        # A violation found by the frame parser ends the connection before the frames read
        # with it are handled: their answers (and pongs) may never come.
        exp.dropped_ok = parser
        return exp

    for f in frames:
        # the order of websockets' frame parser: opcode, mask bit, size (of the message so
        # far), RSV bits and control frame rules, then the sequence of frames
        if f.opcode not in (CONT, TEXT, BINARY, CLOSE, PING, PONG) or not f.mask:
            return ends(1002)
        if len(f.payload) > MAX_FRAME - (len(fragment[1]) if fragment is not None else 0):
            return ends(1009)
        if f.rsv:
            return ends(1002)
        if f.opcode >= CLOSE:
            if len(f.payload) > 125 or not f.fin:
                return ends(1002)
            if f.opcode == PING:
                exp.pongs.append(f.payload)
            elif f.opcode == CLOSE:
                if len(f.payload) == 1:
                    return ends(1002)
                if len(f.payload) >= 2:
                    try:
                        f.payload[2:].decode()
                    except UnicodeDecodeError:
                        return ends(1007)
                    if int.from_bytes(f.payload[:2], "big") not in VALID_CLOSE_CODES:
                        return ends(1002)
                if fragment is not None:
                    return ends(1002)
                exp.echo, exp.dropped_ok = f.payload, True  # answers not sent yet are dropped
                return exp
            continue
        if f.opcode == CONT:
            if fragment is None:
                return ends(1002)
            fragment = (fragment[0], fragment[1] + f.payload)
        else:
            if fragment is not None:
                return ends(1002)
            fragment = (f.opcode, f.payload)
        if f.fin:
            opcode, data = fragment
            fragment = None
            if opcode == BINARY:
                return ends(1003, parser=False)
            try:
                exp.answers.append(data.decode())
            except UnicodeDecodeError:
                return ends(1007, parser=False)
    exp.open_fragment = fragment is not None
    return exp


close_payloads = st.builds(lambda code, reason: close_payload(code, reason),
                           st.sampled_from([1000, 1001, 1003, 1005, 1006, 1015, 999, 2999, 3000, 4999, 5000]),
                           st.sampled_from([b"", b"bye", b"\xff", "é".encode()]))
raw_payloads = st.one_of(
    st.binary(max_size=130),
    st.text(max_size=30).map(str.encode),
    (json_values | message_like).map(lambda v: json.dumps(v).encode()),
    records_strategy.map(lambda r: json.dumps({"type": "batch", "id": "raw", "records": r}).encode()),
    close_payloads,
    st.sampled_from([b" " * (MAX_FRAME // 2 + 1), b" " * (MAX_FRAME + 1)]),  # over the limit, alone or summed
)
_opcodes = st.sampled_from([TEXT, TEXT, TEXT, BINARY, BINARY, CONT, CLOSE, PING, PING, PONG])
raw_frame = st.builds(
    RawFrame,
    opcode=st.one_of(_opcodes, _opcodes, _opcodes, st.integers(0, 15)),
    payload=raw_payloads,
    fin=st.sampled_from([True] * 5 + [False]),
    rsv=st.sampled_from([0] * 20 + [1, 2, 4, 7]),
    mask=st.sampled_from([True] * 20 + [False]),
)


def materialize_raw(frames: list[RawFrame]) -> list[RawFrame]:
    """Stop after a message that makes the service close the connection (binary, invalid
    UTF-8): the frame parser goes on with the frames written with it, and whether those are
    parsed before the close depends on how TCP cuts the write. End a fragmented message left
    open, so that every sequence resolves."""
    for k in range(1, len(frames) + 1):
        exp = rfc_model(frames[:k])
        if exp.close is not None and not exp.dropped_ok:
            return frames[:k]
    return [*frames, RawFrame(CONT, b"")] if rfc_model(frames).open_fragment else frames


def run_raw(service: Service, client_id: str, frames: list[RawFrame]) -> None:
    exp = rfc_model(frames)
    assert not exp.open_fragment
    headers = {"Authorization": f"Bearer {service.token(client_id)}", "Sec-WebSocket-Protocol": PROTOCOL}
    with RawClient.connect("127.0.0.1", service.port, headers=headers) as client:
        welcome = client.recv_json()
        assert welcome["type"] == "welcome", welcome
        model = Model(welcome["cohort"]["strategy"])
        expected = [(text, model.answer(text)) for text in exp.answers]
        client.send_raw(b"".join(f.encode() for f in frames))
        answers: list[dict[str, Any]] = []
        pongs: list[bytes] = []
        wanted = len(expected) + len(exp.pongs)
        while exp.close is not None or exp.echo is not None or len(answers) + len(pongs) < wanted:
            f = client.recv_frame()
            if f.opcode == CLOSE:
                break
            assert f.opcode in (TEXT, PONG), f
            if f.opcode == PONG:
                pongs.append(f.payload)
            else:
                answers.append(json.loads(f.payload))
        else:
            f = None
        # answers in order; when frames may be dropped, a prefix of them
        assert len(answers) <= len(expected) and (exp.dropped_ok or len(answers) == len(expected)), \
            (answers, expected)
        for answer, (text, want) in zip(answers, expected, strict=False):
            check(answer, want, text)
        assert pongs == exp.pongs[:len(pongs)] and (exp.dropped_ok or pongs == exp.pongs), (pongs, exp.pongs)
        if exp.close is not None:
            assert f is not None and f.close_code == exp.close, (f, exp, frames)
            with contextlib.suppress(OSError):
                client.send_frame(CLOSE, f.payload[:2])
            client.assert_eof()
        elif exp.echo is not None:
            assert f is not None and f.payload == exp.echo, (f, exp, frames)
            client.assert_eof()
        else:
            assert f is None
            client.send_text(json.dumps({"type": "batch", "id": "raw-after", "records": [" ok "]}))
            check(client.recv_json(), model.answer(json.dumps({"type": "batch", "id": "raw-after",
                                                               "records": [" ok "]})), "raw-after")
            assert client.close_normally().close_code == 1000


# -- the fuzz test -------------------------------------------------------------------------------


def _settings(test: Any) -> Any:
    configured = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                          print_blob=True)(test)
    if SEED is not None:
        print(f"fuzz seed: {SEED}")
        configured = seed(int(SEED))(configured)
    return configured


@_settings
@given(strategy=st.sampled_from(["strict", "lenient"]),
       actions=st.lists(action, min_size=1, max_size=25),
       abuse=st.one_of(st.none(), *[st.lists(raw_frame, min_size=1, max_size=3).map(materialize_raw)] * 2))
def test_random_frames_get_exactly_the_contract_answers(service: Service, clients: dict[str, str], strategy: str,
                                                        actions: list[tuple[Any, ...]],
                                                        abuse: list[RawFrame] | None) -> None:
    frames = materialize(actions)
    model = Model(strategy)
    expected = [model.answer(text) for text in frames]
    sentinel = json.dumps({"type": "batch", "id": "sentinel", "records": ["s"]})
    for want in expected:  # shown by --hypothesis-show-statistics
        event(f"answer: {want.get('code', want['type'])}")
    if abuse is not None:
        raw = rfc_model(abuse)
        event(f"raw: {raw.close or ('client close' if raw.echo is not None else 'open')}")

    async def session() -> None:
        async with service.client(clients[strategy]) as (ws, welcome):
            assert welcome["cohort"]["strategy"] == strategy
            for text in frames:
                await ws.send(text)
            await ws.send(sentinel)
            answers = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(len(frames) + 1)]
        for text, answer, want in zip(frames, answers[:-1], expected, strict=True):
            check(answer, want, text)
        # the sentinel's result comes right after: no answer lost, duplicated or reordered
        check(answers[-1], model.answer(sentinel), sentinel)

    async def both() -> None:
        tasks = [session()]
        if abuse is not None:
            tasks.append(asyncio.to_thread(run_raw, service, "fuzz-raw", abuse))
        await asyncio.gather(*tasks)

    try:
        asyncio.run(both())
    except ConnectionEnded as exc:
        raise AssertionError(f"the server dropped a connection: {exc}") from exc
    assert service.proc is not None and service.proc.poll() is None, "the server exited"


def test_the_fuzzed_server_is_healthy(service: Service) -> None:
    """Runs after the fuzzing: alive, and no traceback, failed connection or 1011 in its log."""
    assert service.get("/healthz").json() == {"status": "ok"}
    records = service.log_records()
    assert any(r.get("message") == "connection closed" for r in records), "the fuzz test did not run"
    assert not [r for r in records if r.get("message") == "connection failed"]
    assert 1011 not in [r.get("close_code") for r in records if r.get("message") == "connection closed"]
    tracebacks = [line[:2000] for line in service.logs().splitlines()
                  if "Traceback" in line or "exc_info" in line]
    assert not tracebacks, tracebacks
