"""Helpers of the worker's integration tests: the data world, worker subprocesses, topic readers.

Workers run as real ``lo2 worker`` subprocesses (so a test can SIGKILL one) against the real broker
of the ``kafka_bootstrap`` fixture; every test uses its own topics and consumer group, so tests do
not see each other's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tests.worker_data import TRIM, batch_scores, build_bundle, load_events, write_runs

_WORLD: dict[str, Any] = {}
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class World:
    root: Path
    events: pl.DataFrame
    bundle: Path
    batch: dict[tuple[str, str, str], float]
    counts: dict[tuple[str, str, str], int]


def world(tmp_root: Path, sample: Path) -> World:
    """Runs cut from the real sample, their batch events, a bundle and the batch scores (built once)."""
    if "w" not in _WORLD:
        root = write_runs(tmp_root / "runs", sample)
        events = load_events(root, tmp_root / "parquet")
        bundle = build_bundle(events, tmp_root / "models")
        counts = {(r, t, s): n for r, t, s, n in events.group_by("run", "test_case", "service").len().iter_rows()}
        _WORLD["w"] = World(root, events, bundle, batch_scores(events, bundle), counts)
    w: World = _WORLD["w"]
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Topics:
    """Unique topic names and group of one test."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    partitions: int = 4

    @property
    def env(self) -> dict[str, str]:
        return {
            "LO2_INPUT_TOPIC": f"t{self.tag}.logs",
            "LO2_ANOMALIES_TOPIC": f"t{self.tag}.anomalies",
            "LO2_DLQ_TOPIC": f"t{self.tag}.dlq",
            "LO2_SCORES_TOPIC": f"t{self.tag}.scores",
            "LO2_APP_ID": f"lo2-test-{self.tag}",
            "LO2_TOPIC_PARTITIONS": str(self.partitions),
        }

    @property
    def input(self) -> str:
        return self.env["LO2_INPUT_TOPIC"]

    @property
    def anomalies(self) -> str:
        return self.env["LO2_ANOMALIES_TOPIC"]

    @property
    def dlq(self) -> str:
        return self.env["LO2_DLQ_TOPIC"]

    @property
    def scores(self) -> str:
        return self.env["LO2_SCORES_TOPIC"]


def base_env(bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(topics.env)
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    env["PYTHONUNBUFFERED"] = "1"
    # Quick group joins and commits (the values of tests/plugins/kafka.py FAST_FAUST_SETTINGS).
    env.setdefault("LO2_WORKER_HEARTBEAT_INTERVAL_S", "0.3")
    env.setdefault("LO2_WORKER_SESSION_TIMEOUT_S", "6")
    env.setdefault("LO2_WORKER_RECOVERY_DELAY_S", "0")
    env.update(extra)
    return env


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    web_port: int
    log_path: Path

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=2) as r:  # noqa: S310
            return str(r.read().decode())

    def metric(self, name: str) -> float:
        """Sum of all samples of ``name`` (0 when absent)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def dump_tasks(self, wait_s: float = 1.0) -> None:
        """Ask a live worker to log where each of its asyncio tasks waits (its SIGUSR1 handler)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(wait_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(env: dict[str, str], model: Path, workdir: Path, *, name: str = "w", log_level: str = "warn") -> WorkerProc:
    w = spawn_worker(env, model, workdir, name=name, log_level=log_level)
    wait_up(w)
    return w


def wait_up(w: WorkerProc) -> None:
    wait_until(lambda: _up(w), 60, f"worker on port {w.web_port} did not serve /metrics", w)


def spawn_worker(env: dict[str, str], model: Path, workdir: Path, *, name: str = "w", log_level: str = "warn") -> WorkerProc:
    """Start ``lo2 worker`` without waiting for it (start several at once, then :func:`wait_up`)."""
    port = free_port()
    log_path = workdir / f"{name}-{port}.log"
    datadir = workdir / f"data-{name}-{port}"
    cmd = [sys.executable, "-m", "lo2", "worker", "--model", str(model), "--web-port", str(port),
           "--datadir", str(datadir), "--log-level", log_level]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return WorkerProc(proc, port, log_path)


def _up(w: WorkerProc) -> bool:
    if w.proc.poll() is not None:
        raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.log_tail()}")
    try:
        w.metrics_text()
        return True
    except OSError:
        return False


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, worker: WorkerProc | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    tail = f"\nworker log:\n{worker.log_tail()}" if worker is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s: {what}{tail}")


def replay(env: dict[str, str], source: Path, *extra: str, background: bool = False) -> subprocess.Popen[bytes] | None:
    cmd = [sys.executable, "-m", "lo2", "replay", str(source), "--trim-init-lines", str(TRIM), "--no-progress", *extra]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return None


def read_topic(bootstrap: str, topic: str, *, idle_s: float = 1.5) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` from the beginning (stops after ``idle_s`` without records)."""

    async def main() -> list[tuple[bytes | None, bytes]]:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                             enable_auto_commit=False)
        await c.start()
        out: list[tuple[bytes | None, bytes]] = []
        try:
            while True:
                batch = await c.getmany(timeout_ms=int(idle_s * 1000))
                if not batch:
                    return out
                for msgs in batch.values():
                    out.extend((m.key, m.value or b"") for m in msgs)
        finally:
            await c.stop()

    return asyncio.run(main())


def group_lag(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """Per partition of ``topic``: (offset committed by ``group`` or None, end offset)."""

    async def main() -> dict[int, tuple[int | None, int]]:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await admin.start()
        await c.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            parts = c.partitions_for_topic(topic) or set()
            if not parts:
                await c._client.force_metadata_update()
                parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await c.end_offsets(tps)
            return {tp.partition: (committed[tp].offset if tp in committed else None, ends[tp]) for tp in tps}
        finally:
            await c.stop()
            await admin.close()

    return asyncio.run(main())


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    async def main() -> None:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for key, value in records:
                await p.send(topic, value, key=key)
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(main())


def scores_by_key(records: list[tuple[bytes | None, bytes]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for _, value in records:
        rec = json.loads(value)
        seq = rec["sequence"]
        out.setdefault((seq["run"], seq["test_case"], rec["service"]), []).append(rec)
    return out
