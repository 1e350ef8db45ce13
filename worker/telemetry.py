"""All Prometheus metrics of the worker, in one typed container built against an injected registry.

Why a container instead of module-level metrics: tests and the benchmark build several apps in one
process, and ``prometheus_client`` refuses to register a name twice in one registry.  Each app gets
its own :class:`~prometheus_client.CollectorRegistry`; Faust's own sensor
(``setup_prometheus_sensors``) is attached to the same registry, so one ``/metrics`` page serves
both.  Conventions (streaming-anchors §3.2): prefix ``lo2_worker_``, base units (seconds),
counters end in ``_total`` (the client adds it), labels are low-cardinality only (service, reason,
model; never run, test case or ids).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Scoring a micro-batch costs ~0.5 ms .. 100 ms (IsolationForest, streaming-anchors §5).
SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: From a sequence's last event to its record on the output topic; the goal is p99 <= 250 ms.
E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

PREFIX = "lo2_worker"


@dataclass(frozen=True)
class WorkerMetrics:
    """The worker's own metrics (Faust's sensor adds ``<app>_...`` next to them)."""

    registry: CollectorRegistry
    records_in: Counter
    events_in: Counter
    invalid_records: Counter
    continuation_lines: Counter
    sequences_scored: Counter
    anomalies: Counter
    open_sequences: Gauge
    scoring_seconds: Histogram
    scoring_batch_size: Histogram
    end_to_end_seconds: Histogram
    model_info: Gauge
    model_reloads: Counter
    online_learned: Counter
    input_rewinds: Counter
    input_holes: Counter
    unscored_sequences: Counter
    late_events: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        p = PREFIX
        return cls(
            registry=reg,
            records_in=Counter(f"{p}_records", "Input records consumed, by form (json/raw).", ["form"], registry=reg),
            events_in=Counter(f"{p}_events", "Log events (parsed event lines) consumed, by service.", ["service"], registry=reg),
            invalid_records=Counter(
                f"{p}_invalid_records",
                "Records or lines rejected and sent to the dead-letter topic, by reason.",
                ["reason"],
                registry=reg,
            ),
            continuation_lines=Counter(
                f"{p}_continuation_lines", "Stack-trace/continuation lines arriving as own lines: attached to the previous event, or orphan (no event to attach to).", ["result"], registry=reg
            ),
            sequences_scored=Counter(
                f"{p}_sequences_scored", "Closed sequences scored, by model and what closed them.", ["model", "closed_by"], registry=reg
            ),
            anomalies=Counter(f"{p}_anomalies", "Anomaly records emitted, by service.", ["service"], registry=reg),
            open_sequences=Gauge(f"{p}_open_sequences", "Sequences currently open in this worker.", registry=reg),
            scoring_seconds=Histogram(
                f"{p}_scoring_seconds", "Time to featurize and score one micro-batch of closed sequences.", buckets=SCORING_BUCKETS, registry=reg
            ),
            scoring_batch_size=Histogram(
                f"{p}_scoring_batch_sequences", "Closed sequences per scoring micro-batch.", buckets=BATCH_BUCKETS, registry=reg
            ),
            end_to_end_seconds=Histogram(
                f"{p}_end_to_end_latency_seconds",
                "From the Kafka timestamp of a sequence's last record to its score/anomaly record being sent.",
                buckets=E2E_BUCKETS,
                registry=reg,
            ),
            model_info=Gauge(f"{p}_model_info", "The loaded model (value 1), by name and version.", ["model", "version"], registry=reg),
            model_reloads=Counter(
                f"{p}_model_reloads", "Model hot-reload attempts, by result (loaded/failed).", ["result"], registry=reg
            ),
            online_learned=Counter(
                f"{p}_online_learned_sequences", "Sequences the River online model learned from (non-anomalous only).", registry=reg
            ),
            input_rewinds=Counter(
                f"{p}_input_rewinds",
                "Times a record arrived past a hole in its partition's offsets and the worker re-read from the hole "
                "(the Faust stream can drop a fetched record; nothing is lost).",
                registry=reg,
            ),
            input_holes=Counter(
                f"{p}_input_offset_holes",
                "Input offsets the broker had no record for on a re-read (transaction markers, compaction, retention); "
                "on a plain topic this stays 0.",
                registry=reg,
            ),
            unscored_sequences=Counter(
                f"{p}_unscored_sequences",
                "Closed sequences the model cannot score, by service and reason "
                "(no_model_for_service: a per-service bundle has no detector for that service).",
                ["service", "reason"],
                registry=reg,
            ),
            late_events=Counter(
                f"{p}_late_events",
                "Events dropped because their window had already closed (window policy; the producer's "
                "keying or ordering lets events arrive after the watermark passed their window).",
                ["service"],
                registry=reg,
            ),
        )

    def set_model(self, name: str, version: str) -> None:
        """Point ``model_info`` at the loaded model only (the old label set is removed)."""
        self.model_info.clear()
        self.model_info.labels(model=name, version=version).set(1)
