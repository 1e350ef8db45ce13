"""Run a local Apache Kafka broker (single-node KRaft) from the official jars on Maven Central.

`lo2 kafka fetch` downloads the jars once (Maven, into the cache); `lo2 kafka start` formats the
storage on first use, starts the broker in the background and returns when it answers;
`lo2 kafka status` says whether it runs and where (bootstrap address); `lo2 kafka stop` stops it.
Exit codes of `status`: 0 running, 1 alive but not answering, 3 not running.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from worker.broker import BrokerStatus

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kafka_action", metavar="ACTION", required=True)

    fetch = sub.add_parser("fetch", help="download the Kafka jars with Maven into the cache (once)")
    fetch.add_argument(
        "--force", action="store_true", help="download again even if a complete copy is cached"
    )
    fetch.add_argument(
        "--optional",
        action="store_true",
        help="exit 0 with a warning when Java or Maven is missing (the tests then look for Docker)",
    )

    start = sub.add_parser(
        "start", help="start the broker in the background; returns once it answers"
    )
    _state_dir_flag(start)
    start.add_argument(
        "--port", type=int, default=None, help="client port (default: LO2_KAFKA_PORT, 9092)"
    )
    start.add_argument(
        "--controller-port",
        type=int,
        default=None,
        help="KRaft controller port (default: LO2_KAFKA_CONTROLLER_PORT, or a free port if that is taken)",
    )
    start.add_argument(
        "--fresh", action="store_true", help="delete the broker's topics and data before starting"
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the broker to answer (default: LO2_KAFKA_START_TIMEOUT_S)",
    )

    stop = sub.add_parser("stop", help="stop the broker (SIGTERM, then SIGKILL after the timeout)")
    _state_dir_flag(stop)
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait after SIGTERM before killing (default: LO2_KAFKA_STOP_TIMEOUT_S)",
    )

    status = sub.add_parser("status", help="is the broker running, and at which bootstrap address")
    _state_dir_flag(status)
    status.add_argument(
        "--bootstrap",
        default=None,
        help="probe this broker (host:port) instead of the local one, e.g. $KAFKA_BOOTSTRAP_SERVERS",
    )
    status.add_argument(
        "--json", action="store_true", help="print the status as one JSON object (for scripts)"
    )


def _state_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="folder with the broker's data, logs and pid file (default: LO2_KAFKA_STATE_DIR, .lo2/kafka)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from shared.errors import BrokerError

    console = Console(stderr=False)
    try:
        if args.kafka_action == "fetch":
            return _fetch(args, settings, console)
        if args.kafka_action == "start":
            return _start(args, settings, console)
        if args.kafka_action == "stop":
            return _stop(args, settings, console)
        return _status(args, settings, console)
    except BrokerError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return EXIT_ERROR


def _fetch(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from worker import broker

    cached = None if args.force else broker.cached_jars(settings)
    if cached is not None:
        console.print(f"Kafka {settings.kafka_version} jars already cached in {cached}")
        return EXIT_OK
    try:
        with console.status(f"fetching Apache Kafka {settings.kafka_version} jars with Maven…"):
            lib = broker.fetch_jars(settings, force=args.force)
    except broker.MissingToolError as exc:
        if not args.optional:
            raise
        console.print(
            f"[yellow]warning:[/] {exc}; skipping the jar fetch (tests will look for Docker)"
        )
        return EXIT_OK
    console.print(f"Kafka {settings.kafka_version}: {len(list(lib.glob('*.jar')))} jars in {lib}")
    return EXIT_OK


def _start(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from worker import broker

    state_dir = args.state_dir or settings.kafka_state_dir
    current = broker.status(state_dir)
    if current.running:
        console.print(
            f"Kafka broker already running at [bold]{current.bootstrap}[/] (pid {current.info.pid if current.info else '?'})"
        )
        return EXIT_OK
    if args.timeout is not None:
        settings = settings.model_copy(update={"kafka_start_timeout_s": args.timeout})
    with console.status("starting the Kafka broker…"):
        started = broker.start(
            settings,
            port=args.port,
            controller_port=args.controller_port,
            state_dir=state_dir,
            fresh=args.fresh,
        )
    info = started.info
    assert info is not None
    console.print(
        f"Kafka {info.version} broker up at [bold]{info.bootstrap}[/] (pid {info.pid}, "
        f"ready after {info.start_seconds:.1f} s, storage formatted in {info.format_seconds or 0:.1f} s)\n"
        f"state dir {started.state_dir}; log {broker.StatePaths(started.state_dir).server_log}\n"
        f"use it with: export KAFKA_BOOTSTRAP_SERVERS={info.bootstrap}",
        highlight=False,
    )
    return EXIT_OK


def _stop(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from worker import broker

    state_dir = args.state_dir or settings.kafka_state_dir
    timeout = settings.kafka_stop_timeout_s if args.timeout is None else args.timeout
    info = broker.read_info(state_dir)
    if broker.stop(state_dir, timeout_s=timeout):
        console.print(f"stopped the Kafka broker at {info.bootstrap if info else '?'}")
    else:
        console.print(f"no Kafka broker running for {state_dir}")
    return EXIT_OK


def _status(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from shared.errors import BrokerError
    from worker import broker

    if args.bootstrap:
        try:
            cluster = broker.probe(args.bootstrap)
        except BrokerError as exc:
            return _print_status(
                console, args.json, "not-answering", args.bootstrap, str(exc), None, EXIT_ERROR
            )
        detail = f"cluster {cluster.cluster_id}, brokers {list(cluster.broker_ids)}, controller {cluster.controller_id}"
        return _print_status(
            console, args.json, "running", args.bootstrap, detail, asdict(cluster), EXIT_OK
        )
    state_dir = args.state_dir or settings.kafka_state_dir
    st: BrokerStatus = broker.status(state_dir)
    code = {"running": EXIT_OK, "not-answering": EXIT_ERROR}.get(st.state, EXIT_NOT_RUNNING)
    extra = {"state_dir": str(st.state_dir)}
    if st.info is not None:
        extra.update(
            {
                "pid": st.info.pid,
                "started_at": st.info.started_at,
                "start_seconds": st.info.start_seconds,
            }
        )
    if st.cluster is not None:
        extra.update(
            {"cluster_id": st.cluster.cluster_id, "broker_ids": list(st.cluster.broker_ids)}
        )
    bootstrap = st.bootstrap if st.state != "not-running" else None
    return _print_status(console, args.json, st.state, bootstrap, st.detail, extra, code)


def _print_status(
    console: Console,
    as_json: bool,
    state: str,
    bootstrap: str | None,
    detail: str,
    extra: dict[str, object] | None,
    code: int,
) -> int:
    if as_json:
        print(
            json.dumps({"state": state, "bootstrap": bootstrap, "detail": detail, **(extra or {})})
        )
        return code
    colour = {"running": "green", "not-answering": "yellow"}.get(state, "red")
    where = f" at [bold]{bootstrap}[/]" if bootstrap else ""
    console.print(f"Kafka broker [{colour}]{state}[/]{where}: {detail}", highlight=False)
    return code
