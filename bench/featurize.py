"""Benchmark: our featurization (shared.features) vs LogLead's LO2 enhancement, same events, same run.

Prints lines/s of

* ours, batch: ``featurize_events`` (mask unique messages -> template ids -> group_by counts ->
  dense shares + hashed tokens), with the spec fitted beforehand (fit time printed apart);
* ours, incremental: the worker's path, ``SequenceBuilder`` + ``EventEncoder`` + ``vectorize``,
  event by event;
* LogLead 2.0.0 (PyPI ``loglead``): the enhancement LO2_samples.py runs before its models
  (reference loglead-lo2-demo.md §3, §4.2 step 4): ``EventLogEnhancer`` normalize, words, trigrams,
  parse_drain, length, then ``SequenceEnhancer`` seq_len, duration, tokens(e_words),
  tokens(e_trigrams), events(e_event_drain_id); on the raw line as ``m_message``, like its LO2 loader;

and the ratios ours / LogLead, all measured in this one invocation on

* the real v1 token-service sample (22,660 lines, cut into 4 sequences), and
* a generated dataset (``lo2 generate`` + ``lo2 load``), 7 services, ``correct`` + error cases.

LogLead pins ``polars<2``, so it runs in a child process from a venv under ``settings.cache_dir``
(the same one bench/loader.py creates; created here on first use).  Timings are the best of
``--repeat`` runs after one warm-up (the machine is shared: best-of is the least noisy figure).

Usage:  .venv/bin/python bench/featurize.py [--runs 3] [--errors-per-run 10] [--skip-loglead]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from bench.loglead_env import loglead_python  # noqa: E402
from shared.features import EventEncoder, featurize_events, fit_feature_spec, vectorize  # noqa: E402
from shared.parsing import LineKind, classify, file_seq_id, parse_line, resolve_timestamp_ms  # noqa: E402
from shared.sequences import Event, SequenceBuilder  # noqa: E402
from shared.settings import Settings  # noqa: E402

LOGLEAD_CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import polars as pl
from loglead.enhancers import EventLogEnhancer, SequenceEnhancer
df0 = pl.read_parquet(sys.argv[1])
best = None
for i in range(int(sys.argv[2]) + 1):
    df = df0.clone()
    t = time.perf_counter()
    enh = EventLogEnhancer(df)
    df = enh.normalize()
    df = enh.words()
    df = enh.trigrams()
    df = enh.parse_drain()
    df = enh.length()
    seq = df.group_by("seq_id").agg(pl.col("m_timestamp").min().alias("start_time"))
    senh = SequenceEnhancer(df, seq)
    senh.seq_len(); senh.duration(); senh.tokens("e_words"); senh.tokens("e_trigrams")
    out = senh.events("e_event_drain_id")
    dt = time.perf_counter() - t
    if i > 0:
        best = dt if best is None else min(best, dt)
print(json.dumps({"seconds": best, "sequences": out.height, "lines": df0.height}))
"""


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up (imports, caches of the first call are not what we measure)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------
def real_events(settings: Settings) -> pl.DataFrame:
    """The real v1 token sample as events (4 consecutive parts = 4 sequences of one run)."""
    path = settings.samples_dir / "v1_light-oauth2-data-1719592986__correct__light-oauth2-oauth2-token-1.timestamped-lines.log"
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    q = len(lines) // 4 + 1
    run, ref = "light-oauth2-data-1719592986", 1_719_592_986_000
    for no, line in enumerate(lines, 1):
        tc = f"part{(no - 1) // q}"
        if classify(line) is LineKind.CONTINUATION and rows:
            rows[-1]["n_stack_lines"] += 1
            continue
        p = parse_line(line)
        if p is None:
            continue
        rows.append({
            "run": run, "run_epoch": ref // 1000, "test_case": tc, "service": "token",
            "seq_id": file_seq_id(run, tc, "token"), "line_no": no,
            "timestamp": resolve_timestamp_ms(p.time_of_day_ms, ref), "thread": p.thread,
            "correlation_id": p.correlation_id, "level": p.level, "logger": p.logger, "method": p.method,
            "message": p.message, "stack": None, "n_stack_lines": 0, "anomaly": False, "anomaly_service": False,
        })
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("timestamp").cast(pl.Datetime("ms", "UTC")), pl.col("stack").cast(pl.String)
    )


def generated_events(work: Path, runs: int, errors_per_run: int, rate: float, seed: int) -> pl.DataFrame:
    """``lo2 generate`` + ``lo2 load`` (the real pipeline) into ``work``; returns events.parquet."""
    gen, out = work / "gen", work / "parquet"
    lo2 = [sys.executable, "-m", "lo2"]
    _run([*lo2, "generate", "--out", str(gen), "--runs", str(runs), "--errors-per-run", str(errors_per_run),
          "--rate", str(rate), "--seed", str(seed), "--force", "--no-aux-files"])
    _run([*lo2, "load", "--root", str(gen), "--output-dir", str(out), "--save-events", "--trim-init-lines", "0",
          "--head", "0"])
    return pl.read_parquet(out / "events.parquet")


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def loglead_frame(events: pl.DataFrame) -> pl.DataFrame:
    """What LogLead's LO2 loader gives: the raw line as m_message, seq_id, m_timestamp."""
    ts = pl.col("timestamp").dt.strftime("%H:%M:%S%.3f")
    line = pl.concat_str([ts, pl.lit(" ["), pl.col("thread"), pl.lit("]  "), pl.col("correlation_id").fill_null(""),
                          pl.lit(" "), pl.col("level"), pl.lit(" "), pl.col("logger"), pl.lit(" "), pl.col("method"),
                          pl.lit(" - "), pl.col("message")])
    return events.select(line.alias("m_message"), "seq_id", pl.col("timestamp").dt.replace_time_zone(None).alias("m_timestamp"))




# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------
def to_events(df: pl.DataFrame) -> list[Event]:
    ordered = df.sort("timestamp", "service", "line_no")
    return [
        Event(service=r[0], run=r[1], test_case=r[2], timestamp_ms=r[3], level=r[4], logger=r[5], method=r[6],
              message=r[7], n_stack_lines=r[8], stack=r[9], line_no=r[10])
        for r in ordered.select("service", "run", "test_case", pl.col("timestamp").dt.epoch("ms"), "level", "logger",
                                "method", "message", "n_stack_lines", "stack", "line_no").iter_rows()
    ]


def measure_ours(events: pl.DataFrame, repeat: int) -> dict[str, float]:
    train = events.filter(pl.col("test_case") == pl.col("test_case").min()) if "correct" not in set(
        events["test_case"]) else events.filter(pl.col("test_case") == "correct")
    t = time.perf_counter()
    spec = fit_feature_spec(train)
    fit_s = time.perf_counter() - t
    batch_s = best_of(lambda: featurize_events(events, spec), repeat)
    evs = to_events(events)

    def incremental() -> None:
        b = SequenceBuilder(spec.policy, EventEncoder(spec))
        for e in evs:
            for c in b.add(e):
                vectorize(c.accumulator, spec)
        for c in b.flush():
            vectorize(c.accumulator, spec)

    inc_s = best_of(incremental, max(1, repeat // 2))
    n = events.height
    return {"lines": n, "fit_s": fit_s, "fit_lines": train.height, "batch_lps": n / batch_s, "incr_lps": n / inc_s,
            "templates": spec.vocabulary.size, "features": spec.n_features,
            "sequences": featurize_events(events, spec).n_sequences}


def measure_loglead(py: Path, events: pl.DataFrame, work: Path, repeat: int) -> dict[str, float]:
    path = work / f"loglead_{events.height}.parquet"
    loglead_frame(events).write_parquet(path)
    res = subprocess.run([str(py), "-c", LOGLEAD_CHILD, str(path), str(repeat)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"LogLead child failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {"lps": out["lines"] / out["seconds"], "sequences": out["sequences"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="generated runs (default 3)")
    ap.add_argument("--errors-per-run", type=int, default=10, help="error cases per generated run (default 10)")
    ap.add_argument("--rate", type=float, default=1.0, help="traffic multiplier of `lo2 generate` (default 1.0)")
    ap.add_argument("--seed", type=int, default=7, help="dataset seed (default 7)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best counts (default 3)")
    ap.add_argument("--skip-loglead", action="store_true", help="measure only ours (no LogLead baseline)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated data in this folder")
    args = ap.parse_args()

    settings = Settings()
    work = args.keep or Path(tempfile.mkdtemp(prefix="lo2-bench-feat-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        datasets = {
            "real v1 token sample": real_events(settings),
            f"generated v2 ({args.runs} runs x {1 + args.errors_per_run} tests x 7 svc)": generated_events(
                work, args.runs, args.errors_per_run, args.rate, args.seed),
        }
        py = None if args.skip_loglead else loglead_python(settings, "loglead.enhancers")
        print(f"{'dataset':52s} {'lines':>8s} {'seqs':>5s} {'tpl':>4s} {'ours batch':>12s} {'ours incr':>11s} "
              f"{'LogLead':>9s} {'batch/LL':>9s} {'incr/LL':>8s}   (lines/s)")
        for name, ev in datasets.items():
            ours = measure_ours(ev, args.repeat)
            ll = measure_loglead(py, ev, work, args.repeat) if py is not None else None
            ll_lps = ll["lps"] if ll else float("nan")
            print(f"{name:52s} {ours['lines']:8,d} {ours['sequences']:5d} {ours['templates']:4d} "
                  f"{ours['batch_lps']:12,.0f} {ours['incr_lps']:11,.0f} {ll_lps:9,.0f} "
                  f"{ours['batch_lps'] / ll_lps:8.1f}x {ours['incr_lps'] / ll_lps:7.1f}x")
            print(f"{'':52s} fit_feature_spec: {ours['fit_s']:.3f} s on {ours['fit_lines']:,} training lines, "
                  f"{ours['features']} dense features")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
