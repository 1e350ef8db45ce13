"""What the worker does with input records: decode, parse, group into sequences, score, emit.

The :class:`StreamEngine` is plain Python (no Faust): the agent in ``worker/app.py`` feeds it the
records of one ``take_events`` batch, then sends the outputs and persists the state changes it hands
back, and only then lets Faust ack the batch.  Keeping Kafka out of this class makes the per-record
path easy to test and to benchmark, and keeps the Faust wiring small.

Per record the work is tiny on purpose: one JSON decode, one regex match per line, a cached
template lookup (the encoder caches per masked message) and a few counter increments in the
sequence's accumulator.  Featurizing and scoring happen once per *batch* for the sequences the batch
closed (:mod:`worker.scoring`).

State (what a restarted worker resumes from), written to the changelog table after every batch:

* ``a|<seq_id>``: the open sequence's accumulator (counts + a few redacted evidence lines);
* ``p|<run>|<test_case>|<service>``: the stream's last event, held back until the next event
  so that stack-trace lines arriving as their own records can still attach to it;
* ``o|<topic>|<partition>``: the highest input offset already folded into that state, so that
  records re-delivered after a crash (processed, not yet committed) are not counted twice.

Each entry is written to the changelog partition of the input partition its records came from,
which is the partition the table recovers for that input partition on any worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared.errors import PayloadError
from shared.records import AnomalyRecord, ModelRef, ScoreRecord, SequenceKey, sequence_record_id
from shared.sequences import (
    ClosedSequence,
    EncodedEvent,
    Event,
    SequenceAccumulator,
    SequenceBuilder,
)
from worker.dlq import dlq_bytes, dlq_record
from worker.envelopes import (
    ContinuationLine,
    EndOfSequence,
    InputMode,
    Limits,
    LineEvent,
    decode_record,
    parse_line_item,
)
from worker.scoring import LoadedModel, ScoredSequence, Scorer, explain
from worker.telemetry import WorkerMetrics

log = logging.getLogger(__name__)

OutKind = Literal["anomaly", "score", "dlq"]
_CLOSED_BY = {"end": "end_marker", "idle": "idle", "window": "window", "flush": "shutdown"}


@dataclass(frozen=True, slots=True)
class RecordIn:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Output:
    kind: OutKind
    key: bytes | None
    value: bytes
    #: Kafka time (ms) of the last record of the sequence (for the end-to-end latency), if known.
    source_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    partition: int
    key: str
    value: dict[str, Any] | None  # None = delete (tombstone)


@dataclass(slots=True)
class _Pending:
    """An event held back until the next event of its stream (continuations may still follow)."""

    event: dict[str, Any]
    stack: list[str]
    partition: int
    record_ms: int | None
    arrived: float  # monotonic seconds (not persisted)

    def build(self) -> Event:
        e = self.event
        if self.stack:
            return Event(e["service"], e["run"], e["test_case"], e["timestamp_ms"], e["level"], e["logger"],
                         e["method"], e["message"], len(self.stack), "\n".join(self.stack))
        return Event(e["service"], e["run"], e["test_case"], e["timestamp_ms"], e["level"], e["logger"],
                     e["method"], e["message"])

    def to_state(self) -> dict[str, Any]:
        return {"p": self.partition, "event": self.event, "stack": self.stack, "record_ms": self.record_ms}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> _Pending:
        return cls(dict(data["event"]), list(data["stack"]), int(data["p"]), data.get("record_ms"), time.monotonic())


class TrackedStore(MutableMapping[str, SequenceAccumulator]):
    """The builder's store: a dict that remembers each key's input partition and what changed."""

    def __init__(self) -> None:
        self.data: dict[str, SequenceAccumulator] = {}
        self.partition_of: dict[str, int] = {}
        self.current_partition = 0
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()

    def __getitem__(self, key: str) -> SequenceAccumulator:
        return self.data[key]

    def __setitem__(self, key: str, value: SequenceAccumulator) -> None:
        self.data[key] = value
        self.partition_of.setdefault(key, self.current_partition)
        self.dirty.add(key)
        self.deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.dirty.discard(key)
        self.deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def load(self, key: str, value: SequenceAccumulator, partition: int) -> None:
        """Restore from the changelog (not a change)."""
        self.data[key] = value
        self.partition_of[key] = partition

    def drain(self) -> list[StateChange]:
        out = [StateChange(self.partition_of[k], f"a|{k}", {"p": self.partition_of[k], "acc": self.data[k].to_dict()}) for k in self.dirty]
        for k in self.deleted:
            out.append(StateChange(self.partition_of.pop(k, self.current_partition), f"a|{k}", None))
        self.dirty.clear()
        self.deleted.clear()
        return out


@dataclass(slots=True)
class EngineConfig:
    worker_id: str = "lo2-worker"
    input_mode: InputMode = "auto"
    limits: Limits = field(default_factory=Limits)
    live_stream: str = "live"
    emit_scores: bool = True
    evidence_cap: int = 5
    #: A held-back event is folded in after this long without a follow-up line (seconds, wall time).
    pending_hold_s: float = 2.0
    #: The stream counts as idle after this long without records (seconds, wall time).
    idle_after_s: float = 5.0


class StreamEngine:
    """Decode → parse → sequence → score → records, one batch at a time (see the module docstring)."""

    def __init__(self, model: LoadedModel, scorer: Scorer, metrics: WorkerMetrics, config: EngineConfig | None = None) -> None:
        self.cfg = config or EngineConfig()
        self.metrics = metrics
        self.scorer = scorer
        self.model = model
        self.store = TrackedStore()
        self.pending: dict[tuple[str, str, str], _Pending] = {}
        self.pending_dirty: set[tuple[str, str, str]] = set()
        self.pending_deleted: dict[tuple[str, str, str], int] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.offsets_dirty: set[tuple[str, int]] = set()
        self.last_record_ms: dict[tuple[str, str, str], int] = {}  # stream -> Kafka time of its last event
        self.draining: dict[str, LoadedModel] = {}  # seq_id -> model that encoded it (after a hot reload)
        self.closed: list[ClosedSequence] = []
        self.outputs: list[Output] = []
        self.last_arrival = time.monotonic()
        self._events_in: dict[str, Any] = {}
        self.lines_seen = 0  # lines handled since the app last yielded to the event loop
        self._records_in = {True: metrics.records_in.labels(form="json"), False: metrics.records_in.labels(form="raw")}
        self.builder = self._new_builder()

    # ------------------------------------------------------------------ model / builder

    def _new_builder(self) -> SequenceBuilder:
        # The shared builder throttles its idle scans itself (a quarter of the idle gap of event
        # time per partition and run), so the worker uses it as it is.
        return SequenceBuilder(
            self.model.policy, self._encode, store=self.store, evidence_cap=self.cfg.evidence_cap,
        )

    def _encode(self, event: Event) -> EncodedEvent:
        if self.draining:
            seq_id, _ = self.builder.key_of(event)
            old = self.draining.get(seq_id)
            if old is not None:
                return old.encoder(event)
        return self.model.encoder(event)

    def swap_model(self, new: LoadedModel) -> None:
        """Hot reload: new sequences use ``new``; open ones finish with the model that encoded them."""
        if new.fingerprint != self.model.fingerprint:
            for seq_id in self.store:
                self.draining.setdefault(seq_id, self.model)
        self.model = new

    # ------------------------------------------------------------------ state

    def restore(self, items: Any) -> None:
        """Rebuild all state from the changelog table's items (after a rebalance or a restart)."""
        # The idle clock starts now: time spent recovering is not quiet input, and counting it would
        # close restored sequences whose remaining events are still waiting in the topic.
        self.last_arrival = time.monotonic()
        self.store = TrackedStore()
        self.pending.clear()
        self.pending_dirty.clear()
        self.pending_deleted.clear()
        self.offsets.clear()
        self.offsets_dirty.clear()
        self.closed.clear()
        bad = 0
        for key, value in items:
            try:
                kind, _, rest = str(key).partition("|")
                if kind == "a":
                    self.store.load(rest, SequenceAccumulator.from_dict(value["acc"]), int(value["p"]))
                elif kind == "p":
                    run, test_case, service = rest.split("|")
                    self.pending[(run, test_case, service)] = _Pending.from_state(value)
                elif kind == "o":
                    topic, _, part = rest.rpartition("|")
                    self.offsets[(topic, int(part))] = int(value["offset"])
            except (PayloadError, KeyError, TypeError, ValueError) as exc:
                bad += 1
                log.error("dropping unreadable worker state %r: %s", key, exc)
        self.builder = self._new_builder()
        self.metrics.open_sequences.set(len(self.store))
        log.info("restored %d open sequences, %d pending events, %d partition offsets %s (%d unreadable)",
                 len(self.store), len(self.pending), len(self.offsets),
                 {f"{t}[{p}]": o for (t, p), o in sorted(self.offsets.items())}, bad)

    def has_changes(self) -> bool:
        return bool(self.store.dirty or self.store.deleted or self.pending_dirty or self.pending_deleted or self.offsets_dirty)

    def drain_state(self) -> list[StateChange]:
        changes = self.store.drain()
        for s in self.pending_dirty:
            p = self.pending.get(s)
            if p is not None:
                changes.append(StateChange(p.partition, "p|" + "|".join(s), p.to_state()))
        for s, part in self.pending_deleted.items():
            if s not in self.pending:
                changes.append(StateChange(part, "p|" + "|".join(s), None))
        for tp in self.offsets_dirty:
            changes.append(StateChange(tp[1], f"o|{tp[0]}|{tp[1]}", {"p": tp[1], "offset": self.offsets[tp]}))
        self.pending_dirty.clear()
        self.pending_deleted.clear()
        self.offsets_dirty.clear()
        return changes

    # ------------------------------------------------------------------ per record

    def _dlq(self, rec: RecordIn, reason: str, message: str, value: bytes | None, line_index: int | None = None) -> None:
        self.metrics.invalid_records.labels(reason=reason).inc()
        d = dlq_record(
            reason=reason, message=message, topic=rec.topic, partition=rec.partition, offset=rec.offset,
            key=rec.key, value=value, worker=self.cfg.worker_id, line_index=line_index,
        )
        self.outputs.append(Output("dlq", rec.key, dlq_bytes(d)))

    def handle(self, rec: RecordIn) -> None:
        """Fold one input record in; bad input goes to the DLQ and processing goes on."""
        tp = (rec.topic, rec.partition)
        done = self.offsets.get(tp)
        if done is not None:
            if rec.offset <= done:
                return  # already in the restored state (re-delivered after a crash)
            if rec.offset > done + 1:
                # Kafka offsets of a plain topic are contiguous: records in between never reached us.
                self.metrics.input_gaps.inc(rec.offset - done - 1)
                log.error("input records %s[%d] offsets %d..%d were skipped before processing",
                          rec.topic, rec.partition, done + 1, rec.offset - 1)
        self.offsets[tp] = rec.offset
        self.offsets_dirty.add(tp)
        self.last_arrival = time.monotonic()
        self.store.current_partition = rec.partition
        try:
            decoded = decode_record(rec.key, rec.value, mode=self.cfg.input_mode, limits=self.cfg.limits, record_time_ms=rec.timestamp_ms)
        except PayloadError as exc:
            self._dlq(rec, exc.reason, str(exc), rec.value)
            return
        is_json = self.cfg.input_mode == "json" or (self.cfg.input_mode == "auto" and (rec.value or b"").lstrip()[:1] == b"{")
        self._records_in[is_json].inc()
        for err in decoded.errors:
            self._dlq(rec, err.reason, err.message, err.raw.encode("utf-8", errors="replace"), err.index)
        self.lines_seen += len(decoded.items)
        for item in decoded.items:
            if isinstance(item, EndOfSequence):
                self._end(item)
                continue
            try:
                parsed = parse_line_item(item, rec.timestamp_ms)
            except PayloadError as exc:
                self._dlq(rec, exc.reason, str(exc), item.line.encode("utf-8", errors="replace"), item.index)
                continue
            if parsed is None:
                continue
            if isinstance(parsed, ContinuationLine):
                self._continuation(parsed)
            else:
                self._event(parsed, rec)

    def _stream(self, run: str | None, test_case: str | None, service: str) -> tuple[str, str, str]:
        """The stream an event continues: (run, test case, service) for the file policy; for the
        window policy (run, "", service), because its windows span test cases and an event held back
        per test case could miss its window while the other test cases move the watermark on."""
        if self.model.policy.kind == "window":
            return (run if run is not None else self.cfg.live_stream, "", service)
        return (run if run is not None else self.cfg.live_stream, test_case or "", service)

    def _event(self, ev: LineEvent, rec: RecordIn) -> None:
        counter = self._events_in.get(ev.service)
        if counter is None:
            counter = self._events_in[ev.service] = self.metrics.events_in.labels(service=ev.service)
        counter.inc()
        s = self._stream(ev.run, ev.test_case, ev.service)
        self._fold_pending(s)
        p = ev.parsed
        self.pending[s] = _Pending(
            {"service": s[2], "run": s[0], "test_case": s[1], "timestamp_ms": ev.timestamp_ms, "level": p.level,
             "logger": p.logger, "method": p.method, "message": p.message},
            [], rec.partition, rec.timestamp_ms, time.monotonic(),
        )
        self.pending_dirty.add(s)
        self.pending_deleted.pop(s, None)

    def _continuation(self, c: ContinuationLine) -> None:
        p = self.pending.get(self._stream(c.run, c.test_case, c.service))
        if p is None:
            self.metrics.continuation_lines.labels(result="orphan").inc()
            return
        p.stack.append(c.text)
        self.pending_dirty.add(self._stream(c.run, c.test_case, c.service))
        self.metrics.continuation_lines.labels(result="attached").inc()

    def _fold_pending(self, s: tuple[str, str, str]) -> None:
        p = self.pending.pop(s, None)
        if p is None:
            return
        self.pending_dirty.discard(s)
        self.pending_deleted[s] = p.partition
        event = p.build()
        saved = self.store.current_partition
        self.store.current_partition = p.partition
        if p.record_ms is not None:
            self.last_record_ms[s] = p.record_ms
        closed = self.builder.add(event, source=p.partition)
        if closed:
            self.closed.extend(closed)
        self.store.current_partition = saved

    def _end(self, end: EndOfSequence) -> None:
        s = self._stream(end.run, end.test_case, end.service)
        self._fold_pending(s)
        self.closed.extend(self.builder.end(*s))

    # ------------------------------------------------------------------ timers

    def tick(self, now: float | None = None) -> None:
        """Fold stale held-back events and close what the idle stream completes (wall-clock driven)."""
        now = time.monotonic() if now is None else now
        for s in [s for s, p in self.pending.items() if now - p.arrived >= self.cfg.pending_hold_s]:
            self._fold_pending(s)
        idle = now - self.last_arrival
        if idle >= self.cfg.idle_after_s and len(self.store):
            self.closed.extend(self.builder.expire_quiet(int(idle * 1000)))

    def flush_all(self) -> None:
        """Shutdown: nothing is closed on purpose (the changelog resumes them); kept for tests/bench."""
        for s in list(self.pending):
            self._fold_pending(s)
        self.closed.extend(self.builder.flush())

    # ------------------------------------------------------------------ per batch

    def finish_batch(self, *, drain: bool = True) -> tuple[list[Output], list[StateChange]]:
        """Score what the batch closed; return the records to send and (``drain``) the state to persist.

        With ``drain=False`` the changes keep accumulating until :meth:`drain_state` (the app calls
        it once per checkpoint, so an open sequence is serialized once per checkpoint, not per batch).
        """
        closed, self.closed = self.closed, []
        if closed:
            groups: dict[int, tuple[LoadedModel, list[ClosedSequence]]] = {}
            for c in closed:
                m = self.draining.pop(c.seq_id, self.model)
                groups.setdefault(id(m), (m, []))[1].append(c)
            for model, seqs in groups.values():
                for s in self.scorer.score(seqs, model):
                    self._emit(s)
        self.metrics.open_sequences.set(len(self.store))
        outputs, self.outputs = self.outputs, []
        return outputs, self.drain_state() if drain else []

    def _emit(self, s: ScoredSequence) -> None:
        acc = s.closed.accumulator
        policy = s.model.policy.kind
        window_start = window_end = None
        if acc.window_start_ms is not None:
            window_start = datetime.fromtimestamp(acc.window_start_ms / 1000, UTC)
            window_end = datetime.fromtimestamp((acc.window_start_ms + s.model.policy.window_ms) / 1000, UTC)
        key = SequenceKey(
            policy=policy, service=acc.service, run=acc.run, test_case=acc.test_case if policy == "file" else None,
            window_start=window_start, window_end=window_end,
        )
        start_ms = acc.first_ms or 0
        now = datetime.now(UTC)
        common: dict[str, Any] = dict(
            id=sequence_record_id(s.model.version, key, start_ms),
            service=acc.service,
            sequence=key,
            start=datetime.fromtimestamp(start_ms / 1000, UTC),
            end=datetime.fromtimestamp((acc.last_ms or start_ms) / 1000, UTC),
            event_count=acc.n_events,
            score=s.score,
            threshold=s.threshold,
            model=ModelRef(name=s.model.name, version=s.model.version),
            online_score=s.online_score,
            closed_by=_CLOSED_BY[s.closed.reason],
        )
        out_key = "|".join(self._stream(acc.run, acc.test_case, acc.service)).encode()
        stream = self._stream(acc.run, acc.test_case, acc.service)
        source_ms = self.last_record_ms.pop(stream, None) if policy == "file" else self.last_record_ms.get(stream)
        self.metrics.sequences_scored.labels(model=s.model.name, closed_by=common["closed_by"]).inc()
        if self.cfg.emit_scores:
            rec = ScoreRecord(**common, is_anomaly=s.is_anomaly, scored_at=now)
            self.outputs.append(Output("score", out_key, rec.model_dump_json().encode(), source_ms))
        if s.is_anomaly:
            self.metrics.anomalies.labels(service=acc.service).inc()
            anomaly = AnomalyRecord(**common, explanation=explain(s), detected_at=now)
            self.outputs.append(Output("anomaly", out_key, anomaly.model_dump_json().encode(), source_ms))

