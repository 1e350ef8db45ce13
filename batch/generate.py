"""The LO2 generator: synthetic Light-OAuth2 run folders in the real v1/v2 layouts.

Why a generator: the real LO2 logs are tens of gigabytes behind a Zenodo download, and the team has
only a 22,660-line real fragment.  Loader, features, training, evaluation and the streaming worker
all need whole runs (54 test cases × 7 service logs) with the real structure and the real traps:
time-of-day stamps that roll over midnight, stack traces without stamps, Hazelcast lines without a
correlation id in every log, start-up lines that leak the label in v1, ``correct`` logs that
contain errors, secrets in request bodies.  Content is learned from the real token sample (see
``tests/unit/test_realism.py`` for the measured match); error cases use the light-4j codes of
:mod:`shared.catalog`.

Deterministic: the same :class:`GenerateConfig` gives byte-identical files.  Each run draws from its
own ``random.Random`` seeded from (seed, run index), so runs are independent and can be generated in
parallel (``jobs``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.generator.schedule import RunPlan, plan_runs
from batch.generator.simulate import simulate_run
from batch.generator.writer import (
    GROUND_TRUTH,
    ground_truth,
    run_summary,
    write_ground_truth,
    write_test,
)
from shared.catalog import ERROR_CASE_NAMES, SERVICES
from shared.errors import ConfigError

log = logging.getLogger(__name__)

LAYOUTS = ("v1", "v2")
#: Default traffic multiplier per layout: v1 tests last 10 s, so v1 needs denser traffic for every
#: service log of an error test to have lines (at 5.0 a 20-run v1 set is about as big as a 20-run v2
#: set at 1.0).
DEFAULT_RATE = {"v1": 5.0, "v2": 1.0}


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate.  Invalid values raise :class:`ConfigError` naming the field and value."""

    out: Path
    runs: int = 20
    layout: str = "v2"
    #: error cases per run besides ``correct`` (``None`` = all of ``cases``); chosen per run by seed.
    errors_per_run: int | None = None
    #: the pool of error cases to draw from (default: all 53).
    cases: tuple[str, ...] = ERROR_CASE_NAMES
    services: tuple[str, ...] = SERVICES
    seed: int = 42
    #: traffic multiplier (1.0 ≈ 6 token lines/s; ``None`` = :data:`DEFAULT_RATE` of the layout).
    rate: float | None = None
    #: at least this many failing requests per error test (see batch.generator.simulate).
    min_errors: int = 3
    #: epoch (s) of the first run's start; ``None`` = seed-chosen inside the real collection period.
    start_epoch: int | None = None
    #: index of the run that crosses UTC midnight (``None`` = middle run, negative = none).
    midnight_run: int | None = None
    #: also write the empty non-service container logs of the real folders.
    aux_files: bool = True
    jobs: int = 1
    #: replace an existing dataset at ``out`` (only the runs its ground_truth.json lists).
    force: bool = False

    @property
    def effective_rate(self) -> float:
        return DEFAULT_RATE[self.layout] if self.rate is None else self.rate

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout {self.layout!r} is not known; expected one of {', '.join(LAYOUTS)}")
        if self.runs < 1:
            raise ConfigError(f"runs must be at least 1, got {self.runs}")
        if self.errors_per_run is not None and not 0 <= self.errors_per_run <= len(self.cases):
            raise ConfigError(
                f"errors_per_run must be between 0 and {len(self.cases)} (the size of the case pool), "
                f"got {self.errors_per_run}"
            )
        unknown = [c for c in self.cases if c not in ERROR_CASE_NAMES]
        if unknown or len(set(self.cases)) != len(self.cases):
            raise ConfigError(
                f"cases must be distinct error-case names from shared.catalog; unknown or repeated: "
                f"{unknown or sorted(self.cases)}"
            )
        bad = [s for s in self.services if s not in SERVICES]
        if bad or not self.services:
            raise ConfigError(f"services {bad or '(none)'} not known; expected some of {', '.join(SERVICES)}")
        if self.rate is not None and not 0 < self.rate <= 1000:
            raise ConfigError(f"rate must be in (0, 1000], got {self.rate}")
        if self.min_errors < 0:
            raise ConfigError(f"min_errors must be 0 or more, got {self.min_errors}")
        if self.jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {self.jobs}")


@dataclass(frozen=True)
class GenerateResult:
    out: Path
    ground_truth: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _generate_run(plan: RunPlan, config: GenerateConfig) -> dict[str, Any]:
    """Simulate and write one run (runs in a worker process when ``jobs > 1``)."""
    run_dir = config.out / plan.name
    counts = []
    for out in simulate_run(plan, seed=config.seed, rate=config.effective_rate, services=config.services,
                            min_errors=config.min_errors):
        counts.append(write_test(run_dir, out, aux_files=config.aux_files))
    return run_summary(plan, counts)


def _prepare_out(config: GenerateConfig) -> None:
    out = config.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {str(out)!r} is a file; expected a folder for the run folders")
    if out.is_dir() and any(out.iterdir()):
        gt = out / GROUND_TRUTH
        if not config.force:
            raise ConfigError(
                f"output folder {str(out)!r} is not empty; pass --force to replace a generated dataset there"
            )
        if not gt.is_file():
            raise ConfigError(
                f"output folder {str(out)!r} is not empty and holds no {GROUND_TRUTH}; refusing to delete "
                "anything that this generator did not write"
            )
        old = json.loads(gt.read_text(encoding="utf-8"))
        for run in old.get("runs", []):
            name = str(run.get("run", ""))
            if name and "/" not in name and (out / name).is_dir():
                shutil.rmtree(out / name)
        gt.unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate(config: GenerateConfig, *, on_run: Callable[[dict[str, Any]], None] | None = None) -> GenerateResult:
    """Write the dataset described by ``config``; ``on_run`` is called after each finished run."""
    t0 = time.perf_counter()
    _prepare_out(config)
    plans = plan_runs(
        layout=config.layout,
        runs=config.runs,
        seed=config.seed,
        errors_per_run=config.errors_per_run,
        error_pool=config.cases,
        start_epoch=config.start_epoch,
        midnight_run=config.midnight_run,
    )
    summaries: list[dict[str, Any]] = []
    if config.jobs == 1:
        for plan in plans:
            summaries.append(_generate_run(plan, config))
            if on_run is not None:
                on_run(summaries[-1])
    else:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            for summary in pool.map(_generate_run, plans, [config] * len(plans)):
                summaries.append(summary)
                if on_run is not None:
                    on_run(summary)
    doc = ground_truth(layout=config.layout, seed=config.seed, rate=config.effective_rate, services=config.services,
                       runs=summaries)
    gt = write_ground_truth(config.out, doc)
    files = sum(len(t["lines"]) for s in summaries for t in s["tests"])
    lines = sum(n for s in summaries for t in s["tests"] for n in t["lines"].values())
    size = sum(p.stat().st_size for s in summaries for p in (config.out / s["run"]).rglob("*.log"))
    seconds = time.perf_counter() - t0
    log.info("generated %d runs, %d service logs, %d lines, %.1f MB in %.1f s at %s",
             len(summaries), files, lines, size / 1e6, seconds, config.out)
    return GenerateResult(config.out, gt, summaries, files, lines, size, seconds)
