"""The whole pipeline on sample data, with a local Kafka broker started for you.

Steps (each one is an ordinary `lo2` subcommand, run as its own process with the demo's folders):
generate LO2v2-layout sample runs → load them into Parquet → train an IsolationForest bundle on
whole training runs and promote it → start the local Apache Kafka broker (or use
KAFKA_BOOTSTRAP_SERVERS) → start the worker → replay the held-out test runs into the input topic →
print anomaly records as they arrive → report live precision/recall against the ground truth, the
live-vs-batch score agreement, and where /metrics is → shut everything down.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from shared.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="demo folder (runs, Parquet, models, broker state); default: <settings data_dir>/demo")
    parser.add_argument("--runs", type=int, default=12, help="generated runs (default 12; whole runs are held out)")
    parser.add_argument("--errors-per-run", type=int, default=12, help="error test cases per run besides `correct` (default 12)")
    parser.add_argument("--seed", type=int, default=None, help="seed of generation, split and model (default: settings seed)")
    parser.add_argument("--bootstrap", default=None,
                        help="use this Kafka broker instead of starting the local one (default: KAFKA_BOOTSTRAP_SERVERS, else local)")
    parser.add_argument("--web-port", type=int, default=None, help="worker /metrics port (default: settings worker_web_port)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every replayed sequence to be scored")
    parser.add_argument("--max-printed", type=int, default=8, help="anomaly records printed in full (the rest are counted)")


def _step(console: Any, title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.perf_counter()


def _lo2(args: list[str], env: dict[str, str], console: Any) -> None:
    """Run one `lo2` subcommand as a child process; stop the demo if it fails."""
    cmd = [sys.executable, "-m", "lo2", *args]
    console.print(f"$ lo2 {' '.join(args)}", style="dim")
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"`lo2 {args[0]}` failed with exit code {done.returncode}")


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - local http URL we built
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise SystemExit(f"the worker did not serve {url} within {timeout_s:.0f} s")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import polars as pl
    from rich.console import Console

    console = Console()
    seed = settings.seed if args.seed is None else args.seed
    out = (args.out or settings.data_dir / "demo").resolve()
    runs_dir, parquet_dir, model_dir = out / "runs", out / "parquet", out / "models"
    tag = uuid.uuid4().hex[:8]
    web_port = args.web_port or settings.worker_web_port
    env = dict(os.environ)
    env.update({
        "LO2_DATA_DIR": str(out), "LO2_RUNS_DIR": str(runs_dir), "LO2_PARQUET_DIR": str(parquet_dir),
        "LO2_MODEL_DIR": str(model_dir), "LO2_ARTIFACTS_DIR": str(out / "artifacts"), "LO2_SEED": str(seed),
        # Fresh topics and group per demo so an existing broker's old records do not mix in.
        "LO2_INPUT_TOPIC": f"lo2.demo-{tag}.logs", "LO2_ANOMALIES_TOPIC": f"lo2.demo-{tag}.anomalies",
        "LO2_DLQ_TOPIC": f"lo2.demo-{tag}.dlq", "LO2_SCORES_TOPIC": f"lo2.demo-{tag}.scores",
        "LO2_APP_ID": f"lo2-demo-{tag}", "LO2_WORKER_EMIT_SCORES": "true",
        "LO2_WORKER_DATADIR": str(out / "worker"),
        # One BLAS thread: the worker scores small micro-batches, where threads only add latency.
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
    })
    t_start = time.perf_counter()

    t0 = _step(console, "1/6 generate sample LO2 runs (v2 layout)")
    if runs_dir.exists():
        import shutil

        shutil.rmtree(out)
    _lo2(["generate", "--out", str(runs_dir), "--layout", "v2", "--runs", str(args.runs),
          "--errors-per-run", str(args.errors_per_run), "--seed", str(seed)], env, console)
    console.print(f"generated in {time.perf_counter() - t0:.1f} s")

    t0 = _step(console, "2/6 load runs into Parquet")
    _lo2(["load", "--root", str(runs_dir), "--output-dir", str(parquet_dir), "--head", "0"], env, console)
    console.print(f"loaded in {time.perf_counter() - t0:.1f} s")

    t0 = _step(console, "3/6 train the IsolationForest on whole training runs, save and promote the bundle")
    _lo2(["train", "--input", str(parquet_dir / "events.parquet"), "--phase", "if",
          "--save-model", str(model_dir), "--promote", "--predictions-dir", str(out / "artifacts" / "train")],
         env, console)
    current = model_dir / "current"
    manifest = json.loads((current / "manifest.json").read_text(encoding="utf-8"))
    test_runs: list[str] = list(manifest["training"]["split"]["test_runs"])
    console.print(f"trained in {time.perf_counter() - t0:.1f} s; bundle {current.resolve().name}; "
                  f"held-out test runs: {', '.join(test_runs)}")

    events = pl.scan_parquet(parquet_dir / "events.parquet").filter(pl.col("run").is_in(test_runs))
    replay_file = parquet_dir / "replay_events.parquet"
    events.sink_parquet(replay_file)
    expected = (
        pl.scan_parquet(replay_file).select("run", "test_case", "service").unique().collect()
    )
    n_expected = expected.height

    with ExitStack() as stack:
        t0 = _step(console, "4/6 Kafka broker and worker")
        bootstrap = args.bootstrap or settings.kafka_bootstrap_servers
        if bootstrap:
            console.print(f"using the broker at {bootstrap}")
        else:
            from worker.broker import local_kafka

            status = stack.enter_context(local_kafka(settings, state_dir=out / "kafka"))
            bootstrap = status.bootstrap
            assert bootstrap is not None
            console.print(f"local Apache Kafka {settings.kafka_version} (KRaft) at {bootstrap}")
        env["LO2_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        worker_log = (out / "worker.log").open("wb")
        stack.callback(worker_log.close)
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "lo2", "worker", "--model", str(model_dir), "--web-port", str(web_port),
             "--log-level", "warn"],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def _stop_worker() -> None:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()

        stack.callback(_stop_worker)
        metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        _wait_http(metrics_url, 90.0, worker)
        console.print(f"worker up in {time.perf_counter() - t0:.1f} s; metrics at {metrics_url} (log: {out / 'worker.log'})")

        t0 = _step(console, f"5/6 replay {len(test_runs)} held-out runs ({n_expected} sequences) and watch the anomalies")
        _lo2(["replay", str(replay_file), "--speed", "0", "--no-progress"], env, console)
        live = _collect(env, bootstrap, n_expected, args.timeout, args.max_printed, console)
        console.print(f"live part took {time.perf_counter() - t0:.1f} s")

        t0 = _step(console, "6/6 results")
        scores = pl.DataFrame(live["scores"]) if live["scores"] else pl.DataFrame(
            schema={"run": pl.Utf8, "test_case": pl.Utf8, "service": pl.Utf8, "score": pl.Float64, "is_anomaly": pl.Boolean})
        _report(console, scores, expected, live, replay_file, model_dir, env, out)
        console.print(f"metrics: {metrics_url} (sample below)")
        for line in _scrape(metrics_url):
            console.print(f"  {line}", style="dim")
    console.print(f"demo finished in {time.perf_counter() - t_start:.0f} s; everything stopped. Artefacts in {out}")
    return 0 if live["scores"] else 1


def _collect(env: dict[str, str], bootstrap: str, n_expected: int, timeout_s: float, max_printed: int,
             console: Any) -> dict[str, Any]:
    """Read score and anomaly records until every expected sequence was scored (or time runs out)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from shared.records import AnomalyRecord, ScoreRecord
    from worker.tail import render

    async def main() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(
            env["LO2_SCORES_TOPIC"], env["LO2_ANOMALIES_TOPIC"], bootstrap_servers=bootstrap,
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        )
        await consumer.start()
        seen: dict[str, dict[str, Any]] = {}
        anomalies: dict[str, AnomalyRecord] = {}
        deadline = time.monotonic() + timeout_s
        try:
            def flagged() -> set[str]:
                return {sid for sid, r in seen.items() if r["is_anomaly"]}

            # every sequence scored, and every flagged one's anomaly record read (it is sent right
            # after its score record, so it can still be in flight when the last score arrives)
            while (len(seen) < n_expected or not flagged() <= anomalies.keys()) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, messages in batch.items():
                    for msg in messages:
                        if tp.topic == env["LO2_ANOMALIES_TOPIC"]:
                            rec = AnomalyRecord.model_validate_json(msg.value or b"{}")
                            if rec.id not in anomalies:
                                anomalies[rec.id] = rec
                                if len(anomalies) <= max_printed:
                                    console.print(render(rec), markup=False)
                                elif len(anomalies) == max_printed + 1:
                                    console.print("... more anomalies arriving (counted below)")
                            continue
                        score = ScoreRecord.model_validate_json(msg.value or b"{}")
                        key = score.sequence
                        seen[score.id] = {"run": key.run, "test_case": key.test_case, "service": score.service,
                                          "score": score.score, "is_anomaly": score.is_anomaly}
        finally:
            await consumer.stop()
        return {"scores": list(seen.values()), "anomalies": len(anomalies), "timed_out": len(seen) < n_expected}

    return asyncio.run(main())


def _report(console: Any, scores: Any, expected: Any, live: dict[str, Any], replay_file: Path,
            model_dir: Path, env: dict[str, str], out: Path) -> None:
    import polars as pl
    from rich.table import Table

    from shared import catalog

    n_scored = scores.height
    if live["timed_out"]:
        console.print(f"[yellow]only {n_scored} of {expected.height} sequences were scored before the timeout")
    labelled = scores.with_columns(
        pl.struct("test_case", "service").map_elements(
            lambda r: catalog.targets(r["test_case"], r["service"]), return_dtype=pl.Boolean
        ).alias("truth")
    )
    tp = labelled.filter(pl.col("is_anomaly") & pl.col("truth")).height
    fp = labelled.filter(pl.col("is_anomaly") & ~pl.col("truth")).height
    fn = labelled.filter(~pl.col("is_anomaly") & pl.col("truth")).height
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")

    # Batch scores of the same sequences with the same bundle (never refits): the parity check.
    batch_dir = out / "artifacts" / "batch-scores"
    _lo2(["train", "--input", str(replay_file), "--load-model", str(model_dir / "current"),
          "--predictions-dir", str(batch_dir)], env, console)
    agree = "n/a"
    batch_files = sorted(batch_dir.glob("*_predictions.parquet"))
    if batch_files and n_scored:
        batch = pl.read_parquet(batch_files[0]).select("run", "test_case", "service", pl.col("score").alias("batch_score"))
        joined = labelled.join(batch, on=["run", "test_case", "service"], how="inner")
        close = joined.filter((pl.col("score") - pl.col("batch_score")).abs() <= 1e-9).height
        agree = f"{close}/{joined.height} sequences equal to 1e-9"

    table = Table(title="live detection on held-out runs (label: the error targets this service)")
    for col in ("sequences scored", "anomaly records", "precision", "recall", "TP/FP/FN", "live = batch score"):
        table.add_column(col)
    table.add_row(f"{n_scored}/{expected.height}", str(live["anomalies"]), f"{precision:.3f}", f"{recall:.3f}",
                  f"{tp}/{fp}/{fn}", agree)
    console.print(table)


def _scrape(url: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5.0) as resp:  # noqa: S310 - local http URL we built
        text = resp.read().decode("utf-8", "replace")
    wanted = ("lo2_worker_events_total", "lo2_worker_sequences_scored_total", "lo2_worker_anomalies_total",
              "lo2_worker_invalid_records_total", "lo2_worker_psi", "lo2_worker_model_info")
    lines = text.splitlines()
    out: list[str] = []
    for family in wanted:  # a few lines of each family, in this order
        out += [ln for ln in lines if ln.startswith(family)][:3]
    return out
