"""Explainability artefacts of saved model bundles on held-out runs (phase F of the LogLead demo, fixed).

For each model (one bundle per registry key) this writes, into one folder:

* ``shap_summary_<model>.png`` / ``shap_bar_<model>.png``: SHAP (TreeExplainer for the
  IsolationForest and tree models, LinearExplainer for linear models) on a **stratified sample** of
  held-out sequences (strata = label x test case, so every error case is represented; the demo
  explained the first N rows, reference §9.2 item 23).  No feature-count guard blocks SHAP (item 22):
  linear SHAP is computed only over the columns that are non-zero somewhere in the sample or the
  background, which is exact for a linear model; tree SHAP gets dense rows of the sample only.
  Models SHAP cannot explain (LOF, OCSVM, KMeans, HST, rarity, OOV) get ``<model>_shap_skipped.txt``
  with the reason, and their lists use the deviation attribution of :mod:`shared.explain`.
* ``<model>_top_features.csv`` / ``.json``: features ranked by mean |contribution| over the sample,
  with readable names (template text, error code), not hash ids.
* ``<model>_nn_mapping.csv``: for the model's flagged held-out sequences, the k closest ``correct``
  *training* sequences by ``seq_id`` (item 26), in a per-feature-scaled space (item 25), found among a
  random sample of training normals (item 24) with a sparse-capable brute-force search, plus the
  features that differ most.
* ``<model>_false_positives.jsonl`` / ``<model>_false_negatives.jsonl``: one JSON entry per sequence
  (seq_id, run, service, test_case, score, threshold, top reasons, at most ``evidence_lines``
  redacted lines), never whole sequences (the demo wrote 3.5 MB per entry with raw secrets).
* ``<model>_per_error_case.csv``: which error cases the model catches at its calibrated threshold,
  next to the length/duration canary.
* ``<model>_metrics.json``: held-out metrics at the threshold, next to the canary's.
* ``explain_manifest.json``: what was explained, with which bundle, split, sample sizes and files,
  and ``services_left_out``: services no detector of a per-service bundle covers (their sequences
  are left out for every model, so all artefacts describe the same sequences).

Every text written here passes through :func:`shared.redaction.redact`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from shared import detection_metrics as dm
from shared.errors import ConfigError
from shared.explain import feature_label, oriented_shap, shap_target, template_regex
from shared.redaction import redact

logger = logging.getLogger(__name__)

MANIFEST = "explain_manifest.json"
LABEL_COLUMNS: Mapping[str, str] = {"paper": "anomaly", "service": "anomaly_service"}
#: At most this many characters of one evidence line (a JSON request body can be kilobytes).
EVIDENCE_MAX_CHARS = 300
#: Candidate evidence lines kept per (sequence, level, logger, method) before picking.
EVIDENCE_CANDIDATES_PER_GROUP = 25
#: Longest feature name shown on a plot axis.
PLOT_NAME_CHARS = 70
ProgressFn = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
@dataclass
class ModelInput:
    """One model to explain: scores/thresholds of every sequence and how to attribute them."""

    key: str
    bundle: str  # bundle name (or "fitted here")
    detectors: dict[str, Any]  # group ("all" or service) -> fitted detector
    thresholds: dict[str, float]
    X: Any  # rows aligned with ExplainData.meta (dense or CSR)
    feature_names: list[str]

    @property
    def per_service(self) -> bool:
        return set(self.detectors) != {"all"}

    def group_of(self, service: str) -> str:
        return service if self.per_service else "all"

    def score_rows(self, rows: np.ndarray, services: Sequence[str]) -> np.ndarray:
        out = np.empty(rows.size, dtype=np.float64)
        groups = np.array([self.group_of(s) for s in services], dtype=object)
        for group in dict.fromkeys(groups.tolist()):
            sel = np.flatnonzero(groups == group)
            if group not in self.detectors:
                msg = f"model {self.key}: no detector for service group {group!r} (has {sorted(self.detectors)})"
                raise ConfigError(msg)
            out[sel] = np.asarray(self.detectors[group].score(self.X[rows[sel]]), dtype=np.float64).reshape(-1)
        return out

    def thresholds_of(self, services: Sequence[str]) -> np.ndarray:
        return np.array([self.thresholds[self.group_of(s)] for s in services], dtype=np.float64)


@dataclass
class ExplainData:
    """Sequences of every split (``meta`` has a ``split`` column) and their events (for evidence)."""

    meta: pl.DataFrame
    events: pl.DataFrame | None
    split_fingerprint: str
    #: Services whose sequences are left out of every split (see :func:`services_without_detector`).
    left_out: tuple[str, ...] = ()

    def rows(self, split: str) -> np.ndarray:
        mask = (self.meta["split"] == split).fill_null(False).to_numpy()
        if self.left_out:
            mask &= ~self.meta["service"].is_in(list(self.left_out)).to_numpy()
        return np.flatnonzero(mask)


def services_without_detector(models: Sequence[ModelInput], meta: pl.DataFrame) -> dict[str, list[str]]:
    """Services of ``meta`` that some per-service model has no detector for → those models' keys.

    A per-service bundle trained without a service (``lo2 train --per-service --services ...``, or a
    group ``lo2 train`` skipped, e.g. ``key`` for a supervised model) cannot score that service's
    sequences.  ``explain_all`` leaves such services out for *every* model, so all artefacts and the
    canary comparison describe the same held-out sequences.
    """
    present = sorted(meta["service"].drop_nulls().unique().to_list())
    missing: dict[str, list[str]] = {}
    for model in models:
        if model.per_service:
            for service in present:
                if service not in model.detectors:
                    missing.setdefault(service, []).append(model.key)
    return missing


@dataclass(frozen=True)
class ExplainConfig:
    """The flags of ``lo2 explain`` that shape the artefacts (names follow the reference)."""

    label: str = "paper"
    shap_sample: int = 200  #: held-out sequences explained with SHAP (stratified); 0 = all
    shap_background: int = 256  #: training normals as SHAP background (linear models); <=0 = all
    nn_top_k: int = 0  #: flagged sequences mapped to normals (highest score first); 0 = all
    nn_normal_sample: int = 2000  #: random training normals searched; 0 = all
    nn_neighbours: int = 3
    nn_models: tuple[str, ...] = ("if",)
    max_list_entries: int = 200  #: FP/FN entries written per model (highest-confidence first); 0 = all
    evidence_lines: int = 5
    top_reasons: int = 5
    top_features: int = 20
    seed: int = 42

    def __post_init__(self) -> None:
        if self.label not in LABEL_COLUMNS:
            msg = f"label {self.label!r} unknown; expected one of {sorted(LABEL_COLUMNS)}"
            raise ConfigError(msg)
        if not 0 <= self.evidence_lines <= 5:
            msg = f"evidence_lines must be between 0 and 5 (a few lines, not sequences), got {self.evidence_lines}"
            raise ConfigError(msg)
        if self.nn_neighbours < 1:
            msg = f"nn_neighbours must be >= 1, got {self.nn_neighbours}"
            raise ConfigError(msg)


# ------------------------------------------------------------------------------------------------
# Helpers: sampling, stats, attribution
# ------------------------------------------------------------------------------------------------
def stratified_sample(strata: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Indices of a sample of size ``n`` with every stratum represented proportionally (>= 1 each
    while ``n`` allows), drawn at random inside each stratum.  ``n <= 0`` or ``n >= len`` = all."""
    total = len(strata)
    if n <= 0 or n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    labels = np.asarray(strata, dtype=object)
    groups = {s: np.flatnonzero(labels == s) for s in sorted(set(labels.tolist()))}
    quota = {s: len(idx) * n / total for s, idx in groups.items()}
    alloc = {s: min(len(groups[s]), max(1, math.floor(q))) for s, q in quota.items()}
    # trim if the minimum of one per stratum overshoots, from the largest strata
    while sum(alloc.values()) > n:
        s = max(alloc, key=lambda k: (alloc[k], k))
        alloc[s] -= 1
    # fill by largest remainder
    order = sorted(groups, key=lambda s: (quota[s] - math.floor(quota[s])), reverse=True)
    i = 0
    while sum(alloc.values()) < n and i < 10 * len(order):
        s = order[i % len(order)]
        if alloc[s] < len(groups[s]):
            alloc[s] += 1
        i += 1
    picked = [rng.choice(groups[s], size=alloc[s], replace=False) for s in groups if alloc[s] > 0]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


def _dense_rows(X: Any, rows: np.ndarray) -> np.ndarray:
    sub = X[rows]
    if sp.issparse(sub):
        return np.asarray(sub.toarray(), dtype=np.float64)
    return np.asarray(sub, dtype=np.float64)


def column_scale(X: Any) -> np.ndarray:
    """Per-column standard deviation (sparse-safe), floored like ``shared.explain._feature_scale``."""
    if sp.issparse(X):
        mean = np.asarray(X.mean(axis=0)).ravel()
        sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
        std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    else:
        std = np.asarray(X, dtype=np.float64).std(axis=0)
    positive = std[std > 1e-12]
    floor = float(positive.min()) if positive.size else 1.0
    return np.where(std > 1e-12, std, floor)


class NormalStats:
    """Per-feature statistics of the training normals, computed lazily per column (sparse-safe)."""

    def __init__(self, X_normal: Any, low_q: float = 0.05, high_q: float = 0.95) -> None:
        self.X = X_normal.tocsc() if sp.issparse(X_normal) else np.asarray(X_normal, dtype=np.float64)
        self.low_q, self.high_q = low_q, high_q
        self.scale = column_scale(self.X)
        if sp.issparse(self.X):
            self.median = np.zeros(self.X.shape[1])
            dense_cols = np.flatnonzero(np.diff(self.X.indptr) > self.X.shape[0] // 2)
            for j in dense_cols:
                self.median[j] = float(np.median(self.X[:, j].toarray()))
        else:
            self.median = np.median(self.X, axis=0) if self.X.shape[0] else np.zeros(self.X.shape[1])
        self._range: dict[int, tuple[float, float]] = {}

    def normal_range(self, j: int) -> tuple[float, float]:
        if j not in self._range:
            col = self.X[:, j].toarray().ravel() if sp.issparse(self.X) else self.X[:, j]
            if col.size == 0:
                self._range[j] = (math.nan, math.nan)
            else:
                self._range[j] = (float(np.quantile(col, self.low_q)), float(np.quantile(col, self.high_q)))
        return self._range[j]

    def deviation(self, rows: np.ndarray) -> np.ndarray:
        """Robust z-score of dense rows against the normals (positive = above normal)."""
        return (rows - self.median) / self.scale


@dataclass
class Attribution:
    values: np.ndarray  # (rows, features), positive = toward anomalous
    method: str
    skipped_reason: str | None = None


def attribute(
    model: ModelInput,
    rows: np.ndarray,
    services: Sequence[str],
    stats: NormalStats,
    background_rows: np.ndarray,
    explainers: dict[int, Any],
) -> Attribution:
    """Per-feature contributions of ``rows`` (positive = toward anomalous) for one model.

    Tree models: SHAP TreeExplainer (path-dependent); linear models: SHAP LinearExplainer on the
    columns active in the rows or the background (exact: inactive columns contribute 0); any other
    model: the deviation of the row from the training normals, with the reason SHAP was skipped.
    """
    d = len(model.feature_names)
    values = np.zeros((rows.size, d), dtype=np.float64)
    groups = np.array([model.group_of(s) for s in services], dtype=object)
    methods: set[str] = set()
    reason: str | None = None
    for group in dict.fromkeys(groups.tolist()):
        sel = np.flatnonzero(groups == group)
        detector = model.detectors[group]
        target = shap_target(detector)
        if target is None:
            reason = (
                f"{type(detector).__name__} has no tree or linear estimator SHAP can explain; "
                "contributions are deviations from the training normals (robust z-scores)"
            )
            values[sel] = stats.deviation(_dense_rows(model.X, rows[sel]))
            methods.add("deviation")
            continue
        X_rows = model.X[rows[sel]]
        if target.transform is not None:
            X_rows = target.transform(X_rows)
        import shap

        if target.kind == "tree":
            explainer = explainers.get(id(target.estimator))
            if explainer is None:
                explainer = shap.TreeExplainer(target.estimator)
                explainers[id(target.estimator)] = explainer
            dense = X_rows.toarray() if sp.issparse(X_rows) else np.asarray(X_rows, dtype=np.float64)
            raw = explainer.shap_values(dense, check_additivity=False)
            values[sel] = oriented_shap(raw, target.orientation)
            methods.add("tree_shap")
        else:
            bg = model.X[background_rows]
            if target.transform is not None:
                bg = target.transform(bg)
            active = _active_columns(X_rows, bg)
            coef = np.asarray(target.estimator.coef_, dtype=np.float64).reshape(-1)
            sub_model = (coef[active], float(np.ravel(target.estimator.intercept_)[0]))
            explainer = shap.LinearExplainer(sub_model, _dense_cols(bg, active))
            raw = explainer.shap_values(_dense_cols(X_rows, active))
            block = np.zeros((sel.size, d), dtype=np.float64)
            block[:, active] = oriented_shap(raw, target.orientation)
            values[sel] = block
            methods.add("linear_shap")
    return Attribution(values, "+".join(sorted(methods)) or "none", reason)


def _active_columns(*mats: Any) -> np.ndarray:
    cols: set[int] = set()
    for m in mats:
        if sp.issparse(m):
            cols.update(np.unique(m.tocsr().indices).tolist())
        else:
            cols.update(np.flatnonzero(np.any(np.asarray(m) != 0, axis=0)).tolist())
    return np.array(sorted(cols), dtype=np.int64)


def _dense_cols(X: Any, cols: np.ndarray) -> np.ndarray:
    sub = X[:, cols]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# Nearest normals
# ------------------------------------------------------------------------------------------------
@dataclass
class NeighbourResult:
    indices: np.ndarray  # (n_query, k) indices into the reference rows
    distances: np.ndarray  # (n_query, k)
    scale: np.ndarray


def nearest_normals(X_query: Any, X_ref: Any, k: int) -> NeighbourResult:
    """k nearest reference rows per query row, Euclidean after dividing each column by the spread
    of the reference (normals).  Works on CSR matrices without densifying (brute force, chunked by
    scikit-learn); no centring is needed because distances do not change under translation."""
    from sklearn.neighbors import NearestNeighbors

    scale = column_scale(X_ref)
    inv = 1.0 / scale
    if sp.issparse(X_ref):
        ref = sp.csr_matrix(X_ref.multiply(inv[np.newaxis, :]))
        query = sp.csr_matrix(sp.csr_matrix(X_query).multiply(inv[np.newaxis, :]))
    else:
        ref = np.asarray(X_ref, dtype=np.float64) * inv
        query = np.asarray(X_query.toarray() if sp.issparse(X_query) else X_query, dtype=np.float64) * inv
    k = min(k, ref.shape[0])
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(ref)
    dist, idx = nn.kneighbors(query)
    return NeighbourResult(idx, dist, scale)


# ------------------------------------------------------------------------------------------------
# Evidence
# ------------------------------------------------------------------------------------------------
def _event_lines(events: pl.DataFrame, seq_ids: Sequence[str]) -> dict[str, list[tuple[str, str, str]]]:
    """seq_id -> [(level, match form, display line)] in file order (only the needed sequences)."""
    if not seq_ids or events.is_empty():
        return {}
    cols = ["seq_id", "line_no", "timestamp", "level", "logger", "method", "message"]
    have = [c for c in cols if c in events.columns]
    sub = events.filter(pl.col("seq_id").is_in(list(seq_ids))).select(have)
    if "line_no" in sub.columns:
        sub = sub.sort("seq_id", "line_no")
    # A real sequence has ~20k lines; evidence needs one line per template, an ERROR/WARN line or the
    # first lines.  The first few lines of each (level, logger, method) group hold all of those in
    # practice and bound the rows read into Python to (groups x cap) per sequence.
    sub = sub.filter(
        pl.int_range(pl.len()).over(["seq_id", "level", "logger", "method"]) < EVIDENCE_CANDIDATES_PER_GROUP
    )
    out: dict[str, list[tuple[str, str, str]]] = {}
    for row in sub.iter_rows(named=True):
        ts = row.get("timestamp")
        tod = ts.strftime("%H:%M:%S.%f")[:-3] if ts is not None else ""
        head = f"{row['level']} {row['logger']} {row['method']} - {row['message']}"
        out.setdefault(row["seq_id"], []).append((row["level"], head, f"{tod} {head}".strip()))
    return out


def pick_evidence(lines: Sequence[tuple[str, str, str]], templates: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` redacted, shortened lines: one per top template first, then ERROR/WARN lines,
    then the first lines."""
    if n <= 0 or not lines:
        return []
    chosen: list[int] = []
    for text in templates:
        if len(chosen) >= n:
            break
        pattern = template_regex(text)
        for i, (_, match_form, _) in enumerate(lines):
            if i not in chosen and pattern.search(match_form):
                chosen.append(i)
                break
    seen = {lines[i][1] for i in chosen}
    for wanted in (("ERROR", "FATAL"), ("WARN",), None):
        for i, (level, match_form, _) in enumerate(lines):
            if len(chosen) >= n:
                break
            if i not in chosen and match_form not in seen and (wanted is None or level in wanted):
                chosen.append(i)  # exact repeats of a chosen line are skipped: they tell nothing new
                seen.add(match_form)
    return [_short(redact(lines[i][2])) for i in sorted(chosen)]


def _short(text: str) -> str:
    return text if len(text) <= EVIDENCE_MAX_CHARS else text[: EVIDENCE_MAX_CHARS - 1] + "…"


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------
def _plot_labels(names: Sequence[str]) -> list[str]:
    out = []
    for n in names:
        label = redact(feature_label(n))
        out.append(label if len(label) <= PLOT_NAME_CHARS else label[: PLOT_NAME_CHARS - 1] + "…")
    return out


def write_plots(
    model: str, method: str, values: np.ndarray, X_rows: np.ndarray, names: Sequence[str], out_dir: Path, top: int
) -> list[Path]:
    """SHAP beeswarm summary + bar chart of mean |contribution| (headless, Agg), named after the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    mean_abs = np.abs(values).mean(axis=0)
    order = np.array([j for j in np.argsort(-mean_abs, kind="stable")[:top] if mean_abs[j] > 0], dtype=np.int64)
    if order.size == 0:  # nothing contributes: still draw the first columns rather than fail
        order = np.arange(min(top, values.shape[1]))
    labels = _plot_labels([names[j] for j in order])
    what = f"{model}: {method} on {values.shape[0]} held-out sequences (positive = toward anomalous)"
    summary = out_dir / f"shap_summary_{model}.png"
    plt.figure()
    shap.summary_plot(
        values[:, order], X_rows[:, order], feature_names=labels, max_display=top, show=False, plot_size=(13, 0.45 * len(order) + 2.0),
        rng=np.random.default_rng(0),  # the beeswarm's jitter: the same picture for the same values
    )
    plt.title(what, fontsize=10)
    plt.xlabel("contribution to the anomaly score (SHAP value, oriented)")
    plt.savefig(summary, dpi=110, bbox_inches="tight")
    plt.close("all")
    bar = out_dir / f"shap_bar_{model}.png"
    means = np.abs(values[:, order]).mean(axis=0)
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(order) + 2.0))
    ax.barh(range(len(order))[::-1], means, color="#d6604d")
    ax.set_yticks(range(len(order))[::-1], labels=labels, fontsize=9)
    ax.set_xlabel("mean |contribution| over the explained sequences")
    ax.set_title(what, fontsize=10)
    fig.savefig(bar, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [summary, bar]


# ------------------------------------------------------------------------------------------------
# Writers
# ------------------------------------------------------------------------------------------------
def _reasons(values: np.ndarray, row_x: np.ndarray, names: Sequence[str], stats: NormalStats, k: int) -> list[dict[str, Any]]:
    order = np.argsort(-values, kind="stable")[:k]
    out = []
    for j in order:
        lo, hi = stats.normal_range(int(j))
        out.append(
            {
                "name": redact(feature_label(names[j])),
                "feature": redact(names[j]),
                "value": float(row_x[j]),
                "normal_low": lo,
                "normal_high": hi,
                "contribution": float(values[j]),
            }
        )
    return out


def _write_jsonl(path: Path, entries: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(_finite(entry), ensure_ascii=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _metrics(y: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if precision == 0 or recall == 0 else None)
    roc = dm.roc_auc(y, scores)
    pr = dm.pr_auc(y, scores)
    return {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "roc_auc": float(roc) if roc.defined else None,
        "pr_auc": float(pr) if pr.defined else None,
        "pr_auc_chance": float(y.mean()) if y.size else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alert_rate": float(flagged.mean()) if flagged.size else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _per_error_case(
    meta: pl.DataFrame, y: np.ndarray, flagged: np.ndarray, canary_flagged: np.ndarray | None
) -> pl.DataFrame:
    frame = meta.select("test_case", "service", "anomaly_service").with_columns(
        pl.Series("positive", y), pl.Series("flagged", flagged)
    )
    if canary_flagged is not None:
        frame = frame.with_columns(pl.Series("canary_flagged", canary_flagged))
    aggs = [
        pl.len().alias("n_sequences"),
        pl.col("flagged").sum().alias("n_flagged"),
        pl.col("positive").sum().alias("n_positive"),
        (pl.col("flagged") & pl.col("positive")).sum().alias("n_caught"),
        pl.col("anomaly_service").cast(pl.Boolean).fill_null(False).sum().alias("n_target_sequences"),
        (pl.col("flagged") & pl.col("anomaly_service").cast(pl.Boolean).fill_null(False)).sum().alias("n_target_caught"),
    ]
    if canary_flagged is not None:
        aggs.append((pl.col("canary_flagged") & pl.col("positive")).sum().alias("canary_caught"))
        aggs.append(pl.col("canary_flagged").sum().alias("canary_flagged"))
    out = frame.group_by("test_case").agg(aggs).sort("test_case")
    out = out.with_columns(
        (pl.col("n_flagged") / pl.col("n_sequences")).alias("flagged_share"),
        pl.when(pl.col("n_positive") > 0).then(pl.col("n_caught") / pl.col("n_positive")).alias("recall"),
        pl.when(pl.col("n_target_sequences") > 0)
        .then(pl.col("n_target_caught") / pl.col("n_target_sequences"))
        .alias("target_recall"),
        (pl.col("n_caught") > 0).alias("caught"),
    )
    if canary_flagged is not None:
        out = out.with_columns(
            pl.when(pl.col("n_positive") > 0).then(pl.col("canary_caught") / pl.col("n_positive")).alias("canary_recall"),
            (pl.col("canary_flagged") / pl.col("n_sequences")).alias("canary_flagged_share"),
        )
    return out


@dataclass
class ModelReport:
    key: str
    bundle: str
    method: str
    shap_skipped: str | None
    shap_rows: int
    shap_rows_total: int
    fp_total: int
    fp_written: int
    fn_total: int
    fn_written: int
    nn_anomalies: int = 0
    nn_anomalies_total: int = 0
    nn_normals: int = 0
    nn_normals_total: int = 0
    files: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def explain_model(
    model: ModelInput,
    data: ExplainData,
    config: ExplainConfig,
    out_dir: Path,
    canary: ModelInput | None = None,
    progress: ProgressFn | None = None,
) -> ModelReport:
    """Write every artefact of one model; returns what was written and sampled."""
    say = progress or (lambda _msg: None)
    meta = data.meta
    label_col = LABEL_COLUMNS[config.label]
    test = data.rows("test")
    train = data.rows("train")
    if test.size == 0:
        msg = f"no held-out (test) sequences for model {model.key}; check the bundle's split and --root"
        raise ConfigError(msg)
    normal_all = ~meta["anomaly"].cast(pl.Boolean).fill_null(False).to_numpy()
    train_normals = train[normal_all[train]]
    if train_normals.size == 0:
        msg = f"no 'correct' training sequences for model {model.key}: cannot give normal ranges or neighbours"
        raise ConfigError(msg)
    test_meta = meta[test]
    services = test_meta["service"].to_list()
    y = test_meta[label_col].cast(pl.Boolean).fill_null(False).to_numpy()
    say(f"{model.key}: scoring {test.size} held-out sequences")
    scores = model.score_rows(test, services)
    thresholds = model.thresholds_of(services)
    flagged = scores >= thresholds
    stats = NormalStats(model.X[train_normals])
    rng = np.random.default_rng(config.seed)
    bg_n = train_normals.size if config.shap_background <= 0 else min(config.shap_background, train_normals.size)
    background = np.sort(rng.choice(train_normals, size=bg_n, replace=False))
    explainers: dict[int, Any] = {}
    files: list[Path] = []
    names = model.feature_names

    # --- SHAP on a stratified sample -----------------------------------------------------------------
    strata = [f"{int(a)}|{c}" for a, c in zip(y, test_meta["test_case"].to_list(), strict=True)]
    sample = stratified_sample(strata, config.shap_sample, config.seed)
    say(f"{model.key}: attributing {sample.size} sampled sequences")
    attr = attribute(model, test[sample], [services[i] for i in sample], stats, background, explainers)
    mean_abs = np.abs(attr.values).mean(axis=0) if sample.size else np.zeros(len(names))
    mean_signed = attr.values.mean(axis=0) if sample.size else np.zeros(len(names))
    ys = y[sample]
    mean_pos = attr.values[ys].mean(axis=0) if ys.any() else np.full(len(names), math.nan)
    mean_neg = attr.values[~ys].mean(axis=0) if (~ys).any() else np.full(len(names), math.nan)
    order = [j for j in np.argsort(-mean_abs, kind="stable")[: max(config.top_features, 1)] if mean_abs[j] > 0]
    top_rows = [
        {
            "rank": r + 1,
            "name": redact(feature_label(names[j])),
            "feature": redact(names[j]),
            "mean_abs_contribution": float(mean_abs[j]),
            "mean_contribution": float(mean_signed[j]),
            "mean_contribution_anomalous": float(mean_pos[j]),
            "mean_contribution_normal": float(mean_neg[j]),
            "normal_low": stats.normal_range(int(j))[0],
            "normal_high": stats.normal_range(int(j))[1],
        }
        for r, j in enumerate(order)
    ]
    csv_path = out_dir / f"{model.key}_top_features.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(top_rows[0]) if top_rows else ["rank", "name"])
        writer.writeheader()
        writer.writerows(top_rows)
    json_path = out_dir / f"{model.key}_top_features.json"
    json_path.write_text(
        json.dumps(_finite({"model": model.key, "method": attr.method, "n_explained": int(sample.size),
                            "features": top_rows}), indent=2, ensure_ascii=False),
        encoding="utf-8",
    )
    files += [csv_path, json_path]
    if attr.skipped_reason is None and sample.size:
        say(f"{model.key}: plots")
        files += write_plots(
            model.key, attr.method, attr.values, _dense_rows(model.X, test[sample]), names, out_dir, config.top_features
        )
    else:
        skipped = out_dir / f"{model.key}_shap_skipped.txt"
        skipped.write_text(redact(attr.skipped_reason or "no held-out sequences to explain") + "\n", encoding="utf-8")
        files.append(skipped)

    # --- FP / FN lists --------------------------------------------------------------------------------
    fp_idx = np.flatnonzero(flagged & ~y)
    fn_idx = np.flatnonzero(~flagged & y)
    fp_idx = fp_idx[np.argsort(-scores[fp_idx], kind="stable")]
    fn_idx = fn_idx[np.argsort(scores[fn_idx], kind="stable")]
    cap = config.max_list_entries
    fp_w = fp_idx if cap <= 0 else fp_idx[:cap]
    fn_w = fn_idx if cap <= 0 else fn_idx[:cap]
    listed = np.concatenate([fp_w, fn_w])
    say(f"{model.key}: {fp_idx.size} false positives, {fn_idx.size} false negatives")
    entries: list[dict[str, Any]] = []
    if listed.size:
        list_attr = attribute(model, test[listed], [services[i] for i in listed], stats, background, explainers)
        rows_x = _dense_rows(model.X, test[listed])
        seq_ids = test_meta["seq_id"].to_list()
        lines = _event_lines(data.events, [seq_ids[i] for i in listed]) if data.events is not None else {}
        for n, i in enumerate(listed):
            reasons = _reasons(list_attr.values[n], rows_x[n], names, stats, config.top_reasons)
            templates = [names[j][4:] for j in np.argsort(-list_attr.values[n])[: config.top_reasons] if names[j].startswith("tpl:")]
            entries.append(
                {
                    "seq_id": seq_ids[i],
                    "run": test_meta["run"][int(i)],
                    "service": services[i],
                    "test_case": test_meta["test_case"][int(i)],
                    "label": config.label,
                    "is_anomaly": bool(y[i]),
                    "score": float(scores[i]),
                    "threshold": float(thresholds[i]),
                    "method": list_attr.method,
                    "top_reasons": reasons,
                    "evidence": pick_evidence(lines.get(seq_ids[i], []), templates, config.evidence_lines),
                }
            )
    fp_path = out_dir / f"{model.key}_false_positives.jsonl"
    fn_path = out_dir / f"{model.key}_false_negatives.jsonl"
    _write_jsonl(fp_path, entries[: fp_w.size])
    _write_jsonl(fn_path, entries[fp_w.size :])
    files += [fp_path, fn_path]

    # --- per error case + metrics, next to the canary ---------------------------------------------
    canary_flagged = None
    canary_metrics = None
    if canary is not None:
        c_scores = canary.score_rows(test, services)
        canary_flagged = c_scores >= canary.thresholds_of(services)
        canary_metrics = _metrics(y, c_scores, canary_flagged)
    case_path = out_dir / f"{model.key}_per_error_case.csv"
    _per_error_case(test_meta, y, flagged, canary_flagged).write_csv(case_path)
    metrics = {
        "model": model.key,
        "bundle": model.bundle,
        "label": config.label,
        "split": data.split_fingerprint,
        "heldout": _metrics(y, scores, flagged),
        "canary": canary_metrics,
        "thresholds": model.thresholds,
    }
    metrics_path = out_dir / f"{model.key}_metrics.json"
    metrics_path.write_text(json.dumps(_finite(metrics), indent=2), encoding="utf-8")
    files += [case_path, metrics_path]

    report = ModelReport(
        key=model.key,
        bundle=model.bundle,
        method=attr.method,
        shap_skipped=attr.skipped_reason,
        shap_rows=int(sample.size),
        shap_rows_total=int(test.size),
        fp_total=int(fp_idx.size),
        fp_written=int(fp_w.size),
        fn_total=int(fn_idx.size),
        fn_written=int(fn_w.size),
        metrics=metrics["heldout"],
    )

    # --- nearest normals ----------------------------------------------------------------------------
    if model.key in config.nn_models:
        say(f"{model.key}: nearest normals")
        anomalies = np.flatnonzero(flagged)
        anomalies = anomalies[np.argsort(-scores[anomalies], kind="stable")]
        if config.nn_top_k > 0:
            anomalies = anomalies[: config.nn_top_k]
        ref_rows = train_normals
        if 0 < config.nn_normal_sample < ref_rows.size:
            ref_rows = np.sort(rng.choice(ref_rows, size=config.nn_normal_sample, replace=False))
        nn_path = out_dir / f"{model.key}_nn_mapping.csv"
        _write_nn(nn_path, model, meta, test, anomalies, scores, ref_rows, config.nn_neighbours)
        files.append(nn_path)
        report.nn_anomalies, report.nn_anomalies_total = int(anomalies.size), int(flagged.sum())
        report.nn_normals, report.nn_normals_total = int(ref_rows.size), int(train_normals.size)
    report.files = [p.name for p in files]
    return report


def _write_nn(
    path: Path,
    model: ModelInput,
    meta: pl.DataFrame,
    test: np.ndarray,
    anomalies: np.ndarray,
    scores: np.ndarray,
    ref_rows: np.ndarray,
    k: int,
) -> None:
    header = ["anomaly_seq_id", "anomaly_service", "anomaly_score", "rank", "normal_seq_id", "normal_service",
              "distance", "differing_features"]
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        if anomalies.size == 0:
            return
        res = nearest_normals(model.X[test[anomalies]], model.X[ref_rows], k)
        seq_ids = meta["seq_id"].to_list()
        svc = meta["service"].to_list()
        q_dense = _dense_rows(model.X, test[anomalies])
        for qi, ai in enumerate(anomalies):
            for rank in range(res.indices.shape[1]):
                ref = ref_rows[res.indices[qi, rank]]
                r_dense = _dense_rows(model.X, np.array([ref]))[0]
                diff = np.abs(q_dense[qi] - r_dense) / res.scale
                top = [j for j in np.argsort(-diff)[:3] if diff[j] > 0]
                differing = "; ".join(
                    f"{feature_label(model.feature_names[j])} ({q_dense[qi, j]:.4g} vs {r_dense[j]:.4g})" for j in top
                )
                writer.writerow(
                    [seq_ids[test[ai]], svc[test[ai]], f"{scores[ai]:.6g}", rank + 1, seq_ids[ref], svc[ref],
                     f"{res.distances[qi, rank]:.6g}", redact(differing)]
                )


#: File name patterns this module writes (and removes before a new run, so no stale model lingers).
ARTEFACT_PATTERNS = (
    MANIFEST, "shap_summary_*.png", "shap_bar_*.png", "*_top_features.csv", "*_top_features.json",
    "*_nn_mapping.csv", "*_false_positives.jsonl", "*_false_negatives.jsonl", "*_per_error_case.csv",
    "*_metrics.json", "*_shap_skipped.txt",
)


def clear_previous(out_dir: Path) -> int:
    """Delete the artefacts of an earlier run in ``out_dir`` (only files matching our patterns)."""
    n = 0
    for pattern in ARTEFACT_PATTERNS:
        for path in out_dir.glob(pattern):
            if path.is_file():
                path.unlink()
                n += 1
    return n


def explain_all(
    models: Sequence[ModelInput],
    data: ExplainData,
    config: ExplainConfig,
    out_dir: Path,
    *,
    canary: ModelInput | None = None,
    params: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Explain every model into ``out_dir`` and write ``explain_manifest.json``; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = clear_previous(out_dir)
    if removed:
        logger.info("removed %d artefacts of a previous `lo2 explain` run from %s", removed, out_dir)
    t0 = time.perf_counter()
    missing = services_without_detector([*models, *([canary] if canary is not None else [])], data.meta)
    if missing:
        left_out = tuple(sorted(set(data.left_out) | set(missing)))
        if not set(data.meta["service"].drop_nulls().unique().to_list()) - set(left_out):
            msg = f"no service is covered by every model: per-service bundles lack {missing}; explain them separately"
            raise ConfigError(msg)
        logger.warning("leaving out services %s: no detector for them in %s", list(missing), missing)
        data = ExplainData(data.meta, data.events, data.split_fingerprint, left_out)
    reports = [explain_model(m, data, config, out_dir, canary, progress) for m in models]
    test = data.rows("test")
    label_col = LABEL_COLUMNS[config.label]
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": reports[0].bundle if reports else None,
        "bundles": {r.key: r.bundle for r in reports},
        "split": data.split_fingerprint,
        "label": config.label,
        "models": [r.key for r in reports],
        "nn_models": [r.key for r in reports if r.key in config.nn_models],
        "canary": canary.bundle if canary is not None else None,
        "n_heldout": int(test.size),
        "services_left_out": {s: missing.get(s, []) for s in data.left_out},
        "n_heldout_anomalous": int(data.meta[label_col].cast(pl.Boolean).fill_null(False).to_numpy()[test].sum()),
        "params": dict(params or {}),
        "downsampled": any(
            r.shap_rows < r.shap_rows_total or r.fp_written < r.fp_total or r.fn_written < r.fn_total
            or r.nn_normals < r.nn_normals_total or r.nn_anomalies < r.nn_anomalies_total
            for r in reports
        ),
        "per_model": {
            r.key: {
                "bundle": r.bundle,
                "method": r.method,
                "shap_skipped": r.shap_skipped,
                "shap_rows": r.shap_rows,
                "shap_rows_total": r.shap_rows_total,
                "false_positives": {"total": r.fp_total, "written": r.fp_written},
                "false_negatives": {"total": r.fn_total, "written": r.fn_written},
                "nn": {"anomalies": r.nn_anomalies, "anomalies_total": r.nn_anomalies_total,
                       "normals": r.nn_normals, "normals_total": r.nn_normals_total},
                "heldout": r.metrics,
                "files": r.files,
            }
            for r in reports
        },
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    (out_dir / MANIFEST).write_text(json.dumps(_finite(manifest), indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest
