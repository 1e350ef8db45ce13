"""Fitted anomaly detectors with one contract: ``fit(X, y) -> self`` and ``score(X) -> scores``.

Why this lives in ``shared/``: a model bundle pickles these objects, and the worker unpickles them.
Unpickling imports the defining module, so the classes must sit where both batch and worker may
import from (``batch/registry.py`` only holds the *specs* and factories that build them).

The contract, the same for every detector:
- ``score`` returns one float per row, **higher = more anomalous** (no sign juggling downstream;
  the LogLead demo's LOF/OCSVM/IF ranks were inverted because ``decision_function`` means "more
  normal").  Supervised detectors return the positive-class probability.
- Unsupervised detectors learn only from rows with ``y == 0`` when labels are given (they model
  "normal"); all rows when ``y`` is None.
- ``score`` is pure: scoring never changes the model, so a reloaded bundle scores identically.
- Detectors return scores, not decisions.  The decision threshold is calibrated outside, on
  validation normals (the demo's Rarity threshold 250 and KMeans' cluster-id "prediction" were
  both uncalibrated decisions baked into the model).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

#: Dense or CSR matrix, one row per sequence.
Matrix = Any


@runtime_checkable
class Detector(Protocol):
    """What training, evaluation, the bundle and the worker rely on."""

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> Detector: ...

    def score(self, X: Matrix) -> np.ndarray: ...


def _n_rows(X: Matrix) -> int:
    return int(X.shape[0])


def normal_rows(X: Matrix, y: np.ndarray | None) -> Matrix:
    """Rows with label 0 (normal) or all rows when there are no labels."""
    if y is None:
        return X
    labels = np.asarray(y).astype(bool)
    if labels.shape[0] != _n_rows(X):
        msg = f"labels have {labels.shape[0]} rows but X has {_n_rows(X)}; expected the same count"
        raise ValueError(msg)
    return X[~labels]


def _require_rows(X: Matrix, what: str, minimum: int = 2) -> None:
    if _n_rows(X) < minimum:
        msg = f"{what} needs at least {minimum} training rows, got {_n_rows(X)}"
        raise ValueError(msg)


def _as_float_vector(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


# --- unsupervised ---------------------------------------------------------------------------


class IsolationForestDetector:
    """sklearn IsolationForest; score = ``-score_samples`` (the paper's anomaly score, in (0, 1])."""

    def __init__(
        self,
        *,
        seed: int,
        n_estimators: int = 200,
        max_samples: int | float | str = "auto",
        contamination: float | str = "auto",
        n_jobs: int = 1,
    ) -> None:
        from sklearn.ensemble import IsolationForest

        if n_estimators < 1:
            msg = f"IsolationForest n_estimators must be >= 1, got {n_estimators}"
            raise ValueError(msg)
        self.model = IsolationForest(
            n_estimators=n_estimators,
            max_samples=max_samples,
            contamination=contamination,
            random_state=seed,
            n_jobs=n_jobs,
        )

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> IsolationForestDetector:
        train = normal_rows(X, y)
        _require_rows(train, "IsolationForest")
        max_samples = self.model.max_samples
        if isinstance(max_samples, int) and max_samples > _n_rows(train):
            # sklearn would warn and clamp anyway; say it once in our words.
            logger.info("IsolationForest max_samples=%d > %d rows; using all rows", max_samples, _n_rows(train))
            self.model.set_params(max_samples=_n_rows(train))
        self.model.fit(train)
        return self

    def score(self, X: Matrix) -> np.ndarray:
        return _as_float_vector(-self.model.score_samples(X))


class ScaledNoveltyDetector:
    """A scaler followed by an sklearn novelty model whose ``score_samples`` is high for normal.

    Used for LocalOutlierFactor (``novelty=True``) and OneClassSVM.  Score = ``-score_samples``,
    so higher = more anomalous for both (the demo mixed the signs).
    """

    def __init__(self, pipeline: Any, what: str) -> None:
        self.pipeline = pipeline
        self.what = what

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> ScaledNoveltyDetector:
        train = normal_rows(X, y)
        _require_rows(train, self.what)
        final = self.pipeline.steps[-1][1]
        n_neighbors = getattr(final, "n_neighbors", None)
        if isinstance(n_neighbors, int) and n_neighbors >= _n_rows(train):
            # LOF needs fewer neighbours than rows; tiny training sets are legal, so clamp.
            final.set_params(n_neighbors=max(1, _n_rows(train) - 1))
        self.pipeline.fit(train)
        return self

    def score(self, X: Matrix) -> np.ndarray:
        return _as_float_vector(-self.pipeline.score_samples(X))


class KMeansDistanceDetector:
    """KMeans on normal rows; score = distance to the nearest centroid.

    The demo mapped cluster ids (always >= 0) through "< 0 means anomaly", so KMeans never
    predicted an anomaly.  A distance to the nearest normal centroid is a real anomaly score.
    """

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> KMeansDistanceDetector:
        train = normal_rows(X, y)
        _require_rows(train, "KMeans")
        final = self.pipeline.steps[-1][1]
        if final.n_clusters > _n_rows(train):
            final.set_params(n_clusters=_n_rows(train))
        self.pipeline.fit(train)
        return self

    def score(self, X: Matrix) -> np.ndarray:
        distances = self.pipeline.transform(X)  # distance of each row to every centroid
        return _as_float_vector(np.asarray(distances).min(axis=1))


def _column_counts(X: Matrix) -> np.ndarray:
    return np.asarray(X.sum(axis=0), dtype=np.float64).reshape(-1)


def _row_counts(X: Matrix) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).reshape(-1)


def _presence(X: Matrix) -> Matrix:
    """0/1 matrix of "token occurs in this sequence" (keeps sparsity)."""
    if sp.issparse(X):
        present = sp.csr_matrix(X, dtype=np.float64, copy=True)
        present.data = (present.data != 0).astype(np.float64)
        present.eliminate_zeros()
        return present
    return (np.asarray(X) != 0).astype(np.float64)


class RarityDetector:
    """LogLead's RarityModel, fixed: rare tokens of normal data weigh ``(-ln p)^3``.

    ``p`` = share of normal training sequences that contain the token (document frequency), with
    add-one smoothing ``p = (df + 1) / (n + 1)``: a token never seen in training gets the smallest
    share, ``1 / (n + 1)``, hence the highest weight (not a division by zero), and a token in every
    training sequence gets ``p = 1``, weight 0.  A sequence's score is the mean weight of the
    distinct tokens it contains.  The demo's fixed threshold of 250 is gone: the harness calibrates
    the alert threshold on validation normals like for every detector.

    Which tokens are *common* (weight 0) is decided by a test, not by comparing the share with
    ``common_threshold`` directly.  Why: with ``n`` training sequences no seen token can have a
    share below ``1 / n`` (``2 / (n + 1)`` smoothed), so with fewer than ~100 training normals a
    fixed 0.01 cut-off called every token common, every weight became 0 and every sequence scored
    the same (ROC-AUC 0.5).  Here a token is common only when the training data shows, at
    ``confidence``, that it occurs in more than ``common_threshold`` of normal sequences: the
    one-sided Clopper-Pearson lower bound of its share exceeds ``common_threshold``.  For large
    ``n`` this converges to the plain "share > common_threshold" rule; for small ``n`` only tokens
    seen often enough count as common, tokens seen once stay rare, and unseen tokens are never
    common.  So the detector means the same thing for 20 and for 20 000 training normals.
    """

    def __init__(self, *, common_threshold: float = 0.01, confidence: float = 0.95) -> None:
        if not 0.0 < common_threshold < 1.0:
            msg = f"rarity common_threshold must be in (0, 1), got {common_threshold}"
            raise ValueError(msg)
        if not 0.5 <= confidence < 1.0:
            msg = f"rarity confidence must be in [0.5, 1), got {confidence}"
            raise ValueError(msg)
        self.common_threshold = common_threshold
        self.confidence = confidence
        self.weights_: np.ndarray | None = None

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> RarityDetector:
        from scipy.stats import beta

        train = normal_rows(X, y)
        _require_rows(train, "Rarity", minimum=1)
        n = float(_n_rows(train))
        doc_freq = _column_counts(_presence(train))
        share = (doc_freq + 1.0) / (n + 1.0)
        weights = (-np.log(share)) ** 3
        seen = doc_freq > 0
        # One-sided Clopper-Pearson lower bound of the true share (0 for unseen tokens).
        lower = np.zeros_like(doc_freq)
        lower[seen] = beta.ppf(1.0 - self.confidence, doc_freq[seen], n - doc_freq[seen] + 1.0)
        common = seen & (lower > self.common_threshold)
        weights[common] = 0.0
        self.weights_ = weights
        logger.debug(
            "Rarity: %d of %d seen tokens common (share > %.3g at %.0f%% confidence) over %d normals",
            int(common.sum()), int(seen.sum()), self.common_threshold, 100 * self.confidence, int(n),
        )
        return self

    def score(self, X: Matrix) -> np.ndarray:
        if self.weights_ is None:
            msg = "Rarity detector scored before fit"
            raise RuntimeError(msg)
        present = _presence(X)
        total = _as_float_vector(present @ self.weights_)
        distinct = np.maximum(_row_counts(present), 1.0)
        return _as_float_vector(total / distinct)


class OutOfVocabularyDetector:
    """Share of a sequence's token occurrences whose token never occurred in normal training data.

    The demo subtracted the number of *distinct* in-vocabulary tokens (binary vectoriser) from the
    *total* token count, so every long sequence looked out-of-vocabulary.  Here both sides count
    occurrences of the same matrix: ``oov = sum of counts in unseen columns``.  Dividing by the
    row's total keeps the score independent of sequence length (the LO2 length confound).
    """

    def __init__(self, *, normalise: bool = True) -> None:
        self.normalise = normalise
        self.unseen_: np.ndarray | None = None

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> OutOfVocabularyDetector:
        train = normal_rows(X, y)
        _require_rows(train, "OOV", minimum=1)
        self.unseen_ = (_column_counts(abs(train)) == 0).astype(np.float64)
        return self

    def score(self, X: Matrix) -> np.ndarray:
        if self.unseen_ is None:
            msg = "OOV detector scored before fit"
            raise RuntimeError(msg)
        counts = abs(X)
        oov = _as_float_vector(counts @ self.unseen_)
        if not self.normalise:
            return oov
        return _as_float_vector(oov / np.maximum(_row_counts(counts), 1.0))


class HalfSpaceTreesDetector:
    """River's HalfSpaceTrees behind a MinMaxScaler, wrapped into the batch contract.

    ``fit`` first shows every normal row to the scaler (so scaling is the same for all rows, not
    drifting while the trees learn), then feeds the rows one by one to ``scaler | HST``.  The
    window is clamped to the number of training rows: HST scores 0 until its first window is full.
    ``score`` is pure.  For online use, ``learn_normal`` updates with rows *after* they were
    scored and only with rows judged normal (score first, then learn: River's protocol).
    """

    def __init__(self, *, seed: int, n_trees: int = 25, height: int = 8, window_size: int = 250) -> None:
        if n_trees < 1 or height < 1 or window_size < 1:
            msg = (
                "HalfSpaceTrees needs n_trees, height and window_size >= 1, got "
                f"{n_trees}, {height}, {window_size}"
            )
            raise ValueError(msg)
        self.seed = seed
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.pipeline: Any = None

    @staticmethod
    def _rows(X: Matrix) -> list[dict[str, float]]:
        dense = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        return [{f"f{j}": float(v) for j, v in enumerate(row)} for row in dense]

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> HalfSpaceTreesDetector:
        from river import anomaly, preprocessing

        train = normal_rows(X, y)
        _require_rows(train, "HalfSpaceTrees", minimum=1)
        rows = self._rows(train)
        scaler: Any = preprocessing.MinMaxScaler()
        for row in rows:
            scaler.learn_one(row)
        trees = anomaly.HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=min(self.window_size, len(rows)),
            seed=self.seed,
        )
        self.pipeline = scaler | trees
        for row in rows:
            self.pipeline.learn_one(row)
        return self

    def learn_normal(self, X: Matrix, is_anomaly: np.ndarray) -> None:
        """Online update after scoring: learn only the rows that were judged normal."""
        if self.pipeline is None:
            msg = "HalfSpaceTrees updated before fit"
            raise RuntimeError(msg)
        for row, flagged in zip(self._rows(X), np.asarray(is_anomaly, dtype=bool), strict=True):
            if not flagged:
                self.pipeline.learn_one(row)

    def score(self, X: Matrix) -> np.ndarray:
        if self.pipeline is None:
            msg = "HalfSpaceTrees scored before fit"
            raise RuntimeError(msg)
        return np.array([float(self.pipeline.score_one(row)) for row in self._rows(X)], dtype=np.float64)


# --- supervised -----------------------------------------------------------------------------


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return _as_float_vector(1.0 / (1.0 + np.exp(-np.clip(values, -500.0, 500.0))))


class SupervisedDetector:
    """An sklearn classifier (usually a Pipeline); score = P(anomaly).

    Classifiers without ``predict_proba`` (LinearSVC) get the logistic of their decision function:
    monotone in the margin, so rankings and ROC-AUC are unchanged, and the score stays in [0, 1].
    """

    def __init__(self, estimator: Any, what: str, *, has_proba: bool = True) -> None:
        self.estimator = estimator
        self.what = what
        self.has_proba = has_proba

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> SupervisedDetector:
        if y is None:
            msg = f"{self.what} is supervised and needs labels y, got None"
            raise ValueError(msg)
        labels = np.asarray(y).astype(int)
        if np.unique(labels).size < 2:
            msg = f"{self.what} needs normal and anomalous training rows; got only label {labels[:1].tolist()}"
            raise ValueError(msg)
        self.estimator.fit(X, labels)
        return self

    def score(self, X: Matrix) -> np.ndarray:
        if self.has_proba:
            proba = self.estimator.predict_proba(X)
            classes = list(self.estimator.classes_)
            return _as_float_vector(proba[:, classes.index(1)])
        return _sigmoid(_as_float_vector(self.estimator.decision_function(X)))


class EarlyStoppedXGB:
    """XGBoost with early stopping on a split of the *training* rows.

    The demo passed the evaluation hold-out as ``eval_set``, i.e. it selected the model on the
    test data.  Here the last ``validation_fraction`` of the (shuffled, stratified) training rows
    are the early-stopping set; the evaluation data never reaches ``fit``.
    """

    def __init__(self, *, seed: int, validation_fraction: float = 0.2, **params: Any) -> None:
        try:
            import xgboost
        except ImportError as exc:
            msg = "registry key event_xgb_words needs xgboost: pip install 'lo2-stream[xgboost]'"
            raise ImportError(msg) from exc
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.params = dict(params)
        self.model = xgboost.XGBClassifier(random_state=seed, **params)

    def fit(self, X: Matrix, y: np.ndarray | None = None) -> EarlyStoppedXGB:
        from sklearn.model_selection import train_test_split

        if y is None:
            msg = "event_xgb_words is supervised and needs labels y, got None"
            raise ValueError(msg)
        labels = np.asarray(y).astype(int)
        if np.unique(labels).size < 2:
            msg = "event_xgb_words needs normal and anomalous training rows"
            raise ValueError(msg)
        counts = np.bincount(labels)
        if counts.min() >= 2 and _n_rows(X) >= 10:
            X_fit, X_stop, y_fit, y_stop = train_test_split(
                X, labels, test_size=self.validation_fraction, stratify=labels, random_state=self.seed
            )
            self.model.fit(X_fit, y_fit, eval_set=[(X_stop, y_stop)], verbose=False)
        else:
            # Too few rows to hold any out: no early stopping rather than stopping on test data.
            self.model.set_params(early_stopping_rounds=None)
            self.model.fit(X, labels, verbose=False)
        return self

    def score(self, X: Matrix) -> np.ndarray:
        return _as_float_vector(self.model.predict_proba(X)[:, 1])
