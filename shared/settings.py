"""One settings object for the whole service (batch, worker, CLI, tests).

Every knob is read here and nowhere else: environment variables with the ``LO2_`` prefix (or a
``.env`` file), then the defaults below.  ``KAFKA_BOOTSTRAP_SERVERS`` (no prefix) is honoured too,
because that is the name operators and our test-suite contract use for "use this broker".
Build it once in an entry point (``Settings()``) and pass it down; library code never reads
``os.environ`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root when running from a checkout (used only for defaults of local folders).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "lo2-stream"


class Settings(BaseSettings):
    """All settings of lo2-stream.  See the README's settings table for the meaning of each."""

    model_config = SettingsConfigDict(
        env_prefix="LO2_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- folders -------------------------------------------------------------------------------
    data_dir: Path = Field(default=PROJECT_ROOT / "data", description="Generated runs and Parquets.")
    model_dir: Path = Field(
        default=PROJECT_ROOT / "models",
        description="Model bundles; `current` points at the promoted one.",
    )
    artifacts_dir: Path = Field(
        default=PROJECT_ROOT / "artifacts",
        description="Reports, explainability artefacts, benchmark outputs.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Downloaded Kafka jars and other caches (kept between runs).",
    )
    samples_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "lo2-samples",
        description="Folder with the real LO2 fragments (read-only, never copied into the repo).",
    )

    # --- Kafka (broker) ------------------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("LO2_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Use this broker instead of starting the local one (host:port[,host:port]).",
    )
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka version fetched from Maven Central.")
    kafka_port: int = Field(default=9092, description="Port of the local broker started by `lo2 kafka start`.")
    kafka_controller_port: int = Field(default=9093, description="KRaft controller port of the local broker.")
    kafka_state_dir: Path = Field(
        default=PROJECT_ROOT / ".lo2" / "kafka",
        description="Data, logs and pid file of the local broker started by `lo2 kafka start`.",
    )
    kafka_heap: str = Field(default="512m", description="Java heap of the local broker (-Xmx).")
    kafka_start_timeout_s: float = Field(default=60.0, description="How long to wait for the broker to answer.")

    # --- Kafka (local broker runner: worker/broker.py, `lo2 kafka`, tests/plugins/kafka.py) --------
    kafka_host: str = Field(
        default="127.0.0.1",
        description="Interface the local broker listens on and advertises (loopback: it is a dev/test broker).",
    )
    kafka_resources_dir: Path = Field(
        default=PROJECT_ROOT / "deploy" / "kafka",
        description="Folder with pom.xml, log4j2.xml and server.properties.template of the local broker.",
    )
    kafka_java: str = Field(default="java", description="Java 17+ executable that runs the broker (name on PATH or path).")
    kafka_mvn: str = Field(default="mvn", description="Maven executable that fetches the Kafka jars (name on PATH or path).")
    kafka_jvm_opts: str = Field(
        default="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        description=(
            "Extra JVM flags of the local broker.  The default trades peak throughput for start-up time "
            "and a small footprint (C1 JIT only, one GC thread): right for tests and the demo."
        ),
    )
    kafka_cds: bool = Field(
        default=True,
        description=(
            "Keep a JVM class-data-sharing archive per Kafka version in the cache: the first broker "
            "writes it when it stops, later starts map it and start faster."
        ),
    )
    kafka_log_level: str = Field(
        default="WARN",
        description="Log4j2 level of the broker's own log file <state-dir>/logs/server.log (INFO to debug it).",
    )
    kafka_stop_timeout_s: float = Field(
        default=30.0, description="How long `stop` waits after SIGTERM before it kills the broker."
    )
    kafka_docker_image: str = Field(
        default="confluentinc/cp-kafka:7.6.0",
        description="Image of the testcontainers fallback broker (tests only, when Java/Maven are missing).",
    )

    # --- topics ----------------------------------------------------------------------------------
    input_topic: str = Field(default="lo2.logs", description="Input topic with OAuth2 log events.")
    anomalies_topic: str = Field(default="lo2.anomalies", description="Output topic with anomaly records.")
    dlq_topic: str = Field(default="lo2.dlq", description="Dead-letter topic for bad input.")
    topic_partitions: int = Field(default=4, description="Partitions of the input and output topics.")

    # --- worker ----------------------------------------------------------------------------------
    app_id: str = Field(default="lo2-worker", description="Faust app id = Kafka consumer group.")
    worker_web_port: int = Field(default=6066, description="Port of the worker's web server (/metrics).")
    table_store: str = Field(
        default="memory://",
        description="Faust table store: memory:// (dev/tests) or rocksdb:// (production, needs rocksdict).",
    )

    # --- streaming worker (worker/app.py, worker/agents.py; owner: worker) ---------------------------
    scores_topic: str = Field(default="lo2.scores", description="Topic with one score record per scored sequence (parity, audits).")
    worker_emit_scores: bool = Field(default=True, description="Also emit every scored sequence to scores_topic.")
    worker_input_mode: Literal["auto", "json", "raw"] = Field(
        default="auto", description="Input form: auto (JSON if the value starts with '{', else raw line), json, or raw."
    )
    worker_datadir: Path = Field(default=PROJECT_ROOT / ".lo2" / "worker", description="Faust data dir (tables, rocksdb).")
    worker_web_bind: str = Field(default="0.0.0.0", description="Address the worker's web server (/metrics) binds to.")  # noqa: S104
    worker_batch_max: int = Field(default=500, ge=1, description="Max input records per processing batch (stream.take_events).")
    worker_batch_within_s: float = Field(default=0.02, gt=0, description="Max wait for a batch to fill (seconds); bounds latency.")
    worker_tick_s: float = Field(default=0.5, gt=0, description="Timer interval that folds held-back events and closes idle sequences.")
    worker_pending_hold_s: float = Field(
        default=2.0, ge=0, description="How long the last event of a stream waits for stack-trace lines in later records."
    )
    worker_idle_after_s: float = Field(
        default=5.0, gt=0, description="Wall seconds without input after which event time is advanced to close idle sequences."
    )
    worker_faust_metrics: bool = Field(
        default=False,
        description=(
            "Also expose Faust's own Prometheus sensor on /metrics (lo2_faust_<app_id>_*: rebalances, commit latency, "
            "per-partition offsets). Off by default: lo2_worker_* covers the product, and the sensor costs ~70-80 us, "
            "about a quarter of the worker's CPU, per one-line record."
        ),
    )
    worker_online_model: bool = Field(default=True, description="Score with River HalfSpaceTrees alongside the bundle.")
    worker_live_stream: str = Field(default="live", description="Run name given to records without a run (live shippers).")
    worker_max_record_bytes: int = Field(default=1_048_576, ge=1, description="Larger input records go to the DLQ (too_large).")
    worker_max_line_chars: int = Field(default=16_384, ge=1, description="Longer log lines go to the DLQ (too_large).")
    worker_max_batch_lines: int = Field(default=10_000, ge=1, description="Batch envelopes with more lines go to the DLQ (too_large).")
    worker_buffer_maxsize: int = Field(default=4096, ge=1, description="Faust stream buffer per partition (records).")
    worker_session_timeout_s: float = Field(default=10.0, gt=0, description="Kafka consumer session timeout (dead worker detection).")
    worker_heartbeat_interval_s: float = Field(default=1.0, gt=0, description="Kafka consumer heartbeat interval.")
    worker_rebalance_timeout_s: float = Field(default=10.0, gt=0, description="Kafka consumer rebalance timeout.")
    worker_yield_every_lines: int = Field(
        default=2000, ge=1, description="Lines processed between two yields to the event loop (keeps heartbeats and /metrics live)."
    )
    worker_checkpoint_interval_s: float = Field(
        default=1.0, gt=0, description="How often worker state is written to the changelog and input offsets acked."
    )
    worker_checkpoint_max_records: int = Field(
        default=20_000, ge=1, description="Checkpoint early once this many input records wait for their ack."
    )
    worker_recovery_delay_s: float = Field(default=0.5, ge=0, description="Faust's wait before table recovery after a rebalance.")
    model_reload_interval_s: float = Field(default=10.0, gt=0, description="How often the worker checks the `current` model pointer.")

    # --- data ------------------------------------------------------------------------------------
    seed: int = Field(default=42, description="Default seed for everything random (generation, sampling, models).")
    trim_init_lines: int = Field(
        default=100,
        description="With trim_mode=lines: events dropped at the head of every service log (the LogLead fork's rule); unused by the default trim_mode=startup.",
    )

    # --- loader (`lo2 load`, batch/loader.py) ------------------------------------------------------
    runs_dir: Path = Field(
        default=PROJECT_ROOT / "data" / "runs",
        description="Raw LO2 run folders: default --root of `lo2 load` (v1 or v2 layout).",
    )
    parquet_dir: Path = Field(
        default=PROJECT_ROOT / "data" / "parquet",
        description="Where `lo2 load` writes events.parquet, sequences.parquet and load_summary.json.",
    )
    loader_batch_mb: int = Field(
        # 32, not 64: with the native tokenizer a 64 MB batch's buffers are fresh mmaps every time
        # (page faults ~25 % of the CPU); 32 MB measured ~6 % less CPU and ~25 % less peak RSS.
        default=32,
        ge=1,
        description="Raw log megabytes the loader parses per batch (bounds its peak memory).",
    )
    loader_engine: Literal["auto", "native", "polars"] = Field(
        default="auto",
        description="Parser of `lo2 load`: 'auto' = the compiled one-pass tokenizer (batch._native, built "
        "when cargo is present at install) if it imports, else Polars expressions; 'native' = fail without it; "
        "'polars' = always the Polars path (A/B benchmarks). Both give the same output.",
    )
    trim_mode: Literal["startup", "lines", "none"] = Field(
        default="startup",
        description="How `lo2 load` drops start-up output at the head of a service log: 'startup' = the "
        "container start-up block (JVM lines, `main` and Hazelcast start-up threads before the first "
        "request or partition-operation line), 'lines' = the first trim_init_lines events (LogLead fork), "
        "'none' = keep everything.",
    )

    # --- features, templates, sequences (shared/features.py, templates.py, sequences.py) --------------
    feature_top_templates: int = Field(
        default=200,
        ge=0,
        description="Templates (most frequent in training first) that get their own share column.",
    )
    feature_min_support: int = Field(
        default=5,
        ge=1,
        description="Templates seen fewer times than this in training go to the 'rare' bucket.",
    )
    feature_hash_dims: int = Field(
        default=4096,
        ge=16,
        description="Width of the hashed token representation (X_tokens) of the word-based models.",
    )
    drain_sim_th: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description=(
            "Drain3 similarity threshold. 0.6, not Drain's 0.4: messages are masked first, and 0.4 merged "
            "different endpoints/validator fields into one template."
        ),
    )
    drain_depth: int = Field(default=4, ge=3, description="Drain3 parse-tree depth (template mining).")
    sequence_policy: str = Field(
        default="file",
        pattern="^(file|window)$",
        description="Sequences: 'file' = (run, test_case, service), the LO2 unit; 'window' = tumbling event-time windows per service.",
    )
    window_seconds: float = Field(default=60.0, gt=0, description="Window length of the 'window' sequence policy.")
    allowed_lateness_seconds: float = Field(
        default=5.0, ge=0, description="How long a window waits for late events after its end (event time)."
    )
    # 180 s: above the longest silence inside one service log (generated LO2v2: 92 s, `key`; a v2
    # test lasts at most 180 s).  A smaller gap splits such a log in the worker but not in batch.
    idle_gap_seconds: float = Field(
        default=180.0, gt=0, description="A sequence with no event for this long (event time) is complete."
    )
    evidence_lines: int = Field(
        default=5, ge=0, description="Redacted evidence lines kept per sequence (ERROR/WARN/unseen first)."
    )

    # --- evaluation and nightly retrain (batch/evaluate.py, batch/retrain.py; owner: evaluation) -----
    eval_seeds: int = Field(default=3, ge=1, description="Seeds per `lo2 evaluate` run (mean ± std over them).")
    retrain_model: str = Field(default="if", description="Registry key of the model the nightly retrain builds.")
    retrain_label: str = Field(
        default="anomaly_service",
        pattern="^(anomaly|anomaly_service)$",
        description="Label the champion/challenger comparison is measured on (anomaly = paper, anomaly_service = service-aware).",
    )
    retrain_metric: str = Field(
        default="roc_auc",
        pattern="^(roc_auc|pr_auc)$",
        description="Primary metric of the promotion rule, on the held-out test runs.",
    )
    retrain_margin: float = Field(
        default=0.01,
        ge=0,
        description="The challenger is promoted only if its primary metric beats the champion's by at least this much.",
    )
    retrain_alert_rate_tolerance: float = Field(
        default=0.0,
        ge=0,
        description="...and only if its alert rate on normal (`correct`) test sequences exceeds the champion's by at most this.",
    )
    retrain_keep_rejected: bool = Field(
        default=True, description="Keep a rejected challenger bundle on disk (its decision record names it)."
    )

    # --- training (`lo2 train`, batch/train.py; owner: training) ------------------------------------
    train_chunk_runs: int = Field(
        default=8,
        ge=1,
        description="Runs featurized at a time by `lo2 train` (sequences never span runs, so this only bounds peak memory).",
    )


def get_settings() -> Settings:
    """Build the settings from the environment (call once per entry point)."""
    return Settings()


def settings_table_markdown() -> str:
    """The README's settings table, generated from the fields above (so docs cannot drift).

    ``tests/unit/test_docs.py`` fails when the README lacks a setting; regenerate with
    ``python -c "from shared.settings import settings_table_markdown as t; print(t())"``.
    """
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        env = f"LO2_{name.upper()}"
        if name == "kafka_bootstrap_servers":
            env += " / KAFKA_BOOTSTRAP_SERVERS"
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        if isinstance(default, Path):
            try:
                default = default.relative_to(PROJECT_ROOT.parent)
                default = f"<checkout>/../{default}" if str(default).startswith("shared") else f"<checkout>/{Path(*default.parts[1:])}"
            except ValueError:
                default = str(default).replace(str(Path.home()), "~")
        shown = "" if default is None else str(default).replace("|", "\\|")
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{env}` | `{shown}` | {desc} |")
    return "\n".join(rows)
