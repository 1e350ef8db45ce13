"""Summarise an explainability folder as Markdown: what is there, what is missing, what it says.

The LogLead ``tools/lo2_result_scan.py`` (reference §7.1) only knew the ``if_`` prefix, so runs
without the IsolationForest always showed "missing", and it counted *lines* of the false-positive
file (header + content = about 2x the real number).  This scan

* finds every model prefix (from ``explain_manifest.json``, else from the file names), and checks
  the required artefacts of each: SHAP plots (or a ``*_shap_skipped.txt`` that says why), top
  features, false-positive / false-negative lists, per-error-case table, and the nearest-normal
  mapping for the models the manifest says it was built for;
* lists SHAP files by type;
* summarises every metrics JSON (scalars, with parse errors reported instead of crashing);
* counts FP/FN **entries** (JSON lines), not text lines, and reports lines that are not valid JSON;
* can preview the first FP entries and top features (redacted again, to be safe).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.redaction import redact

logger = logging.getLogger(__name__)

MANIFEST = "explain_manifest.json"

#: Suffixes of per-model files (``<model><suffix>``); SHAP plots are ``shap_<kind>_<model>.png``.
PER_MODEL_SUFFIXES = (
    "_top_features.csv",
    "_top_features.json",
    "_false_positives.jsonl",
    "_false_negatives.jsonl",
    "_per_error_case.csv",
)
NN_SUFFIX = "_nn_mapping.csv"
SHAP_SKIPPED_SUFFIX = "_shap_skipped.txt"


@dataclass
class ModelArtefacts:
    """What the scan found for one model prefix."""

    model: str
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    false_positives: int | None = None
    false_negatives: int | None = None
    bad_lines: int = 0
    shap_skipped_reason: str | None = None


@dataclass
class ScanResult:
    directory: Path
    generated_at: str
    manifest: dict[str, Any] | None
    manifest_error: str | None
    models: list[ModelArtefacts]
    shap_files: list[str]
    shap_by_type: dict[str, int]
    metrics: dict[str, dict[str, Any]]
    metric_errors: dict[str, str]

    @property
    def complete(self) -> bool:
        """Manifest readable, at least one model, and no required per-model file missing."""
        return not self.problems

    @property
    def problems(self) -> list[str]:
        """Why the folder is not complete, one phrase each (empty when it is).

        The manifest counts as a required artefact: the "Required artefacts" line used to say
        "all present" for an empty folder (no manifest, no models) while ``--strict`` failed.
        """
        out: list[str] = []
        if self.manifest_error is not None:
            out.append(self.manifest_error)
        if not self.models:
            out.append("no model artefacts found")
        n_missing = sum(len(m.missing) for m in self.models)
        if n_missing:
            out.append(f"{n_missing} missing")
        return out


def _read_manifest(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = directory / MANIFEST
    if not path.is_file():
        return None, f"{MANIFEST} is missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{MANIFEST} is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, f"{MANIFEST} holds a {type(data).__name__}, expected a JSON object"
    return data, None


def _models_from_files(directory: Path) -> list[str]:
    found: set[str] = set()
    for path in directory.iterdir():
        name = path.name
        for suffix in (*PER_MODEL_SUFFIXES, NN_SUFFIX, SHAP_SKIPPED_SUFFIX):
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
        for kind in ("summary", "bar"):
            prefix = f"shap_{kind}_"
            if name.startswith(prefix) and name.endswith(".png"):
                found.add(name[len(prefix) : -len(".png")])
    return sorted(found)


def count_entries(path: Path) -> tuple[int, int]:
    """(valid JSON-line entries, lines that are not valid JSON objects) of a ``.jsonl`` file."""
    entries = bad = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                entries += 1
            else:
                bad += 1
    return entries, bad


def _scan_model(directory: Path, model: str, nn_models: set[str]) -> ModelArtefacts:
    art = ModelArtefacts(model=model)
    required = [f"{model}{s}" for s in PER_MODEL_SUFFIXES]
    if model in nn_models:
        required.append(f"{model}{NN_SUFFIX}")
    skipped = directory / f"{model}{SHAP_SKIPPED_SUFFIX}"
    if skipped.is_file():
        art.shap_skipped_reason = redact(skipped.read_text(encoding="utf-8", errors="replace").strip())
        art.present.append(skipped.name)
    else:
        required += [f"shap_summary_{model}.png", f"shap_bar_{model}.png"]
    for name in required:
        (art.present if (directory / name).is_file() else art.missing).append(name)
    for kind in ("positives", "negatives"):
        path = directory / f"{model}_false_{kind}.jsonl"
        if path.is_file():
            n, bad = count_entries(path)
            art.bad_lines += bad
            if kind == "positives":
                art.false_positives = n
            else:
                art.false_negatives = n
    return art


def is_shap_artefact(name: str) -> bool:
    """SHAP outputs: ``shap_<kind>_<model>.<img>``, ``<model>_shap_skipped.txt`` and top-feature lists.

    Matching ``*shap*`` (the reference) would also count every file of a model whose key contains
    "shap" (``sequence_shap_lr_words_metrics.json``).
    """
    lower = name.lower()
    if lower.startswith("shap_") and lower.endswith((".png", ".svg", ".pdf")):
        return True
    return lower.endswith((SHAP_SKIPPED_SUFFIX, "_top_features.csv", "_top_features.json"))


def _scalars(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to ``a.b`` keys, keeping numbers, strings, booleans and None."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_scalars(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float, str, bool)) or data is None:
        out[prefix[:-1] or "value"] = data
    return out


def scan(directory: Path) -> ScanResult:
    """Scan ``directory`` (an explainability output folder)."""
    if not directory.is_dir():
        msg = f"explainability folder {directory} does not exist (run `lo2 explain` first or pass --explain-dir)"
        raise ConfigError(msg)
    manifest, manifest_error = _read_manifest(directory)
    if manifest is not None and isinstance(manifest.get("models"), list):
        models = [str(m) for m in manifest["models"]]
    else:
        models = _models_from_files(directory)
    nn_models = set(models)
    if manifest is not None and isinstance(manifest.get("nn_models"), list):
        nn_models = {str(m) for m in manifest["nn_models"]}
    shap_files = sorted(p.name for p in directory.iterdir() if is_shap_artefact(p.name))
    by_type: dict[str, int] = {}
    for name in shap_files:
        ext = Path(name).suffix.lower().lstrip(".")
        by_type[ext] = by_type.get(ext, 0) + 1
    metrics: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        if "metrics" not in path.name:
            continue
        try:
            metrics[path.name] = _scalars(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            errors[path.name] = str(exc)
    return ScanResult(
        directory=directory,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        manifest=manifest,
        manifest_error=manifest_error,
        models=[_scan_model(directory, m, nn_models) for m in models],
        shap_files=shap_files,
        shap_by_type=dict(sorted(by_type.items())),
        metrics=metrics,
        metric_errors=errors,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return redact(str(value))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _preview_fp(path: Path, n: int) -> list[str]:
    lines: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if len(lines) >= n:
                break
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            reasons = "; ".join(
                _clip(str(r.get("name", r)) if isinstance(r, dict) else str(r), 80)
                for r in entry.get("top_reasons", [])[:3]
            )
            lines.append(
                f"- `{entry.get('seq_id')}` {entry.get('service')} / {entry.get('test_case')}: "
                f"score {_fmt(entry.get('score'))} >= {_fmt(entry.get('threshold'))}; reasons: {redact(reasons)}"
            )
            for ev in entry.get("evidence", [])[:2]:
                lines.append(f"  - `{_clip(redact(str(ev)), 200)}`")
    return lines


def _num(value: str | None) -> str:
    try:
        return f"{float(value or ''):.4f}"
    except ValueError:
        return "?"


def _preview_top(path: Path, n: int) -> tuple[list[str], int]:
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = [
        f"{i + 1}. {_clip(redact(r.get('name', '')), 120)} (mean |contribution| {_num(r.get('mean_abs_contribution'))})"
        for i, r in enumerate(rows[:n])
    ]
    return out, len(rows)


def render_markdown(result: ScanResult, *, max_false_positives: int = 0, top_list_items: int = 0) -> str:
    """The scan as a Markdown block (previews only when asked for)."""
    d = result.directory
    out = [f"## LO2 explainability scan ({result.generated_at})", ""]
    out.append(f"- Directory: `{d}`")
    if result.manifest is not None:
        info = result.manifest
        out.append(
            f"- Manifest: bundle `{info.get('bundle', '?')}`, split `{info.get('split', '?')}`, "
            f"held-out sequences {info.get('n_heldout', '?')}, created {info.get('created_at', '?')}"
        )
    else:
        out.append(f"- Manifest: **problem**: {result.manifest_error}")
    out.append(f"- Models: {', '.join(f'`{m.model}`' for m in result.models) or 'none found'}")
    problems = result.problems
    out.append(f"- Required artefacts: {'all present' if not problems else '**' + '; '.join(problems) + '**'}")
    out.append(
        f"- SHAP artefacts: {len(result.shap_files)} "
        f"({', '.join(f'{k}: {v}' for k, v in result.shap_by_type.items()) or 'none'})"
    )
    out.append("")
    out.append("| model | FP entries | FN entries | bad lines | SHAP | missing |")
    out.append("| --- | ---: | ---: | ---: | --- | --- |")
    for m in result.models:
        shap = f"skipped: {m.shap_skipped_reason}" if m.shap_skipped_reason else "plots"
        fp = "n/a" if m.false_positives is None else str(m.false_positives)
        fn = "n/a" if m.false_negatives is None else str(m.false_negatives)
        missing = ", ".join(f"`{x}`" for x in m.missing) or "-"
        out.append(f"| `{m.model}` | {fp} | {fn} | {m.bad_lines} | {shap} | {missing} |")
    out.append("")
    out.append("### Metrics")
    if not result.metrics and not result.metric_errors:
        out.append("- no metrics JSON found")
    for name, values in result.metrics.items():
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(values.items())[:30])
        more = f" (+{len(values) - 30} more)" if len(values) > 30 else ""
        out.append(f"- `{name}`: {shown}{more}")
    for name, err in result.metric_errors.items():
        out.append(f"- `{name}`: **cannot be parsed**: {redact(err)}")
    if result.shap_files:
        out += ["", "### SHAP files", *[f"- `{n}`" for n in result.shap_files]]
    if max_false_positives > 0:
        out += ["", "### False positive preview"]
        for m in result.models:
            path = d / f"{m.model}_false_positives.jsonl"
            if path.is_file():
                out.append(f"#### `{m.model}` ({m.false_positives} entries)")
                out += _preview_fp(path, max_false_positives) or ["- none"]
    if top_list_items > 0:
        out += ["", "### Top feature lists"]
        for m in result.models:
            path = d / f"{m.model}_top_features.csv"
            if path.is_file():
                rows, total = _preview_top(path, top_list_items)
                cut = f" (first {len(rows)} of {total})" if total > len(rows) else ""
                out.append(f"#### `{m.model}`{cut}")
                out += rows or ["- empty"]
    return "\n".join(out) + "\n"
