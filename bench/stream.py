"""Benchmark: log lines/s through producer -> broker -> worker -> anomalies, and end-to-end latency.

One ``lo2 worker`` process (the real command, as a subprocess) against one broker, on LO2-shaped
data cut from the real token sample (30 service logs, a trained IsolationForest bundle):

* **batched**: batch envelopes of ``--batch-lines`` lines, pre-produced, then the worker drains
  them: lines/s from its first event to the last sequence scored (goal >= 20,000 lines/s);
* **one line per record**: the same lines as line envelopes: records/s, compared with
* **baseline 1, bare Faust agent**: a Faust app whose agent only iterates the same topic, with
  Faust's defaults (acks on, its default in-memory sensor) (goal: the worker reaches >= 75 % of
  its rate); measured before and after the worker's run, and also as CPU time per record (the
  machine is shared: CPU per record does not depend on what else runs);
* **baseline 2, plain aiokafka**: ``getmany`` loop over the same topic (the transport ceiling);
* **latency**: a paced live replay into the running worker; p50/p99 from the moment the last record
  of a sequence is produced to its score/anomaly record on the output topic (goal p99 <= 250 ms).

All in the same run on the same broker, so the ratios hold even on a busy machine.

    .venv/bin/python bench/stream.py [--lines-per-file 2000] [--bootstrap HOST:PORT] [--repeat 3]

On a shared machine single runs swing by tens of percent: ``--repeat N`` (default 3) runs the
one-line worker N times, each between two bare-agent runs, and reports the median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ is not an installed package

from shared.settings import Settings  # noqa: E402
from worker.replay import Chunk, OutRecord, ReplayStats, SeqKey, build_records, folder_chunks  # noqa: E402
from worker.topics import ensure_topics_sync  # noqa: E402

PARTITIONS = 4


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def produce(bootstrap: str, topic: str, records: list[OutRecord], stamps: dict[bytes, float] | None = None,
            rate_lines_s: float | None = None) -> float:
    """Produce records (optionally paced); with ``stamps``, note when each key's last line record left."""

    async def main() -> float:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_batch_size=1_048_576,
                             max_request_size=4_194_304)
        await p.start()
        t0 = time.monotonic()
        lines = 0
        try:
            for rec in records:
                if rate_lines_s:
                    ahead = lines / rate_lines_s - (time.monotonic() - t0)
                    if ahead > 0.002:
                        await p.flush()
                        await asyncio.sleep(ahead)
                await p.send(topic, rec.value, key=rec.key)
                lines += rec.n_lines
                if stamps is not None and not rec.is_end:
                    stamps[rec.key] = time.time()
            await p.flush()
        finally:
            await p.stop()
        return time.monotonic() - t0

    return asyncio.run(main())


def read_all(bootstrap: str, topic: str, idle_s: float = 2.0) -> list[Any]:
    async def main() -> list[Any]:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
        await c.start()
        out: list[Any] = []
        try:
            while True:
                batch = await c.getmany(timeout_ms=int(idle_s * 1000), max_records=10_000)
                if not batch:
                    return out
                for msgs in batch.values():
                    out.extend(msgs)
        finally:
            await c.stop()

    return asyncio.run(main())


def aiokafka_rate(bootstrap: str, topic: str, expect: int) -> float:
    """Baseline 2: a plain consume loop, records/s from the first to the last record."""

    async def main() -> float:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=f"bench-raw-{uuid.uuid4().hex[:6]}", max_partition_fetch_bytes=4_194_304)
        await c.start()
        n, t0 = 0, None
        try:
            while n < expect:
                batch = await c.getmany(timeout_ms=1000, max_records=10_000)
                for msgs in batch.values():
                    if t0 is None and msgs:
                        t0 = time.monotonic()
                    n += len(msgs)
        finally:
            await c.stop()
        return n / (time.monotonic() - (t0 or time.monotonic()))

    return asyncio.run(main())


def bare_agent_main(bootstrap: str, topic: str, expect: int, datadir: str) -> None:
    """Baseline 1 (run in a subprocess): a Faust agent that only iterates the topic.

    ``datadir`` lies in the parent's temporary folder: Faust's default (``<app id>-data`` in the
    working directory) would leave one folder per run in the checkout, and ``os._exit`` below
    skips any clean-up of our own.
    """
    import faust

    app = faust.App(f"bench-bare-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", store="memory://",
                    datadir=datadir,
                    web_enabled=False, topic_replication_factor=1, topic_partitions=PARTITIONS,
                    consumer_auto_offset_reset="earliest", key_serializer="raw", value_serializer="raw",
                    broker_heartbeat_interval=0.3, broker_session_timeout=6.0)
    src = app.topic(topic, key_type=bytes, value_type=bytes)
    state = {"n": 0, "t0": 0.0, "cpu0": 0.0}

    @app.agent(src)
    async def drain(stream: Any) -> None:
        async for _ in stream:
            if state["n"] == 0:
                state["t0"] = time.monotonic()
                state["cpu0"] = time.process_time()
            state["n"] += 1
            if state["n"] == expect:
                rate = expect / (time.monotonic() - state["t0"])
                cpu_us = 1e6 * (time.process_time() - state["cpu0"]) / expect
                sys.stdout.write(json.dumps({"records_per_s": rate, "cpu_us_per_record": cpu_us}) + "\n")
                sys.stdout.flush()
                os._exit(0)

    worker = faust.Worker(app, loglevel="warn", redirect_stdouts=False)
    worker.execute_from_commandline()


def metrics(port: int, *names: str) -> list[float]:
    """The sums of some metric families, from one scrape of ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as r:  # noqa: S310
        text = r.read().decode()
    lines = text.splitlines()
    return [sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(name) and ln[len(name)] in " {")
            for name in names]


def metric(port: int, name: str) -> float:
    return metrics(port, name)[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    def __init__(self, bootstrap: str, bundle: Path, work: Path, tag: str, topics: dict[str, str] | None = None) -> None:
        self.tag = tag
        self.bootstrap = bootstrap
        self.port = free_port()
        # ``topics``: another worker's topics (a repeat run: a new consumer group reads them again)
        self.topics = topics or {k: f"bench{tag}.{k}" for k in ("logs", "anomalies", "dlq", "scores")}
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, LO2_APP_ID=f"bench-{tag}",
                   LO2_INPUT_TOPIC=self.topics["logs"], LO2_ANOMALIES_TOPIC=self.topics["anomalies"],
                   LO2_DLQ_TOPIC=self.topics["dlq"], LO2_SCORES_TOPIC=self.topics["scores"],
                   LO2_TOPIC_PARTITIONS=str(PARTITIONS), LO2_WORKER_HEARTBEAT_INTERVAL_S="0.3",
                   LO2_WORKER_SESSION_TIMEOUT_S="6", LO2_WORKER_RECOVERY_DELAY_S="0")
        self.env = env
        self.cmd = [sys.executable, "-m", "lo2", "worker", "--model", str(bundle), "--web-port", str(self.port),
                    "--datadir", str(work / f"data-{tag}"), "--log-level", "warn"]
        self.log_path = work / f"worker-{tag}.log"

    def start(self) -> None:
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def wait_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {self.tag} exited with {self.proc.returncode}:\n{tail}")
            try:
                self.metric("lo2_worker_records_total")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"worker {self.tag} did not come up in {timeout:.0f}s")

    def drain_time(self, expect_sequences: int, timeout: float = 600) -> tuple[float, float, float]:
        """(first event seen, last sequence scored) in wall-clock seconds, and the CPU seconds in between.

        The start is polled every 20 ms; after that ``/metrics`` is scraped only every 0.5 s (a scrape
        costs the worker milliseconds, and the bare agent it is compared with is not scraped), and the
        end is the broker time stamp of the last score record (set by the worker's producer when
        it handed the record over), so the coarse polling does not blur it.
        """
        t_first = cpu_first = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events, scored = metrics(self.port, "lo2_worker_events_total", "lo2_worker_sequences_scored_total")
            if t_first is None and events > 0:
                t_first, cpu_first = time.time(), cpu_seconds(self.proc.pid)
            if scored >= expect_sequences:
                cpu = cpu_seconds(self.proc.pid) - (cpu_first or 0.0)
                last = max(m.timestamp for m in read_all(self.bootstrap, self.topics["scores"], idle_s=1.0)) / 1000
                return t_first or last, last, cpu
            time.sleep(0.02 if t_first is None else 0.5)
        raise RuntimeError(f"worker {self.tag} did not score {expect_sequences} sequences in {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def relabel(chunks: Iterator[Chunk], suffix: str) -> Iterator[Chunk]:
    """The same lines as new sequences (another run name), for the live latency replay."""
    for c in chunks:
        yield Chunk(c.ts_ms, SeqKey(f"{c.key.run}{suffix}", c.key.test_case, c.key.service), c.lines)


def live_records(work: Path, settings: Settings, args: argparse.Namespace) -> list[OutRecord]:
    """``--live-copies`` sets of short sequences (new run names), merged in time, 20-line records."""
    import heapq

    from tests.worker_data import TRIM, write_runs

    sample = settings.samples_dir / "v1_light-oauth2-data-1719592986__correct__light-oauth2-oauth2-token-1.timestamped-lines.log"
    streams = []
    for i in range(args.live_copies):
        root = write_runs(work / f"live-{i}", sample, lines_per_file=args.live_lines_per_file, seed=100 + i)
        streams.append(list(relabel(folder_chunks(root, TRIM, ReplayStats()), f"-live{i}")))
    return list(build_records(heapq.merge(*streams, key=lambda c: c.ts_ms), batch_lines=20))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines-per-file", type=int, default=2000, help="lines cut from the real sample per service log")
    ap.add_argument("--batch-lines", type=int, default=200, help="lines per batch envelope in the batched run")
    ap.add_argument("--live-rate", type=float, default=5000.0, help="lines/s of the paced live replay (latency)")
    ap.add_argument("--live-copies", type=int, default=8, help="sets of 30 sequences in the live replay (latency sample size)")
    ap.add_argument("--live-lines-per-file", type=int, default=200, help="lines per service log in the live replay")
    ap.add_argument("--only", choices=["single", "batched"], default=None, help="run only this worker mode (and its baselines)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="one-line-per-record runs, each between two bare-agent runs (the ratio is the median of the runs' ratios)")
    ap.add_argument("--bootstrap", default=None, help="use this broker (default: KAFKA_BOOTSTRAP_SERVERS or a local one)")
    ap.add_argument("--bare-agent", nargs=4, metavar=("BOOTSTRAP", "TOPIC", "N", "DATADIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_agent:
        bare_agent_main(args.bare_agent[0], args.bare_agent[1], int(args.bare_agent[2]), args.bare_agent[3])
        return 0

    from tests.worker_data import TRIM, build_bundle, load_events, write_runs
    from worker import broker

    settings = Settings()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lo2-bench-stream-") as tmp:
        work = Path(tmp)
        bootstrap = args.bootstrap or settings.kafka_bootstrap_servers
        if bootstrap is None:
            running = stack.enter_context(broker.local_kafka(settings, state_dir=work / "kafka"))
            bootstrap = running.bootstrap
        assert bootstrap is not None
        print(f"broker {bootstrap}; building data and bundle ...", flush=True)
        root = write_runs(work / "runs", settings.samples_dir / "v1_light-oauth2-data-1719592986__correct__light-oauth2-oauth2-token-1.timestamped-lines.log",
                          lines_per_file=args.lines_per_file)
        events = load_events(root, work / "parquet")
        bundle = build_bundle(events, work / "models")
        n_seq = events.select("run", "test_case", "service").unique().height

        def records(batch_lines: int, suffix: str = "") -> tuple[list[OutRecord], ReplayStats]:
            st = ReplayStats()
            chunks = folder_chunks(root, TRIM, st)
            return list(build_records(relabel(chunks, suffix) if suffix else chunks, batch_lines=batch_lines, stats=st)), st

        n_live = args.live_copies * n_seq
        batched, st_b = records(args.batch_lines)
        single, st_s = records(1)
        lines = st_b.lines
        results: dict[str, Any] = {"lines": lines, "sequences": n_seq, "records_batched": len(batched),
                                   "records_single": len(single)}

        # the topics, pre-filled (the worker then drains them as fast as it can)
        wb = Worker(bootstrap, bundle, work, "b" + uuid.uuid4().hex[:5])
        ws = Worker(bootstrap, bundle, work, "s" + uuid.uuid4().hex[:5])
        for w, recs in ((wb, batched), (ws, single)):
            ensure_topics_sync(bootstrap, list(w.topics.values()), partitions=PARTITIONS)
            produce(bootstrap, w.topics["logs"], recs)
        print(f"{lines} lines in {n_seq} sequences produced ({len(batched)} batch records, {len(single)} line records)", flush=True)

        # baseline 2: plain aiokafka
        results["aiokafka_records_per_s"] = aiokafka_rate(bootstrap, ws.topics["logs"], len(single))
        # baseline 1: bare Faust agent (own process, like the worker); measured right before and
        # right after the worker's one-line-per-record run, because the machine is shared
        def bare_rate() -> float:
            datadir = str(Path(tmp) / f"bare-{uuid.uuid4().hex[:6]}")
            done = subprocess.run([sys.executable, __file__, "--bare-agent", bootstrap, ws.topics["logs"], str(len(single)), datadir],
                                  cwd=REPO, capture_output=True, timeout=600)
            last = [ln for ln in done.stdout.decode().splitlines() if ln.startswith("{")]
            if not last:
                raise RuntimeError(f"bare Faust agent failed: {done.stderr.decode()[-2000:]}")
            got = json.loads(last[-1])
            bare_cpu.append(float(got["cpu_us_per_record"]))
            return float(got["records_per_s"])

        # the worker, batched then one line per record
        bare_cpu: list[float] = []
        bare = [bare_rate()]
        single_runs: list[dict[str, float]] = []
        runs = [("single", ws)] + [("single", Worker(bootstrap, bundle, work, "s" + uuid.uuid4().hex[:5], ws.topics))
                                   for _ in range(args.repeat - 1)] + [("batched", wb)]
        for name, w in runs:
            if args.only and name != args.only:
                continue
            w.start()
            try:
                w.wait_up()
                t0, t1, cpu = w.drain_time(n_seq)
                n_records = len(batched) if name == "batched" else len(single)
                results[f"worker_{name}_seconds"] = t1 - t0
                results[f"worker_{name}_cpu_us_per_record"] = 1e6 * cpu / n_records
                results[f"worker_{name}_lines_per_s"] = lines / (t1 - t0)
                results[f"worker_{name}_records_per_s"] = n_records / (t1 - t0)
                if name == "single":
                    single_runs.append({"records_per_s": n_records / (t1 - t0), "cpu_us_per_record": 1e6 * cpu / n_records})
                if name == "batched":  # latency: a paced live replay of many short sequences
                    live = live_records(work, settings, args)
                    stamps: dict[bytes, float] = {}
                    produce(bootstrap, w.topics["logs"], live, stamps, rate_lines_s=args.live_rate)
                    w.drain_time(n_seq + n_live, timeout=300)
                    for kind in ("scores", "anomalies"):
                        lat = []
                        for m in read_all(bootstrap, w.topics[kind]):
                            rec = json.loads(m.value)
                            if "-live" not in rec["sequence"]["run"]:
                                continue
                            key = f"{rec['sequence']['run']}|{rec['sequence']['test_case']}|{rec['service']}".encode()
                            lat.append(m.timestamp / 1000 - stamps[key])
                        results[f"latency_{kind}_n"] = len(lat)
                        results[f"latency_{kind}_p50_ms"] = 1000 * pct(lat, 50)
                        results[f"latency_{kind}_p99_ms"] = 1000 * pct(lat, 99)
            finally:
                w.stop()
            if name == "single":
                bare.append(bare_rate())
        results["bare_faust_records_per_s_before_after"] = bare
        results["bare_faust_records_per_s"] = statistics.mean(bare)
        results["bare_faust_cpu_us_per_record_before_after"] = bare_cpu
        results["bare_faust_cpu_us_per_record"] = statistics.mean(bare_cpu)
        if single_runs:
            # run i sits between bare-agent runs i and i + 1: its ratio uses their mean
            rate_ratios = [run["records_per_s"] / statistics.mean(bare[i : i + 2]) for i, run in enumerate(single_runs)]
            cpu_ratios = [statistics.mean(bare_cpu[i : i + 2]) / run["cpu_us_per_record"] for i, run in enumerate(single_runs)]
            results["single_runs"] = single_runs
            results["single_vs_bare_faust_per_run"] = rate_ratios
            results["single_cpu_vs_bare_faust_per_run"] = cpu_ratios
            results["single_vs_bare_faust"] = statistics.median(rate_ratios)
            results["single_cpu_vs_bare_faust"] = statistics.median(cpu_ratios)
            results["worker_single_records_per_s"] = statistics.median(run["records_per_s"] for run in single_runs)
            results["worker_single_cpu_us_per_record"] = statistics.median(run["cpu_us_per_record"] for run in single_runs)

    r = results
    r["bare_faust_vs_aiokafka"] = r["bare_faust_records_per_s"] / r["aiokafka_records_per_s"]
    out = []
    if "worker_batched_lines_per_s" in r:
        r["batched_vs_goal_20k"] = r["worker_batched_lines_per_s"] / 20_000
        out.append(f"worker, batched ({args.batch_lines} lines/record): {r['worker_batched_lines_per_s']:,.0f} lines/s "
                   f"(goal 20,000: ratio {r['batched_vs_goal_20k']:.2f})")
        out.append(f"latency last record -> score record: p50 {r['latency_scores_p50_ms']:.0f} ms, p99 {r['latency_scores_p99_ms']:.0f} ms; "
                   f"-> anomaly record: p50 {r['latency_anomalies_p50_ms']:.0f} ms, p99 {r['latency_anomalies_p99_ms']:.0f} ms "
                   f"(n={r['latency_anomalies_n']}; goal p99 <= 250 ms)")
    if "worker_single_records_per_s" in r:
        bare_runs = " / ".join(f"{b:,.0f}" for b in r["bare_faust_records_per_s_before_after"])
        per_run = ", ".join(f"{x:.0%}" for x in r["single_vs_bare_faust_per_run"])
        out.append(f"worker, one line per record: {r['worker_single_records_per_s']:,.0f} records/s (median of {len(r['single_runs'])}) = "
                   f"{r['single_vs_bare_faust']:.0%} of the bare Faust agent (median; runs: {per_run}; bare agent before, "
                   f"between and after: {bare_runs} records/s; goal >= 75 %)")
        cpu_runs = ", ".join(f"{x:.0%}" for x in r["single_cpu_vs_bare_faust_per_run"])
        out.append(f"  CPU per record: worker {r['worker_single_cpu_us_per_record']:.0f} us, bare Faust agent "
                   f"{r['bare_faust_cpu_us_per_record']:.0f} us: in CPU terms the worker reaches {r['single_cpu_vs_bare_faust']:.0%} "
                   f"of the bare agent's rate (median; runs: {cpu_runs})")
    out.append(f"transport ceiling (plain aiokafka getmany): {r['aiokafka_records_per_s']:,.0f} records/s; "
               f"bare Faust = {r['bare_faust_vs_aiokafka']:.1%} of it")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, indent=2))
    print("\n" + "\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
