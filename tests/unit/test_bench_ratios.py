"""bench/run.py's goal ratios per round: the shadow cost is undefined in a round where the
second strategy's own work (lean-both - lean) does not measure above zero."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def round_of(cpu: dict[str, float]) -> list[dict[str, Any]]:
    return [{"server": name, "cpu_us_per_msg": us, "rate": 1000.0} for name, us in cpu.items()]


def shadow_cost(run: ModuleType, rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    ratio = next(r for r in run.RATIOS if r.name == "shadow cost")
    values = [run.ratio_value(ratio, {r["server"]: r for r in results}) for results in rounds]
    median = run.median(values)
    return {"per_round": values, "median": median, "met": ratio.met(median)}


def test_a_round_whose_second_strategy_work_is_not_positive_has_no_shadow_ratio() -> None:
    run = load_run()
    defined = round_of({"canaryws": 60.0, "canaryws-shadow": 80.0, "lean": 50.0, "lean-both": 70.0})
    negative = round_of({"canaryws": 60.0, "canaryws-shadow": 80.0, "lean": 70.0, "lean-both": 50.0})
    zero = round_of({"canaryws": 60.0, "canaryws-shadow": 80.0, "lean": 50.0, "lean-both": 50.0})

    assert shadow_cost(run, [defined]) == {"per_round": [1.0], "median": 1.0, "met": True}
    # the noisy rounds drop out of the median instead of reading as -1.0 (a goal "met")
    assert shadow_cost(run, [defined, negative, zero])["median"] == 1.0
    only_noise = shadow_cost(run, [negative, zero])
    assert only_noise == {"per_round": [None, None], "median": None, "met": False}


def test_settings_of_a_run_limited_to_some_servers_go_into_the_json_document() -> None:
    run = load_run()
    args = run.parse_args(["--servers", "lean,canaryws", "--rounds", "2"])
    settings = run.Settings.from_args(args)
    document = json.loads(json.dumps(settings.to_json()))
    assert document["only"] == ["canaryws", "lean"]
    assert document["rounds"] == 2 and document["scale"] is False
    assert run.Settings.from_args(run.parse_args([])).to_json()["only"] is None
