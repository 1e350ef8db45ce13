"""Evaluate models honestly: whole runs held out by run epoch, thresholds calibrated on validation
`correct` sequences, several seeds (mean ± std), both labels, per service, with the length/duration
leakage canary next to every result.  Writes results.json/results.csv/cases.csv/scores.parquet and a
Markdown + HTML report with ROC/PR curves, score histograms and per-error-case recall."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from batch.commands._flags import csv as _csv
from shared.settings import Settings

log = logging.getLogger(__name__)


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in _csv(text)]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--fractions expects three numbers like 0.6,0.2,0.2, got {text!r}")
    return parts[0], parts[1], parts[2]


def _ks(text: str) -> tuple[int, ...]:
    """``--report-precision-at``: comma-separated k, parsed with ``int`` like `lo2 train`'s flag; 0 = skip.

    An argparse type, so a typo is the usual one-line usage error (exit 2) instead of a traceback,
    and a negative k is refused rather than silently dropped with the zeros.
    """
    try:
        ks = [int(x) for x in _csv(text)]
    except ValueError:
        msg = f"expected comma-separated integers k >= 0 (0 = skip), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if any(k < 0 for k in ks):
        msg = f"expected comma-separated integers k >= 0 (0 = skip), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return tuple(k for k in ks if k > 0)


def _alphas(text: str) -> tuple[float, ...]:
    """``--report-fp-alpha``: comma-separated α, parsed with ``float`` like `lo2 train`'s flag; 0 = skip."""
    try:
        alphas = [float(x) for x in _csv(text)]
    except ValueError:
        msg = f"expected comma-separated fractions α in (0, 1] (0 = skip), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if any(not 0.0 <= a <= 1.0 for a in alphas):  # also refuses nan
        msg = f"expected comma-separated fractions α in (0, 1] (0 = skip), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return tuple(a for a in alphas if a > 0)


def percentile_to_quantile(value: float) -> float:
    """The reference's rule: values <= 1 are fractions (0.995), larger ones percentiles (99.5)."""
    q = value if value <= 1.0 else value / 100.0
    if not 0.0 < q < 1.0:
        raise argparse.ArgumentTypeError(f"threshold percentile must be in (0, 100), got {value}")
    return q


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("data")
    src.add_argument(
        "--input",
        type=Path,
        default=None,
        help="events.parquet, or a folder holding it (default: <parquet_dir>/events.parquet, LO2_PARQUET_DIR)",
    )
    src.add_argument(
        "--root",
        type=Path,
        default=None,
        help="raw LO2 run folders to load first (like `lo2 load --root`); the Parquet goes to <out>/data",
    )
    src.add_argument("--services", default="", help="comma-separated services to evaluate (default: all)")
    models = parser.add_argument_group("models")
    models.add_argument(
        "--models",
        default="",
        help="comma-separated registry keys, or 'all' (default: if + the reference's default registry keys); "
        "the canary is always added",
    )
    models.add_argument("--list-models", action="store_true", help="print the registry keys and exit")
    models.add_argument(
        "--per-service",
        action="store_true",
        help="one detector and threshold per service (pooled results then rank score minus service threshold)",
    )
    models.add_argument("--if-n-estimators", type=int, default=None, help="IsolationForest trees (default 200)")
    models.add_argument(
        "--if-max-samples", default=None, help="IsolationForest max_samples: 'auto' or a positive integer"
    )
    models.add_argument(
        "--if-contamination",
        default=None,
        help="IsolationForest contamination ('auto' or a fraction in (0, 0.5]); it does not change scores or "
        "metrics here",
    )
    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (mean ± std over them; default LO2_EVAL_SEEDS = 3)"
    )
    ev.add_argument("--seed", type=int, default=None, help="first seed (default: LO2_SEED); seeds are seed, seed+1, ...")
    ev.add_argument(
        "--label",
        choices=["paper", "service", "both"],
        default="both",
        help="paper = every sequence of an error test case; service = only the service the error targets",
    )
    ev.add_argument(
        "--fractions", type=_fractions, default=(0.6, 0.2, 0.2), help="train,validation,test run fractions (0.6,0.2,0.2)"
    )
    ev.add_argument(
        "--split-order",
        choices=["chronological", "random"],
        default="chronological",
        help="runs in epoch order (default) or shuffled per seed (then the split varies with the seed too)",
    )
    ev.add_argument(
        "--if-threshold-percentile",
        type=float,
        default=99.0,
        help="alert threshold = this percentile of validation `correct` scores, for every model "
        "(values <= 1 are fractions: 0.995 = 99.5; default 99)",
    )
    ev.add_argument(
        "--report-precision-at",
        type=_ks,
        default="10",
        help="comma-separated k for Precision@k (default 10; 0 = skip)",
    )
    ev.add_argument(
        "--report-fp-alpha",
        type=_alphas,
        default="0.01",
        help="comma-separated α in (0, 1] for FP-rate@α (default 0.01; 0 = skip)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <artifacts_dir>/evaluation)"
    )
    out.add_argument("--no-report", action="store_true", help="write results only, no Markdown/HTML report")
    out.add_argument(
        "--report-only",
        action="store_true",
        help="re-draw the report from results.json + scores.parquet already in --out (no fitting)",
    )


def _model_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ``--if-*`` values the user gave, checked by `lo2 train`'s parser (ConfigError, exit 2).

    Checked up front: ``--if-n-estimators 0`` or ``--if-contamination 0.9`` used to reach the
    IsolationForest only after featurizing, fail there, be listed as "failed: if" and exit 0.
    Flags left out stay out, so the registry's defaults apply to them.
    """
    from batch.commands._flags import if_params

    checked = if_params(args)
    return {"if": checked} if checked else {}


def _default_events(settings: Settings) -> Path:
    return settings.parquet_dir


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from batch import evaluate as ev
    from batch.registry import REGISTRY, parse_model_keys
    from shared.errors import Lo2Error
    from shared.features import feature_options

    console = Console()
    if args.report_only:
        from batch.report import write_report

        out_dir: Path = args.out or (settings.artifacts_dir / "evaluation")
        try:
            report = write_report(ev.read_results(out_dir), out_dir)
        except Lo2Error as exc:
            console.print(f"[red]evaluate --report-only failed:[/] {exc}")
            return 2
        console.print(f"report: {report.markdown}\nhtml: {report.html}")
        return 0
    if args.list_models:
        for key, spec in REGISTRY.items():
            console.print(f"[bold]{key}[/] ({spec.input_kind}, {'supervised' if spec.supervised else 'unsupervised'}): {spec.description}")
        return 0
    try:
        models = (
            tuple(REGISTRY)
            if args.models.strip() == "all"
            else tuple(parse_model_keys(args.models)) if args.models.strip() else ev.DEFAULT_MODELS
        )
        labels = (
            ("anomaly", "anomaly_service")
            if args.label == "both"
            else (ev.LABEL_COLUMNS[args.label],)
        )
        first = settings.seed if args.seed is None else args.seed
        n_seeds = settings.eval_seeds if args.seeds is None else args.seeds
        if n_seeds < 1:
            console.print(f"[red]--seeds must be >= 1, got {n_seeds}[/]")
            return 2
        config = ev.EvaluationConfig(
            models=models,
            seeds=tuple(range(first, first + n_seeds)),
            labels=labels,
            services=tuple(_csv(args.services)) or None,
            fractions=args.fractions,
            split_order=args.split_order,
            precision_at=args.report_precision_at,
            fp_alphas=args.report_fp_alpha,
            threshold_quantile=percentile_to_quantile(args.if_threshold_percentile),
            model_params=_model_params(args),
            per_service=args.per_service,
            feature_options=feature_options(settings),
        )
        out_dir = args.out or (settings.artifacts_dir / "evaluation")
        if args.root is not None:
            from batch.loader import load_runs, make_selection

            data_dir = out_dir / "data"
            console.print(f"loading runs under {args.root} into {data_dir}")
            load_runs(args.root, make_selection(seed=first, trim_init_lines=settings.trim_init_lines, trim_mode=settings.trim_mode), data_dir)
            events_path = data_dir
        else:
            events_path = args.input or _default_events(settings)
        events = ev.read_events(events_path)
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task("featurizing", total=None)
            result = ev.evaluate(events, config, progress=lambda msg: progress.update(task, description=msg))
        paths = ev.write_results(result, out_dir)
        if not args.no_report:
            from batch.report import write_report

            report = write_report(result, out_dir)
            paths["report"] = report.markdown
            paths["html"] = report.html
    except (Lo2Error, argparse.ArgumentTypeError) as exc:
        from rich.markup import escape

        # one line however narrow the terminal; "[xgboost]" in a message is text, not markup
        console.print(f"[red]evaluate failed:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    from batch.report import sizes_note

    for label, group in ((lb, g) for lb in config.labels for g in ev.POOLED_GROUPS):
        if not any(r.label == label and r.service == group for r in result.rows):
            continue
        what = "all services" if group == ev.ALL else "targeted services (" + ", ".join(result.targeted_services) + ")"
        table = Table(title=f"{label}: {what} (test runs, mean ± std over {len(config.seeds)} seeds)")
        # scored test sequences (anomalous ones): with --per-service a model whose fit failed for
        # some services is scored on fewer sequences than the others in this table
        table.add_column("model", no_wrap=True)  # whole keys: "sequence_…" named two models on 80 columns
        for col in ("test seqs (pos.)", "ROC-AUC", "canary ROC-AUC", "PR-AUC", "F1", "alert rate"):
            table.add_column(col, overflow="fold")  # narrow terminal: wrap, never cut a value to "…"
        for r in result.rows:
            if r.label == label and r.service == group:
                table.add_row(
                    r.model,
                    f"{r.n_test} ({r.n_anomalous})",
                    r.metrics["roc_auc"].text(),
                    r.canary.get("roc_auc", ev.MetricSummary.of([])).text(),
                    r.metrics["pr_auc"].text(),
                    r.metrics["f1"].text(),
                    r.metrics["alert_rate"].text(),
                )
        console.print(table)
        if size_note := sizes_note(result, label, group):
            console.print(f"[yellow]note:[/] {size_note}")
    for f in result.failures:
        console.print(f"[yellow]failed:[/] {f.model} ({f.label}, seed {f.seed}): {f.error}")
    for name, p in paths.items():
        console.print(f"{name}: {p}")
    return 0 if result.rows else 1
