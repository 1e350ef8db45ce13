"""Nightly retrain: train a challenger bundle on the current data, score it and the champion (the
`current` bundle) on the SAME held-out runs (the newest runs by epoch), and promote the challenger
(atomic switch of `current`) only when its primary metric beats the champion's by the margin and
its alert rate on normal sequences is not worse.  A decision record (JSON) is written either way.
Exit code: 0 = promoted, 3 = champion kept, 2 = error (bad input or configuration).  With
--dry-run `current` is never switched: a winning challenger is reported and recorded as "would
promote" (exit 0, record `<stamp>-would_promote.json`), a losing one as "kept_champion" (exit 3)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shared.settings import Settings


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",") if x.strip()]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--fractions expects three numbers like 0.6,0.2,0.2, got {text!r}")
    return parts[0], parts[1], parts[2]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", type=Path, default=None,
        help="events.parquet or its folder (default: <parquet_dir>/events.parquet, LO2_PARQUET_DIR)",
    )
    parser.add_argument(
        "--root", type=Path, default=None,
        help="raw LO2 run folders to load first (into <model-dir>/.retrain-data); overrides --input",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="bundle folder with `current` (default: LO2_MODEL_DIR)")
    parser.add_argument("--model", default=None, help="registry key of the challenger (default: LO2_RETRAIN_MODEL, 'if')")
    parser.add_argument(
        "--label", choices=["paper", "service"], default=None,
        help="label of the comparison: paper = anomaly, service = anomaly_service (default: LO2_RETRAIN_LABEL)",
    )
    parser.add_argument("--metric", choices=["roc_auc", "pr_auc"], default=None, help="primary metric (default: LO2_RETRAIN_METRIC)")
    parser.add_argument("--margin", type=float, default=None, help="required improvement of the primary metric (default: LO2_RETRAIN_MARGIN)")
    parser.add_argument(
        "--alert-rate-tolerance", type=float, default=None,
        help="allowed increase of the alert rate on normal test sequences (default: LO2_RETRAIN_ALERT_RATE_TOLERANCE)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the challenger (default: LO2_SEED)")
    parser.add_argument("--fractions", type=_fractions, default=(0.6, 0.2, 0.2), help="train,validation,test run fractions")
    parser.add_argument(
        "--if-threshold-percentile", type=float, default=99.0,
        help="alert threshold = this percentile of validation `correct` scores (<= 1 means a fraction; default 99)",
    )
    parser.add_argument("--services", default="", help="comma-separated services (default: all)")
    parser.add_argument("--per-service", action="store_true", help="one detector and threshold per service")
    parser.add_argument("--dry-run", action="store_true",
                        help="decide and write the record, but do not switch `current`; reports 'would promote' "
                        "(exit 0) or 'kept_champion' (exit 3)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-rejected", dest="keep_rejected", action="store_true", default=None,
                      help="keep a rejected challenger bundle on disk (default: LO2_RETRAIN_KEEP_REJECTED)")
    keep.add_argument("--discard-rejected", dest="keep_rejected", action="store_false",
                      help="delete a rejected challenger bundle (its record keeps its metrics)")
    parser.add_argument("--record", type=Path, default=None, help="also write the decision record to this path")


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def run(args: argparse.Namespace, settings: Settings) -> int:
    import polars as pl
    from rich.console import Console
    from rich.markup import escape

    from batch.commands.evaluate import percentile_to_quantile
    from batch.evaluate import read_events
    from batch.retrain import EXIT_ERROR, RetrainConfig, retrain
    from shared.errors import Lo2Error

    console = Console()
    model_dir: Path = args.model_dir or settings.model_dir
    from shared.features import feature_options

    try:
        label = {"paper": "anomaly", "service": "anomaly_service"}.get(args.label or "", settings.retrain_label)
        config = RetrainConfig(
            model=_pick(args.model, settings.retrain_model),
            seed=_pick(args.seed, settings.seed),
            fractions=args.fractions,
            threshold_quantile=percentile_to_quantile(args.if_threshold_percentile),
            label=label,
            metric=_pick(args.metric, settings.retrain_metric),
            margin=_pick(args.margin, settings.retrain_margin),
            alert_rate_tolerance=_pick(args.alert_rate_tolerance, settings.retrain_alert_rate_tolerance),
            per_service=args.per_service,
            services=tuple(s.strip() for s in args.services.split(",") if s.strip()) or None,
            keep_rejected=_pick(args.keep_rejected, settings.retrain_keep_rejected),
            dry_run=args.dry_run,
            feature_options=feature_options(settings),
        )
        from batch.registry import get_spec

        get_spec(config.model)
        events: pl.LazyFrame
        if args.root is not None:
            from batch.loader import load_runs, make_selection

            data_dir = model_dir / ".retrain-data"
            load_runs(args.root, make_selection(seed=config.seed, trim_init_lines=settings.trim_init_lines, trim_mode=settings.trim_mode), data_dir)
            events = read_events(data_dir)
        else:
            events = read_events(args.input or settings.parquet_dir)
        with console.status("retraining") as status:
            decision = retrain(events, config, model_dir, record_copy=args.record,
                               progress=lambda msg: status.update(msg))
    except (Lo2Error, argparse.ArgumentTypeError, ValueError) as exc:
        console.print(f"[red]retrain failed:[/] {exc}")
        return EXIT_ERROR
    colour = "green" if decision.challenger_won else "yellow"
    shown = "would promote" if decision.decision == "would_promote" else decision.decision
    console.print(f"[{colour}]{shown}[/]: {escape(decision.reason)}")
    m = config.metric
    console.print(
        f"challenger {Path(decision.challenger.path or '').name}: {m} {decision.challenger.value(m):.4f}, "
        f"normal alert rate {decision.challenger.value('normal_alert_rate'):.4f}"
    )
    if decision.champion is not None:
        champ = decision.champion
        console.print(
            f"champion {Path(champ.path or '').name}: {m} {champ.value(m):.4f}, "
            f"normal alert rate {champ.value('normal_alert_rate'):.4f}" + (f" (error: {champ.error})" if champ.error else "")
        )
    console.print(f"held-out runs: {', '.join(decision.split.test_runs)}")
    console.print(f"decision record: {decision.record_path}")
    return decision.exit_code
