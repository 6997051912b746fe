"""Contract v1 codec: decoding client frames, classifying bad ones, encoding answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryws.core import contract
from canaryws.core.cohorts import Cohort
from canaryws.core.strategies import STRICT
from canaryws.core.strategies.outcome import Outcome


def test_decodes_a_batch() -> None:
    batch = contract.decode_batch('{"type":"batch","id":"b-1","records":[" a ",null,5]}')
    assert batch.id == "b-1"
    assert batch.records == [" a ", None, contract.NOT_A_STRING]  # a number's value is never needed


@pytest.mark.parametrize("record", ["5", "1e999", "-0.5", "true", "false", "[]", '[[["x"]]]',
                                    '{"a": [1, {"b": null}]}'])
def test_every_record_that_is_not_a_string_or_null_is_one_kind(record: str) -> None:
    """Its value is never built: a number out of range or a deep structure costs a scan."""
    batch = contract.decode_batch('{"type":"batch","id":"b","records":["x",' + record + ",null]}")
    assert batch.records == ["x", contract.NOT_A_STRING, None]


def test_the_worst_frames_cost_a_scan_not_a_parse() -> None:
    """1 MiB of nested arrays, or of huge numbers: each would cost 100 ms to a second to build."""
    import time

    nested = '{"type":"batch","id":"b","records":[' + ",".join(["[" * 50 + "]" * 50] * 10_000) + "]}"
    numbers = '{"type":"batch","id":"b","records":[[' + ",".join(["1e300"] * 170_000) + "]]}"
    for frame in (nested, numbers):
        started = time.perf_counter()
        batch = contract.decode_batch(frame)
        assert time.perf_counter() - started < 0.1  # measured: 6 ms and 1 ms; docs/benchmarks.md
        assert set(map(id, batch.records)) == {id(contract.NOT_A_STRING)}
    started = time.perf_counter()
    with pytest.raises(contract.MessageError) as info:  # malformed, with the same payload: classified by a scan
        contract.decode_batch(numbers.replace('"id":"b",', ""))
    assert info.value.code == "invalid_message" and time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    ("frame", "code", "batch_id"),
    [
        ("{", "invalid_json", None),
        ("", "invalid_json", None),
        ('{"type":"batch","id":"b","records":[NaN]}', "invalid_json", None),
        ("[1,2]", "invalid_message", None),
        ('"batch"', "invalid_message", None),
        ('{"id":"b-2","records":[]}', "invalid_message", "b-2"),
        ('{"type":7,"id":"b-3"}', "invalid_message", "b-3"),
        ('{"type":"hello","id":"b-4"}', "unknown_type", "b-4"),
        ('{"type":"batch","records":[]}', "invalid_message", None),
        ('{"type":"batch","id":5,"records":[]}', "invalid_message", None),
        ('{"type":"batch","id":"","records":[]}', "invalid_message", None),
        ('{"type":"batch","id":"b-5","records":{}}', "invalid_message", "b-5"),
        ('{"type":"batch","id":"b-6"}', "invalid_message", "b-6"),
    ],
)
def test_bad_frames_get_a_precise_error(frame: str, code: str, batch_id: str | None) -> None:
    with pytest.raises(contract.MessageError) as info:
        contract.decode_batch(frame)
    assert info.value.code == code
    assert info.value.batch_id == batch_id
    encoded = json.loads(contract.encode_error(info.value))
    assert encoded == {"type": "error", "id": batch_id, "code": code, "detail": info.value.detail}
    assert encoded["detail"]


def test_too_many_records_names_the_limit() -> None:
    frame = json.dumps({"type": "batch", "id": "big", "records": ["x"] * 11})
    with pytest.raises(contract.MessageError) as info:
        contract.decode_batch(frame, max_records=10)
    assert info.value.code == "too_many_records"
    assert info.value.batch_id == "big"
    assert "10" in info.value.detail


def test_result_encoding_is_the_contract_example() -> None:
    out = STRICT.process([" a ", "", "  ", "b", None, 5], 4096)
    assert json.loads(contract.encode_result("b-1", out)) == {
        "type": "result", "id": "b-1", "strategy": "strict", "strategy_version": 1,
        "accepted": [{"index": 0, "value": "a"}, {"index": 3, "value": "b"}],
        "skipped": [],
        "rejected": [{"index": 1, "code": "empty"}, {"index": 2, "code": "blank"},
                     {"index": 4, "code": "missing"}, {"index": 5, "code": "not_a_string"}],
    }


def test_welcome_and_cohort_frames() -> None:
    cohort = Cohort("strict", 1, False, "rev1")
    welcome = json.loads(contract.encode_welcome(connection_id="c1", client_id="u1", cohort=cohort))
    assert welcome == {
        "type": "welcome", "protocol": "canaryws.records.v1", "connection_id": "c1", "client_id": "u1",
        "cohort": {"strategy": "strict", "strategy_version": 1, "shadow": False, "flags_revision": "rev1"},
    }
    change = json.loads(contract.encode_cohort_change(cohort))
    assert change == {"type": "cohort", "cohort": welcome["cohort"], "reason": "flags_changed"}


def test_v2_frames_add_durable_and_replay_and_v1_frames_stay_as_they_were() -> None:
    cohort = Cohort("strict", 1, False, "rev1")
    out = Outcome("lenient", 1, [(0, "a")], [(1, "blank")], [])
    v1 = json.loads(contract.encode_result("b-1", out))
    assert "durable" not in v1 and "replay" not in v1
    assert json.loads(contract.encode_result("b-1", out, True, True)) == {**v1, "durable": True, "replay": True}
    welcome = json.loads(contract.encode_welcome(connection_id="c", client_id="u", cohort=cohort,
                                                 protocol=contract.PROTOCOL_V2, durable=True))
    assert (welcome["protocol"], welcome["durable"]) == ("canaryws.records.v2", True)
    assert "durable" not in json.loads(contract.encode_welcome(connection_id="c", client_id="u", cohort=cohort,
                                                               durable=True))  # v1: never said
    error = json.loads(contract.encode_unavailable("b-2", "down", 1.5))
    assert error == {"type": "error", "id": "b-2", "code": "unavailable", "detail": "down", "retry_after_ms": 1500}


@pytest.mark.parametrize(
    ("offered", "expected"),
    [([], (True, None)), (["canaryws.records.v1"], (True, "canaryws.records.v1")),
     (["canaryws.records.v9", "canaryws.records.v1"], (True, "canaryws.records.v1")),
     (["canaryws.records.v9"], (False, None)),
     (["canaryws.records.v2", "canaryws.records.v1"], (True, "canaryws.records.v2")),
     (["canaryws.records.v1", "canaryws.records.v2"], (True, "canaryws.records.v1"))],  # the client's preference
)
def test_subprotocol_negotiation(offered: list[str], expected: tuple[bool, str | None]) -> None:
    assert contract.negotiate_subprotocol(offered) == expected


@pytest.mark.parametrize("frame", [b'"\x80"', b'{"type":"batch","id":"\xff","records":[]}', b"\xff"])
def test_invalid_utf8_bytes_are_invalid_json(frame: bytes) -> None:
    with pytest.raises(contract.MessageError) as info:
        contract.decode_batch(frame)
    assert info.value.code == "invalid_json"


@settings(max_examples=300)
@given(st.text(max_size=64) | st.binary(max_size=64))
def test_any_frame_decodes_or_gets_a_known_error_code(frame: str | bytes) -> None:
    try:
        contract.decode_batch(frame)
    except contract.MessageError as err:
        assert err.code in contract.ERROR_CODES
