"""The revocation list: what it revokes, its file (format, atomic locked writes, pruning),
and the running service's watched view of it."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from canaryws.adapters.auth import Identity, TokenAuthority, TokenError
from canaryws.adapters.revocation import (
    EMPTY,
    LOGGER_NAME,
    REASON_CLIENT,
    REASON_TOKEN,
    RevocationFileError,
    RevocationList,
    Revocations,
    RevokedToken,
    inspect_token,
    read_revocations,
    revocations_path,
    revoke_client,
    revoke_token,
    update_revocations,
    wait_past,
)

NOW = 1_800_000_000


def identity(client: str = "c-1", jti: str = "a1", iat: int = NOW - 100, exp: int = NOW + 3600) -> Identity:
    return Identity(client, jti, iat, exp)


# -- what a list revokes ------------------------------------------------------------


def test_a_listed_token_id_is_revoked_for_its_client_only() -> None:
    listed = EMPTY.with_token(RevokedToken("a1", "c-1", NOW + 3600, NOW))
    assert listed.revoked(identity()) == REASON_TOKEN
    assert listed.revoked(identity(jti="a2")) is None
    assert listed.revoked(identity(client="c-2")) is None  # same jti, another client: not that token
    assert listed.revoked(identity(jti="")) is None  # a token without a jti is never matched by id


def test_a_client_revocation_covers_tokens_issued_at_or_before_its_second() -> None:
    listed = EMPTY.with_client("c-1", NOW)
    assert listed.revoked(identity(iat=NOW - 1)) == REASON_CLIENT
    assert listed.revoked(identity(iat=NOW)) == REASON_CLIENT
    assert listed.revoked(identity(iat=NOW + 1)) is None  # issued afterwards: works
    assert listed.revoked(identity(client="c-2", iat=NOW - 1)) is None
    # a second revocation never moves the cutoff back
    assert listed.with_client("c-1", NOW - 50).clients["c-1"] == NOW
    assert listed.with_client("c-1", NOW + 50).clients["c-1"] == NOW + 50


def test_revoking_a_token_again_keeps_the_first_entry() -> None:
    first = EMPTY.with_token(RevokedToken("a1", "c-1", NOW + 3600, NOW))
    assert first.with_token(RevokedToken("a1", "c-1", NOW + 3600, NOW + 9)).tokens["a1"].revoked_at == NOW


def test_pruning_drops_expired_token_entries_and_keeps_clients() -> None:
    listed = (EMPTY.with_token(RevokedToken("old", "c-1", NOW - 1, NOW - 10))
              .with_token(RevokedToken("new", "c-1", NOW + 1, NOW - 10))
              .with_client("c-9", NOW - 10_000_000))
    pruned = listed.pruned(NOW)
    assert set(pruned.tokens) == {"new"} and pruned.clients == {"c-9": NOW - 10_000_000}


def test_the_file_format_round_trips_and_is_documented_json() -> None:
    listed = EMPTY.with_token(RevokedToken("a1", "c-1", NOW + 3600, NOW)).with_client("c-2", NOW)
    raw = listed.encode()
    assert json.loads(raw) == {
        "version": 1,
        "tokens": {"a1": {"client_id": "c-1", "expires_at": NOW + 3600, "revoked_at": NOW}},
        "clients": {"c-2": NOW},
    }
    assert Revocations.decode(raw) == listed
    assert Revocations.decode(b"{}") == EMPTY  # both sections optional


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b'{"tokens": []}', b'{"clients": {"c": "soon"}}',
    b'{"tokens": {"a": {"client_id": "c", "expires_at": 1.5, "revoked_at": 1}}}',
    b'{"tokens": {"a": {"client_id": "c"}}}', b'{"version": 2}',
])
def test_invalid_documents_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Revocations.decode(raw)


# -- the file -------------------------------------------------------------------------


def test_a_missing_file_means_nothing_revoked(tmp_path: Path) -> None:
    assert read_revocations(tmp_path / "nope" / "revoked.json") == EMPTY


def test_an_invalid_file_is_an_error_naming_it_and_is_not_overwritten(tmp_path: Path) -> None:
    path = revocations_path(tmp_path)
    path.write_text('{"tokens": 7}')
    with pytest.raises(RevocationFileError, match=r"revoked\.json"):
        read_revocations(path)
    with pytest.raises(RevocationFileError):
        revoke_client(path, "c-1")
    assert path.read_text() == '{"tokens": 7}'


def test_writes_are_atomic_pruned_and_leave_no_temporary_files(tmp_path: Path) -> None:
    path = revocations_path(tmp_path / "data")  # the directory is created
    now = time.time()
    entry, _ = revoke_token(path, identity(jti="keep", exp=int(now) + 60), now=now)
    assert entry == RevokedToken("keep", "c-1", int(now) + 60, int(now))
    update_revocations(path, lambda r: r.with_token(RevokedToken("gone", "c-1", int(now) - 1, int(now) - 5)), now)
    assert set(read_revocations(path).tokens) == {"keep"}  # written expired: pruned on the way
    cutoff, written = revoke_client(path, "c-2", now=now)
    assert cutoff == int(now) and read_revocations(path) == written and set(written.tokens) == {"keep"}
    # later, "keep" has expired: the next write prunes it
    revoke_client(path, "c-3", now=now + 120)
    assert read_revocations(path).tokens == {} and set(read_revocations(path).clients) == {"c-2", "c-3"}
    assert sorted(p.name for p in path.parent.iterdir()) == [".revoked.json.lock", "revoked.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_token_without_an_id_cannot_be_revoked_by_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jti"):
        revoke_token(revocations_path(tmp_path), identity(jti=""))


def _revoke_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        revoke_token(Path(path), identity(client=f"w{worker}", jti=f"{worker}-{i}", exp=int(time.time()) + 3600))


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = revocations_path(tmp_path)
    workers, count = 4, 40
    with ProcessPoolExecutor(workers) as pool:
        for done in [pool.submit(_revoke_many, str(path), w, count) for w in range(workers)]:
            done.result(timeout=120)
    assert set(read_revocations(path).tokens) == {f"{w}-{i}" for w in range(workers) for i in range(count)}


def test_after_a_client_revocation_returns_new_tokens_of_the_client_work(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    before = authority.verify(authority.issue("c-1"))
    cutoff, listed = revoke_client(revocations_path(tmp_path), "c-1")
    wait_past(cutoff)
    after = authority.verify(authority.issue("c-1"))
    assert listed.revoked(before) == REASON_CLIENT
    assert listed.revoked(after) is None


# -- naming a token to revoke -------------------------------------------------------------


def test_inspect_token_accepts_expired_tokens_and_refuses_foreign_or_altered_ones(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path / "ours")
    good = inspect_token(authority, authority.issue("c-1", ttl_seconds=60))
    assert not good.expired and good.identity.client_id == "c-1" and good.identity.token_id
    old = inspect_token(authority, authority.issue("c-1", ttl_seconds=10, now=time.time() - 100))
    assert old.expired and old.identity.client_id == "c-1" and old.identity.expires_at < time.time()
    foreign = TokenAuthority.from_data_dir(tmp_path / "theirs").issue("c-1")
    with pytest.raises(TokenError):
        inspect_token(authority, foreign)
    expired_foreign = TokenAuthority.from_data_dir(tmp_path / "theirs").issue("c-1", now=time.time() - 10**8)
    with pytest.raises(TokenError):
        inspect_token(authority, expired_foreign)
    header, payload, signature = authority.issue("c-1").split(".")
    with pytest.raises(TokenError):
        inspect_token(authority, f"{header}.{payload}.{signature[::-1]}")


def test_a_token_with_signed_properties_is_named_and_revoked_like_any_other(tmp_path: Path) -> None:
    authority = TokenAuthority.from_data_dir(tmp_path)
    token = authority.issue("c-1", properties={"clientVersion": "2.4.1"})
    presented = inspect_token(authority, token)
    assert dict(presented.identity.properties) == {"clientVersion": "2.4.1"}
    entry, listed = revoke_token(revocations_path(tmp_path), presented.identity)
    assert entry.token_id == presented.identity.token_id
    assert listed.revoked(authority.verify(token)) == REASON_TOKEN
    old = inspect_token(authority, authority.issue("c-1", ttl_seconds=10, now=time.time() - 100,
                                                   properties={"clientVersion": "2.4.1"}))
    assert old.expired and old.identity.client_id == "c-1"


# -- the running service's view ---------------------------------------------------------------


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_the_watched_list_follows_other_writers_keeps_the_last_good_one_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    path = revocations_path(tmp_path)
    victim = identity(jti="v1", exp=int(time.time()) + 3600)
    watched = RevocationList(tmp_path)
    assert watched.load() == EMPTY and watched.revoked(victim) is None

    async def scenario() -> None:
        task = asyncio.create_task(watched.run())
        try:
            await asyncio.sleep(0.3)  # the watcher is up
            revoke_token(path, victim)  # another process (the CLI) writes
            assert await _until(lambda: watched.revoked(victim) == REASON_TOKEN)
            # busy neighbours in the directory (the trace file) do not matter
            (tmp_path / "traces.jsonl").write_text("x\n")
            path.write_text("{broken")  # a hand edit gone wrong: the last good list stays
            assert await _until(lambda: watched.status()["state"] == "degraded")
            (tmp_path / "traces.jsonl").write_text("y\n")
            await asyncio.sleep(2.5)  # several polls of the same broken file
            assert watched.revoked(victim) == REASON_TOKEN
            path.write_text(json.dumps({"clients": {"c-1": victim.issued_at}}))
            assert await _until(lambda: watched.status()["state"] == "ok" and victim.token_id not in
                                watched.current.tokens)
            assert watched.revoked(victim) == REASON_CLIENT
            path.unlink()  # a missing file: nothing revoked
            assert await _until(lambda: watched.revoked(victim) is None)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last good one" in warnings[0].getMessage()


def test_revoking_through_the_list_applies_at_once_and_persists(tmp_path: Path) -> None:
    watched = RevocationList(tmp_path)
    watched.load()
    victim = identity(jti="v2", exp=int(time.time()) + 3600)

    async def scenario() -> int:
        await watched.revoke_token(victim)  # no watcher running: applied in-process
        assert watched.revoked(victim) == REASON_TOKEN
        started = time.time()
        cutoff = await watched.revoke_client("c-7")
        assert time.time() >= cutoff + 1 and time.time() - started < 1.5  # returns once its second is over
        return cutoff

    cutoff = asyncio.run(scenario())
    again = RevocationList(tmp_path)
    again.load()
    assert again.revoked(victim) == REASON_TOKEN
    assert again.current.clients == {"c-7": cutoff}


def test_an_invalid_file_at_start_up_is_an_error(tmp_path: Path) -> None:
    revocations_path(tmp_path).write_text("[1, 2]")
    with pytest.raises(RevocationFileError):
        RevocationList(tmp_path).load()


def test_revoked_is_cheap_with_a_large_list() -> None:
    big = Revocations({f"j{i}": RevokedToken(f"j{i}", "c", NOW + 1, NOW) for i in range(100_000)},
                      {f"c{i}": NOW for i in range(100_000)})
    probe = identity(client="c-x", jti="j-x")
    started = time.perf_counter()
    for _ in range(100_000):
        big.revoked(probe)
    assert time.perf_counter() - started < 2.0  # well under a µs each; a scan would take minutes
