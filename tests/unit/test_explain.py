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
        '10:00:00.001 [XNIO-1 task-1]  abc DEBUG c.n.X m - validate( "Basic Zjc1MjllN2U6c2VjcmV0", authorization)',
        "10:00:00.002 [XNIO-1 task-1]  abc ERROR c.n.X m - ApiException ERR12007 wrong client secret",
    ]
    chosen = select_evidence(lines, ["ApiException <*> wrong", 'validate( "Basic <*>'], max_lines=2)
    assert len(chosen) == 2
    assert not any("startup noise" in line for line in chosen)
    assert not any("Zjc1MjllN2U6c2VjcmV0" in line for line in chosen)
    assert any("Basic ***" in line for line in chosen)
    # keyed items match by template key; unmatched sequences still give some evidence
    keyed = [("t1", "a"), ("t2", "b"), ("t3", "c")]
    assert select_evidence(keyed, [("t3", "whatever")], 1) == ["c"]
    assert select_evidence(keyed, [("zz", "nothing")], 2) == ["a", "b"]
    assert select_evidence(keyed, [("t1", "a")], 0) == []


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
    assert feature_label("rate:events_per_s") == "rate:events_per_s"

    class Spec:
        top_template_ids = (5, 9)

    assert feature_templates_of(Spec(), 4) == ["5", "9", None, None]


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
