"""What canaryws' own parts of a connection's life cost, one by one, in process.

    .venv/bin/python bench/handshake.py [--rounds 5] [--n 3000] [--json PATH]

Each part runs ``--n`` times per round on the real objects the endpoint uses, with the
service's telemetry as ``bench/run.py`` runs it (``setup_telemetry``: 1 % of batches traced,
every connect and connection span recorded, the trace file written by its batch processor,
spans encoded as they end); the CPU time of this thread (``time.thread_time``) per call,
median and range over ``--rounds`` rounds. The parts, in the order of a connection's life:

- ``token (first time)``: :meth:`TokenAuthority.verify` (PyJWT, HS256);
- ``token (remembered)``: :class:`AcceptedTokens` for a token it accepted before (a reconnect);
- ``admission``: :func:`admit` as the endpoint calls it (subprotocol, headers, token remembered,
  revocation check);
- ``cohort decision``: :func:`decide_cohort` on the benchmark's flags (``records.strict`` at
  100 %, which the snapshot answers without asking the engine), with the evaluation context it
  builds; ``cohort decision (50 %)``: the same at a split, through the Unleash engine (yggdrasil),
  as during a rollout;
- ``connect span``: :meth:`RecordsTelemetry.start_connect`, the flag evaluations as events, the
  cohort attributes, its end (and encoding);
- ``welcome``: :func:`contract.encode_welcome`;
- ``connection metrics``: :meth:`RecordsTelemetry.opened` and :meth:`RecordsTelemetry.closed`;
- ``summary span``: :meth:`RecordsTelemetry.emit_summary` of a closed connection's summary;
- ``logs (INFO)``: the two lines a connection logs at the default level (``connection
  accepted``, ``connection closed``), through the service's JSON formatter and redaction, to
  ``/dev/null``. ``bench/run.py`` runs canaryws at WARNING, without them.

The WebSocket handshake itself (HTTP parsing, the upgrade, frames, the close) is the stack's,
the same for lean and canaryws: ``bench/run.py``'s handshake step measures the whole at the
socket, and its ratio to lean's is the goal (docs/benchmarks.md, "Handshakes").
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ROOT / "flags" / "features.json"


def parts() -> dict[str, Callable[[int], object]]:
    from canaryws.adapters.auth import AcceptedTokens, TokenAuthority
    from canaryws.adapters.flags.engine import FlagSnapshot
    from canaryws.adapters.records.admission import admit
    from canaryws.adapters.records.flags_view import now_iso
    from canaryws.adapters.telemetry.logs import configure_logging
    from canaryws.adapters.telemetry.providers import setup_telemetry
    from canaryws.adapters.telemetry.records import RecordsTelemetry
    from canaryws.core import contract
    from canaryws.core.cohorts import EvaluationContext, decide_cohort
    from canaryws.core.flagdoc import parse_flags_document, with_rollout
    from canaryws.core.strategies import VERSIONS
    from canaryws.core.summary import END_CLOSED, ConnectionSummary

    data = Path(tempfile.mkdtemp(prefix="canaryws-handshake-"))
    authority = TokenAuthority.from_data_dir(data)
    tokens = [authority.issue(f"client-{i}") for i in range(64)]
    remembered = AcceptedTokens(authority)
    for token in tokens:
        remembered.verify(token)
    doc = with_rollout(parse_flags_document(FLAGS.read_bytes()), "records.strict", 100)
    snapshot = FlagSnapshot.from_document(doc, source="file")
    split = FlagSnapshot.from_document(with_rollout(doc, "records.strict", 50), source="file")
    env = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    providers = setup_telemetry(data_dir=data, environ=env)
    telemetry = RecordsTelemetry(providers.tracer_provider, providers.meter_provider)
    headers = [(b"host", b"127.0.0.1:8000"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
               (b"user-agent", b"bench")]
    auth_headers = [[*headers, (b"authorization", f"Bearer {token}".encode())] for token in tokens]
    context = EvaluationContext("client-1", uuid.uuid4().hex, {}, "canaryws", "bench")
    decision = decide_cohort(snapshot, context, VERSIONS, "lenient", now_iso())
    cohort = decision.cohort
    configure_logging(level="INFO", stream=io.StringIO())
    log = logging.getLogger("canaryws.records")
    for handler in logging.getLogger().handlers:  # the service's handler, writing nowhere
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open("/dev/null", "w"))  # noqa: SIM115 - for the life of the run

    def token_first(i: int) -> object:
        return authority.verify(tokens[i % len(tokens)])

    def token_remembered(i: int) -> object:
        return remembered.verify(tokens[i % len(tokens)])

    def admission(i: int) -> object:
        return admit(auth_headers[i % len(tokens)], [], query_token=None, verify=remembered.verify,
                     revoked=lambda _identity: None, allowed_origins=None)

    def cohort_decision(i: int) -> object:
        ctx = EvaluationContext(f"client-{i}", uuid.uuid4().hex, {}, "canaryws", "bench")
        return decide_cohort(snapshot, ctx, VERSIONS, "lenient", now_iso())

    def cohort_decision_split(i: int) -> object:
        ctx = EvaluationContext(f"client-{i}", uuid.uuid4().hex, {}, "canaryws", "bench")
        return decide_cohort(split, ctx, VERSIONS, "lenient", now_iso())

    def connect_span(i: int) -> object:
        span = telemetry.start_connect(f"conn-{i}", f"client-{i}", headers, None)
        telemetry.record_evaluations(span, decision.evaluations, f"client-{i}")
        telemetry.set_cohort(span, cohort)
        span.end()
        return span

    def welcome(i: int) -> object:
        return contract.encode_welcome(connection_id=f"conn-{i}", client_id=f"client-{i}", cohort=cohort,
                                       protocol=contract.PROTOCOL_V1)

    def metrics(i: int) -> object:
        summary = ConnectionSummary.opening(f"conn-{i}", f"client-{i}", cohort, 1.0)
        telemetry.opened(cohort)
        telemetry.closed(summary, 1000)
        return summary

    def summary_span(i: int) -> object:
        summary = ConnectionSummary.opening(f"conn-{i}", f"client-{i}", cohort, 1.0)
        summary.end, summary.close_code = END_CLOSED, 1000
        now = time.time_ns()
        telemetry.emit_summary(summary, now - 1_000_000, now, None)
        return summary

    def logs(i: int) -> object:
        log.info("connection accepted", extra={"strategy": "strict", "flags_revision": cohort.flags_revision,
                                               "client_address": "127.0.0.1"})
        log.info("connection closed", extra={"close_code": 1000, "batches": i, "strategy": "strict"})
        return None

    return {
        "token (first time)": token_first,
        "token (remembered)": token_remembered,
        "admission": admission,
        "cohort decision": cohort_decision,
        "cohort decision (50 %)": cohort_decision_split,
        "connect span": connect_span,
        "welcome": welcome,
        "connection metrics": metrics,
        "summary span": summary_span,
        "logs (INFO)": logs,
    }


# What a connection's life runs of these parts: a reconnect's token is remembered, the first
# connection's is not (the "first time" row is reported, not summed).
LIFE = ("admission", "cohort decision", "connect span", "welcome", "connection metrics", "summary span")


def measure(rounds: int, n: int) -> dict[str, Any]:
    every = parts()
    results: dict[str, list[float]] = {name: [] for name in every}
    for _ in range(rounds):
        for name, fn in every.items():
            for i in range(min(n, 200)):  # warm
                fn(i)
            started = time.thread_time()
            for i in range(n):
                fn(i)
            results[name].append((time.thread_time() - started) / n * 1e6)
    medians = {name: statistics.median(values) for name, values in results.items()}
    return {"rounds": rounds, "n": n, "us_per_call": results, "medians": medians,
            "life_us": sum(medians[name] for name in LIFE),
            "life_with_logs_us": sum(medians[name] for name in LIFE) + medians["logs (INFO)"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.n)
    print(f"canaryws' own parts of a connection's life, CPU µs per call (median of {args.rounds} rounds "
          f"of {args.n}; range)")
    for name, values in result["us_per_call"].items():
        print(f"  {name:<22} {statistics.median(values):7.1f}  ({min(values):.1f}–{max(values):.1f})")
    print(f"  {'a connection, in all':<22} {result['life_us']:7.1f}  (with a remembered token; "
          f"{result['life_with_logs_us']:.1f} with the INFO logs)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
