"""A probe round: connect as each identity, send the golden batches, check every answer.

Each identity gets one connection per round (no reconnection: a failure is what the probe is
for), with the contract checked by the client SDK (every frame decoded into the contract's
types; :class:`canaryws.client.ContractViolation` for one that does not fit) and each result
checked against the golden corpus for the answering ``strategy@version``. What goes wrong is a
:class:`Failure` of one kind (:data:`canaryws.probe.metrics.KINDS`), logged as one structured
line and counted; the round ends with a summary line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from canaryws import client as cw
from canaryws.core.contract import CohortInfo
from canaryws.probe.golden import Corpus, UnknownVersion, differences
from canaryws.probe.identities import IssuedIdentities, ProbeIdentity, TokenFileError, TokenFileIdentities
from canaryws.probe.metrics import (
    CONNECTION_ERROR,
    CONTRACT_VIOLATION,
    EMPTY_COHORT,
    REFUSED_HANDSHAKE,
    STRATEGIES,
    TIMEOUT,
    UNEXPECTED_COHORT,
    UNKNOWN_VERSION,
    WRONG_OUTCOME,
    ProbeMetrics,
)

log = logging.getLogger("canaryws.probe")
MAX_DETAIL = 1000  # characters of a failure's detail


@dataclass(frozen=True, slots=True)
class Failure:
    kind: str
    identity: str  # the client id (or the token's place in the token file)
    detail: str
    strategy: str | None = None
    batch: str | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "identity": self.identity, "detail": self.detail}
        if self.strategy is not None:
            out["strategy"] = self.strategy
        if self.batch is not None:
            out["batch"] = self.batch
        return out


@dataclass(slots=True)
class Checked:
    """What one identity's connection in a round gave."""

    identity: str
    cohort: str | None = None  # strategy@version, from the welcome
    handshake_seconds: float | None = None
    batches: int = 0
    batch_seconds: list[float] = field(default_factory=list)


@dataclass(slots=True)
class RoundReport:
    number: int
    started: float
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    checked: list[Checked] = field(default_factory=list)
    identities: dict[str, int] = field(default_factory=dict)  # strategy -> identities held
    empty: list[str] = field(default_factory=list)  # cohorts holding no identity

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.failures))


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    url: str
    open_timeout: float = 10.0
    answer_timeout: float = 10.0
    expect: tuple[str, ...] = ()  # cohorts that must not be empty (--expect-cohort)
    search_rate: float = 10.0  # handshakes per second while searching for identities


def _kind_of_connect_failure(exc: cw.ConnectFailed) -> str:
    return TIMEOUT if isinstance(exc.cause, TimeoutError) else CONNECTION_ERROR


def _treatment(cohort: CohortInfo) -> str:
    return f"{cohort.strategy}@{cohort.strategy_version}"


class Probe:
    """Runs rounds against one service with one source of identities."""

    def __init__(self, settings: ProbeSettings, corpus: Corpus,
                 identities: IssuedIdentities | TokenFileIdentities, metrics: ProbeMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.corpus = corpus
        self.source = identities
        self.metrics = metrics
        self.clock = clock
        self.rounds = 0
        self.revision: str | None = None  # the flags revision of the latest welcome or cohort frame

    # -- one round --------------------------------------------------------------------------

    async def round(self) -> RoundReport:
        self.rounds += 1
        report = RoundReport(self.rounds, self.clock())
        started = time.perf_counter()
        if isinstance(self.source, IssuedIdentities):
            if self.source.needs_search(self.revision):
                await self._search(self.source, report)
        else:
            try:
                self.source.reload()
            except TokenFileError as exc:
                log.warning("token file unusable; probing with the tokens read before", extra={"detail": str(exc)})
        for identity in list(self.source.identities):
            await self._probe(identity, report)
        report.seconds = time.perf_counter() - started
        self._count_identities(report)
        self._finish(report)
        return report

    def _count_identities(self, report: RoundReport) -> None:
        held = Counter(i.strategy for i in self.source.identities if i.strategy is not None)
        report.identities = {s: held.get(s, 0) for s in STRATEGIES}
        report.empty = [s for s in STRATEGIES if not held.get(s)]
        for strategy in report.empty:
            if strategy in self.settings.expect:
                self._fail(report, Failure(EMPTY_COHORT, "-", f"no probe identity lands in the {strategy} cohort, "
                                           "which --expect-cohort says is not empty", strategy=strategy))
        if self.metrics is not None:
            for strategy, n in report.identities.items():
                self.metrics.identities.labels(strategy).set(n)

    def _finish(self, report: RoundReport) -> None:
        result = "success" if report.ok else "failure"
        if self.metrics is not None:
            self.metrics.rounds.labels(result).inc()
            if report.ok:
                self.metrics.last_success.set(self.clock())
        log.log(logging.INFO if report.ok else logging.WARNING, "probe round", extra={
            "round": report.number, "result": result, "seconds": round(report.seconds, 3),
            "failures": report.counts(), "identities": report.identities, "empty_cohorts": report.empty,
            "corpus_version": self.corpus.version})

    def _fail(self, report: RoundReport, failure: Failure) -> None:
        if len(failure.detail) > MAX_DETAIL:  # the detail quotes what a server sent: bounded
            failure = replace(failure, detail=failure.detail[:MAX_DETAIL] + "…")
        report.failures.append(failure)
        if self.metrics is not None:
            self.metrics.failures.labels(failure.kind).inc()
        log.warning("probe failure", extra=failure.fields())

    # -- finding identities (--data-dir) ----------------------------------------------------

    async def _search(self, source: IssuedIdentities, report: RoundReport) -> None:
        """Try ``<prefix>-0``, ``-1``... until every strategy holds an identity or the tries
        run out (at ``search_rate`` handshakes per second, below the service's per-address
        rate). A failure ends the search for this round."""
        pause = 1.0 / self.settings.search_rate
        revision: str | None = self.revision
        for n in range(source.tries):
            if not source.missing():
                break
            candidate = source.candidate(n)
            if source.is_held(candidate.key):
                continue
            for attempt in range(3):  # a 429 or 503 with Retry-After: wait as told, then ask again
                try:
                    async with self._connect(candidate) as conn:
                        candidate.cohort = conn.cohort
                        revision = self.revision = conn.cohort.flags_revision if conn.cohort else revision
                    break
                except cw.HandshakeRefused as exc:
                    if exc.status in (429, 503) and exc.retry_after is not None and attempt < 2:
                        await asyncio.sleep(min(exc.retry_after, 5.0))
                        continue
                    self._fail(report, self._failure_of(exc, candidate.label, None))
                    return
                except (cw.CanarywsError, TimeoutError) as exc:
                    self._fail(report, self._failure_of(exc, candidate.label, None))
                    return
            if source.offer(candidate):
                log.info("probe identity found", extra={"identity": candidate.label, "strategy": candidate.strategy,
                                                        "tries": n + 1})
            await asyncio.sleep(pause)
        source.searched, source.searched_revision = True, revision
        for strategy in source.missing():
            log.info("cohort empty", extra={"strategy": strategy, "tries": source.tries, "flags_revision": revision,
                                            "detail": f"none of {source.prefix}-0 to {source.prefix}-"
                                                      f"{source.tries - 1} lands in it under these flags"})

    # -- probing one identity ---------------------------------------------------------------

    def _connect(self, identity: ProbeIdentity) -> cw.connect:
        return cw.connect(self.settings.url, token=identity.token(), reconnect=None,
                          open_timeout=self.settings.open_timeout, answer_timeout=self.settings.answer_timeout)

    async def _probe(self, identity: ProbeIdentity, report: RoundReport) -> None:
        checked = Checked(identity.label)
        report.checked.append(checked)
        batch_id: str | None = None
        # a backstop: the SDK's own timeouts end every wait, this ends the connection as a whole
        budget = self.settings.open_timeout * 2 + self.settings.answer_timeout * (len(self.corpus.batches) + 1)
        try:
            async with asyncio.timeout(budget), self._connect(identity) as conn:
                assert conn.welcome is not None and conn.cohort is not None
                if conn.handshake_seconds is not None:
                    checked.handshake_seconds = conn.handshake_seconds
                    if self.metrics is not None:
                        self.metrics.handshake.observe(conn.handshake_seconds)
                identity.label = checked.identity = conn.welcome.client_id
                checked.cohort = _treatment(conn.cohort)
                self._saw(identity, conn.cohort, report, "welcome")
                for batch in self.corpus.batches:
                    batch_id = batch.id
                    started = time.perf_counter()
                    golden_id = f"golden-v{self.corpus.version}-{batch.id}"
                    result = await conn.process(list(batch.records), batch_id=golden_id)
                    seconds = time.perf_counter() - started
                    checked.batches += 1
                    checked.batch_seconds.append(seconds)
                    if self.metrics is not None and result.strategy in STRATEGIES:
                        self.metrics.batch.labels(result.strategy).observe(seconds)
                    if conn.cohort is not None:
                        self._saw(identity, conn.cohort, report, "cohort frame")
                    try:
                        expected = batch.expectation(result.strategy, result.strategy_version)
                    except UnknownVersion as exc:
                        self._fail(report, Failure(UNKNOWN_VERSION, identity.label, str(exc),
                                                   strategy=result.strategy, batch=batch.id))
                        return  # every batch would say the same
                    wrong = differences(expected, [(a.index, a.value) for a in result.accepted],
                                        [(s.index, s.reason) for s in result.skipped],
                                        [(r.index, r.code) for r in result.rejected])
                    if wrong:
                        self._fail(report, Failure(WRONG_OUTCOME, identity.label,
                                                   f"{result.strategy}@{result.strategy_version}: " + "; ".join(wrong),
                                                   strategy=result.strategy, batch=batch.id))
        except (cw.CanarywsError, TimeoutError, OSError) as exc:
            self._fail(report, self._failure_of(exc, identity.label, batch_id, identity.strategy))

    def _saw(self, identity: ProbeIdentity, cohort: CohortInfo, report: RoundReport, where: str) -> None:
        """The identity's cohort is ``cohort`` now: an unexpected_cohort failure when its
        strategy or version differs from the one it had (a change of ``shadow`` alone changes
        nothing the probe checks: logged, not a failure)."""
        self.revision = cohort.flags_revision
        previous = identity.cohort
        identity.cohort = cohort
        if previous is None:
            return
        if _treatment(previous) != _treatment(cohort):
            self._fail(report, Failure(UNEXPECTED_COHORT, identity.label,
                                       f"{where}: in {_treatment(cohort)}, was in {_treatment(previous)} "
                                       f"(flags revision {previous.flags_revision} -> {cohort.flags_revision})",
                                       strategy=cohort.strategy))
            if isinstance(self.source, IssuedIdentities):
                self.source.moved(identity, previous.strategy)
        elif previous.shadow != cohort.shadow:
            log.info("probe identity's shadow changed", extra={"identity": identity.label, "shadow": cohort.shadow,
                                                               "strategy": cohort.strategy})

    def _failure_of(self, exc: BaseException, label: str, batch: str | None, strategy: str | None = None) -> Failure:
        def failure(kind: str, detail: str) -> Failure:
            return Failure(kind, label, detail, strategy=strategy, batch=batch)

        if isinstance(exc, cw.HandshakeRefused):
            return failure(REFUSED_HANDSHAKE, f"HTTP {exc.status} {exc.error}: {exc.detail}")
        if isinstance(exc, cw.ContractViolation):
            return failure(CONTRACT_VIOLATION, f"{exc.problem}; frame: {exc.frame[:200]!r}")
        if isinstance(exc, cw.BatchError):
            return failure(CONTRACT_VIOLATION, f"an error frame ({exc.code}: {exc.detail}) for a well-formed batch, "
                                               "which the contract answers with a result")
        if isinstance(exc, cw.AnswerTimeout):
            return failure(TIMEOUT, f"no answer within {exc.timeout:g} s")
        if isinstance(exc, cw.ConnectFailed):
            return failure(_kind_of_connect_failure(exc), f"could not connect: {exc.cause!r}")
        if isinstance(exc, TimeoutError):
            return failure(TIMEOUT, "the connection did not finish its round in time")
        if isinstance(exc, cw.ConnectionClosed):
            return failure(CONNECTION_ERROR, f"closed mid-round: {exc.code} {exc.reason}".rstrip())
        return failure(CONNECTION_ERROR, str(exc) or repr(exc))


async def run_rounds(probe: Probe, interval: float, stop: asyncio.Event) -> None:
    """A round every ``interval`` seconds (measured start to start) until ``stop`` is set; a
    round in progress when it is set is cancelled."""
    while not stop.is_set():
        started = time.monotonic()
        task = asyncio.ensure_future(probe.round())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            stopping.cancel()
            return
        task.result()
        remaining = interval - (time.monotonic() - started)
        if remaining > 0:
            try:
                await asyncio.wait_for(stopping, remaining)
            except TimeoutError:
                continue
        else:
            stopping.cancel()
