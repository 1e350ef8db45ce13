"""Run splits: whole runs, chronological, guarantees, clear errors."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.splits import RunSplit, SplitError, split_runs


def _meta(epochs: list[int], errors_per_run: int = 2, correct: list[bool] | None = None) -> pl.DataFrame:
    """Sequences table: one `correct` + N error test cases x 2 services per run."""
    rows = []
    for idx, epoch in enumerate(epochs):
        cases = ([] if correct is not None and not correct[idx] else ["correct"]) + [
            f"err_{e}" for e in range(errors_per_run)
        ]
        for case in cases:
            for service in ("token", "code"):
                rows.append(
                    {
                        "run": f"LO2_run_{epoch}",
                        "run_epoch": epoch,
                        "test_case": case,
                        "service": service,
                        "anomaly": case != "correct",
                    }
                )
    return pl.DataFrame(rows)


def test_whole_runs_chronological_sizes() -> None:
    epochs = [1_700_000_000 + 1000 * i for i in range(10)]
    # shuffle input order: the split must follow the epoch, not the row order
    meta = _meta(epochs[::-1])
    split = split_runs(meta, (0.6, 0.2, 0.2), seed=1)
    assert len(split.train_runs) == 6 and len(split.validation_runs) == 2 and len(split.test_runs) == 2
    assert split.train_runs == tuple(f"LO2_run_{e}" for e in epochs[:6])
    assert split.test_runs == tuple(f"LO2_run_{e}" for e in epochs[8:])
    assert not split.notes


def test_split_selects_and_labels_rows() -> None:
    meta = _meta([1, 2, 3, 4, 5])
    split = split_runs(meta)
    labelled = split.label(meta)
    assert labelled["split"].null_count() == 0
    for name in ("train", "validation", "test"):
        part = split.select(meta, name)
        assert set(part["run"].unique()) == set(split.runs(name))
        assert (labelled.filter(pl.col("split") == name).height) == part.height
    assert sum(split.select(meta, n).height for n in ("train", "validation", "test")) == meta.height


def test_chronological_split_does_not_depend_on_seed() -> None:
    meta = _meta(list(range(100, 120)))
    a = split_runs(meta, seed=1)
    b = split_runs(meta, seed=2)
    assert a.fingerprint == b.fingerprint


def test_random_order_depends_on_seed_but_is_reproducible() -> None:
    meta = _meta(list(range(100, 140)))
    a = split_runs(meta, seed=1, order="random")
    assert a.fingerprint == split_runs(meta, seed=1, order="random").fingerprint
    assert a.fingerprint != split_runs(meta, seed=2, order="random").fingerprint


def test_every_split_gets_correct_runs_when_correct_is_rare() -> None:
    # only runs 0, 5 and 9 have `correct` sequences; target cuts (6, 8) would leave
    # validation without any
    has_correct = [i in (0, 5, 9) for i in range(10)]
    meta = _meta(list(range(10)), correct=has_correct)
    split = split_runs(meta)
    normal_runs = {f"LO2_run_{i}" for i in (0, 5, 9)}
    for name in ("train", "validation", "test"):
        assert normal_runs & set(split.runs(name)), name


def test_test_split_gets_anomalies_when_possible() -> None:
    # runs 7, 8, 9 are correct-only; the last run with errors is 6
    rows = _meta(list(range(10)))
    rows = rows.filter(~((pl.col("run_epoch") >= 7) & pl.col("anomaly")))
    split = split_runs(rows)
    test = split.select(rows, "test")
    assert test["anomaly"].any()
    assert not split.notes


def test_note_when_no_later_run_has_anomalies() -> None:
    rows = _meta(list(range(6)))
    rows = rows.filter(~((pl.col("run_epoch") >= 1) & pl.col("anomaly")))  # only run 0 has errors
    split = split_runs(rows)
    assert any("no anomalies" in n for n in split.notes)


def test_too_few_runs_is_a_clear_error() -> None:
    with pytest.raises(SplitError, match=r"need at least 3 runs .* got 2"):
        split_runs(_meta([1, 2]))


def test_too_few_correct_runs_is_a_clear_error() -> None:
    meta = _meta(list(range(5)), correct=[True, True, False, False, False])
    with pytest.raises(SplitError, match="only 2 of 5 runs have any"):
        split_runs(meta)


def test_bad_fractions_and_missing_columns() -> None:
    with pytest.raises(SplitError, match="three positive numbers"):
        split_runs(_meta([1, 2, 3]), (0.5, 0.5))
    with pytest.raises(SplitError, match="run_epoch"):
        split_runs(pl.DataFrame({"run": ["a"]}))


def test_round_trip_through_dict() -> None:
    split = split_runs(_meta(list(range(7))), seed=3)
    again = RunSplit.from_dict(split.as_dict())
    assert again.fingerprint == split.fingerprint
    assert again.runs("test") == split.runs("test")


@given(
    st.lists(st.integers(0, 10_000), min_size=3, max_size=40, unique=True),
    st.tuples(st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0.05, 1)),
    st.sampled_from(["chronological", "random"]),
)
@settings(max_examples=60, deadline=None)
def test_no_run_in_two_splits_and_chronological(
    epochs: list[int], fractions: tuple[float, float, float], order: str
) -> None:
    meta = _meta(epochs, errors_per_run=1)
    split = split_runs(meta, fractions, seed=0, order=order)  # type: ignore[arg-type]
    parts = [set(split.runs(n)) for n in ("train", "validation", "test")]
    assert all(parts)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(meta["run"].unique())
    if order == "chronological":
        epoch_of = dict(zip(meta["run"], meta["run_epoch"], strict=False))
        tr = max(epoch_of[r] for r in split.train_runs)
        va = [epoch_of[r] for r in split.validation_runs]
        te = min(epoch_of[r] for r in split.test_runs)
        assert tr < min(va) and max(va) < te
