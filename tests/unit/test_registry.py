"""Contract test over every registry key (River's check_estimator style).

Every detector must: fit and score with the right shapes, rank an easy synthetic anomaly above
normals (higher = more anomalous, the sign bug of the demo's LOF/OCSVM/IF), give the same scores
for the same seed, score purely, and survive pickling with identical scores.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from batch.registry import (
    REFERENCE_KEYS,
    REGISTRY,
    ModelSpec,
    available,
    get_spec,
    parse_model_keys,
)
from shared.detection_metrics import roc_auc
from shared.errors import ConfigError


@dataclass(frozen=True)
class Split:
    X_train: Any
    y_train: np.ndarray
    X_test: Any
    y_test: np.ndarray


def _numeric(rng: np.random.Generator, n: int, anomalous: bool) -> np.ndarray:
    X = rng.normal(0.0, 1.0, size=(n, 8))
    if anomalous:
        X[:, :3] += 5.0
    return X


def _tokens(rng: np.random.Generator, n: int, anomalous: bool) -> sp.csr_matrix:
    # 60 hashed token columns; normal sequences use 0..39, anomalies add rare columns 40..59.
    counts = np.zeros((n, 60))
    counts[:, :40] = rng.poisson(3.0, size=(n, 40))
    if anomalous:
        counts[:, 40:60] = rng.poisson(4.0, size=(n, 20))
    return sp.csr_matrix(counts)


def _canary(rng: np.random.Generator, n: int, anomalous: bool) -> np.ndarray:
    # Length and duration: anomalies are short, like v1's 10 s error phases.
    length = rng.normal(200.0 if anomalous else 1200.0, 50.0, size=n)
    duration = rng.normal(10.0 if anomalous else 60.0, 2.0, size=n)
    return np.column_stack([length, duration])


MAKERS = {"numeric": _numeric, "aggregates": _numeric, "tokens": _tokens, "canary": _canary}


def _stack(parts: list[Any]) -> Any:
    return sp.vstack(parts).tocsr() if sp.issparse(parts[0]) else np.vstack(parts)


@pytest.fixture(scope="module")
def cases() -> dict[str, Split]:
    """One easy train/test split per input kind."""
    rng = np.random.default_rng(7)
    out: dict[str, Split] = {}
    for kind, make in MAKERS.items():
        # Training data contains anomalies: unsupervised detectors must ignore them (y == 1).
        X_train = _stack([make(rng, 120, False), make(rng, 30, True)])
        y_train = np.r_[np.zeros(120), np.ones(30)].astype(bool)
        X_test = _stack([make(rng, 40, False), make(rng, 20, True)])
        y_test = np.r_[np.zeros(40), np.ones(20)].astype(bool)
        out[kind] = Split(X_train, y_train, X_test, y_test)
    return out


def _spec(key: str) -> ModelSpec:
    spec = get_spec(key)
    if not available(spec):
        # xgboost-cpu is in the `test` extra: a test environment without it is broken, not partial.
        pytest.fail(f"{key} needs {spec.needs!r}, missing from this environment: pip install -e '.[test]'")
    return spec


@pytest.mark.parametrize("key", list(REGISTRY))
def test_fit_score_shapes_and_direction(key: str, cases: dict[str, Split]) -> None:
    spec = _spec(key)
    data = cases[spec.input_kind]
    detector = spec.build(seed=3)
    assert detector.fit(data.X_train, data.y_train) is detector
    scores = detector.score(data.X_test)
    assert scores.shape == (data.X_test.shape[0],)
    assert scores.dtype == np.float64
    assert np.isfinite(scores).all()
    # Higher = more anomalous on an easy case (the reference's sign bugs would give ~0).
    assert roc_auc(data.y_test, scores) >= 0.9, key


@pytest.mark.parametrize("key", list(REGISTRY))
def test_same_seed_same_scores_and_pure_scoring(key: str, cases: dict[str, Split]) -> None:
    spec = _spec(key)
    data = cases[spec.input_kind]
    first = spec.build(seed=11).fit(data.X_train, data.y_train)
    second = spec.build(seed=11).fit(data.X_train, data.y_train)
    a = first.score(data.X_test)
    np.testing.assert_array_equal(a, second.score(data.X_test))
    np.testing.assert_array_equal(a, first.score(data.X_test))  # scoring did not change the model


@pytest.mark.parametrize("key", list(REGISTRY))
def test_pickle_round_trip_scores_identically(key: str, cases: dict[str, Split]) -> None:
    spec = _spec(key)
    data = cases[spec.input_kind]
    detector = spec.build(seed=5).fit(data.X_train, data.y_train)
    clone = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(clone.score(data.X_test), detector.score(data.X_test))


@pytest.mark.parametrize("key", [k for k, s in REGISTRY.items() if not s.supervised])
def test_unsupervised_models_ignore_anomalous_training_rows(key: str, cases: dict[str, Split]) -> None:
    spec = get_spec(key)
    data = cases[spec.input_kind]
    normal = ~data.y_train
    with_labels = spec.build(seed=1).fit(data.X_train, data.y_train).score(data.X_test)
    normal_only = spec.build(seed=1).fit(data.X_train[normal], None).score(data.X_test)
    np.testing.assert_allclose(with_labels, normal_only, err_msg=key)


def test_supervised_models_refuse_one_class_training() -> None:
    X = np.random.default_rng(0).normal(size=(20, 8))
    with pytest.raises(ValueError, match="normal and anomalous"):
        get_spec("sequence_lr_numeric").build(seed=0).fit(X, np.zeros(20, dtype=bool))


def test_registry_keeps_reference_keys_and_adds_if_hst_canary() -> None:
    assert len(REFERENCE_KEYS) == 13
    assert set(REFERENCE_KEYS) | {"if", "hst", "canary"} == set(REGISTRY)
    assert get_spec("canary").input_kind == "canary"
    assert not get_spec("if").supervised and not get_spec("hst").supervised


def test_unknown_keys_and_params_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model key 'event_lr_wrods'"):
        parse_model_keys("if,event_lr_wrods")
    assert parse_model_keys(" if, hst ,if") == ["if", "hst"]
    with pytest.raises(ConfigError, match="no parameter"):
        get_spec("if").build(seed=0, params={"n_estimater": 3})


def test_kmeans_scores_by_distance_not_cluster_id() -> None:
    # A point far from every normal centroid scores higher than any normal point.
    rng = np.random.default_rng(2)
    X = sp.csr_matrix(rng.poisson(2.0, size=(50, 10)) * (rng.random((50, 10)) < 0.3))
    far = sp.csr_matrix(np.ones((1, 10)) * 5)
    det = get_spec("event_kmeans_words").build(seed=0).fit(X)
    assert det.score(far)[0] > det.score(X).max()


def test_oov_counts_unseen_occurrences() -> None:
    train = sp.csr_matrix(np.array([[2, 1, 0, 0], [1, 3, 0, 0]]))
    det = get_spec("event_oov_words").build(seed=0, params={"normalise": False}).fit(train)
    test = sp.csr_matrix(np.array([[5, 5, 0, 0], [1, 0, 2, 3]]))
    np.testing.assert_array_equal(det.score(test), [0.0, 5.0])
    shares = get_spec("event_oov_words").build(seed=0).fit(train).score(test)
    np.testing.assert_allclose(shares, [0.0, 5.0 / 6.0])
