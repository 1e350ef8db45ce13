"""Benchmark: featurization and IsolationForest training, ours vs LogLead's own pipeline.

Prints, for 10 / 20 / 40 / 80 generated v2 runs (the scaling curve):

* featurization throughput of ours (events/s and sequences/s of ``featurize_events`` over
  ``settings.train_chunk_runs`` runs at a time, as ``lo2 train`` does; the feature spec fitted on
  the training runs is timed separately),
* IsolationForest training time (``batch.train.fit_model`` for ``if``: fit, validation
  threshold, test metrics),
* peak RSS of the whole measurement (each size runs in a fresh child process so its ``ru_maxrss``
  is its own),

and, as the same-run baseline, LogLead's own enhancers (mask, words, trigrams, Drain, length; then
sequence length, duration, word/trigram bags, Drain ids) plus its ``AnomalyDetector``
IsolationForest on the same events for the sizes up to ``--loglead-max-runs``; then the ratios.
LogLead (PyPI ``loglead``) pins ``polars<2``, so it runs in a separate venv under
``settings.cache_dir`` that this script creates on first use.

Fairness: both sides read the same ``events.parquet`` (written once by our loader); LogLead gets
``m_message = "<LEVEL> <logger> <method> - <message>"`` (the raw line without time, thread and
correlation id: fewer characters than the raw line, so it favours LogLead), sequences = one
service log of one test case (the paper's unit), IF trained on ``correct`` sequences.

Usage:  .venv/bin/python bench/train.py [--runs 10,20,40,80] [--errors-per-run 3] [--rate 0.5]
                                        [--loglead-max-runs 20] [--skip-loglead] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loglead_env import loglead_python, run_child  # noqa: E402
from shared.settings import Settings  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- dataset --------------------------------------------------------------------------------------


def make_dataset(base: Path, max_runs: int, errors_per_run: int, rate: float, seed: int) -> Path:
    """``max_runs`` v2 runs written by ``lo2 generate`` (kept under ``base/runs`` between calls)."""
    runs = base / "runs"
    have = sorted(p for p in runs.glob("LO2_run_*") if p.is_dir()) if runs.is_dir() else []
    if len(have) < max_runs:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "lo2.cli", "generate", "--out", str(runs), "--runs", str(max_runs),
               "--layout", "v2", "--errors-per-run", str(errors_per_run), "--rate", str(rate),
               "--seed", str(seed), "--no-aux-files", "--force"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"lo2 generate failed ({done.returncode}):\n{done.stderr[-3000:]}")
        print(f"generated {max_runs} v2 runs in {time.perf_counter() - t0:.1f}s under {runs}")
    return runs


def events_for(base: Path, runs_root: Path, n_runs: int) -> Path:
    """events.parquet of the first ``n_runs`` runs (our loader, no start-up trimming of generated data)."""
    out = base / f"events_{n_runs}"
    path = out / "events.parquet"
    if path.is_file():
        return path
    subset = base / f"root_{n_runs}"
    shutil.rmtree(subset, ignore_errors=True)
    subset.mkdir(parents=True)
    for run in sorted(p for p in runs_root.glob("LO2_run_*") if p.is_dir())[:n_runs]:
        (subset / run.name).symlink_to(run.resolve(), target_is_directory=True)
    from batch.loader import load_runs, make_selection

    load_runs(subset, make_selection(trim_init_lines=0), out, write_sequences=False)
    return path


# --- children -------------------------------------------------------------------------------------


def child_ours(events_path: Path, seed: int) -> dict[str, float]:
    """Split, fit spec, featurize, train the IF; events are scanned lazily (streamed)."""
    import polars as pl
    import scipy.stats  # noqa: F401
    import sklearn.ensemble  # noqa: F401  (import cost is not training time; LogLead's child has it loaded)

    from batch.registry import get_spec
    from batch.train import (
        Featurized,
        TrainConfig,
        featurize_in_chunks,
        fit_model,
        make_inputs,
        split_events,
    )
    from shared.features import canary_features, fit_feature_spec

    config = TrainConfig(models=("if",), seed=seed)
    lf = pl.scan_parquet(events_path)
    n_events = int(lf.select(pl.len()).collect().item())
    t0 = time.perf_counter()
    split = split_events(lf, config)
    spec = fit_feature_spec(lf.filter(pl.col("run").is_in(list(split.train_runs))))
    t1 = time.perf_counter()
    matrix = featurize_in_chunks(lf, spec, [*split.train_runs, *split.validation_runs, *split.test_runs],
                                 Settings().train_chunk_runs)
    t2 = time.perf_counter()
    data = Featurized(split, spec, split.label(matrix.meta),
                      make_inputs(matrix.X, matrix.X_tokens, canary_features(matrix.meta)[0], matrix.feature_names),
                      list(matrix.feature_names))
    bundle = fit_model(get_spec("if"), data, config)
    t3 = time.perf_counter()
    return {"events": n_events, "sequences": matrix.meta.height, "fit_spec_s": t1 - t0, "featurize_s": t2 - t1,
            "train_s": t3 - t2, "peak_rss_mb": _peak_rss_mb(),
            "roc_auc_service": bundle.metrics["service"]["roc_auc"] or float("nan")}


_LOGLEAD_CHILD = r"""
import json, logging, resource, sys, time, warnings
logging.disable(logging.WARNING)
warnings.filterwarnings("ignore")
import polars as pl
from loglead.enhancers import EventLogEnhancer, SequenceEnhancer
from loglead import AnomalyDetector

path = sys.argv[1]
t0 = time.perf_counter()
df = pl.read_parquet(path, columns=["seq_id", "timestamp", "level", "logger", "method", "message", "test_case"])
df = df.select(
    "seq_id",
    pl.concat_str([pl.col("level"), pl.col("logger"), pl.col("method"), pl.lit("-"), pl.col("message")],
                  separator=" ").alias("m_message"),
    pl.col("timestamp").alias("m_timestamp"),
    (pl.col("test_case") != "correct").alias("anomaly"),
    (pl.col("test_case") == "correct").alias("normal"),
)
t_read = time.perf_counter()
enh = EventLogEnhancer(df)
df = enh.normalize()
df = enh.words()
df = enh.trigrams()
df = enh.parse_drain()
df = enh.length()
df_seq = df.group_by("seq_id").agg(pl.col("anomaly").first(), pl.col("normal").first())
seq = SequenceEnhancer(df=df, df_seq=df_seq)
df_seq = seq.seq_len()
df_seq = seq.duration()
df_seq = seq.tokens("e_words")
df_seq = seq.tokens("e_trigrams")
if "e_event_drain_id" in df.columns:
    df_seq = seq.events("e_event_drain_id")
t_enh = time.perf_counter()
sad = AnomalyDetector(item_list_col="e_words", numeric_cols=["seq_len", "duration_sec"], print_scores=False)
sad.train_df = df_seq.filter(pl.col("normal"))
sad.test_df = df_seq
sad.prepare_train_test_data()
sad.train_IsolationForest(n_estimators=200, contamination="auto", filter_anos=True)
sad.predict()
t_train = time.perf_counter()
print(json.dumps({"events": df.height, "sequences": df_seq.height, "read_s": t_read - t0,
                  "enhance_s": t_enh - t_read, "train_s": t_train - t_enh,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""






# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="10,20,40,80", help="comma-separated run counts (the scaling curve)")
    ap.add_argument("--errors-per-run", type=int, default=3, help="error test cases per generated run")
    ap.add_argument("--rate", type=float, default=0.5, help="`lo2 generate --rate` (traffic per second)")
    ap.add_argument("--seed", type=int, default=7, help="dataset and model seed")
    ap.add_argument("--loglead-max-runs", type=int, default=20, help="run LogLead on sizes up to this many runs")
    ap.add_argument("--skip-loglead", action="store_true", help="measure only ours")
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (kept; default: a temp dir)")
    ap.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "ours":
        print(json.dumps(child_ours(args.events, args.seed)))
        return 0
    sizes = sorted({int(x) for x in args.runs.split(",") if x.strip()})
    settings = Settings()
    tmp = None
    if args.data is None:
        tmp = tempfile.mkdtemp(prefix="lo2-bench-train-")
        args.data = Path(tmp)
    try:
        runs_root = make_dataset(args.data, max(sizes), args.errors_per_run, args.rate, args.seed)
        me = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--seed", str(args.seed)]
        ours: dict[int, dict[str, float]] = {}
        theirs: dict[int, dict[str, float]] = {}
        py = None if args.skip_loglead else loglead_python(settings, "loglead.enhancers")
        script = args.data / "loglead_child.py"
        script.write_text(_LOGLEAD_CHILD, encoding="utf-8")
        for n in sizes:
            path = events_for(args.data, runs_root, n)
            ours[n] = run_child([*me, "--events", str(path)])
            if py is not None and n <= args.loglead_max_runs:
                theirs[n] = run_child([str(py), str(script), str(path)])
            print(f"{n} runs done", flush=True)
        print(f"\n{os.cpu_count()} cores; runs of {args.errors_per_run + 1} test cases x 7 services, rate {args.rate}")
        head = f"{'pipeline':<26}{'runs':>5}{'events':>11}{'seqs':>7}{'feat s':>8}{'events/s':>12}{'seqs/s':>9}" \
               f"{'train s':>9}{'peak MB':>9}"
        print(head)
        for n in sizes:
            o = ours[n]
            print(f"{'ours (spec+featurize)':<26}{n:>5}{int(o['events']):>11,}{int(o['sequences']):>7}"
                  f"{o['featurize_s']:>8.2f}{o['events'] / o['featurize_s']:>12,.0f}{o['sequences'] / o['featurize_s']:>9,.1f}"
                  f"{o['train_s']:>9.2f}{o['peak_rss_mb']:>9,.0f}   (+ spec fit {o['fit_spec_s']:.2f}s, "
                  f"IF test AUC service {o['roc_auc_service']:.3f})")
            if n in theirs:
                t = theirs[n]
                print(f"{'LogLead enhancers + IF':<26}{n:>5}{int(t['events']):>11,}{int(t['sequences']):>7}"
                      f"{t['enhance_s']:>8.2f}{t['events'] / t['enhance_s']:>12,.0f}{t['sequences'] / t['enhance_s']:>9,.1f}"
                      f"{t['train_s']:>9.2f}{t['peak_rss_mb']:>9,.0f}")
        print()
        for n in sizes:
            if n in theirs:
                o, t = ours[n], theirs[n]
                ours_rate = o["events"] / (o["featurize_s"] + o["fit_spec_s"])
                print(f"{n} runs: featurization lines/s ours (spec fit + featurize) / LogLead enhancers = "
                      f"{ours_rate / (t['events'] / t['enhance_s']):.1f}x (goal >= 5x); featurize alone "
                      f"{(o['events'] / o['featurize_s']) / (t['events'] / t['enhance_s']):.1f}x; "
                      f"IF train time LogLead / ours = {t['train_s'] / o['train_s']:.1f}x; "
                      f"peak RSS ours / LogLead = {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
        for a, b in zip(sizes, sizes[1:], strict=False):
            print(f"peak RSS ours {b} runs / {a} runs: {ours[b]['peak_rss_mb'] / ours[a]['peak_rss_mb']:.2f}x "
                  f"(events x{ours[b]['events'] / ours[a]['events']:.1f}; flat = ~1.0)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
