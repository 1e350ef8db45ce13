"""Evaluation on a small generated v2 dataset: held-out runs, canary, thresholds from validation only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from batch.evaluate import (
    ALL,
    CANARY,
    TARGETED,
    EvaluationConfig,
    EvaluationResult,
    MetricSummary,
    evaluate,
    read_events,
    read_results,
    run_table,
    write_results,
)
from batch.splits import split_runs

MODELS = ("if", "sequence_lr_numeric")


@pytest.fixture(scope="module")
def events_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 generated v2 runs (correct + 4 error cases each), loaded into events.parquet."""
    from batch.generate import GenerateConfig, generate
    from batch.loader import load_runs, make_selection
    from shared.catalog import targets

    root = tmp_path_factory.mktemp("eval_gen")
    generate(GenerateConfig(out=root / "runs", runs=6, errors_per_run=4, seed=5, layout="v2"))
    load_runs(root / "runs", make_selection(seed=5), root / "pq", target=targets)
    return root / "pq" / "events.parquet"


@pytest.fixture(scope="module")
def events(events_path: Path) -> pl.DataFrame:
    return pl.read_parquet(events_path)


@pytest.fixture(scope="module")
def config() -> EvaluationConfig:
    return EvaluationConfig(models=MODELS, seeds=(1, 2), precision_at=(5,), fp_alphas=(0.05,))


@pytest.fixture(scope="module")
def result(events: pl.DataFrame, config: EvaluationConfig) -> EvaluationResult:
    return evaluate(events, config)


def _thresholds(result: EvaluationResult) -> dict[tuple[str, str], tuple[float, ...]]:
    return {(r.model, r.label): r.metrics["threshold"].values for r in result.rows if r.service == ALL}


def test_whole_runs_are_held_out(events: pl.DataFrame, result: EvaluationResult) -> None:
    split = result.splits[0]
    parts = [set(split.train_runs), set(split.validation_runs), set(split.test_runs)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # chronological: every test run is newer than every training run
    epoch = dict(events.select("run", "run_epoch").unique().iter_rows())
    assert max(epoch[r] for r in split.train_runs) < min(epoch[r] for r in split.test_runs)
    # the scores plotted are exactly the test runs' sequences
    n_test_seqs = events.filter(pl.col("run").is_in(list(split.test_runs)))["seq_id"].n_unique()
    assert result.n_sequences["test"] == n_test_seqs
    for s in result.scores:
        assert s.scores.size == n_test_seqs
    row = result.row("if", "anomaly")
    assert row.n_test == n_test_seqs


def test_canary_is_reported_next_to_every_model(result: EvaluationResult) -> None:
    for r in result.rows:
        assert r.canary, f"no canary for {r.model}/{r.label}/{r.service}"
        canary = result.row(CANARY, r.label, r.service)
        assert r.canary["roc_auc"] == canary.metrics["roc_auc"]
    models = {r.model for r in result.rows}
    assert models == {*MODELS, CANARY}


def test_both_labels_per_service_and_pooled(result: EvaluationResult, events: pl.DataFrame) -> None:
    services = set(events["service"].unique().to_list())
    for label in ("anomaly", "anomaly_service"):
        got = {r.service for r in result.rows if r.model == "if" and r.label == label}
        assert {ALL, TARGETED} <= got and got - {ALL, TARGETED} <= services and len(got) > 3
    # paper label: every sequence of an error case is positive; service label: a subset of them
    assert result.row("if", "anomaly").n_anomalous > result.row("if", "anomaly_service").n_anomalous > 0
    assert set(result.targeted_services) <= services and result.targeted_services


def test_targeted_group_pools_only_the_services_errors_target(result: EvaluationResult, events: pl.DataFrame) -> None:
    from shared.catalog import target_service
    from shared.detection_metrics import roc_auc

    test_runs = list(result.splits[0].test_runs)
    test_cases = events.filter(pl.col("run").is_in(test_runs))["test_case"].unique().to_list()
    expected = sorted({target_service(c) for c in test_cases} - {None})
    assert list(result.targeted_services) == expected
    untargeted = set(events["service"].unique().to_list()) - set(expected)
    assert untargeted, "the fixture should have a service no test error case targets"
    for model in ("if", CANARY):
        s = next(x for x in result.scores if (x.model, x.label) == (model, "anomaly_service"))
        keep = np.isin(s.service, expected)
        row = result.row(model, "anomaly_service", TARGETED)
        assert row.n_test == int(keep.sum()) < s.scores.size
        assert row.n_anomalous == int(s.y.sum())  # an untargeted service is never positive
        assert row.metrics["roc_auc"].values[0] == pytest.approx(float(roc_auc(s.y[keep], s.scores[keep])))
        summary = result.summary()["anomaly_service"][model]
        assert summary["roc_auc_targeted"] == row.metrics["roc_auc"].mean
        assert summary["roc_auc_all"] == result.row(model, "anomaly_service").metrics["roc_auc"].mean
        per_service = [result.row(model, "anomaly_service", t).metrics["roc_auc"].mean for t in expected]
        assert summary["max_roc_auc_targeted_services"] == max(v for v in per_service if not math.isnan(v))


def test_metrics_are_summarised_over_seeds(result: EvaluationResult) -> None:
    row = result.row("if", "anomaly_service")
    auc = row.metrics["roc_auc"]
    assert len(auc.values) == 2 and auc.n == 2
    assert auc.mean == pytest.approx(sum(auc.values) / 2)
    assert 0.0 <= auc.mean <= 1.0
    for name in ("pr_auc", "precision_at_5", "fp_rate_at_0.05", "false_alarm_share_at_0.05", "f1", "alert_rate"):
        assert name in row.metrics


def test_caught_and_missed_per_error_case(result: EvaluationResult, events: pl.DataFrame) -> None:
    split = result.splits[0]
    test = events.filter(pl.col("run").is_in(list(split.test_runs)))
    per_case = test.filter(pl.col("anomaly_service")).group_by("test_case").agg(pl.col("seq_id").n_unique())
    expected = {case: n * 2 for case, n in per_case.iter_rows()}  # two seeds
    got = {c.test_case: c for c in result.cases if c.model == "if" and c.label == "anomaly_service"}
    assert {k: v.n_positive for k, v in got.items()} == expected
    for c in got.values():
        assert c.caught + c.missed == c.n_positive
        assert c.target_service is not None


def test_test_runs_never_touch_fitting(events: pl.DataFrame, config: EvaluationConfig, result: EvaluationResult) -> None:
    """Garble every test-run message: feature spec and thresholds stay, test metrics move."""
    split = split_runs(run_table(events), config.fractions, seed=config.seeds[0])
    in_test = pl.col("run").is_in(list(split.test_runs))
    altered = events.with_columns(
        pl.when(in_test).then(pl.lit("totally different garbage ERROR ERR99999")).otherwise(pl.col("message")).alias("message"),
        pl.when(in_test).then(pl.lit("ERROR")).otherwise(pl.col("level")).alias("level"),
    )
    again = evaluate(altered, config)
    assert again.splits[0].fingerprint == result.splits[0].fingerprint
    assert again.feature_fingerprints == result.feature_fingerprints
    assert _thresholds(again) == _thresholds(result)
    before = result.row("if", "anomaly").metrics["alert_rate"].mean
    after = again.row("if", "anomaly").metrics["alert_rate"].mean
    assert after != before  # the test runs did change: only what is measured on them moved


def test_thresholds_come_from_validation_runs(events: pl.DataFrame, config: EvaluationConfig, result: EvaluationResult) -> None:
    """Garble the validation runs' `correct` sequences: thresholds move, the feature spec does not."""
    split = split_runs(run_table(events), config.fractions, seed=config.seeds[0])
    in_val_correct = pl.col("run").is_in(list(split.validation_runs)) & (pl.col("test_case") == "correct")
    altered = events.with_columns(
        pl.when(in_val_correct).then(pl.lit("totally different garbage")).otherwise(pl.col("message")).alias("message")
    )
    again = evaluate(altered, EvaluationConfig(models=("if",), seeds=(1,)))
    assert again.feature_fingerprints == result.feature_fingerprints
    assert again.row("if", "anomaly").metrics["threshold"].values[0] != _thresholds(result)[("if", "anomaly")][0]


def test_failing_model_is_recorded_and_evaluation_goes_on(events: pl.DataFrame) -> None:
    cfg = EvaluationConfig(models=("if", "event_lr_words"), seeds=(1,), model_params={"event_lr_words": {"bogus": 1}})
    res = evaluate(events, cfg)
    assert {f.model for f in res.failures} == {"event_lr_words"}
    assert "bogus" in res.failures[0].error
    assert res.row("if", "anomaly_service").metrics["roc_auc"].n == 1


def test_results_and_report_files(result: EvaluationResult, tmp_path: Path) -> None:
    from batch.report import write_report

    paths = write_results(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "lo2.evaluation.v1"
    assert data["splits"][0]["test_runs"] == list(result.splits[0].test_runs)
    csv = pl.read_csv(paths["csv"])
    assert {"model", "label", "service", "metric", "mean", "std", "canary_mean"} <= set(csv.columns)
    assert csv.filter(pl.col("model") == "if").height > 0
    assert pl.read_parquet(paths["scores"]).height == sum(s.y.size for s in result.scores)
    report = write_report(result, tmp_path)
    md = report.markdown.read_text()
    assert "canary ROC-AUC" in md and "IsolationForest" in md
    assert len(report.figures) >= 6
    for fig in report.figures:
        assert fig.stat().st_size > 10_000
        assert f"figures/{fig.name}" in md
    assert "<table>" in report.html.read_text()
    # the report can be re-drawn from disk without refitting anything
    again = read_results(tmp_path)
    assert again.row("if", "anomaly_service").metrics["roc_auc"] == result.row("if", "anomaly_service").metrics["roc_auc"]
    assert len(again.scores) == len(result.scores) and len(again.cases) == len(result.cases)


def test_cli_evaluate(events_path: Path, tmp_path: Path) -> None:
    from lo2.cli import main

    code = main(
        [
            "evaluate", "--input", str(events_path), "--models", "if", "--seeds", "1",
            "--label", "service", "--if-threshold-percentile", "0.95", "--out", str(tmp_path), "--no-report",
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["labels"] == ["anomaly_service"]
    assert data["config"]["threshold_quantile"] == pytest.approx(0.95)
    assert not (tmp_path / "report.md").exists()


def test_read_events_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="events Parquet not found"):
        read_events(tmp_path / "nope")


def test_metric_summary_ignores_undefined_seeds() -> None:
    s = MetricSummary.of([0.8, math.nan, 0.6])
    assert s.n == 2 and s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.1414, abs=1e-3)
    empty = MetricSummary.of([math.nan], ["only normal rows"])
    assert empty.n == 0 and empty.reason == "only normal rows" and empty.text() == "n/a"


def test_per_service_models_rank_margins(events: pl.DataFrame, result: EvaluationResult) -> None:
    """One IF and threshold per service: alerts are where the margin over its service's threshold >= 0."""
    res = evaluate(events, EvaluationConfig(models=("if",), seeds=(1,), per_service=True))
    # services too small to fit (or, for the supervised canary, without a targeted error) are
    # skipped one by one, reported, and the other services are still evaluated
    assert all(f.error.startswith("service ") for f in res.failures)
    s = next(x for x in res.scores if x.model == "if" and x.label == "anomaly_service")
    assert s.threshold == 0.0 and 0 < s.scores.size <= result.n_sequences["test"]
    assert not np.isnan(s.scores).any()
    skipped = {f.error.split(":")[0].removeprefix("service ") for f in res.failures if f.model == "if"}
    assert not skipped & set(s.service.tolist())
    row = res.row("if", "anomaly_service")
    assert row.metrics["alert_rate"].mean == pytest.approx(float((s.scores >= 0).mean()))


class _FirstColumn:
    """A detector whose score is the row's first column (Rarity/OOV-like: most normals score 0)."""

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> _FirstColumn:
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)[:, 0]


def test_evaluate_calibrates_tied_scores_like_train() -> None:
    """Validation normals all score exactly 0: the plain 0.99 quantile is 0 and `>=` alerted on every
    test sequence (alert rate 1.0); evaluate now uses lo2 train's tie-safe calibration."""
    from batch.evaluate import _fit_and_score, _metrics
    from batch.registry import ModelSpec
    from batch.train import Featurized, calibrate_threshold

    n_train, n_val, n_test_normal, n_test_anomalous = 40, 50, 45, 5
    split = ["train"] * n_train + ["validation"] * n_val + ["test"] * (n_test_normal + n_test_anomalous)
    anomaly = [False] * (n_train + n_val + n_test_normal) + [True] * n_test_anomalous
    score = np.r_[np.zeros(n_train + n_val + n_test_normal), np.linspace(1.0, 2.0, n_test_anomalous)]
    meta = pl.DataFrame({"split": split, "service": ["token"] * len(split), "anomaly": anomaly,
                         "anomaly_service": anomaly})
    data = Featurized(split=None, spec=None, meta=meta, inputs={"numeric": score[:, None]}, feature_names=["s"])
    spec = ModelSpec("tied", "first column", "numeric", False, lambda _seed, _p: _FirstColumn())
    config = EvaluationConfig(models=(), seeds=(1,))
    run = _fit_and_score(spec, data, "anomaly", 1, config)
    val_normal = score[n_train : n_train + n_val]
    assert run.threshold == calibrate_threshold(val_normal, config.threshold_quantile) > 0.0
    y = np.asarray(anomaly)[np.asarray(split) == "test"]
    metrics = _metrics(y, run.test_scores, run.threshold, config)
    assert float(metrics["alert_rate"]) == pytest.approx(n_test_anomalous / y.size)
    assert float(metrics["false_positive_rate"]) == 0.0 and float(metrics["recall"]) == 1.0


def test_evaluate_keeps_its_error_for_an_undefined_threshold() -> None:
    """No validation `correct` scores: a ValueError naming the validation runs (recorded as a failure)."""
    from batch.evaluate import _fit_and_score
    from batch.registry import ModelSpec
    from batch.train import Featurized

    meta = pl.DataFrame({"split": ["train"] * 4 + ["validation"] * 2 + ["test"] * 2, "service": ["token"] * 8,
                         "anomaly": [False] * 4 + [True] * 2 + [False, True]})
    data = Featurized(split=None, spec=None, meta=meta, inputs={"numeric": np.zeros((8, 1))}, feature_names=["s"])
    spec = ModelSpec("tied", "first column", "numeric", False, lambda _seed, _p: _FirstColumn())
    with pytest.raises(ValueError, match=r"cannot calibrate a threshold: .*\(validation runs\)"):
        _fit_and_score(spec, data, "anomaly", 1, EvaluationConfig(models=(), seeds=(1,)))


def test_report_tables_show_scored_sequences_per_row(result: EvaluationResult, tmp_path: Path) -> None:
    """Rows scored on different test sequences (per-service fits that failed for some services) sat
    side by side without saying so; each main-table row now carries its test sequences and positives,
    and a note appears under a table whose rows differ."""
    import dataclasses

    from batch.report import _table_rows, sizes_note, write_report

    header, body = _table_rows(result, "anomaly_service", ALL)
    assert header[:3] == ["model", "test seqs", "positives"]
    rows = [r for r in result.rows if r.label == "anomaly_service" and r.service == ALL]
    assert [line[1:3] for line in body] == [[str(r.n_test), str(r.n_anomalous)] for r in rows]
    assert all(r.n_test > r.n_anomalous > 0 for r in rows)
    assert sizes_note(result, "anomaly_service", ALL) is None  # pooled models: all rows on the same sequences
    # one row scored on fewer sequences, as when its fit failed for a service
    shrunk = dataclasses.replace(rows[-1], n_test=rows[-1].n_test - 7, n_anomalous=rows[-1].n_anomalous - 1)
    changed = dataclasses.replace(result, rows=[shrunk if r is rows[-1] else r for r in result.rows])
    _, body = _table_rows(changed, "anomaly_service", ALL)
    assert body[-1][1:3] == [str(shrunk.n_test), str(shrunk.n_anomalous)]
    note = sizes_note(changed, "anomaly_service", ALL)
    assert note is not None and "differ in the number of scored test sequences" in note
    md = write_report(changed, tmp_path).markdown.read_text()
    assert "| test seqs | positives |" in md and note in md


def test_cli_table_shows_scored_sequences_when_per_service_rows_differ(
    events_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lo2.cli import main

    code = main(["evaluate", "--input", str(events_path), "--models", "if,sequence_lr_numeric", "--seeds", "1",
                 "--label", "service", "--per-service", "--out", str(tmp_path), "--no-report"])
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())
    rows = [r for r in read_results(tmp_path).rows if r.service == ALL]
    sizes = {r.model: (r.n_test, r.n_anomalous) for r in rows}
    # the supervised models cannot be fitted for services no test error targets: fewer sequences than IF
    assert sizes["sequence_lr_numeric"][0] < sizes["if"][0]
    for r in rows:
        assert f"{r.n_test} ({r.n_anomalous})" in out
    assert "note: Rows differ in the number of scored test sequences" in out
