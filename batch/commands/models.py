"""List, show, verify and promote saved model bundles (the folders under settings model_dir).

`list` reads only manifests (fast, works for bundles this code could no longer load); `show` and
`verify` load a bundle with every check (checksums, schema version, feature spec) and say exactly
what is wrong; `promote` switches the `current` pointer atomically after the same checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder of bundles (default: settings model_dir, LO2_MODEL_DIR)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="one line per bundle: name, model, created, thresholds, test ROC-AUC")
    show = sub.add_parser("show", help="the manifest of a bundle, after verifying it loads")
    show.add_argument("bundle", nargs="?", default="current",
                      help="bundle name under the model folder, a path, or 'current' (default)")
    show.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    verify = sub.add_parser("verify", help="load a bundle with every check; exit 1 if it is broken")
    verify.add_argument("bundle", nargs="?", default="current", help="bundle name, path or 'current'")
    promote = sub.add_parser("promote", help="point `current` at a bundle (atomic; refuses broken bundles)")
    promote.add_argument("bundle", help="bundle name under the model folder, or a path")


def _auc(manifest: dict[str, Any], label: str) -> str:
    value = (manifest.get("metrics", {}).get(label) or {}).get("roc_auc")
    return "n/a" if value is None else f"{value:.3f}"


def _thresholds(manifest: dict[str, Any]) -> str:
    values = manifest.get("thresholds", {})
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from shared import bundle as mb
    from shared.errors import ModelLoadError

    console = Console()
    model_dir = args.model_dir or settings.model_dir
    try:
        if args.action == "list":
            current = mb.current_target(model_dir)
            found = mb.list_bundles(model_dir)
            if not found:
                console.print(f"no bundles under {model_dir}")
                return 0
            table = Table(title=f"model bundles in {model_dir}")
            for col in ("", "name", "model", "created (UTC)", "thresholds", "AUC service", "AUC paper"):
                table.add_column(col)
            for path, manifest, error in found:
                mark = "*" if current is not None and path.resolve() == current else ""
                if manifest is None:
                    table.add_row(mark, path.name, "[red]unreadable[/red]", "", str(error), "", "")
                    continue
                table.add_row(mark, path.name, manifest.get("model_key", "?"), manifest.get("created_at", "?"),
                              _thresholds(manifest), _auc(manifest, "service"), _auc(manifest, "paper"))
            console.print(table)
            console.print("* = current")
            return 0
        if args.action == "promote":
            path = mb.resolve(model_dir, args.bundle)
            previous = mb.promote(path, model_dir)
            console.print(f"current → {path.name} (was {previous.name if previous else 'nothing'})")
            return 0
        path = mb.resolve(model_dir, args.bundle)
        loaded = mb.load(path)
        if args.action == "verify":
            console.print(f"[green]ok[/green] {path}: checksums, schema and feature spec verified")
            return 0
        manifest = mb.read_manifest(path)
        if args.json:
            console.print_json(json.dumps(manifest))
            return 0
        spec = manifest["feature_spec"]
        console.print(f"[bold]{path.name}[/bold]  ({path})")
        console.print(f"model {loaded.model_key} on {loaded.input_kind} features; groups {sorted(loaded.detectors)}")
        console.print(f"created {loaded.created_at} by lo2-stream {loaded.code.get('package')} "
                      f"(git {loaded.code.get('git_commit', '?')[:12]})")
        console.print(f"sequence policy {loaded.sequence_policy}")
        console.print(f"feature spec {spec['fingerprint'][:16]}… ({spec['n_features']} numeric features)")
        console.print(f"thresholds {_thresholds(manifest)} at quantile {loaded.threshold_quantile}")
        split = loaded.training.get("split", {})
        console.print(f"runs: {len(split.get('train_runs', []))} train, {len(split.get('validation_runs', []))} "
                      f"validation, {len(split.get('test_runs', []))} test (split {split.get('fingerprint', '?')})")
        table = Table(title="test-run metrics")
        table.add_column("metric")
        labels = [label for label in ("service", "paper") if manifest["metrics"].get(label)]
        for label in labels:
            table.add_column(f"label {label}", justify="right")
        names = sorted({k for label in labels for k in manifest["metrics"][label]})
        for name in names:
            cells = [manifest["metrics"][label].get(name) for label in labels]
            table.add_row(name, *("n/a" if v is None else f"{v:.3f}" for v in cells))
        console.print(table)
        features = manifest.get("reference", {}).get("features", {})
        if features:
            console.print("PSI reference features: " + ", ".join(features))
        return 0
    except ModelLoadError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
