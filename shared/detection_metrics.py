"""Detection metrics: one definition of every number we report, shared by batch and worker.

Why this module exists: the LogLead demo computed its headline numbers in several places, with
accuracy as the headline, on the training data, and with the threshold direction of some models
inverted.  Here every metric is a small pure function of ``(y_true, scores)`` with
**higher score = more anomalous**, and the two metrics the demo reported (Precision@k and
FP-rate@α) keep the demo's exact definitions (reference §5) so that numbers stay comparable.
FP-rate@α in the reference is *not* the share of false alarms among the alerts; both are offered,
under names that say which is which.

Degenerate inputs (one class only, k ≤ 0, no normal rows, ...) do not raise: they give a
:class:`MetricValue` that is NaN and carries a ``reason``.  A ``MetricValue`` *is* a ``float``, so
it can be used, summed, and JSON-encoded like one.  Malformed inputs (different lengths, NaN
scores, a quantile outside [0, 1]) raise :class:`ValueError` naming the value and what was
expected, because they are bugs, not data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

#: PSI below this: the distribution is stable (the usual industry band).
PSI_MODERATE = 0.1
#: PSI at or above this: significant shift; retrain or investigate.
PSI_SIGNIFICANT = 0.25
#: Added inside the PSI logarithm only, exactly as the reference (metrics_utils.py) does.
PSI_EPSILON = 1e-8
#: Number of quantile bins of the reference PSI.
PSI_BINS = 10

PsiBand = Literal["stable", "moderate", "significant", "undefined"]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class MetricValue(float):
    """A float that may be NaN with a human-readable ``reason`` saying why it is undefined."""

    reason: str | None

    def __new__(cls, value: float, reason: str | None = None) -> MetricValue:
        obj = super().__new__(cls, value)
        obj.reason = reason
        return obj

    @classmethod
    def undefined(cls, reason: str) -> MetricValue:
        """A NaN metric and the reason it cannot be computed."""
        return cls(math.nan, reason)

    @property
    def defined(self) -> bool:
        return not math.isnan(self)

    def __repr__(self) -> str:
        if self.reason is not None:
            return f"MetricValue(nan, reason={self.reason!r})"
        return f"MetricValue({float(self)!r})"


# --- input checks ---------------------------------------------------------------------------


def _labels(y_true: ArrayLike, name: str = "y_true") -> BoolArray:
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][:3].tolist()
        raise ValueError(f"{name} must hold booleans or 0/1 labels, got values like {bad}")
    return arr.astype(np.bool_)


def _scores(scores: ArrayLike, name: str = "scores") -> FloatArray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/inf value(s) of {arr.size}")
    return arr


def _pair(y_true: ArrayLike, scores: ArrayLike) -> tuple[BoolArray, FloatArray]:
    y = _labels(y_true)
    s = _scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores must have the same length, got {y.size} and {s.size}")
    return y, s


def _both_classes(y: BoolArray) -> str | None:
    if y.size == 0:
        return "no rows"
    n_pos = int(y.sum())
    if n_pos == 0:
        return f"only normal rows ({y.size}), no anomalies"
    if n_pos == y.size:
        return f"only anomalous rows ({y.size}), no normals"
    return None


def _rank_desc(scores: FloatArray) -> npt.NDArray[np.intp]:
    """Indices by score, highest first; ties keep input order (deterministic, documented)."""
    return np.argsort(-scores, kind="stable")


# --- ranking metrics ------------------------------------------------------------------------


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> MetricValue:
    """Area under the ROC curve (probability a random anomaly outranks a random normal; ties 1/2).

    Computed from mid-ranks (Mann-Whitney U), which equals sklearn's ``roc_auc_score``.
    """
    y, s = _pair(y_true, scores)
    reason = _both_classes(y)
    if reason:
        return MetricValue.undefined(f"ROC-AUC needs both classes: {reason}")
    from scipy.stats import rankdata

    ranks = rankdata(s, method="average")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return MetricValue(u / (n_pos * n_neg))


def pr_auc(y_true: ArrayLike, scores: ArrayLike) -> MetricValue:
    """Average precision: Σ (R_n − R_{n−1}) · P_n over distinct score thresholds (no interpolation).

    The same step-wise definition as sklearn's ``average_precision_score``; tied scores form one
    threshold.  Its chance level is the anomaly share, not 0.5: read it next to that share.
    """
    y, s = _pair(y_true, scores)
    if y.size == 0:
        return MetricValue.undefined("PR-AUC needs rows: no rows")
    n_pos = int(y.sum())
    if n_pos == 0:
        return MetricValue.undefined(f"PR-AUC needs anomalies: only normal rows ({y.size})")
    order = _rank_desc(s)
    s_sorted = s[order]
    y_sorted = y[order]
    tp = np.cumsum(y_sorted)
    # last index of each run of equal scores = one threshold
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]
    tp_at = tp[last].astype(np.float64)
    n_at = (last + 1).astype(np.float64)
    precision = tp_at / n_at
    recall = tp_at / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return MetricValue(float(np.sum((recall - recall_prev) * precision)))


def precision_at_k(y_true: ArrayLike, scores: ArrayLike, k: int) -> MetricValue:
    """Share of anomalies among the k highest-scored rows (reference definition, §5).

    m = min(k, N) rows are taken; ties at the cut keep input order.
    """
    y, s = _pair(y_true, scores)
    if k <= 0:
        return MetricValue.undefined(f"Precision@k needs k >= 1, got k={k}")
    if y.size == 0:
        return MetricValue.undefined("Precision@k needs rows: no rows")
    m = min(k, y.size)
    top = _rank_desc(s)[:m]
    return MetricValue(float(y[top].sum()) / m)


def _alert_cutoff(n: int, alpha: float) -> int:
    return max(1, math.ceil(n * min(alpha, 1.0)))


def fp_rate_at_alpha(y_true: ArrayLike, scores: ArrayLike, alpha: float) -> MetricValue:
    """Reference FP-rate@α: false positives in the top-α alert set divided by ALL normal rows.

    cutoff = max(1, ceil(N·α)) highest-scored rows are alerts (α clipped to ≤ 1).  This is "the
    share of all normals that land in the alert set" — the LogLead definition, kept for
    comparability.  For "how many of the alerts are false", use
    :func:`false_alarm_share_at_alpha`.
    """
    y, s = _pair(y_true, scores)
    if alpha <= 0:
        return MetricValue.undefined(f"FP-rate@alpha needs alpha > 0, got alpha={alpha}")
    if y.size == 0:
        return MetricValue.undefined("FP-rate@alpha needs rows: no rows")
    n_normal = int((~y).sum())
    if n_normal == 0:
        return MetricValue.undefined(f"FP-rate@alpha needs normal rows: only anomalies ({y.size})")
    cutoff = _alert_cutoff(y.size, alpha)
    top = _rank_desc(s)[:cutoff]
    fp = cutoff - int(y[top].sum())
    return MetricValue(fp / n_normal)


def false_alarm_share_at_alpha(y_true: ArrayLike, scores: ArrayLike, alpha: float) -> MetricValue:
    """Share of false alarms in the top-α alert set: FP / cutoff (= 1 − precision of the alerts).

    Same alert set as :func:`fp_rate_at_alpha` (cutoff = max(1, ceil(N·α))), different
    denominator: this is what an on-call person experiences.
    """
    y, s = _pair(y_true, scores)
    if alpha <= 0:
        return MetricValue.undefined(f"false-alarm share needs alpha > 0, got alpha={alpha}")
    if y.size == 0:
        return MetricValue.undefined("false-alarm share needs rows: no rows")
    cutoff = _alert_cutoff(y.size, alpha)
    top = _rank_desc(s)[:cutoff]
    fp = cutoff - int(y[top].sum())
    return MetricValue(fp / cutoff)


# --- threshold metrics ----------------------------------------------------------------------


def threshold_from_quantile(normal_scores: ArrayLike, quantile: float) -> MetricValue:
    """Alert threshold = the ``quantile`` of scores of known-normal rows (linear interpolation).

    Use validation ``correct`` scores, never test scores: a 0.99 quantile then means "about 1 %
    of normal sequences alert".  ``quantile`` is a fraction in [0, 1] (0.99, not 99).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be a fraction in [0, 1], got {quantile}")
    s = _scores(normal_scores, "normal_scores")
    if s.size == 0:
        return MetricValue.undefined("threshold needs normal scores: none given")
    return MetricValue(float(np.quantile(s, quantile)))


def predict_at_threshold(scores: ArrayLike, threshold: float) -> BoolArray:
    """Alert where score >= threshold (the reference's ``pred_if_threshold`` rule)."""
    s = _scores(scores)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN; cannot decide alerts (was it calibrated on no normals?)")
    return s >= threshold


def alert_rate(scores: ArrayLike, threshold: float) -> MetricValue:
    """Share of rows that alert at ``threshold`` (score >= threshold)."""
    s = _scores(scores)
    if s.size == 0:
        return MetricValue.undefined("alert rate needs rows: no rows")
    if math.isnan(threshold):
        return MetricValue.undefined("alert rate needs a threshold: threshold is NaN")
    return MetricValue(float((s >= threshold).mean()))


@dataclass(frozen=True)
class ThresholdMetrics:
    """Confusion counts and the rates derived from them at one threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: MetricValue
    recall: MetricValue
    f1: MetricValue
    alert_rate: MetricValue
    false_positive_rate: MetricValue

    def as_dict(self) -> dict[str, float | int]:
        return {
            "threshold": float(self.threshold),
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "precision": float(self.precision),
            "recall": float(self.recall),
            "f1": float(self.f1),
            "alert_rate": float(self.alert_rate),
            "false_positive_rate": float(self.false_positive_rate),
        }


def _ratio(num: int, den: int, what: str) -> MetricValue:
    if den == 0:
        return MetricValue.undefined(f"{what}: denominator is 0")
    return MetricValue(num / den)


def threshold_metrics(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> ThresholdMetrics:
    """Precision, recall, F1, alert rate and FPR when alerting at score >= ``threshold``.

    Precision is NaN (with a reason) when nothing alerts; F1 is 0 when there are anomalies but no
    true positives, NaN when there are no anomalies at all.
    """
    y, s = _pair(y_true, scores)
    if math.isnan(threshold):
        nan = MetricValue.undefined("threshold is NaN")
        return ThresholdMetrics(threshold, 0, 0, 0, 0, nan, nan, nan, nan, nan)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = _ratio(tp, tp + fp, "precision (no alerts)")
    recall = _ratio(tp, tp + fn, "recall (no anomalies)")
    if tp + fn == 0:
        f1 = MetricValue.undefined("F1 needs anomalies: no anomalies")
    else:
        f1 = MetricValue(2 * tp / (2 * tp + fp + fn))
    rate = _ratio(tp + fp, y.size, "alert rate (no rows)")
    fpr = _ratio(fp, fp + tn, "false-positive rate (no normals)")
    return ThresholdMetrics(threshold, tp, fp, tn, fn, precision, recall, f1, rate, fpr)


def f1_at_threshold(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> MetricValue:
    """F1 of the alerts at score >= ``threshold``."""
    return threshold_metrics(y_true, scores, threshold).f1


# --- PSI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PsiReference:
    """Reference histogram for PSI: bin edges (first −inf, last +inf) and counts per bin.

    Stored in the model bundle so the worker compares live scores against the training ones
    without keeping the raw training scores.
    """

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {"edges": list(self.edges), "counts": list(self.counts)}

    def as_json_dict(self) -> dict[str, list[float | None] | list[int]]:
        """JSON has no infinity: the open ends are written as null (what bundle manifests store)."""
        return {"edges": [None if math.isinf(e) else e for e in self.edges], "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float | None]]) -> PsiReference:
        """Read :meth:`as_dict` or :meth:`as_json_dict` output (null first/last edge = −inf/+inf)."""
        raw = list(data["edges"])
        edges: list[float] = []
        for i, e in enumerate(raw):
            if e is None:
                if i not in (0, len(raw) - 1):
                    raise ValueError(f"PSI edge {i} of {len(raw)} is null; only the first and last may be open")
                edges.append(-math.inf if i == 0 else math.inf)
            else:
                edges.append(float(e))
        counts = tuple(int(c) for c in data["counts"] if c is not None)
        if len(counts) != len(edges) - 1:
            raise ValueError(f"PSI reference has {len(counts)} counts for {len(edges)} edges; expected edges - 1")
        return cls(tuple(edges), counts)


def _bin_counts(edges: Sequence[float], sample: FloatArray) -> npt.NDArray[np.int64]:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"PSI edges must be a 1-D sequence of >= 2 values, got {e.size}")
    if np.any(np.diff(e) < 0):
        raise ValueError(f"PSI edges must be non-decreasing, got {e.tolist()[:12]}")
    n_bins = e.size - 1
    # bin i = [e[i], e[i+1]); the last bin also takes values equal to its upper edge
    idx = np.searchsorted(e[1:-1], sample, side="right")
    return np.bincount(np.clip(idx, 0, n_bins - 1), minlength=n_bins).astype(np.int64)


def psi_reference(base: ArrayLike, bins: int = PSI_BINS) -> PsiReference:
    """Reference histogram: edges at the quantiles 0, 1/bins, …, 1 of ``base``; ends set to ±inf.

    Equal quantiles (many tied scores) give empty bins, which is harmless: both sides are 0 there.
    """
    if bins < 1:
        raise ValueError(f"PSI bins must be >= 1, got {bins}")
    b = _scores(base, "base")
    if b.size == 0:
        raise ValueError("PSI reference needs at least one base value, got none")
    edges = np.quantile(b, np.linspace(0.0, 1.0, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    counts = _bin_counts(edges.tolist(), b)
    return PsiReference(tuple(float(x) for x in edges), tuple(int(c) for c in counts))


def psi(
    reference_edges: Sequence[float],
    reference_counts: Sequence[int],
    sample: ArrayLike,
    eps: float = PSI_EPSILON,
) -> MetricValue:
    """Population stability index of ``sample`` against a reference histogram.

    PSI = Σ (t_i − b_i) · ln((t_i + ε) / (b_i + ε)), with b, t the bin shares of reference and
    sample; ε only inside the log (reference §5), so a bin empty on one side stays finite.
    Bands: < 0.1 stable, 0.1–0.25 moderate, ≥ 0.25 significant (see :func:`psi_band`).
    """
    counts = np.asarray(reference_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size != len(reference_edges) - 1:
        raise ValueError(
            f"PSI reference_counts must have len(edges) - 1 = {len(reference_edges) - 1} values, "
            f"got {counts.size}"
        )
    if np.any(counts < 0):
        raise ValueError("PSI reference_counts must be >= 0")
    t_raw = _scores(sample, "sample")
    if t_raw.size == 0:
        return MetricValue.undefined("PSI needs a sample: sample is empty")
    if counts.sum() == 0:
        return MetricValue.undefined("PSI needs a reference: reference counts are all 0")
    t = _bin_counts(reference_edges, t_raw).astype(np.float64) / max(t_raw.size, 1)
    b = counts / max(counts.sum(), 1.0)
    return MetricValue(float(np.sum((t - b) * np.log((t + eps) / (b + eps)))))


def population_stability_index(base: ArrayLike, target: ArrayLike, bins: int = PSI_BINS) -> MetricValue:
    """PSI of ``target`` against ``base`` with quantile bins of ``base`` (the reference function)."""
    b = _scores(base, "base")
    if b.size == 0:
        return MetricValue.undefined("PSI needs a base: base is empty")
    ref = psi_reference(b, bins)
    return psi(ref.edges, ref.counts, target)


def psi_band(value: float) -> PsiBand:
    """Name the PSI band: stable (< 0.1), moderate (0.1–0.25), significant (≥ 0.25)."""
    if math.isnan(value):
        return "undefined"
    if value < PSI_MODERATE:
        return "stable"
    if value < PSI_SIGNIFICANT:
        return "moderate"
    return "significant"


# --- all at once ----------------------------------------------------------------------------


def ranking_metrics(
    y_true: ArrayLike,
    scores: ArrayLike,
    ks: Sequence[int] = (10,),
    alphas: Sequence[float] = (0.01,),
) -> dict[str, MetricValue]:
    """ROC-AUC, PR-AUC, Precision@k and both FP@α variants, keyed like the reference's JSON.

    Keys: ``roc_auc``, ``pr_auc``, ``precision_at_<k>``, ``fp_rate_at_<alpha>`` (reference
    definition), ``false_alarm_share_at_<alpha>``, ``anomaly_share`` (PR-AUC's chance level).
    """
    y, s = _pair(y_true, scores)
    out: dict[str, MetricValue] = {
        "roc_auc": roc_auc(y, s),
        "pr_auc": pr_auc(y, s),
        "anomaly_share": (
            MetricValue(float(y.mean())) if y.size else MetricValue.undefined("no rows")
        ),
    }
    for k in ks:
        out[f"precision_at_{k}"] = precision_at_k(y, s, k)
    for a in alphas:
        out[f"fp_rate_at_{a}"] = fp_rate_at_alpha(y, s, a)
        out[f"false_alarm_share_at_{a}"] = false_alarm_share_at_alpha(y, s, a)
    return out
