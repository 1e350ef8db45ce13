"""Train / validation / test split by whole runs, in run-epoch order.

Why: the LogLead demo split rows, not runs, so the ``correct`` and error sequences of one run
straddled train and test, and its "temporal" order was a time of day without a date.  Here a run
(one folder ``LO2_run_<epoch>``) is the unit: every sequence of a run lands in exactly one split,
and the splits follow the run epoch (oldest runs train, newest runs test), which is how the model
meets data in production.  Thresholds are calibrated on the validation split's ``correct``
sequences, so every split must hold some; the test split must hold anomalies whenever any run
after the training runs has them, or there is nothing to measure.

``order="random"`` shuffles runs with the seed instead (for split-variance studies); the
chronological split does not depend on the seed (equal epochs are ordered by run name).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from shared.errors import Lo2Error

log = logging.getLogger(__name__)

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
SplitOrder = Literal["chronological", "random"]

#: A split needs at least one run each.
MIN_RUNS = 3


class SplitError(Lo2Error, ValueError):
    """The runs cannot be split as asked (too few runs, no ``correct`` runs, bad fractions)."""


@dataclass(frozen=True)
class RunSplit:
    """Which runs are in which split.  Runs are listed in split order (oldest first if chronological)."""

    train_runs: tuple[str, ...]
    validation_runs: tuple[str, ...]
    test_runs: tuple[str, ...]
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    order: SplitOrder = "chronological"
    notes: tuple[str, ...] = field(default=())

    def runs(self, name: SplitName) -> tuple[str, ...]:
        return {"train": self.train_runs, "validation": self.validation_runs, "test": self.test_runs}[name]

    def split_of(self) -> dict[str, SplitName]:
        """Run → split name."""
        return {run: name for name in SPLITS for run in self.runs(name)}

    def select(self, frame: pl.DataFrame, name: SplitName, run_col: str = "run") -> pl.DataFrame:
        """The rows of ``frame`` (events or sequences) whose run is in split ``name``."""
        if run_col not in frame.columns:
            raise SplitError(f"cannot select split {name!r}: frame has no {run_col!r} column ({frame.columns})")
        return frame.filter(pl.col(run_col).is_in(list(self.runs(name))))

    def label(self, frame: pl.DataFrame, run_col: str = "run", out_col: str = "split") -> pl.DataFrame:
        """``frame`` with a ``split`` column (null for runs the split does not know)."""
        mapping = self.split_of()
        return frame.with_columns(
            pl.col(run_col).replace_strict(mapping, default=None, return_dtype=pl.String).alias(out_col)
        )

    @property
    def fingerprint(self) -> str:
        """Short hash of the run assignment, to prove two evaluations used the SAME held-out runs."""
        h = hashlib.sha256()
        for name in SPLITS:
            h.update(name.encode())
            for run in sorted(self.runs(name)):
                h.update(b"\0" + run.encode())
        return h.hexdigest()[:16]

    def as_dict(self) -> dict[str, object]:
        return {
            "train_runs": list(self.train_runs),
            "validation_runs": list(self.validation_runs),
            "test_runs": list(self.test_runs),
            "fractions": list(self.fractions),
            "seed": self.seed,
            "order": self.order,
            "fingerprint": self.fingerprint,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RunSplit:
        def runs(key: str) -> tuple[str, ...]:
            value = data[key]
            if not isinstance(value, list | tuple):
                raise SplitError(f"split record {key!r} must be a list of run names, got {value!r}")
            return tuple(str(v) for v in value)

        fr = data.get("fractions", (0.6, 0.2, 0.2))
        fr_t = tuple(float(x) for x in fr) if isinstance(fr, list | tuple) else (0.6, 0.2, 0.2)
        order = data.get("order", "chronological")
        return cls(
            runs("train_runs"),
            runs("validation_runs"),
            runs("test_runs"),
            (fr_t[0], fr_t[1], fr_t[2]),
            int(str(data.get("seed", 0))),
            "random" if order == "random" else "chronological",
        )


def _run_table(meta: pl.DataFrame) -> pl.DataFrame:
    """One row per run: run, run_epoch, has_normal, has_anomaly (from ``anomaly`` or ``test_case``)."""
    missing = [c for c in ("run", "run_epoch") if c not in meta.columns]
    if missing:
        raise SplitError(f"split_runs needs columns run and run_epoch, missing {missing} in {meta.columns}")
    if "anomaly" in meta.columns:
        is_anomaly = pl.col("anomaly").cast(pl.Boolean)
    elif "test_case" in meta.columns:
        is_anomaly = pl.col("test_case") != "correct"
    else:
        raise SplitError(f"split_runs needs an 'anomaly' or 'test_case' column, got {meta.columns}")
    return (
        meta.select("run", "run_epoch", is_anomaly.alias("_anomaly"))
        .group_by("run")
        .agg(
            pl.col("run_epoch").min(),
            (~pl.col("_anomaly")).any().alias("has_normal"),
            pl.col("_anomaly").any().alias("has_anomaly"),
        )
    )


def _targets(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Target cut points (end of train, end of validation) with at least one run per split."""
    total = sum(fractions)
    n_train = max(1, round(n * fractions[0] / total))
    n_val = max(1, round(n * fractions[1] / total))
    n_train = min(n_train, n - 2)
    n_val = min(n_val, n - n_train - 1)
    return n_train, n_train + n_val


def _choose_cuts(
    has_normal: npt.NDArray[np.bool_], has_anomaly: npt.NDArray[np.bool_], target: tuple[int, int]
) -> tuple[int, int, list[str]]:
    """Cut points (i, j): train = [0, i), validation = [i, j), test = [j, n).

    Among all cuts with one run per split at least, pick the one closest to ``target`` that
    (1) gives every split a run with normal sequences and (2) gives the test split anomalies if
    any run after the first can.  Falls back to weaker guarantees with a note.
    """
    n = has_normal.size
    i, j = np.meshgrid(np.arange(1, n), np.arange(2, n + 1), indexing="ij")
    valid = j < n
    valid &= j > i
    cum_n = np.r_[0, np.cumsum(has_normal)]
    cum_a = np.r_[0, np.cumsum(has_anomaly)]
    normal_ok = (cum_n[i] > 0) & (cum_n[j] - cum_n[i] > 0) & (cum_n[n] - cum_n[j] > 0)
    test_anom = cum_a[n] - cum_a[j] > 0
    dist = np.abs(i - target[0]) + np.abs(j - target[1])
    notes: list[str] = []
    for cond, note in (
        (valid & normal_ok & test_anom, None),
        (valid & normal_ok, "test split has no anomalies (no later run has any)"),
    ):
        if cond.any():
            d = np.where(cond, dist, np.iinfo(np.int64).max)
            flat = int(np.argmin(d))  # first minimum = earliest cut among equals
            a, b = np.unravel_index(flat, d.shape)
            if note:
                notes.append(note)
            return int(i[a, b]), int(j[a, b]), notes
    raise SplitError(
        f"cannot give train, validation and test a run with 'correct' sequences: only "
        f"{int(has_normal.sum())} of {n} runs have any; need at least 3"
    )


def split_runs(
    meta: pl.DataFrame,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    order: SplitOrder = "chronological",
) -> RunSplit:
    """Split the runs of ``meta`` (events or sequences: needs run, run_epoch, anomaly|test_case).

    Whole runs only, oldest first (``order="chronological"``) or shuffled with ``seed``
    (``order="random"``).  Sizes follow ``fractions`` (train, validation, test) as closely as the
    guarantees allow: every split gets ``correct`` sequences, the test split gets anomalies when
    possible.  Raises :class:`SplitError` with fewer than 3 runs or impossible guarantees.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr):
        raise SplitError(f"fractions must be three positive numbers (train, validation, test), got {fractions}")
    fr3: tuple[float, float, float] = (fr[0], fr[1], fr[2])
    runs = _run_table(meta)
    n = runs.height
    if n < MIN_RUNS:
        raise SplitError(
            f"need at least {MIN_RUNS} runs to hold out whole runs for train/validation/test, "
            f"got {n}: {runs['run'].to_list()}"
        )
    # group_by order is arbitrary: fix the order by name before the seeded shuffle
    runs = runs.sort("run")
    rng = np.random.default_rng(seed)
    runs = runs.with_columns(pl.Series("_tie", rng.permutation(n)))
    if order == "chronological":
        runs = runs.sort(["run_epoch", "run"])
    elif order == "random":
        runs = runs.sort("_tie")
    else:
        raise SplitError(f"order must be 'chronological' or 'random', got {order!r}")
    has_normal = runs["has_normal"].to_numpy().astype(bool)
    has_anomaly = runs["has_anomaly"].to_numpy().astype(bool)
    i, j, notes = _choose_cuts(has_normal, has_anomaly, _targets(n, fr3))
    names = runs["run"].to_list()
    split = RunSplit(tuple(names[:i]), tuple(names[i:j]), tuple(names[j:]), fr3, seed, order, tuple(notes))
    for note in notes:
        log.warning("run split: %s", note)
    log.info(
        "run split (%s): %d train, %d validation, %d test runs",
        order,
        len(split.train_runs),
        len(split.validation_runs),
        len(split.test_runs),
    )
    return split
