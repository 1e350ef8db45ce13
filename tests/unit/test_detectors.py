"""Detector contracts that the harness cannot see from the outside: the Rarity weights."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from shared.detectors import RarityDetector


def _tokens(n_rows: int, seed: int = 0) -> np.ndarray:
    """Token-presence rows: columns 0-9 in every row, 10-29 each in ~half the rows, 30-39 once each
    (rows 0-9), 40-49 never (the 'unseen' tokens)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n_rows, 50))
    X[:, :10] = 1.0
    X[:, 10:30] = rng.random((n_rows, 20)) < 0.5
    for j in range(min(10, n_rows)):
        X[j, 30 + j] = 1.0
    return X


def test_rarity_is_not_constant_on_a_tiny_training_set() -> None:
    # 20 training normals: every seen token's share is >= 1/21 > common_threshold 0.01, and the old
    # absolute cut-off weighed every token 0, so every sequence scored 0 (ROC-AUC 0.5).
    X = _tokens(20)
    det = RarityDetector(common_threshold=0.01).fit(sp.csr_matrix(X), np.zeros(20, dtype=int))
    typical = X[15].copy()  # common tokens and some half-the-rows ones, no singleton
    with_unseen = typical.copy()
    with_unseen[40:43] = 1.0
    with_rare = typical.copy()
    with_rare[30] = 1.0  # a token seen in one training sequence only
    scores = det.score(sp.csr_matrix(np.vstack([typical, with_rare, with_unseen])))
    assert np.ptp(det.score(sp.csr_matrix(X))) > 0.0
    assert scores[2] > scores[1] > scores[0]
    weights = det.weights_
    assert weights is not None
    # unseen tokens weigh the most; tokens in every training sequence weigh nothing
    assert weights[40:].min() == weights.max() > 0.0
    assert np.all(weights[:10] == 0.0)
    assert np.all(weights[30:40] > 0.0) and np.all(weights[30:40] < weights[40])


def test_rarity_on_a_large_training_set_keeps_the_share_cut_off() -> None:
    # 5000 normals: a token in ~50 % of them is common (weight 0), as is one in 2 %; one in 0.2 % is rare.
    n = 5000
    X = np.zeros((n, 4))
    X[:, 0] = 1.0
    X[: n // 2, 1] = 1.0
    X[: n // 50, 2] = 1.0  # share 0.02 > 0.01: common
    X[: n // 500, 3] = 1.0  # share 0.002 < 0.01: rare
    det = RarityDetector(common_threshold=0.01).fit(X)
    weights = det.weights_
    assert weights is not None
    assert weights[0] == weights[1] == weights[2] == 0.0
    assert weights[3] > 0.0


def test_rarity_scores_a_row_with_unseen_tokens_above_training_normals() -> None:
    X = _tokens(8, seed=3)  # smaller still: 8 normals
    det = RarityDetector().fit(X)
    unseen = X[0].copy()
    unseen[45] = 1.0
    normal_scores = det.score(X)
    assert det.score(unseen[None, :])[0] > normal_scores[0]
    assert det.score(unseen[None, :])[0] > np.median(normal_scores) > 0.0
