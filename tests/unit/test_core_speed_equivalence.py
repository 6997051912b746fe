"""The per-batch work written for speed gives the same answers as its readable specification
(issue 26): the one-pass batch decode and the slices decode, each strategy's ``process`` and
its ``reference_process``, the result encoding and the contract's field-by-field structs."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from canaryws.core import contract
from canaryws.core.strategies import lenient, strict
from canaryws.core.strategies.outcome import Outcome
from records_data import GUIDE_BATCH, json_values, records_strategy, tricky_text

# Longer and stranger text than records_data's: scripts, spaces and format characters that
# str.isprintable rejects though they are no control character, and every control.
wide_text = st.text(
    alphabet=st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x01", "\x1c", "\x1f", "\x7f", "\x80", "\x85", "\x9f",
                              "\xa0", "\xad", "\u200b", "\u200d", "\u2028", "\u3000", "\ufeff", "a", "é", "Ж",
                              "東", "ا", "😀", "\U000e0001"]),
    max_size=60,
)
any_records = st.lists(json_values | tricky_text | wide_text | st.text(), max_size=60)
max_lengths = st.none() | st.integers(min_value=-2, max_value=70)


def _outcome_fields(outcome: Outcome) -> tuple[Any, ...]:
    return (outcome.strategy, outcome.strategy_version, outcome.accepted, outcome.skipped, outcome.rejected)


@settings(max_examples=1500)
@given(any_records | records_strategy, max_lengths)
@example(GUIDE_BATCH, 4096)
@example(["a\tb", " \xa0x\xa0 ", "x\u200by", "é" * 6, "  \x85", "\x85a", "a\x85", "\u2028"], 5)
@example(["x" * 10, "\x01" + "x" * 10], -1)
def test_strict_process_is_its_specification(records: list[Any], max_length: int | None) -> None:
    assert _outcome_fields(strict.process(records, max_length)) == _outcome_fields(
        strict.reference_process(records, max_length))


@settings(max_examples=1000)
@given(any_records | records_strategy, max_lengths)
@example(GUIDE_BATCH, 4096)
def test_lenient_process_is_its_specification(records: list[Any], max_length: int | None) -> None:
    assert _outcome_fields(lenient.process(records, max_length)) == _outcome_fields(
        lenient.reference_process(records, max_length))


def test_strict_specification_reasons_in_order() -> None:
    assert [strict.reason(r, 3) for r in (None, 5, True, [], "", " \t", " a\x00 ", "\x01" * 9, "abcd", " abc ")] == [
        "missing", "not_a_string", "not_a_string", "not_a_string", "empty", "blank", "control_character",
        "control_character", "too_long", None]
    assert strict.reason("x" * 100, None) is None and strict.reason("x" * 100, -1) is None  # no limit, as before


# --- decode: frames of any records (a number a float cannot hold, deep nesting, escapes), and broken ones.

big_numbers = st.sampled_from(["1e999", "-1e999", "1" * 400, "123456789012345678901234567890", "-0", "1E+2",
                               "0.0000001", "5e-324"])
raw_records = st.lists(
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False))
    | (tricky_text | wide_text).map(lambda t: json.dumps(t, ensure_ascii=False))
    | (tricky_text | wide_text).map(json.dumps)  # \\uXXXX escapes
    | big_numbers
    | st.integers(min_value=1, max_value=80).map(lambda depth: "[" * depth + "]" * depth),
    max_size=30,
)
ids = st.sampled_from(['"b-1"', '""', '"' + "i" * 257 + '"', "5", "null", '"\\u00e9"'])


@st.composite
def frames(draw: st.DrawFn) -> str:
    records = "[" + ",".join(draw(raw_records)) + "]"
    kind = draw(st.sampled_from(['"batch"', '"hello"', "7"]))
    fields = [f'"type":{kind}', f'"id":{draw(ids)}', f'"records":{records}']
    fields = draw(st.permutations(fields))
    if draw(st.booleans()):
        fields = fields[: draw(st.integers(min_value=0, max_value=len(fields)))]
    frame = "{" + ",".join(fields) + "}"
    if draw(st.integers(min_value=0, max_value=4)) == 0:  # a broken frame: cut, or a character changed
        at = draw(st.integers(min_value=0, max_value=len(frame)))
        frame = frame[:at] + draw(st.sampled_from(["", ",", "]", "}", "x", '"', "\\", "\x01"])) + frame[at + 1:]
    return frame


def _decoded(frame: str, max_records: int, decode: Any) -> tuple[Any, ...]:
    try:
        batch = decode(frame, max_records)
    except contract.MessageError as err:
        # A syntax error's detail is msgspec's own words, which differ between parsing a value
        # and skipping one ("invalid escape character in string" / "invalid escaped character",
        # the byte it names): the detail is free text, the code and the id are the contract.
        return ("error", err.code, err.batch_id, None if err.code == contract.INVALID_JSON else err.detail)
    assert type(batch) is contract.Batch
    kinds = [r if type(r) is str or r is None else id(r) for r in batch.records]  # NOT_A_STRING itself
    return ("batch", batch.type, batch.id, kinds)


@settings(max_examples=1500)
@given(frames(), st.sampled_from([contract.DEFAULT_MAX_RECORDS, 3]))
@example('{"type":"batch","id":"b","records":[" a ",null,5,1e999,"x",[[1]],{"a":[]},true]}', 10)
@example('{"type":"batch","id":"b","records":[' + "[" * 5000 + "]" * 5000 + "]}", 10)
@example('{"type":"batch","id":"b","records":[1e999,' + "[" * 5000 + "]" * 5000 + "]}", 10)
@example('{"type":"batch","id":"b","records":[1,2,3,4]}', 3)
@example('{"type":"batch","id":"b","records":[1e999,2,3,4]}', 3)
def test_one_pass_decode_is_the_slices_decode(frame: str, max_records: int) -> None:
    assert _decoded(frame, max_records, contract.decode_batch) == _decoded(
        frame, max_records, contract.decode_batch_by_slices)


@pytest.mark.parametrize("literal", ["1e300", "2.2250738585072011e-308", "9" * 4000, "9" * 20, "0." + "1" * 700])
def test_numbers_msgspec_parses_slowly_are_never_parsed(literal: str) -> None:
    """As a float, 10,000 ``1e300`` cost msgspec about 0.5 s and 249 integers of 4,000 digits
    50 ms: the typed pass takes int64s only, and a batch with any other number is sliced."""
    import time

    count = min(9_999, 1_000_000 // (len(literal) + 1))
    frame = '{"type":"batch","id":"b","records":["x",' + ",".join([literal] * count) + "]}"
    started = time.perf_counter()
    batch = contract.decode_batch(frame)
    assert time.perf_counter() - started < 0.1  # measured: 3 ms or less
    assert batch.records[0] == "x" and set(map(id, batch.records[1:])) == {id(contract.NOT_A_STRING)}


@pytest.mark.parametrize("frame", [b'{"type":"batch","id":"b","records":[1e999,"\xff"]}',
                                   b'{"type":"batch","id":"b","records":[1,"\xff"]}'])
def test_a_string_of_invalid_utf8_after_another_kind_is_invalid_json(frame: bytes) -> None:
    """The slices decode does not check a raw slice's UTF-8: its strings' pass is classified too."""
    for decode in (contract.decode_batch, contract.decode_batch_by_slices):
        with pytest.raises(contract.MessageError) as info:
            decode(frame)
        assert info.value.code == "invalid_json"


# --- encode: the result frame, byte for byte what the contract's structs give field by field.

outcomes = st.builds(
    Outcome,
    st.sampled_from(["strict", "lenient"]),
    st.integers(min_value=1, max_value=3),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.text()), max_size=20),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.sampled_from(contract.ReasonCode.__args__)),
             max_size=5),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.sampled_from(contract.ReasonCode.__args__)),
             max_size=5),
)
flags = st.sampled_from([msgspec.UNSET, True, False])


@settings(max_examples=500)
@given(st.text(min_size=1, max_size=20), outcomes, flags, flags)
def test_encode_result_is_the_contract_structs(batch_id: str, outcome: Outcome, durable: Any, replay: Any) -> None:
    expected = msgspec.json.encode(contract.Result(
        batch_id, outcome.strategy, outcome.strategy_version,  # type: ignore[arg-type]
        [contract.Accepted(i, v) for i, v in outcome.accepted],
        [contract.Skipped(i, r) for i, r in outcome.skipped],  # type: ignore[arg-type]
        [contract.Rejected(i, c) for i, c in outcome.rejected],  # type: ignore[arg-type]
        durable, replay,
    )).decode()
    assert contract.encode_result(batch_id, outcome, durable, replay) == expected
