"""Training: split by run, fit the feature spec and the models on training runs, build bundles.

Why each step is where it is (the LogLead demo got each of them wrong):
- Runs are split whole, by run epoch (``batch.splits``): no sequence of a held-out run is seen by
  anything that is fitted: not the feature spec (vocabulary, templates), not the detectors, not
  the thresholds.
- Unsupervised detectors (IsolationForest, HST, LOF, ...) learn only the ``correct`` sequences of
  the training runs; supervised ones learn the chosen label on the training runs.
- The alert threshold is the ``threshold_quantile`` of the *validation* runs' ``correct`` scores
  (no contamination guessing, no in-sample quantile).
- Metrics are computed on the test runs only; the bundle records them with the split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from batch.registry import ModelSpec, get_spec
from batch.splits import RunSplit, split_runs
from shared import detection_metrics as dm
from shared.bundle import ALL, ModelBundle, bundle_inputs, score
from shared.catalog import target_service
from shared.errors import ConfigError, Lo2Error
from shared.features import CANARY_COLUMNS as SHARED_CANARY_COLUMNS

log = logging.getLogger(__name__)

#: CLI label names → column of the sequence metadata.
LABELS: Mapping[str, str] = {"paper": "anomaly", "service": "anomaly_service"}
SplitName = Literal["train", "validation", "test"]
#: Dense features that describe *how* a sequence behaves regardless of which templates it uses
#: (level shares, error-code and stack rates, rare/unseen template shares, failure words).  The
#: IsolationForest uses only these by default: it learns normal data alone and isolates by random
#: splits, so per-template / per-error-code columns either never vary in normal data (invisible
#: to it) or, varying from service to service, drown the few columns that carry the anomaly.
AGGREGATE_PREFIXES: tuple[str, ...] = ("share:", "level:", "rate:")
#: Excluded although it matches a prefix: events per second measures traffic volume and duration
#: (the canary's territory, different in every v2 run), not how the service behaves.
AGGREGATE_EXCLUDED: frozenset[str] = frozenset({"rate:events_per_s"})
#: Raw sequence columns (the canary's) that ``--if-numeric`` may append, in canary column order:
#: those of ``shared.features.canary_features`` (one definition, or the column counts drift apart).
CANARY_COLUMNS: tuple[str, ...] = SHARED_CANARY_COLUMNS
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how (the flags of ``lo2 train``)."""

    models: tuple[str, ...] = ("if",)
    seed: int = 42
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    #: Fraction of validation ``correct`` scores below the alert threshold (0.99 → ~1 % alerts).
    threshold_quantile: float = 0.99
    #: Label supervised models learn: ``anomaly_service`` (service-aware) or ``anomaly`` (paper).
    fit_label: str = "anomaly_service"
    per_service: bool = False
    services: tuple[str, ...] | None = None
    model_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    precision_at: tuple[int, ...] = (10,)
    fp_alphas: tuple[float, ...] = (0.01,)
    #: How many numeric features get a PSI reference histogram in the bundle.
    top_features: int = 10
    #: Runs featurized per chunk (bounds peak memory; see ``featurize_in_chunks``).
    chunk_runs: int = 8
    #: Input kind of the IsolationForest (``--if-item``) and raw columns appended (``--if-numeric``).
    if_input: str = "aggregates"
    if_extra_columns: tuple[str, ...] = ()
    #: Keyword arguments of ``fit_feature_spec``: pass ``shared.features.feature_options(settings)``
    #: so LO2_FEATURE_* / Drain / sequence-policy settings reach the spec (empty = its defaults).
    feature_options: Mapping[str, Any] = field(default_factory=dict)
    #: Token bundles: at most this many training normals in the explainer's reference set / statistics
    #: (4096 hash columns per row; the dense inputs keep the explainer's defaults).
    token_explainer_reference: int = 500
    token_explainer_stats_rows: int = 2000

    def __post_init__(self) -> None:
        for key in self.models:
            get_spec(key)
        if not 0.0 < self.threshold_quantile < 1.0:
            msg = f"threshold_quantile={self.threshold_quantile}: expected a fraction in (0, 1), e.g. 0.99"
            raise ConfigError(msg)
        bad = [c for c in self.if_extra_columns if c not in CANARY_COLUMNS]
        if bad:
            msg = f"--if-numeric columns {bad}: expected some of {list(CANARY_COLUMNS)}"
            raise ConfigError(msg)
        if self.fit_label not in LABELS.values():
            msg = f"fit_label={self.fit_label!r}: expected one of {sorted(LABELS.values())}"
            raise ConfigError(msg)


@dataclass
class Featurized:
    """Every sequence featurized once with a spec fitted on the training runs only."""

    split: RunSplit
    spec: Any
    meta: pl.DataFrame  #: one row per sequence, with a ``split`` column
    inputs: dict[str, Any]  #: input kind → matrix (rows aligned with ``meta``)
    feature_names: list[str]

    def rows(self, name: SplitName, service: str | None = None) -> np.ndarray:
        mask = (self.meta["split"] == name).to_numpy()
        if service is not None:
            mask &= (self.meta["service"] == service).to_numpy()
        return np.flatnonzero(mask)

    def labels(self, column: str) -> np.ndarray:
        return self.meta[column].cast(pl.Boolean).fill_null(False).to_numpy().astype(bool)


def threshold_percentile_to_quantile(value: float) -> float:
    """``--if-threshold-percentile``: the reference accepted 99.5 or 0.995; both mean 0.995."""
    quantile = value / 100.0 if value > 1.0 else value
    if not 0.0 < quantile < 1.0:
        msg = f"--if-threshold-percentile {value}: expected a percentile in (0, 100) or a fraction in (0, 1)"
        raise ConfigError(msg)
    return quantile


Events = pl.DataFrame | pl.LazyFrame


def _collect(frame: Events) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def filter_services(events: Events, services: Sequence[str] | None) -> Events:
    """Keep the events of ``services`` (all when None); unknown names are a clear error.

    Works on a LazyFrame (``pl.scan_parquet``) without materialising the events.
    """
    if not services:
        return events
    present = set(_collect(events.select(pl.col("service").unique()))["service"].to_list())
    missing = [s for s in services if s not in present]
    if missing:
        msg = f"services {missing} are not in the data; present: {sorted(present)}"
        raise ConfigError(msg)
    return events.filter(pl.col("service").is_in(list(services)))


def split_events(events: Events, config: TrainConfig) -> RunSplit:
    """Whole runs to train / validation / test in run-epoch order."""
    runs = _collect(events.select("run", "run_epoch", "test_case").unique())
    return split_runs(runs, config.fractions, config.seed)


def featurize_in_chunks(events: Events, spec: Any, runs: Sequence[str], chunk_runs: int) -> Any:
    """``featurize_events`` over ``chunk_runs`` runs at a time, stacked (rows in chunk order).

    Sequences never span runs (both policies key by run), so chunking gives the same rows as one
    call, while the peak memory is that of one chunk's events instead of all events.
    """
    import dataclasses

    import scipy.sparse as sp

    from shared.features import featurize_events

    if chunk_runs < 1:
        msg = f"chunk_runs={chunk_runs}: expected >= 1 run per featurization chunk"
        raise ConfigError(msg)
    ordered = list(runs)
    parts = [
        featurize_events(events.filter(pl.col("run").is_in(ordered[i : i + chunk_runs])), spec)
        for i in range(0, len(ordered), chunk_runs)
    ]
    if len(parts) == 1:
        return parts[0]
    return dataclasses.replace(
        parts[0],
        meta=pl.concat([p.meta for p in parts], how="vertical_relaxed"),
        X=np.vstack([p.X for p in parts]),
        X_tokens=sp.vstack([p.X_tokens for p in parts]).tocsr(),
    )


def featurize(
    events: Events, split: RunSplit, chunk_runs: int = 8, feature_options: Mapping[str, Any] | None = None
) -> Featurized:
    """Fit the feature spec on the training runs' events; featurize every sequence with it.

    ``events`` may be lazy (``pl.scan_parquet``): only ``chunk_runs`` runs' events are featurized
    at a time, so memory stays flat as the number of runs grows.  ``feature_options`` are the
    keyword arguments of ``fit_feature_spec`` (``shared.features.feature_options(settings)``: top
    templates, min support, hash dims, Drain parameters, sequence policy); None = its defaults.
    """
    from shared.features import canary_features, fit_feature_spec

    spec = fit_feature_spec(
        events.filter(pl.col("run").is_in(list(split.train_runs))), **dict(feature_options or {})
    )
    runs = [*split.train_runs, *split.validation_runs, *split.test_runs]
    matrix = featurize_in_chunks(events, spec, runs, chunk_runs)
    meta = split.label(matrix.meta)
    return Featurized(
        split=split,
        spec=spec,
        meta=meta,
        inputs=make_inputs(matrix.X, matrix.X_tokens, canary_features(matrix.meta)[0], matrix.feature_names),
        feature_names=list(matrix.feature_names),
    )


def aggregate_columns(feature_names: Sequence[str]) -> list[int]:
    """Indices of the aggregate features (see :data:`AGGREGATE_PREFIXES`)."""
    return [
        j
        for j, name in enumerate(feature_names)
        if name.startswith(AGGREGATE_PREFIXES) and name not in AGGREGATE_EXCLUDED
    ]


def make_inputs(X: np.ndarray, X_tokens: Any, canary: np.ndarray, feature_names: Sequence[str]) -> dict[str, Any]:
    """Every input kind of the registry from one featurization (rows aligned)."""
    return {
        "numeric": X,
        "aggregates": X[:, aggregate_columns(feature_names)],
        "tokens": X_tokens,
        "canary": canary,
    }


def input_names(kind: str, feature_names: Sequence[str]) -> list[str]:
    """Column names of an input kind's matrix (empty for token hashes)."""
    base, _, extra = kind.partition("+")
    names: list[str] = {
        "numeric": list(feature_names),
        "aggregates": [feature_names[j] for j in aggregate_columns(feature_names)],
        "canary": [f"canary:{c}" for c in CANARY_COLUMNS],
    }.get(base, [])
    return names + [f"canary:{c}" for c in extra.split(",") if c]


def input_matrix(inputs: Mapping[str, Any], kind: str) -> Any:
    """The matrix of an input kind: ``numeric``, ``tokens``, ``canary``, or ``<base>+<col>,<col>``.

    The ``+`` form appends raw canary columns (``--if-numeric``) to the base matrix, dense or
    sparse, so a bundle trained that way is scored with exactly the same columns.
    """
    import scipy.sparse as sp

    base, _, extra = kind.partition("+")
    if base not in inputs or inputs[base] is None:
        msg = f"input kind {kind!r}: no {base!r} features (have {sorted(inputs)})"
        raise ConfigError(msg)
    X = inputs[base]
    if not extra:
        return X
    names = [c for c in extra.split(",") if c]
    bad = [c for c in names if c not in CANARY_COLUMNS]
    if bad:
        msg = f"input kind {kind!r}: unknown appended columns {bad}; expected some of {list(CANARY_COLUMNS)}"
        raise ConfigError(msg)
    cols = np.asarray(inputs["canary"])[:, [CANARY_COLUMNS.index(c) for c in names]]
    if sp.issparse(X):
        return sp.hstack([X, sp.csr_matrix(cols)]).tocsr()
    return np.hstack([np.asarray(X), cols])


def inputs_of_bundle(bundle: ModelBundle, inputs: Mapping[str, Any], feature_names: Sequence[str]) -> Any:
    """The bundle's input matrix from :func:`make_inputs` output, columns chosen by the bundle's names.

    ``shared.bundle.bundle_inputs`` does the selection (the one used live as well), so a bundle is
    always scored on the columns it was trained on, whatever the current default column choice.
    """
    return bundle_inputs(
        bundle, inputs["numeric"], inputs.get("tokens"), inputs.get("canary"), feature_names=feature_names
    )


def inputs_for_bundle(bundle: ModelBundle, events: Events) -> tuple[pl.DataFrame, Any]:
    """Featurize ``events`` with the bundle's own spec (never refitted): (meta, the bundle's input matrix)."""
    from shared.features import canary_features, featurize_events

    matrix = featurize_events(events, bundle.feature_spec)
    X = bundle_inputs(
        bundle, matrix.X, matrix.X_tokens, canary_features(matrix.meta)[0], feature_names=matrix.feature_names
    )
    return matrix.meta, X


def _require_groups(bundle: ModelBundle, services: Sequence[str]) -> None:
    """A per-service bundle scores only the services it has a detector for: anything else is a clear
    error naming them (and why training skipped them), never a silently missing score."""
    if not bundle.per_service:
        return
    missing = sorted(set(services) - set(bundle.detectors))
    if missing:
        skipped = bundle.training.get("skipped_groups") or {}
        why = "; ".join(f"{s}: {skipped[s]}" for s in missing if s in skipped)
        msg = (
            f"bundle {bundle.name or bundle.model_key} has per-service models for {sorted(bundle.detectors)} only; "
            f"cannot score services {missing}{f' (skipped in training: {why})' if why else ''}; "
            f"pass --services {' '.join(sorted(bundle.detectors))}"
        )
        raise ConfigError(msg)


def score_events(bundle: ModelBundle, events: Events) -> pl.DataFrame:
    """Sequence metadata plus ``score`` and ``alert`` from a loaded bundle (scores only, no fit)."""
    meta, X = inputs_for_bundle(bundle, events)
    services = meta["service"].to_list()
    _require_groups(bundle, services)
    scores = score(bundle, X, services if bundle.per_service else None)
    thresholds = [bundle.threshold_for(s if bundle.per_service else None) for s in services]
    return meta.with_columns(
        pl.Series("score", scores, dtype=pl.Float64),
        pl.Series("threshold", thresholds, dtype=pl.Float64),
    ).with_columns((pl.col("score") >= pl.col("threshold")).alias("alert"))


# --- metrics and references -------------------------------------------------------------------


def _metric_dict(values: Mapping[str, float]) -> dict[str, float | None]:
    """JSON-safe: NaN (undefined) becomes None."""
    return {k: (None if math.isnan(float(v)) else float(v)) for k, v in values.items()}


def targeted_services(meta: pl.DataFrame) -> list[str]:
    """Services of ``meta`` that one of its error test cases targets (``shared.catalog``), sorted."""
    cases = meta["test_case"].unique().to_list()
    return sorted({t for t in (target_service(c) for c in cases) if t} & set(meta["service"].unique().to_list()))


def test_metrics(
    data: Featurized, scores: np.ndarray, threshold: np.ndarray, config: TrainConfig
) -> dict[str, Any]:
    """Ranking and threshold metrics on the test runs, for the paper and the service-aware label.

    ``service_targeted`` repeats the service label on the services a test error case targets: a
    service no error targets is negative by definition under that label, and pooling it in
    rewards telling services apart (``batch.evaluate.TARGETED``).
    """
    test = data.rows("test")
    out: dict[str, Any] = {"n_test_sequences": int(test.size)}
    unscored = np.isnan(scores[test])  # per service: rows of a skipped service (no detector)
    if unscored.any():
        out["n_test_sequences_unscored"] = int(unscored.sum())
        test = test[~unscored]
    test_meta = data.meta[test]
    targeted = np.isin(test_meta["service"].to_numpy(), targeted_services(test_meta))
    groups = [(name, column, np.ones(test.size, dtype=bool)) for name, column in LABELS.items()]
    if targeted.any():
        groups.append(("service_targeted", LABELS["service"], targeted))
    for name, column, keep in groups:
        if column not in data.meta.columns:
            continue
        y = data.labels(column)[test][keep]
        s = scores[test][keep]
        values: dict[str, float] = dict(dm.ranking_metrics(y, s, ks=config.precision_at, alphas=config.fp_alphas))
        tm = dm.threshold_metrics(y, s - threshold[test][keep], 0.0)
        values.update(
            f1=tm.f1, precision=tm.precision, recall=tm.recall, alert_rate=tm.alert_rate,
            false_positive_rate=tm.false_positive_rate,
        )
        out[name] = _metric_dict(values)
    return out


def top_feature_references(data: Featurized, scores: np.ndarray, k: int, kind: str) -> dict[str, Any]:
    """PSI references of the ``k`` numeric features that move most with the score.

    Chosen by |Spearman correlation| with the score over the validation runs (model-agnostic,
    cheap), and histogrammed over the training runs' ``correct`` sequences: what "normal" looked
    like for the features that drive the score.
    """
    from scipy.stats import spearmanr

    names = input_names(kind, data.feature_names)
    if not names or k <= 0:
        return {}
    X = input_matrix(data.inputs, kind)
    # Only named columns: token hashes (``tokens+<col>``) have no names and come first, so the
    # named ones are the last len(names); "index" stays the column of the full input matrix.
    offset = X.shape[1] - len(names)
    named = X[:, offset:]
    dense = named.toarray() if hasattr(named, "toarray") else np.asarray(named, dtype=np.float64)
    val = data.rows("validation")
    val = val[~np.isnan(scores[val])]  # rows of a skipped service (per service) have no score
    normal_train = data.rows("train")[~data.labels("anomaly")[data.rows("train")]]
    strength = np.zeros(dense.shape[1])
    for j in range(dense.shape[1]):
        column = dense[val, j]
        if np.ptp(column) > 0 and np.ptp(scores[val]) > 0:
            rho = spearmanr(column, scores[val]).statistic
            strength[j] = 0.0 if np.isnan(rho) else abs(float(rho))
    chosen = [int(j) for j in np.argsort(-strength)[:k] if strength[j] > 0]
    out: dict[str, Any] = {}
    for j in chosen:
        ref = dm.psi_reference(dense[normal_train, j])
        out[names[j]] = {"index": offset + j, "spearman": float(strength[j]), **ref.as_dict()}
    return out


def _json_safe_edges(reference: dm.PsiReference) -> dict[str, Any]:
    # JSON has no infinity: the open ends are written as null and read back as ±inf.
    edges: list[float | None] = [None if math.isinf(e) else e for e in reference.edges]
    return {"edges": edges, "counts": list(reference.counts)}


def calibrate_threshold(normal_scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of validation normal scores, made safe for tied scores.

    Alerts fire at ``score >= threshold``.  Detectors such as Rarity or OOV give most normal
    sequences the *same* score (0); the quantile then equals that score and every sequence would
    alert.  When ties at the threshold would alert clearly more normals than ``1 - quantile``
    (more than one sequence's worth), the threshold moves just above the tied value.
    """
    value = dm.threshold_from_quantile(normal_scores, quantile)
    if not value.defined:
        msg = f"cannot calibrate a threshold: {value.reason}"
        raise ConfigError(msg)
    threshold = float(value)
    n = normal_scores.size
    if float(np.mean(normal_scores >= threshold)) > (1.0 - quantile) + 1.0 / n:
        threshold = float(np.nextafter(threshold, np.inf))
    return threshold


def explainer_feature_names(kind: str, data: Featurized) -> list[str]:
    """Column names the explainer state describes: the bundle's dense columns, or for token inputs
    ``tok:<a training token hashed there>`` per hash bucket plus any appended canary columns."""
    base, _, extra = kind.partition("+")
    if base == "tokens":
        return [*data.spec.token_feature_names(), *(f"canary:{c}" for c in extra.split(",") if c)]
    return input_names(kind, data.feature_names)


def explainer_state(
    data: Featurized, kind: str, normal: np.ndarray, config: TrainConfig, service: str | None = None
) -> Any:
    """The per-anomaly explainer's state from the training runs' ``correct`` rows of one group.

    Precomputed here once so that the worker explains an alert in milliseconds
    (``shared.explain.explain_sequence(bundle, x, evidence, service=...)``).  Built with the feature
    spec (``build_explainer_state_for_spec``) so explanations show readable names (template text,
    ``ERR12007 UNAUTHORIZED_CLIENT``) and evidence lines are matched by template id.  Token inputs
    get a smaller reference set (their rows have ``hash_dims`` columns); ``service`` restricts the
    normals to that service (per-service bundles: one state per service group).
    """
    from shared.explain import build_explainer_state_for_spec

    names = explainer_feature_names(kind, data)
    rows = data.rows("train", service)
    rows = rows[normal[rows]]
    if rows.size == 0:
        log.warning("no training normals for the explainer state of group %s", service or ALL)
        return None
    X = input_matrix(data.inputs, kind)[rows]
    seq_ids = data.meta["seq_id"].to_numpy()[rows].tolist()
    sizes: dict[str, int] = {}
    if kind.partition("+")[0] == "tokens":
        sizes = {"max_reference": config.token_explainer_reference, "max_stats_rows": config.token_explainer_stats_rows}
    return build_explainer_state_for_spec(data.spec, X, seq_ids, feature_names=names, seed=config.seed, **sizes)


def explainer_states(data: Featurized, kind: str, normal: np.ndarray, config: TrainConfig, groups: Sequence[str]) -> Any:
    """One state for a pooled bundle, ``{service: state}`` for a per-service bundle.

    Per service because "normal" differs by service (a token service logs other templates than a
    user service): the ranges and nearest normals shown for a token-service alert come from
    token-service normals only, matching the per-service detector that raised it.
    """
    if list(groups) == [ALL]:
        return explainer_state(data, kind, normal, config)
    states = {group: explainer_state(data, kind, normal, config, group) for group in groups}
    return {group: state for group, state in states.items() if state is not None} or None


# --- fitting ----------------------------------------------------------------------------------


def fit_model(spec: ModelSpec, data: Featurized, config: TrainConfig) -> ModelBundle:
    """Fit one registry model (pooled or per service), calibrate thresholds, measure, bundle it.

    Per service, a group that cannot be fitted (e.g. a supervised model for ``key``, which no error
    case targets, so its training rows hold one class only; or a service without validation
    ``correct`` rows) is skipped with a warning and recorded in ``training["skipped_groups"]``
    (with the reason) and ``metrics["skipped_groups"]``, like ``lo2 evaluate --per-service`` does:
    one unusable service should not cost the models of all the others.  The bundle then has no
    detector for that service, so scoring its rows is an ``unknown_service`` error, never a guess;
    the test metrics cover the fitted services only.  A pooled model that cannot be fitted, or a
    per-service model no group of which can, is a one-line ``ConfigError`` naming the model.
    """
    X = input_matrix(data.inputs, spec.input_kind)
    groups = sorted(data.meta["service"].unique().to_list()) if config.per_service else [ALL]
    params = dict(config.model_params.get(spec.key, {}))
    normal = ~data.labels("anomaly")
    fit_labels = data.labels(config.fit_label if spec.supervised else "anomaly")
    detectors: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    score_refs: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    scores = np.full(data.meta.height, np.nan)
    row_thresholds = np.full(data.meta.height, np.nan)
    for group in groups:
        service = None if group == ALL else group
        train, val = data.rows("train", service), data.rows("validation", service)
        group_rows = np.arange(data.meta.height) if service is None else np.flatnonzero(
            (data.meta["service"] == service).to_numpy()
        )
        try:
            if train.size == 0 or not normal[val].any():
                msg = "no training rows or no validation 'correct' rows"
                raise ConfigError(msg)
            detector = spec.build(config.seed, params).fit(X[train], fit_labels[train].astype(int))
            group_scores = np.asarray(detector.score(X[group_rows]), dtype=np.float64).reshape(-1)
            val_normal_scores = group_scores[np.isin(group_rows, val[normal[val]])]
            threshold = calibrate_threshold(val_normal_scores, config.threshold_quantile)
        except (ValueError, Lo2Error) as exc:
            # ValueError: what detectors raise for unusable training data (one class only, too few rows).
            reason = f"model {spec.key!r}, group {group!r}: {exc}"
            if service is None:
                raise ConfigError(reason) from exc
            log.warning("%s; skipping service %s (its rows cannot be scored by this bundle)", reason, group)
            skipped[group] = str(exc)
            continue
        scores[group_rows] = group_scores
        detectors[group] = detector
        thresholds[group] = float(threshold)
        row_thresholds[group_rows] = float(threshold)
        score_refs[group] = _json_safe_edges(dm.psi_reference(val_normal_scores))
        log.info("%s [%s]: threshold %.6g at q=%.4f of %d validation normals", spec.key, group,
                 float(threshold), config.threshold_quantile, val_normal_scores.size)
    if not detectors:
        msg = f"model {spec.key!r}: no service group could be fitted: {skipped}"
        raise ConfigError(msg)
    metrics = test_metrics(data, scores, row_thresholds, config)
    if skipped:
        metrics["skipped_groups"] = sorted(skipped)
    train_rows = data.rows("train")
    val_rows = data.rows("validation")
    scored = ~np.isnan(scores)  # rows of skipped services have no score
    train_normal_scores = scores[train_rows][(normal & scored)[train_rows]]
    val_normal_scores = scores[val_rows][(normal & scored)[val_rows]]
    psi = float(dm.population_stability_index(train_normal_scores, val_normal_scores))
    metrics["psi_train_vs_holdout"] = None if math.isnan(psi) else psi
    metrics["threshold_quantile"] = config.threshold_quantile
    features = top_feature_references(data, scores, config.top_features, spec.input_kind)
    for ref in features.values():
        ref["edges"] = [None if math.isinf(e) else e for e in ref["edges"]]
    explainer = explainer_states(data, spec.input_kind, normal, config, [g for g in groups if g in detectors])
    return ModelBundle(
        model_key=spec.key,
        input_kind=spec.input_kind,
        detectors=detectors,
        thresholds=thresholds,
        feature_spec=data.spec,
        feature_names=input_names(spec.input_kind, data.feature_names),
        sequence_policy=data.spec.policy.to_dict(),
        threshold_quantile=config.threshold_quantile,
        metrics=metrics,
        reference={"scores": score_refs, "features": features},
        explainer_state=explainer,
        training={
            "seed": config.seed,
            "params": {**spec.defaults, **params},
            "supervised": spec.supervised,
            "fit_label": config.fit_label if spec.supervised else "correct sequences only",
            "split": data.split.as_dict(),
            "n_train_sequences": int(train_rows.size),
            "n_train_normal_sequences": int(normal[train_rows].sum()),
            "n_validation_sequences": int(val_rows.size),
            "services": sorted(data.meta["service"].unique().to_list()),
            "skipped_groups": skipped,
        },
    )


@dataclass
class TrainResult:
    """What ``train`` produced: one bundle per model, the split and the featurized data."""

    bundles: dict[str, ModelBundle]
    data: Featurized


def train(events: Events, config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Split, featurize on training runs, fit every configured model; returns unsaved bundles."""
    events = filter_services(events, config.services)
    split = split_events(events, config)
    if progress:
        progress("featurize")
    data = featurize(events, split, config.chunk_runs, config.feature_options)
    bundles: dict[str, ModelBundle] = {}
    for key in config.models:
        if progress:
            progress(key)
        bundles[key] = fit_model(model_spec(key, config), data, config)
    return TrainResult(bundles, data)


def model_spec(key: str, config: TrainConfig) -> ModelSpec:
    """The registry spec of ``key``; the IsolationForest's input follows ``if_input`` / ``if_extra_columns``
    (``--if-item`` / ``--if-numeric``), which ``train`` ignored before (only the CLI applied them)."""
    import dataclasses

    spec = get_spec(key)
    if key != "if":
        return spec
    extra = ",".join(config.if_extra_columns)
    kind: Any = config.if_input + (f"+{extra}" if extra else "")  # "<base>+<canary cols>" (see input_matrix)
    return dataclasses.replace(spec, input_kind=kind)


def predictions_frame(data: Featurized, bundle: ModelBundle) -> pl.DataFrame:
    """Per-sequence scores of a freshly trained bundle, in the same columns as ``score_events``.

    Rows of a service a per-service bundle skipped in training (``training["skipped_groups"]``) keep
    their place with a null score, threshold and alert: they were not scored, and 0 would be a lie.
    """
    X = inputs_of_bundle(bundle, data.inputs, data.feature_names)
    services = data.meta["service"].to_list()
    if bundle.per_service:
        fitted = np.isin(np.asarray(services, dtype=object), list(bundle.detectors))
        rows = np.flatnonzero(fitted)
        scores = np.full(len(services), np.nan)
        thresholds = np.full(len(services), np.nan)
        kept = [services[i] for i in rows]
        scores[rows] = score(bundle, X[rows], kept)
        thresholds[rows] = [bundle.threshold_for(s) for s in kept]
    else:
        scores = score(bundle, X, None)
        thresholds = np.full(len(services), bundle.threshold_for(None))
    return data.meta.with_columns(  # NaN → null: polars compares NaN >= NaN as true
        pl.Series("score", scores, dtype=pl.Float64, nan_to_null=True),
        pl.Series("threshold", thresholds, dtype=pl.Float64, nan_to_null=True),
    ).with_columns((pl.col("score") >= pl.col("threshold")).alias("alert"))
