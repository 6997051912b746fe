"""``canaryws guard``: the rollback on evidence, the stage's start, the replay, and the rollback
through a real Unleash server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness import (
    Service,
    UnleashServer,
    flags_doc,
    json_log_lines,
    records_with_blanks,
    run_cli,
    run_client,
    write_guard_summaries,
)

pytestmark = pytest.mark.integration


def guard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("guard", *args, env=env)


def test_guard_rolls_back_once_a_critical_metric_shows_harm(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, strict_close=1011)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
    done = guard("--traces", str(traces), "--flags", str(flags), "--interval", "0.2")
    assert done.returncode == 1, done.stderr
    (judged,) = [r for r in json_log_lines(done.stderr) if r["message"] == "guard judged the evidence"]
    assert judged["verdict"] == "rollback" and judged["connections"] == {"strict": 30, "lenient": 30}
    assert judged["reasons"][0].startswith("abnormal_close_rate: e-value reached 300")
    assert judged["strict_share"] == 0.5 and judged["e_values"]["abnormal_close_rate"] > 300
    (rolled,) = [r for r in json_log_lines(done.stderr) if r["message"].startswith("rolled back")]
    assert rolled["message"] == "rolled back: disabled records.strict"
    doc = json.loads(flags.read_text())
    assert next(f for f in doc["features"] if f["name"] == "records.strict")["enabled"] is False


def test_guard_once_on_a_healthy_window_changes_nothing_and_exits_0(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, strict_close=1000)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
    before = flags.read_text()
    done = guard("--traces", str(traces), "--flags", str(flags), "--once")
    assert done.returncode == 0, done.stderr
    (judged,) = [r for r in json_log_lines(done.stderr) if r["message"] == "guard judged the evidence"]
    assert judged["verdict"] == "hold", judged["reasons"]  # 30 quiet connections could not show a 3x rate
    assert judged["reasons"][0].startswith("abnormal_close_rate: too little evidence to promote")
    assert judged["connections"] == {"strict": 30, "lenient": 30}
    done = guard("--traces", str(traces), "--flags", str(flags), "--once", "--detect-excess", "0.9")
    (judged,) = [r for r in json_log_lines(done.stderr) if r["message"] == "guard judged the evidence"]
    assert judged["verdict"] == "promote", judged["reasons"]
    assert flags.read_text() == before


def test_guard_since_leaves_out_older_summaries(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, strict_close=1011)
    time.sleep(1.2)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
    done = guard("--traces", str(traces), "--flags", str(flags), "--once", "--since", "1s")
    assert done.returncode == 0, done.stderr
    (judged,) = [r for r in json_log_lines(done.stderr) if r["message"] == "guard judged the evidence"]
    assert judged["verdict"] == "hold" and judged["connections"] == {"strict": 0, "lenient": 0}


def test_guard_replay_prints_every_judgement_and_the_action_and_changes_nothing(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, strict_close=1011)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
    before = flags.read_text()
    done = guard("--traces", str(traces), "--flags", str(flags), "--replay", "--json", "--interval", "1")
    assert done.returncode == 1, done.stderr
    judgements = [json.loads(line) for line in done.stdout.splitlines()]
    assert judgements[-1]["verdict"] == "rollback" and judgements[-1]["action"] == "disable records.strict"
    assert all(j["action"] is None for j in judgements[:-1])
    assert "the guard would have rolled back at" in done.stderr
    assert flags.read_text() == before
    text = guard("--traces", str(traces), "--replay", "--interval", "1")
    assert text.returncode == 1 and text.stdout.splitlines()[-1].endswith("; would disable records.strict")


# ------------------------------------------------------------------- with an Unleash server


def test_guard_disables_strict_on_the_unleash_server_and_open_connections_move(
        tmp_path: Path, unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", True)
    unleash.set_rollout("records.strict", 50)
    env = {**unleash.service_env, "UNLEASH_REFRESH_INTERVAL": "1", "CANARYWS_SUMMARY_INTERVAL": "0.5"}
    with Service(tmp_path, flags_doc(strict_rollout=0), env=env) as service:
        service.wait_for_revision(lambda st: st.get("flags_from") == "server", timeout=15)

        async def scenario() -> list[Any]:
            stay_open = asyncio.Event()
            tolerant = [asyncio.create_task(run_client(service, f"u-{i}", batches=3, records=records_with_blanks,
                                                       stay_open=stay_open, interval=0.1)) for i in range(60, 76)]
            await asyncio.gather(*(run_client(service, f"u-{i}", batches=6, records=records_with_blanks,
                                              give_up_on_rejection=True, attempts=2) for i in range(60)))
            await asyncio.sleep(1.5)
            done = await asyncio.to_thread(guard, "--once", "--traces", str(service.data_dir / "traces.jsonl"),
                                           env=unleash.admin_env)
            assert done.returncode == 1, done.stderr
            (rolled,) = [r for r in json_log_lines(done.stderr) if r["message"].startswith("rolled back")]
            assert rolled["backend"].startswith(unleash.url)
            await asyncio.sleep(3.5)  # the client API serves it (~1 s), the service polls (1 s), a batch goes
            stay_open.set()
            return await asyncio.gather(*tolerant)

        runs = asyncio.run(scenario())
    feature = next(f for f in unleash.client_features()["features"] if f["name"] == "records.strict")
    assert feature["enabled"] is False
    moved = [r for r in runs if r.strategies[0] == "strict"]
    assert moved, "no tolerant client was strict"
    for run in moved:
        assert [f["cohort"]["strategy"] for f in run.cohort_frames] == ["lenient"], run
