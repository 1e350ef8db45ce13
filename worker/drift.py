"""PSI drift of live scores and top features against the bundle's training reference.

The bundle stores, per scoring group, a reference histogram of validation ``correct`` scores and,
for the features that move most with the score, histograms over the training normals
(``manifest.reference = {"scores": {group: {edges, counts}}, "features": {name: {index, edges,
counts}}}``; JSON has no infinity, so the open ends are ``null``).  The worker keeps the last
``window`` live values of each tracked quantity in a ring buffer (bounded memory, no raw history)
and recomputes PSI every ``every`` new values, publishing it as the gauge
``lo2_worker_psi{kind, name}``.  The bands follow the usual rule of thumb: < 0.1 stable,
0.1-0.25 moderate, >= 0.25 significant (alert rule ``Lo2FeatureDrift``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from shared import detection_metrics as dm

log = logging.getLogger(__name__)


def _edges(raw: Sequence[float | None]) -> tuple[float, ...]:
    """Reference edges with JSON ``null`` ends turned back into -inf / +inf."""
    out = []
    for i, e in enumerate(raw):
        if e is None:
            out.append(-math.inf if i == 0 else math.inf)
        else:
            out.append(float(e))
    return tuple(out)


@dataclass
class _Tracked:
    kind: str
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    index: int | None
    values: deque[float]
    since_update: int = 0
    last_psi: float = math.nan


@dataclass
class DriftMonitor:
    """Rolling PSI of live values against bundle references (see the module docstring).

    ``observe(group, scores, rows)`` takes one scored micro-batch: the scores of the group's
    sequences and (optionally) their dense feature rows, from which the tracked feature columns
    are read by their stored index.
    """

    gauge: Gauge
    window: int = 2000
    every: int = 50
    min_values: int = 100
    _tracked: dict[tuple[str, str], _Tracked] = field(default_factory=dict)

    @classmethod
    def from_reference(
        cls,
        reference: Mapping[str, Any],
        registry: CollectorRegistry,
        *,
        window: int = 2000,
        every: int = 50,
        min_values: int = 100,
    ) -> DriftMonitor:
        gauge = Gauge(
            "lo2_worker_psi",
            "Population stability index of live values vs the model bundle's training reference "
            "(kind=score: per scoring group; kind=feature: per top feature).",
            ["kind", "name"],
            registry=registry,
        )
        monitor = cls(gauge=gauge, window=window, every=every, min_values=min_values)
        monitor.load_reference(reference)
        return monitor

    def load_reference(self, reference: Mapping[str, Any]) -> None:
        """(Re)load references, e.g. after a model hot-reload; old series are removed."""
        self.gauge.clear()
        self._tracked.clear()
        for group, ref in (reference.get("scores") or {}).items():
            self._add("score", str(group), ref, None)
        for name, ref in (reference.get("features") or {}).items():
            self._add("feature", str(name), ref, int(ref["index"]))
        log.info("drift monitor tracks %d quantities", len(self._tracked))

    def _add(self, kind: str, name: str, ref: Mapping[str, Any], index: int | None) -> None:
        edges = _edges(ref["edges"])
        counts = tuple(int(c) for c in ref["counts"])
        if len(counts) != len(edges) - 1:
            log.warning("drift reference %s/%s has %d counts for %d edges: ignored",
                        kind, name, len(counts), len(edges))
            return
        self._tracked[(kind, name)] = _Tracked(kind, name, edges, counts, index,
                                               deque(maxlen=self.window))

    @property
    def tracked(self) -> list[tuple[str, str]]:
        return sorted(self._tracked)

    def observe(self, group: str, scores: Sequence[float] | np.ndarray,
                rows: np.ndarray | None = None) -> None:
        score_t = self._tracked.get(("score", group))
        if score_t is not None:
            self._push(score_t, np.asarray(scores, dtype=np.float64))
        if rows is None:
            return
        dense = np.asarray(rows, dtype=np.float64)
        if dense.ndim != 2:
            return
        for t in self._tracked.values():
            if t.kind == "feature" and t.index is not None and t.index < dense.shape[1]:
                self._push(t, dense[:, t.index])

    def _push(self, t: _Tracked, values: np.ndarray) -> None:
        t.values.extend(float(v) for v in values if math.isfinite(v))
        t.since_update += values.size
        if t.since_update >= self.every and len(t.values) >= self.min_values:
            t.since_update = 0
            value = dm.psi(t.edges, t.counts, np.fromiter(t.values, dtype=np.float64))
            t.last_psi = float(value)
            if not math.isnan(t.last_psi):
                self.gauge.labels(kind=t.kind, name=t.name).set(t.last_psi)

    def snapshot(self) -> dict[str, float]:
        """Last PSI per tracked quantity (``kind:name`` → value; NaN until enough values)."""
        return {f"{t.kind}:{t.name}": t.last_psi for t in self._tracked.values()}
