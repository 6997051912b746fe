"""The realistic workload of ``make bench`` (issue 26): a seeded pool of batch frames built from Faker's text.

    .venv/bin/python bench/workload.py summary [--seed 2026] [--batches 3000]   # the distribution, as text
    .venv/bin/python bench/workload.py write POOL_FILE [--seed 2026] [--batches 3000]  # the pool; summary as JSON

The fixed shape of ``bench/load.py run`` (30 short ASCII records, one blank, one control
character, one number) measures one point. This pool is a whole distribution, drawn from one
seed, generated before the run (the load client only sends pre-encoded frames):

- **Text.** Faker (a dev dependency pinned in ``uv.lock``; its output for a seed is stable for a
  given Faker version) in nine locales that cover mixed scripts, weighted: en_US 0.30, de_DE,
  ru_RU, zh_CN 0.10 each, ja_JP, ar_AA, hi_IN, el_GR, ko_KR 0.08 each (Latin, Cyrillic, Han,
  kana, Arabic, Devanagari, Greek and Hangul; some locales' sentences are Latin lorem ipsum).
  A corpus of ``CORPUS_PER_KIND`` texts per locale and kind is generated first, then records
  draw from it. Record kinds (weights): a word 0.10, a person's name 0.25, a postal address
  0.15 (its line breaks as ", "), a sentence 0.30, a paragraph of 1-12 sentences 0.15, a text
  of up to 200-4,000 characters (log-uniform) 0.04, a document of several paragraphs cut to
  2,000-4,096 characters 0.01. Line breaks inside a text become spaces, and every other control
  character is removed, so a clean record is accepted by the strict strategy. Lengths come out
  heavy-tailed: mostly short, a few long (``summary`` prints the percentiles).
- **Edge whitespace.** 15 % of the clean records get leading and/or trailing whitespace (spaces,
  a tab, CR LF, U+00A0, U+3000), which the transform strips.
- **Defects**, each the share of all records, one per strict v1 reason
  (``canaryws.core.strategies.reasons``): ``missing`` (null) 1.0 %, ``not_a_string`` (a number,
  a boolean, an object or an array) 1.0 %, ``empty`` ("") 1.0 %, ``blank`` (only whitespace,
  e.g. a tab, CR LF, U+3000) 1.5 %, ``control_character`` (NUL, SOH, BEL, BS, ESC, DEL, CSI or
  a line break inside a text) 1.0 %, ``too_long`` (a text longer than ``--max-length``, the
  strict strategy's 4,096 code points after stripping, by 1x-2x) 0.3 %. About 5.8 % of the
  records are defective; every record's intended reason is kept, and the unit test checks that
  the strict strategy gives exactly that reason.
- **Batch sizes**: a bounded discrete power law (Zipf) ``P(k) ~ k^-1.6`` for ``k`` in
  1..``DEFAULT_MAX_RECORDS`` (10,000, core/contract.py): median 2, p90 ~26, p99 ~840, mean ~43
  records; and one batch of exactly the maximum in every pool. Batches of more than 1,000
  records (bulk uploads) draw their clean texts from the short kinds only (word, name, address,
  sentence). A frame never exceeds ``FRAME_BUDGET`` bytes (960 KiB, under the servers' 1 MiB
  frame limit): records are dropped from the end of a batch until it fits (counted as
  ``truncated``).
- **Well-formed frames only**: every frame is a JSON batch the contract accepts, so each of its
  records gets an outcome. Malformed frames are bench/hostile.py's business.

Everything derives from ``--seed`` (default ``DEFAULT_SEED``): Faker instances, the corpus, the
sizes, the kinds, the defects, the order in which the load client sends batches. The same seed
gives the same pool, byte for byte (``tests/unit/test_bench_workload.py``).

The pool file (``write``) has one line per batch: a JSON header (``n`` records, ``expect``: the
strict outcome counts per reason and ``accepted``), a tab, the records as a JSON array (UTF-8).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from faker import Faker

DEFAULT_SEED = 2026
DEFAULT_BATCHES = 3000
DEFAULT_MAX_RECORDS = 10_000  # canaryws.core.contract.DEFAULT_MAX_RECORDS (the test checks they agree)
DEFAULT_MAX_LENGTH = 4096  # canaryws.core.strategies.strict.DEFAULT_MAX_LENGTH (idem)
FRAME_BUDGET = 960 * 1024  # bytes of a whole frame, id included (the servers refuse frames over 1 MiB)
ID_ROOM = 64  # bytes kept for '{"type":"batch","id":"...","records":' and '}'
ZIPF_EXPONENT = 1.6
BATCHES_AT_MAX = 1
BULK_THRESHOLD = 1000  # batches larger than this carry short texts only
CORPUS_PER_KIND = 120

LOCALES: dict[str, float] = {
    "en_US": 0.30, "de_DE": 0.10, "ru_RU": 0.10, "zh_CN": 0.10, "ja_JP": 0.08, "ar_AA": 0.08, "hi_IN": 0.08,
    "el_GR": 0.08, "ko_KR": 0.08,
}
KINDS: dict[str, float] = {
    "word": 0.10, "name": 0.25, "address": 0.15, "sentence": 0.30, "paragraph": 0.15, "text": 0.04, "document": 0.01,
}
SHORT_KINDS = ("word", "name", "address", "sentence")
EDGE_WHITESPACE_SHARE = 0.15
DEFECTS: dict[str, float] = {
    "missing": 0.010, "not_a_string": 0.010, "empty": 0.010, "blank": 0.015, "control_character": 0.010,
    "too_long": 0.003,
}
REASONS = tuple(DEFECTS)
EDGES = (" ", "  ", "\t", "\r\n", "\n", "\u00a0", "\u3000", " \t")
BLANKS = (" ", "   ", "\t", "\n", "\r\n", "\u00a0", "\u3000", " \t \r\n", "\u2003\u2003")
CONTROLS = ("\x00", "\x01", "\x07", "\x08", "\x1b", "\x7f", "\x9b", "\n")
# C0/C1 controls other than tab (canaryws.core.strategies.reasons.CONTROL_CHARACTERS)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_SCRIPTS = {"LATIN": "Latin", "CYRILLIC": "Cyrillic", "GREEK": "Greek", "ARABIC": "Arabic",
            "DEVANAGARI": "Devanagari", "CJK": "Han", "HIRAGANA": "Kana", "KATAKANA": "Kana", "HANGUL": "Hangul"}


def _clean(text: str) -> str:
    return _CONTROL.sub("", _LINE_BREAKS.sub(" ", text)).strip()


def script_of(text: str) -> str:
    """The script most of the letters of ``text`` are in (Latin, Cyrillic, Han, ...; "none" without letters)."""
    counts: Counter[str] = Counter()
    for ch in text[:400]:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            counts[_SCRIPTS.get(name.split(" ", 1)[0], "other")] += 1
    return counts.most_common(1)[0][0] if counts else "none"


@dataclass(frozen=True)
class PoolBatch:
    """One batch of the pool: its records, encoded, and the strict outcome each record was made for."""

    records: bytes  # the JSON array, UTF-8
    reasons: tuple[str | None, ...]  # per record: the strict reason it was built for, None when accepted
    scripts: tuple[str, ...]  # per string record with text: its script ("" for the others)
    truncated: bool = False

    @property
    def size(self) -> int:
        return len(self.reasons)

    def expect(self) -> dict[str, int]:
        counts = Counter(reason or "accepted" for reason in self.reasons)
        return {key: counts.get(key, 0) for key in ("accepted", *REASONS)}

    def frame(self, batch_id: str) -> bytes:
        return b'{"type":"batch","id":' + json.dumps(batch_id).encode() + b',"records":' + self.records + b"}"


@dataclass
class Pool:
    seed: int
    batches: list[PoolBatch]
    max_records: int
    max_length: int
    order: list[int] = field(default_factory=list)  # the seeded order in which the load client sends them

    def summary(self) -> dict[str, Any]:
        return summarize(self)


class _Generator:
    def __init__(self, seed: int, max_length: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.max_length = max_length
        self.locales = list(LOCALES)
        self.locale_p = np.array(list(LOCALES.values())) / sum(LOCALES.values())
        self.kinds = list(KINDS)
        self.kind_p = np.array(list(KINDS.values())) / sum(KINDS.values())
        short = np.array([KINDS[k] if k in SHORT_KINDS else 0.0 for k in self.kinds])
        self.short_p = short / short.sum()
        self.corpus: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (locale, kind) -> [(text, script)]
        for i, locale in enumerate(self.locales):
            fake = Faker(locale)
            fake.seed_instance(seed * 100 + i)
            for kind in self.kinds:
                texts = [_clean(self._text(fake, kind)) for _ in range(CORPUS_PER_KIND)]
                self.corpus[locale, kind] = [(t, script_of(t)) for t in texts if t]

    def _text(self, fake: Faker, kind: str) -> str:
        rng = self.rng
        if kind == "word":
            return str(fake.word())
        if kind == "name":
            return str(fake.name())
        if kind == "address":
            return _LINE_BREAKS.sub(", ", str(fake.address()))
        if kind == "sentence":
            return str(fake.sentence(nb_words=int(rng.integers(3, 16))))
        if kind == "paragraph":
            return str(fake.paragraph(nb_sentences=int(rng.integers(1, 13)), variable_nb_sentences=False))
        if kind == "text":
            limit = int(math.exp(rng.uniform(math.log(200), math.log(4000))))
            return str(fake.text(max_nb_chars=limit))
        # document: paragraphs up to 2,000-4,096 characters
        target = int(rng.integers(2000, self.max_length + 1))
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target:
            parts.append(str(fake.paragraph(nb_sentences=8)))
        return " ".join(parts)[:target]

    def text(self, short: bool) -> tuple[str, str]:
        """One corpus text (one draw of locale, kind and text)."""
        return self.texts(1, short)[0]

    def texts(self, count: int, short: bool) -> list[tuple[str, str]]:
        """``count`` corpus texts with their scripts, drawn at once."""
        rng = self.rng
        locales = rng.choice(len(self.locales), size=count, p=self.locale_p)
        kinds = rng.choice(len(self.kinds), size=count, p=self.short_p if short else self.kind_p)
        picks = rng.random(count)
        out = []
        for locale, kind, pick in zip(locales.tolist(), kinds.tolist(), picks.tolist(), strict=True):
            texts = self.corpus[self.locales[locale], self.kinds[kind]]
            text, script = texts[int(pick * len(texts))]
            out.append((text[:self.max_length].strip(), script))
        return out

    def records(self, reasons: Sequence[str | None], short: bool) -> list[tuple[Any, str]]:
        """The records made for ``reasons`` (None: accepted), each with its script ("" when it has no text)."""
        rng = self.rng
        texts = self.texts(len(reasons), short)
        edges = rng.random(len(reasons)) < EDGE_WHITESPACE_SHARE
        out: list[tuple[Any, str]] = []
        for reason, (text, script), edge in zip(reasons, texts, edges.tolist(), strict=True):
            if reason is None:
                if edge:
                    side = int(rng.integers(3))
                    left = EDGES[int(rng.integers(len(EDGES)))] if side != 1 else ""
                    right = EDGES[int(rng.integers(len(EDGES)))] if side != 0 else ""
                    text = left + text + right
                out.append((text, script))
            else:
                out.append(self.defect(reason, text, script))
        return out

    def defect(self, reason: str, text: str, script: str) -> tuple[Any, str]:
        """A record the strict strategy rejects with ``reason`` (``text``: a clean text to start from)."""
        rng = self.rng
        if reason == "missing":
            return None, ""
        if reason == "not_a_string":
            pick = int(rng.integers(5))
            if pick == 0:
                return int(rng.integers(-10**6, 10**9)), ""
            if pick == 1:
                return round(float(rng.normal(0, 1000)), 3), ""
            if pick == 2:
                return bool(rng.integers(2)), ""
            return ({"value": text}, script) if pick == 3 else ([text], script)
        if reason == "empty":
            return "", ""
        if reason == "blank":
            return BLANKS[int(rng.integers(len(BLANKS)))], ""
        if reason == "too_long":
            target = int(self.max_length * rng.uniform(1.0, 2.0)) + 1
            parts = [text]
            while sum(len(p) + 1 for p in parts) < target:
                parts.append(self.text(False)[0])
            return " ".join(parts)[:target], script
        if reason == "control_character":
            if len(text) < 2:
                text = text + "x"
            at = int(rng.integers(1, len(text)))
            text = text[:at] + CONTROLS[int(rng.integers(len(CONTROLS)))] + text[at:]
            return text[: self.max_length], script
        raise ValueError(f"unknown reason {reason!r}")


def batch_sizes(rng: np.random.Generator, count: int, max_records: int, exponent: float = ZIPF_EXPONENT) -> list[int]:
    """``count`` sizes from the bounded power law ``P(k) ~ k^-exponent`` on 1..max_records."""
    k = np.arange(1, max_records + 1, dtype=np.float64)
    p = k ** -exponent
    p /= p.sum()
    return [int(v) for v in rng.choice(max_records, size=count, p=p) + 1]


def generate(seed: int = DEFAULT_SEED, batches: int = DEFAULT_BATCHES, max_records: int = DEFAULT_MAX_RECORDS,
             max_length: int = DEFAULT_MAX_LENGTH) -> Pool:
    """The pool of ``batches`` batches for ``seed`` (the same seed, the same pool)."""
    gen = _Generator(seed, max_length)
    rng = gen.rng
    sizes = batch_sizes(rng, batches, max_records)
    for i in rng.choice(batches, size=min(BATCHES_AT_MAX, batches), replace=False):
        sizes[int(i)] = max_records
    reason_names = [None, *REASONS]
    reason_p = np.array([1.0 - sum(DEFECTS.values()), *DEFECTS.values()])
    out = []
    limit = FRAME_BUDGET - ID_ROOM
    for size in sizes:
        short = size > BULK_THRESHOLD
        reasons: list[str | None] = [reason_names[int(i)] for i in rng.choice(len(reason_names), size=size, p=reason_p)]
        made = gen.records(reasons, short)
        encoded = [json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() for value, _ in made]
        total = sum(len(e) + 1 for e in encoded) + 1
        truncated = False
        while total > limit and len(encoded) > 1:
            total -= len(encoded.pop()) + 1
            reasons.pop()
            made.pop()
            truncated = True
        out.append(PoolBatch(b"[" + b",".join(encoded) + b"]", tuple(reasons), tuple(s for _, s in made), truncated))
    order = [int(i) for i in rng.permutation(len(out))]
    return Pool(seed, out, max_records, max_length, order)


# -- the summary ---------------------------------------------------------------------------------

def _percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}
    out.update(mean=float(arr.mean()), min=float(arr.min()), max=float(arr.max()))
    return out


def summarize(pool: Pool) -> dict[str, Any]:
    """The pool's distribution: batch sizes, record lengths (code points, strings only), frame bytes,
    the share of records per script and per defect, and the settings that made it."""
    sizes = [b.size for b in pool.batches]
    records = sum(sizes)
    lengths: list[int] = []
    for batch in pool.batches:
        for value in json.loads(batch.records):
            if isinstance(value, str):
                lengths.append(len(value))
    reasons = Counter(r for b in pool.batches for r in b.reasons)
    scripts = Counter(s for b in pool.batches for s in b.scripts if s)
    with_text = sum(scripts.values())
    return {
        "seed": pool.seed,
        "batches": len(pool.batches),
        "records": records,
        "max_records": pool.max_records,
        "max_length": pool.max_length,
        "zipf_exponent": ZIPF_EXPONENT,
        "batch_size": _percentiles(sizes),
        "batches_at_max": sum(1 for s in sizes if s == pool.max_records),
        "truncated_batches": sum(1 for b in pool.batches if b.truncated),
        "record_length": _percentiles(lengths),
        "frame_bytes": _percentiles([len(b.records) + ID_ROOM for b in pool.batches]),
        "bytes_per_record": sum(len(b.records) for b in pool.batches) / max(records, 1),
        "defects": {reason: reasons.get(reason, 0) / records for reason in REASONS},
        "defective": sum(reasons.get(reason, 0) for reason in REASONS) / records,
        "scripts": {name: count / with_text for name, count in scripts.most_common()},
        "locales": LOCALES,
        "kinds": KINDS,
        "configured_defects": DEFECTS,
        "edge_whitespace_share": EDGE_WHITESPACE_SHARE,
    }


def summary_text(summary: dict[str, Any]) -> str:
    def pcts(d: dict[str, float], digits: int = 0) -> str:
        return ", ".join(f"{k} {v:,.{digits}f}" for k, v in d.items())

    lines = [
        f"pool: {summary['batches']:,} batches, {summary['records']:,} records, seed {summary['seed']} "
        f"(max {summary['max_records']:,} records per batch, strict max length {summary['max_length']:,})",
        f"batch size (records), Zipf exponent {summary['zipf_exponent']}: {pcts(summary['batch_size'], 1)}; "
        f"{summary['batches_at_max']} at the maximum, {summary['truncated_batches']} truncated to fit the frame budget",
        f"record length (code points, strings): {pcts(summary['record_length'], 1)}",
        f"frame bytes: {pcts(summary['frame_bytes'])}; {summary['bytes_per_record']:.1f} bytes per record",
        "scripts (records with text): " + ", ".join(f"{k} {v:.1%}" for k, v in summary["scripts"].items()),
        "defects (share of records): " + ", ".join(f"{k} {v:.2%}" for k, v in summary["defects"].items())
        + f"; all {summary['defective']:.2%}",
    ]
    return "\n".join(lines)


# -- the pool file -----------------------------------------------------------------------------

def write_pool(pool: Pool, path: Path) -> None:
    with path.open("wb") as out:
        for index in pool.order:
            batch = pool.batches[index]
            out.write(json.dumps({"n": batch.size, "expect": batch.expect()}).encode() + b"\t" + batch.records + b"\n")


def read_pool(path: Path) -> list[tuple[bytes, int, dict[str, int]]]:
    """The batches of a pool file, in their seeded order: (records as a JSON array, count, expected outcomes)."""
    out = []
    with path.open("rb") as lines:
        for line in lines:
            header, records = line.rstrip(b"\n").split(b"\t", 1)
            meta = json.loads(header)
            out.append((records, int(meta["n"]), {k: int(v) for k, v in meta["expect"].items()}))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("summary", "write"))
    parser.add_argument("path", nargs="?", type=Path)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--batches", type=int, default=DEFAULT_BATCHES)
    parser.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS)
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    args = parser.parse_args(argv)
    pool = generate(args.seed, args.batches, args.max_records, args.max_length)
    summary = pool.summary()
    if args.command == "summary":
        print(summary_text(summary))
        return 0
    if args.path is None:
        parser.error("write needs a POOL_FILE")
    write_pool(pool, args.path)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
