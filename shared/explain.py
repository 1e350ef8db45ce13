"""Explanation of one anomalous sequence: the function the worker calls for every anomaly record.

Answering "why was this sequence flagged?" live must cost milliseconds, so everything that needs the
training data is computed once, when a bundle is built, by :func:`build_explainer_state`:

* per-feature **normal ranges**: the ``low_q``/``high_q`` quantiles (default 5 % / 95 %) and the
  median of the training *normal* sequences;
* a per-feature **scale** (standard deviation of the normals, floored, see :func:`_feature_scale`),
  so that a count in the thousands and a frequency in the thousandths weigh the same (the LogLead
  demo let unscaled ``seq_len`` dominate its cosine distance, reference §9.2 item 25);
* a **compact normal reference set** (at most ``max_reference`` training normals, sampled uniformly
  at random with a seed, *not* the most anomalous-looking ones as the demo did, §9.2 item 24), kept
  scaled, with their ``seq_id`` (not row numbers, §9.2 item 26) for the nearest-normal answer;
* optionally the template key of each feature, so evidence lines can be picked for the top
  templates.

The state is plain arrays plus JSON (:meth:`ExplainerState.save` / :meth:`ExplainerState.load`), so it
can live inside a model bundle.  The per-call path (:class:`SequenceExplainer`) is then a handful of
vector operations over the reference set, plus, for tree models, one SHAP call.

Two attribution methods, both reported as ``contribution`` where **positive means "pushes toward
anomalous"**:

``deviation``
    Signed distance of the value from the normal median, in units of the feature's normal scale
    (a robust z-score): ``(value - median) / scale``.  Features are ranked by its absolute value.
    It is model-agnostic and costs microseconds; it says "this feature is unusual for a normal
    sequence", not "the model used this feature".
``tree_shap``
    SHAP TreeExplainer (path-dependent, no background) on the fitted tree model.  For an
    IsolationForest, SHAP explains the *average path length*; a negative value shortens the path,
    i.e. makes the sequence more anomalous, so ``contribution = -shap``.  For a classifier it is the
    SHAP value of the anomaly class (positive = toward anomaly).  Costs a few milliseconds per row;
    the TreeExplainer is built once per model and cached.

Every evidence line is passed through :func:`shared.redaction.redact` before it leaves this module.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from shared.errors import ConfigError, ModelLoadError
from shared.parsing import format_time_of_day
from shared.redaction import redact

logger = logging.getLogger(__name__)

#: Version of the on-disk layout of :class:`ExplainerState` (bumped on incompatible changes).
STATE_SCHEMA_VERSION = 1
STATE_JSON = "explainer_state.json"
STATE_NPZ = "explainer_state.npz"

Method = Literal["auto", "deviation", "tree_shap"]
FloatArray = NDArray[np.float64]


# ------------------------------------------------------------------------------------------------
# Output records (JSON-able; the worker puts ``Explanation.model_dump()`` into the anomaly record)
# ------------------------------------------------------------------------------------------------
class TopFeature(BaseModel):
    """One feature that explains the anomaly, with the range it has in normal sequences."""

    name: str = Field(description="Readable feature name (template text, error code, ...), redacted.")
    feature: str = Field(description="Machine name of the feature (column name in the feature matrix).")
    value: float = Field(description="The feature's value in the explained sequence.")
    normal_low: float = Field(description="Low quantile of the feature over training normals.")
    normal_high: float = Field(description="High quantile of the feature over training normals.")
    contribution: float = Field(description="Positive = pushes toward anomalous (see `method`).")


class DifferingFeature(BaseModel):
    """A feature on which the sequence differs most from its nearest normal."""

    name: str
    value: float
    normal_value: float


class NearestNormal(BaseModel):
    """The closest training normal sequence in the scaled feature space."""

    seq_id: str
    distance: float = Field(description="Euclidean distance in the scaled feature space.")
    differing_features: list[DifferingFeature]


class Explanation(BaseModel):
    """Why one sequence was flagged: the ``explanation`` field of an anomaly record."""

    method: str = Field(description="`deviation` or `tree_shap` (see shared/explain.py).")
    top_features: list[TopFeature]
    nearest_normal: NearestNormal | None
    evidence: list[str] = Field(description="Redacted log lines of the top templates (few, not all).")


# ------------------------------------------------------------------------------------------------
# Precomputed state
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplainerState:
    """Everything the per-anomaly explanation needs from the training data (see module docstring)."""

    feature_names: tuple[str, ...]
    low: FloatArray
    high: FloatArray
    median: FloatArray
    scale: FloatArray
    reference: NDArray[np.float32]  # (n_ref, n_features), already divided by ``scale``
    reference_seq_ids: tuple[str, ...]
    feature_templates: tuple[str | None, ...]
    low_q: float = 0.05
    high_q: float = 0.95
    n_normals: int = 0
    #: readable names (template text, error code) per feature; empty = same as ``feature_names``
    feature_labels: tuple[str, ...] = ()
    reference_sq_norms: NDArray[np.float32] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        d = len(self.feature_names)
        for name in ("low", "high", "median", "scale"):
            arr = getattr(self, name)
            if arr.shape != (d,):
                msg = f"ExplainerState.{name} has shape {arr.shape}, expected ({d},) (one per feature)"
                raise ConfigError(msg)
        if self.reference.ndim != 2 or self.reference.shape[1] != d:
            msg = f"ExplainerState.reference has shape {self.reference.shape}, expected (n, {d})"
            raise ConfigError(msg)
        if self.reference.shape[0] != len(self.reference_seq_ids):
            msg = (
                f"ExplainerState has {self.reference.shape[0]} reference rows but "
                f"{len(self.reference_seq_ids)} reference seq_ids"
            )
            raise ConfigError(msg)
        if len(self.feature_templates) != d:
            msg = f"ExplainerState.feature_templates has {len(self.feature_templates)} entries, expected {d}"
            raise ConfigError(msg)
        if not self.feature_labels:
            object.__setattr__(self, "feature_labels", self.feature_names)
        if len(self.feature_labels) != d:
            msg = f"ExplainerState.feature_labels has {len(self.feature_labels)} entries, expected {d}"
            raise ConfigError(msg)
        norms = np.einsum("ij,ij->i", self.reference, self.reference).astype(np.float32)
        object.__setattr__(self, "reference_sq_norms", norms)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def save(self, directory: Path) -> list[Path]:
        """Write ``explainer_state.json`` + ``explainer_state.npz`` into ``directory``; return the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        json_path, npz_path = directory / STATE_JSON, directory / STATE_NPZ
        meta = {
            "schema_version": STATE_SCHEMA_VERSION,
            "feature_names": list(self.feature_names),
            "feature_templates": list(self.feature_templates),
            "feature_labels": list(self.feature_labels),
            "reference_seq_ids": list(self.reference_seq_ids),
            "low_q": self.low_q,
            "high_q": self.high_q,
            "n_normals": self.n_normals,
        }
        json_path.write_text(json.dumps(meta), encoding="utf-8")
        with npz_path.open("wb") as fh:
            np.savez_compressed(
                fh, low=self.low, high=self.high, median=self.median, scale=self.scale, reference=self.reference
            )
        return [json_path, npz_path]

    @classmethod
    def load(cls, directory: Path) -> ExplainerState:
        """Read a state written by :meth:`save`; raise :class:`ModelLoadError` naming what is wrong."""
        json_path, npz_path = directory / STATE_JSON, directory / STATE_NPZ
        for path in (json_path, npz_path):
            if not path.is_file():
                msg = f"explainer state file {path} is missing (expected {STATE_JSON} and {STATE_NPZ})"
                raise ModelLoadError(msg)
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            msg = f"explainer state {json_path} is not valid JSON: {exc}"
            raise ModelLoadError(msg) from exc
        version = meta.get("schema_version")
        if version != STATE_SCHEMA_VERSION:
            msg = f"explainer state {json_path} has schema_version {version!r}, expected {STATE_SCHEMA_VERSION}"
            raise ModelLoadError(msg)
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("low", "high", "median", "scale", "reference")}
        try:
            return cls(
                feature_names=tuple(meta["feature_names"]),
                feature_templates=tuple(meta["feature_templates"]),
                feature_labels=tuple(meta.get("feature_labels", ())),
                reference_seq_ids=tuple(meta["reference_seq_ids"]),
                low=arrays["low"].astype(np.float64),
                high=arrays["high"].astype(np.float64),
                median=arrays["median"].astype(np.float64),
                scale=arrays["scale"].astype(np.float64),
                reference=arrays["reference"].astype(np.float32),
                low_q=float(meta["low_q"]),
                high_q=float(meta["high_q"]),
                n_normals=int(meta["n_normals"]),
            )
        except (KeyError, ConfigError) as exc:
            msg = f"explainer state in {directory} is inconsistent: {exc}"
            raise ModelLoadError(msg) from exc

    def to_json_dict(self) -> dict[str, Any]:
        """The whole state as one JSON-able dict (for bundles that keep a single manifest)."""
        return {
            "schema_version": STATE_SCHEMA_VERSION,
            "feature_names": list(self.feature_names),
            "feature_templates": list(self.feature_templates),
            "feature_labels": list(self.feature_labels),
            "reference_seq_ids": list(self.reference_seq_ids),
            "low_q": self.low_q,
            "high_q": self.high_q,
            "n_normals": self.n_normals,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "median": self.median.tolist(),
            "scale": self.scale.tolist(),
            "reference": self.reference.tolist(),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ExplainerState:
        if data.get("schema_version") != STATE_SCHEMA_VERSION:
            msg = f"explainer state has schema_version {data.get('schema_version')!r}, expected {STATE_SCHEMA_VERSION}"
            raise ModelLoadError(msg)
        d = len(data["feature_names"])
        return cls(
            feature_names=tuple(data["feature_names"]),
            feature_templates=tuple(data["feature_templates"]),
            feature_labels=tuple(data.get("feature_labels", ())),
            reference_seq_ids=tuple(data["reference_seq_ids"]),
            low=np.asarray(data["low"], dtype=np.float64),
            high=np.asarray(data["high"], dtype=np.float64),
            median=np.asarray(data["median"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            reference=np.asarray(data["reference"], dtype=np.float32).reshape(-1, d),
            low_q=float(data["low_q"]),
            high_q=float(data["high_q"]),
            n_normals=int(data["n_normals"]),
        )


def _dense(X: Any) -> FloatArray:
    """A float64 2-D array from a NumPy array or a SciPy sparse matrix."""
    if hasattr(X, "toarray"):
        X = X.toarray()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    return arr


def _feature_scale(X: FloatArray) -> FloatArray:
    """Per-feature spread of the normals: the standard deviation, floored.

    A feature that is constant in the normals has no spread; dividing by zero would make it infinite.
    It gets the smallest positive spread of any feature instead (or 1.0 if all are constant), so a
    template that never occurs in normal sequences but occurs now stands out strongly but finitely.
    """
    std = X.std(axis=0)
    positive = std[std > 1e-12]
    floor = float(positive.min()) if positive.size else 1.0
    return np.where(std > 1e-12, std, floor)


def build_explainer_state(
    X_normal: Any,
    feature_names: Sequence[str],
    seq_ids: Sequence[str],
    *,
    feature_templates: Sequence[str | None] | None = None,
    feature_labels: Sequence[str] | None = None,
    max_reference: int = 5000,
    max_stats_rows: int = 50_000,
    low_q: float = 0.05,
    high_q: float = 0.95,
    seed: int = 42,
) -> ExplainerState:
    """Precompute the explainer state from the training *normal* sequences.

    ``X_normal`` (rows = sequences, NumPy or SciPy sparse) must be the same feature matrix the model
    was trained on, rows aligned with ``seq_ids``.  ``feature_templates[j]`` is the template key of
    feature ``j`` (or ``None`` when the feature is not a template count), used to choose evidence;
    ``feature_labels[j]`` its readable name (template text, error code) shown to people.
    Ranges and scales come from at most ``max_stats_rows`` normals; the nearest-normal reference set
    holds at most ``max_reference`` of them (uniform samples, seeded).  For hashed token inputs
    (thousands of columns) pass a smaller ``max_reference`` (e.g. 500) to keep the state small.
    """
    n, d = int(X_normal.shape[0]), int(X_normal.shape[1]) if len(X_normal.shape) > 1 else 1
    if d != len(feature_names):
        msg = f"X_normal has {d} columns but {len(feature_names)} feature names were given"
        raise ConfigError(msg)
    if n != len(seq_ids):
        msg = f"X_normal has {n} rows but {len(seq_ids)} seq_ids were given"
        raise ConfigError(msg)
    if n == 0:
        msg = "cannot build an explainer state from 0 normal sequences (need the training normals)"
        raise ConfigError(msg)
    if not 0.0 <= low_q < high_q <= 1.0:
        msg = f"normal-range quantiles must satisfy 0 <= low_q < high_q <= 1, got {low_q}, {high_q}"
        raise ConfigError(msg)
    templates = tuple(feature_templates) if feature_templates is not None else (None,) * d
    rng = np.random.default_rng(seed)
    # Statistics from at most max_stats_rows normals (a uniform sample beyond that): the state must
    # be buildable from a training set of any size without densifying all of it.
    stats_idx = np.sort(rng.choice(n, size=min(n, max_stats_rows), replace=False))
    X = _dense(X_normal[stats_idx] if stats_idx.size < n else X_normal)
    scale = _feature_scale(X)
    pick = np.sort(rng.choice(stats_idx.size, size=min(stats_idx.size, max_reference), replace=False))
    idx = stats_idx[pick]
    reference = (X[pick] / scale).astype(np.float32)
    return ExplainerState(
        feature_names=tuple(str(f) for f in feature_names),
        low=np.quantile(X, low_q, axis=0),
        high=np.quantile(X, high_q, axis=0),
        median=np.median(X, axis=0),
        scale=scale,
        reference=reference,
        reference_seq_ids=tuple(str(seq_ids[i]) for i in idx),
        feature_templates=templates,
        feature_labels=tuple(str(f) for f in feature_labels) if feature_labels is not None else (),
        low_q=low_q,
        high_q=high_q,
        n_normals=n,
    )


_LEVEL_PREFIX = "level:"
#: Readable names of the aggregate columns of ``shared.features`` (others fall back to their name).
_AGGREGATE_LABELS = {
    "tpl:(other templates)": "share of events of other (non-top) templates",
    "share:rare_template": "share of events of rare templates",
    "share:unseen_template": "share of events of templates never seen in training",
    "share:rare_or_unseen_template": "share of events of rare or unseen templates",
    "share:stack_events": "share of events with a stack trace",
    "share:failure_words": "share of events with failure words (exception, error, invalid, ...)",
    "rate:error_code_events": "share of events with a light-4j error code",
    "rate:stack_lines_per_event": "stack-trace lines per event",
    "rate:distinct_templates_per_100": "distinct templates per 100 events",
    "rate:events_per_s": "events per second",
    "err:other": "share of events with another error code",
}


def feature_label(name: str) -> str:
    """A readable name for a feature column of ``shared.features`` (what people see in explanations).

    ``tpl:<template>`` -> the template text; ``err:ERR12007`` -> ``ERR12007 UNAUTHORIZED_CLIENT``
    (from the light-4j status catalog); ``level:ERROR`` -> ``share of ERROR events``; token columns
    ``tok:<word>`` -> ``token '<word>'``; anything else unchanged.
    """
    if name in _AGGREGATE_LABELS:
        return _AGGREGATE_LABELS[name]
    if name.startswith("tpl:"):
        return name[4:]
    if name.startswith("err:"):
        code = name[4:]
        from shared.catalog import STATUS_CODES

        status = STATUS_CODES.get(code)
        return f"{code} {status.message}" if status is not None else f"error code {code}"
    if name.startswith("canary:"):
        return f"{name[7:]} (length/duration canary)"
    if name.startswith(_LEVEL_PREFIX):
        return f"share of {name[len(_LEVEL_PREFIX):]} events"
    if name.startswith("tok:"):
        return f"token '{name[4:]}'"
    return name


def feature_templates_of(spec: Any, feature_names: Sequence[str]) -> list[str | None]:
    """Template key (``str(template_id)``) of each named feature column, None for non-template columns.

    The first ``len(spec.top_template_ids)`` columns of ``spec.feature_names`` are the per-template
    shares (``shared.features._RawLayout``); a model may see a subset of the columns (e.g. the
    ``aggregates`` input), so the lookup goes by name.  The keys match the ``template_id`` of the
    evidence lines kept by ``shared.sequences.SequenceAccumulator``.
    """
    top = [str(t) for t in getattr(spec, "top_template_ids", ())]
    position = {name: i for i, name in enumerate(getattr(spec, "feature_names", ()))}
    out: list[str | None] = []
    for name in feature_names:
        i = position.get(name)
        out.append(top[i] if i is not None and i < len(top) else None)
    return out


def build_explainer_state_for_spec(
    spec: Any, X_normal: Any, seq_ids: Sequence[str], *, feature_names: Sequence[str] | None = None, **kwargs: Any
) -> ExplainerState:
    """:func:`build_explainer_state` with names, readable labels and template keys taken from the spec.

    What a bundle builder calls with the training runs' ``correct`` rows of the model's input
    matrix; ``feature_names`` = that matrix's columns (``bundle.feature_names``), default all of
    ``spec.feature_names``.
    """
    names = list(feature_names if feature_names is not None else spec.feature_names)
    return build_explainer_state(
        X_normal,
        names,
        seq_ids,
        feature_templates=feature_templates_of(spec, names),
        feature_labels=[feature_label(n) for n in names],
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------
# Attribution
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapTarget:
    """The estimator SHAP can explain inside a detector, and how to get its input from ours.

    Detectors (``shared.detectors``) wrap sklearn estimators, often in a Pipeline
    (presence -> classifier).  SHAP explains the *last* step on the output of the steps before it;
    ``transform`` applies those steps (identity when there are none).
    """

    estimator: Any
    transform: Any  # Callable[[Matrix], Matrix] | None
    kind: Literal["tree", "linear"]
    #: +1 when a positive SHAP value means "more anomalous", -1 when negative does (IsolationForest)
    orientation: int


def _last_step(obj: Any) -> tuple[Any, Any]:
    steps = getattr(obj, "steps", None)
    if isinstance(steps, list) and steps:  # an sklearn Pipeline (River's steps are a dict)
        head = obj[:-1] if len(steps) > 1 else None
        return steps[-1][1], (head.transform if head is not None else None)
    return obj, None


def shap_target(model: Any) -> ShapTarget | None:
    """What SHAP can explain in ``model`` (a detector, a Pipeline or a bare estimator), or None."""
    if model is None:
        return None
    inner = model
    for attr in ("model", "estimator", "pipeline"):  # IsolationForestDetector / SupervisedDetector / ...
        candidate = getattr(model, attr, None)
        if candidate is not None and (hasattr(candidate, "fit") or isinstance(getattr(candidate, "steps", None), list)):
            inner = candidate
            break
    estimator, transform = _last_step(inner)
    name = type(estimator).__name__
    if hasattr(estimator, "estimators_") or hasattr(estimator, "tree_") or hasattr(estimator, "get_booster"):
        return ShapTarget(estimator, transform, "tree", -1 if name == "IsolationForest" else 1)
    if hasattr(estimator, "coef_") and hasattr(estimator, "intercept_"):
        return ShapTarget(estimator, transform, "linear", 1)
    return None


def is_tree_model(model: Any) -> bool:
    """True when SHAP's TreeExplainer can explain the model (IsolationForest, forests, trees, XGB)."""
    target = shap_target(model)
    return target is not None and target.kind == "tree"


def deviation_contributions(state: ExplainerState, x: FloatArray) -> FloatArray:
    """Robust z-score of each feature against the training normals (positive = above normal)."""
    return (x - state.median) / state.scale


def oriented_shap(values: Any, orientation: int) -> FloatArray:
    """SHAP output of any shape -> (rows, features), positive = pushes toward anomalous."""
    arr = np.asarray(values[-1] if isinstance(values, list) else values, dtype=np.float64)
    if arr.ndim == 3:  # (rows, features, classes): the anomaly class is the last one
        arr = arr[..., -1]
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    return orientation * arr


# ------------------------------------------------------------------------------------------------
# Evidence
# ------------------------------------------------------------------------------------------------
EvidenceItem = str | tuple[str | None, str] | Mapping[str, Any]

_TEMPLATE_WILDCARD = re.compile(r"<[^<>\s]*>")


_READABLE_TEMPLATE = re.compile(r"^(TRACE|DEBUG|INFO|WARN|ERROR|FATAL) (\S+) (\S+) - (.*)$", re.DOTALL)


def _wildcard_regex(text: str) -> str:
    parts = _TEMPLATE_WILDCARD.split(text)
    return ".*?".join(re.escape(p) for p in parts)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex that finds a log line produced by a template (``<*>``/``<NUM>``... = anything).

    A readable template ``LEVEL ShortLogger method - text`` (``Template.readable``) also matches
    lines with the full logger name (``c.n.o.t.h.Oauth2TokenPostHandler``).
    """
    m = _READABLE_TEMPLATE.match(template)
    if m is None:
        return re.compile(_wildcard_regex(template))
    level, short, method, text = m.groups()
    return re.compile(
        rf"\b{level}\s+(?:\S*\.)?{re.escape(short)}\s+{re.escape(method)} - {_wildcard_regex(text)}"
    )


def _evidence_pair(item: EvidenceItem) -> tuple[str | None, str]:
    """(template key or None, line) of one evidence item (see :func:`select_evidence`)."""
    if isinstance(item, str):
        return None, item
    if isinstance(item, tuple):
        return (None if item[0] is None else str(item[0])), str(item[1])
    # a SequenceAccumulator evidence dict
    tid = item.get("template_id")
    head = " ".join(str(item[k]) for k in ("level", "logger", "method") if item.get(k))
    line = f"{head} - {item.get('message', '')}" if head else str(item.get("message", ""))
    if item.get("stack_head"):
        line = f"{line} | {item['stack_head']}"
    return (None if tid is None else str(tid)), line


def _evidence_time(item: EvidenceItem) -> str:
    """``"HH:MM:SS.mmm "`` (UTC time of day) of an accumulator evidence dict, else ``""``: the live
    record shows when the line was logged, as the worker's evidence-only fallback does."""
    if not isinstance(item, Mapping) or item.get("timestamp_ms") is None:
        return ""
    return format_time_of_day(int(item["timestamp_ms"])) + " "


def select_evidence(
    items: Iterable[EvidenceItem],
    top_templates: Sequence[str | tuple[str | None, str]],
    max_lines: int,
    pattern_cache: dict[str, re.Pattern[str]] | None = None,
) -> list[str]:
    """Up to ``max_lines`` redacted lines, first one line per top template (in rank order).

    ``top_templates``: ``(template_key, template_text)`` pairs or bare template texts.  An item is
    ``(template_key, line)`` or a ``SequenceAccumulator`` evidence dict (matched by key when both
    sides have one), or a bare line (matched against the template text, ``<...>`` as a wildcard).
    The remaining slots are filled with the first other lines (skipping exact repeats), so an
    anomaly record always carries some evidence when the sequence has any.
    """
    if max_lines <= 0:
        return []
    items = list(items)
    lines = [_evidence_pair(item) for item in items]
    cache = pattern_cache if pattern_cache is not None else {}
    chosen: list[int] = []
    taken: set[int] = set()
    for template in top_templates:
        if len(chosen) >= max_lines:
            break
        t_key, t_text = template if isinstance(template, tuple) else (None, template)
        for i, (key, line) in enumerate(lines):
            if i in taken:
                continue
            if key is not None and t_key is not None:
                hit = key == t_key
            else:
                pattern = cache.get(t_text)
                if pattern is None:
                    pattern = cache.setdefault(t_text, template_regex(t_text))
                hit = pattern.search(line) is not None
            if hit:
                chosen.append(i)
                taken.add(i)
                break  # one line per template first, so several templates get a say
    texts = {lines[i][1] for i in chosen}
    for i in range(len(lines)):
        if len(chosen) >= max_lines:
            break
        if i not in taken and lines[i][1] not in texts:  # repeats of one line tell nothing new
            chosen.append(i)
            taken.add(i)
            texts.add(lines[i][1])
    # repeats are judged without the time (above); the time goes in front of the chosen lines
    return [redact(_evidence_time(items[i]) + lines[i][1]) for i in sorted(chosen)]


# ------------------------------------------------------------------------------------------------
# The explainer
# ------------------------------------------------------------------------------------------------
class SequenceExplainer:
    """Explains one sequence at a time; holds the state and (for tree models) a cached TreeExplainer."""

    def __init__(self, state: ExplainerState, model: Any = None, method: Method = "auto") -> None:
        target = shap_target(model)
        is_tree = target is not None and target.kind == "tree"
        if method == "tree_shap" and not is_tree:
            msg = f"method 'tree_shap' needs a fitted tree model, got {type(model).__name__}"
            raise ConfigError(msg)
        if method == "auto":
            method = "tree_shap" if is_tree else "deviation"
        self._target = target if method == "tree_shap" else None
        self.state = state
        self.model = model
        self.method: Literal["deviation", "tree_shap"] = method
        self._tree_explainer: Any = None
        self._lock = threading.Lock()
        #: labels redacted once (not per anomaly): feature names can carry template text
        self._labels = [redact(label) for label in state.feature_labels]
        self._patterns: dict[str, re.Pattern[str]] = {}

    def _shap_explainer(self) -> Any:
        with self._lock:
            if self._tree_explainer is None:
                import shap  # heavy; only when a tree model is explained

                assert self._target is not None
                self._tree_explainer = shap.TreeExplainer(self._target.estimator)
            return self._tree_explainer

    def warm_up(self) -> None:
        """Build the TreeExplainer now (about 1-3 s) instead of on the first anomaly."""
        if self.method == "tree_shap":
            self._shap_explainer()

    def contributions(self, x: FloatArray) -> FloatArray:
        """Per-feature contribution for one row (positive = toward anomalous)."""
        if self.method == "tree_shap":
            assert self._target is not None
            row: Any = x.reshape(1, -1)
            if self._target.transform is not None:
                row = _dense(self._target.transform(row))
            values = self._shap_explainer().shap_values(row, check_additivity=False)
            oriented: FloatArray = oriented_shap(values, self._target.orientation)[0]
            return oriented
        return deviation_contributions(self.state, x)

    def nearest_normal(self, x: FloatArray, n_differing: int = 3) -> NearestNormal | None:
        """The closest reference normal (Euclidean in the scaled space) and where it differs."""
        st = self.state
        if st.reference.shape[0] == 0:
            return None
        xs = (x / st.scale).astype(np.float32)
        d2 = st.reference_sq_norms - 2.0 * (st.reference @ xs) + float(xs @ xs)
        best = int(np.argmin(d2))
        ref = st.reference[best].astype(np.float64)
        diff = np.abs(xs.astype(np.float64) - ref)
        order = np.argsort(-diff)[:n_differing]
        differing = [
            DifferingFeature(
                name=self._labels[j], value=float(x[j]), normal_value=float(ref[j] * st.scale[j])
            )
            for j in order
            if diff[j] > 0
        ]
        return NearestNormal(
            seq_id=st.reference_seq_ids[best], distance=float(np.sqrt(max(float(d2[best]), 0.0))),
            differing_features=differing,
        )

    def explain(
        self,
        features: Any,
        evidence: Iterable[EvidenceItem] = (),
        *,
        top_k: int = 5,
        max_evidence: int = 5,
    ) -> Explanation:
        """Explain one sequence given its feature vector (same columns as the model) and its lines."""
        x = _dense(features)
        if x.shape[0] != 1 or x.shape[1] != self.state.n_features:
            msg = f"features have shape {x.shape}, expected (1, {self.state.n_features}) (one sequence)"
            raise ConfigError(msg)
        row = x[0]
        contrib = self.contributions(row)
        if self.method == "deviation":
            order = np.argsort(-np.abs(contrib), kind="stable")
        else:
            order = np.argsort(-contrib, kind="stable")
        top = order[:top_k]
        st = self.state
        top_features = [
            TopFeature(
                name=self._labels[j],
                feature=st.feature_names[j],
                value=float(row[j]),
                normal_low=float(st.low[j]),
                normal_high=float(st.high[j]),
                contribution=float(contrib[j]),
            )
            for j in top
        ]
        templates: list[str | tuple[str | None, str]] = [
            (st.feature_templates[j], st.feature_labels[j])
            for j in top
            if st.feature_templates[j] is not None or st.feature_names[j].startswith("tpl:")
        ]
        lines = select_evidence(evidence, templates, max_evidence, self._patterns)
        return Explanation(
            method=self.method,
            top_features=top_features,
            nearest_normal=self.nearest_normal(row),
            evidence=lines,
        )


class ExplainableBundle(Protocol):
    """What :func:`explain_sequence` needs from a model bundle."""

    @property
    def model(self) -> Any: ...

    @property
    def explainer_state(self) -> ExplainerState | Mapping[str, ExplainerState] | None: ...


#: id(bundle) -> (weak or strong reference to the bundle, its explainer).  Keyed by id because
#: bundles need not be hashable; the stored reference guards against a reused id.
_EXPLAINERS: dict[tuple[int, int], tuple[Any, SequenceExplainer]] = {}
_EXPLAINERS_LOCK = threading.Lock()
_MAX_CACHED = 32  # a per-service bundle holds one explainer per service


def _ref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _model_for(bundle: Any, service: str | None) -> Any:
    detectors = getattr(bundle, "detectors", None)
    if service is not None and isinstance(detectors, Mapping) and service in detectors:
        return detectors[service]
    return bundle.model


def state_for(bundle: ExplainableBundle, service: str | None = None) -> ExplainerState:
    """The explainer state of a bundle, or of one service group of a per-service bundle.

    Per-service bundles store ``{service: ExplainerState}`` (normal ranges and nearest normals of
    that service's training normals); a pooled bundle stores one state used for every service.
    """
    state = bundle.explainer_state
    if state is None:
        msg = (
            f"bundle {type(bundle).__name__} has no explainer state "
            "(build it with shared.explain.build_explainer_state_for_spec and save it in the bundle)"
        )
        raise ModelLoadError(msg)
    if isinstance(state, Mapping):
        if service is None or service not in state:
            msg = f"per-service explainer state has services {sorted(state)}; got service {service!r}"
            raise ModelLoadError(msg)
        found: ExplainerState = state[service]
        return found
    return state


def explainer_for(
    bundle: ExplainableBundle, method: Method = "auto", service: str | None = None
) -> SequenceExplainer:
    """The cached :class:`SequenceExplainer` of a bundle (built on first use, one per live bundle).

    For per-service bundles (``bundle.detectors`` and ``bundle.explainer_state`` keyed by service)
    pass ``service`` to explain with that service's detector and normal ranges.
    """
    model = _model_for(bundle, service)
    with _EXPLAINERS_LOCK:
        for key in [k for k, (r, _) in _EXPLAINERS.items() if r() is None]:
            del _EXPLAINERS[key]
        cache_key = (id(bundle), id(model))
        entry = _EXPLAINERS.get(cache_key)
        if entry is not None and entry[0]() is bundle and method in ("auto", entry[1].method):
            return entry[1]
        state = state_for(bundle, service)
        explainer = SequenceExplainer(state, model, method)
        if len(_EXPLAINERS) >= _MAX_CACHED:
            _EXPLAINERS.pop(next(iter(_EXPLAINERS)))
        _EXPLAINERS[cache_key] = (_ref(bundle), explainer)
        return explainer


def explain_sequence(
    bundle: ExplainableBundle,
    features: Any,
    evidence: Iterable[EvidenceItem] = (),
    *,
    top_k: int = 5,
    max_evidence: int = 5,
    method: Method = "auto",
    service: str | None = None,
) -> Explanation:
    """Explain one flagged sequence: top-k features with normal ranges, nearest normal, evidence.

    ``features``: the sequence's feature vector (1-D or one-row 2-D, NumPy or sparse), in the
    bundle's feature order.  ``evidence``: the sequence's retained lines: bare strings,
    ``(template_key, line)`` pairs, or the dicts of ``SequenceAccumulator.evidence``; at most
    ``max_evidence`` are returned, redacted.  ``method``: ``auto`` = tree SHAP for tree models,
    deviation otherwise.  ``service`` picks the detector of a per-service bundle.
    """
    return explainer_for(bundle, method, service).explain(
        features, evidence, top_k=top_k, max_evidence=max_evidence
    )
