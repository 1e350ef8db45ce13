"""Push LO2 data into the input topic: run folders (raw logs) or events.parquet, in timestamp order.

Lines are sent as batch envelopes keyed by the sequence key (run|test_case|service), followed by one
end-of-sequence marker per log file, so the worker closes each sequence exactly where the batch
loader's file ends.  `--speed 0` sends as fast as possible, `--speed 1` in real time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", type=Path, help="LO2 run folder(s), folder(s) of runs, or events.parquet file(s)")
    parser.add_argument("--topic", default=None, help="input topic (default: settings input_topic, lo2.logs)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: settings / local broker)")
    parser.add_argument("--speed", type=float, default=0.0, help="replay speed factor: 0 = as fast as possible, 1 = real time, 10 = ten times faster")
    parser.add_argument("--batch-lines", type=int, default=200, help="lines per batch envelope (1 = one line envelope per line)")
    parser.add_argument("--key-by", choices=["sequence", "service"], default="sequence",
                        help="record key: the sequence key run|test_case|service (file policy) or the service (window policy)")
    parser.add_argument("--no-end-markers", action="store_true", help="do not send end-of-sequence markers (sequences then close by idle gap)")
    parser.add_argument("--trim-mode", choices=["startup", "lines", "none"], default=None,
                        help="trim the head of every log file like `lo2 load`: startup = the start-up block (default: settings trim_mode), "
                             "lines = the first --trim-init-lines events, none; Parquet input is already trimmed")
    parser.add_argument("--trim-init-lines", type=int, default=None,
                        help="with --trim-mode lines (implied when given alone): drop the first N events (default: settings trim_init_lines)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


#: Longest log-time span of one batch envelope in an as-fast-as-possible replay (well below the
#: file policy's idle gap, 60 s by default).
MAX_SPAN_MS_FAST = 5000


def bootstrap_of(settings: Settings, flag: str | None) -> str:
    """The broker to talk to: the flag, else KAFKA_BOOTSTRAP_SERVERS, else the local broker's port."""
    return flag or settings.kafka_bootstrap_servers or f"localhost:{settings.kafka_port}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import itertools
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.replay import (
        Chunk,
        ReplayStats,
        build_records,
        check_source,
        folder_chunks,
        parquet_chunks,
        produce,
    )

    for source in args.sources:  # before the topic is touched: a wrong path is a user error, not a broker one
        check_source(source)
    console = Console(stderr=True)
    stats = ReplayStats()
    trim = settings.trim_init_lines if args.trim_init_lines is None else args.trim_init_lines
    # the loader's rule: a count given alone means the "lines" mode
    trim_mode = args.trim_mode or ("lines" if args.trim_init_lines is not None else settings.trim_mode)

    def chunks() -> itertools.chain[Chunk]:
        parts = [parquet_chunks(p) if p.suffix == ".parquet" else folder_chunks(p, trim, stats, trim_mode) for p in args.sources]
        return itertools.chain.from_iterable(parts)

    records = build_records(
        chunks(), batch_lines=args.batch_lines, key_by=args.key_by, end_markers=not args.no_end_markers,
        # A batch never spans more than a few seconds of log time, even at --speed 0: a sparse
        # key's lines would otherwise wait for 200 lines or its end marker and reach the worker
        # long after the rest of its partition (its sequence then looks idle and is split).
        max_span_ms=1000 if args.speed > 0 else MAX_SPAN_MS_FAST, stats=stats,
    )
    topic = args.topic or settings.input_topic
    bootstrap = bootstrap_of(settings, args.bootstrap)
    from worker.topics import ensure_topics_sync

    ensure_topics_sync(bootstrap, [topic], partitions=settings.topic_partitions)
    t0 = time.perf_counter()
    with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("lines {task.fields[lines]}"),
                  TimeElapsedColumn(), console=console, disable=args.no_progress) as progress:
        task = progress.add_task("replay", total=None, lines=0)

        def tick(rec: object) -> None:
            progress.update(task, advance=1, lines=stats.lines)

        asyncio.run(produce(records, bootstrap=bootstrap, topic=topic, speed=args.speed, on_record=tick))
    stats.seconds = time.perf_counter() - t0
    console.print(f"replayed to {topic} at {bootstrap}: {stats.as_dict()}")
    return 0
