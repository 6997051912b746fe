"""README.md and docs/*.md, executed: every shell and Python block in them runs here, as written, in
the situation it is written for, or says in the page why it cannot.

The convention, modelled on RUNBOOK.md's (tests/integration/test_runbook.py):

- A fenced block whose language is ``sh``, ``bash``, ``shell``, ``console``, ``python`` or ``py``
  claims to be runnable. The line right above its fence is one of two markers:

  - ``<!-- test: ID -->``: a test of this module runs it; :data:`BLOCKS_OF` says which test runs
    which blocks, and the test fails if it did not run every block it names;
  - ``<!-- not run: REASON -->``: it cannot run here (it needs Docker, the repository's own
    files, a service that runs until stopped...); the reason says why, and where the commands
    are run instead when another test does.

  :func:`test_every_runnable_block_is_marked` fails on an unmarked block, on a test id no test
  runs, on a test that names a block that does not exist, and on a marker above no block. A page
  whose blocks carry no markers yet is listed in :data:`UNMARKED`, with why they are not run.
  Other languages (``json``, ``text``, ``promql``) are not run.
- A shell block runs as the runbook's do, in a fresh bash (``set -e``, and ``pipefail``) with the
  environment's ``bin/`` first on ``PATH`` (as after ``source .venv/bin/activate``) and no
  ``CANARYWS_*``, ``UNLEASH_*`` or ``OTEL_*`` variables, in a directory laid out as
  ``canaryws serve``'s defaults expect (``flags/features.json``, ``data/``), next to a real
  ``canaryws serve`` on a free port. The blocks are written for the default address,
  ``127.0.0.1:8000``; it is replaced by the test service's address, and nothing else is changed.
  A Python block is saved under the file name its text tells the reader to use (the README's
  client is ``client.py``, which the tour runs).

The links of README.md, CHANGELOG.md, RUNBOOK.md and docs/*.md are checked too: each relative link
names an existing file, and each ``#anchor`` a heading of its page.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_runbook import HELPERS, Block, Ran, Runbook, fenced_blocks, github_slug
from websockets.exceptions import InvalidStatus

from harness import REPO, Service, metric_value, send_batch, write_guard_summaries

pytestmark = pytest.mark.integration

README = REPO / "README.md"
DOCUMENTS = (README, *sorted((REPO / "docs").glob("*.md")))
LINKED = (*DOCUMENTS, REPO / "CHANGELOG.md", REPO / "RUNBOOK.md")
RUNNABLE = {"sh", "bash", "shell", "console", "python", "py"}
NOT_RUN = re.compile(r"^[ ]*<!-- not run: (?P<reason>.+) -->$")
ANY_MARK = re.compile(r"^[ ]*<!-- (?:test|not run): ")
DEFAULT_ADDRESS = "127.0.0.1:8000"  # what the blocks are written for: `canaryws serve`'s default
FRONT_DOOR_BYTES = 10 * 1024  # "about 8 KB": detail belongs in docs/

# Which test runs which blocks (by their <!-- test: ID --> markers).
BLOCKS_OF: dict[str, tuple[str, ...]] = {
    "test_the_readme_tour": ("readme-client", "readme-tour"),
    "test_revoking_tokens": ("revocation",),
    "test_a_replica_at_a_glance": ("replica-at-a-glance",),
    "test_replaying_the_guard": ("guard-replay",),
    "test_the_client_guide": ("client-pipeline", "client-run"),
    "test_the_sink_migrations": ("sink-migrate", "sink-rollback"),
}
# Pages whose blocks carry no marker yet, with how many there are and why they are not run; an
# entry goes once its page is marked (the count then no longer matches).
UNMARKED: dict[str, tuple[int, str]] = {}


# -- the documents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocBlock:
    page: str  # relative to the repository
    block: Block
    not_run: str | None  # the reason of a <!-- not run: ... --> marker


def outside_fences(text: str) -> str:
    return re.sub(r"^[ ]*```.*?^[ ]*```[ ]*$", "", text, flags=re.M | re.S)


def runnable_blocks() -> list[DocBlock]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        lines = text.splitlines()
        for block in fenced_blocks(text):
            if (block.info.split() or [""])[0] not in RUNNABLE:
                continue
            above = lines[block.line - 2] if block.line >= 2 else ""
            not_run = NOT_RUN.match(above)
            found.append(DocBlock(str(path.relative_to(REPO)), block, not_run["reason"] if not_run else None))
    return found


def marked_blocks() -> dict[str, DocBlock]:
    return {b.block.id: b for b in runnable_blocks() if b.block.id is not None}


def anchors(path: Path) -> set[str]:
    return {github_slug(h) for h in re.findall(r"^#+ (.+)$", outside_fences(path.read_text()), re.M)}


def links(path: Path) -> list[tuple[Path, str]]:
    """The relative links of a page: (the file it names, the anchor or "")."""
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", outside_fences(path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        out.append(((path.parent / file).resolve() if file else path, anchor))
    return out


# -- the documents, statically ------------------------------------------------------------------


def test_every_runnable_block_is_marked() -> None:
    blocks = runnable_blocks()
    assert blocks, "no runnable blocks found"
    unmarked: dict[str, list[int]] = {}
    for b in blocks:
        if b.block.id is None and b.not_run is None:
            unmarked.setdefault(b.page, []).append(b.block.line)
    for page, lines in unmarked.items():
        expected = UNMARKED.get(page, (0, ""))[0]
        assert len(lines) == expected, (
            f"{page}, lines {lines}: a ```{'/'.join(sorted(RUNNABLE))} block needs <!-- test: ID --> (and a test "
            f"in BLOCKS_OF that runs it) or <!-- not run: REASON --> on the line above its fence")
    stale = {page for page in UNMARKED if page not in unmarked}
    assert not stale, f"UNMARKED lists pages whose blocks are all marked now: {sorted(stale)}"
    for b in blocks:
        assert b.not_run is None or len(b.not_run.split()) >= 4, f"{b.page}:{b.block.line}: say why it is not run"

    ids = [b.block.id for b in blocks if b.block.id is not None]
    assert len(ids) == len(set(ids)), f"duplicate block ids: {ids}"
    covered = {block_id for blocks_run in BLOCKS_OF.values() for block_id in blocks_run}
    assert set(ids) == covered, (f"marked blocks no test runs: {sorted(set(ids) - covered)}; "
                                 f"tests name blocks that do not exist: {sorted(covered - set(ids))}")
    missing = set(BLOCKS_OF) - set(globals())
    assert not missing, f"BLOCKS_OF names tests that do not exist: {missing}"

    for path in DOCUMENTS:  # a marker always stands right above a fence
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines[:-1], 1):
            if ANY_MARK.match(line):
                assert lines[number].lstrip().startswith("```"), f"{path.name}:{number}: a marker above no block"


def test_the_links_resolve() -> None:
    broken = []
    for page in LINKED:
        for target, anchor in links(page):
            if not target.exists():
                broken.append(f"{page.relative_to(REPO)}: {target.relative_to(REPO)} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{page.relative_to(REPO)}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_door_to_every_document() -> None:
    """README.md stays short, and every page of docs/ can be reached from it by links."""
    size = len(README.read_bytes())
    assert size <= FRONT_DOOR_BYTES, f"README.md is {size} bytes: the front door is about 8 KB, detail goes in docs/"
    seen, todo = {README.resolve()}, [README]
    while todo:
        for target, _ in links(todo.pop()):
            if target.suffix == ".md" and target.exists() and target not in seen:
                seen.add(target)
                todo.append(target)
    orphans = [p.name for p in DOCUMENTS if p.resolve() not in seen]
    assert not orphans, f"docs no link leads to from README.md: {orphans}"


# -- running blocks -----------------------------------------------------------------------------


class Docs(Runbook):
    """The runbook's runner (a fresh bash with ``set -e``, the environment's ``bin/`` first on
    ``PATH``, no other variables), on the blocks a test declared in BLOCKS_OF; its helper block
    only adds ``pipefail``, and the default address is replaced by ``service``'s."""

    def __init__(self, cwd: Path, declared: tuple[str, ...]) -> None:
        super().__init__(cwd, declared)
        self.pages = marked_blocks()
        self.blocks = {HELPERS: Block(HELPERS, "sh", "set -o pipefail", 0)}

    def text(self, block_id: str, service: Service | None) -> str:
        assert block_id in self.declared, f"{block_id} is not in BLOCKS_OF for this test"
        self.ran.add(block_id)
        code = self.pages[block_id].block.code
        return code.replace(DEFAULT_ADDRESS, f"127.0.0.1:{service.port}") if service is not None else code

    def save(self, block_id: str, name: str, service: Service | None) -> Path:
        """A Python block, saved as the file the page names."""
        path = self.cwd / name
        path.write_text(self.text(block_id, service))
        return path

    def run_block(self, block_id: str, service: Service | None, expect: int = 0, timeout: float = 60) -> Ran:
        self.blocks[block_id] = Block(block_id, "sh", self.text(block_id, service), self.pages[block_id].block.line)
        return self.run(block_id, {}, expect=expect, timeout=timeout)


@pytest.fixture
def docs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Docs]:
    runner = Docs(tmp_path, BLOCKS_OF[request.function.__name__])
    failures = request.session.testsfailed
    yield runner
    if request.session.testsfailed == failures:  # the test passed: did it run all it names?
        assert runner.ran == set(runner.declared), f"in BLOCKS_OF, never run: {set(runner.declared) - runner.ran}"


def embedded_flags() -> str:
    """flags/features.json as the repository ships it: what `make serve` serves."""
    return (REPO / "flags" / "features.json").read_text()


def printed_results(out: str) -> list[dict[str, object]]:
    """The answers the README's client printed: its ``accepted:``, ``skipped:`` and
    ``rejected:`` lines (Python reprs of (index, value) pairs), one dict per run."""
    results: list[dict[str, object]] = []
    for line in out.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name in ("accepted", "skipped", "rejected"):
            if name == "accepted":
                results.append({})
            results[-1][name] = ast.literal_eval(value)
    return results


# -- the blocks, against real processes ----------------------------------------------------------


def test_the_readme_tour(tmp_path: Path, docs: Docs) -> None:
    """The tour on the embedded flags file: the client lenient, then strict after the ramp, the
    kill switch, the metrics, a report that holds, and the flags file as it was."""
    with Service(tmp_path, embedded_flags()) as service:
        docs.save("readme-client", "client.py", service)
        ran = docs.run_block("readme-tour", service)
        out = ran.out
        assert '"status":"ready"' in out, out
        assert "records.strict" in out and "records.shadow" in out  # flags show's table
        assert re.findall(r"^cohort: (\w+)$", out, re.M) == ["lenient", "strict"], out
        lenient, strict = printed_results(out)
        assert lenient["skipped"] == [(1, "empty"), (2, "missing"), (3, "not_a_string")], out
        assert lenient["rejected"] == [] and strict["skipped"] == [], out
        assert strict["rejected"] == [(1, "empty"), (2, "missing"), (3, "not_a_string")], out
        assert lenient["accepted"] == strict["accepted"] == [(0, "a")], out
        for strategy in ("lenient", "strict"):
            assert metric_value(out, "canaryws_connections_opened_total", strategy=strategy) == 1, out
        assert "Verdict: hold" in out and "exit 2: 0 promote, 1 rollback, 2 hold" in out, out
        strict_flag = next(f for f in json.loads(service.flags_path.read_text())["features"]
                           if f["name"] == "records.strict")
        assert strict_flag["enabled"] is True and strict_flag["strategies"][0]["parameters"]["rollout"] == "0"
        assert service.get("/healthz").status_code == 200


def test_revoking_tokens(tmp_path: Path, docs: Docs) -> None:
    """The revocation block: the token it revokes is refused, and so is every earlier token of
    the client; a token issued afterwards works."""
    with Service(tmp_path) as service:
        earlier = service.token("tenant-42")
        ran = docs.run_block("revocation", service)
        lines = ran.out.splitlines()
        assert lines[0].startswith("revoked token ") and "revoked every token of client 'tenant-42'" in lines[1]
        listed = json.loads("\n".join(lines[2:-2]))  # token revoked --json
        assert [t["client_id"] for t in listed["tokens"]] == ["tenant-42"], listed
        assert [c["client_id"] for c in listed["clients"]] == ["tenant-42"], listed
        by_token, by_client = (json.loads(line) for line in lines[-2:])  # the admin API's answers
        assert by_token["revoked"] == "token" and by_token["token_id"] == listed["tokens"][0]["token_id"]
        assert by_client == {**by_client, "revoked": "client", "client_id": "tenant-42"}
        token = (tmp_path / "token.txt").read_text().strip()

        async def refusal(credential: str) -> int | None:
            """The handshake's status with this token, or None when it is accepted."""
            try:
                async with service.client("tenant-42", additional_headers={"Authorization": f"Bearer {credential}"}):
                    return None
            except InvalidStatus as refused:
                return refused.response.status_code

        async def check() -> None:
            deadline = time.monotonic() + 5  # every process on the data dir applies it within about a second
            while await refusal(token) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await refusal(token) == 401
            assert await refusal(earlier) == 401
            async with service.client("tenant-42") as (ws, welcome):  # a token issued now
                assert welcome["type"] == "welcome"
                assert (await send_batch(ws, "b-1", ["ok"]))[-1]["type"] == "result"
        asyncio.run(check())


def test_a_replica_at_a_glance(tmp_path: Path, docs: Docs) -> None:
    with Service(tmp_path) as service:
        async def connect_once() -> None:
            async with service.client("glance") as (ws, _):
                await send_batch(ws, "b-1", ["ok", ""])
        asyncio.run(connect_once())
        service.wait_for_spans(lambda spans: any(s["name"] == "records.connection" for s in spans))
        ran = docs.run_block("replica-at-a-glance", service)
        lines = ran.out.splitlines()
        assert lines[0] == '{"status":"ok"}', ran.out
        ready = json.loads(lines[1])
        assert ready["status"] == "ready" and ready["traces"] == "ok", ready
        assert ready["flags"]["path"] == str(service.flags_path) and ready["flags"]["state"] == "ok", ready
        assert metric_value(ran.out, "canaryws_flags_info", source="file") == 1, ran.out
        assert "records.connection" in json.loads(lines[-1]), lines[-1]


def test_replaying_the_guard(tmp_path: Path, docs: Docs) -> None:
    """guard.md's replay on a data dir of healthy summaries: it holds, and would do nothing."""
    (tmp_path / "data").mkdir()
    write_guard_summaries(tmp_path / "data" / "traces.jsonl", strict_close=1000)
    ran = docs.run_block("guard-replay", None)
    text, *objects = ran.out.strip().splitlines()
    assert re.search(r"\bhold\b.*strict 30 / lenient 30 connections", text), ran.out
    judgements = [json.loads(line) for line in objects]
    assert judgements and all(j["verdict"] == "hold" and j["action"] is None for j in judgements), ran.out


def test_the_client_guide(tmp_path: Path, docs: Docs) -> None:
    """docs/client.md's pipeline: 1,000 pipelined batches through the SDK, every record counted once."""
    with Service(tmp_path, embedded_flags()) as service:
        docs.save("client-pipeline", "pipeline.py", service)
        out = docs.run_block("client-run", service).out
    assert "connected as tenant-7 in cohort lenient" in out, out
    assert out.strip().splitlines()[-1] == "{'accepted': 1000, 'rejected': 0, 'skipped': 2000}", out


def test_the_sink_migrations(tmp_path: Path, docs: Docs) -> None:
    """docs/sink.md's migrations on the default sink (data/sink.sqlite3): status before and after
    migrating up, then the rollback recipe down to version 1."""
    up = docs.run_block("sink-migrate", None).out.splitlines()
    sink = f"sink sqlite://{tmp_path}/data/sink.sqlite3"
    assert up[:2] == [sink, "no database file yet: the service creates it at its start, or canaryws sink migrate"], up
    assert up[2].startswith(f"{sink}: 0 → 1 (") and up[3].startswith(f"{sink}: 1 → 2 ("), up
    assert up[4:] == [sink, "schema version 2 (this release's latest: 2): up to date", "canaryws_idempotency 0 rows",
                      "canaryws_batches 0 rows"], up
    down = docs.run_block("sink-rollback", None).out.splitlines()
    assert down[0].startswith(f"{sink}: 2 → 1 (undo: "), down
    assert down[2].startswith("schema version 1 (this release's latest: 2): behind"), down
