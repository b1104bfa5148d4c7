"""``/metrics``: Prometheus series computed at scrape time from the state root and the broker.

The bridge process runs no step, so in-process counters would count nothing: a custom
collector reads the run reports (``ccci_runs_total``, ``ccci_run_duration_seconds``), the
run slots and the FIFO in Redis (``ccci_runs_queued``, ``ccci_slots_in_use``), the canonical
registries (``ccci_canonical_age_seconds``) and the disk (``ccci_disk_used_ratio``) each time
it is scraped. ``ccci_runs_total`` counts the reports of every host that the broker holds,
with this host's own copies: it drops when the broker drops old reports
(``CCCI_REPORT_BROKER_DAYS``), which Prometheus' ``rate()``/``increase()`` read as a counter
reset. A broker that does not answer leaves its series out (the run counts then are this
host's copies only) and sets ``ccci_broker_up`` to 0.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ccci_tasks import broker
from ccci_tasks.config import Settings
from ccci_tasks.errors import CcciError
from ccci_tasks.state import reports
from ccci_tasks.state.canonical import list_registries
from ccci_tasks.state.clock import utc_now

log = logging.getLogger(__name__)

DURATION_BUCKETS_S: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
                             3600.0, 7200.0)


def _histogram(durations: list[float]) -> tuple[list[tuple[str, float]], float]:
    buckets = [(f"{bound:g}", float(sum(1 for d in durations if d <= bound)))
               for bound in DURATION_BUCKETS_S]
    buckets.append(("+Inf", float(len(durations))))
    return buckets, sum(durations)


class StateCollector(Collector):
    """Every series of ``/metrics``, read anew at each ``collect``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._runs()
        yield from self._slots()
        yield from self._canonicals()
        yield from self._disk()

    def _runs(self) -> Iterator[Metric]:
        counts: Counter[tuple[str, str]] = Counter()
        durations: dict[str, list[float]] = defaultdict(list)
        for report in reports.at(self.settings, broker.QUICK_TIMEOUT_S).all():
            if report.verdict is None:
                continue
            counts[(report.lane, report.verdict)] += 1
            seconds = report.duration_s()
            if seconds is not None:
                durations[report.lane].append(seconds)
        total = CounterMetricFamily("ccci_runs", "Finished runs by lane and verdict (run "
                                    "reports of every host).", labels=["lane", "verdict"])
        for (lane, verdict), count in sorted(counts.items()):
            total.add_metric([lane, verdict], count)
        yield total
        histogram = HistogramMetricFamily(
            "ccci_run_duration_seconds", "Duration of finished runs, first step to verdict.",
            labels=["lane"])
        for lane, values in sorted(durations.items()):
            buckets, total_s = _histogram(values)
            histogram.add_metric([lane], buckets, total_s)
        yield histogram

    def _slots(self) -> Iterator[Metric]:
        from ccci_tasks.admission import Slots

        up = GaugeMetricFamily("ccci_broker_up", "1 when the broker answered this scrape.")
        yield GaugeMetricFamily("ccci_slots_max", "Run slots (CCCI_MAX_TESTS).",
                                value=self.settings.max_tests)
        try:
            slots = Slots.from_settings(self.settings)
            occupying, pending = slots.occupying(), slots.pending()
        except CcciError as exc:
            log.warning("metrics: the broker does not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        in_use = sum(1 for lease in occupying
                     if lease.spec is not None and lease.spec.holds_slot)
        yield GaugeMetricFamily("ccci_slots_in_use", "Run slots held now.", value=in_use)
        yield GaugeMetricFamily("ccci_runs_queued", "Runs waiting for their resources.",
                                value=len(pending))

    def _canonicals(self) -> Iterator[Metric]:
        age = GaugeMetricFamily("ccci_canonical_age_seconds",
                                "Seconds since each canonical's known-good was recorded.",
                                labels=["recipe"])
        now = utc_now()
        for registry in list_registries(self.settings.state_dir):
            try:
                ts = datetime.fromisoformat(registry.ts)
            except (TypeError, ValueError):
                continue
            if ts.tzinfo is None:
                continue
            age.add_metric([registry.recipe], max(0.0, (now - ts).total_seconds()))
        yield age

    def _disk(self) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(self.settings.prune_path)
        except OSError as exc:
            log.warning("metrics: cannot read the disk usage of %s: %s",
                        self.settings.prune_path, exc)
            return
        yield GaugeMetricFamily(
            "ccci_disk_used_ratio", "Used share of the disk that holds CCCI_PRUNE_PATH.",
            value=usage.used / usage.total if usage.total else 0.0)


def render_metrics(settings: Settings) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``StateCollector`` and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST
