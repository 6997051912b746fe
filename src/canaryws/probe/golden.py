"""The probe's golden corpus: versioned batches with the outcome each ``strategy@version`` must
answer (``golden/v1.json``, package data), and the check of a result against it.

The corpus is data, not code, so that it can be read, reviewed and diffed on its own; the unit
test ``tests/unit/test_probe_golden.py`` runs every batch through the core strategies and fails
when the file and the code disagree. A result for a ``strategy@version`` the corpus does not know
cannot be checked: :func:`expectation` raises :class:`UnknownVersion` (the probe reports it as its
own failure kind, ``unknown_version``: the service runs a strategy version this probe predates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

CORPUS_VERSION = 1
_RESOURCE = f"v{CORPUS_VERSION}.json"


class CorpusError(ValueError):
    """The corpus file is not of the documented form."""


class UnknownVersion(LookupError):
    """A result of a ``strategy@version`` the corpus has no expectation for."""

    def __init__(self, key: str, known: Sequence[str]) -> None:
        super().__init__(f"the golden corpus has no expectation for {key} (it knows {', '.join(known)})")
        self.key = key


@dataclass(frozen=True, slots=True)
class Expected:
    """One strategy@version's answer to one batch: ``(index, value)`` accepted, ``(index,
    reason)`` skipped, ``(index, code)`` rejected, each in ascending index order."""

    accepted: tuple[tuple[int, str], ...]
    skipped: tuple[tuple[int, str], ...]
    rejected: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class GoldenBatch:
    id: str
    about: str
    records: tuple[Any, ...]
    expected: Mapping[str, Expected]  # "strict@1" -> Expected

    def expectation(self, strategy: str, version: int) -> Expected:
        key = f"{strategy}@{version}"
        try:
            return self.expected[key]
        except KeyError:
            raise UnknownVersion(key, sorted(self.expected)) from None


@dataclass(frozen=True, slots=True)
class Corpus:
    version: int
    max_record_length: int
    batches: tuple[GoldenBatch, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The ``strategy@version`` every batch has an expectation for."""
        common = set.intersection(*(set(b.expected) for b in self.batches)) if self.batches else set()
        return tuple(sorted(common))


def _string(spec: object, where: str) -> str:
    """A string, or ``{"repeat": S, "times": N, "pad": P}`` = P + S * N + P."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and set(spec) <= {"repeat", "times", "pad"}:
        repeat, times, pad = spec.get("repeat"), spec.get("times"), spec.get("pad", "")
        if isinstance(repeat, str) and repeat and isinstance(times, int) and 0 < times <= 100_000 \
                and isinstance(pad, str):
            return pad + repeat * times + pad
    raise CorpusError(f"{where}: a string or {{\"repeat\": S, \"times\": N, \"pad\": P}}, got {spec!r:.80}")


def _entries(raw: object, field: str, where: str) -> tuple[tuple[int, str], ...]:
    if not isinstance(raw, list):
        raise CorpusError(f"{where}: {field} is a list")
    out = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"index", field} or not isinstance(entry["index"], int):
            raise CorpusError(f"{where}: each entry is {{\"index\": i, \"{field}\": ...}}, got {entry!r:.80}")
        out.append((entry["index"], _string(entry[field], f"{where}[{entry['index']}]")))
    return tuple(out)


def parse_corpus(data: object) -> Corpus:
    """The corpus from its JSON form (:class:`CorpusError` when it is not of that form)."""
    if not isinstance(data, dict) or not isinstance(data.get("batches"), list):
        raise CorpusError("the corpus is an object with a list of batches")
    version, max_length = data.get("version"), data.get("max_record_length")
    if not isinstance(version, int) or not isinstance(max_length, int):
        raise CorpusError("the corpus has an integer version and max_record_length")
    batches = []
    seen: set[str] = set()
    for raw in data["batches"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or raw["id"] in seen:
            raise CorpusError(f"a batch has a unique string id: {raw!r:.80}")
        batch_id = raw["id"]
        seen.add(batch_id)
        records = raw.get("records")
        if not isinstance(records, list):
            raise CorpusError(f"batch {batch_id}: records is a list")
        records = list(records)
        generated = raw.get("generated", {})
        if not isinstance(generated, dict):
            raise CorpusError(f"batch {batch_id}: generated is an object")
        for key, spec in generated.items():
            index = int(key)
            if not 0 <= index < len(records) or records[index] is not None:
                raise CorpusError(f"batch {batch_id}: generated record {key} replaces no null placeholder")
            records[index] = _string(spec, f"batch {batch_id} record {key}")
        expected_raw = raw.get("expected")
        if not isinstance(expected_raw, dict) or not expected_raw:
            raise CorpusError(f"batch {batch_id}: expected maps strategy@version to an outcome")
        expected = {}
        for key, outcome in expected_raw.items():
            where = f"batch {batch_id} {key}"
            if not isinstance(outcome, dict) or set(outcome) != {"accepted", "skipped", "rejected"}:
                raise CorpusError(f"{where}: an outcome has accepted, skipped and rejected")
            expected[key] = Expected(_entries(outcome["accepted"], "value", where),
                                     _entries(outcome["skipped"], "reason", where),
                                     _entries(outcome["rejected"], "code", where))
        batches.append(GoldenBatch(batch_id, str(raw.get("about", "")), tuple(records), expected))
    return Corpus(version, max_length, tuple(batches))


def load_corpus() -> Corpus:
    """The corpus shipped with this package (``canaryws/probe/golden/v1.json``)."""
    text = (files("canaryws.probe") / "golden" / _RESOURCE).read_text(encoding="utf-8")
    return parse_corpus(json.loads(text))


def _show(value: str) -> str:
    return repr(value) if len(value) <= 40 else f"{value[:20]!r}…({len(value)} code points)"


def differences(expected: Expected, accepted: Sequence[tuple[int, str]], skipped: Sequence[tuple[int, str]],
                rejected: Sequence[tuple[int, str]], limit: int = 5) -> list[str]:
    """What differs between an answer and its expectation, per index (at most ``limit`` lines,
    then a count); empty when they agree."""
    def by_index(kind: str, entries: Sequence[tuple[int, str]]) -> dict[int, tuple[str, str]]:
        return {index: (kind, value) for index, value in entries}

    want = {**by_index("accepted", expected.accepted), **by_index("skipped", expected.skipped),
            **by_index("rejected", expected.rejected)}
    got = {**by_index("accepted", accepted), **by_index("skipped", skipped), **by_index("rejected", rejected)}
    problems = []
    for index in sorted(set(want) | set(got)):
        if want.get(index) != got.get(index):
            w, g = want.get(index), got.get(index)
            problems.append(f"index {index}: expected {_describe(w)}, got {_describe(g)}")
    if len(problems) > limit:
        return [*problems[:limit], f"and {len(problems) - limit} more"]
    return problems


def _describe(entry: tuple[str, str] | None) -> str:
    if entry is None:
        return "nothing"
    kind, value = entry
    return f"accepted {_show(value)}" if kind == "accepted" else f"{kind} {value}"
