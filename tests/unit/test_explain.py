"""The per-anomaly explanation (shared/explain.py): ranges, attribution, nearest normal, evidence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.detectors import IsolationForestDetector
from shared.errors import ConfigError, ModelLoadError
from shared.explain import (
    ExplainerState,
    SequenceExplainer,
    build_explainer_state,
    explain_sequence,
    explainer_for,
    select_evidence,
)

N_FEATURES = 6
NAMES = [f"tpl_{j}" for j in range(N_FEATURES)]
LABELS = [f"template <*> number {j}" for j in range(N_FEATURES)]


@pytest.fixture(scope="module")
def normals() -> np.ndarray:
    rng = np.random.default_rng(0)
    X = rng.normal(loc=10.0, scale=1.0, size=(400, N_FEATURES))
    X[:, 0] *= 1000.0  # a count in the ten-thousands next to small features
    return X


@pytest.fixture(scope="module")
def state(normals: np.ndarray) -> ExplainerState:
    seq_ids = [f"seq{i:04d}" for i in range(normals.shape[0])]
    return build_explainer_state(
        normals, NAMES, seq_ids, feature_templates=NAMES, feature_labels=LABELS, max_reference=300, seed=1
    )


def test_state_holds_quantile_ranges_of_the_normals(state: ExplainerState, normals: np.ndarray) -> None:
    np.testing.assert_allclose(state.low, np.quantile(normals, 0.05, axis=0))
    np.testing.assert_allclose(state.high, np.quantile(normals, 0.95, axis=0))
    assert state.reference.shape == (300, N_FEATURES)
    assert len(set(state.reference_seq_ids)) == 300
    assert state.n_normals == 400


def test_reference_is_a_random_sample_not_the_most_anomalous_normals(normals: np.ndarray) -> None:
    seq_ids = [f"seq{i:04d}" for i in range(normals.shape[0])]
    st = build_explainer_state(normals, NAMES, seq_ids, max_reference=100, seed=3)
    picked = np.array([int(s[3:]) for s in st.reference_seq_ids])
    # uniform sample: spread over the whole index range, not a block at one end
    assert picked.min() < 50 and picked.max() > 350


def test_deviation_ranks_the_shifted_feature_first(state: ExplainerState, normals: np.ndarray) -> None:
    x = np.median(normals, axis=0)
    x[4] += 8.0  # 8 standard deviations above normal
    expl = SequenceExplainer(state, model=None).explain(x, top_k=3)
    assert expl.method == "deviation"
    top = expl.top_features[0]
    assert top.feature == "tpl_4"
    assert top.name == LABELS[4]
    assert top.contribution == pytest.approx(8.0, rel=0.15)
    assert top.value > top.normal_high
    assert top.normal_low == pytest.approx(state.low[4])


def test_nearest_normal_uses_scaled_distance(normals: np.ndarray) -> None:
    """Unscaled, the ten-thousands feature would decide the neighbour (reference §9.2 item 25)."""
    seq_ids = [f"seq{i:04d}" for i in range(normals.shape[0])]
    st = build_explainer_state(normals, NAMES, seq_ids, max_reference=400)
    target = normals[17].copy()
    # half a standard deviation off in the big feature, identical elsewhere -> still row 17
    target[0] += 0.5 * normals[:, 0].std()
    nn = SequenceExplainer(st).nearest_normal(target)
    assert nn is not None
    assert nn.seq_id == "seq0017"
    assert nn.distance == pytest.approx(0.5, rel=0.05)
    assert nn.differing_features[0].name == LABELS[0] or nn.differing_features[0].name == NAMES[0]


def test_tree_shap_on_isolation_forest_points_at_the_anomalous_feature(
    state: ExplainerState, normals: np.ndarray
) -> None:
    det = IsolationForestDetector(seed=0, n_estimators=50).fit(normals)
    explainer = SequenceExplainer(state, det)
    assert explainer.method == "tree_shap"
    x = np.median(normals, axis=0)
    x[2] += 12.0
    expl = explainer.explain(x, top_k=2)
    assert expl.top_features[0].feature == "tpl_2"
    assert expl.top_features[0].contribution > 0  # positive = toward anomalous (shorter path)
    # a normal-looking row has no strongly positive contribution on feature 2
    normal_expl = explainer.explain(np.median(normals, axis=0), top_k=N_FEATURES)
    c2 = {f.feature: f.contribution for f in normal_expl.top_features}["tpl_2"]
    assert c2 < expl.top_features[0].contribution


def test_tree_shap_needs_a_tree_model(state: ExplainerState) -> None:
    with pytest.raises(ConfigError, match="tree_shap"):
        SequenceExplainer(state, model=None, method="tree_shap")


def test_wrong_feature_count_is_a_clear_error(state: ExplainerState) -> None:
    with pytest.raises(ConfigError, match=r"expected \(1, 6\)"):
        SequenceExplainer(state).explain(np.zeros(5))


def test_evidence_prefers_top_templates_and_is_redacted() -> None:
    lines = [
        "10:00:00.000 [XNIO-1 task-1]  abc DEBUG c.n.X m - startup noise",
        '10:00:00.001 [XNIO-1 task-1]  abc DEBUG c.n.X m - validate( "Basic MGU4ZjRjMmE6c2VjcmV0", authorization)',
        "10:00:00.002 [XNIO-1 task-1]  abc ERROR c.n.X m - ApiException ERR12007 wrong client secret",
    ]
    chosen = select_evidence(lines, ["ApiException <*> wrong", 'validate( "Basic <*>'], max_lines=2)
    assert len(chosen) == 2
    assert not any("startup noise" in line for line in chosen)
    assert not any("MGU4ZjRjMmE6c2VjcmV0" in line for line in chosen)
    assert any("Basic ***" in line for line in chosen)
    # keyed items match by template key; unmatched sequences still give some evidence
    keyed = [("t1", "a"), ("t2", "b"), ("t3", "c")]
    assert select_evidence(keyed, [("t3", "whatever")], 1) == ["c"]
    assert select_evidence(keyed, [("zz", "nothing")], 2) == ["a", "b"]
    assert select_evidence(keyed, [("t1", "a")], 0) == []
    repeated = ["same", "same", "same", "other"]
    assert select_evidence(repeated, [], 3) == ["same", "other"]  # repeats tell nothing new


def test_evidence_from_accumulator_dicts_and_readable_templates() -> None:
    """The worker passes SequenceAccumulator.evidence dicts; batch passes bare lines."""
    acc_lines = [
        {"template_id": 7, "level": "DEBUG", "logger": "c.n.X", "method": "m", "message": "noise"},
        {"template_id": 12, "level": "ERROR", "logger": "c.n.o.t.h.Oauth2TokenPostHandler",
         "method": "handleRequest", "message": "ApiException", "stack_head": "at com.Foo(Bar.java:1)"},
    ]
    assert select_evidence(acc_lines, [("12", "ignored")], 1) == [
        "ERROR c.n.o.t.h.Oauth2TokenPostHandler handleRequest - ApiException | at com.Foo(Bar.java:1)"
    ]
    readable = "ERROR Oauth2TokenPostHandler handleRequest - Status <*> for client <*>"
    bare = [
        "16:29:42.425 [XNIO-1 task-2]  9lZs DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - start",
        "16:29:42.426 [XNIO-1 task-2]  9lZs ERROR c.n.o.t.h.Oauth2TokenPostHandler handleRequest - Status ERR12007 for client abc",
    ]
    assert select_evidence(bare, [readable], 1) == [bare[1]]


def test_feature_labels_are_readable() -> None:
    from shared.explain import feature_label, feature_templates_of

    assert feature_label("tpl:ERROR Oauth2TokenPostHandler handleRequest - ApiException").startswith("ERROR Oauth2")
    assert feature_label("err:ERR12007") == "ERR12007 UNAUTHORIZED_CLIENT"
    assert feature_label("level:WARN") == "share of WARN events"
    assert feature_label("tok:password") == "token 'password'"
    assert feature_label("rate:events_per_s") == "events per second"
    assert feature_label("share:stack_events") == "share of events with a stack trace"
    assert feature_label("something:new") == "something:new"

    class Spec:
        top_template_ids = (5, 9)
        feature_names = ("tpl:a", "tpl:b", "level:INFO", "err:ERR12007")

    assert feature_templates_of(Spec(), list(Spec.feature_names)) == ["5", "9", None, None]
    assert feature_templates_of(Spec(), ["level:INFO", "tpl:b"]) == [None, "9"]  # a column subset


def test_state_round_trips_through_files(state: ExplainerState, tmp_path: Path) -> None:
    paths = state.save(tmp_path)
    assert {p.name for p in paths} == {"explainer_state.json", "explainer_state.npz"}
    loaded = ExplainerState.load(tmp_path)
    assert loaded.feature_labels == state.feature_labels
    assert loaded.reference_seq_ids == state.reference_seq_ids
    np.testing.assert_allclose(loaded.reference, state.reference)
    x = np.arange(N_FEATURES, dtype=float)
    a = SequenceExplainer(state).explain(x).model_dump()
    b = SequenceExplainer(loaded).explain(x).model_dump()
    assert a == b
    again = ExplainerState.from_json_dict(json.loads(json.dumps(state.to_json_dict())))
    assert again.feature_names == state.feature_names


def test_load_rejects_missing_and_foreign_state(state: ExplainerState, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        ExplainerState.load(tmp_path)
    state.save(tmp_path)
    meta = json.loads((tmp_path / "explainer_state.json").read_text())
    meta["schema_version"] = 99
    (tmp_path / "explainer_state.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="schema_version 99"):
        ExplainerState.load(tmp_path)


def test_build_rejects_misaligned_inputs(normals: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="feature names"):
        build_explainer_state(normals, NAMES[:3], ["s"] * len(normals))
    with pytest.raises(ConfigError, match="seq_ids"):
        build_explainer_state(normals, NAMES, ["s"])


@dataclass
class _Bundle:
    model: Any
    explainer_state: ExplainerState | None


def test_explain_sequence_from_a_bundle_is_json_able_and_cached(
    state: ExplainerState, normals: np.ndarray
) -> None:
    bundle = _Bundle(IsolationForestDetector(seed=0, n_estimators=20).fit(normals), state)
    x = np.median(normals, axis=0)
    x[1] += 10
    expl = explain_sequence(bundle, x, ["line with password=hunter2"], top_k=3, max_evidence=1)
    record = json.loads(expl.model_dump_json())
    assert set(record) == {"method", "top_features", "nearest_normal", "evidence"}
    assert record["top_features"][0]["feature"] == "tpl_1"
    assert record["nearest_normal"]["seq_id"].startswith("seq")
    assert record["evidence"] == ["line with password=***"]
    assert explainer_for(bundle) is explainer_for(bundle)
    with pytest.raises(ModelLoadError, match="no explainer state"):
        explain_sequence(_Bundle(None, None), x)


# ------------------------------------------------------------------------------------------------
# batch/explain.py: the artefact helpers, on small synthetic data
# ------------------------------------------------------------------------------------------------
def test_stratified_sample_covers_every_stratum() -> None:
    from batch.explain import stratified_sample

    strata = ["0|correct"] * 80 + ["1|case_a"] * 15 + ["1|case_b"] * 4 + ["1|case_c"] * 1
    idx = stratified_sample(strata, 20, seed=1)
    assert idx.size == 20 and len(set(idx.tolist())) == 20
    picked = {strata[i] for i in idx}
    assert picked == set(strata)  # the rare case is in, unlike "the first N rows"
    assert np.array_equal(idx, stratified_sample(strata, 20, seed=1))
    assert stratified_sample(strata, 0, seed=1).size == len(strata)


def test_nearest_normals_sparse_equals_dense_and_is_scaled() -> None:
    import scipy.sparse as sp

    from batch.explain import nearest_normals

    rng = np.random.default_rng(2)
    ref = rng.random((50, 4))
    ref[:, 0] *= 10_000  # unscaled, this column would decide every neighbour
    query = ref[[7]].copy()
    query[0, 0] += 0.5 * ref[:, 0].std()
    dense = nearest_normals(query, ref, 3)
    sparse = nearest_normals(sp.csr_matrix(query), sp.csr_matrix(ref), 3)
    assert dense.indices[0, 0] == 7
    np.testing.assert_array_equal(dense.indices, sparse.indices)
    np.testing.assert_allclose(dense.distances, sparse.distances, rtol=1e-6)


def test_linear_shap_on_active_columns_is_exact() -> None:
    """Restricting LinearExplainer to active columns gives coef * (x - mean background) everywhere."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from batch.explain import ModelInput, NormalStats, attribute

    rng = np.random.default_rng(3)
    X = sp.random(120, 300, density=0.02, random_state=4, format="csr")
    y = (np.asarray(X[:, :5].sum(axis=1)).ravel() > 0).astype(int)
    lr = LogisticRegression(max_iter=500).fit(X, y)
    model = ModelInput("lr", "b", {"all": lr}, {"all": 0.5}, X, [f"tok:{j}" for j in range(300)])
    rows = np.arange(10)
    background = np.arange(60, 120)
    attr = attribute(model, rows, ["token"] * 10, NormalStats(X[background]), background, {})
    expected = (X[rows].toarray() - X[background].toarray().mean(axis=0)) * lr.coef_[0]
    np.testing.assert_allclose(attr.values, expected, atol=1e-9)
    assert attr.method == "linear_shap" and attr.skipped_reason is None
    assert rng is not None


def test_pick_evidence_prefers_templates_then_errors_and_redacts() -> None:
    from batch.explain import EVIDENCE_MAX_CHARS, pick_evidence

    lines = [
        ("DEBUG", "DEBUG c.n.X m - hello", "10:00:00.000 DEBUG c.n.X m - hello"),
        ("ERROR", "ERROR c.n.X m - boom password=hunter2", "10:00:00.001 ERROR c.n.X m - boom password=hunter2"),
        ("DEBUG", "DEBUG c.n.o.cache.UserMapStore load - Load:abc", "10:00:00.002 DEBUG c.n.o.cache.UserMapStore load - Load:abc"),
        ("DEBUG", "DEBUG c.n.X m - " + "x" * 1000, "10:00:00.003 DEBUG c.n.X m - " + "x" * 1000),
    ]
    out = pick_evidence(lines, ["DEBUG UserMapStore load - Load:<HEX>"], 2)
    assert out == ["10:00:00.001 ERROR c.n.X m - boom password=***", lines[2][2]]
    out_all = pick_evidence(lines, [], 4)
    assert all(len(line) <= EVIDENCE_MAX_CHARS for line in out_all)
    assert pick_evidence(lines, [], 0) == []


def test_explain_model_writes_consistent_artefacts(tmp_path: Path) -> None:
    import polars as pl

    from batch.explain import ExplainConfig, ExplainData, ModelInput, explain_all
    from shared.detectors import RarityDetector

    rng = np.random.default_rng(5)
    n_train, n_val, n_test = 60, 20, 40
    n = n_train + n_val + n_test
    X = rng.normal(size=(n, 5))
    test_anomalous = np.zeros(n, dtype=bool)
    test_anomalous[n_train + n_val :: 2] = True
    X[test_anomalous, 3] += 6.0
    split = ["train"] * n_train + ["validation"] * n_val + ["test"] * n_test
    cases = np.where(test_anomalous, "case_x", "correct")
    cases[n_train + n_val + 1 :: 4] = "correct"
    meta = pl.DataFrame({
        "seq_id": [f"s{i:03d}" for i in range(n)], "run": [f"r{i // 10}" for i in range(n)],
        "service": ["token"] * n, "test_case": cases.tolist(), "anomaly": test_anomalous.tolist(),
        "anomaly_service": test_anomalous.tolist(), "split": split,
    })
    names = ["tpl:DEBUG A m - a", "tpl:ERROR B m - b", "level:ERROR", "err:ERR12007", "rate:events_per_s"]
    iforest = IsolationForestDetector(seed=0, n_estimators=30).fit(X[:n_train])
    thr_if = float(np.quantile(iforest.score(X[n_train : n_train + n_val]), 0.9))
    rarity = RarityDetector().fit(np.abs(X[:n_train]))
    models = [
        ModelInput("if", "if-b", {"all": iforest}, {"all": thr_if}, X, names),
        ModelInput("rarity", "r-b", {"all": rarity}, {"all": 0.0}, np.abs(X), names),
    ]
    (tmp_path / "old_model_top_features.csv").write_text("stale")  # from an earlier run
    (tmp_path / "notes.txt").write_text("mine")  # not ours: must stay
    manifest = explain_all(models, ExplainData(meta, None, "fp"), ExplainConfig(shap_sample=20, seed=1,
                           nn_models=("if",), max_list_entries=3), tmp_path)
    assert manifest["models"] == ["if", "rarity"] and manifest["n_heldout"] == n_test
    info = manifest["per_model"]["if"]
    assert info["method"] == "tree_shap" and info["shap_rows"] == 20
    top = json.loads((tmp_path / "if_top_features.json").read_text())["features"]
    assert top[0]["name"] == "ERR12007 UNAUTHORIZED_CLIENT"  # the shifted column, readable
    assert (tmp_path / "shap_summary_if.png").is_file() and (tmp_path / "shap_bar_if.png").is_file()
    assert (tmp_path / "rarity_shap_skipped.txt").read_text().startswith("RarityDetector")
    assert manifest["per_model"]["rarity"]["method"] == "deviation"
    for model in ("if", "rarity"):
        fp = [json.loads(x) for x in (tmp_path / f"{model}_false_positives.jsonl").read_text().splitlines()]
        assert len(fp) == min(3, manifest["per_model"][model]["false_positives"]["total"])
        scores = [e["score"] for e in fp]
        assert scores == sorted(scores, reverse=True)  # most confident false alarms first
    cases_csv = pl.read_csv(tmp_path / "if_per_error_case.csv")
    assert cases_csv["n_sequences"].sum() == n_test
    caught = cases_csv.filter(pl.col("test_case") == "case_x")["recall"][0]
    false_alarms = cases_csv.filter(pl.col("test_case") == "correct")["flagged_share"][0]
    assert caught > false_alarms  # the shifted case is caught more often than normals are flagged
    nn = pl.read_csv(tmp_path / "if_nn_mapping.csv")
    assert nn.height == 3 * info["nn"]["anomalies"]
    assert set(nn["normal_seq_id"].to_list()) <= {f"s{i:03d}" for i in range(n_train)}
    assert not (tmp_path / "rarity_nn_mapping.csv").exists()
    assert not (tmp_path / "old_model_top_features.csv").exists() and (tmp_path / "notes.txt").exists()


def test_explanation_fits_the_anomaly_record_schema(state: ExplainerState, normals: np.ndarray) -> None:
    """The worker's anomaly record (shared.records, extra fields forbidden) accepts model_dump()."""
    from shared.records import Explanation as RecordExplanation

    x = np.median(normals, axis=0)
    x[5] += 9.0
    expl = SequenceExplainer(state).explain(x, ["ERROR c.n.X m - password=hunter2"], top_k=3)
    rec = RecordExplanation.model_validate(expl.model_dump())
    assert rec.top_features[0].feature == "tpl_5" and rec.top_features[0].name == LABELS[5]
    assert rec.nearest_normal is not None and rec.nearest_normal.seq_id.startswith("seq")
    assert rec.evidence == ["ERROR c.n.X m - password=***"]


def test_per_service_models_route_rows_to_their_detector() -> None:
    from batch.explain import ModelInput, NormalStats, attribute
    from shared.detectors import RarityDetector

    rng = np.random.default_rng(6)
    X = np.abs(rng.normal(size=(40, 4)))
    services = ["token"] * 20 + ["client"] * 20
    dets = {"token": RarityDetector().fit(X[:20]), "client": RarityDetector().fit(X[20:] * 0 + 1.0)}
    model = ModelInput("rarity", "b", dets, {"token": 0.1, "client": 0.2}, X, [f"f{j}" for j in range(4)])
    rows = np.array([0, 25])
    scores = model.score_rows(rows, ["token", "client"])
    assert scores[0] == pytest.approx(dets["token"].score(X[[0]])[0])
    assert scores[1] == pytest.approx(dets["client"].score(X[[25]])[0])
    np.testing.assert_array_equal(model.thresholds_of(["client", "token"]), [0.2, 0.1])
    attr = attribute(model, rows, ["token", "client"], NormalStats(X), rows, {})
    assert attr.method == "deviation" and attr.values.shape == (2, 4)
    with pytest.raises(ConfigError, match="no detector for service group 'user'"):
        model.score_rows(np.array([1]), ["user"])
    assert services[0] == "token"


def test_state_from_a_large_sparse_matrix_samples_instead_of_densifying_all() -> None:
    import scipy.sparse as sp

    X = sp.random(3000, 500, density=0.01, random_state=7, format="csr")
    ids = [f"n{i}" for i in range(3000)]
    st = build_explainer_state(X, [f"tok:{j}" for j in range(500)], ids, max_reference=100, max_stats_rows=400)
    assert st.reference.shape == (100, 500) and st.n_normals == 3000
    assert set(st.reference_seq_ids) <= set(ids)
    row = X[5].toarray()[0]
    top = SequenceExplainer(st).explain(X[5], top_k=2).top_features[0]
    assert top.value == pytest.approx(row[int(top.feature[4:])]) and top.value > 0  # a present token


def test_explain_leaves_out_services_a_per_service_bundle_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A per-service bundle trained without `key` stopped `lo2 explain` ("no detector for service group
    'key'"); now `key` is left out for every model, and the manifest and the summary say so."""
    import polars as pl

    from batch.commands.explain import _summary
    from batch.explain import ExplainConfig, ExplainData, ModelInput, explain_all

    rng = np.random.default_rng(8)
    services = ["token", "client", "key"]
    n_per = 40  # per service: 20 train, 8 validation, 12 test
    split_one = ["train"] * 20 + ["validation"] * 8 + ["test"] * 12
    n = n_per * len(services)
    X = rng.normal(size=(n, 4))
    anomalous = np.array([s == "test" and i % 3 == 0 for _ in services for i, s in enumerate(split_one)])
    X[anomalous, 2] += 6.0
    service = [s for s in services for _ in range(n_per)]
    meta = pl.DataFrame({
        "seq_id": [f"s{i:03d}" for i in range(n)], "run": [f"r{i % 5}" for i in range(n)], "service": service,
        "test_case": np.where(anomalous, "case_x", "correct").tolist(), "anomaly": anomalous.tolist(),
        "anomaly_service": anomalous.tolist(), "split": split_one * len(services),
    })
    train_of = {s: np.flatnonzero((np.asarray(service) == s) & (np.asarray(split_one * 3) == "train")) for s in services}
    per_service = {s: IsolationForestDetector(seed=0, n_estimators=20).fit(X[train_of[s]]) for s in ("token", "client")}
    pooled = IsolationForestDetector(seed=0, n_estimators=20).fit(X[np.concatenate(list(train_of.values()))])
    names = ["a", "b", "err:ERR12007", "d"]
    models = [
        ModelInput("if", "if-b", {"all": pooled}, {"all": 0.6}, X, names),
        ModelInput("sequence_lr_numeric", "lr-b", per_service, {"token": 0.6, "client": 0.6}, X, names),
    ]
    manifest = explain_all(models, ExplainData(meta, None, "fp"), ExplainConfig(shap_sample=4, seed=1,
                           nn_models=(), max_list_entries=5), tmp_path)
    assert manifest["services_left_out"] == {"key": ["sequence_lr_numeric"]}
    assert manifest["n_heldout"] == 24  # the test sequences of token and client only
    for key in ("if", "sequence_lr_numeric"):
        assert manifest["per_model"][key]["shap_rows_total"] == 24
        cases = pl.read_csv(tmp_path / f"{key}_per_error_case.csv")
        assert cases["n_sequences"].sum() == 24
        for line in (tmp_path / f"{key}_false_positives.jsonl").read_text().splitlines():
            assert json.loads(line)["service"] != "key"
    capsys.readouterr()
    _summary(manifest, tmp_path)
    out = " ".join(capsys.readouterr().out.split())
    assert "services left out: key (no detector in per-service bundle(s) sequence_lr_numeric;" in out
    # pooled bundles only: nothing left out
    again = explain_all(models[:1], ExplainData(meta, None, "fp"), ExplainConfig(shap_sample=4, nn_models=()), tmp_path)
    assert again["services_left_out"] == {} and again["n_heldout"] == 36
    # no service covered by every per-service model: a clear error, not an empty explanation
    other = ModelInput("event_lr_words", "w-b", {"key": pooled}, {"key": 0.6}, X, names)
    with pytest.raises(ConfigError, match="no service is covered by every model"):
        explain_all([models[1], other], ExplainData(meta, None, "fp"), ExplainConfig(nn_models=()), tmp_path)


def test_nn_source_default_follows_the_explained_models() -> None:
    """The default was a fixed 'if', so explaining without the IsolationForest (--skip-if, or a
    --load-model of another model) failed unless --nn-source was spelt out."""
    from batch.commands.explain import nn_models

    assert nn_models(None, ["if", "sequence_lr_numeric"]) == (("if",), "nearest normals for if (the IsolationForest; choose with --nn-source)")
    keys, note = nn_models(None, ["sequence_lr_numeric", "event_lr_words"])
    assert keys == ("sequence_lr_numeric",)
    assert note is not None and "sequence_lr_numeric (the first explained model" in note
    assert nn_models("all", ["if", "event_lr_words"]) == (("if", "event_lr_words"), None)
    assert nn_models("none", ["if"]) == ((), None)
    assert nn_models(" event_lr_words ", ["if", "event_lr_words"]) == (("event_lr_words",), None)
    with pytest.raises(ConfigError, match=r"--nn-source 'if': \['if'\] not among the explained models \['sequence_lr_numeric'\]"):
        nn_models("if", ["sequence_lr_numeric"])


@pytest.fixture(scope="module")
def lr_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small generated dataset and a saved sequence_lr_numeric bundle (no IsolationForest bundle)."""
    from batch.generate import GenerateConfig, generate
    from batch.train import TrainConfig, train
    from lo2.cli import main

    base = tmp_path_factory.mktemp("explain_nn")
    generate(GenerateConfig(out=base / "runs", runs=6, errors_per_run=4, seed=11, aux_files=False))
    assert main(["load", "--root", str(base / "runs"), "--output-dir", str(base / "parquet")]) == 0
    import polars as pl

    result = train(pl.read_parquet(base / "parquet" / "events.parquet"),
                   TrainConfig(models=("sequence_lr_numeric",), seed=3))
    result.bundles["sequence_lr_numeric"].save(base / "models" / "lr-test")
    return {"parquet": base / "parquet", "models": base / "models"}


def _explain(paths: dict[str, Path], out: Path, *flags: str) -> int:
    from lo2.cli import main

    return main(["explain", "--root", str(paths["parquet"]), "--model-dir", str(paths["models"]), "--out", str(out),
                 "--shap-sample", "10", "--nn-normal-sample", "100", "--max-list-entries", "5", *flags])


def test_explain_a_non_if_bundle_with_the_default_nn_source(
    lr_bundle: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags in (("--load-model", "lr-test"), ("--skip-if", "--sup-models", "sequence_lr_numeric")):
        out = tmp_path / flags[0].strip("-")
        assert _explain(lr_bundle, out, *flags) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert "nearest normals for sequence_lr_numeric (the first explained model" in err
        manifest = json.loads((out / "explain_manifest.json").read_text())
        assert manifest["nn_models"] == ["sequence_lr_numeric"]
        assert manifest["params"]["nn_source"] == "sequence_lr_numeric"
        assert (out / "sequence_lr_numeric_nn_mapping.csv").is_file()


def test_explain_rejects_an_explicit_nn_source_that_is_not_explained(
    lr_bundle: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _explain(lr_bundle, tmp_path / "x", "--load-model", "lr-test", "--nn-source", "if") == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (
        "lo2 explain: --nn-source 'if': ['if'] not among the explained models ['sequence_lr_numeric'] "
        "(or use 'all' / 'none')"
    )
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_explain_on_runs_the_bundle_never_saw_is_one_clear_error(
    lr_bundle: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by QA: other runs (the real sample, a newer day) made the canary fit on zero training
    rows and end in a ValueError traceback."""
    from batch.generate import GenerateConfig, generate
    from lo2.cli import main

    generate(GenerateConfig(out=tmp_path / "runs", runs=3, errors_per_run=2, seed=12, aux_files=False,
                            start_epoch=1_760_000_000))
    assert main(["load", "--root", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "parquet")]) == 0
    capsys.readouterr()
    other = {"parquet": tmp_path / "parquet", "models": lr_bundle["models"]}
    assert _explain(other, tmp_path / "out", "--load-model", "lr-test") == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "Traceback" not in text
    assert "left out 3 run(s) that are not in the bundle's" in text
    assert "none of the bundle's held-out test runs" in text
