"""Write synthetic LO2 run folders (v1 or v2 layout) with a ground_truth.json next to them.

The content is learned from the real token-service sample (request shapes, Hazelcast lines, ERROR
noise in `correct`); each error case shows in the service it targets with its light-4j status code.
Deterministic for a seed.  Example: `lo2 generate --out data/runs --runs 20 --layout v2`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from batch.commands._flags import csv as _csv
from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the run folders and ground_truth.json (default: settings runs_dir, LO2_RUNS_DIR)")
    parser.add_argument("--runs", type=int, default=20, help="number of runs to write (default 20)")
    parser.add_argument("--layout", choices=("v1", "v2"), default="v2",
                        help="v1: light-oauth2-data-<end epoch>, fixed order, correct 60 s + errors 10 s; "
                             "v2: LO2_run_<start epoch>, shuffled order, 20-180 s per test (default v2)")
    parser.add_argument("--errors-per-run", type=int, default=None,
                        help="error cases per run besides correct, picked per run by seed (default: all 53; "
                             "0 = correct only)")
    parser.add_argument("--cases", type=_csv, default=None,
                        help="comma-separated error cases to draw from (default: all 53 of shared.catalog)")
    parser.add_argument("--services", type=_csv, default=None,
                        help="comma-separated services to write logs for (default: all 7); content of a "
                             "service does not depend on this choice")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: settings seed, LO2_SEED)")
    parser.add_argument("--rate", type=float, default=None,
                        help="traffic multiplier: 1.0 ≈ 6 token-service lines per second (default 1.0 for v2, "
                             "5.0 for v1 whose tests last 10 s; the real thinned v2 logs have ≈ 1,800 lines "
                             "per service log); 10+ for dense logs")
    parser.add_argument("--min-errors", type=int, default=3,
                        help="at least this many failing requests per error test (low rates could draw none)")
    parser.add_argument("--start-epoch", type=int, default=None,
                        help="UTC epoch seconds of the first run's start (default: seed-chosen in the real "
                             "collection period: June 2024 for v1, February 2025 for v2)")
    parser.add_argument("--midnight-run", type=int, default=None,
                        help="index of the run placed across UTC midnight (default: the middle run; -1: none)")
    parser.add_argument("--no-aux-files", action="store_true",
                        help="do not write the empty non-service container logs (jaeger, mysqldb, ...)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs generated in parallel processes (default 2; output is identical for any value)")
    parser.add_argument("--force", action="store_true",
                        help="replace a dataset generated earlier at --out (deletes only the runs its "
                             "ground_truth.json lists)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from batch.generate import GenerateConfig, generate
    from shared.catalog import ERROR_CASE_NAMES, SERVICES
    from shared.errors import ConfigError

    console = Console(stderr=True, soft_wrap=True)
    try:
        config = GenerateConfig(
            out=args.out or settings.runs_dir,
            runs=args.runs,
            layout=args.layout,
            errors_per_run=args.errors_per_run,
            cases=args.cases or ERROR_CASE_NAMES,
            services=args.services or SERVICES,
            seed=settings.seed if args.seed is None else args.seed,
            rate=args.rate,
            min_errors=args.min_errors,
            start_epoch=args.start_epoch,
            midnight_run=args.midnight_run,
            aux_files=not args.no_aux_files,
            jobs=args.jobs,
            force=args.force,
        )
        with Progress(TextColumn("[bold]generate[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("runs", total=config.runs)
            result = generate(config, on_run=lambda _summary: progress.advance(task))
    except ConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    # An error test whose target service is not written leaves no trace in any log of the set.
    unseen = sorted({t["test_case"] for r in result.runs for t in r["tests"]
                     if t.get("target_service") and t["target_service"] not in config.services})
    if unseen:
        console.print(f"[yellow]note:[/] {len(unseen)} generated error case(s) target a service not written "
                      f"(--services), so their tests look normal in every log: "
                      f"{', '.join(unseen[:6])}{' …' if len(unseen) > 6 else ''}")
    crossing = [r["run"] for r in result.runs if r["crosses_midnight"]]
    console.print(
        f"wrote {len(result.runs)} {config.layout} runs, {result.files} service logs, {result.lines:,} lines, "
        f"{result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s to {result.out}\n"
        f"ground truth: {result.ground_truth}\n"
        f"runs across midnight: {', '.join(crossing) or 'none'}"
    )
    return 0
