"""Summarise the artefacts of `lo2 explain` as Markdown: required files per model, SHAP files by
type, every metrics JSON, false-positive/false-negative counts (entries, not lines) and optional
previews.  Prints to stdout unless --output is given; --dry-run always prints and writes nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explain-dir",
        "--explainability-dir",
        dest="explain_dir",
        type=Path,
        default=None,
        help="folder written by `lo2 explain` (default: <artifacts_dir>/explain)",
    )
    parser.add_argument(
        "--output",
        "--summary-file",
        dest="output",
        type=Path,
        default=None,
        help="write the Markdown to this file (overwritten) instead of stdout",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the Markdown, write no file")
    parser.add_argument(
        "--max-false-positives", type=int, default=0, help="preview the first N false-positive entries per model"
    )
    parser.add_argument(
        "--top-list-items", type=int, default=0, help="preview the first N top features per model"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a required artefact is missing"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from batch.scan import render_markdown, scan
    from shared.errors import ConfigError

    directory = args.explain_dir or settings.artifacts_dir / "explain"
    try:
        result = scan(directory)
    except ConfigError as exc:
        print(f"lo2 scan: {exc}", file=sys.stderr)
        return 2
    text = render_markdown(
        result, max_false_positives=args.max_false_positives, top_list_items=args.top_list_items
    )
    if args.output is None or args.dry_run:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"scan written to {args.output}", file=sys.stderr)
    return 1 if args.strict and not result.complete else 0
