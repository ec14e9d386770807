"""The api's one hook into backups: the gauge of the last good backup, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.backup.archive import last_success_timestamp


class BackupStatusCollector(Collector):
    """Reads `latest.json` at scrape time, so the api needs no state of its own about it."""

    def __init__(self, out_dir: Path) -> None:
        self._dir = out_dir

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "raiox_backup_last_success_timestamp_seconds",
            "When the newest successful `raiox backup` was taken (0: none yet).",
        )
        gauge.add_metric([], last_success_timestamp(self._dir))
        yield gauge


def backup_metrics(out_dir: Path) -> bytes:
    """The backup gauge in the text exposition format, read now (appended to /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackupStatusCollector(out_dir))
    return generate_latest(registry)
