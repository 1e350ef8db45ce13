"""Detection metrics: hand-computed cases, the reference definitions, and properties."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from shared.detection_metrics import (
    MetricValue,
    alert_rate,
    f1_at_threshold,
    false_alarm_share_at_alpha,
    fp_rate_at_alpha,
    population_stability_index,
    pr_auc,
    precision_at_k,
    psi,
    psi_band,
    psi_reference,
    ranking_metrics,
    roc_auc,
    threshold_from_quantile,
    threshold_metrics,
)

# 6 rows: scores ranked 0.9 (A), 0.8 (N), 0.7 (A), 0.4 (N), 0.3 (N), 0.1 (A)
Y = [True, False, True, False, False, True]
S = [0.9, 0.8, 0.7, 0.4, 0.3, 0.1]


def test_roc_auc_hand_computed() -> None:
    # pairs (anomaly > normal): A0.9 beats 3, A0.7 beats 2, A0.1 beats 0 -> 5 of 9
    assert roc_auc(Y, S) == pytest.approx(5 / 9)


def test_roc_auc_ties_count_half() -> None:
    assert roc_auc([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([True, False, False], [0.5, 0.5, 0.1]) == pytest.approx(0.75)


def test_pr_auc_hand_computed() -> None:
    # thresholds: top1 P=1 R=1/3; top3 P=2/3 R=2/3; top6 P=1/2 R=1
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (1 / 2)
    assert pr_auc(Y, S) == pytest.approx(expected)


def test_precision_at_k_reference_definition() -> None:
    assert precision_at_k(Y, S, 1) == 1.0
    assert precision_at_k(Y, S, 2) == 0.5
    assert precision_at_k(Y, S, 3) == pytest.approx(2 / 3)
    # k larger than N: m = N
    assert precision_at_k(Y, S, 100) == 0.5


def test_fp_rate_at_alpha_reference_and_false_alarm_share_differ() -> None:
    # alpha 0.5 -> cutoff ceil(3) = 3 rows: A, N, A -> 1 FP; normals in whole set = 3
    assert fp_rate_at_alpha(Y, S, 0.5) == pytest.approx(1 / 3)
    assert false_alarm_share_at_alpha(Y, S, 0.5) == pytest.approx(1 / 3)
    # alpha 0.34 -> cutoff ceil(2.04) = 3; alpha 0.2 -> ceil(1.2) = 2 rows: A, N -> FP 1
    assert fp_rate_at_alpha(Y, S, 0.2) == pytest.approx(1 / 3)
    assert false_alarm_share_at_alpha(Y, S, 0.2) == pytest.approx(1 / 2)
    # tiny alpha still alerts on one row (max(1, ...)): the top row is an anomaly
    assert fp_rate_at_alpha(Y, S, 1e-9) == 0.0
    # alpha clipped to 1: everything alerts; every normal is a false positive
    assert fp_rate_at_alpha(Y, S, 5.0) == 1.0
    assert false_alarm_share_at_alpha(Y, S, 1.0) == 0.5


def test_threshold_metrics_hand_computed() -> None:
    m = threshold_metrics(Y, S, 0.7)  # alerts: 0.9 A, 0.8 N, 0.7 A (>=)
    assert (m.tp, m.fp, m.tn, m.fn) == (2, 1, 2, 1)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.alert_rate == 0.5
    assert m.false_positive_rate == pytest.approx(1 / 3)
    assert f1_at_threshold(Y, S, 0.7) == pytest.approx(2 / 3)
    assert alert_rate(S, 0.7) == 0.5


def test_threshold_from_quantile_is_numpy_linear_quantile() -> None:
    normals = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert threshold_from_quantile(normals, 0.5) == 3.0
    assert threshold_from_quantile(normals, 0.9) == pytest.approx(4.6)
    with pytest.raises(ValueError, match=r"quantile must be a fraction in \[0, 1\], got 99"):
        threshold_from_quantile(normals, 99)


def test_degenerate_cases_give_nan_with_reason() -> None:
    only_normal = roc_auc([False, False], [0.1, 0.2])
    assert math.isnan(only_normal) and not only_normal.defined
    assert only_normal.reason is not None and "only normal rows" in only_normal.reason
    only_anomalies = roc_auc([True, True], [0.1, 0.2])
    assert only_anomalies.reason is not None and "no normals" in only_anomalies.reason
    assert "anomalies" in (pr_auc([False], [0.3]).reason or "")
    assert "k >= 1" in (precision_at_k(Y, S, 0).reason or "")
    assert "no rows" in (precision_at_k([], [], 5).reason or "")
    assert "alpha > 0" in (fp_rate_at_alpha(Y, S, 0).reason or "")
    assert "normal rows" in (fp_rate_at_alpha([True], [1.0], 0.1).reason or "")
    assert "none given" in (threshold_from_quantile([], 0.99).reason or "")
    m = threshold_metrics([False, False], [0.1, 0.2], 0.15)
    assert math.isnan(m.f1) and math.isnan(m.recall)
    assert m.fp == 1 and m.false_positive_rate == 0.5
    nothing_alerts = threshold_metrics(Y, S, 10.0)
    assert math.isnan(nothing_alerts.precision) and nothing_alerts.f1 == 0.0
    assert "sample is empty" in (psi([-math.inf, math.inf], [3], []).reason or "")


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="same length, got 2 and 3"):
        roc_auc([True, False], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must be finite"):
        roc_auc([True, False], [0.1, math.nan])
    with pytest.raises(ValueError, match="booleans or 0/1"):
        roc_auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="len\\(edges\\) - 1"):
        psi([0.0, 1.0, 2.0], [1], [0.5])


def test_metric_value_behaves_like_a_float() -> None:
    v = roc_auc(Y, S)
    assert isinstance(v, float) and v.reason is None
    assert json.loads(json.dumps({"v": v}))["v"] == pytest.approx(5 / 9)
    nan = MetricValue.undefined("because")
    back = pickle.loads(pickle.dumps(nan))
    assert math.isnan(back) and back.reason == "because"
    assert "because" in repr(nan)


def test_psi_hand_computed() -> None:
    # reference halves [-inf, 0) and [0, inf) with 50/50; sample 100 % in the upper bin
    value = psi([-math.inf, 0.0, math.inf], [5, 5], [1.0, 2.0, 3.0])
    eps = 1e-8
    expected = (0 - 0.5) * math.log((0 + eps) / (0.5 + eps)) + (1 - 0.5) * math.log((1 + eps) / (0.5 + eps))
    assert value == pytest.approx(expected)
    assert psi_band(value) == "significant"


def test_psi_bands() -> None:
    assert psi_band(0.0) == "stable"
    assert psi_band(0.0999) == "stable"
    assert psi_band(0.1) == "moderate"
    assert psi_band(0.2499) == "moderate"
    assert psi_band(0.25) == "significant"
    assert psi_band(math.nan) == "undefined"


def test_psi_detects_a_shift_and_not_a_resample() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 5000)
    same = rng.normal(0, 1, 5000)
    shifted = rng.normal(1.0, 1, 5000)
    assert psi_band(population_stability_index(base, same)) == "stable"
    assert psi_band(population_stability_index(base, shifted)) == "significant"


def test_psi_reference_round_trips_and_has_infinite_ends() -> None:
    ref = psi_reference(np.arange(100.0), bins=10)
    assert ref.edges[0] == -math.inf and ref.edges[-1] == math.inf
    assert sum(ref.counts) == 100 and len(ref.counts) == 10
    from shared.detection_metrics import PsiReference

    assert PsiReference.from_dict(json.loads(json.dumps(ref.as_dict()))) == ref
    # strict JSON (bundle manifests): open ends are null and read back as -inf/+inf
    text = json.dumps(ref.as_json_dict(), allow_nan=False)
    assert PsiReference.from_dict(json.loads(text)) == ref
    with pytest.raises(ValueError, match="only the first and last"):
        PsiReference.from_dict({"edges": [None, None, 1.0, None], "counts": [1, 1, 1]})
    with pytest.raises(ValueError, match="2 counts for 4 edges"):
        PsiReference.from_dict({"edges": [None, 0.0, 1.0, None], "counts": [1, 1]})


def test_ranking_metrics_keys_follow_the_reference_json() -> None:
    out = ranking_metrics(Y, S, ks=(2,), alphas=(0.5,))
    assert set(out) == {
        "roc_auc",
        "pr_auc",
        "anomaly_share",
        "precision_at_2",
        "fp_rate_at_0.5",
        "false_alarm_share_at_0.5",
    }
    assert out["anomaly_share"] == 0.5


# --- properties ------------------------------------------------------------------------------

labelled = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.integers(min_value=-5, max_value=5).map(float), min_size=n, max_size=n),
    )
)


@given(labelled)
@settings(max_examples=150, deadline=None)
def test_roc_and_pr_auc_match_sklearn(data: tuple[list[bool], list[float]]) -> None:
    y, s = data
    if len(set(y)) < 2:
        assert math.isnan(roc_auc(y, s))
        return
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert pr_auc(y, s) == pytest.approx(average_precision_score(y, s))


@given(labelled, st.integers(min_value=1, max_value=100))
@settings(max_examples=150, deadline=None)
def test_precision_at_k_bounds(data: tuple[list[bool], list[float]], k: int) -> None:
    y, s = data
    p = precision_at_k(y, s, k)
    assert 0.0 <= p <= 1.0
    m = min(k, len(y))
    # P@k can never exceed what the positives allow, nor fall below what they force
    assert p <= min(sum(y), m) / m + 1e-12
    assert p >= max(0, m - (len(y) - sum(y))) / m - 1e-12


@given(labelled, st.floats(min_value=1e-6, max_value=1.0))
@settings(max_examples=150, deadline=None)
def test_fp_rates_are_in_bounds_and_related(data: tuple[list[bool], list[float]], alpha: float) -> None:
    y, s = data
    fpr = fp_rate_at_alpha(y, s, alpha)
    share = false_alarm_share_at_alpha(y, s, alpha)
    assert 0.0 <= share <= 1.0
    n_normal = len(y) - sum(y)
    if n_normal == 0:
        assert math.isnan(fpr)
        return
    cutoff = max(1, math.ceil(len(y) * alpha))
    assert 0.0 <= fpr <= 1.0
    # both count the same false positives with different denominators
    assert fpr * n_normal == pytest.approx(share * cutoff)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=200), st.integers(1, 20))
@settings(max_examples=150, deadline=None)
def test_psi_of_identical_distribution_is_zero(values: list[float], bins: int) -> None:
    ref = psi_reference(values, bins=bins)
    assert psi(ref.edges, ref.counts, values) == pytest.approx(0.0, abs=1e-12)


@given(
    st.lists(st.floats(min_value=-100, max_value=100), min_size=1, max_size=100),
    st.lists(st.floats(min_value=-100, max_value=100), min_size=1, max_size=100),
)
@settings(max_examples=150, deadline=None)
def test_psi_is_non_negative(base: list[float], target: list[float]) -> None:
    assert population_stability_index(base, target) >= -1e-12


@given(labelled, st.floats(min_value=0.0, max_value=1.0))
@settings(max_examples=100, deadline=None)
def test_alert_rate_at_validation_quantile(data: tuple[list[bool], list[float]], q: float) -> None:
    _, s = data
    thr = threshold_from_quantile(s, q)
    rate = alert_rate(s, thr)
    # at least the rows at or above the quantile alert (>= keeps ties in)
    assert rate >= (1.0 - q) - 1.0 / len(s) - 1e-12
    assert rate == threshold_metrics([False] * len(s), s, thr).alert_rate
