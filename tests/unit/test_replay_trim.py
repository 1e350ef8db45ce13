"""`lo2 replay` of run folders keeps exactly the events `lo2 load` keeps, for every trim mode."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from batch.loader import load_runs, make_selection
from worker.replay import ReplayStats, folder_chunks


def _replayed(root: Path, mode: str, n: int) -> tuple[Counter[tuple[str, str, str]], ReplayStats]:
    stats = ReplayStats()
    counts: Counter[tuple[str, str, str]] = Counter()
    for chunk in folder_chunks(root, n, stats, mode):  # type: ignore[arg-type]
        if chunk.lines:  # the empty chunk is the end marker
            counts[(chunk.key.run, chunk.key.test_case, chunk.key.service)] += 1
    return counts, stats


@pytest.mark.parametrize(("mode", "n"), [("startup", 100), ("lines", 100), ("none", 0)])
def test_replay_trims_like_the_loader(generated_v2: Path, tmp_path: Path, mode: str, n: int) -> None:
    selection = make_selection(trim_mode=mode, trim_init_lines=n) if mode == "lines" else make_selection(trim_mode=mode)
    load_runs(generated_v2, selection, tmp_path, write_sequences=False)
    loaded = (
        pl.read_parquet(tmp_path / "events.parquet")
        .group_by("run", "test_case", "service")
        .len()
    )
    expected = {(r["run"], r["test_case"], r["service"]): r["len"] for r in loaded.iter_rows(named=True)}
    replayed, stats = _replayed(generated_v2, mode, n)
    assert dict(replayed) == expected
    if mode == "startup":
        # only each run's first test has a start-up block, and it is dropped
        assert stats.trimmed_events > 0
        assert sum(expected.values()) > 0
