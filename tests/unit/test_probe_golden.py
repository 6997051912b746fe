"""The probe's golden corpus (canaryws/probe/golden/v1.json) agrees with the strategies themselves,
covers every reason code, and its checker tells a wrong answer from a right one."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from canaryws.core.strategies import STRATEGIES
from canaryws.core.strategies.reasons import ALL_REASONS
from canaryws.probe.golden import CorpusError, Expected, UnknownVersion, differences, load_corpus, parse_corpus


def test_every_expectation_is_what_the_core_strategy_answers() -> None:
    """The golden file cannot silently disagree with the code: each batch, through
    STRATEGIES[name].process(records, 4096), gives exactly the expected outcome of name@version."""
    corpus = load_corpus()
    assert corpus.max_record_length == 4096 and corpus.version == 1
    checked = 0
    for batch in corpus.batches:
        for key, expected in batch.expected.items():
            name, version = key.split("@")
            strategy = STRATEGIES[name]
            assert strategy.version == int(version), f"{batch.id}: {key} but the code runs {name}@{strategy.version}"
            out = strategy.process(list(batch.records), corpus.max_record_length)
            got = Expected(tuple(out.accepted), tuple(out.skipped), tuple(out.rejected))
            assert got == expected, (batch.id, key, differences(expected, out.accepted, out.skipped, out.rejected))
            checked += 1
    assert checked == 2 * len(corpus.batches)


def test_the_corpus_covers_every_strategy_and_every_reason_code() -> None:
    corpus = load_corpus()
    assert set(corpus.keys) == {f"{s.name}@{s.version}" for s in STRATEGIES.values()}
    rejected = {code for b in corpus.batches for _, code in b.expectation("strict", 1).rejected}
    skipped = {reason for b in corpus.batches for _, reason in b.expectation("lenient", 1).skipped}
    assert rejected == set(ALL_REASONS)
    assert skipped == set(ALL_REASONS) - {"control_character", "too_long"}  # lenient accepts those
    lengths = {len(r) for b in corpus.batches for r in b.records if isinstance(r, str)}
    assert {4096, 4097} <= lengths  # both sides of the default limit


def test_the_corpus_file_is_package_data_under_the_wheel_root() -> None:
    resource = files("canaryws.probe") / "golden" / "v1.json"
    assert json.loads(resource.read_text(encoding="utf-8"))["version"] == 1


def test_differences_names_each_wrong_index() -> None:
    expected = load_corpus().batches[0].expectation("strict", 1)
    assert differences(expected, expected.accepted, expected.skipped, expected.rejected) == []
    wrong_rejected = [(i, "blank" if code == "empty" else code) for i, code in expected.rejected]
    assert differences(expected, expected.accepted, [], wrong_rejected) == [
        "index 6: expected rejected empty, got rejected blank"]
    missing_one = list(expected.accepted[1:])
    assert differences(expected, missing_one, [], expected.rejected) == [
        "index 0: expected accepted 'a', got nothing"]


def test_an_unknown_version_is_its_own_error() -> None:
    batch = load_corpus().batches[0]
    with pytest.raises(UnknownVersion) as caught:
        batch.expectation("strict", 2)
    assert caught.value.key == "strict@2"


@pytest.mark.parametrize("broken", [
    {"version": 1, "max_record_length": 4096, "batches": [{"id": "a", "records": [], "expected": {}}]},
    {"version": 1, "max_record_length": 4096, "batches": [{"id": "a", "records": ["x"], "generated": {"0": "y"},
                                                           "expected": {"strict@1": {"accepted": [], "skipped": [],
                                                                                     "rejected": []}}}]},
    {"version": 1, "max_record_length": 4096, "batches": [{"id": "a", "records": [], "expected": {
        "strict@1": {"accepted": [{"index": 0}], "skipped": [], "rejected": []}}}]},
    {"version": "1", "max_record_length": 4096, "batches": []},
])
def test_a_malformed_corpus_is_refused(broken: object) -> None:
    with pytest.raises(CorpusError):
        parse_corpus(broken)
