"""Run the Faust streaming worker: sequences from the input topic, anomaly records out, /metrics.

It reads log records (line/batch envelopes, OTLP/JSON, or raw lines) from the input topic, groups
them into sequences with the model bundle's policy, scores closed sequences in micro-batches and
writes anomaly records (with explanations) to the anomalies topic and bad input to the DLQ.  Open
sequences live in a changelog-backed table, so a restarted worker resumes them.  Several workers
with the same app id split the partitions.  Give each worker on one host its own --web-port.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="bundle folder, or a model folder whose `current` pointer is followed and hot-reloaded (default: settings model_dir)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: settings / local broker)")
    parser.add_argument("--web-port", type=int, default=None, help="port of /metrics (default: settings worker_web_port, 6066)")
    parser.add_argument("--datadir", type=Path, default=None, help="Faust data dir (default: settings worker_datadir/<web port>)")
    parser.add_argument("--store", default=None, help="table store: memory:// or rocksdb:// (default: settings table_store)")
    parser.add_argument("--app-id", default=None, help="Faust app id = consumer group (default: settings app_id)")
    parser.add_argument("--log-level", default="info", choices=["crit", "error", "warn", "info", "debug"], help="Faust worker log level")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    import faust

    from shared.errors import Lo2Error
    from worker.app import bootstrap_of, create_app
    from worker.topics import ensure_topics_sync

    overrides: dict[str, object] = {}
    if args.bootstrap:
        overrides["kafka_bootstrap_servers"] = args.bootstrap
    if args.store:
        overrides["table_store"] = args.store
    if args.app_id:
        overrides["app_id"] = args.app_id
    if overrides:
        settings = settings.model_copy(update=overrides)
    web_port = args.web_port or settings.worker_web_port
    datadir = args.datadir or settings.worker_datadir / str(web_port)
    try:
        runtime = create_app(settings, args.model or settings.model_dir, web_port=web_port, datadir=datadir)
    except Lo2Error as exc:
        logging.getLogger(__name__).error("cannot start the worker: %s", exc)
        return 2
    try:
        ensure_topics_sync(
            bootstrap_of(settings),
            [settings.input_topic, settings.anomalies_topic, settings.dlq_topic]
            + ([settings.scores_topic] if settings.worker_emit_scores else []),
            partitions=settings.topic_partitions,
        )
    except Lo2Error as exc:
        logging.getLogger(__name__).error("cannot prepare the topics: %s", exc)
        return 2
    worker = faust.Worker(runtime.app, loglevel=args.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
