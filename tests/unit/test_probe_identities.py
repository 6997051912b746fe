"""The probe's identities: the token file's bounds, the search's rules, and which probe ids the
shipped records.strict flag puts in the strict cohort (docs/operating.md, "The synthetic probe")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canaryws.adapters.auth import TokenAuthority
from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.core.cohorts import STRICT_FLAG
from canaryws.core.contract import CohortInfo
from canaryws.core.flagdoc import parse_flags_document
from canaryws.probe.identities import MAX_TOKENS, IssuedIdentities, TokenFileError, TokenFileIdentities
from canaryws.probe.metrics import KINDS, ProbeMetrics
from harness import REPO, metric_value

STRATEGIES = ("lenient", "strict")


def cohort(strategy: str, revision: str = "r1") -> CohortInfo:
    return CohortInfo(strategy, 1, False, revision)  # type: ignore[arg-type]


@pytest.mark.parametrize(("percent", "first"), [(1, 78), (2, 78), (5, 18), (50, 1)])
def test_the_first_strict_probe_id_under_the_shipped_flag(percent: int, first: int) -> None:
    """The measurement docs/operating.md quotes: the default 128 search tries find strict from 1 % up."""
    data = json.loads(REPO.joinpath("flags", "features.json").read_text())
    assert data["features"][0]["name"] == STRICT_FLAG
    assert data["features"][0]["strategies"][0]["parameters"]["groupId"] == "records.strict"  # what the hash uses
    data["features"][0]["strategies"][0]["parameters"]["rollout"] = str(percent)
    snap = FlagSnapshot.from_document(parse_flags_document(json.dumps(data).encode()), source="test")
    strict = [n for n in range(128) if snap.evaluate(STRICT_FLAG, {"userId": f"probe-{n}", "sessionId": "s"}).enabled]
    assert strict and strict[0] == first


def test_a_token_file_is_read_with_comments_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n  tok-a  \ntok-b\n")
    source = TokenFileIdentities(path)
    assert [i.label for i in source.identities] == ["token-file line 1", "token-file line 2"]
    assert [i.token() for i in source.identities] == ["tok-a", "tok-b"]
    first = source.identities[0]
    first.cohort = cohort("strict")
    path.write_text("tok-c\ntok-a\n")  # rotated: tok-a keeps what its welcome said
    source.reload()
    assert [i.token() for i in source.identities] == ["tok-c", "tok-a"] and source.identities[1] is first
    for text, problem in (("", "holds no token"), ("\n".join(f"t{i}" for i in range(MAX_TOKENS + 1)), "at most"),
                          ("x" * (256 * 1024 + 1), "larger than")):
        path.write_text(text)
        with pytest.raises(TokenFileError, match=problem) as caught:
            source.reload()
        assert "tok-" not in str(caught.value)  # never a token in the message
    assert [i.token() for i in source.identities] == ["tok-c", "tok-a"]  # the last good list stays
    with pytest.raises(TokenFileError, match="No such file"):
        TokenFileIdentities(tmp_path / "missing")


def test_issued_identities_carry_the_synthetic_property() -> None:
    authority = TokenAuthority(b"s" * 32)
    source = IssuedIdentities(lambda cid: authority.issue(cid, properties={"synthetic": "true"}), STRATEGIES)
    identity = authority.verify(source.candidate(3).token())
    assert identity.client_id == "probe-3" and dict(identity.properties) == {"synthetic": "true"}


def test_the_search_runs_again_only_for_an_empty_cohort_under_new_flags() -> None:
    source = IssuedIdentities(lambda cid: cid, STRATEGIES)
    assert source.needs_search(None)  # never searched
    lenient = source.candidate(0)
    lenient.cohort = cohort("lenient")
    assert source.offer(lenient) and not source.offer(source.candidate(1))  # no cohort yet: not held
    source.searched, source.searched_revision = True, "r1"
    assert source.missing() == ["strict"]
    assert not source.needs_search("r1")  # the same flags give the same answer
    assert source.needs_search("r2")
    strict = source.candidate(5)
    strict.cohort = cohort("strict")
    assert source.offer(strict) and not source.needs_search("r3")  # both held
    # strict's identity moves to lenient, which is held: it is dropped, and strict is empty again
    strict.cohort = cohort("lenient", "r3")
    source.moved(strict, "strict")
    assert source.identities == [lenient] and source.missing() == ["strict"] and source.needs_search("r3")


def test_every_failure_kind_and_round_result_is_exported_from_zero() -> None:
    from prometheus_client import generate_latest

    metrics = ProbeMetrics.create()
    text = generate_latest(metrics.registry).decode()
    for kind in KINDS:
        assert f'canaryws_probe_failures_total{{kind="{kind}"}} 0.0' in text
    for result in ("success", "failure"):
        assert f'canaryws_probe_rounds_total{{result="{result}"}} 0.0' in text
    assert metric_value(text, "canaryws_probe_cohort_identities", strategy="strict") == 0
    assert "canaryws_probe_batch_seconds_count{strategy=\"lenient\"} 0.0" in text
