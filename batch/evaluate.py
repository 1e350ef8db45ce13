"""Honest evaluation: whole runs held out, thresholds from validation normals, several seeds.

Why it is built this way (the LogLead numbers it replaces were inflated, reference §8–§9):

* **Whole runs held out, in epoch order** (:func:`batch.splits.split_runs`): no sequence of a test
  run is seen by anything that is fitted: not the feature spec (vocabulary, templates, scalers),
  not the models, not the thresholds.  The feature spec is fitted on the training runs' events only.
* **Thresholds are quantiles of validation ``correct`` scores**, so the alert rate on normal data is
  chosen, not discovered on the test set.  They are calibrated by ``lo2 train``'s own function
  (:func:`batch.train.calibrate_threshold`, safe for tied scores), so an evaluated threshold is the
  one a trained bundle gets.
* **The leakage canary runs next to every model**: a model on sequence length and duration alone.
  A detector that does not clearly beat it has learnt the LO2 length/duration confound, not errors.
* **Two labels**: the paper's ``anomaly`` (every sequence of an error test case, even of services
  the error never touches) and the service-aware ``anomaly_service`` (only the service the error
  targets).  Results are reported per service, because one pooled number hides that untargeted
  services run normally.
* **No accuracy**: ROC-AUC, PR-AUC (next to its chance level, the anomaly share), Precision@k,
  FP-rate@α (reference definition and the false-alarm share of the alerts), F1 and alert rate at
  the calibrated threshold, and caught/missed per error case.  Mean ± std over seeds.

Unsupervised models learn from the ``correct`` sequences of the training runs (one fit serves both
labels); supervised models are fitted once per label on the training runs.  A model that cannot be
fitted (e.g. a supervised model whose training runs hold one class only) is recorded as a failure
and the evaluation goes on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from batch.registry import ModelSpec, available, get_spec
from batch.splits import RunSplit, SplitName, SplitOrder, split_runs
from batch.train import (
    Events,
    Featurized,
    calibrate_threshold,
    featurize,
    filter_services,
    input_matrix,
    targeted_services,
)
from shared import detection_metrics as dm
from shared.bundle import CANARY_KEY
from shared.catalog import target_service
from shared.errors import ConfigError, Lo2Error
from shared.tables import checked_parquet_schema

log = logging.getLogger(__name__)

#: CLI label names → column of the sequence table.
LABEL_COLUMNS: Mapping[str, str] = {"paper": "anomaly", "service": "anomaly_service"}
LabelChoice = Literal["paper", "service", "both"]
#: The service group that pools every service.
ALL = "all"
#: The service group that pools the services some test error case targets (the population of the
#: service-aware label's done-when): a never-targeted service (``key``) is negative by definition
#: and only lets a model score by telling services apart, which is not anomaly detection.
TARGETED = "targeted"
#: Groups that pool services; every other ``ResultRow.service`` is one service.
POOLED_GROUPS: tuple[str, ...] = (ALL, TARGETED)
#: Registry key of the leakage canary, evaluated next to every model.
CANARY = CANARY_KEY
#: Models of ``lo2 evaluate`` without --models: the IF and the reference's default registry keys.
DEFAULT_MODELS: tuple[str, ...] = (
    "if",
    "event_lr_words",
    "event_dt_trigrams",
    "sequence_lr_numeric",
    "sequence_shap_lr_words",
)
#: Metrics in table order (``precision_at_*``/``fp_rate_at_*`` are inserted per k/α).
THRESHOLD_METRICS = ("f1", "precision", "recall", "alert_rate", "false_positive_rate", "threshold")

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and how (the flags of ``lo2 evaluate``)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    seeds: tuple[int, ...] = (42, 43, 44)
    labels: tuple[str, ...] = ("anomaly", "anomaly_service")
    services: tuple[str, ...] | None = None
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_order: SplitOrder = "chronological"
    precision_at: tuple[int, ...] = (10,)
    fp_alphas: tuple[float, ...] = (0.01,)
    #: Quantile of validation ``correct`` scores used as the alert threshold (fraction, 0.99 = 99 %).
    threshold_quantile: float = 0.99
    #: Extra parameters per registry key (e.g. ``{"if": {"n_estimators": 400}}``).
    model_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: One detector and threshold per service (scores then become margins over the threshold).
    per_service: bool = False
    #: Keyword arguments of ``fit_feature_spec`` (``shared.features.feature_options(settings)``), so
    #: the evaluated features are the ones ``lo2 train`` builds with the same settings.
    feature_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.models:
            get_spec(key)
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed, got none")
        bad = [c for c in self.labels if c not in LABEL_COLUMNS.values()]
        if bad or not self.labels:
            raise ConfigError(f"labels {list(self.labels)}: expected some of {list(LABEL_COLUMNS.values())}")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ConfigError(
                f"threshold_quantile={self.threshold_quantile}: expected a fraction in (0, 1), e.g. 0.99"
            )
        if any(k < 1 for k in self.precision_at):
            raise ConfigError(f"precision_at {list(self.precision_at)}: expected k >= 1")
        if any(not 0.0 < a <= 1.0 for a in self.fp_alphas):
            raise ConfigError(f"fp_alphas {list(self.fp_alphas)}: expected fractions in (0, 1]")

    @property
    def all_models(self) -> tuple[str, ...]:
        """The models plus the canary (always evaluated, once)."""
        return (*self.models, CANARY) if CANARY not in self.models else self.models

    def metric_names(self) -> list[str]:
        names = ["roc_auc", "pr_auc", "anomaly_share"]
        names += [f"precision_at_{k}" for k in self.precision_at]
        for a in self.fp_alphas:
            names += [f"fp_rate_at_{a}", f"false_alarm_share_at_{a}"]
        return names + list(THRESHOLD_METRICS)


@dataclass(frozen=True)
class MetricSummary:
    """One metric over seeds: mean ± std (sample std, ddof=1) of the seeds where it is defined."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]
    reason: str | None = None

    @classmethod
    def of(cls, values: Sequence[float], reasons: Sequence[str | None] = ()) -> MetricSummary:
        arr = np.asarray(values, dtype=np.float64)
        ok = arr[~np.isnan(arr)]
        if ok.size == 0:
            why = next((r for r in reasons if r), "no seed gave a value")
            return cls(math.nan, math.nan, 0, tuple(arr.tolist()), why)
        std = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
        return cls(float(ok.mean()), std, int(ok.size), tuple(arr.tolist()))

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if len(self.values) <= 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class ResultRow:
    """Metrics of one model × label × service group over the seeds, with the canary next to it."""

    model: str
    label: str
    service: str
    n_test: int
    n_anomalous: int
    metrics: dict[str, MetricSummary]
    canary: dict[str, MetricSummary]


@dataclass(frozen=True)
class CaseRow:
    """Caught/missed anomalous test sequences of one error case (summed over seeds)."""

    model: str
    label: str
    test_case: str
    target_service: str | None
    n_positive: int
    caught: int
    missed: int
    recall: MetricSummary


@dataclass(frozen=True)
class Failure:
    """A model that could not be fitted or scored for one label and seed; evaluation went on."""

    model: str
    label: str
    seed: int
    error: str


@dataclass
class ScoreSet:
    """Test scores of one model × label for one seed (what the report plots)."""

    model: str
    label: str
    seed: int
    threshold: float
    y: np.ndarray
    scores: np.ndarray
    service: np.ndarray
    test_case: np.ndarray


@dataclass
class EvaluationResult:
    """Everything ``lo2 evaluate`` found; ``write_results`` puts it on disk, ``batch.report`` shows it."""

    config: EvaluationConfig
    splits: list[RunSplit]
    rows: list[ResultRow]
    cases: list[CaseRow]
    failures: list[Failure]
    scores: list[ScoreSet]
    feature_fingerprints: list[str]
    timings_s: dict[str, float]
    targeted_services: tuple[str, ...]
    n_sequences: dict[str, int]

    def row(self, model: str, label: str, service: str = ALL) -> ResultRow:
        for r in self.rows:
            if (r.model, r.label, r.service) == (model, label, service):
                return r
        raise KeyError(f"no result for model={model!r} label={label!r} service={service!r}")

    def summary(self) -> dict[str, Any]:
        """Headline checks per label and model (the canary included): ROC-AUC pooled over all services
        and over the targeted ones, and the worst and best single targeted service."""
        out: dict[str, Any] = {}
        for label in self.config.labels:
            per_model: dict[str, Any] = {}
            for model in self.config.all_models:
                vals = [
                    r.metrics["roc_auc"].mean
                    for r in self.rows
                    if r.model == model and r.label == label and r.service in self.targeted_services
                ]
                ok = [v for v in vals if not math.isnan(v)]
                pooled = {
                    r.service: r.metrics["roc_auc"].mean
                    for r in self.rows
                    if (r.model, r.label) == (model, label) and r.service in POOLED_GROUPS
                }
                per_model[model] = {
                    "roc_auc_all": pooled.get(ALL, math.nan),
                    "roc_auc_targeted": pooled.get(TARGETED, math.nan),
                    "min_roc_auc_targeted_services": min(ok) if ok else math.nan,
                    "max_roc_auc_targeted_services": max(ok) if ok else math.nan,
                }
            out[label] = per_model
        return out


# --- data preparation ---------------------------------------------------------------------------


def read_events(path: Path) -> pl.LazyFrame:
    """events.parquet (a file, or a folder holding ``events.parquet``) as a lazy scan; clear error if absent."""
    p = Path(path)
    if p.is_dir():
        p = p / "events.parquet"
    if not p.is_file():
        raise ConfigError(f"events Parquet not found at {p}; run `lo2 load` first or pass --root")
    checked_parquet_schema(p, ("run", "test_case", "service", "message"), "events file")
    return pl.scan_parquet(p)


def prepare(events: Events, split: RunSplit, feature_options: Mapping[str, Any] | None = None) -> Featurized:
    """Fit the feature spec on the training runs' events and featurize every sequence once.

    The one implementation of ``batch.train`` (so evaluation measures what training builds),
    including its canary input: length and duration only (``shared.features.CANARY_COLUMNS``).
    """
    return featurize(events, split, feature_options=feature_options)


def _fingerprint(data: Featurized) -> str:
    return str(data.spec.fingerprint())


# --- one model, one seed ------------------------------------------------------------------------


def _rows(X: Any, idx: np.ndarray) -> Any:
    return X[idx]


def _metrics(
    y: np.ndarray, s: np.ndarray, threshold: float, config: EvaluationConfig
) -> dict[str, dm.MetricValue]:
    out = dm.ranking_metrics(y, s, ks=config.precision_at, alphas=config.fp_alphas)
    tm = dm.threshold_metrics(y, s, threshold)
    out.update(
        f1=tm.f1,
        precision=tm.precision,
        recall=tm.recall,
        alert_rate=tm.alert_rate,
        false_positive_rate=tm.false_positive_rate,
        threshold=dm.MetricValue(threshold),
    )
    return out


@dataclass
class _Run:
    """Scores of one model for one fit label and seed (on every test row, or on ``valid`` ones)."""

    model: str
    fit_label: str
    seed: int
    threshold: float
    test_scores: np.ndarray
    #: Per-service mode: test rows whose service could be fitted (None = all rows).
    valid: np.ndarray | None = None
    #: Per-service mode: services that could not be fitted, with the reason.
    group_errors: dict[str, str] = field(default_factory=dict)


_FIT_ERRORS = (ValueError, RuntimeError, ImportError, MemoryError, Lo2Error)


def _fit_group(
    spec: ModelSpec, X: Any, data: Featurized, fit_label: str, seed: int, config: EvaluationConfig,
    rows: Mapping[SplitName, np.ndarray],
) -> tuple[np.ndarray, float]:
    """Fit on ``rows["train"]``, calibrate on validation normals, return (test scores, threshold)."""
    y_all = data.labels(fit_label)
    detector = spec.build(seed, config.model_params.get(spec.key))
    # Unsupervised detectors keep only rows with y == 0, i.e. the training runs' `correct` sequences
    # (fit_label is the paper label for them); supervised ones learn the label.
    detector.fit(X[rows["train"]], y_all[rows["train"]].astype(int))
    val_scores = np.asarray(detector.score(X[rows["validation"]]), dtype=np.float64)
    val_correct = ~data.labels("anomaly")[rows["validation"]]
    # The calibration of `lo2 train` (one implementation), tie-safe: with plain quantiles a
    # detector whose validation normals mostly score one value (Rarity, OOV, trigram trees: 0)
    # got that value as threshold, and `>=` then alerted on every test sequence.
    try:
        threshold = calibrate_threshold(val_scores[val_correct], config.threshold_quantile)
    except ConfigError as exc:
        raise ValueError(f"{exc} (validation runs)") from exc
    test_scores = np.asarray(detector.score(X[rows["test"]]), dtype=np.float64)
    return test_scores, threshold


def _fit_and_score(
    spec: ModelSpec,
    data: Featurized,
    fit_label: str,
    seed: int,
    config: EvaluationConfig,
) -> _Run:
    """Pooled: one detector and threshold.  Per service: one each per service, and the scores
    become margins ``score - threshold of the row's service`` (threshold 0), so that pooled
    metrics compare like with like."""
    X = input_matrix(data.inputs, spec.input_kind)
    names: tuple[SplitName, ...] = ("train", "validation", "test")
    if not config.per_service:
        scores, threshold = _fit_group(spec, X, data, fit_label, seed, config, {n: data.rows(n) for n in names})
        return _Run(spec.key, fit_label, seed, threshold, scores)
    test_rows = data.rows("test")
    margins = np.full(test_rows.size, np.nan)
    errors: dict[str, str] = {}
    for service in sorted(data.meta["service"].unique().to_list()):
        rows = {n: data.rows(n, service) for n in names}
        if rows["test"].size == 0:
            continue
        try:
            scores, threshold = _fit_group(spec, X, data, fit_label, seed, config, rows)
        except _FIT_ERRORS as exc:
            # e.g. a supervised model for a service that no error targets: one class only
            errors[service] = f"{type(exc).__name__}: {exc}"
            continue
        margins[np.searchsorted(test_rows, rows["test"])] = scores - threshold
    valid = ~np.isnan(margins)
    if not valid.any():
        raise ValueError(f"no service could be fitted: {errors}")
    return _Run(spec.key, fit_label, seed, 0.0, margins, valid, errors)


# --- the evaluation ---------------------------------------------------------------------------


def run_table(events: Events) -> pl.DataFrame:
    """One row per (run, run_epoch, test_case): all a split needs, cheap even on a lazy scan."""
    table = events.select("run", "run_epoch", "test_case").unique()
    return table.collect() if isinstance(table, pl.LazyFrame) else table


def evaluate(
    events: Events,
    config: EvaluationConfig,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Evaluate ``config.models`` (and the canary) on held-out runs of ``events`` for every seed."""
    t_start = time.perf_counter()
    events = filter_services(events, config.services)
    runs_of = run_table(events)
    timings: dict[str, float] = {}
    failures: list[Failure] = []
    runs: list[_Run] = []
    splits: list[RunSplit] = []
    prepared: dict[str, Featurized] = {}
    preps_by_seed: dict[int, Featurized] = {}
    for seed in config.seeds:
        split = split_runs(runs_of, config.fractions, seed=seed, order=config.split_order)
        if split.fingerprint not in prepared:
            t0 = time.perf_counter()
            prepared[split.fingerprint] = prepare(events, split, config.feature_options)
            timings["featurize"] = timings.get("featurize", 0.0) + time.perf_counter() - t0
            splits.append(split)
        prep = prepared[split.fingerprint]
        preps_by_seed[seed] = prep
        for key in config.all_models:
            spec = get_spec(key)
            fit_labels = list(config.labels) if spec.supervised else ["anomaly"]
            for fit_label in fit_labels:
                if progress:
                    progress(f"seed {seed}: {key} ({'fit on ' + fit_label if spec.supervised else 'normals'})")
                if not available(spec):
                    failures.append(Failure(key, fit_label, seed, f"needs the optional package {spec.needs!r}"))
                    continue
                t0 = time.perf_counter()
                try:
                    run = _fit_and_score(spec, prep, fit_label, seed, config)
                except _FIT_ERRORS as exc:
                    log.warning("model %s (label %s, seed %d) failed: %s", key, fit_label, seed, exc)
                    failures.append(Failure(key, fit_label, seed, f"{type(exc).__name__}: {exc}"))
                else:
                    runs.append(run)
                    for service, error in run.group_errors.items():
                        log.warning("model %s (label %s, seed %d) skipped service %s: %s", key, fit_label, seed, service, error)
                        failures.append(Failure(key, fit_label, seed, f"service {service}: {error}"))
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
    rows, cases, scores = _collect(runs, preps_by_seed, config)
    timings["total"] = time.perf_counter() - t_start
    any_prep = next(iter(prepared.values()))
    targeted = targeted_services(any_prep.meta[any_prep.rows("test")])
    return EvaluationResult(
        config=config,
        splits=splits,
        rows=rows,
        cases=cases,
        failures=failures,
        scores=scores,
        feature_fingerprints=[_fingerprint(p) for p in prepared.values()],
        timings_s={k: round(v, 3) for k, v in timings.items()},
        targeted_services=tuple(targeted),
        n_sequences={name: int(any_prep.rows(name).size) for name in ("train", "validation", "test")},
    )


def _eval_labels(spec: ModelSpec, run: _Run, config: EvaluationConfig) -> list[str]:
    return [run.fit_label] if spec.supervised else list(config.labels)


def _collect(
    runs: list[_Run], preps: dict[int, Featurized], config: EvaluationConfig
) -> tuple[list[ResultRow], list[CaseRow], list[ScoreSet]]:
    """Per model × label × service: metrics per seed, then mean ± std; per error case: caught/missed."""
    per: dict[tuple[str, str, str], list[dict[str, dm.MetricValue]]] = {}
    sizes: dict[tuple[str, str, str], tuple[int, int]] = {}
    case_hits: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    scores: list[ScoreSet] = []
    first_seed = config.seeds[0]
    for run in runs:
        spec = get_spec(run.model)
        prep = preps[run.seed]
        keep = run.valid if run.valid is not None else np.ones(run.test_scores.size, dtype=bool)
        test_meta = prep.meta[prep.rows("test")].filter(pl.Series(keep))
        services = test_meta["service"].to_numpy()
        cases = test_meta["test_case"].to_numpy()
        run_scores = run.test_scores[keep]
        targeted = targeted_services(test_meta)
        for label in _eval_labels(spec, run, config):
            y = prep.labels(label)[prep.rows("test")][keep]
            groups = [(ALL, np.ones(y.size, dtype=bool))]
            if targeted:
                groups.append((TARGETED, np.isin(services, targeted)))
            groups += [(s, services == s) for s in sorted(set(services.tolist()))]
            for service, mask in groups:
                key = (run.model, label, service)
                per.setdefault(key, []).append(_metrics(y[mask], run_scores[mask], run.threshold, config))
                sizes[key] = (int(mask.sum()), int(y[mask].sum()))
            alerts = run_scores >= run.threshold
            for case in sorted(set(cases[y].tolist())):
                m = (cases == case) & y
                case_hits.setdefault((run.model, label, case), []).append((int(m.sum()), int(alerts[m].sum())))
            if run.seed == first_seed:
                scores.append(
                    ScoreSet(run.model, label, run.seed, run.threshold, y, run_scores, services, cases)
                )
    rows: list[ResultRow] = []
    for (model, label, service), seed_metrics in per.items():
        summary = {
            name: MetricSummary.of(
                [float(m.get(name, math.nan)) for m in seed_metrics],
                [getattr(m.get(name), "reason", None) for m in seed_metrics],
            )
            for name in config.metric_names()
        }
        rows.append(ResultRow(model, label, service, *sizes[(model, label, service)], summary, {}))
    canary = {(r.label, r.service): r.metrics for r in rows if r.model == CANARY}
    rows = [
        ResultRow(r.model, r.label, r.service, r.n_test, r.n_anomalous, r.metrics, canary.get((r.label, r.service), {}))
        for r in rows
    ]
    order = {m: i for i, m in enumerate(config.all_models)}
    group_order = {g: i for i, g in enumerate(POOLED_GROUPS)}
    rows.sort(
        key=lambda r: (
            config.labels.index(r.label), group_order.get(r.service, len(POOLED_GROUPS)), r.service, order[r.model]
        )
    )
    case_rows = []
    for (model, label, case), hits in case_hits.items():
        n_pos = sum(h[0] for h in hits)
        caught = sum(h[1] for h in hits)
        case_rows.append(
            CaseRow(
                model,
                label,
                case,
                target_service(case),
                n_pos,
                caught,
                n_pos - caught,
                MetricSummary.of([c / n if n else math.nan for n, c in hits]),
            )
        )
    case_rows.sort(key=lambda c: (config.labels.index(c.label), c.test_case, order[c.model]))
    return rows, case_rows, scores


# --- writing ------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def result_dict(result: EvaluationResult) -> dict[str, Any]:
    """The JSON form of a result (NaN → null with its reason kept next to it)."""
    cfg = asdict(result.config)
    cfg["model_params"] = {k: dict(v) for k, v in result.config.model_params.items()}
    out: dict[str, Any] = _jsonable(
        {
            "schema": "lo2.evaluation.v1",
            "config": cfg,
            "splits": [s.as_dict() for s in result.splits],
            "feature_fingerprints": result.feature_fingerprints,
            "n_sequences": result.n_sequences,
            "targeted_services": list(result.targeted_services),
            "summary": result.summary(),
            "rows": [
                {
                    "model": r.model,
                    "label": r.label,
                    "service": r.service,
                    "n_test": r.n_test,
                    "n_anomalous": r.n_anomalous,
                    "metrics": {k: asdict(v) for k, v in r.metrics.items()},
                    "canary": {k: asdict(v) for k, v in r.canary.items()},
                }
                for r in result.rows
            ],
            "cases": [asdict(c) for c in result.cases],
            "failures": [asdict(f) for f in result.failures],
            "timings_s": result.timings_s,
        }
    )
    return out


def results_frame(result: EvaluationResult) -> pl.DataFrame:
    """One row per model × label × service × metric, with the canary's value of the same metric."""
    records = []
    for r in result.rows:
        for name, m in r.metrics.items():
            c = r.canary.get(name)
            records.append(
                {
                    "model": r.model,
                    "label": r.label,
                    "service": r.service,
                    "metric": name,
                    "mean": m.mean,
                    "std": m.std,
                    "n_seeds": m.n,
                    "canary_mean": c.mean if c else math.nan,
                    "canary_std": c.std if c else math.nan,
                    "n_test": r.n_test,
                    "n_anomalous": r.n_anomalous,
                    "reason": m.reason,
                }
            )
    return pl.DataFrame(records, schema_overrides={"reason": pl.String})


def scores_frame(result: EvaluationResult) -> pl.DataFrame:
    """Test scores of the first seed (model, label, service, test_case, y, score, threshold)."""
    parts = [
        pl.DataFrame(
            {
                "model": [s.model] * s.y.size,
                "label": [s.label] * s.y.size,
                "seed": [s.seed] * s.y.size,
                "service": s.service.astype(str),
                "test_case": s.test_case.astype(str),
                "y": s.y.astype(bool),
                "score": s.scores.astype(np.float64),
                "threshold": [s.threshold] * s.y.size,
            }
        )
        for s in result.scores
    ]
    return pl.concat(parts) if parts else pl.DataFrame()


def write_results(result: EvaluationResult, out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.csv, cases.csv and scores.parquet into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "cases": out_dir / "cases.csv",
        "scores": out_dir / "scores.parquet",
    }
    paths["json"].write_text(json.dumps(result_dict(result), indent=2, allow_nan=False) + "\n")
    results_frame(result).write_csv(paths["csv"])
    cases = pl.DataFrame(
        [
            {
                "model": c.model,
                "label": c.label,
                "test_case": c.test_case,
                "target_service": c.target_service,
                "n_positive": c.n_positive,
                "caught": c.caught,
                "missed": c.missed,
                "recall_mean": c.recall.mean,
                "recall_std": c.recall.std,
            }
            for c in result.cases
        ],
        schema_overrides={"target_service": pl.String},
    )
    cases.write_csv(paths["cases"])
    scores_frame(result).write_parquet(paths["scores"])
    return paths


def _summary_from(data: Mapping[str, Any]) -> MetricSummary:
    def f(v: Any) -> float:
        return math.nan if v is None else float(v)

    return MetricSummary(f(data["mean"]), f(data["std"]), int(data["n"]), tuple(f(v) for v in data["values"]), data.get("reason"))


def read_results(out_dir: Path) -> EvaluationResult:
    """Rebuild a result from ``results.json`` + ``scores.parquet`` (to re-draw a report without refitting)."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"no evaluation results at {path}; run `lo2 evaluate --out {out_dir}` first")
    data = json.loads(path.read_text())
    if data.get("schema") != "lo2.evaluation.v1":
        raise ConfigError(f"{path}: schema {data.get('schema')!r}, expected 'lo2.evaluation.v1'")
    cfg = dict(data["config"])
    for key in ("models", "seeds", "labels", "precision_at", "fp_alphas"):
        cfg[key] = tuple(cfg[key])
    cfg["services"] = tuple(cfg["services"]) if cfg.get("services") else None
    cfg["fractions"] = tuple(cfg["fractions"])
    config = EvaluationConfig(**cfg)
    rows = [
        ResultRow(
            r["model"], r["label"], r["service"], r["n_test"], r["n_anomalous"],
            {k: _summary_from(v) for k, v in r["metrics"].items()},
            {k: _summary_from(v) for k, v in r["canary"].items()},
        )
        for r in data["rows"]
    ]
    cases = [
        CaseRow(c["model"], c["label"], c["test_case"], c["target_service"], c["n_positive"], c["caught"],
                c["missed"], _summary_from(c["recall"]))
        for c in data["cases"]
    ]
    scores: list[ScoreSet] = []
    scores_path = Path(out_dir) / "scores.parquet"
    if scores_path.is_file():
        frame = pl.read_parquet(scores_path)
        for (model, label, seed), part in frame.group_by("model", "label", "seed", maintain_order=True):
            scores.append(
                ScoreSet(str(model), str(label), int(str(seed)), float(part["threshold"][0]),
                         part["y"].to_numpy().astype(bool), part["score"].to_numpy(),
                         part["service"].to_numpy(), part["test_case"].to_numpy())
            )
    return EvaluationResult(
        config=config,
        splits=[RunSplit.from_dict(sp) for sp in data["splits"]],
        rows=rows,
        cases=cases,
        failures=[Failure(**f) for f in data["failures"]],
        scores=scores,
        feature_fingerprints=list(data["feature_fingerprints"]),
        timings_s=dict(data["timings_s"]),
        targeted_services=tuple(data["targeted_services"]),
        n_sequences=dict(data["n_sequences"]),
    )
