"""The probe's Prometheus metrics, in a registry of their own, served over HTTP by a
prometheus_client thread (``canaryws probe --metrics-port``).

Every label value comes from a fixed set (the failure kinds, the round results, the two
strategies of the contract), so nothing a server answers can add series; each series is
created at start (at 0), so that ``increase()`` and the alerts see the first failure.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from canaryws.adapters.metrics_http import MetricsEndpoint

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("canaryws.probe")

# The kinds of failure (the `kind` label; docs/operating.md, "The synthetic probe").
CONTRACT_VIOLATION: Final = "contract_violation"  # a frame that does not fit the contract
WRONG_OUTCOME: Final = "wrong_outcome"  # a result that is not the golden one for its strategy@version
UNEXPECTED_COHORT: Final = "unexpected_cohort"  # an identity's strategy or version changed
REFUSED_HANDSHAKE: Final = "refused_handshake"  # the service refused the upgrade (HTTP 4xx/5xx)
TIMEOUT: Final = "timeout"  # no connection, welcome or answer within the timeouts
CONNECTION_ERROR: Final = "connection_error"  # refused TCP connection, reset, closed mid-round
UNKNOWN_VERSION: Final = "unknown_version"  # a strategy@version the golden corpus does not know
EMPTY_COHORT: Final = "empty_cohort"  # a cohort named with --expect-cohort holds no identity
KINDS: Final = (CONTRACT_VIOLATION, WRONG_OUTCOME, UNEXPECTED_COHORT, REFUSED_HANDSHAKE, TIMEOUT, CONNECTION_ERROR,
                UNKNOWN_VERSION, EMPTY_COHORT)
RESULTS: Final = ("success", "failure")
STRATEGIES: Final = ("lenient", "strict")  # the contract's StrategyName

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ProbeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.rounds = Counter("canaryws_probe_rounds", "Probe rounds, by result (success: every check passed).",
                              ["result"], registry=registry)
        self.failures = Counter("canaryws_probe_failures", "Probe failures, by kind.", ["kind"], registry=registry)
        self.handshake = Histogram("canaryws_probe_handshake_seconds",
                                   "TCP connect + WebSocket upgrade + welcome frame, per probe connection.",
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.batch = Histogram("canaryws_probe_batch_seconds", "Golden batch sent to its result, by strategy.",
                               ["strategy"], buckets=LATENCY_BUCKETS, registry=registry)
        self.identities = Gauge("canaryws_probe_cohort_identities",
                                "Probe identities held in each cohort (0: the probe found none there).",
                                ["strategy"], registry=registry)
        self.last_success = Gauge("canaryws_probe_last_success_timestamp_seconds",
                                  "Unix time of the end of the last successful round (0 before the first).",
                                  registry=registry)
        self.interval = Gauge("canaryws_probe_interval_seconds", "Seconds between rounds (--interval; 0 with --once).",
                              registry=registry)
        for result in RESULTS:
            self.rounds.labels(result)
        for kind in KINDS:
            self.failures.labels(kind)
        for strategy in STRATEGIES:
            self.batch.labels(strategy)
            self.identities.labels(strategy).set(0)
        self._endpoint: MetricsEndpoint | None = None
        self.address: str | None = None

    @classmethod
    def create(cls) -> ProbeMetrics:
        from prometheus_client import CollectorRegistry

        return cls(CollectorRegistry(auto_describe=True))

    def serve(self, host: str, port: int) -> str:
        """Serve ``/metrics`` on ``host:port`` (OSError when it cannot); the URL."""
        self._endpoint = MetricsEndpoint.start(self.registry, host, port, log, "probe")
        self.address = self._endpoint.address
        return self.address

    def close(self) -> None:
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.close()
