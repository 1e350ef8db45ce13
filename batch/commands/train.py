"""Train the IsolationForest and registry models on whole training runs and save versioned bundles.

Keeps the flags of LogLead's LO2_samples.py with their meaning (--phase, --if-*, --report-*,
--models, --list-models, --save-model, --load-model, --dump-metadata, --save-enhancers,
--sample-seed) and fixes what they did wrong: the split is by whole runs (run epoch order), the
IsolationForest learns only training-run `correct` sequences, thresholds are quantiles of
validation `correct` scores, metrics come from held-out test runs, --save-model saves every trained
model as a bundle, and --load-model scores with the saved bundle without ever refitting.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from shared.bundle import ModelBundle
    from shared.settings import Settings

from batch.commands._flags import csv as _csv
from batch.commands._flags import if_params as _if_params  # shared with `lo2 evaluate`

log = logging.getLogger(__name__)

#: The reference's default registry selection for --phase full.
DEFAULT_MODELS = "event_lr_words,event_dt_trigrams,sequence_lr_numeric,sequence_shap_lr_words"
#: Reference item columns → our input kinds (all token views are the hashed message tokens).
IF_ITEMS = {
    "aggregates": "aggregates",
    "numeric": "numeric",
    "tokens": "tokens",
    "e_words": "tokens",
    "e_trigrams": "tokens",
    "e_event_drain_id": "numeric",
}



class _ServicesAction(argparse.Action):
    """``--services token code`` (the reference's form) and ``--services token,code`` (as in
    ``lo2 evaluate``) both give ``["token", "code"]``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [s for v in values for s in _csv(str(v))])

def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input")
    src.add_argument("--input", type=Path, default=None,
                     help="events.parquet from `lo2 load`, or its folder (default: <settings parquet_dir>/events.parquet)")
    src.add_argument("--root", type=Path, default=None,
                     help="raw LO2 run folders to load first (instead of --input); parsed with `lo2 load` "
                     "defaults into <settings cache_dir>/train-events/")
    src.add_argument("--services", nargs="+", default=None, metavar="SERVICE", action=_ServicesAction,
                     help="train on these services only, space- or comma-separated (default: every service in the data)")
    parser.add_argument("--phase", choices=["enhancers", "if", "full"], default="full",
                        help="enhancers = featurize only; if = stop after the IsolationForest; "
                        "full = IsolationForest plus --models (default)")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated registry keys trained in --phase full, or 'all' (every key "
                        f"usable in this environment, as `lo2 evaluate --models all`; default: {DEFAULT_MODELS})")
    parser.add_argument("--list-models", action="store_true", help="print the registry keys and exit")
    parser.add_argument("--sample-seed", type=int, default=None,
                        help="seed of models and splits (default: settings seed, LO2_SEED)")
    parser.add_argument("--label", choices=["service", "paper"], default="service",
                        help="label supervised models learn: service = the error targets this service "
                        "(anomaly_service), paper = test_case != correct (default: service)")
    parser.add_argument("--per-service", action="store_true",
                        help="one model and threshold per service instead of one pooled model")
    iff = parser.add_argument_group("IsolationForest")
    iff.add_argument("--if-contamination", default="auto",
                     help="IsolationForest contamination: 'auto' (default; the alert threshold comes from "
                     "validation quantiles, not from guessing the anomaly share) or a fraction in (0, 0.5]")
    iff.add_argument("--if-n-estimators", type=int, default=200, help="IsolationForest trees (default 200)")
    iff.add_argument("--if-max-samples", default="auto", help="'auto' or an integer row count per tree")
    iff.add_argument("--if-item", choices=sorted(IF_ITEMS), default="aggregates",
                     help="IF input: aggregates = level shares, error-code/stack rates, rare-template shares "
                     "(default); numeric = all dense features incl. per-template shares; tokens = hashed message tokens "
                     "(reference names e_words/e_trigrams map to tokens, e_event_drain_id to numeric)")
    iff.add_argument("--if-numeric", default="",
                     help="comma-separated raw sequence columns appended to the IF input, from "
                     "n_events,duration_s (they leak the label in v1: see the canary)")
    iff.add_argument("--if-holdout-fraction", type=float, default=0.2,
                     help="share of runs held out as validation runs (threshold calibration, PSI); "
                     "another --test-fraction of runs is the test set (default 0.2)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of runs (newest first) held out for the test metrics (default 0.2)")
    iff.add_argument("--if-threshold-percentile", type=float, default=99.0,
                     help="alert threshold = this percentile of validation correct scores; 99.5 and 0.995 "
                     "mean the same (default 99)")
    rep = parser.add_argument_group("reporting")
    rep.add_argument("--report-precision-at", type=int, default=10, help="k of Precision@k (default 10)")
    rep.add_argument("--report-fp-alpha", type=float, default=0.01, help="α of FP-rate@α (default 0.01)")
    rep.add_argument("--report-psi", action="store_true",
                     help="print the PSI of training vs validation correct scores")
    out = parser.add_argument_group("output")
    out.add_argument("--save-model", nargs="?", const="", default=None, metavar="DIR",
                     help="save every trained model as a bundle <DIR>/<key>-<UTC time> "
                     "(DIR default: settings model_dir)")
    out.add_argument("--promote", action="store_true",
                     help="point `current` at the saved IsolationForest bundle; requires --save-model "
                     "(rejected without it, exit 2)")
    out.add_argument("--load-model", default=None, metavar="BUNDLE",
                     help="score with a saved bundle (path, name under model_dir, or 'current'); never refits; "
                     "cannot be combined with --save-model or --promote")
    out.add_argument("--dump-metadata", action="store_true",
                     help="print each bundle's manifest and write it as <artifacts>/train/<bundle>.manifest.json; "
                     "needs --save-model or --load-model")
    out.add_argument("--save-enhancers", action="store_true",
                     help="write the featurized sequences to <artifacts>/train/features.parquet")
    out.add_argument("--predictions-dir", type=Path, default=None,
                     help="where <key>_predictions.parquet go (default: <settings artifacts_dir>/train)")


def _check_flags(args: argparse.Namespace) -> None:
    """Reject flag combinations that would be ignored, before reading or featurizing anything.

    Why up front: ``--dump-metadata`` without a bundle used to fail only after the whole training
    ran, and ``--promote`` without ``--save-model`` or ``--save-model`` with ``--load-model`` were
    silently ignored (exit 0), so a user believed a model was saved or promoted when it was not.
    """
    from shared.errors import ConfigError

    if args.load_model is not None and args.save_model is not None:
        msg = ("--load-model scores an existing bundle and never trains, so there is nothing for --save-model "
               "to save; drop one of them")
        raise ConfigError(msg)
    if args.promote and args.save_model is None:
        msg = ("--promote needs --save-model (only a saved bundle can be promoted); add --save-model, "
               "or promote an existing bundle with `lo2 models promote NAME`")
        raise ConfigError(msg)
    if args.dump_metadata and args.save_model is None and args.load_model is None:
        msg = "--dump-metadata needs --save-model or --load-model (the manifest belongs to a saved bundle)"
        raise ConfigError(msg)


def _model_keys(args: argparse.Namespace, console: Any) -> list[str]:
    """The models to train: IF alone (--phase if), IF plus --models (full), none (enhancers).

    ``--models all`` means every registry key, as in ``lo2 evaluate``; keys whose optional extra is
    not installed are skipped with a note (naming such a key explicitly is an error instead).
    """
    from batch.registry import REGISTRY, available, parse_model_keys

    if args.phase == "if":
        return ["if"]
    if args.phase != "full":
        return []
    if args.models.strip() == "all":
        skipped = [key for key, spec in REGISTRY.items() if not available(spec)]
        if skipped:
            console.print(f"--models all: skipping {', '.join(skipped)} (optional package not installed)")
        return list(dict.fromkeys(["if", *(key for key in REGISTRY if key not in skipped)]))
    return list(dict.fromkeys(["if", *parse_model_keys(args.models)]))


def _read_events(args: argparse.Namespace, settings: Settings) -> pl.LazyFrame:
    """The events as a lazy scan: featurization streams them instead of holding them all."""
    import polars as pl

    from shared.errors import ConfigError

    if args.root is not None and args.input is not None:
        msg = "give --root (raw runs) or --input (events.parquet), not both"
        raise ConfigError(msg)
    if args.root is not None:
        import hashlib
        import shutil

        from batch.loader import EVENTS_FILE, load_runs, make_selection

        # One cache folder per root (replaced on every --root run): bounded disk use, no temp litter.
        key = hashlib.sha256(str(Path(args.root).resolve()).encode()).hexdigest()[:12]
        out = settings.cache_dir / "train-events" / key
        shutil.rmtree(out, ignore_errors=True)
        selection = make_selection(service_types=args.services, seed=_seed(args, settings),
                                   trim_init_lines=settings.trim_init_lines, trim_mode=settings.trim_mode)
        load_runs(args.root, selection, _ensure(out), write_sequences=False)
        return pl.scan_parquet(out / EVENTS_FILE)
    from batch.evaluate import read_events

    # a file, or a folder holding events.parquet (as `lo2 evaluate --input`)
    return read_events(args.input or settings.parquet_dir)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    return int(args.sample_seed if args.sample_seed is not None else settings.seed)


def _print_models() -> None:
    from rich.console import Console
    from rich.table import Table

    from batch.registry import REGISTRY, available

    table = Table(title="model registry")
    for col in ("key", "input", "supervised", "description"):
        table.add_column(col)
    for key, spec in REGISTRY.items():
        note = "" if available(spec) else f" [needs {spec.needs}]"
        table.add_row(key, spec.input_kind, "yes" if spec.supervised else "no", spec.description + note)
    Console().print(table)


def _metrics_table(title: str, rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    k, a = args.report_precision_at, args.report_fp_alpha
    cols = ["roc_auc", "pr_auc", f"precision_at_{k}", f"fp_rate_at_{a}", "f1", "alert_rate"]
    table = Table(title=title)
    table.add_column("model")
    table.add_column("label")
    for c in cols:
        table.add_column(c, justify="right")
    for key, metrics in rows.items():
        for label in ("service", "service_targeted", "paper"):
            values = metrics.get(label)
            if not values:
                continue
            table.add_row(key, "targeted" if label == "service_targeted" else label, *(("n/a" if values.get(c) is None else f"{values[c]:.3f}") for c in cols))
    Console().print(table)


def _write_predictions(frame: pl.DataFrame, directory: Path, key: str) -> Path:
    path = _ensure(directory) / f"{key}_predictions.parquet"
    frame.write_parquet(path)
    return path


def _dump(bundle: ModelBundle, directory: Path) -> None:
    from rich.console import Console

    from shared.bundle import read_manifest

    assert bundle.path is not None
    manifest = read_manifest(bundle.path)
    target = _ensure(directory) / f"{bundle.path.name}.manifest.json"
    target.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    Console().print_json(json.dumps({k: manifest[k] for k in ("model_key", "created_at", "thresholds", "metrics")}))
    log.info("manifest written to %s", target)


def _load_and_score(args: argparse.Namespace, settings: Settings, events: pl.LazyFrame) -> int:
    from rich.console import Console

    from batch.train import LABELS, filter_services, score_events
    from shared import detection_metrics as dm
    from shared.bundle import load, resolve

    bundle = load(resolve(settings.model_dir, args.load_model))
    frame = score_events(bundle, filter_services(events, args.services))
    out_dir = args.predictions_dir or settings.artifacts_dir / "train"
    path = _write_predictions(frame, out_dir, f"{bundle.model_key}_loaded")
    metrics: dict[str, Any] = {}
    for name, column in LABELS.items():
        y = frame[column].cast(bool).to_numpy()
        s = frame["score"].to_numpy()
        values = dm.ranking_metrics(y, s, ks=(args.report_precision_at,), alphas=(args.report_fp_alpha,))
        tm = dm.threshold_metrics(y, s - frame["threshold"].to_numpy(), 0.0)
        values.update(f1=tm.f1, alert_rate=tm.alert_rate)
        metrics[name] = {k: (None if v != v else float(v)) for k, v in values.items()}
    Console().print(f"scored {frame.height} sequences with bundle {bundle.path} (no refit); predictions: {path}")
    _metrics_table("scores of the loaded bundle on ALL given sequences (not a held-out evaluation)",
                   {bundle.model_key: metrics}, args)
    if args.dump_metadata:
        _dump(bundle, out_dir)
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from batch.registry import require_available
    from batch.train import (
        Featurized,
        TrainConfig,
        featurize,
        filter_services,
        fit_model,
        model_spec,
        predictions_frame,
        split_events,
        threshold_percentile_to_quantile,
    )
    from shared.bundle import promote, unique_bundle_dir
    from shared.errors import ConfigError, Lo2Error
    from shared.features import feature_options

    console = Console()
    if args.list_models:
        _print_models()
        return 0
    try:
        _check_flags(args)
        if args.load_model is None:
            models = _model_keys(args, console)
            require_available(models)
        events = _read_events(args, settings)
        if args.load_model is not None:
            return _load_and_score(args, settings, events)
        test = args.test_fraction
        val = args.if_holdout_fraction
        if not (0.05 <= val < 1 and 0.05 <= test < 1 and val + test < 0.95):
            msg = (f"--if-holdout-fraction {val} and --test-fraction {test}: expected each in [0.05, 1) "
                   "and together below 0.95 so training runs remain")
            raise ConfigError(msg)
        extra = [c.strip() for c in args.if_numeric.split(",") if c.strip()]
        config = TrainConfig(
            models=tuple(models),
            seed=_seed(args, settings),
            fractions=(1.0 - val - test, val, test),
            threshold_quantile=threshold_percentile_to_quantile(args.if_threshold_percentile),
            fit_label="anomaly_service" if args.label == "service" else "anomaly",
            per_service=args.per_service,
            services=tuple(args.services) if args.services else None,
            model_params={"if": _if_params(args)},
            precision_at=(args.report_precision_at,),
            fp_alphas=(args.report_fp_alpha,),
            if_input=IF_ITEMS[args.if_item],
            if_extra_columns=tuple(extra),
            chunk_runs=settings.train_chunk_runs,
            feature_options=feature_options(settings),
        )
        events = filter_services(events, config.services)
        split = split_events(events, config)
        console.print(f"runs: {len(split.train_runs)} train, {len(split.validation_runs)} validation, "
                      f"{len(split.test_runs)} test (by run epoch)")
        with console.status("featurizing (spec fitted on training runs only)"):
            data: Featurized = featurize(events, split, config.chunk_runs, config.feature_options)
        out_dir = args.predictions_dir or settings.artifacts_dir / "train"
        if args.save_enhancers:
            path = _save_features(data, out_dir)
            console.print(f"features written to {path}")
        if args.phase == "enhancers":
            console.print(f"{data.meta.height} sequences, {len(data.feature_names)} numeric features")
            return 0
        rows: dict[str, dict[str, Any]] = {}
        from rich.progress import Progress

        bundles = {}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("training", total=len(models))
            for key in models:
                progress.update(task, description=f"training {key}")
                bundles[key] = fit_model(model_spec(key, config), data, config)
                rows[key] = bundles[key].metrics
                _write_predictions(predictions_frame(data, bundles[key]), out_dir, key)
                progress.advance(task)
        _metrics_table("test runs (held out whole; thresholds from validation correct scores)", rows, args)
        if args.report_psi:
            for key, b in bundles.items():
                psi = b.metrics["psi_train_vs_holdout"]
                shown = "n/a" if psi is None else f"{psi:.4f}"
                console.print(f"{key}: PSI train vs validation correct scores = {shown}")
        if args.save_model is not None:
            target = Path(args.save_model) if args.save_model else settings.model_dir
            for key, b in bundles.items():
                path = b.save(unique_bundle_dir(target, key))
                console.print(f"saved {key} → {path}")
                if args.dump_metadata:
                    _dump(b, out_dir)
            if args.promote and "if" in bundles:
                promote(bundles["if"].path or target, target)
                console.print(f"promoted {bundles['if'].path} as {target / 'current'}")
        return 0
    except Lo2Error as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(str(exc))}")  # "[xgboost]" in a message is not markup
        return 2


def _save_features(data: Any, directory: Path) -> Path:
    import polars as pl

    frame = data.meta.hstack(pl.DataFrame(data.inputs["numeric"], schema=list(data.feature_names), orient="row"))
    path = _ensure(directory) / "features.parquet"
    frame.write_parquet(path)
    return path
