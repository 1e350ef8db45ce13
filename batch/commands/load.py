"""Parse LO2 run folders (v1 or v2 layout) into events.parquet and sequences.parquet.

Keeps the selection flags of LogLead's run_lo2_loader.py with the same meaning, loads runs in a
sorted order with a seed for every random choice, parses every line into columns (timestamp with the
date from the run folder's epoch, thread, correlation id, level, logger, method, message, stack
trace), and prints a summary of everything read and every kind of bad input met (also written as
load_summary.json).  Without --save-parquet/--save-events both files are written.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

from shared.parsing import SERVICES

if TYPE_CHECKING:
    from batch.loader import LoadSummary, TrimMode
    from shared.settings import Settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None,
        help="folder of LO2 run folders (light-oauth2-data-<epoch>, LO2_run_<epoch>, "
        "oauth2_logs_LO2_run_<epoch>), a folder one level above them, or one run folder "
        "(default: settings runs_dir, LO2_RUNS_DIR)",
    )
    parser.add_argument(
        "--runs", type=int, default=None,
        help="load only the first N runs in epoch order; unset or <= 0 = all runs",
    )
    parser.add_argument(
        "--errors-per-run", type=int, default=None,
        help="error test cases drawn (with --seed) per run besides 'correct'; unset or <= 0 = all of them",
    )
    dup = parser.add_mutually_exclusive_group()
    dup.add_argument(
        "--allow-duplicates", dest="allow_duplicates", action="store_true", default=True,
        help="the same error case may be drawn in several runs (default)",
    )
    dup.add_argument(
        "--no-duplicates", dest="allow_duplicates", action="store_false",
        help="never draw an error case that an earlier run already used",
    )
    parser.add_argument(
        "--single-error-type", default="", metavar="NAME|random",
        help="load only this error case (plus 'correct') from every run, or 'random' for one drawn "
        "with --seed; runs without it are skipped and reported; forces one error per run",
    )
    svc = parser.add_mutually_exclusive_group()
    svc.add_argument("--single-service", default="", choices=["", *SERVICES], metavar="SERVICE",
                     help=f"load only this service's logs ({', '.join(SERVICES)})")
    svc.add_argument("--service-types", nargs="+", choices=SERVICES, metavar="SERVICE",
                     help="load only these services' logs (default: all seven)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of every random choice (default: settings seed, LO2_SEED)")
    parser.add_argument(
        "--trim-mode", choices=["startup", "lines", "none"], default=None,
        help="'startup': drop the container start-up block at the head of a log (JVM lines, events on "
        "main and Hazelcast start-up threads before the first request or partition-operation line; only "
        "a run's first test has one), 'lines': drop the first --trim-init-lines events of every log "
        "(LogLead fork), 'none': keep all (default: settings trim_mode; 'lines' if only "
        "--trim-init-lines is given)",
    )
    parser.add_argument(
        "--trim-init-lines", type=int, default=None, metavar="N",
        help="with --trim-mode lines: drop the first N events (with their stack lines) of every "
        "service log, also in short files; 0 keeps them; given alone it implies --trim-mode lines "
        "(default: settings trim_init_lines)",
    )
    parser.add_argument("--save-parquet", action="store_true",
                        help="write sequences.parquet (one row per service log); with neither "
                        "--save-parquet nor --save-events both files are written")
    parser.add_argument("--save-events", action="store_true",
                        help="write events.parquet (one row per event); see --save-parquet")
    parser.add_argument("--no-save", action="store_true",
                        help="parse and report only, write no files")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the Parquets and load_summary.json (default: settings "
                        "parquet_dir, LO2_PARQUET_DIR)")
    parser.add_argument("--head", type=int, default=5, metavar="N",
                        help="rows of each written table to preview after loading (0 = none)")
    parser.add_argument("--batch-mb", type=int, default=None,
                        help="raw megabytes parsed per batch; bounds peak memory "
                        "(default: settings loader_batch_mb)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from batch.loader import load_runs, make_selection
    from shared.errors import Lo2Error

    console = Console()
    try:
        _check_error_type(args.single_error_type)
        trim_mode, trim_init_lines = _trim(args, settings)
        selection = make_selection(
            runs=args.runs,
            errors_per_run=args.errors_per_run,
            allow_duplicates=args.allow_duplicates,
            single_error_type=args.single_error_type,
            single_service=args.single_service,
            service_types=args.service_types,
            seed=settings.seed if args.seed is None else args.seed,
            trim_init_lines=trim_init_lines,
            trim_mode=trim_mode,
        )
        root = args.root or settings.runs_dir
        out_dir = None if args.no_save else (args.output_dir or settings.parquet_dir)
        both = not (args.save_parquet or args.save_events)
        batch_mb = args.batch_mb or settings.loader_batch_mb
        with _progress(console) as progress:
            summary = load_runs(
                root,
                selection,
                out_dir,
                write_events=both or args.save_events,
                write_sequences=both or args.save_parquet,
                batch_bytes=batch_mb << 20,
                progress=progress,
                engine=settings.loader_engine,
            )
    except Lo2Error as exc:
        console.print(f"[red]lo2 load: {printable(str(exc))}[/red]")
        return 2
    console.print(summary_table(summary))
    _preview(console, summary, args.head)
    return 0


def _check_error_type(name: str) -> None:
    """Refuse an unknown ``--single-error-type`` before reading anything.

    Why: the loader skips every run without the named case, so a typo used to load nothing and
    exit 0 with empty Parquets.  The 53 names are those of :mod:`shared.catalog` (LO2's folders).
    """
    import difflib

    from shared.catalog import CORRECT, ERROR_CASE_NAMES
    from shared.errors import ConfigError

    if not name or name == "random" or name in ERROR_CASE_NAMES:
        return
    if name == CORRECT:
        msg = "--single-error-type correct: 'correct' is always loaded; name an error case or 'random'"
        raise ConfigError(msg)
    close = difflib.get_close_matches(name, ERROR_CASE_NAMES, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see shared/catalog.py for the 53 names"
    msg = f"--single-error-type {name!r} is not an LO2 error case; {hint} (or 'random')"
    raise ConfigError(msg)


def escape_controls(text: str) -> str:
    r"""Non-printable characters of ``text`` as their repr escapes (``\x00``, ``\x1b``, ``\t``).

    Bad input lines may hold NUL, ESC or other control bytes; echoed raw they garble (or drive)
    the terminal.  Escaped, they stay visible and the terminal stays intact.
    """
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def printable(text: str) -> str:
    """``text`` safe in a rich markup string: controls escaped, and ``[red]`` shown, not interpreted."""
    from rich.markup import escape

    return escape(escape_controls(text))


def _trim(args: argparse.Namespace, settings: Settings) -> tuple[TrimMode, int]:
    """(trim mode, N) from the flags: ``--trim-init-lines`` alone means the "lines" mode."""
    from shared.errors import ConfigError

    mode = args.trim_mode or ("lines" if args.trim_init_lines is not None else settings.trim_mode)
    if args.trim_init_lines is not None and mode != "lines":
        raise ConfigError(
            f"--trim-init-lines {args.trim_init_lines} with --trim-mode {mode}: the count only applies "
            "to --trim-mode lines"
        )
    n = settings.trim_init_lines if args.trim_init_lines is None else args.trim_init_lines
    return cast("TrimMode", mode), n


class _progress:
    """A rich progress bar over runs that the loader advances after every batch."""

    def __init__(self, console: object) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("loading runs"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[files]} files, {task.fields[lines]:,} lines"), TimeElapsedColumn(),
            console=console,  # type: ignore[arg-type]
            transient=True,
        )
        self._task = self._bar.add_task("load", total=None, files=0, lines=0)

    def __enter__(self) -> _progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def __call__(self, files: int, runs_done: int, runs_total: int, lines: int) -> None:
        self._bar.update(self._task, completed=runs_done, total=runs_total, files=files, lines=lines)


def summary_table(s: LoadSummary) -> object:
    """The load summary as a rich table (counts first, then where bad input was met)."""
    from rich.table import Table

    t = Table(title=f"lo2 load: {s.root}", show_header=True, header_style="bold")
    t.add_column("what")
    t.add_column("count", justify="right")
    layouts = ", ".join(f"{k}: {v}" for k, v in sorted(s.layouts.items())) or "-"
    rows: list[tuple[str, object]] = [
        ("runs available / loaded", f"{s.runs_available} / {s.runs_loaded}"),
        ("layouts", layouts),
        ("test cases loaded / available", f"{s.test_cases_loaded} / {s.test_cases_available}"),
        ("downsampling occurred", "yes" if s.downsampled else "no"),
        ("files read", s.files_read),
        ("MB read", f"{s.bytes_read / 1e6:,.1f}"),
        ("lines", s.lines),
        ("events parsed", s.events),
        ("trim mode", f"{s.selection.get('trim_mode')}"
         + (f" ({s.selection.get('trim_init_lines')} events)" if s.selection.get("trim_mode") == "lines" else "")),
        ("files trimmed (start-up)", s.files_trimmed),
        ("lines trimmed (start-up)", s.lines_trimmed),
        ("events trimmed (start-up)", s.events_trimmed),
        ("events written", s.events_written),
        ("continuation lines attached", s.continuation_lines),
        ("sequences written", s.sequences_written),
        ("blank lines", s.blank_lines),
        ("malformed lines", s.malformed_lines),
        ("orphan continuation lines", s.orphan_continuation_lines),
        ("undecodable lines", s.undecodable_lines),
        ("files with undecodable bytes", s.files_with_undecodable_bytes),
        ("empty files", s.empty_files),
        ("files without events", s.files_without_events),
        ("test cases with missing services", len(s.missing_services)),
        ("missing test cases", len(s.missing_test_cases)),
        ("runs skipped", len(s.runs_skipped)),
        ("seconds", f"{s.seconds:.2f}"),
        ("lines / s", f"{s.lines / s.seconds:,.0f}" if s.seconds else "-"),
    ]
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    for r in s.runs_skipped[:5]:
        t.add_row(f"  skipped {printable(r['run'])}", printable(r["reason"]))
    for p in s.examples[:5]:
        where = printable(f"{Path(p.file).parent.name}/{Path(p.file).name}")
        t.add_row(f"  {p.kind} {where}:{p.line_no}", printable(p.text[:80]))
    for name, path in s.outputs.items():
        t.add_row(f"wrote {name}", printable(str(path)))
    return t


def _preview(console: object, s: LoadSummary, head: int) -> None:
    if head <= 0:
        return
    import polars as pl

    from shared.redaction import redact

    for name in ("events", "sequences"):
        path = s.outputs.get(name)
        if path:
            df = pl.scan_parquet(path).head(head).collect()
            # log text carries credentials: the preview is for people, so it is redacted; and
            # control bytes of bad lines are escaped so they cannot garble the terminal
            df = df.with_columns(
                pl.col(c).map_elements(redact, return_dtype=pl.String)
                for c in ("message", "stack")
                if c in df.columns
            )
            df = df.with_columns(
                pl.col(c).map_elements(escape_controls, return_dtype=pl.String)
                for c, dtype in df.schema.items()
                if dtype == pl.String
            )
            console.print(f"{name}.parquet (first {head} rows):")  # type: ignore[attr-defined]
            console.print(df)  # type: ignore[attr-defined]
