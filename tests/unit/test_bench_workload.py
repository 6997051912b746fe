"""bench/workload.py, the realistic workload of ``make bench`` (issue 26): one seed gives one pool,
byte for byte; batch sizes stay within 1..the contract's maximum and frames under the frame budget;
every frame is a batch the contract decodes, and the strict strategy gives each record exactly
the reason it was built for; the defect shares are near the configured ones; the text mixes scripts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from canaryws.core import contract
from canaryws.core.strategies import strict

WORKLOAD = Path(__file__).resolve().parents[2] / "bench" / "workload.py"
BATCHES = 400


def load_workload() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_workload", WORKLOAD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workload() -> ModuleType:
    return load_workload()


@pytest.fixture(scope="module")
def pool(workload: ModuleType) -> Any:
    return workload.generate(seed=7, batches=BATCHES)


def test_its_limits_are_the_contracts(workload: ModuleType) -> None:
    assert workload.DEFAULT_MAX_RECORDS == contract.DEFAULT_MAX_RECORDS
    assert workload.DEFAULT_MAX_LENGTH == strict.DEFAULT_MAX_LENGTH
    assert set(workload.REASONS) == {"missing", "not_a_string", "empty", "blank", "control_character", "too_long"}


def test_the_same_seed_gives_the_same_pool_and_another_seed_another(workload: ModuleType, pool: Any) -> None:
    again = workload.generate(seed=7, batches=BATCHES)
    assert [b.records for b in again.batches] == [b.records for b in pool.batches]
    assert again.order == pool.order
    other = workload.generate(seed=8, batches=BATCHES)
    assert [b.records for b in other.batches] != [b.records for b in pool.batches]


def test_batch_sizes_are_heavy_tailed_within_one_to_the_maximum(workload: ModuleType, pool: Any) -> None:
    sizes = [b.size for b in pool.batches]
    assert min(sizes) >= 1 and max(sizes) == contract.DEFAULT_MAX_RECORDS  # one batch at the maximum
    assert sorted(sizes)[len(sizes) // 2] <= 5  # mostly small
    assert sum(1 for s in sizes if s > 100) >= 0.02 * len(sizes)  # a tail of large ones
    big = workload.batch_sizes(np.random.default_rng(1), 20_000, 10_000)
    assert min(big) >= 1 and max(big) <= 10_000 and max(big) > 1000


def test_every_frame_decodes_and_strict_gives_each_record_its_intended_reason(workload: ModuleType,
                                                                              pool: Any) -> None:
    for i, batch in enumerate(pool.batches):
        frame = batch.frame(f"b-{i}")
        assert len(frame) <= workload.FRAME_BUDGET
        decoded = contract.decode_batch(frame)
        assert decoded.id == f"b-{i}" and len(decoded.records) == batch.size
        outcome = strict.process(decoded.records, strict.DEFAULT_MAX_LENGTH)
        got: list[str | None] = [None] * batch.size
        for index, code in outcome.rejected:
            got[index] = code
        assert got == list(batch.reasons), i
        assert batch.expect()["accepted"] == len(outcome.accepted)


def test_defect_shares_are_near_the_configured_ones(workload: ModuleType) -> None:
    summary = workload.generate(seed=11, batches=1500).summary()
    assert summary["records"] > 20_000
    for reason, share in workload.DEFECTS.items():
        assert summary["defects"][reason] == pytest.approx(share, rel=0.35, abs=0.0015), reason
    assert summary["defective"] == pytest.approx(sum(workload.DEFECTS.values()), rel=0.15)


def test_the_text_mixes_scripts_and_lengths(workload: ModuleType, pool: Any) -> None:
    summary = pool.summary()
    scripts = summary["scripts"]
    for script in ("Latin", "Cyrillic", "Greek", "Arabic", "Devanagari", "Han", "Kana", "Hangul"):
        assert scripts.get(script, 0) > 0.01, (script, scripts)
    assert scripts["Latin"] < 0.7
    lengths = summary["record_length"]
    assert lengths["p50"] < 60 and lengths["max"] > strict.DEFAULT_MAX_LENGTH  # mostly short, some too long
    assert lengths["p99"] > 5 * lengths["p50"]
    # some clean records carry edge whitespace the transform strips
    values = [v for b in pool.batches for v, r in zip(json.loads(b.records), b.reasons, strict=True)
              if r is None]
    edged = sum(1 for v in values if v != v.strip()) / len(values)
    assert edged == pytest.approx(workload.EDGE_WHITESPACE_SHARE, rel=0.3)


def test_the_pool_file_round_trips(workload: ModuleType, pool: Any, tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    workload.write_pool(pool, path)
    read = workload.read_pool(path)
    assert len(read) == BATCHES
    first = pool.batches[pool.order[0]]
    records, n, expect = read[0]
    assert records == first.records and n == first.size and expect == first.expect()
    assert sum(e["accepted"] + sum(e[r] for r in workload.REASONS) for _, _, e in read) == sum(n for _, n, _ in read)
