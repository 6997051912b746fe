"""Metrics of the flag source: reloads, the revision in force, its age and problems."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from canaryws.core.cohorts import COHORT_FLAGS
from canaryws.core.flagdoc import PROBLEM_KINDS

__all__ = ["FlagsTelemetry"]


class FlagsTelemetry:
    """Metrics of the flag source: reload results, revision and age of the flags."""

    def __init__(self, meter_provider: MeterProvider, status: Callable[[], Mapping[str, Any]] | None = None,
                 strict_share: Callable[[], float | None] | None = None) -> None:
        """``status`` and ``strict_share``: see :meth:`observe` (which the composition calls
        once the flag source exists: the source reports its reloads here from its first load)."""
        meter = meter_provider.get_meter("canaryws.flags")
        self._status: Callable[[], Mapping[str, Any]] = lambda: {}
        self._strict_share: Callable[[], float | None] | None = None
        if status is not None:
            self.observe(status, strict_share)
        self._reloads = meter.create_counter(
            "canaryws.flags.reloads", unit="{reload}", description="Flag document reloads by source and result"
        )
        meter.create_observable_gauge(
            "canaryws.flags.age",
            callbacks=[self._observe_age],
            unit="s",
            description="Seconds since the flags in force were loaded",
        )
        meter.create_observable_gauge(
            "canaryws.flags.info",
            callbacks=[self._observe_info],
            unit="1",
            description="1 for the flags revision in force (labels: source, revision, state)",
        )
        meter.create_observable_gauge(
            "canaryws.flags.problems",
            callbacks=[self._observe_problems],
            unit="{problem}",
            description="Problems in the flags document in force, by kind (every kind, 0 included)",
        )
        meter.create_observable_gauge(
            "canaryws.flags.cohort_held",
            callbacks=[self._observe_held],
            unit="1",
            description="1 while a cohort flag is held at its last good definition (served in a form "
            "canaryws cannot evaluate as intended), else 0",
        )
        meter.create_observable_gauge(
            "canaryws.flags.strict_share",
            callbacks=[self._observe_strict_share],
            unit="1",
            description="Share of client ids the flags in force route to the strict cohort",
        )

    def observe(self, status: Callable[[], Mapping[str, Any]],
                strict_share: Callable[[], float | None] | None = None) -> None:
        """Read the flag source at scrape time: ``status`` returns its status and
        ``strict_share`` the share of client ids the flags in force route to strict (None when
        it depends on more than the id). Nothing is observed before."""
        self._status = status
        self._strict_share = strict_share

    def reloaded(self, source: str, result: str) -> None:
        self._reloads.add(1, {"source": source, "result": result})

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        st = self._status()
        if not st:
            return
        yield Observation(float(st.get("age_seconds", 0.0)), {"source": str(st.get("source"))})

    def _observe_info(self, _options: CallbackOptions) -> Iterable[Observation]:
        st = self._status()
        if not st:
            return
        yield Observation(
            1,
            {"source": str(st.get("source")), "revision": str(st.get("revision")), "state": str(st.get("state"))},
        )

    def _observe_problems(self, _options: CallbackOptions) -> Iterable[Observation]:
        st = self._status()
        if not st:
            return
        counts = st.get("problems") or {}
        source = str(st.get("source"))
        for kind in PROBLEM_KINDS:
            yield Observation(int(counts.get(kind, 0)), {"source": source, "kind": kind})

    def _observe_held(self, _options: CallbackOptions) -> Iterable[Observation]:
        st = self._status()
        if not st:
            return
        cohort = st.get("cohort_flags") or {}
        source = str(st.get("source"))
        for flag in COHORT_FLAGS:
            held = (cohort.get(flag) or {}).get("state") == "held"
            yield Observation(1 if held else 0, {"source": source, "flag": flag})

    def _observe_strict_share(self, _options: CallbackOptions) -> Iterable[Observation]:
        share = self._strict_share() if self._strict_share is not None else None
        if share is not None:
            yield Observation(share, {"source": str(self._status().get("source"))})
