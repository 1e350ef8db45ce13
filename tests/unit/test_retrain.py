"""Nightly retrain: promotes a better challenger, keeps the champion against a worse one, records both."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batch.retrain import (
    EXIT_KEPT,
    EXIT_PROMOTED,
    RetrainConfig,
    Side,
    decide,
    retrain,
)
from batch.splits import split_runs
from shared.bundle import current_target

#: 8 runs split 4/2/2: enough held-out sequences for a ranking metric to mean something.
FRACTIONS = (0.5, 0.25, 0.25)
CONFIG = RetrainConfig(model="if", seed=42, margin=0.01, fractions=FRACTIONS)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """8 generated v2 runs (correct + 6 error cases each), loaded (about 2 s)."""
    from batch.generate import GenerateConfig, generate
    from batch.loader import load_runs, make_selection
    from shared.catalog import targets

    root = tmp_path_factory.mktemp("retrain_data")
    generate(GenerateConfig(out=root / "runs", runs=8, layout="v2", errors_per_run=6, seed=7))
    load_runs(root / "runs", make_selection(seed=7), root / "pq", target=targets)
    return pl.read_parquet(root / "pq" / "events.parquet")


@pytest.fixture(scope="module")
def corrupted(events: pl.DataFrame) -> pl.DataFrame:
    """The same data, but the training runs' messages are noise: a model trained on it is worse.

    The validation and held-out test runs are untouched, so champion and challenger are still
    measured on the same clean runs.
    """
    split = split_runs(events.select("run", "run_epoch", "test_case").unique(), FRACTIONS, seed=42)
    in_train = pl.col("run").is_in(list(split.train_runs))
    noise = pl.format("noise {} from nowhere", pl.col("line_no") % 7)
    return events.with_columns(pl.when(in_train).then(noise).otherwise(pl.col("message")).alias("message"))


def _record(path: Path | None) -> dict[str, Any]:
    assert path is not None and path.is_file()
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_nightly_retrain_promotes_only_better_challengers(
    events: pl.DataFrame, corrupted: pl.DataFrame, tmp_path: Path
) -> None:
    # 1. nothing promoted yet: the first challenger (trained on noise) becomes the champion
    weak = retrain(corrupted, CONFIG, tmp_path)
    assert weak.promoted and weak.exit_code == EXIT_PROMOTED and weak.champion is None
    assert "no champion" in _record(weak.record_path)["reason"]
    weak_dir = current_target(tmp_path)
    assert weak_dir == Path(weak.challenger.path or "").resolve()

    # 2. a challenger on the clean data beats it on the SAME held-out runs: promoted.  The held-out
    # runs hold only ~14 `correct` sequences, so one alert more moves the normal alert rate by ~0.07;
    # the alert-rate gate itself is test_promotion_rule's job, here one extra alert is tolerated.
    held_out = events.filter(pl.col("run").is_in(list(weak.split.test_runs)) & (pl.col("test_case") == "correct"))
    n_normal = held_out.select("run", "service").unique().height
    assert n_normal >= 7
    lenient = dataclasses.replace(CONFIG, alert_rate_tolerance=1.0 / n_normal + 1e-9)
    good = retrain(events, lenient, tmp_path, record_copy=tmp_path / "copy.json")
    assert good.promoted, good.reason
    assert good.champion is not None and Path(good.champion.path or "") == weak_dir
    assert good.challenger.value("roc_auc") >= good.champion.value("roc_auc") + CONFIG.margin
    assert good.challenger.n_sequences == good.champion.n_sequences
    good_dir = current_target(tmp_path)
    assert good_dir == Path(good.challenger.path or "").resolve() != weak_dir
    rec = _record(good.record_path)
    assert rec == json.loads((tmp_path / "copy.json").read_text())
    assert rec["held_out"]["test_runs"] == list(weak.split.test_runs)
    assert rec["champion"]["metrics"]["roc_auc"] < rec["challenger"]["metrics"]["roc_auc"]

    # 3. a challenger trained on noise again is worse: the good champion stays, record written
    bad = retrain(corrupted, CONFIG, tmp_path)
    assert not bad.promoted and bad.exit_code == EXIT_KEPT
    assert current_target(tmp_path) == good_dir
    assert "does not beat" in bad.reason
    rec = _record(bad.record_path)
    assert rec["decision"] == "kept_champion" and rec["current"] == str(good_dir)
    assert Path(rec["challenger"]["path"]).is_dir()  # kept for inspection by default

    # 4. --discard-rejected deletes the rejected bundle; its record keeps the metrics
    gone = retrain(corrupted, RetrainConfig(model="if", seed=42, margin=0.01, fractions=FRACTIONS, keep_rejected=False), tmp_path)
    assert not gone.promoted and not Path(gone.challenger.path or "").exists()
    assert _record(gone.record_path)["challenger"]["metrics"]["roc_auc"] is not None

    # 5. a dry run decides and records, but never switches `current`: in a model folder without a
    #    champion the verdict is always "promote" (no score comparison to depend on), yet no
    #    `current` pointer may appear; next to the real champion, `current` stays where it was.
    dry_cfg = RetrainConfig(model="if", seed=43, fractions=FRACTIONS, dry_run=True)
    dry = retrain(events, dry_cfg, tmp_path / "dry")
    # it says "would promote" everywhere: the decision, the record and its file name, never "promoted"
    assert not dry.promoted and dry.decision == "would_promote" and dry.exit_code == EXIT_PROMOTED
    dry_record = _record(dry.record_path)
    assert dry_record["dry_run"] is True and dry_record["promoted"] is False
    assert dry_record["decision"] == "would_promote" and dry_record["current"] is None
    assert dry.record_path is not None and dry.record_path.name.endswith("-would_promote.json")
    assert "dry run" in dry.reason
    assert Path(dry.challenger.path or "").is_dir()  # kept, so it can be promoted by hand
    assert not (tmp_path / "dry" / "current").exists()
    dry_next_to_champion = retrain(events, dry_cfg, tmp_path)
    assert _record(dry_next_to_champion.record_path)["dry_run"] is True
    assert current_target(tmp_path) == good_dir

    # 6. a champion that no longer loads (checksum broken) is replaced
    (good_dir / "feature_spec.json").write_text("{}")
    fixed = retrain(events, RetrainConfig(model="if", seed=44, fractions=FRACTIONS), tmp_path)
    assert fixed.promoted and fixed.champion is not None and fixed.champion.error
    assert "unusable" in fixed.reason
    assert len(list((tmp_path / "decisions").glob("*.json"))) == 6


def _side(auc: float, alert: float, role: str = "challenger") -> Side:
    return Side(role, f"/m/{role}", {"roc_auc": auc, "normal_alert_rate": alert})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("new", "old", "expected", "why"),
    [
        ((0.90, 0.01), (0.80, 0.01), "promoted", ">="),
        ((0.805, 0.01), (0.80, 0.01), "kept_champion", "does not beat"),
        ((0.95, 0.05), (0.80, 0.01), "kept_champion", "alert rate"),
        ((math.nan, 0.0), (0.80, 0.01), "kept_champion", "undefined"),
    ],
)
def test_promotion_rule(new: tuple[float, float], old: tuple[float, float], expected: str, why: str) -> None:
    verdict, reason = decide(_side(*new), _side(*old, role="champion"), RetrainConfig(margin=0.01))
    assert verdict == expected and why in reason


def test_cli_exit_codes(events: pl.DataFrame, tmp_path: Path) -> None:
    from lo2.cli import main

    path = tmp_path / "events.parquet"
    events.write_parquet(path)
    args = ["retrain", "--input", str(path), "--model-dir", str(tmp_path / "models"), "--seed", "42",
            "--fractions", "0.5,0.25,0.25"]
    assert main(args) == EXIT_PROMOTED
    # same data, same seed: identical challenger, not better by the margin -> champion kept
    assert main([*args, "--margin", "0.01"]) == EXIT_KEPT
    assert main([*args, "--model", "nope"]) == 2


def test_cli_dry_run_says_would_promote_and_switches_nothing(
    events: pl.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from lo2.cli import main

    path = tmp_path / "events.parquet"
    events.write_parquet(path)
    model_dir = tmp_path / "models"
    with caplog.at_level("INFO", logger="batch.retrain"):
        rc = main(["retrain", "--input", str(path), "--model-dir", str(model_dir), "--seed", "42",
                   "--fractions", "0.5,0.25,0.25", "--dry-run"])
    assert rc == EXIT_PROMOTED  # documented: with --dry-run, 0 = would promote
    out = " ".join(capsys.readouterr().out.split())
    assert "would promote:" in out and "promoted:" not in out
    assert not (model_dir / "current").exists()
    records = [p.name for p in (model_dir / "decisions").iterdir()]
    assert len(records) == 1 and records[0].endswith("-would_promote.json")
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "batch.retrain")
    assert "retrain: would promote" in logged and "retrain: promoted" not in logged


def test_the_canary_is_never_a_challenger_nor_promoted(events: pl.DataFrame, tmp_path: Path) -> None:
    """Found by QA: with a broken champion, `retrain --model canary` replaced it with the leakage
    canary, and `lo2 models promote` accepted a canary bundle."""
    from batch.train import TrainConfig, train
    from shared.bundle import list_bundles, promote
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="leakage canary"):
        retrain(events, dataclasses.replace(CONFIG, model="canary"), tmp_path)
    assert current_target(tmp_path) is None
    canary_dir = train(events, TrainConfig(models=("canary",), seed=1)).bundles["canary"].save(tmp_path / "canary-x")
    with pytest.raises(ConfigError, match="never the live detector"):
        promote(canary_dir, tmp_path)
    assert current_target(tmp_path) is None
    # a retrain's decision records are not listed as a broken bundle
    retrain(events, CONFIG, tmp_path)
    assert (tmp_path / "decisions").is_dir()
    assert [p.name for p, _, _ in list_bundles(tmp_path) if p.name == "decisions"] == []
