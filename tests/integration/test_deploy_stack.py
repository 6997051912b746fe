"""The Grafana dashboard (deploy/grafana/dashboards/canaryws.json) queries metrics a real canaryws
exposes: a real ``canaryws serve`` gets traffic that makes every series the dashboard reads exist
(both cohorts, rejections, an error frame, an abnormal close, a refused handshake, an expired token,
a cohort change, shadow divergence, throttled frames), and every metric name in the dashboard's
PromQL (panels and template variables) must be on its /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from canaryws.adapters.auth import TokenAuthority
from harness import PROTOCOL, REPO, Service, flags_doc, send_batch

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "canaryws.json"

# Series Prometheus makes itself rather than reading them from a target.
PROMETHEUS_SYNTHETIC = {"up"}

PROMQL_WORDS = {
    # aggregations and their modifiers
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    # functions the dashboard may use
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "label_values", "abs", "clamp_min",
    "clamp_max", "vector", "scalar", "time", "sort", "sort_desc", "changes", "resets", "max_over_time",
    "min_over_time", "avg_over_time", "sum_over_time", "last_over_time", "absent", "round", "label_replace",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label matchers, durations,
    grouping label lists and numbers are removed, and PromQL's own words are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    idents = set(re.findall(r"(?<![\w.$])[A-Za-z_:][\w:]*", text))
    return {i for i in idents if i not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", i)}


def test_metric_name_extraction() -> None:
    histogram = 'sum by (strategy, le) (rate(canaryws_x_bucket{job="a", code!~"1000|x_y"}[$__rate_interval]))'
    assert metric_names(histogram) == {"canaryws_x_bucket"}
    revisions = 'count(count by (revision) (canaryws_flags_info{a="b"})) / up'
    assert metric_names(revisions) == {"canaryws_flags_info", "up"}
    assert metric_names('label_values(canaryws_flags_info{job="canaryws"}, instance)') == {"canaryws_flags_info",
                                                                                           "instance"}


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    panels = [p for top in doc["panels"] for p in ([top, *top.get("panels", [])])]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    variables = [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs + [re.sub(r",\s*\w+\)\s*$", ")", v) for v in variables]  # label_values(<selector>, <label>)


async def drive(service: Service) -> None:
    """Traffic that makes each series of the dashboard exist."""
    records = ["ok", " padded ", "", "  ", None, 5, "bell\x07"]  # \x07: lenient accepts, strict rejects
    strategies: set[str] = set()
    n = 0
    while strategies != {"strict", "lenient"}:  # 50 % rollout: both cohorts
        async with service.client(f"tenant-{n}") as (ws, welcome):
            strategies.add(welcome["cohort"]["strategy"])
            for i in range(3):  # a burst beyond the rate limit: throttled frames
                await send_batch(ws, f"b{i}", records)
            frames = await send_batch(ws, "b0", records)  # duplicate id: an error frame
            assert frames[-1]["type"] == "error"
            if n % 2:
                await ws.close(4400, "gave up")  # an abnormal close
        n += 1
        assert n < 64

    # a handshake refused (bad token)
    try:
        async with connect(service.ws_url, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                           additional_headers={"Authorization": "Bearer not-a-token"}):
            raise AssertionError("a bad token was accepted")
    except InvalidStatus as exc:
        assert exc.response.status_code == 401

    # a token that expires while its connection is open: terminated (token_expired)
    short = TokenAuthority.from_data_dir(service.data_dir).issue("tenant-expiring", ttl_seconds=2)
    async with connect(service.ws_url, subprotocols=[PROTOCOL],  # type: ignore[list-item]
                       additional_headers={"Authorization": f"Bearer {short}"}, open_timeout=10) as ws:
        await ws.recv()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert ws.close_code == 1008

    # a flags change under an open connection: a cohort change
    async with service.client("tenant-moving") as (ws, welcome):
        await send_batch(ws, "m0", records)
        target = "lenient" if welcome["cohort"]["strategy"] == "strict" else "strict"
        service.write_flags(flags_doc(strict_rollout=100 if target == "strict" else 0, shadow=True))
        deadline = time.monotonic() + 10
        i = 1
        while True:
            frames = await send_batch(ws, f"m{i}", records)
            i += 1
            if any(f["type"] == "cohort" for f in frames) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert any(f["type"] == "cohort" for f in frames)


def test_every_metric_the_dashboard_queries_is_exposed(tmp_path: Path) -> None:
    env = {"CANARYWS_MAX_MESSAGES_PER_SECOND": "20", "CANARYWS_MESSAGE_BURST": "1"}
    with Service(tmp_path, flags_doc(strict_rollout=50, shadow=True), env=env) as service:
        asyncio.run(drive(service))
        exposition = service.get("/metrics").text
    exposed = {line.split("{", 1)[0].split(" ", 1)[0] for line in exposition.splitlines()
               if line and not line.startswith("#")}
    queries = dashboard_queries()
    used: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, query
        used |= names
    used.discard("instance")  # the label named by label_values(), not a metric
    canaryws = {name for name in used if name.startswith("canaryws_")}
    assert used - canaryws <= PROMETHEUS_SYNTHETIC, used - canaryws
    assert len(canaryws) >= 15
    missing = sorted(canaryws - exposed)
    assert missing == [], f"not on a real /metrics: {missing}\n{exposition}"
