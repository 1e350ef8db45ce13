"""Explain saved models on held-out runs: SHAP summary/bar plots named after each model, top-feature
lists with readable names, nearest normal training sequences (by seq_id) for flagged sequences,
false-positive/false-negative lists with redacted evidence, a per-error-case table next to the
length/duration canary, and explain_manifest.json.  Works from saved bundles (the promoted
`current` one by default): nothing is retrained unless --retrain is given."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from shared.settings import Settings

logger = logging.getLogger(__name__)


def _max_samples(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        msg = f"--if-max-samples must be 'auto' or a positive integer, got {value!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if number < 1:
        msg = f"--if-max-samples must be 'auto' or a positive integer, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def _contamination(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        msg = f"--if-contamination must be 'auto' or a number in (0, 0.5], got {value!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.0 < number <= 0.5:
        msg = f"--if-contamination must be 'auto' or a number in (0, 0.5], got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None,
        help="folder holding events.parquet from `lo2 load` (default: the parquet_dir setting)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder for the artefacts (default: <artifacts_dir>/explain)"
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="folder of the model bundles (default: the model_dir setting)"
    )
    parser.add_argument(
        "--load-model", default="current",
        help="bundle of the main model (normally the IsolationForest): a bundle name, a path, or 'current' (default)",
    )
    parser.add_argument(
        "--sup-models", default="",
        help="comma-separated further models to explain: bundle names/paths, or registry keys "
        "(the newest bundle of that key under --model-dir)",
    )
    parser.add_argument("--skip-if", action="store_true", help="do not explain the main (--load-model) bundle")
    parser.add_argument(
        "--list-models", action="store_true", help="list the saved bundles and the registry keys, then exit"
    )
    parser.add_argument(
        "--retrain", action="store_true",
        help="instead of loading --load-model, fit an IsolationForest on the training runs with the --if-* flags",
    )
    parser.add_argument(
        "--if-contamination", type=_contamination, default="auto",
        help="IsolationForest contamination for --retrain ('auto' or a number in (0, 0.5]; the threshold "
        "is calibrated on validation normals either way)",
    )
    parser.add_argument("--if-n-estimators", type=int, default=200, help="IsolationForest trees for --retrain")
    parser.add_argument(
        "--if-max-samples", type=_max_samples, default="auto", help="IsolationForest max_samples for --retrain"
    )
    parser.add_argument(
        "--shap-sample", type=int, default=200,
        help="held-out sequences explained with SHAP, stratified by label x test case (0 = all)",
    )
    parser.add_argument(
        "--shap-background", type=int, default=256,
        help="training normals used as SHAP background for linear models (<=0 = all)",
    )
    parser.add_argument(
        "--nn-top-k", type=int, default=0,
        help="map at most K flagged sequences (highest score first) to nearest normals (0 = all)",
    )
    parser.add_argument(
        "--nn-normal-sample", type=int, default=2000,
        help="search among at most N training normals, sampled at random (0 = all)",
    )
    parser.add_argument(
        "--nn-source", default=None,
        help="model(s) whose flagged sequences get a nearest-normal mapping: a model key, a comma list, "
        "'all' or 'none' (default: if when the IsolationForest is explained, else the first explained model)",
    )
    parser.add_argument("--nn-neighbours", type=int, default=3, help="nearest normals per flagged sequence (k)")
    parser.add_argument(
        "--label", choices=("paper", "service"), default="paper",
        help="ground truth of FP/FN: 'paper' = every sequence of an error case; 'service' = only the "
        "service the error targets",
    )
    parser.add_argument(
        "--max-list-entries", type=int, default=200,
        help="false-positive / false-negative entries written per model, most confident first (0 = all)",
    )
    parser.add_argument(
        "--evidence-lines", type=int, default=5, help="redacted evidence lines per FP/FN entry (0-5)"
    )
    parser.add_argument("--sample-seed", type=int, default=None, help="seed of every sample (default: the seed setting)")


def _print_models(model_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from batch.registry import REGISTRY
    from shared.bundle import current_target, list_bundles

    console = Console()
    table = Table(title=f"bundles in {model_dir}")
    for col in ("bundle", "model", "input", "created", "current"):
        table.add_column(col)
    current = current_target(model_dir)
    for path, manifest, error in list_bundles(model_dir):
        if manifest is None:
            table.add_row(path.name, f"[red]{error}[/red]", "", "", "")
            continue
        table.add_row(
            path.name, str(manifest.get("model_key")), str(manifest.get("input_kind")),
            str(manifest.get("created_at")), "yes" if current is not None and path.resolve() == current else "",
        )
    console.print(table)
    for key, spec in REGISTRY.items():
        console.print(f"{key} ({spec.input_kind}): {spec.description}")


def nn_models(nn_source: str | None, keys: list[str]) -> tuple[tuple[str, ...], str | None]:
    """The models whose flagged sequences get nearest normals, and a note when the default chose them.

    Why a default that depends on the models: a fixed ``if`` failed whenever the IsolationForest was
    not explained (``--skip-if``, or ``--load-model`` of another model's bundle), so every such run
    needed ``--nn-source`` spelled out.  An explicit value is still checked against ``keys``.
    """
    from shared.errors import ConfigError

    if nn_source is None:
        if not keys:
            return (), None
        chosen = "if" if "if" in keys else keys[0]
        how = "the IsolationForest" if chosen == "if" else "the first explained model; the IsolationForest is not explained"
        return (chosen,), f"nearest normals for {chosen} ({how}; choose with --nn-source)"
    nn = nn_source.strip()
    if nn == "all":
        return tuple(keys), None
    if nn == "none":
        return (), None
    chosen_keys = tuple(k.strip() for k in nn.split(","))
    unknown = [k for k in chosen_keys if k not in keys]
    if unknown:
        msg = f"--nn-source {nn!r}: {unknown} not among the explained models {keys} (or use 'all' / 'none')"
        raise ConfigError(msg)
    return chosen_keys, None


def _resolve_model(model_dir: Path, ref: str) -> Path:
    """A bundle path from a name/path, or the newest bundle whose model_key is ``ref``."""
    from shared.bundle import list_bundles, resolve
    from shared.errors import ModelLoadError

    try:
        return resolve(model_dir, ref)
    except ModelLoadError:
        matches = [p for p, m, _ in list_bundles(model_dir) if m is not None and m.get("model_key") == ref]
        if not matches:
            raise
        return matches[-1]


def run(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np
    import polars as pl
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from batch.explain import LABEL_COLUMNS, ExplainConfig, ExplainData, ModelInput, explain_all
    from batch.registry import get_spec
    from batch.splits import RunSplit
    from batch.train import input_matrix, input_names, make_inputs
    from shared import bundle as bundles
    from shared import detection_metrics as dm
    from shared.errors import ConfigError, Lo2Error
    from shared.features import canary_features, featurize_events

    console = Console(stderr=True)
    model_dir = args.model_dir or settings.model_dir
    if args.list_models:
        _print_models(model_dir)
        return 0
    root = args.root or settings.parquet_dir
    out_dir = args.out or settings.artifacts_dir / "explain"
    seed = settings.seed if args.sample_seed is None else args.sample_seed
    try:
        from batch.evaluate import read_events

        # a file, or a folder holding events.parquet; a missing or unreadable one is a ConfigError
        events = read_events(root).collect()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("loading bundles", total=None)

            def say(msg: str) -> None:
                bar.update(task, description=msg)

            loaded: list[Any] = []
            if not args.skip_if and not args.retrain:
                loaded.append(bundles.load(_resolve_model(model_dir, args.load_model)))
            for ref in [r.strip() for r in args.sup_models.split(",") if r.strip()]:
                loaded.append(bundles.load(_resolve_model(model_dir, ref)))
            split: RunSplit | None = None
            if loaded:
                split_info = loaded[0].training.get("split")
                if not split_info:
                    msg = f"bundle {loaded[0].name} records no run split; cannot tell held-out runs (retrain it)"
                    raise ConfigError(msg)
                split = RunSplit.from_dict(split_info)
                for b in loaded[1:]:
                    other = RunSplit.from_dict(b.training.get("split") or {})
                    if other.fingerprint != split.fingerprint:
                        msg = (
                            f"bundles {loaded[0].name} and {b.name} were trained on different run splits "
                            f"({split.fingerprint} vs {other.fingerprint}); explain them separately"
                        )
                        raise ConfigError(msg)
            models: list[ModelInput] = []
            canary: ModelInput | None = None
            base_meta: pl.DataFrame | None = None
            matrices: dict[str, dict[str, Any]] = {}

            def featurized(spec: Any) -> dict[str, Any]:
                nonlocal base_meta
                fp = spec.fingerprint()
                if fp not in matrices:
                    say("featurizing events with the bundle's feature spec")
                    fm = featurize_events(events, spec)
                    order = fm.meta["seq_id"]
                    if base_meta is None:
                        base_meta = fm.meta
                    elif not order.equals(base_meta["seq_id"]):
                        pos = {s: i for i, s in enumerate(order.to_list())}
                        idx = np.array([pos[s] for s in base_meta["seq_id"].to_list()])
                        fm = type(fm)(fm.meta[idx], fm.X[idx], fm.feature_names, fm.X_tokens[idx],
                                      fm.token_feature_names, fm.spec_fingerprint)
                    matrices[fp] = {
                        "fm": fm,
                        "inputs": make_inputs(fm.X, fm.X_tokens, canary_features(fm.meta)[0], fm.feature_names),
                    }
                return matrices[fp]

            def model_input(spec: Any, kind: str, bundle: Any = None) -> tuple[Any, list[str]]:
                """The input matrix of a model and its column names.

                A bundle is scored on exactly the columns it stores (``shared.bundle.bundle_inputs``,
                the selection the worker and ``lo2 train --load-model`` use), so a change of the
                default column choice in newer code cannot shift them.  Without a bundle (the
                canary fitted here) the input kind's default columns are used.
                """
                got = featurized(spec)
                fm = got["fm"]
                base, _, extra = kind.partition("+")
                if bundle is not None:
                    X = bundles.bundle_inputs(bundle, fm.X, fm.X_tokens, got["inputs"]["canary"],
                                              feature_names=fm.feature_names)
                    names = list(bundle.feature_names)
                    if base == "tokens":
                        names = list(fm.token_feature_names) + names
                elif base == "tokens":
                    names = list(fm.token_feature_names) + [f"canary:{c}" for c in extra.split(",") if c]
                    X = input_matrix(got["inputs"], kind)
                else:
                    names = input_names(kind, fm.feature_names)
                    X = input_matrix(got["inputs"], kind)
                if X.shape[1] != len(names):
                    msg = f"input kind {kind!r}: {X.shape[1]} columns but {len(names)} names"
                    raise ConfigError(msg)
                return X, names

            if args.retrain:
                from batch.train import TrainConfig, train

                say("retraining the IsolationForest on the training runs (--retrain)")
                params = {"contamination": args.if_contamination, "n_estimators": args.if_n_estimators,
                          "max_samples": args.if_max_samples}
                from shared.features import feature_options

                result = train(events, TrainConfig(models=("if",), seed=seed, model_params={"if": params},
                                                   feature_options=feature_options(settings)))
                fresh = result.bundles["if"]
                loaded.insert(0, fresh)
                split = result.data.split
            if not loaded or split is None:
                msg = "nothing to explain: --skip-if without --sup-models"
                raise ConfigError(msg)
            # checked before featurizing: a wrong --nn-source fails at once, not after the models ran
            nn_keys, nn_note = nn_models(args.nn_source, [b.model_key for b in loaded])
            if nn_note:
                console.print(nn_note, soft_wrap=True)
            for b in loaded:
                X, names = model_input(b.feature_spec, b.input_kind, b)
                mi = ModelInput(b.model_key, b.name or "retrained here (--retrain)", dict(b.detectors),
                                dict(b.thresholds), X, names)
                if b.model_key == bundles.CANARY_KEY and canary is None:
                    canary = mi
                models.append(mi)
            assert base_meta is not None
            meta = split.label(base_meta)
            # Explanations are of the bundle's own held-out runs; other runs are left out (say so),
            # and data without any of them is a clear error, not a failing canary fit.
            unknown = sorted(set(meta.filter(pl.col("split").is_null())["run"].to_list()))
            if unknown:
                console.print(f"left out {len(unknown)} run(s) that are not in the bundle's train/validation/test "
                              f"split: {', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}", soft_wrap=True)
            if not (meta["split"] == "test").any():
                msg = (f"the data holds none of the bundle's held-out test runs ({', '.join(split.test_runs[:5])}); "
                       "point --root at the events the bundle was trained on, or pass --retrain to split these runs")
                raise ConfigError(msg)
            if canary is None and not (meta["split"] == "train").any():
                console.print("canary baseline skipped: the data holds none of the bundle's training runs", soft_wrap=True)
            elif canary is None:
                say("fitting the length/duration canary on the training runs (baseline only)")
                Xc, cnames = model_input(loaded[0].feature_spec, "canary")
                is_split = meta["split"].fill_null("").to_numpy()
                tr, va = np.flatnonzero(is_split == "train"), np.flatnonzero(is_split == "validation")
                y_fit = meta[LABEL_COLUMNS[args.label]].cast(pl.Boolean).fill_null(False).to_numpy()
                normal_rows = ~meta["anomaly"].cast(pl.Boolean).fill_null(False).to_numpy()
                det = get_spec("canary").build(seed).fit(Xc[tr], y_fit[tr].astype(int))
                val_normal = det.score(Xc[va])[normal_rows[va]]
                thr = dm.threshold_from_quantile(val_normal, loaded[0].threshold_quantile)
                if thr.defined:
                    canary = ModelInput("canary", "fitted here (baseline)", {"all": det}, {"all": float(thr)}, Xc, cnames)
                else:
                    logger.warning("canary baseline skipped: %s", thr.reason)
            config = ExplainConfig(
                label=args.label, shap_sample=args.shap_sample, shap_background=args.shap_background,
                nn_top_k=args.nn_top_k, nn_normal_sample=args.nn_normal_sample, nn_neighbours=args.nn_neighbours,
                nn_models=nn_keys, max_list_entries=args.max_list_entries, evidence_lines=args.evidence_lines,
                seed=seed,
            )
            params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
            params["nn_source"] = ",".join(nn_keys) if args.nn_source is None else args.nn_source  # the one used
            manifest = explain_all(
                models, ExplainData(meta, events, split.fingerprint), config, out_dir,
                canary=canary, params=params, progress=say,
            )
    except (Lo2Error, FileExistsError) as exc:
        print(f"lo2 explain: {exc}", file=sys.stderr)
        return 2
    _summary(manifest, out_dir)
    return 0


def _summary(manifest: dict[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lo2 explain -> {out_dir} ({manifest['n_heldout']} held-out sequences, label {manifest['label']})")
    for col in ("model", "method", "SHAP rows", "FP", "FN", "ROC-AUC", "recall", "alert rate"):
        table.add_column(col)
    for key, info in manifest["per_model"].items():
        h = info["heldout"]

        def f(v: Any) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        table.add_row(
            key, info["method"], f"{info['shap_rows']}/{info['shap_rows_total']}",
            str(info["false_positives"]["total"]), str(info["false_negatives"]["total"]),
            f(h.get("roc_auc")), f(h.get("recall")), f(h.get("alert_rate")),
        )
    Console().print(table)
    left_out = manifest.get("services_left_out") or {}
    if left_out:
        models = sorted({m for keys in left_out.values() for m in keys})
        Console().print(f"services left out: {', '.join(left_out)} (no detector in per-service bundle(s) "
                        f"{', '.join(models)}; retrain with them or explain those bundles separately)")
    if manifest.get("canary"):
        Console().print(f"canary baseline: {manifest['canary']} (see <model>_metrics.json and _per_error_case.csv)")
