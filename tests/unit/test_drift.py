from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry

from shared import detection_metrics as dm
from worker.drift import DriftMonitor


def _json_ref(values: np.ndarray) -> dict[str, object]:
    ref = dm.psi_reference(values)
    return {"edges": [None if math.isinf(e) else e for e in ref.edges], "counts": list(ref.counts)}


def _reference(rng: np.random.Generator) -> dict[str, object]:
    feature = _json_ref(rng.normal(0.0, 1.0, 5000))
    feature["index"] = 1
    return {"scores": {"all": _json_ref(rng.normal(0.4, 0.05, 5000))}, "features": {"share:error": feature}}


def _gauge(registry: CollectorRegistry, kind: str, name: str) -> float | None:
    return registry.get_sample_value("lo2_worker_psi", {"kind": kind, "name": name})


def test_same_distribution_stays_stable_and_shift_is_flagged() -> None:
    rng = np.random.default_rng(0)
    registry = CollectorRegistry()
    mon = DriftMonitor.from_reference(_reference(rng), registry, window=1000, every=100, min_values=200)
    assert mon.tracked == [("feature", "share:error"), ("score", "all")]

    for _ in range(10):
        rows = np.column_stack([rng.normal(size=100), rng.normal(0.0, 1.0, 100)])
        mon.observe("all", rng.normal(0.4, 0.05, 100), rows)
    stable_score = _gauge(registry, "score", "all")
    stable_feature = _gauge(registry, "feature", "share:error")
    assert stable_score is not None and stable_score < 0.1
    assert stable_feature is not None and stable_feature < 0.1

    for _ in range(10):
        rows = np.column_stack([rng.normal(size=100), rng.normal(1.5, 1.0, 100)])
        mon.observe("all", rng.normal(0.55, 0.05, 100), rows)
    shifted_score = _gauge(registry, "score", "all")
    shifted_feature = _gauge(registry, "feature", "share:error")
    assert shifted_score is not None and shifted_score >= 0.25
    assert shifted_feature is not None and shifted_feature >= 0.25


def test_nothing_published_before_min_values_and_unknown_groups_ignored() -> None:
    rng = np.random.default_rng(1)
    registry = CollectorRegistry()
    mon = DriftMonitor.from_reference(_reference(rng), registry, every=10, min_values=500)
    mon.observe("all", rng.normal(0.4, 0.05, 100))
    mon.observe("token", rng.normal(0.4, 0.05, 100))  # no reference for this group
    assert _gauge(registry, "score", "all") is None
    assert math.isnan(mon.snapshot()["score:all"])


def test_reload_replaces_series() -> None:
    rng = np.random.default_rng(2)
    registry = CollectorRegistry()
    mon = DriftMonitor.from_reference(_reference(rng), registry, every=50, min_values=50)
    mon.observe("all", rng.normal(0.4, 0.05, 100))
    assert _gauge(registry, "score", "all") is not None
    mon.load_reference({"scores": {"token": _json_ref(rng.normal(size=1000))}})
    assert _gauge(registry, "score", "all") is None
    assert mon.tracked == [("score", "token")]


def test_window_is_bounded() -> None:
    rng = np.random.default_rng(3)
    mon = DriftMonitor.from_reference(_reference(rng), CollectorRegistry(), window=300)
    for _ in range(20):
        mon.observe("all", rng.normal(0.4, 0.05, 100))
    assert len(mon._tracked[("score", "all")].values) == 300
