"""`lo2`: one console command with subcommands.

The front holds no business logic.  Each subcommand lives in its own module that exposes
``configure(parser)`` (declare flags) and ``run(args, settings) -> int`` (do the work); the modules
import their heavy dependencies inside ``run`` so that ``lo2 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib import metadata

from shared.errors import Lo2Error
from shared.settings import Settings

#: (name, module, one-line help).  Order = order in `lo2 --help`.
COMMANDS: list[tuple[str, str, str]] = [
    ("generate", "batch.commands.generate", "write synthetic LO2 run folders (v1/v2 layout)"),
    ("load", "batch.commands.load", "parse LO2 run folders into events/sequences Parquet"),
    ("train", "batch.commands.train", "train the IsolationForest and registry models, save a bundle"),
    ("evaluate", "batch.commands.evaluate", "evaluate models on held-out runs, write a report"),
    ("explain", "batch.commands.explain", "SHAP, nearest normals, FP/FN lists from a bundle"),
    ("scan", "batch.commands.scan", "summarise the explain artefacts as Markdown"),
    ("retrain", "batch.commands.retrain", "nightly retrain: build a challenger, promote if better"),
    ("models", "batch.commands.models", "list, show, verify or promote saved model bundles"),
    ("worker", "worker.commands.worker", "run the Faust streaming worker"),
    ("replay", "worker.commands.replay", "push LO2 runs (folders or Parquet) into the input topic"),
    ("tail", "worker.commands.tail", "print anomaly records from the anomalies topic"),
    ("kafka", "worker.commands.kafka", "fetch/start/stop/status of the local Apache Kafka broker"),
    ("demo", "lo2.demo", "the whole pipeline on sample data with a local broker"),
]


def _version() -> str:
    try:
        return metadata.version("lo2-stream")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lo2",
        description="lo2-stream: anomaly detection for Light-OAuth2 logs, batch and live on Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"lo2-stream {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: debug logs of lo2-stream; -vv: of the libraries too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not built yet
        cmd = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # default INFO; -v: DEBUG for lo2-stream's own packages; -vv: DEBUG for the libraries too
    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        for package in ("batch", "worker", "shared", "lo2"):
            logging.getLogger(package).setLevel(logging.DEBUG)
    if args.verbose < 2:
        # aiokafka narrates every connection and group step at INFO (two lines before `lo2 tail`
        # prints anything); its warnings and errors still show, -vv shows the rest
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        # rich lays tables out for 80 columns when output goes to a file or a pipe (cron, CI logs)
        # and cuts model names to "event_…"; a log file has room for the whole table
        os.environ["COLUMNS"] = "200"
    settings = Settings()
    try:
        return int(args._run(args, settings) or 0)
    except (Lo2Error, OSError) as exc:
        from shared.redaction import redact

        # A user mistake or an environment problem (wrong path, no broker, bad bundle, an output
        # folder that cannot be written): one line, as argparse reports a bad flag, instead of a
        # traceback (-vv logs it).  Redacted: messages name paths and hosts, but one quoting a log
        # line must not print a credential.
        logging.getLogger("lo2").debug("%s failed", args.command, exc_info=True)
        sys.stderr.write(f"lo2 {args.command}: error: {redact(str(exc))}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
