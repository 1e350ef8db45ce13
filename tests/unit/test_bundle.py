"""Model bundles: round trip with identical scores, loud failures on tampering, atomic promotion."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from batch.train import TrainConfig, TrainResult, input_matrix, train
from shared import bundle as mb
from shared.errors import ModelLoadError, PayloadError
from tests.unit.test_train_cli import synthetic_events


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return train(synthetic_events(n_runs=10, seed=3), TrainConfig(models=("if", "event_lr_words", "sequence_lr_numeric"), seed=4))


@pytest.fixture(scope="module")
def per_service() -> TrainResult:
    return train(synthetic_events(n_runs=10, seed=5), TrainConfig(models=("hst",), seed=4, per_service=True))


@pytest.fixture()
def saved(trained: TrainResult, tmp_path: Path) -> Path:
    return trained.bundles["if"].save(tmp_path / "models" / mb.new_bundle_name("if"))


def _X(result: TrainResult, bundle: mb.ModelBundle) -> object:
    return input_matrix(result.data.inputs, bundle.input_kind)


@pytest.mark.parametrize("key", ["if", "event_lr_words"])
def test_round_trip_gives_identical_scores(trained: TrainResult, tmp_path: Path, key: str) -> None:
    original = trained.bundles[key]
    path = original.save(tmp_path / key)
    loaded = mb.load(path)
    X = _X(trained, original)
    np.testing.assert_array_equal(mb.score(loaded, X), mb.score(original, X))
    assert loaded.thresholds == original.thresholds
    assert loaded.feature_fingerprint == original.feature_fingerprint
    assert loaded.sequence_policy == original.sequence_policy
    manifest = mb.read_manifest(path)
    assert manifest["schema_version"] == mb.SCHEMA_VERSION
    assert manifest["created_at"].endswith("+00:00")
    expected = {"feature_spec.json", f"detectors/{mb.ALL}.joblib"}
    if original.explainer_state is not None:
        expected.add(mb.EXPLAINER)
    assert set(manifest["files"]) == expected
    assert manifest["reference"]["scores"][mb.ALL]["counts"]
    json.dumps(manifest, allow_nan=False)  # strict JSON: no NaN/Infinity for other tools


def test_manifest_has_psi_references_of_scores_and_top_features(saved: Path) -> None:
    manifest = mb.read_manifest(saved)
    scores = manifest["reference"]["scores"][mb.ALL]
    assert len(scores["edges"]) == len(scores["counts"]) + 1
    assert scores["edges"][0] is None and scores["edges"][-1] is None  # ±inf written as null
    features = manifest["reference"]["features"]
    assert 0 < len(features) <= 10
    assert all(name in manifest["feature_spec"]["feature_names"] for name in features)


def test_tampered_detector_fails_loudly(saved: Path) -> None:
    target = saved / "detectors" / f"{mb.ALL}.joblib"
    target.write_bytes(target.read_bytes() + b"x")
    with pytest.raises(ModelLoadError, match="checksum mismatch for detectors/all.joblib"):
        mb.load(saved)


def test_missing_file_and_unknown_schema_fail_loudly(saved: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    (copy / "feature_spec.json").unlink()
    with pytest.raises(ModelLoadError, match="feature_spec.json listed in the manifest is missing"):
        mb.load(copy)
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="schema_version 99 is not supported"):
        mb.load(saved)
    with pytest.raises(ModelLoadError, match="does not exist"):
        mb.load(tmp_path / "nowhere")


def test_incompatible_feature_spec_fails_loudly(saved: Path) -> None:
    spec_path = saved / "feature_spec.json"
    spec = json.loads(spec_path.read_text())
    spec["feature_names"] = spec["feature_names"][:-1]  # another code version's layout
    spec_path.write_text(json.dumps(spec))
    manifest = json.loads((saved / "manifest.json").read_text())
    # Even with consistent checksums the feature code refuses it.
    manifest["files"]["feature_spec.json"] = mb.sha256_file(spec_path)
    manifest["feature_spec"]["fingerprint"] = mb.sha256_text(spec_path.read_text())
    manifest[mb.MANIFEST_SHA256] = mb.manifest_digest(manifest)
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="incompatible"):
        mb.load(saved)


def test_save_refuses_to_overwrite(trained: TrainResult, saved: Path) -> None:
    with pytest.raises(FileExistsError, match="immutable"):
        trained.bundles["if"].save(saved)


def test_promote_switches_current_atomically_and_refuses_broken(
    trained: TrainResult, saved: Path, tmp_path: Path
) -> None:
    model_dir = saved.parent
    with pytest.raises(ModelLoadError, match="no promoted model"):
        mb.resolve(model_dir, "current")
    assert mb.promote(saved, model_dir) is None
    assert mb.resolve(model_dir, "current") == saved.resolve()
    assert not os.path.isabs(os.readlink(model_dir / "current"))  # relative: the folder can move
    second = trained.bundles["event_lr_words"].save(model_dir / "second")
    assert mb.promote(second, model_dir) == saved.resolve()
    assert mb.resolve(model_dir, "current") == second.resolve()
    assert mb.resolve(model_dir, "second") == model_dir / "second"
    # A broken bundle is never promoted: current keeps pointing at the good one.
    broken = model_dir / "broken"
    shutil.copytree(saved, broken)
    (broken / "detectors" / f"{mb.ALL}.joblib").write_bytes(b"junk")
    with pytest.raises(ModelLoadError):
        mb.promote(broken, model_dir)
    assert mb.resolve(model_dir, "current") == second.resolve()
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".current")]  # no temp pointer left
    listed = [p.name for p, manifest, error in mb.list_bundles(model_dir) if manifest is not None]
    assert set(listed) == {saved.name, "second", "broken"}  # manifests readable; broken shows at load


def test_per_service_bundle_routes_rows_and_needs_services(per_service: TrainResult, tmp_path: Path) -> None:
    bundle = per_service.bundles["hst"]
    loaded = mb.load(bundle.save(tmp_path / "hst"))
    X = _X(per_service, bundle)
    services = per_service.data.meta["service"].to_list()
    scores = mb.score(loaded, X, services)
    np.testing.assert_array_equal(scores, mb.score(bundle, X, services))
    alerts = mb.is_anomaly(loaded, scores, services)
    expected = np.array([s >= loaded.thresholds[svc] for s, svc in zip(scores, services, strict=True)])
    np.testing.assert_array_equal(alerts, expected)
    with pytest.raises(PayloadError, match="one service per row"):
        mb.score(loaded, X)
    with pytest.raises(PayloadError, match="got service 'nope'"):
        mb.score(loaded, X[:1], ["nope"])


def test_bundle_explainer_state_has_readable_names_and_template_keys(trained: TrainResult, tmp_path: Path) -> None:
    from shared.explain import explain_sequence, feature_label

    loaded = mb.load(trained.bundles["if"].save(tmp_path / "if"))
    state = loaded.explainer_state
    assert state is not None
    assert "explainer.joblib" in mb.read_manifest(tmp_path / "if")["files"]
    assert list(state.feature_names) == loaded.feature_names
    # Labels come from the spec: "share of ERROR events", not the column name "level:ERROR".
    assert list(state.feature_labels) == [feature_label(n) for n in loaded.feature_names]
    assert "share of ERROR events" in state.feature_labels
    explanation = explain_sequence(loaded, _X(trained, loaded)[0], top_k=3)
    assert len(explanation.top_features) == 3
    assert {f.feature for f in explanation.top_features} <= set(loaded.feature_names)
    assert all(f.name == feature_label(f.feature) for f in explanation.top_features)
    # Per-template columns (numeric input) carry the template id the accumulator's evidence uses.
    numeric = trained.bundles["sequence_lr_numeric"].explainer_state
    spec = trained.data.spec
    tpl = [j for j, n in enumerate(numeric.feature_names) if n.startswith("tpl:") and n != "tpl:(other templates)"]
    assert tpl and [numeric.feature_templates[j] for j in tpl] == [str(t) for t in spec.top_template_ids]
    assert numeric.feature_labels[tpl[0]] == spec.vocabulary.describe(spec.top_template_ids[0])


def test_token_bundle_carries_a_small_explainer_state(trained: TrainResult, tmp_path: Path) -> None:
    from shared.explain import explain_sequence

    bundle = trained.bundles["event_lr_words"]
    loaded = mb.load(bundle.save(tmp_path / "tok"))
    state = loaded.explainer_state
    assert state is not None and state.n_features == trained.data.spec.hash_dims
    assert state.reference.shape[0] <= TrainConfig().token_explainer_reference
    X = _X(trained, loaded)
    explanation = explain_sequence(loaded, X[0], top_k=3)
    assert all(f.feature.startswith("tok:") and f.name.startswith("token '") for f in explanation.top_features)


def test_per_service_bundle_has_one_explainer_state_per_service(per_service: TrainResult, tmp_path: Path) -> None:
    from shared.explain import explain_sequence

    loaded = mb.load(per_service.bundles["hst"].save(tmp_path / "hst"))
    states = loaded.explainer_state
    assert isinstance(states, dict) and sorted(states) == sorted(loaded.detectors)
    meta = per_service.data.meta
    service_of = dict(zip(meta["seq_id"].to_list(), meta["service"].to_list(), strict=True))
    for service, state in states.items():
        assert {service_of[s] for s in state.reference_seq_ids} == {service}  # that service's normals only
    X = _X(per_service, loaded)
    row = int(np.flatnonzero((meta["service"] == "token").to_numpy())[0])
    explanation = explain_sequence(loaded, X[row], top_k=2, service="token")
    assert explanation.nearest_normal is not None
    assert service_of[explanation.nearest_normal.seq_id] == "token"
    with pytest.raises(ModelLoadError, match="got service None"):
        explain_sequence(loaded, X[row], top_k=2)


def test_scoring_selects_the_columns_stored_in_an_older_bundle(trained: TrainResult, tmp_path: Path) -> None:
    # An older bundle of the same input kind trained on another column choice (today's aggregates
    # plus events per second and a canary column) must score on its own columns.
    from batch.train import inputs_for_bundle, score_events
    from shared.detectors import IsolationForestDetector
    from tests.unit.test_train_cli import synthetic_events as events_of

    current = trained.bundles["if"]
    old_names = [*current.feature_names, "rate:events_per_s", "canary:n_events"]
    names = list(trained.data.feature_names)
    canary = trained.data.inputs["canary"]
    X_old = np.hstack([trained.data.inputs["numeric"][:, [names.index(n) for n in old_names[:-1]]], canary[:, :1]])
    train_rows = trained.data.rows("train")
    detector = IsolationForestDetector(seed=1, n_estimators=20).fit(X_old[train_rows])
    old = mb.ModelBundle(
        model_key="if", input_kind=current.input_kind, detectors={mb.ALL: detector}, thresholds={mb.ALL: 0.5},
        feature_spec=current.feature_spec, feature_names=old_names, sequence_policy=current.sequence_policy,
        threshold_quantile=0.99,
    )
    loaded = mb.load(old.save(tmp_path / "old"))
    events = events_of(n_runs=10, seed=3)
    meta, X = inputs_for_bundle(loaded, events)
    assert "rate:events_per_s" not in current.feature_names  # excluded from today's aggregates
    assert X.shape[1] == len(old_names) == len(current.feature_names) + 2
    frame = score_events(loaded, events)
    order = [trained.data.meta["seq_id"].to_list().index(s) for s in frame["seq_id"].to_list()]
    np.testing.assert_array_equal(frame["score"].to_numpy(), detector.score(X_old[order]))
    assert meta["seq_id"].to_list() == frame["seq_id"].to_list()


def test_bundle_inputs_name_what_is_missing(trained: TrainResult) -> None:
    import dataclasses

    bundle = dataclasses.replace(trained.bundles["if"], feature_names=["level:ERROR", "tpl:gone template"])
    with pytest.raises(ModelLoadError, match="tpl:gone template"):
        mb.bundle_inputs(bundle, trained.data.inputs["numeric"])
    tokens = trained.bundles["event_lr_words"]
    with pytest.raises(PayloadError, match="X_tokens is missing"):
        mb.bundle_inputs(tokens, trained.data.inputs["numeric"])


# --- the manifest's own checksum -------------------------------------------------------------


def _edit_manifest_text(bundle_dir: Path, old: str, new: str) -> None:
    """Change the manifest as a person with an editor would: one substring, nothing else."""
    path = bundle_dir / "manifest.json"
    text = path.read_text()
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1))


def test_manifest_carries_its_own_checksum(saved: Path) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest[mb.MANIFEST_SHA256] == mb.manifest_digest(manifest)
    assert len(manifest[mb.MANIFEST_SHA256]) == 64


def test_tampered_threshold_in_manifest_fails_loudly(saved: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(saved, tmp_path / "copy"))
    threshold = json.loads((copy / "manifest.json").read_text())["thresholds"][mb.ALL]
    text = json.dumps(threshold)  # the threshold as written, e.g. 0.7312...
    digit = next(i for i, ch in enumerate(text) if ch.isdigit() and ch not in "0")
    changed = text[:digit] + ("1" if text[digit] != "1" else "2") + text[digit + 1 :]
    _edit_manifest_text(copy, f'"{mb.ALL}": {text}', f'"{mb.ALL}": {changed}')
    assert json.loads((copy / "manifest.json").read_text())["thresholds"][mb.ALL] != threshold
    with pytest.raises(ModelLoadError, match=r"bundle .*copy: manifest.json was modified after saving"):
        mb.load(copy)
    with pytest.raises(ModelLoadError, match="modified after saving"):
        mb.promote(copy, tmp_path / "models")  # promote verifies by loading: refused
    assert not (tmp_path / "models" / "current").exists()
    # `lo2 models list` shows it as unreadable instead of printing the forged threshold
    listed = {p.name: error for p, _, error in mb.list_bundles(tmp_path)}
    assert listed["copy"] is not None and "modified after saving" in listed["copy"]


def test_tampered_feature_name_in_manifest_fails_loudly(saved: Path) -> None:
    name = json.loads((saved / "manifest.json").read_text())["feature_spec"]["feature_names"][0]
    _edit_manifest_text(saved, json.dumps(name), json.dumps(name + "_x"))
    with pytest.raises(ModelLoadError, match="modified after saving"):
        mb.load(saved)


def test_reordered_but_equal_manifest_still_loads(saved: Path) -> None:
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())

    def reverse(value: object) -> object:
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(list(value))}
        return value

    reordered = reverse(manifest)
    text = json.dumps(reordered, indent=4)
    assert text != path.read_text() and list(reordered)[0] == mb.MANIFEST_SHA256  # really re-ordered
    path.write_text(text)
    loaded = mb.load(saved)
    assert loaded.thresholds == {k: float(v) for k, v in manifest["thresholds"].items()}


def test_manifest_without_checksum_from_older_code_loads_with_a_warning(
    saved: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest[mb.MANIFEST_SHA256]
    path.write_text(json.dumps(manifest, indent=2))
    with caplog.at_level("WARNING", logger="shared.bundle"):
        mb.load(saved)
    assert any("has no manifest_sha256" in r.getMessage() and "Re-train or re-save" in r.getMessage()
               for r in caplog.records)


def test_manifest_checksum_of_wrong_type_fails_loudly(saved: Path) -> None:
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[mb.MANIFEST_SHA256] = 12
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="must be a hex string"):
        mb.load(saved)


def test_worker_hot_reload_refuses_a_tampered_manifest(saved: Path, tmp_path: Path) -> None:
    from worker.scoring import LoadedModel, ModelWatcher
    from worker.telemetry import WorkerMetrics

    models = tmp_path / "live"
    good = Path(shutil.copytree(saved, models / "good"))
    mb.promote(good, models)
    metrics = WorkerMetrics.create()
    watcher = ModelWatcher(models, metrics, follow_current=True)
    model = watcher.load_initial()
    forged = Path(shutil.copytree(good, models / "forged"))
    _edit_manifest_text(forged, '"threshold_quantile": ', '"threshold_quantile": 0.5, "x": ')
    (models / "current").unlink()
    os.symlink("forged", models / "current")  # as a promote that skipped verification would
    assert watcher.check(model) is None  # the running model stays
    assert metrics.registry.get_sample_value("lo2_worker_model_reloads_total", {"result": "failed"}) == 1
    # an untampered bundle promoted afterwards is hot-reloaded as before
    second = Path(shutil.copytree(good, models / "second"))
    mb.promote(second, models)
    new = watcher.check(model)
    assert isinstance(new, LoadedModel) and new.version == "second"


def test_resolve_says_when_a_folder_is_not_a_bundle(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    (model_dir / "if-y").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"models/if-y is a folder but not a model bundle: it has no manifest.json"):
        mb.resolve(model_dir, "if-y")
    with pytest.raises(ModelLoadError, match="not found as a path or under"):
        mb.resolve(model_dir, "if-z")
