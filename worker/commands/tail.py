"""Print anomaly records from the anomalies topic, readably or as JSON lines (de-duplicated by id)."""

from __future__ import annotations

import argparse

from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", default=None, help="anomalies topic (default: settings anomalies_topic, lo2.anomalies)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: settings / local broker)")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest record instead of new ones only")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line instead of readable text")
    parser.add_argument("--max", type=int, default=None, help="stop after this many records")
    parser.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a new record (default: follow forever)")
    parser.add_argument("--no-dedupe", action="store_true", help="print re-emitted duplicates (same id) too")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from aiokafka.errors import KafkaError
    from rich.console import Console

    from shared.errors import BrokerError
    from worker.broker import probe
    from worker.commands.replay import bootstrap_of
    from worker.tail import as_json_line, iter_anomalies, render

    console = Console(highlight=False, soft_wrap=True)
    bootstrap = bootstrap_of(settings, args.bootstrap)
    topic = args.topic or settings.anomalies_topic
    probe(bootstrap)  # BrokerError (one clean line from `lo2`) instead of a consumer failing to start

    async def main() -> int:
        n = 0
        async for rec in iter_anomalies(
            bootstrap=bootstrap, topic=topic,
            from_beginning=args.from_beginning, idle_timeout_s=args.idle_timeout, dedupe=not args.no_dedupe,
        ):
            if args.json:
                print(as_json_line(rec), flush=True)  # noqa: T201 - CLI output, machine-readable
            else:
                console.print(render(rec), markup=False)
            n += 1
            if args.max is not None and n >= args.max:
                break
        return n

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except KafkaError as exc:  # the broker went away after the probe
        raise BrokerError(f"reading {topic!r} from {bootstrap} failed: {type(exc).__name__}: {exc}") from exc
    return 0
