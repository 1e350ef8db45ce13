"""deploy/prometheus/alerts.yml only uses metrics, and groups only by labels, that the worker exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from worker.drift import DriftMonitor
from worker.telemetry import WorkerMetrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _exported() -> dict[str, set[str]]:
    """Metric family name -> label names: the worker's metrics and the PSI gauge of worker/drift.py."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)
    drift = DriftMonitor.from_reference({}, registry)
    drift.gauge.labels(kind="score", name="all").set(0.0)
    metrics.model_info.labels(model="m", version="v").set(1)
    for counter in (metrics.records_in, metrics.events_in, metrics.invalid_records, metrics.continuation_lines,
                    metrics.anomalies, metrics.model_reloads):
        counter.labels(*["x"] * len(counter._labelnames)).inc(0)
    metrics.sequences_scored.labels(model="m", closed_by="end_marker").inc(0)
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        out.setdefault(family.name, set()).update(k for s in family.samples for k in s.labels if k != "le")
    return out


def test_alert_rules_use_exported_metrics_and_labels() -> None:
    rules = re.findall(r"expr: (\|\n(?:\s{10,}.*\n)+|.*\n)", RULES.read_text())
    assert len(rules) >= 8, "the rule file was not parsed"
    exported = _exported()
    for expr in rules:
        for name in re.findall(r"\blo2_worker_[a-z_]+", expr):
            family = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s) and name[: -len(s)] in exported), name)
            assert family in exported, f"{name} ({expr.strip()!r}) is not exported by the worker"
            for group in re.findall(r"by \(([^)]*)\)", expr):
                labels = {g.strip() for g in group.split(",")} - {"le", "instance", "job"}
                assert labels <= exported[family], f"{expr.strip()!r} groups by {labels - exported[family]}"
