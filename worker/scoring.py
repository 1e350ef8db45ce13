"""Micro-batch scoring of closed sequences with the model bundle, River alongside, and hot reload.

Why micro-batches: an IsolationForest call costs ~12 ms for one row but ~1 ms for hundreds
(streaming-anchors §5), so the agent collects the sequences a batch of records closed and scores them
in one ``bundle.score`` call.  The features come from :func:`shared.features.vectorize` on the
sequence's accumulator: the same arithmetic the batch path runs (parity test).

River's HalfSpaceTrees (behind a MinMaxScaler) scores alongside as ``online_score``; following
River's protocol it scores first and learns afterwards, and only from sequences the bundle did not
flag, so anomalies do not teach it that anomalies are normal.

Hot reload: :class:`ModelWatcher` follows the ``current`` pointer of the model folder; a new target
that fails to load (checksum, schema, feature code) is reported and the old model stays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shared import bundle as bundle_mod
from shared.errors import Lo2Error, ModelLoadError
from shared.features import FeatureSpec, vectorize_many
from shared.parsing import format_time_of_day
from shared.records import Explanation
from shared.sequences import ClosedSequence, Encoder, SequenceAccumulator, SequencePolicy
from worker.telemetry import WorkerMetrics

log = logging.getLogger(__name__)

#: Evidence lines and top features an anomaly record carries.
MAX_EVIDENCE = 5
TOP_FEATURES = 5


@dataclass(frozen=True)
class LoadedModel:
    """A verified bundle plus what the worker derives from it once (policy, encoder)."""

    bundle: bundle_mod.ModelBundle
    path: Path
    policy: SequencePolicy
    spec: FeatureSpec
    encoder: Encoder

    @property
    def name(self) -> str:
        return self.bundle.model_key

    @property
    def version(self) -> str:
        return self.path.name

    @property
    def fingerprint(self) -> str:
        return self.bundle.feature_fingerprint

    @classmethod
    def load(cls, path: Path) -> LoadedModel:
        """Load and verify; :class:`ModelLoadError` when the bundle cannot be used by the worker."""
        b = bundle_mod.load(path)
        if b.input_kind.partition("+")[0] not in ("numeric", "tokens", "canary", "aggregates"):
            raise ModelLoadError(f"bundle {path}: input kind {b.input_kind!r} cannot be scored live (numeric, tokens or canary)")
        policy = SequencePolicy.from_dict(b.sequence_policy) if b.sequence_policy else b.feature_spec.policy
        spec: FeatureSpec = b.feature_spec
        if b.explainer_state is not None:
            from shared.explain import explainer_for

            # build SHAP's TreeExplainer now, not on the first anomaly (one per service of a per-service bundle)
            services = sorted(b.explainer_state) if isinstance(b.explainer_state, Mapping) else [None]
            for service in services:
                explainer_for(b, service=service).warm_up()
        return cls(bundle=b, path=Path(path).resolve(), policy=policy, spec=spec, encoder=spec.encoder())


@dataclass(frozen=True)
class ScoredSequence:
    closed: ClosedSequence
    score: float
    threshold: float
    is_anomaly: bool
    online_score: float | None
    row: Any  # the model input row (for the explanation)
    model: LoadedModel


class OnlineModel:
    """River MinMaxScaler | HalfSpaceTrees over the numeric features: score, then learn if normal."""

    def __init__(self, feature_names: Sequence[str], *, seed: int, n_trees: int = 10, height: int = 8, window_size: int = 250) -> None:
        from river import anomaly, preprocessing

        self.names = list(feature_names)
        self.pipeline: Any = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.learned = 0

    def _row(self, x: np.ndarray) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, x, strict=False)}

    def score_and_learn(self, X: np.ndarray, flagged: np.ndarray) -> list[float]:
        out = []
        for x, bad in zip(X, flagged, strict=True):
            row = self._row(x)
            out.append(float(self.pipeline.score_one(row)))
            if not bad:
                self.pipeline.learn_one(row)
                self.learned += 1
        return out


class Scorer:
    """Scores micro-batches of closed sequences; sequences are grouped by the model that encoded them."""

    def __init__(self, metrics: WorkerMetrics, *, online: bool = True, seed: int = 42) -> None:
        self.metrics = metrics
        self.online_enabled = online
        self.seed = seed
        self._online: dict[str, OnlineModel] = {}
        self._drift: Any = None
        self._drift_model: LoadedModel | None = None
        if online:
            import river.anomaly  # noqa: F401 - import now (~0.3 s), not inside the first scored batch

    def _online_for(self, model: LoadedModel) -> OnlineModel | None:
        if not self.online_enabled:
            return None
        om = self._online.get(model.fingerprint)
        if om is None:
            om = self._online[model.fingerprint] = OnlineModel(model.spec.feature_names, seed=self.seed)
        return om

    def _drift_for(self, model: LoadedModel) -> Any:
        """PSI monitor of live scores/features against the bundle's reference (worker/drift.py)."""
        if not model.bundle.reference:
            return None
        if self._drift is None:
            from worker.drift import DriftMonitor

            self._drift = DriftMonitor.from_reference(model.bundle.reference, self.metrics.registry)
            self._drift_model = model
        elif self._drift_model is not model:
            self._drift.load_reference(model.bundle.reference)
            self._drift_model = model
        return self._drift

    def score(self, closed: Sequence[ClosedSequence], model: LoadedModel) -> list[ScoredSequence]:
        """Score sequences that were encoded with ``model`` (one ``score_accumulators`` call)."""
        if not closed:
            return []
        t0 = time.perf_counter()
        accs = [c.accumulator for c in closed]
        # The bundle picks its own stored columns (bundle_inputs): rows equal the batch path's.
        res = bundle_mod.score_accumulators(model.bundle, accs)
        X, scores, thresholds, flagged = res.X, res.scores, res.thresholds, res.alerts
        online_scores: list[float | None] = [None] * len(accs)
        om = self._online_for(model)
        if om is not None:
            before = om.learned
            online_scores = list(om.score_and_learn(vectorize_many(accs, model.spec), flagged))
            self.metrics.online_learned.inc(om.learned - before)
        drift = self._drift_for(model)
        if drift is not None:
            dense = None if sp.issparse(X) else np.asarray(X)
            if model.bundle.per_service:
                for service in set(res.services):
                    idx = [i for i, s in enumerate(res.services) if s == service]
                    drift.observe(service, scores[idx], None if dense is None else dense[idx])
            else:
                drift.observe(bundle_mod.ALL, scores, dense)
        self.metrics.scoring_seconds.observe(time.perf_counter() - t0)
        self.metrics.scoring_batch_size.observe(len(accs))
        rows = X if sp.issparse(X) else np.asarray(X)
        return [
            ScoredSequence(c, float(scores[i]), float(thresholds[i]), bool(flagged[i]), online_scores[i], rows[i : i + 1], model)
            for i, c in enumerate(closed)
        ]


def evidence_lines(acc: SequenceAccumulator) -> list[str]:
    """The accumulator's retained (already redacted) lines in log order, readable."""
    out = []
    for e in sorted(acc.evidence, key=lambda e: (e.get("timestamp_ms", 0), e.get("line_no", 0))):
        line = f"{format_time_of_day(int(e.get('timestamp_ms', 0)))} {e.get('level', '')} {e.get('logger', '')} {e.get('method', '')} - {e.get('message', '')}"
        if e.get("stack_head"):
            line += f" | {e['stack_head']}"
        out.append(line)
    return out


def explain(scored: ScoredSequence) -> Explanation:
    """The explanation of one flagged sequence (small on purpose: the lead can swap the method).

    Uses :func:`shared.explain.explain_sequence` when the bundle carries explainer state; otherwise
    (or if it fails) falls back to the retained evidence lines only, so an anomaly is never held back
    by its explanation.
    """
    acc = scored.closed.accumulator
    lines = evidence_lines(acc)
    bundle = scored.model.bundle
    if bundle.explainer_state is not None:
        from shared.explain import explain_sequence

        try:
            ex = explain_sequence(bundle, scored.row, acc.evidence, top_k=TOP_FEATURES, max_evidence=MAX_EVIDENCE,
                                  service=acc.service)
            return Explanation.model_validate(ex.model_dump())
        except (Lo2Error, ValueError, IndexError) as exc:
            log.warning("explanation of sequence %s failed, sending evidence only: %s", acc.seq_id, exc)
    return Explanation(method="evidence_only", top_features=[], nearest_normal=None, evidence=lines[:MAX_EVIDENCE])


class ModelWatcher:
    """Follows ``<model_dir>/current`` (or a fixed bundle path) and loads a new target when it changes."""

    def __init__(self, source: Path, metrics: WorkerMetrics, *, follow_current: bool) -> None:
        self.source = Path(source)
        self.metrics = metrics
        self.follow_current = follow_current
        self._failed_target: Path | None = None

    def target(self) -> Path:
        if self.follow_current:
            return bundle_mod.resolve(self.source, bundle_mod.CURRENT)
        return self.source.resolve()

    def load_initial(self) -> LoadedModel:
        model = LoadedModel.load(self.target())
        self.metrics.model_reloads.labels(result="loaded").inc()
        self.metrics.set_model(model.name, model.version)
        log.info("model %s version %s loaded from %s", model.name, model.version, model.path)
        return model

    def check(self, current: LoadedModel) -> LoadedModel | None:
        """A newly promoted model, or ``None`` (no change, or the new one failed: the old stays)."""
        if not self.follow_current:
            return None
        try:
            target = self.target().resolve()
        except ModelLoadError as exc:
            log.warning("model pointer unreadable, keeping %s: %s", current.version, exc)
            return None
        if target == current.path or target == self._failed_target:
            return None
        try:
            model = LoadedModel.load(target)
        except (Lo2Error, OSError, ValueError) as exc:
            self._failed_target = target
            self.metrics.model_reloads.labels(result="failed").inc()
            log.error("new model %s failed to load, keeping %s: %s", target, current.version, exc)
            return None
        if model.policy != current.policy:
            self._failed_target = target
            self.metrics.model_reloads.labels(result="failed").inc()
            log.error(
                "new model %s has sequence policy %s, the running one %s; restart the worker to change policy",
                target, model.policy, current.policy,
            )
            return None
        self.metrics.model_reloads.labels(result="loaded").inc()
        self.metrics.set_model(model.name, model.version)
        log.info("hot-reloaded model %s version %s (was %s)", model.name, model.version, current.version)
        return model
