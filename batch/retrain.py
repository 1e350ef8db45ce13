"""Nightly retrain: build a challenger, compare it with the champion on the SAME held-out runs,
promote it only when it is better.

Why this shape (DESIGN.md: "a nightly retrain builds a challenger and promotes it only when it is
better"):

* The challenger is trained by :func:`batch.train.train` on the current data: spec, detector and
  thresholds from the training and validation runs only.  The newest runs (the test split, by
  run epoch) are held out.
* Champion (the bundle ``current`` points at) and challenger are scored by the same code path
  (:func:`batch.train.score_events` on the saved, reloaded bundles, each with its own feature spec)
  on exactly the same held-out runs, so the comparison measures the models and nothing else.
* Promotion rule: the challenger's primary metric (ROC-AUC on the service-aware label by default)
  must beat the champion's by ``margin``, AND its alert rate on normal (``correct``) test sequences
  must not be worse than the champion's (plus ``alert_rate_tolerance``).  A better ranking that
  pages people more often is not an improvement for the people paged.
* Promotion is the atomic ``current`` switch of :func:`shared.bundle.promote`; the worker hot-reloads.
* A decision record (JSON) is written either way, and the exit code says what happened.
* ``dry_run`` applies the same rule but never switches ``current``: a winning challenger is then
  recorded as ``would_promote`` (record ``<stamp>-would_promote.json``, ``promoted: false``), so
  neither the console, the log nor the record file name claims a promotion that did not happen.
  The exit code follows the verdict (0 = would promote, 3 = champion kept) so a script can ask
  "would it promote?" without switching anything.

If the champion cannot be loaded or scored, the challenger is promoted (a model that cannot be
loaded protects nobody) and the record says why.  If the champion trained on some of the held-out
runs, its numbers are optimistic; the comparison then favours the champion (conservative) and the
record lists the overlap.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from batch.splits import RunSplit
from batch.train import Events, TrainConfig, filter_services, score_events, train
from shared import detection_metrics as dm
from shared.bundle import (
    CANARY_KEY,
    DECISIONS_DIR,
    current_target,
    load,
    promote,
    unique_bundle_dir,
)
from shared.errors import ConfigError, Lo2Error, ModelLoadError

log = logging.getLogger(__name__)

#: Exit codes of ``lo2 retrain`` (documented in docs/evaluation.md).  With ``--dry-run``,
#: EXIT_PROMOTED means "would promote" (``current`` unchanged).
EXIT_PROMOTED = 0
EXIT_ERROR = 2
EXIT_KEPT = 3
#: Folder under the model dir that holds the decision records.
RECORD_SCHEMA = "lo2.retrain-decision.v1"

#: "would_promote" = the rule chose the challenger, but this was a dry run (``current`` unchanged).
Decision = Literal["promoted", "would_promote", "kept_champion"]
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class RetrainConfig:
    """The challenger's training and the promotion rule (defaults from :class:`Settings`)."""

    model: str = "if"
    seed: int = 42
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    threshold_quantile: float = 0.99
    label: str = "anomaly_service"
    metric: str = "roc_auc"
    margin: float = 0.005
    alert_rate_tolerance: float = 0.0
    per_service: bool = False
    services: tuple[str, ...] | None = None
    model_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    keep_rejected: bool = True
    #: Keyword arguments of ``fit_feature_spec`` (``shared.features.feature_options(settings)``).
    feature_options: Mapping[str, Any] = field(default_factory=dict)
    #: Decide and record, but do not switch ``current``.
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.label not in ("anomaly", "anomaly_service"):
            raise ConfigError(f"retrain label {self.label!r}: expected 'anomaly' or 'anomaly_service'")
        if self.metric not in ("roc_auc", "pr_auc"):
            raise ConfigError(f"retrain metric {self.metric!r}: expected 'roc_auc' or 'pr_auc'")
        if self.margin < 0 or self.alert_rate_tolerance < 0:
            raise ConfigError(
                f"margin={self.margin} and alert_rate_tolerance={self.alert_rate_tolerance}: expected >= 0"
            )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            models=(self.model,),
            seed=self.seed,
            fractions=self.fractions,
            threshold_quantile=self.threshold_quantile,
            fit_label=self.label,
            per_service=self.per_service,
            services=self.services,
            model_params=self.model_params,
            feature_options=self.feature_options,
        )


@dataclass
class Side:
    """One bundle measured on the held-out runs."""

    role: Literal["champion", "challenger"]
    path: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    n_sequences: int = 0
    error: str | None = None
    training_runs_in_test: list[str] = field(default_factory=list)

    def value(self, name: str) -> float:
        return float(self.metrics.get(name, math.nan))

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "bundle": Path(self.path).name if self.path else None,
            "path": self.path,
            "n_sequences": self.n_sequences,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},
            "error": self.error,
            "training_runs_in_test": self.training_runs_in_test,
        }


@dataclass
class RetrainDecision:
    """What the nightly retrain decided, and why."""

    decision: Decision
    reason: str
    challenger: Side
    champion: Side | None
    split: RunSplit
    config: RetrainConfig
    previous_current: str | None
    current: str | None
    record_path: Path | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def promoted(self) -> bool:
        """Whether ``current`` was switched to the challenger (never true in a dry run)."""
        return self.decision == "promoted"

    @property
    def challenger_won(self) -> bool:
        """Whether the rule chose the challenger (promoted, or would be without ``dry_run``)."""
        return self.decision in ("promoted", "would_promote")

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTED if self.challenger_won else EXIT_KEPT

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "schema": RECORD_SCHEMA,
            "created_at": self.created_at,
            "decision": self.decision,
            "promoted": self.promoted,
            "dry_run": c.dry_run,
            "reason": self.reason,
            "rule": {
                "model": c.model,
                "label": c.label,
                "metric": c.metric,
                "margin": c.margin,
                "alert_rate_tolerance": c.alert_rate_tolerance,
                "alert_rate_measured_on": "normal (correct) test sequences",
                "threshold_quantile": c.threshold_quantile,
                "seed": c.seed,
            },
            "held_out": {
                "split_fingerprint": self.split.fingerprint,
                "test_runs": list(self.split.test_runs),
                "n_test_sequences": self.challenger.n_sequences,
            },
            "challenger": self.challenger.as_dict(),
            "champion": self.champion.as_dict() if self.champion else None,
            "previous_current": self.previous_current,
            "current": self.current,
            "exit_code": self.exit_code,
        }


# --- measuring one bundle ------------------------------------------------------------------------


def measure(scored: pl.DataFrame, label: str) -> dict[str, float]:
    """Metrics of a scored test table (``score``, ``alert``, labels): ranking + alert rates."""
    y = scored[label].cast(pl.Boolean).fill_null(False).to_numpy()
    s = scored["score"].to_numpy().astype(np.float64)
    alert = scored["alert"].to_numpy().astype(bool)
    normal = ~scored["anomaly"].cast(pl.Boolean).fill_null(False).to_numpy()
    out = {k: float(v) for k, v in dm.ranking_metrics(y, s, ks=(10,), alphas=(0.01,)).items()}
    tp = int((alert & y).sum())
    fp = int((alert & ~y).sum())
    fn = int((~alert & y).sum())
    out["alert_rate"] = float(alert.mean()) if alert.size else math.nan
    out["normal_alert_rate"] = float(alert[normal].mean()) if normal.any() else math.nan
    out["recall"] = tp / (tp + fn) if tp + fn else math.nan
    out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fn else math.nan
    return out


def _score_bundle(path: Path, test_events: Events, label: str, role: Literal["champion", "challenger"],
                  test_runs: tuple[str, ...]) -> Side:
    bundle = load(path)
    scored = score_events(bundle, test_events)
    split = bundle.training.get("split", {}) if isinstance(bundle.training, dict) else {}
    seen = set(split.get("train_runs", [])) | set(split.get("validation_runs", []))
    return Side(
        role=role,
        path=str(path),
        metrics=measure(scored, label),
        n_sequences=scored.height,
        training_runs_in_test=sorted(seen & set(test_runs)),
    )


def decide(challenger: Side, champion: Side | None, config: RetrainConfig) -> tuple[Decision, str]:
    """The promotion rule (pure): better by ``margin`` on the metric and not worse on normal alert rate."""
    metric = config.metric
    new = challenger.value(metric)
    if challenger.error is not None:
        return "kept_champion", f"challenger could not be measured: {challenger.error}"
    if champion is None:
        return "promoted", "no champion: nothing is promoted yet"
    if champion.error is not None:
        return "promoted", f"champion unusable ({champion.error}); the challenger replaces it"
    old = champion.value(metric)
    if math.isnan(new):
        return "kept_champion", f"challenger {metric} is undefined on the held-out runs"
    if math.isnan(old):
        return "kept_champion", f"champion {metric} is undefined on the held-out runs; not comparable"
    new_alert = challenger.value("normal_alert_rate")
    old_alert = champion.value("normal_alert_rate")
    if new < old + config.margin:
        return (
            "kept_champion",
            f"challenger {metric} {new:.4f} does not beat champion {old:.4f} by the margin {config.margin}",
        )
    if not math.isnan(old_alert) and (math.isnan(new_alert) or new_alert > old_alert + config.alert_rate_tolerance):
        return (
            "kept_champion",
            f"challenger {metric} {new:.4f} beats {old:.4f}, but its alert rate on normal sequences "
            f"{new_alert:.4f} is worse than the champion's {old_alert:.4f} (tolerance {config.alert_rate_tolerance})",
        )
    return (
        "promoted",
        f"challenger {metric} {new:.4f} >= champion {old:.4f} + {config.margin}, and normal alert rate "
        f"{new_alert:.4f} <= {old_alert:.4f} + {config.alert_rate_tolerance}",
    )


# --- the nightly job -------------------------------------------------------------------------------


def write_record(decision: RetrainDecision, model_dir: Path, extra: Path | None = None) -> Path:
    """Write the decision record under ``<model_dir>/decisions/`` (and a copy to ``extra``)."""
    folder = model_dir / DECISIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = decision.created_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = folder / f"{stamp}-{decision.decision}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{stamp}-{decision.decision}-{n}.json"
    text = json.dumps(decision.as_dict(), indent=2, allow_nan=False) + "\n"
    path.write_text(text)
    if extra is not None:
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text(text)
    decision.record_path = path
    return path


def retrain(
    events: Events,
    config: RetrainConfig,
    model_dir: Path,
    *,
    record_copy: Path | None = None,
    progress: ProgressFn | None = None,
) -> RetrainDecision:
    """Train a challenger on ``events``, compare with ``current`` on the held-out runs, maybe promote."""
    model_dir = Path(model_dir)
    if config.model == CANARY_KEY:
        msg = "--model canary: the leakage canary is a baseline, never a challenger for the live detector"
        raise ConfigError(msg)
    events = filter_services(events, config.services)
    if progress:
        progress(f"training challenger {config.model}")
    result = train(events, config.train_config())
    split = result.data.split
    bundle = result.bundles[config.model]
    challenger_dir = bundle.save(unique_bundle_dir(model_dir, config.model))
    test_events = events.filter(pl.col("run").is_in(list(split.test_runs)))
    if progress:
        progress("scoring challenger on the held-out runs")
    challenger = _score_bundle(challenger_dir, test_events, config.label, "challenger", split.test_runs)
    champion_dir = current_target(model_dir)
    champion: Side | None = None
    if champion_dir is not None:
        if progress:
            progress(f"scoring champion {champion_dir.name} on the same runs")
        try:
            champion = _score_bundle(champion_dir, test_events, config.label, "champion", split.test_runs)
        except (ModelLoadError, Lo2Error, ValueError, KeyError, OSError) as exc:
            log.warning("champion %s cannot be scored: %s", champion_dir, exc)
            champion = Side("champion", str(champion_dir), error=f"{type(exc).__name__}: {exc}")
        if champion.training_runs_in_test:
            log.warning(
                "champion %s trained on %d of the held-out runs; its numbers are optimistic",
                champion_dir.name,
                len(champion.training_runs_in_test),
            )
    verdict, reason = decide(challenger, champion, config)
    previous = str(champion_dir) if champion_dir else None
    current = previous
    if verdict == "promoted" and config.dry_run:
        # The challenger stays on disk so it can be promoted by hand (`lo2 models promote`).
        verdict = "would_promote"
        reason = f"dry run, `current` unchanged; {reason}"
    elif verdict == "promoted":
        promote(challenger_dir, model_dir)
        current = str(challenger_dir.resolve())
    elif not config.keep_rejected:
        shutil.rmtree(challenger_dir)
    decision = RetrainDecision(verdict, reason, challenger, champion, split, config, previous, current)
    write_record(decision, model_dir, record_copy)
    log.info("retrain: %s (%s); record %s", verdict.replace("_", " "), reason, decision.record_path)
    return decision
