"""Anytime-valid monitoring of a rate ratio between the canary and the baseline.

What is monitored. A per-connection 0/1 outcome (the connection closed abnormally, it was a
client's retry, it got an error frame): in each cohort, *events* among *exposure* (the
connections that ended). The question is whether the canary's event rate exceeds the
baseline's by more than a tolerated ratio ``rho0``: H0 is ``rate_c <= rho0 * rate_b``.

Method. The conditional counting-process test of Lindon, Sanden & Shirikian, "Rapid
Regression Detection in Software Deployments through Sequential Testing" (KDD 2022; the
method behind Netflix's canary analysis), in its Poisson form: given the events of a *tick*
(an interval of the monitor's clock) and the exposure of each cohort in it, each event is
the canary's with probability ``pi(rho) = rho*w / (rho*w + 1 - w)``, ``w`` the canary's share
of the tick's exposure. The baseline rate cancels out, so the test needs no model of it: a
network blip that closes connections in both cohorts at once moves nothing, and unbalanced
cohorts (a 5 % canary) are handled exactly. For any ``rho' <= rho0`` and ``rho > rho0`` the
likelihood ratio of ``pi(rho)`` to ``pi(rho0)`` has expectation at most 1 (its expectation is
linear in ``pi(rho')`` and equals 1 at ``rho0``), so a product of them is a test
supermartingale under H0 (Ville's inequality: it ever reaches ``1/alpha`` with probability at
most ``alpha``, however often it is looked at).

Two mixtures make it an e-process that detects a harm of unknown size starting at an unknown
moment, with no loss of that guarantee:

- over the size: alternatives ``rho = rho0 * m`` for ``m`` in :data:`MULTIPLIERS`, equally
  weighted (a discrete mixture, as in the mixture SPRT of Robbins 1970);
- over the start: each *block* ``k`` of the clock (``block_s`` long) starts a product of
  its own with prior weight ``u_k``: ``u_0 = 1/2`` (a harm most often comes with the
  configuration being judged) and ``u_k = k^-s / (2 zeta(s))`` after (``s`` = :data:`DECAY`),
  summing to 1 over all blocks. Before block ``k`` starts its term is the constant ``u_k``,
  so the sum over all blocks is a nonnegative supermartingale starting at 1 (an e-detector in
  the sense of Shin, Ramdas & Rinaldo, "E-detectors: a nonparametric framework for
  sequential change detection", 2023, with weights that keep Ville's bound). A harm starting
  at block ``k`` costs ``ln(1/u_k)`` nats of evidence: 0.7 from the start, about
  ``2.2 + 1.25 ln k`` from block ``k``.

The monitor reports ``e`` (the e-process), ``e_max`` (its running maximum; the always-valid
p-value is ``1/e_max``), the rates and ratio since its start and over a recent window, an
always-valid confidence interval for the ratio since the start (the beta-binomial confidence
sequence of Robbins 1970 for ``pi``, mapped to ``rho`` with the exposure share since the
start: exact when that share is constant, as within one rollout stage), and how much more
exposure a decision would need at the effect seen recently.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MULTIPLIERS: tuple[float, ...] = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
"""The alternatives, as multiples of the tolerated ratio: a harm of 1.25x the tolerance up to 10x."""
DECAY = 1.25
"""``s`` of the start weights ``u_k`` proportional to ``(k+1)^-s``."""
_ZETA_DECAY = 4.595111825842942  # zeta(1.25): the start weights sum to 1 (a test checks it)
_LOG_HALF = math.log(0.5)
_CS_PRIOR = 0.5  # Beta(1/2, 1/2) mixture of the confidence sequence


def start_weight_log(block: int) -> float:
    """``ln u_k`` of block ``k`` (0 for the first)."""
    if block == 0:
        return _LOG_HALF
    return _LOG_HALF - math.log(_ZETA_DECAY) - DECAY * math.log(block)


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def _pi(rho: float, w: float) -> float:
    return rho * w / (rho * w + 1.0 - w)


@dataclass(frozen=True, slots=True)
class Counts:
    """Exposure and events of both cohorts (canary ``c``, baseline ``b``)."""

    exposure_c: int = 0
    exposure_b: int = 0
    events_c: int = 0
    events_b: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.exposure_c + other.exposure_c, self.exposure_b + other.exposure_b,
                      self.events_c + other.events_c, self.events_b + other.events_b)

    def rates(self) -> tuple[float | None, float | None]:
        return (self.events_c / self.exposure_c if self.exposure_c else None,
                self.events_b / self.exposure_b if self.exposure_b else None)

    def ratio(self) -> float | None:
        """The canary's rate over the baseline's (None without events or exposure to say)."""
        rate_c, rate_b = self.rates()
        if rate_c is None or rate_b is None:
            return None
        if rate_b == 0.0:
            return None if rate_c == 0.0 else math.inf
        return rate_c / rate_b

    def excess(self) -> float | None:
        """The canary's rate minus the baseline's."""
        rate_c, rate_b = self.rates()
        return None if rate_c is None or rate_b is None else rate_c - rate_b


class RateRatioMonitor:
    """The e-process of one outcome (see the module docstring), fed tick by tick.

    ``rho0`` is the tolerated ratio (H0: ``rate_c <= rho0 * rate_b``); ``block_s`` the length
    of a start block on the monitor's clock (seconds since its start); ``recent_s`` the
    window of the recent rates.
    """

    __slots__ = ("_log_s", "_max_log_e", "_next_block", "_recent", "_recent_s", "_started_weight", "block_s",
                 "rho0", "total")

    def __init__(self, rho0: float, *, block_s: float = 600.0, recent_s: float = 3600.0) -> None:
        if rho0 <= 0 or block_s <= 0 or recent_s <= 0:
            raise ValueError("rho0, block_s and recent_s must be positive")
        self.rho0 = rho0
        self.block_s = block_s
        self._recent_s = recent_s
        self._log_s = [-math.inf] * len(MULTIPLIERS)  # per alternative: ln of the sum over started blocks
        self._next_block = 0
        self._started_weight = 0.0  # sum of u_k over the started blocks
        self._max_log_e = 0.0  # the running maximum of ln e, from e = 1 before any evidence
        self._recent: deque[tuple[float, Counts]] = deque()
        self.total = Counts()

    # -- feeding -------------------------------------------------------------------------
    def add(self, t_s: float, tick: Counts) -> None:
        """One tick ending ``t_s`` seconds after the monitor's start (non-decreasing)."""
        self._start_blocks(t_s)
        if tick.events_c or tick.events_b:
            exposure = tick.exposure_c + tick.exposure_b
            if exposure <= 0:
                raise ValueError(f"events without exposure: {tick}")
            w = tick.exposure_c / exposure
            if 0.0 < w < 1.0:  # one cohort alone says nothing about the ratio
                pi0 = _pi(self.rho0, w)
                for j, m in enumerate(MULTIPLIERS):
                    pi1 = _pi(self.rho0 * m, w)
                    self._log_s[j] += (tick.events_c * math.log(pi1 / pi0)
                                       + tick.events_b * math.log((1.0 - pi1) / (1.0 - pi0)))
        self._max_log_e = max(self._max_log_e, self.log_e)
        self.total = self.total + tick
        self._recent.append((t_s, tick))
        while self._recent and self._recent[0][0] <= t_s - self._recent_s:
            self._recent.popleft()

    def _start_blocks(self, t_s: float) -> None:
        block = int(max(0.0, t_s) // self.block_s)
        while self._next_block <= block:
            log_u = start_weight_log(self._next_block)
            self._log_s = [_logaddexp(value, log_u) for value in self._log_s]
            self._started_weight += math.exp(log_u)
            self._next_block += 1

    # -- reading ---------------------------------------------------------------------------
    @property
    def log_e(self) -> float:
        """ln of the e-process now (mixture over sizes and starts); the not-yet-started blocks
        count for their prior weight, so it is 0 before any evidence."""
        started = -math.inf
        for value in self._log_s:
            started = _logaddexp(started, value)
        started -= math.log(len(MULTIPLIERS))
        unstarted = 1.0 - self._started_weight
        value = _logaddexp(started, math.log(unstarted)) if unstarted > 0.0 else started
        return 0.0 if abs(value) < 1e-12 else value  # e = 1 exactly when nothing was learnt

    @property
    def max_log_e(self) -> float:
        return self._max_log_e

    @property
    def p_value(self) -> float:
        """The always-valid p-value: ``1 / max e`` (at most 1)."""
        return min(1.0, math.exp(-self._max_log_e))

    def recent(self) -> Counts:
        """Exposure and events over the last ``recent_s`` seconds of ticks."""
        total = Counts()
        for _, tick in self._recent:
            total = total + tick
        return total

    def interval(self, alpha: float) -> tuple[float | None, float | None]:
        """An always-valid ``1 - alpha`` confidence interval for the ratio since the start
        (beta-binomial confidence sequence for the canary's share of events, mapped with the
        exposure share since the start). ``(None, None)`` before any event."""
        t = self.total
        n = t.events_c + t.events_b
        exposure = t.exposure_c + t.exposure_b
        if n == 0 or exposure == 0 or t.exposure_c == 0 or t.exposure_b == 0:
            return None, None
        w = t.exposure_c / exposure
        lo_pi, hi_pi = beta_binomial_cs(t.events_c, n, alpha)

        def to_rho(p: float) -> float:
            return math.inf if p >= 1.0 else p * (1.0 - w) / (w * (1.0 - p))

        return to_rho(lo_pi), to_rho(hi_pi)

    def exposure_needed(self, alpha: float) -> float | None:
        """Connections (both cohorts) that would still have to end, at the recent event rate
        and the recent effect, for ``e`` to reach ``1/alpha``; 0 when it has; None when the
        recent effect is within the tolerance (no amount would decide a rollback)."""
        deficit = math.log(1.0 / alpha) - self.log_e
        if deficit <= 0:
            return 0.0
        recent = self.recent()
        exposure = recent.exposure_c + recent.exposure_b
        events = recent.events_c + recent.events_b
        if exposure == 0 or events == 0 or recent.exposure_c == 0 or recent.exposure_b == 0:
            return None
        w = recent.exposure_c / exposure
        pi_hat = recent.events_c / events
        pi0 = _pi(self.rho0, w)
        best = 0.0
        for m in MULTIPLIERS:
            pi1 = _pi(self.rho0 * m, w)
            drift = pi_hat * math.log(pi1 / pi0) + (1.0 - pi_hat) * math.log((1.0 - pi1) / (1.0 - pi0))
            best = max(best, drift)
        if best <= 0.0:
            return None
        return deficit / best * exposure / events  # events needed, in connections at the recent event rate


def exposure_to_detect(total: Counts, rho0: float, ratio: float, excess: float, alpha: float) -> float | None:
    """About how many connections (both cohorts, since the start) a monitor needs before a
    harm present from the start takes its e-value to ``1/alpha`` on average. The harm is a
    canary rate of ``max(ratio x baseline, baseline + excess)`` (a tripling, or a few points
    where the baseline is near 0), the baseline the lenient rate so far (half an event when
    it had none). The log evidence needed (``ln(1/alpha)`` plus the mixtures' ``ln 12`` for a
    harm from the first block) over the expected log evidence per event of the best
    alternative, at the canary's share of exposure so far. None without exposure in a cohort."""
    exposure = total.exposure_c + total.exposure_b
    if total.exposure_c == 0 or total.exposure_b == 0:
        return None
    rate_b = max(total.events_b, 0.5) / total.exposure_b
    target = max(ratio, (rate_b + excess) / rate_b)
    w = total.exposure_c / exposure
    pi_true, pi0 = _pi(target, w), _pi(rho0, w)
    drift = max(pi_true * math.log(_pi(rho0 * m, w) / pi0)
                + (1.0 - pi_true) * math.log((1.0 - _pi(rho0 * m, w)) / (1.0 - pi0)) for m in MULTIPLIERS)
    if drift <= 0.0:
        return None
    events = (math.log(1.0 / alpha) + math.log(2 * len(MULTIPLIERS))) / drift
    return events / (rate_b * (w * target + 1.0 - w))


def beta_binomial_cs(x: int, n: int, alpha: float, prior: float = _CS_PRIOR) -> tuple[float, float]:
    """The ``1 - alpha`` confidence sequence for a Bernoulli mean after ``x`` successes in
    ``n`` (Robbins 1970): every ``p`` whose beta-binomial mixture martingale
    ``B(a+x, b+n-x)/B(a,b) / (p^x (1-p)^(n-x))`` is below ``1/alpha``."""
    log_mix = (math.lgamma(prior + x) + math.lgamma(prior + n - x) - math.lgamma(2 * prior + n)
               - (2 * math.lgamma(prior) - math.lgamma(2 * prior)))
    bound = math.log(1.0 / alpha)

    def inside(p: float) -> bool:
        log_lik = (x * math.log(p) if x else 0.0) + ((n - x) * math.log1p(-p) if n - x else 0.0)
        return log_mix - log_lik < bound

    centre = (x + prior) / (n + 2 * prior)
    return _edge(inside, centre, 0.0), _edge(inside, centre, 1.0)


def _edge(inside: Callable[[float], bool], centre: float, limit: float, steps: int = 60) -> float:
    """Bisection between an inside point and a limit for the interval's edge."""
    inner = centre
    outer = min(max(limit, 1e-300), 1.0 - 1e-16)
    if inside(outer):
        return limit
    for _ in range(steps):
        middle = (inner + outer) / 2.0
        if inside(middle):
            inner = middle
        else:
            outer = middle
    return inner
