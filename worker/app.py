"""The Faust app of the streaming worker: topics, the changelog table, one agent, timers, /metrics.

``create_app(settings, bundle_path)`` builds everything from settings and returns a
:class:`WorkerRuntime` (the app plus the engine and metrics) without side effects at import time;
``lo2 worker`` and the tests call it.  The wiring only moves bytes: decoding, sequencing, scoring
and record building live in :class:`worker.agents.StreamEngine`.

How a batch is made durable (at-least-once without double counting):

1. the agent collects records from the input topic, whose Faust acks are switched off
   (``acks=False``): Faust never commits input offsets on its own;
2. the engine folds the records in and scores the sequences they closed; score, anomaly and DLQ
   records go to the producer at once (latency);
3. at a checkpoint (every ``worker_checkpoint_interval_s``, on the timer, before a rebalance) the
   changed state (accumulators, held-back events, the highest processed offset per partition) goes
   to the table's changelog, the producer is flushed and every record is confirmed;
4. only then does the worker commit, per partition, the offset after the highest one processed,
   so the committed offsets never pass the durable state.

Why not Faust's acks: Faust acks a record *it* skips (a record fetched under an older consumer
generation, or while flow control is suspended during a rebalance) and commits past it, and its
commit accepts a one-record hole at the head of the acked offsets.  Either loses a record nobody
processed (seen under load in the crash test).  Committing the processed offsets ourselves makes
the commit exactly what the changelog holds; a record Faust skips is fetched again after the
rebalance that caused the skip, from that commit.

Checkpointing per interval instead of per batch is what keeps one-line records cheap: the state
of an open sequence is written once per interval, not once per small batch.

A worker killed anywhere in between restarts from the last committed offset with the state of
the last flushed batch; records it had already folded in are recognised by their offset and skipped,
and re-emitted anomaly records carry the same deterministic id.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from shared.settings import Settings
from worker.agents import EngineConfig, Output, RecordIn, StateChange, StreamEngine
from worker.envelopes import Limits
from worker.scoring import ModelWatcher, Scorer
from worker.telemetry import WorkerMetrics

log = logging.getLogger(__name__)

STATE_TABLE = "state"


@dataclass
class WorkerRuntime:
    """The app and what its agent and timers share."""

    app: faust.App
    engine: StreamEngine
    metrics: WorkerMetrics
    watcher: ModelWatcher
    settings: Settings
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    needs_restore: bool = True
    #: Records that arrived while the state table was still recovering: handled once it is whole.
    held: list[Any] = field(default_factory=list)
    batches: int = 0
    last_model_check: float = field(default_factory=time.monotonic)
    last_checkpoint: float = field(default_factory=time.monotonic)
    stream: Any = None
    buffer: list[Any] = field(default_factory=list)
    buffer_started: float = field(default_factory=time.monotonic)
    #: Records folded in since the last checkpoint (their offsets are not committed yet).
    uncommitted: int = 0
    inflight: list[Any] = field(default_factory=list)
    pending_changes: dict[str, StateChange] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers

    @property
    def table(self) -> Any:
        return self.app.tables[STATE_TABLE]

    def _assigned_partitions(self) -> set[int]:
        try:
            assignment = self.app.consumer.assignment()
        except (AttributeError, RuntimeError):
            return set()
        return {tp.partition for tp in assignment if tp.topic == self.settings.input_topic}

    def _ready(self) -> bool:
        if self.app.rebalancing:
            return False
        recovery = getattr(self.app.tables, "recovery", None)
        return not (recovery is not None and getattr(recovery, "in_recovery", False))

    async def _restore_if_needed(self) -> None:
        if not self.needs_restore:
            return
        assigned = self._assigned_partitions()
        items = [(k, v) for k, v in list(self.table.data.items()) if isinstance(v, dict) and int(v.get("p", -1)) in assigned]
        self.engine.restore(items)
        self.needs_restore = False
        await self._seek_to_processed(assigned)

    async def _seek_to_processed(self, assigned: set[int]) -> None:
        """Read every assigned input partition from the record after the last one processed.

        Faust seeks only partitions that have a committed offset, so records of a never-committed
        partition that it fetched and dropped while the table recovered were not fetched again (seen
        in the crash test: a whole partition never reached the agent).  A partition without a stored
        offset starts at its committed offset, or at its earliest record when it has none; that
        start is also stored as "offset - 1" so the engine can tell a hole at its very start
        (``StreamEngine._in_order``).
        """
        topic = self.settings.input_topic
        tps = [TP(topic, p) for p in sorted(assigned)]
        committed = self._committed()
        unmarked = []
        for tp in tps:
            if (topic, tp.partition) in self.engine.offsets:
                continue
            if committed.get(tp):  # a commit without a stored offset (e.g. a reset table): keep it
                self.engine.offsets[(topic, tp.partition)] = int(committed[tp]) - 1
            else:
                unmarked.append(tp)
        if unmarked:
            earliest = await self.app.consumer.earliest_offsets(*unmarked)
            for tp, first in earliest.items():
                self.engine.offsets.setdefault((topic, tp.partition), int(first) - 1)
        targets = {tp: self.engine.offsets[(topic, tp.partition)] + 1 for tp in tps if (topic, tp.partition) in self.engine.offsets}
        if targets:
            # seek_wait runs in the consumer's thread; Consumer.seek would touch aiokafka from this one
            await self.app.consumer.seek_wait(targets)

    def _store_put(self, change: StateChange) -> None:
        store = self.table.data
        if change.value is None:
            try:
                del store[change.key]
            except KeyError:
                pass
            return
        if hasattr(store, "_db_for_partition"):  # rocksdb: write into the partition's database
            k, v = store._encode_key(change.key), store._encode_value(change.value)
            store._db_for_partition(change.partition).put(k, v)
            store._key_index[k] = change.partition
        else:
            store[change.key] = change.value
            key_partition = getattr(store, "_key_partition", None)
            if key_partition is not None:
                key_partition[change.key] = change.partition

    async def _send_outputs(self, outputs: Iterable[Output]) -> None:
        """Hand score/anomaly/DLQ records to the producer now (latency); durability comes at the checkpoint."""
        s = self.settings
        producer = self.app.producer
        topics = {"anomaly": s.anomalies_topic, "score": s.scores_topic, "dlq": s.dlq_topic}
        now_ms = time.time() * 1000
        for out in outputs:
            self.inflight.append(await producer.send(topics[out.kind], out.key, out.value, None, None, None))
            if out.kind == "score" and out.source_ms is not None:  # one per sequence (its anomaly record follows it)
                self.metrics.end_to_end_seconds.observe(max(0.0, (now_ms - out.source_ms) / 1000))

    async def checkpoint(self) -> None:
        """Make everything so far durable, then commit the input offsets (see the module docstring).

        Writes the changed state (latest value per key) to the changelog, waits until the broker
        has every output and state record, and only then commits the processed input offsets, so
        the committed offsets never run ahead of the state a restarted worker resumes from.
        """
        for ch in self.engine.drain_state():
            self.pending_changes[ch.key] = ch
        if self.pending_changes:
            producer = self.app.producer
            changelog = self.table.changelog_topic.get_topic_name()
            for ch in self.pending_changes.values():
                self._store_put(ch)
                value = None if ch.value is None else _json_bytes(ch.value)
                self.inflight.append(await producer.send(changelog, _json_bytes(ch.key), value, ch.partition, None, None))
            self.pending_changes.clear()
        if self.inflight:
            await self.app.producer.flush()
            await asyncio.gather(*self.inflight)
            self.inflight.clear()
        await self._commit_processed()
        self.uncommitted = 0
        self.last_checkpoint = time.monotonic()

    def _committed(self) -> Any:
        """Faust's record of committed input offsets per TP (the next offset to read, or None).

        Faust fills it from the broker when it seeks after a rebalance, drops revoked partitions
        from it, and ``Consumer._commit_offsets`` updates it with every commit of ours.
        """
        return getattr(self.app.consumer, "_committed_offset", {})

    async def _commit_processed(self) -> None:
        """Commit the offset after the highest processed one of each assigned input partition.

        Called only once the state that covers those offsets is in the changelog.  Uses Faust's
        own commit step (``Consumer._commit_offsets``: commit, table hooks, bookkeeping) with
        offsets we computed, because Faust's ack-based offsets can pass unprocessed records.
        """
        topic = self.settings.input_topic
        assigned = self._assigned_partitions()
        committed = self._committed()
        offsets = {}
        for (t, partition), done in self.engine.offsets.items():
            tp = TP(t, partition)
            if t == topic and partition in assigned and done + 1 > (committed.get(tp) or -1):
                offsets[tp] = done + 1
        if offsets:
            await self.app.consumer._commit_offsets(offsets)

    def _collect(self, outputs_changes: tuple[list[Output], list[StateChange]]) -> list[Output]:
        outputs, changes = outputs_changes
        for ch in changes:
            self.pending_changes[ch.key] = ch
        return outputs

    def _checkpoint_due(self) -> bool:
        return (
            time.monotonic() - self.last_checkpoint >= self.settings.worker_checkpoint_interval_s
            or self.uncommitted >= self.settings.worker_checkpoint_max_records
        )

    # ------------------------------------------------------------------ entry points

    async def flush_buffer(self) -> None:
        events, self.buffer = self.buffer, []
        self.buffer_started = time.monotonic()
        if events:
            await self.process_events(events)

    async def process_events(self, events: list[Any]) -> None:
        async with self.lock:
            if self.needs_restore and not self._ready():
                # Faust can deliver records while the table is still recovering.  Restoring from a
                # half-recovered table can bring back a partition's processed offset without the
                # accumulators it covers, and those events would be lost: hold the records (uncommitted)
                # until recovery is complete.  A rewind that re-delivers them is de-duplicated by
                # the restored per-partition offsets.
                self.held.extend(events)
                return
            await self._handle(self._take_held() + list(events))

    def _take_held(self) -> list[Any]:
        """Held records of partitions still assigned (others belong to their new owner now)."""
        held, self.held = self.held, []
        if not held:
            return []
        assigned = self._assigned_partitions()
        return [ev for ev in held if ev.message.partition in assigned]

    async def _handle(self, events: list[Any]) -> None:
        """Fold records into the state (under the lock, state restored), send outputs, checkpoint."""
        await self._restore_if_needed()
        engine = self.engine
        handle = engine.handle
        budget = self.settings.worker_yield_every_lines
        for ev in events:
            msg = ev.message
            ts = msg.timestamp
            handle(RecordIn(msg.key, msg.value, msg.topic, msg.partition, msg.offset, int(ts * 1000) if ts else None))
            if engine.lines_seen >= budget:
                # Let heartbeats, the web server and the producer run between big records.
                engine.lines_seen = 0
                await asyncio.sleep(0)
        self.uncommitted += len(events)
        await self._seek_rewinds()
        await self._send_outputs(self._collect(engine.finish_batch(drain=False)))
        if self._checkpoint_due():
            await self.checkpoint()
        self.batches += 1

    async def _seek_rewinds(self) -> None:
        """Re-read partitions from the hole the engine found (see ``StreamEngine._in_order``)."""
        requests = self.engine.take_rewinds()
        if not requests:
            return
        assigned = self._assigned_partitions()
        targets = {}
        for (topic, partition), offset in requests.items():
            if partition in assigned:
                targets[TP(topic, partition)] = offset
            else:  # no longer ours: its new owner reads from our last commit
                self.engine.rewinding.pop((topic, partition), None)
        if targets:
            await self.app.consumer.seek_wait(targets)  # in the consumer's thread (see _seek_to_processed)

    async def tick(self) -> None:
        async with self.lock:
            if not self._ready():
                # A rebalance is under way: make what we processed durable and commit it.
                if self.uncommitted or self.engine.has_changes():
                    await self.checkpoint()
                return
            await self._restore_if_needed()
            if self.held:
                await self._handle(self._take_held())
            now = time.monotonic()
            if now - self.last_model_check >= self.settings.model_reload_interval_s:
                self.last_model_check = now
                new = self.watcher.check(self.engine.model)
                if new is not None:
                    self.engine.swap_model(new)
            self.engine.tick(now)
            await self._send_outputs(self._collect(self.engine.finish_batch(drain=False)))
            if self.uncommitted or self.inflight or self.engine.has_changes():
                await self.checkpoint()


def log_task_stacks() -> None:
    """Log the stack of every asyncio task of the running loop (the worker's SIGUSR1 handler)."""
    import io

    tasks = asyncio.all_tasks()
    out = io.StringIO()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"--- task {task.get_name()} {task.get_coro()!r}\n")
        task.print_stack(limit=12, file=out)
    log.warning("%d asyncio tasks (SIGUSR1):\n%s", len(tasks), out.getvalue())


def _json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode()


def bootstrap_of(settings: Settings) -> str:
    return settings.kafka_bootstrap_servers or f"localhost:{settings.kafka_port}"


def create_app(
    settings: Settings,
    bundle_path: Path,
    *,
    follow_current: bool | None = None,
    registry: CollectorRegistry | None = None,
    web_port: int | None = None,
    datadir: Path | None = None,
    worker_id: str | None = None,
) -> WorkerRuntime:
    """Build the worker: Faust app, topics, state table, agent, timer, metrics page.

    ``bundle_path`` is a bundle folder or a model folder with a ``current`` pointer; with
    ``follow_current`` (default: when the path has a ``current`` pointer) the worker hot-reloads
    whatever ``current`` points at.
    """
    from faust.sensors.prometheus import setup_prometheus_sensors

    bundle_path = Path(bundle_path)
    if follow_current is None:
        follow_current = (bundle_path / "current").exists()
    metrics = WorkerMetrics.create(registry)
    watcher = ModelWatcher(bundle_path, metrics, follow_current=follow_current)
    model = watcher.load_initial()
    scorer = Scorer(metrics, online=settings.worker_online_model, seed=settings.seed)
    cfg = EngineConfig(
        worker_id=worker_id or f"{socket.gethostname()}:{web_port or settings.worker_web_port}",
        input_mode=settings.worker_input_mode,
        limits=Limits(
            max_record_bytes=settings.worker_max_record_bytes,
            max_line_chars=settings.worker_max_line_chars,
            max_batch_lines=settings.worker_max_batch_lines,
        ),
        live_stream=settings.worker_live_stream,
        emit_scores=settings.worker_emit_scores,
        pending_hold_s=settings.worker_pending_hold_s,
        idle_after_s=settings.worker_idle_after_s,
    )
    engine = StreamEngine(model, scorer, metrics, cfg)

    datadir = Path(datadir or settings.worker_datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap_of(settings)}",
        store=settings.table_store,
        datadir=str(datadir),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=settings.worker_heartbeat_interval_s,
        broker_rebalance_timeout=settings.worker_rebalance_timeout_s,
        producer_linger=0.005,
        producer_max_request_size=4_194_304,
        stream_buffer_maxsize=settings.worker_buffer_maxsize,
        web_enabled=True,
        web_port=web_port or settings.worker_web_port,
        web_bind=settings.worker_web_bind,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_router_enabled=False,
        table_standby_replicas=0,
        stream_recovery_delay=settings.worker_recovery_delay_s,
    )
    parts = settings.topic_partitions
    # acks=False: Faust must not commit input offsets; checkpoint() commits the processed ones.
    input_topic = app.topic(settings.input_topic, key_type=bytes, value_type=bytes, partitions=parts, acks=False)
    app.Table(STATE_TABLE, default=None, partitions=parts, key_type=str, value_type=None,
              help="open sequences, held-back events and processed offsets")

    runtime = WorkerRuntime(app=app, engine=engine, metrics=metrics, watcher=watcher, settings=settings)
    batch_max, within = settings.worker_batch_max, settings.worker_batch_within_s

    @app.agent(input_topic, name="lo2-sequences")
    async def sequences(stream: faust.StreamT[bytes]) -> None:
        # noack: no per-event ack bookkeeping (the topic's acks are off; checkpoint() commits).  The
        # batch is collected here rather than with Faust's take(): that costs one buffer processor
        # and several task switches per record, a third of the time of a one-line record.
        # The stream is iterated directly and the event read from it: ``events()`` wraps the same
        # iterator in one more async generator, a resume per record.
        manual = stream.noack()
        runtime.stream = manual
        async for _ in manual:
            event = manual.current_event
            if event is None:
                continue
            runtime.buffer.append(event)
            if len(runtime.buffer) >= batch_max or time.monotonic() - runtime.buffer_started >= within:
                await runtime.flush_buffer()

    @app.timer(interval=within)
    async def flush_stale() -> None:
        # A batch that stopped filling (the stream paused) is processed within ``within`` seconds.
        if runtime.buffer and time.monotonic() - runtime.buffer_started >= within:
            await runtime.flush_buffer()

    @app.timer(interval=settings.worker_tick_s)
    async def tick() -> None:
        await runtime.tick()

    async def _rebalanced(*args: Any, **kwargs: Any) -> None:
        # Fold in what was fetched under the old assignment, make it durable (and commit it) before
        # partitions move, then rebuild from the table on the next batch.
        await runtime.flush_buffer()
        async with runtime.lock:
            await runtime.checkpoint()
            runtime.needs_restore = True

    app.on_partitions_assigned.connect(_rebalanced)
    app.on_partitions_revoked.connect(_rebalanced)

    @app.task
    async def install_task_dump() -> None:
        # `kill -USR1 <pid>` logs where every asyncio task waits: the one tool that explains a
        # worker that is alive (serves /metrics) but makes no progress.
        import signal

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_task_stacks)

    @app.task
    async def declare_outputs() -> None:
        for name in (settings.anomalies_topic, settings.dlq_topic) + ((settings.scores_topic,) if settings.worker_emit_scores else ()):
            await app.topic(name, partitions=parts).maybe_declare()

    if settings.worker_faust_metrics:
        setup_prometheus_sensors(app, registry=metrics.registry, name_prefix=f"lo2_faust_{settings.app_id}")
    else:
        from aiohttp.web import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        @app.page("/metrics")
        async def metrics_page(self: Any, request: Any) -> Any:
            return Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return runtime
