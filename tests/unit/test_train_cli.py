"""`lo2 train` end to end on a small events table: train → save → `--load-model` gives identical
scores and never refits; the split holds whole runs out; flags keep the reference's meaning."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from batch.commands import train as train_cmd
from shared.catalog import target_service
from shared.parsing import file_seq_id
from shared.settings import Settings

ERROR_CASES = ("access_token_client_secret_wrong_401", "get_client_404_no_client", "delete_user_404_no_user")
SERVICES = ("token", "client", "user")
NORMAL = [
    ("DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "normalised = /oauth2/{svc}"),
    ("DEBUG", "com.networknt.security.JwtIssuer", "getPrivateKey", "filename = primary.jks key = selfsigned"),
    ("INFO", "com.networknt.config.Config", "getConfigStream", "Config loaded from externalized folder for primary.jks in /config"),
    ("DEBUG", "c.n.oauth.cache.ClientMapStore", "load", "Load:{uuid}"),
    ("DEBUG", "c.n.o.t.h.Oauth2TokenPostHandler", "handleClientCredentials", "scope = null"),
]
ERROR = ("ERROR", "c.n.o.{svc}.handler.Handler", "handleRequest", "Status code 4{n:02d} ERR12{code:03d} {svc} problem for id {uuid}")


def synthetic_events(n_runs: int = 12, seed: int = 0, events_per_seq: int = 60) -> pl.DataFrame:
    """A v2-like events table: every sequence has a similar length (no length leak); an error case
    adds ERROR lines with an error code to the log of the service it targets only."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for r in range(n_runs):
        epoch = 1739743201 + r * 7200
        run = f"LO2_run_{epoch}"
        for case in ("correct", *ERROR_CASES):
            target = target_service(case)
            for svc in SERVICES:
                hit = case != "correct" and target == svc
                n = int(rng.integers(events_per_seq - 10, events_per_seq + 10))
                t0 = epoch * 1000 + int(rng.integers(0, 60_000))
                for i in range(n):
                    if hit and rng.random() < 0.15:
                        level, logger, method, msg = ERROR
                    elif rng.random() < 0.02:  # `correct` is not error-free
                        level, logger, method, msg = ("ERROR", "c.n.oauth.cache.ClientMapStore", "delete", "Exception:")
                    else:
                        level, logger, method, msg = NORMAL[int(rng.integers(0, len(NORMAL)))]
                    text = msg.format(svc=svc, uuid=f"{rng.integers(1 << 30):08x}", n=int(rng.integers(0, 30)),
                                      code=int(rng.integers(1, 40)))
                    rows.append({
                        "run": run, "run_epoch": epoch, "test_case": case, "service": svc,
                        "seq_id": file_seq_id(run, case, svc), "line_no": i + 1,
                        "timestamp": datetime.fromtimestamp((t0 + i * 150) / 1000, tz=UTC),
                        "thread": "XNIO-1 task-1", "correlation_id": "abc", "level": level,
                        "logger": logger.format(svc=svc), "method": method, "message": text,
                        "stack": None, "n_stack_lines": 0, "anomaly": case != "correct", "anomaly_service": hit,
                    })
    return pl.DataFrame(rows).with_columns(
        pl.col("timestamp").dt.cast_time_unit("ms"), pl.col("line_no").cast(pl.Int32),
        pl.col("n_stack_lines").cast(pl.Int32), pl.col("stack").cast(pl.String),
    )


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.parquet"
    synthetic_events().write_parquet(path)
    return path


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(model_dir=tmp_path / "models", artifacts_dir=tmp_path / "artifacts", cache_dir=tmp_path / "cache")


def _run(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser()
    train_cmd.configure(parser)
    return train_cmd.run(parser.parse_args(argv), settings)


def test_train_save_then_load_model_scores_identically_without_refit(
    events_file: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(["--input", str(events_file), "--phase", "if", "--save-model", "--promote",
                 "--if-n-estimators", "50"], settings) == 0
    trained = pl.read_parquet(settings.artifacts_dir / "train" / "if_predictions.parquet")
    current = settings.model_dir / "current"
    assert current.is_symlink()

    def refit(*_a: object, **_k: object) -> None:
        raise AssertionError("--load-model must never fit")

    from shared import detectors

    monkeypatch.setattr(detectors.IsolationForestDetector, "fit", refit)
    assert _run(["--input", str(events_file), "--load-model", "current"], settings) == 0
    loaded = pl.read_parquet(settings.artifacts_dir / "train" / "if_loaded_predictions.parquet")
    joined = trained.join(loaded, on="seq_id", suffix="_loaded")
    assert joined.height == trained.height == loaded.height
    np.testing.assert_array_equal(joined["score"].to_numpy(), joined["score_loaded"].to_numpy())
    assert (joined["alert"] == joined["alert_loaded"]).all()


def test_if_separates_service_label_on_held_out_runs(events_file: Path) -> None:
    from batch.train import TrainConfig, train

    result = train(pl.read_parquet(events_file), TrainConfig(models=("if", "canary", "sequence_lr_numeric"), seed=1))
    split = result.data.split
    assert not set(split.train_runs) & set(split.test_runs)
    assert not set(split.train_runs) & set(split.validation_runs)
    # Whole runs: every run's sequences are in exactly one split.
    per_run = result.data.meta.group_by("run").agg(pl.col("split").n_unique())
    assert (per_run["split"] == 1).all()
    if_auc = result.bundles["if"].metrics["service"]["roc_auc"]
    canary_auc = result.bundles["canary"].metrics["service"]["roc_auc"]
    assert if_auc >= 0.95, result.bundles["if"].metrics
    assert canary_auc <= 0.75, result.bundles["canary"].metrics
    # the same on the services an error targets only (the never-targeted key service left out)
    assert result.bundles["if"].metrics["service_targeted"]["roc_auc"] >= 0.95
    assert result.bundles["canary"].metrics["service_targeted"]["roc_auc"] <= 0.75
    assert result.bundles["sequence_lr_numeric"].metrics["service"]["roc_auc"] >= 0.99
    # Training used only correct sequences of training runs.
    assert result.bundles["if"].training["n_train_normal_sequences"] == len(split.train_runs) * len(SERVICES)


def test_per_service_models_get_one_threshold_each(events_file: Path) -> None:
    from batch.train import TrainConfig, predictions_frame, train

    result = train(pl.read_parquet(events_file), TrainConfig(models=("if",), seed=2, per_service=True))
    bundle = result.bundles["if"]
    assert sorted(bundle.detectors) == sorted(SERVICES) == sorted(bundle.thresholds)
    frame = predictions_frame(result.data, bundle)
    for svc in SERVICES:
        assert (frame.filter(pl.col("service") == svc)["threshold"] == bundle.thresholds[svc]).all()


def test_threshold_percentile_accepts_both_reference_forms() -> None:
    from batch.train import threshold_percentile_to_quantile
    from shared.errors import ConfigError

    assert threshold_percentile_to_quantile(99.5) == pytest.approx(0.995)
    assert threshold_percentile_to_quantile(0.995) == pytest.approx(0.995)
    with pytest.raises(ConfigError, match="percentile"):
        threshold_percentile_to_quantile(150)


def test_bad_flags_are_clear_errors(events_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--input", str(events_file), "--phase", "if", "--if-contamination", "lots"], settings) == 2
    assert "--if-contamination 'lots'" in capsys.readouterr().out
    assert _run(["--input", str(events_file), "--models", "nope"], settings) == 2
    assert "unknown model key 'nope'" in capsys.readouterr().out
    assert _run(["--input", str(settings.model_dir / "missing.parquet")], settings) == 2
    assert "not found" in capsys.readouterr().out


def _models(argv: list[str], settings: Settings) -> int:
    from batch.commands import models as models_cmd

    parser = argparse.ArgumentParser()
    models_cmd.configure(parser)
    return models_cmd.run(parser.parse_args(argv), settings)


def test_models_list_show_verify_promote(
    events_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["--input", str(events_file), "--phase", "full", "--models", "canary",
                 "--if-n-estimators", "30", "--save-model"], settings) == 0
    capsys.readouterr()
    assert _models(["list"], settings) == 0
    listed = capsys.readouterr().out
    bundles = sorted(p.name for p in settings.model_dir.iterdir())
    assert len(bundles) == 2 and all(name[:6] in listed for name in bundles)
    assert _models(["show"], settings) == 1  # nothing promoted yet: clear error, not a traceback
    assert "no promoted model" in capsys.readouterr().out
    if_bundle = next(name for name in bundles if name.startswith("if-"))
    assert _models(["promote", if_bundle], settings) == 0
    assert _models(["show"], settings) == 0
    assert "roc_auc" in capsys.readouterr().out
    joblib_file = settings.model_dir / if_bundle / "detectors" / "all.joblib"
    joblib_file.write_bytes(joblib_file.read_bytes()[:-3])
    assert _models(["verify", "current"], settings) == 1
    assert "checksum mismatch" in capsys.readouterr().out


def test_threshold_calibration_survives_tied_scores() -> None:
    from batch.train import calibrate_threshold

    continuous = np.linspace(0.0, 1.0, 101)
    assert calibrate_threshold(continuous, 0.99) == pytest.approx(0.99)
    tied = np.r_[np.zeros(95), np.linspace(0.5, 1.0, 5)]  # Rarity/OOV: most normals score exactly 0
    threshold = calibrate_threshold(tied, 0.5)
    assert threshold > 0.0 and (tied >= threshold).mean() <= 0.05 + 1e-9


def test_chunked_featurization_equals_one_pass(events_file: Path) -> None:
    from batch.train import featurize_in_chunks
    from shared.features import featurize_events, fit_feature_spec

    lf = pl.scan_parquet(events_file)
    spec = fit_feature_spec(lf)
    runs = sorted(lf.select(pl.col("run").unique()).collect()["run"].to_list())
    whole = featurize_events(lf, spec)
    chunked = featurize_in_chunks(lf, spec, runs, chunk_runs=5)
    order_w = np.argsort(whole.meta["seq_id"].to_numpy())
    order_c = np.argsort(chunked.meta["seq_id"].to_numpy())
    assert chunked.meta.height == whole.meta.height
    np.testing.assert_array_equal(chunked.X[order_c], whole.X[order_w])
    assert (chunked.X_tokens[order_c] != whole.X_tokens[order_w]).nnz == 0


def test_train_from_raw_generated_runs_with_root(generated_v2: Path, settings: Settings) -> None:
    # --root: raw v2 run folders are loaded with the loader first (no hard-coded input folder).
    assert _run(["--root", str(generated_v2), "--phase", "if", "--if-n-estimators", "50",
                 "--save-model", "--dump-metadata"], settings) == 0
    bundles = [p for p in settings.model_dir.iterdir() if p.name.startswith("if-")]
    assert len(bundles) == 1
    manifest = (settings.artifacts_dir / "train" / f"{bundles[0].name}.manifest.json").read_text()
    assert '"model_key": "if"' in manifest
    preds = pl.read_parquet(settings.artifacts_dir / "train" / "if_predictions.parquet")
    assert set(preds["split"].unique().to_list()) == {"train", "validation", "test"}
    assert _run(["--root", str(generated_v2), "--load-model", str(bundles[0])], settings) == 0
    loaded = pl.read_parquet(settings.artifacts_dir / "train" / "if_loaded_predictions.parquet")
    joined = preds.join(loaded, on="seq_id", suffix="_loaded")
    assert joined.height == preds.height
    np.testing.assert_array_equal(joined["score"].to_numpy(), joined["score_loaded"].to_numpy())


def test_feature_settings_reach_the_bundle_spec(events_file: Path, tmp_path: Path) -> None:
    # LO2_FEATURE_* settings must shape the spec `lo2 train` fits (it used fit_feature_spec defaults).
    from shared import bundle as mb

    settings = Settings(model_dir=tmp_path / "models", artifacts_dir=tmp_path / "artifacts", cache_dir=tmp_path / "c",
                        feature_top_templates=3, feature_hash_dims=256, feature_min_support=2)
    assert _run(["--input", str(events_file), "--phase", "full", "--models", "event_lr_words",
                 "--if-n-estimators", "20", "--save-model"], settings) == 0
    for path in settings.model_dir.iterdir():
        spec = mb.load(path).feature_spec
        assert spec.hash_dims == 256 and len(spec.top_template_ids) == 3
        assert spec.vocabulary.min_support == 2


def test_train_applies_the_if_input_choice_of_the_config(events_file: Path) -> None:
    # --if-item / --if-numeric used to be applied by the CLI only; train() ignored them.
    from batch.train import TrainConfig, train

    config = TrainConfig(models=("if",), seed=1, if_input="numeric", if_extra_columns=("n_events",),
                         model_params={"if": {"n_estimators": 20}})
    bundle = train(pl.read_parquet(events_file), config).bundles["if"]
    assert bundle.input_kind == "numeric+n_events"
    assert bundle.feature_names[-1] == "canary:n_events" and len(bundle.feature_names) == bundle.feature_spec.n_features + 1


def test_if_on_hashed_tokens_plus_a_raw_column_trains(events_file: Path) -> None:
    # --if-item e_words --if-numeric n_events: 4096 unnamed hash columns then one named column;
    # the PSI feature references used to index the names list by the full matrix's column.
    from batch.train import TrainConfig, input_matrix, train

    config = TrainConfig(models=("if",), seed=1, if_input="tokens", if_extra_columns=("n_events",),
                         model_params={"if": {"n_estimators": 20}})
    result = train(pl.read_parquet(events_file), config)
    bundle = result.bundles["if"]
    assert bundle.input_kind == "tokens+n_events"
    n_columns = input_matrix(result.data.inputs, bundle.input_kind).shape[1]
    refs = bundle.reference["features"]
    assert set(refs) <= {"canary:n_events"}
    for ref in refs.values():  # the worker's drift monitor reads this column of the input row
        assert ref["index"] == n_columns - 1

def test_model_without_its_extra_fails_before_any_work(
    events_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import batch.train

    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if xgboost were not installed

    def featurize(*_a: object, **_k: object) -> None:
        raise AssertionError("a missing extra must fail before featurization")

    monkeypatch.setattr(batch.train, "featurize", featurize)
    assert _run(["--input", str(events_file), "--models", "event_xgb_words"], settings) == 2
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "event_xgb_words needs 'xgboost'" in out and "pip install 'lo2-stream[xgboost]'" in out


@pytest.mark.parametrize("given", [["token", "client"], ["token,client"]])
def test_services_flag_takes_spaces_or_commas(events_file: Path, settings: Settings, given: list[str]) -> None:
    # the reference's form (space-separated) and lo2 evaluate's (comma-separated) mean the same
    assert _run(["--input", str(events_file), "--phase", "enhancers", "--save-enhancers", "--services", *given],
                settings) == 0
    features = pl.read_parquet(settings.artifacts_dir / "train" / "features.parquet")
    assert set(features["service"].unique().to_list()) == {"token", "client"}


# --- flag combinations rejected before any work; --models all; tampered bundle manifests -------


@pytest.fixture()
def no_featurize(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any featurization fails the test: the flag checks must come before reading the data."""
    import batch.train

    def featurize(*_a: object, **_k: object) -> None:
        raise AssertionError("a bad flag combination must be rejected before featurization")

    monkeypatch.setattr(batch.train, "featurize", featurize)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--promote"], "--promote needs --save-model"),
        (["--dump-metadata"], "--dump-metadata needs --save-model or --load-model"),
        (["--load-model", "current", "--save-model"], "--load-model scores an existing bundle"),
        (["--load-model", "current", "--save-model", "--promote"], "--load-model scores an existing bundle"),
    ],
)
def test_ignored_flag_combinations_are_rejected_up_front(
    events_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str], no_featurize: None,
    extra: list[str], expected: str,
) -> None:
    assert _run(["--input", str(events_file), "--phase", "if", *extra], settings) == 2
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert expected in out
    assert not settings.model_dir.exists()  # nothing saved, nothing promoted


def test_models_all_is_accepted_as_in_evaluate(
    events_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import batch.train
    from batch.registry import REGISTRY, available
    from shared.errors import ConfigError

    args = argparse.Namespace(phase="full", models=" all ")
    usable = [key for key, spec in REGISTRY.items() if available(spec)]
    assert train_cmd._model_keys(args, Console(record=True)) == usable  # every usable key, `if` first, once
    assert usable[0] == "if" and len(usable) > 10

    def featurize(*_a: object, **_k: object) -> None:
        raise ConfigError("stop: featurization reached")  # training all 16 models is not needed here

    monkeypatch.setattr(batch.train, "featurize", featurize)
    assert _run(["--input", str(events_file), "--models", "all"], settings) == 2
    out = capsys.readouterr().out
    assert "stop: featurization reached" in out and "unknown model key" not in out


def test_models_all_skips_keys_whose_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from rich.console import Console

    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if xgboost were not installed
    console = Console(record=True, width=200)
    keys = train_cmd._model_keys(argparse.Namespace(phase="full", models="all"), console)
    assert "event_xgb_words" not in keys and "if" in keys
    assert "skipping event_xgb_words" in console.export_text()


def test_tampered_manifest_is_refused_by_load_model_verify_and_promote(
    events_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    assert _run(["--input", str(events_file), "--phase", "if", "--if-n-estimators", "20", "--save-model"],
                settings) == 0
    (bundle,) = [p for p in settings.model_dir.iterdir() if p.name.startswith("if-")]
    copy = Path(shutil.copytree(bundle, settings.model_dir / "if-copy"))
    path = copy / "manifest.json"
    threshold = json.loads(path.read_text())["thresholds"]["all"]
    text = path.read_text()
    assert f'"all": {json.dumps(threshold)}' in text
    path.write_text(text.replace(f'"all": {json.dumps(threshold)}', '"all": -1000.0', 1))
    capsys.readouterr()
    assert _run(["--input", str(events_file), "--load-model", str(copy)], settings) == 2
    assert "modified after saving" in " ".join(capsys.readouterr().out.split())
    assert _models(["verify", "if-copy"], settings) == 1
    assert "modified after saving" in " ".join(capsys.readouterr().out.split())
    assert _models(["promote", "if-copy"], settings) == 1
    assert "modified after saving" in " ".join(capsys.readouterr().out.split())
    assert not (settings.model_dir / "current").exists()
    assert _models(["verify", bundle.name], settings) == 0  # the original is untouched and fine


def test_models_promote_of_a_folder_without_manifest_says_so(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    (settings.model_dir / "if-y").mkdir(parents=True)
    assert _models(["promote", "if-y"], settings) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "is a folder but not a model bundle: it has no manifest.json" in out
    assert "not found as a path" not in out


@pytest.fixture(scope="module")
def events_with_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic events plus a `key` service that no error case targets (as in LO2): under the
    service label its training rows are all normal."""
    events = synthetic_events(n_runs=8)
    key = events.filter(pl.col("service") == "user").with_columns(
        pl.lit("key").alias("service"),
        pl.lit(False).alias("anomaly_service"),
        pl.struct("run", "test_case").map_elements(
            lambda r: file_seq_id(r["run"], r["test_case"], "key"), return_dtype=pl.String
        ).alias("seq_id"),
    )
    path = tmp_path_factory.mktemp("events_key") / "events.parquet"
    pl.concat([events, key]).write_parquet(path)
    return path


def test_per_service_training_skips_a_service_without_anomalous_rows(
    events_with_key_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # `lo2 train --per-service` crashed with a ValueError traceback on the one-class `key` group.
    from shared import bundle as mb
    from shared.errors import PayloadError

    assert _run(["--input", str(events_with_key_file), "--per-service", "--models", "sequence_lr_numeric",
                 "--if-n-estimators", "20", "--save-model"], settings) == 0
    path = next(p for p in settings.model_dir.iterdir() if p.name.startswith("sequence_lr_numeric-"))
    bundle = mb.load(path)
    assert sorted(bundle.detectors) == ["client", "token", "user"]
    assert list(bundle.training["skipped_groups"]) == ["key"]
    assert "needs normal and anomalous training rows" in bundle.training["skipped_groups"]["key"]
    assert bundle.metrics["skipped_groups"] == ["key"]
    assert bundle.metrics["service"]["roc_auc"] is not None  # measured on the fitted services
    # the IF (unsupervised) still has every service
    if_bundle = mb.load(next(p for p in settings.model_dir.iterdir() if p.name.startswith("if-")))
    assert sorted(if_bundle.detectors) == ["client", "key", "token", "user"]
    # training predictions: key rows kept, unscored (null), the others scored
    preds = pl.read_parquet(settings.artifacts_dir / "train" / "sequence_lr_numeric_predictions.parquet")
    key_rows = preds.filter(pl.col("service") == "key")
    assert key_rows.height > 0 and key_rows["score"].null_count() == key_rows["alert"].null_count() == key_rows.height
    assert preds.filter(pl.col("service") != "key")["score"].null_count() == 0
    # scoring a row of the skipped service is a clear error, never a silent guess
    with pytest.raises(PayloadError, match="key"):
        mb.score(bundle, np.zeros((1, len(bundle.feature_names))), ["key"])
    capsys.readouterr()
    assert _run(["--input", str(events_with_key_file), "--load-model", str(path)], settings) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "cannot score services ['key'] (skipped in training: key:" in out
    assert "pass --services client token user" in out
    assert _run(["--input", str(events_with_key_file), "--load-model", str(path),
                 "--services", "client", "token", "user"], settings) == 0


def test_pooled_supervised_model_on_one_class_is_a_one_line_error(
    events_with_key_file: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["--input", str(events_with_key_file), "--phase", "full", "--models", "sequence_lr_numeric",
                 "--services", "key", "--if-n-estimators", "20"], settings) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "model 'sequence_lr_numeric', group 'all':" in out and "needs normal and anomalous" in out
    assert "Traceback" not in out
