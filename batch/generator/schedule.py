"""When each run and each test case happens: order, durations, run epochs, midnight crossing.

* v1 (``light-oauth2-data-<epoch>``): fixed order (``correct`` first, then the errors in catalog
  order), ``correct`` 60 s, each error 10 s, ~4 s of metric fetching between tests; the folder epoch
  is the run's *end* (reference §1.2).
* v2 (``LO2_run_<epoch>``): shuffled order, each test a random 20–180 s, a random 1–5 s pause after
  it; the folder epoch is the run's *start* (reference §1.3).

Runs follow each other with a seed-chosen gap.  One run (``midnight_run``, by default the middle
one) is shifted so that UTC midnight falls inside one of its test cases, so every generated dataset
exercises the date roll-over of time-of-day log stamps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.catalog import CORRECT, ERROR_CASE_NAMES

MS_PER_DAY = 86_400_000
V1_CORRECT_S, V1_ERROR_S, V1_FETCH_S = 60, 10, 4
V2_MIN_S, V2_MAX_S, V2_PAUSE_MIN_S, V2_PAUSE_MAX_S = 20, 180, 1, 5
#: Default first-run start per layout: inside the real collection periods (v1 June 2024, v2 Feb 2025).
DEFAULT_START_EPOCH = {"v1": 1_719_180_000, "v2": 1_739_400_000}


@dataclass(frozen=True, slots=True)
class TestSlot:
    """One test case of a run and its time window (epoch ms, end exclusive)."""

    test_case: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class RunPlan:
    index: int
    layout: str
    name: str
    epoch: int
    tests: tuple[TestSlot, ...]

    @property
    def start_ms(self) -> int:
        return self.tests[0].start_ms

    @property
    def end_ms(self) -> int:
        return self.tests[-1].end_ms

    @property
    def crosses_midnight(self) -> bool:
        return self.start_ms // MS_PER_DAY != (self.end_ms - 1) // MS_PER_DAY


def pick_errors(rng: random.Random, pool: tuple[str, ...], errors_per_run: int | None) -> list[str]:
    """``errors_per_run`` distinct error cases from ``pool`` (all of them for ``None``)."""
    if errors_per_run is None or errors_per_run >= len(pool):
        return list(pool)
    return rng.sample(list(pool), errors_per_run)


def _relative_slots(rng: random.Random, layout: str, errors: list[str]) -> list[tuple[str, int, int]]:
    """(test case, start offset ms, duration ms) from the run start."""
    if layout == "v1":
        order = [CORRECT, *[e for e in ERROR_CASE_NAMES if e in set(errors)]]
        durations = [V1_CORRECT_S if tc == CORRECT else V1_ERROR_S for tc in order]
        pauses = [V1_FETCH_S + rng.random() for _ in order]
    else:
        order = [CORRECT, *errors]
        rng.shuffle(order)
        durations = [rng.randint(V2_MIN_S, V2_MAX_S) for _ in order]
        pauses = [rng.uniform(V2_PAUSE_MIN_S, V2_PAUSE_MAX_S) for _ in order]
    out, t = [], 0
    for tc, dur, pause in zip(order, durations, pauses, strict=True):
        out.append((tc, t, dur * 1000))
        t += dur * 1000 + int(pause * 1000)
    return out


def plan_runs(
    *,
    layout: str,
    runs: int,
    seed: int,
    errors_per_run: int | None,
    error_pool: tuple[str, ...] = ERROR_CASE_NAMES,
    start_epoch: int | None = None,
    midnight_run: int | None = None,
) -> list[RunPlan]:
    """The schedule of every run; deterministic for (arguments, seed).

    ``midnight_run``: index of the run that crosses UTC midnight (``None`` = the middle run,
    negative = none).
    """
    if midnight_run is None:
        midnight_run = runs // 2
    base = DEFAULT_START_EPOCH[layout] if start_epoch is None else start_epoch
    rng0 = random.Random(f"{seed}:placement")
    cursor_ms = (base + (rng0.randrange(6 * 3600) if start_epoch is None else 0)) * 1000
    plans: list[RunPlan] = []
    for k in range(runs):
        rng = random.Random(f"{seed}:schedule:{k}")
        errors = pick_errors(rng, error_pool, errors_per_run)
        rel = _relative_slots(rng, layout, errors)
        start = cursor_ms - cursor_ms % 1000
        if k == midnight_run:
            # Put midnight in the middle of the middle test case.
            tc, off, dur = rel[len(rel) // 2]
            inside = off + dur // 2
            midnight = (start + inside) // MS_PER_DAY * MS_PER_DAY + MS_PER_DAY
            start = midnight - inside
            start -= start % 1000
        slots = tuple(TestSlot(tc, start + off, start + off + dur) for tc, off, dur in rel)
        end = slots[-1].end_ms
        epoch = start // 1000 if layout == "v2" else -(-end // 1000) + rng.randint(5, 15)
        prefix = "LO2_run_" if layout == "v2" else "light-oauth2-data-"
        plans.append(RunPlan(k, layout, f"{prefix}{epoch}", epoch, slots))
        cursor_ms = end + rng.randint(10 * 60, 3 * 3600) * 1000
    return plans
