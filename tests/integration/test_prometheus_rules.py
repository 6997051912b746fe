"""deploy/prometheus/alerts.yml: promtool accepts the rules and passes their unit tests, and every
metric (and selector label) the alerts use exists on a real service's /metrics, or on the guard's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import (
    REPO,
    Service,
    flags_doc,
    free_port,
    records_with_blanks,
    run_client,
    send_batch,
    write_guard_summaries,
)

pytestmark = pytest.mark.integration

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
PROMTOOL_HINT = "promtool is missing: install it (Debian/Ubuntu: apt-get install prometheus; CI installs it)"

_METRIC = re.compile(r"\bcanaryws_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(canaryws_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_CHECKED_VALUES = ("strategy", "outcome", "verdict", "result", "kind")  # label values a typo would silently break


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail(PROMTOOL_HINT)
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, f"promtool {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


# -------------------------------------------------------------------------------- promtool


def test_promtool_checks_the_rules() -> None:
    done = run_promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert "SUCCESS" in done.stdout, done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_is_tested_firing_and_quiet_and_is_annotated() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    cases: dict[str, list[list[Any]]] = {}
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    assert [group["name"] for group in yaml.safe_load(RULES.read_text())["groups"]] == ["canaryws"]
    rules = alert_rules()
    for rule in rules:
        name = rule["alert"]
        assert any(expected for expected in cases.get(name, [])), f"{name}: no test where it fires"
        assert any(not expected for expected in cases.get(name, [])), f"{name}: no test where it stays quiet"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert re.fullmatch(r"RUNBOOK\.md#[a-z0-9-]+", annotations["runbook_url"]), annotations["runbook_url"]


def test_promtool_reports_a_failing_case(tmp_path: Path) -> None:
    """The unit tests can fail: a copy whose firing case expects the wrong severity is refused."""
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    original = RULE_TESTS.read_text()
    broken = original.replace("severity: warning", "severity: page", 1)
    assert broken != original
    (tmp_path / "alerts.test.yml").write_text(broken)
    done = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "FAILED" in done.stdout + done.stderr


# ------------------------------------------------------------------- names on real endpoints


def used_names() -> tuple[set[str], dict[str, dict[str, set[str]]]]:
    """Metric names in the alerts (expressions and annotations), and per metric the label
    names its selectors match on, with the values of equality matchers."""
    names: set[str] = set()
    labels: dict[str, dict[str, set[str]]] = {}
    for rule in alert_rules():
        texts = [rule["expr"], *rule["annotations"].values()]
        for text in texts:
            names.update(_METRIC.findall(text))
            for metric, body in _SELECTOR.findall(text):
                for label, op, value in _MATCHER.findall(body):
                    values = labels.setdefault(metric, {}).setdefault(label, set())
                    if op == "=":
                        values.add(value)
    return names, labels


def exposed(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values, from Prometheus text."""
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            per_label = out.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                per_label.setdefault(label, set()).add(value)
    return out


def assert_exposed(names: set[str], labels: dict[str, dict[str, set[str]]],
                   scrape: dict[str, dict[str, set[str]]], where: str) -> None:
    missing = sorted(names - scrape.keys())
    assert not missing, f"used in {RULES.name} but not on {where}: {missing}\nexposed: {sorted(scrape)}"
    for metric in names:
        for label, values in labels.get(metric, {}).items():
            assert label in scrape[metric], f"{metric} has no label {label!r} on {where}: {sorted(scrape[metric])}"
            if label in _CHECKED_VALUES:
                unknown = values - scrape[metric][label]
                assert not unknown, f"{metric}{{{label}}} never takes {sorted(unknown)} on {where}"


def probe_metrics(service: Service) -> str:
    """What `canaryws probe --once --metrics-port` serves after a round against ``service``."""
    port = free_port()
    probe = subprocess.Popen(
        [sys.executable, "-m", "canaryws", "probe", "--url", service.ws_url, "--data-dir", str(service.data_dir),
         "--once", "--metrics-port", str(port), "--metrics-linger", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and probe.poll() is None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                text = ""
            if re.search(r'^canaryws_probe_rounds_total\{result="success"\} 1', text, re.M):
                return text
            time.sleep(0.1)
        raise AssertionError(f"the probe served no successful round: {probe.poll()}")
    finally:
        probe.send_signal(signal.SIGTERM)
        try:
            probe.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.communicate()


def rollout_metrics(root: Path) -> str:
    """What `canaryws rollout start --metrics-port` serves once it rolled back (strict's connections
    all end abnormally), while it lingers."""
    root.mkdir()
    traces, flags = root / "traces.jsonl", root / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=0, strict_enabled=False)))
    port = free_port()
    rollout = subprocess.Popen(
        [sys.executable, "-m", "canaryws", "rollout", "start", "--traces", str(traces), "--flags", str(flags),
         "--state", str(root / "rollout.json"), "--interval", "0.1", "--hold", "10s", "--metrics-port", str(port),
         "--metrics-linger", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        written = False
        while time.monotonic() < deadline and rollout.poll() is None:
            state = json.loads((root / "rollout.json").read_text()) if (root / "rollout.json").exists() else {}
            if not written and state.get("since_ns"):
                time.sleep(1.2)  # the summaries end after the step took effect
                write_guard_summaries(traces, strict_close=1011)
                written = True
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                text = ""
            if re.search(r'^canaryws_rollout_state\{state="rolled_back"\} 1', text, re.M):
                return text
            time.sleep(0.1)
        raise AssertionError(f"the controller served no rollback: {rollout.poll()}")
    finally:
        rollout.send_signal(signal.SIGTERM)
        try:
            rollout.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            rollout.kill()
            rollout.communicate()


def test_every_metric_the_alerts_use_exists_on_the_service_and_the_guard(tmp_path: Path) -> None:
    names, labels = used_names()
    probe_names = {n for n in names if n.startswith("canaryws_probe_")}
    rollout_names = {n for n in names if n.startswith("canaryws_rollout_")}
    service_names = {n for n in names if not n.startswith(("canaryws_guard_", "canaryws_probe_", "canaryws_rollout_"))}
    guard_names = names - service_names - probe_names - rollout_names
    assert service_names and guard_names and probe_names and rollout_names
    assert_exposed(rollout_names, labels, exposed(rollout_metrics(tmp_path / "rollout")), "the rollout's /metrics")

    with Service(tmp_path / "svc", flags_doc(strict_rollout=50)) as service:
        async def traffic() -> None:
            # both cohorts answer batches (strict rejects blanks, lenient skips them), connections close,
            # and one duplicate batch id gets an error frame
            await asyncio.gather(*(run_client(service, f"rules-{i}", batches=2, records=records_with_blanks)
                                   for i in range(16)))
            async with service.client("rules-dup") as (ws, _welcome):
                await send_batch(ws, "same", ["a"])
                frames = await send_batch(ws, "same", ["a"])
                assert frames[-1]["type"] == "error", frames

        asyncio.run(traffic())
        scrape = exposed(service.get("/metrics").text)
        probe_scrape = exposed(probe_metrics(service))
    # A sink that cannot commit (a PostgreSQL port nothing listens on): the `unavailable` outcome.
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with Service(tmp_path / "down", flags_doc(strict_rollout=50), env={"CANARYWS_SINK": down}) as service_down:
        async def refused() -> None:
            async with service_down.client("rules-down") as (ws, _welcome):
                await ws.send(json.dumps({"type": "batch", "id": "lost", "records": ["a"]}))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.recv(), 10)  # closed with 1013 (v1)

        asyncio.run(refused())
        for name, per_label in exposed(service_down.get("/metrics").text).items():
            for label, values in per_label.items():
                scrape.setdefault(name, {}).setdefault(label, set()).update(values)
    assert_exposed(service_names, labels, scrape, "the service's /metrics")
    assert_exposed(probe_names, labels, probe_scrape, "the probe's /metrics")

    traces = service.data_dir / "traces.jsonl"
    assert traces.exists()
    port = free_port()
    guard = subprocess.Popen(
        [sys.executable, "-m", "canaryws", "guard", "--traces", str(traces), "--flags", str(service.flags_path),
         "--interval", "0.2", "--dry-run", "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        text = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and guard.poll() is None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                text = ""
            if "canaryws_guard_last_judgement_timestamp_seconds" in text and re.search(
                    r"^canaryws_guard_last_judgement_timestamp_seconds [1-9]", text, re.M):
                break
            time.sleep(0.1)
        assert guard.poll() is None, guard.communicate()
        assert_exposed(guard_names, labels, exposed(text), "the guard's /metrics")
    finally:
        guard.send_signal(signal.SIGTERM)
        try:
            guard.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.communicate()
    assert json.loads(service.flags_path.read_text())["features"][0]["enabled"] is True  # --dry-run
