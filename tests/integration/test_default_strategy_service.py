"""CANARYWS_DEFAULT_STRATEGY: what a real service gives clients when records.strict is absent.

The flag clean-up: strict at 100 % -> the setting on every replica -> the flag deleted; clients
must stay strict throughout, and the report must not see a sample-ratio mismatch.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness import Service, cohorts_of, flags_doc, metric_value, run_cli, send_batch

pytestmark = pytest.mark.integration

SUMMARY = "records.connection"


def without_strict() -> dict[str, Any]:
    """The harness flags document with records.strict deleted (records.shadow kept)."""
    doc = flags_doc()
    doc["features"] = [f for f in doc["features"] if f["name"] != "records.strict"]
    assert [f["name"] for f in doc["features"]] == ["records.shadow"]
    return doc


async def first_batch(service: Service, client_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with service.client(client_id) as (ws, welcome):
        frames = await send_batch(ws, "b-1", ["ok", " x ", "", "  "])
    return welcome, frames


def test_a_missing_flag_with_the_strict_default_is_strict_and_the_report_sees_no_mismatch(tmp_path: Path) -> None:
    clients = [f"default-{i:03d}" for i in range(40)]
    with Service(tmp_path, without_strict(), env={"CANARYWS_DEFAULT_STRATEGY": "strict"}) as service:
        welcome, frames = asyncio.run(first_batch(service, "blank-sender"))
        assert welcome["cohort"]["strategy"] == "strict"
        assert [f["type"] for f in frames] == ["result"]
        (result,) = frames
        assert result["strategy"] == "strict"
        assert result["accepted"] == [{"index": 0, "value": "ok"}, {"index": 1, "value": "x"}]
        assert result["rejected"] == [{"index": 2, "code": "empty"}, {"index": 3, "code": "blank"}]
        assert result.get("skipped", []) == []
        cohorts = asyncio.run(cohorts_of(service, clients))
        assert set(cohorts.values()) == {"strict"}
        ready = [r for r in service.log_records() if r.get("message") == "canaryws ready"]
        assert ready and ready[0]["default_strategy"] == "strict", service.logs()
        spans = service.wait_for_spans(lambda s: sum(x["name"] == SUMMARY for x in s) >= len(clients) + 1)
    summaries = [s for s in spans if s["name"] == SUMMARY]
    assert len(summaries) == len(clients) + 1
    # the expected strict share recorded on each connection is the default's: everyone
    assert {s["attributes"]["canaryws.flags.strict_share"] for s in summaries} == {1.0}
    connects = [s for s in spans if s["name"] == "records.connect"]
    events = [e["attributes"] for s in connects for e in s["events"] if e["name"] == "feature_flag.evaluation"]
    strict_events = [e for e in events if e["feature_flag.key"] == "records.strict"]
    assert strict_events and all(
        (e["feature_flag.result.value"], e["feature_flag.result.variant"], e["feature_flag.result.reason"])
        == (True, "on", "error") for e in strict_events
    )
    done = run_cli("report", "--traces", str(service.data_dir / "traces.jsonl"), "--json")
    assert done.returncode in (0, 1, 2), done.stderr
    srm = json.loads(done.stdout)["srm"]
    assert srm["checked"] and not srm["mismatch"], srm
    assert srm["expected_strict_share"] == 1.0 and srm["strict_clients"] == len(clients) + 1


def test_a_missing_flag_without_the_setting_is_lenient(tmp_path: Path) -> None:
    with Service(tmp_path, without_strict()) as service:
        welcome, frames = asyncio.run(first_batch(service, "blank-sender"))
        assert welcome["cohort"]["strategy"] == "lenient"
        (result,) = frames
        assert result["strategy"] == "lenient"
        assert result["skipped"] == [{"index": 2, "reason": "empty"}, {"index": 3, "reason": "blank"}]
        assert result.get("rejected", []) == []
        spans = service.wait_for_spans(lambda s: any(x["name"] == SUMMARY for x in s))
    assert [s["attributes"]["canaryws.flags.strict_share"] for s in spans if s["name"] == SUMMARY] == [0.0]


@pytest.mark.parametrize(("env", "after"), [({"CANARYWS_DEFAULT_STRATEGY": "Strict"}, "strict"), ({}, "lenient")],
                         ids=["strict-default", "no-setting"])
def test_deleting_the_flag_under_an_open_connection(tmp_path: Path, env: dict[str, str], after: str) -> None:
    """The clean-up's last step: with the setting, a strict connection stays strict and gets no
    cohort frame; without it (the control), the same deletion sends it back to lenient."""
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        async def scenario() -> None:
            async with service.client("long-lived") as (ws, welcome):
                assert welcome["cohort"]["strategy"] == "strict"
                old = welcome["cohort"]["flags_revision"]
                frames = await send_batch(ws, "before", [""])
                assert [f["type"] for f in frames] == ["result"] and frames[0]["strategy"] == "strict"

                service.write_flags(without_strict())
                status = service.wait_for_revision(lambda st: st["revision"] != old and st["state"] == "ok")
                assert status["revision"] != old and status["state"] == "ok"
                t0 = time.monotonic()
                # the connection re-decides at its next batch once the new revision is in force
                frames = await send_batch(ws, "after", ["", " y "])
                while after == "lenient" and frames[0]["type"] != "cohort" and time.monotonic() - t0 < 3:
                    await asyncio.sleep(0.05)
                    frames = await send_batch(ws, f"after-{time.monotonic()}", ["", " y "])
                if after == "strict":
                    assert [f["type"] for f in frames] == ["result"], frames
                    (result,) = frames
                    assert result["strategy"] == "strict"
                    assert result["rejected"] == [{"index": 0, "code": "empty"}]
                    assert result["accepted"] == [{"index": 1, "value": "y"}]
                else:
                    assert [f["type"] for f in frames] == ["cohort", "result"], frames
                    assert frames[0]["cohort"]["strategy"] == "lenient"
                    assert frames[1]["skipped"] == [{"index": 0, "reason": "empty"}]
                # a new connection on the new revision gets the same strategy
                async with service.client("newcomer") as (_, fresh):
                    assert fresh["cohort"]["strategy"] == after
                    assert fresh["cohort"]["flags_revision"] == status["revision"]

        asyncio.run(scenario())
        metrics = service.get("/metrics").text
        logs = service.logs()
    to_lenient = metric_value(metrics, "canaryws_cohort_changes_total", to="lenient")
    if after == "strict":
        assert "cohort changed" not in logs
        assert to_lenient == 0
    else:
        assert "cohort changed" in logs
        assert to_lenient == 1


def test_an_invalid_default_strategy_stops_serve(tmp_path: Path) -> None:
    args = ["serve", "--port", "1", "--data-dir", str(tmp_path / "d")]
    for value in ("bogus", "on"):
        done = run_cli(*args, env={"CANARYWS_DEFAULT_STRATEGY": value})
        assert done.returncode == 1, done.stderr
        assert "cannot start: invalid configuration: CANARYWS_DEFAULT_STRATEGY" in done.stderr, done.stderr
        assert repr(value) in done.stderr and "lenient or strict" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_flags_show_without_the_strict_flag(tmp_path: Path) -> None:
    path = tmp_path / "features.json"
    path.write_text(json.dumps(without_strict()))
    done = run_cli("flags", "show", "--json", "--flags", str(path))
    assert done.returncode == 0, done.stderr
    assert [f["name"] for f in json.loads(done.stdout)["flags"]] == ["records.shadow"]
