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
from typing import Any, Literal, NamedTuple

from shared.errors import PayloadError
from shared.parsing import ParsedFields, file_seq_id
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
    InputLine,
    InputMode,
    Limits,
    decode_record,
    is_json_record,
    parse_item_fields,
)
from worker.scoring import LoadedModel, ScoredSequence, Scorer, explain
from worker.telemetry import WorkerMetrics

log = logging.getLogger(__name__)

OutKind = Literal["anomaly", "score", "dlq"]
_CLOSED_BY = {"end": "end_marker", "idle": "idle", "window": "window", "flush": "shutdown"}
#: Re-reads of one hole in a partition's offsets before the worker accepts that the broker has no
#: records there.  A re-read can lose the race that made the hole once more: Faust's fetch loop
#: records a stale record's offset as its read position only after handing the record over, which
#: can land after our seek, so the re-fetched records below it are dropped (seen in the stress
#: loop: the second re-read always succeeded).  Five leaves room; a real hole costs five seeks.
MAX_REWINDS = 5


class RecordIn(NamedTuple):
    """One input record (a named tuple: built once per record, several times cheaper than a frozen dataclass)."""

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

    #: The event without its stack lines (those are in ``stack`` until it is folded in).
    event: Event
    stack: list[str]
    partition: int
    record_ms: int | None
    arrived: float  # monotonic seconds (not persisted)

    def build(self) -> Event:
        e = self.event
        if self.stack:
            return Event(e.service, e.run, e.test_case, e.timestamp_ms, e.level, e.logger, e.method, e.message,
                         len(self.stack), "\n".join(self.stack))
        return e

    def to_state(self) -> dict[str, Any]:
        e = self.event
        event = {"service": e.service, "run": e.run, "test_case": e.test_case, "timestamp_ms": e.timestamp_ms,
                 "level": e.level, "logger": e.logger, "method": e.method, "message": e.message}
        return {"p": self.partition, "event": event, "stack": self.stack, "record_ms": self.record_ms}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> _Pending:
        e = data["event"]
        event = Event(e["service"], e["run"], e["test_case"], e["timestamp_ms"], e["level"], e["logger"], e["method"], e["message"])
        return cls(event, list(data["stack"]), int(data["p"]), data.get("record_ms"), time.monotonic())


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

    def get(self, key: str, default: Any = None) -> Any:
        # The builder looks its accumulator up once per event: the inherited Mapping.get goes
        # through __getitem__ and a KeyError for every new sequence.
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

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
        self._windowed = model.policy.kind == "window"  # the policy of a running worker does not change
        self.store = TrackedStore()
        self.pending: dict[tuple[str, str, str], _Pending] = {}
        self.pending_dirty: set[tuple[str, str, str]] = set()
        self.pending_deleted: dict[tuple[str, str, str], int] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.offsets_dirty: set[tuple[str, int]] = set()
        # partition -> (highest offset seen since a hole, re-reads asked for it)
        self.rewinding: dict[tuple[str, int], tuple[int, int]] = {}
        self.rewind_requests: dict[tuple[str, int], int] = {}  # partition -> offset to seek to
        self.last_record_ms: dict[tuple[str, str, str], int] = {}  # stream -> Kafka time of its last event
        self.draining: dict[str, LoadedModel] = {}  # seq_id -> model that encoded it (after a hot reload)
        self.closed: list[ClosedSequence] = []
        self.outputs: list[Output] = []
        self.last_arrival = time.monotonic()
        self.lines_seen = 0  # lines handled since the app last yielded to the event loop
        # Per-record counts are kept in plain ints/dicts and added to the Prometheus counters once per
        # batch (finish_batch): a counter increment takes a lock, which costs more than the count.
        self._n_records = {True: 0, False: 0}  # json?, count
        self._n_late: dict[str, int] = {}  # service -> events dropped as late since the last batch
        self._late_logged_at = float("-inf")
        self._unscored_warned: set[tuple[str, str]] = set()  # (model version, service)
        #: window policy: (run, service) -> input partition of its events, for its closed-window mark
        self._window_partition: dict[tuple[str, str], int] = {}
        self._n_events: dict[str, int] = {}  # service -> count
        self._n_continuations = {"attached": 0, "orphan": 0}
        self._records_in = {True: metrics.records_in.labels(form="json"), False: metrics.records_in.labels(form="raw")}
        self._events_in: dict[str, Any] = {}
        self.builder = self._new_builder()

    # ------------------------------------------------------------------ model / builder

    def _new_builder(self) -> SequenceBuilder:
        # The shared builder throttles its idle scans itself (a quarter of the idle gap of event
        # time per partition and run), so the worker uses it as it is.
        return SequenceBuilder(
            self.model.policy, self._encode, store=self.store, evidence_cap=self.cfg.evidence_cap,
            before_idle_close=self._fold_pending_of_idle,
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
        self._windowed = new.policy.kind == "window"

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
        self.rewinding.clear()
        self.rewind_requests.clear()
        self.closed.clear()
        closed_ends: dict[tuple[str, str], tuple[int, int]] = {}
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
                elif kind == "w":
                    run, _, service = rest.rpartition("|")
                    closed_ends[(run, service)] = (int(value["closed_end"]), int(value["p"]))
            except (PayloadError, KeyError, TypeError, ValueError) as exc:
                bad += 1
                log.error("dropping unreadable worker state %r: %s", key, exc)
        self.builder = self._new_builder()
        self._window_partition.clear()
        for (run, service), (end_ms, part) in closed_ends.items():
            self.builder.restore_closed_end(run, service, end_ms)
            self._window_partition[(run, service)] = part
        self.metrics.open_sequences.set(len(self.store))
        log.info("restored %d open sequences, %d pending events, %d partition offsets %s (%d unreadable)",
                 len(self.store), len(self.pending), len(self.offsets),
                 {f"{t}[{p}]": o for (t, p), o in sorted(self.offsets.items())}, bad)

    def has_changes(self) -> bool:
        return bool(self.store.dirty or self.store.deleted or self.pending_dirty or self.pending_deleted or self.offsets_dirty
                    or self.builder.closed_end_dirty)



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
        for (run, service), end_ms in self.builder.take_closed_end_changes().items():
            part = self._window_partition.get((run, service), self.store.current_partition or 0)
            changes.append(StateChange(part, f"w|{run}|{service}", {"p": part, "closed_end": end_ms}))
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
        # The usual case (the next offset, no re-read under way) needs no further check.
        if done is not None and (rec.offset != done + 1 or self.rewinding) and not self._in_order(rec, tp, done):
            return
        self.offsets[tp] = rec.offset
        self.offsets_dirty.add(tp)
        self.last_arrival = time.monotonic()
        self.store.current_partition = rec.partition
        # every record read counts, rejected ones too (the invalid-share alert divides by this)
        is_json = is_json_record(rec.value, self.cfg.input_mode)
        self._n_records[is_json] += 1
        try:
            decoded = decode_record(rec.key, rec.value, mode="json" if is_json else "raw", limits=self.cfg.limits,
                                    record_time_ms=rec.timestamp_ms)
        except PayloadError as exc:
            self._dlq(rec, exc.reason, str(exc), rec.value)
            return
        for err in decoded.errors:
            self._dlq(rec, err.reason, err.message, err.raw.encode("utf-8", errors="replace"), err.index)
        self.lines_seen += len(decoded.items)
        for item in decoded.items:
            if isinstance(item, EndOfSequence):
                self._end(item)
                continue
            try:
                parsed = parse_item_fields(item, rec.timestamp_ms)
            except PayloadError as exc:
                self._dlq(rec, exc.reason, str(exc), item.line.encode("utf-8", errors="replace"), item.index)
                continue
            if parsed is None:
                continue
            if isinstance(parsed, ContinuationLine):
                self._continuation(parsed)
            else:
                self._event(item, parsed[0], parsed[1], rec)

    def _in_order(self, rec: RecordIn, tp: tuple[str, int], done: int) -> bool:
        """Whether ``rec`` is the next record of its partition (``done`` = the last one processed).

        A record at or below ``done`` was processed already (re-delivered after a crash or a
        rebalance).  A record past ``done + 1`` means records in between never reached us: the
        Faust stream can drop fetched records (seen under load right after start-up: its fetch
        loop still delivers records of a fetch made before a seek, and drops re-fetched records
        below them), and processing past them would lose them for good.  So the worker asks for
        a re-read from ``done + 1`` (:meth:`take_rewinds`), ignores what was fetched before that
        seek (offsets still climbing; each such batch asks for the seek again, because delivering
        it moves Faust's read position past the re-read) and resumes at the first record of the
        re-read (the offset goes back).  A re-read that again starts past the hole is retried (the same race can hit
        it) up to :data:`MAX_REWINDS` times; after that the broker has nothing in between
        (transaction markers, compaction or retention): counted, logged, and processing goes on.
        """
        state = self.rewinding.get(tp)
        if state is not None:
            seen, attempts = state
            if rec.offset > seen:
                # Fetched before the seek took effect.  Its delivery moved Faust's read position
                # past the re-read, which Faust would then drop: seek again (a local, cheap call).
                self.rewinding[tp] = (rec.offset, attempts)
                self.rewind_requests[tp] = done + 1
                return False
            # the offset went back: the re-read has started
            if rec.offset <= done + 1:
                del self.rewinding[tp]
                return rec.offset == done + 1
            if attempts < MAX_REWINDS:
                self._rewind(rec, tp, done, attempts + 1)
                return False
            del self.rewinding[tp]
            self.metrics.input_holes.inc(rec.offset - done - 1)
            log.warning("input %s[%d]: %d re-reads found no records at offsets %d..%d; going on from %d",
                        rec.topic, rec.partition, attempts, done + 1, rec.offset - 1, rec.offset)
            return True
        if rec.offset <= done:
            return False  # already in the restored state
        if rec.offset > done + 1:
            self._rewind(rec, tp, done, 1)
            return False
        return True

    def _rewind(self, rec: RecordIn, tp: tuple[str, int], done: int, attempt: int) -> None:
        self.metrics.input_rewinds.inc()
        log.warning("input %s[%d]: offset %d arrived after %d; re-reading from %d (attempt %d)",
                    rec.topic, rec.partition, rec.offset, done, done + 1, attempt)
        self.rewinding[tp] = (rec.offset, attempt)
        self.rewind_requests[tp] = done + 1

    def take_rewinds(self) -> dict[tuple[str, int], int]:
        """Partitions to re-read and the offset to seek each to (the app performs the seeks)."""
        out, self.rewind_requests = self.rewind_requests, {}
        return out

    def _stream(self, run: str | None, test_case: str | None, service: str) -> tuple[str, str, str]:
        """The stream an event continues: (run, test case, service) for the file policy; for the
        window policy (run, "", service), because its windows span test cases and an event held back
        per test case could miss its window while the other test cases move the watermark on."""
        if self.model.policy.kind == "window":
            return (run if run is not None else self.cfg.live_stream, "", service)
        return (run if run is not None else self.cfg.live_stream, test_case or "", service)

    def _event(self, item: InputLine, timestamp_ms: int, fields: ParsedFields, rec: RecordIn) -> None:
        """Hold the event back as its stream's pending one (``fields`` as from ``parse_fields``)."""
        service = item.service
        n = self._n_events
        n[service] = n.get(service, 0) + 1
        s = self._stream(item.run, item.test_case, service)
        self._fold_pending(s)
        _, _, _, level, logger, method, message = fields
        self.pending[s] = _Pending(
            Event(service, s[0], s[1], timestamp_ms, level, logger, method, message),
            [], rec.partition, rec.timestamp_ms, self.last_arrival,
        )
        self.pending_dirty.add(s)
        self.pending_deleted.pop(s, None)

    def _continuation(self, c: ContinuationLine) -> None:
        p = self.pending.get(self._stream(c.run, c.test_case, c.service))
        if p is None:
            self._n_continuations["orphan"] += 1
            return
        p.stack.append(c.text)
        self.pending_dirty.add(self._stream(c.run, c.test_case, c.service))
        self._n_continuations["attached"] += 1

    def _flush_counts(self) -> None:
        """Add the per-record counts gathered since the last batch to the Prometheus counters."""
        for is_json, n in self._n_records.items():
            if n:
                self._records_in[is_json].inc(n)
                self._n_records[is_json] = 0
        if self._n_events:
            for service, n in self._n_events.items():
                counter = self._events_in.get(service)
                if counter is None:
                    counter = self._events_in[service] = self.metrics.events_in.labels(service=service)
                counter.inc(n)
            self._n_events.clear()
        for result, n in self._n_continuations.items():
            if n:
                self.metrics.continuation_lines.labels(result=result).inc(n)
                self._n_continuations[result] = 0
        if self._n_late:
            for service, n in self._n_late.items():
                self.metrics.late_events.labels(service=service).inc(n)
            now = time.monotonic()
            if now - self._late_logged_at >= 60.0:  # at most once a minute: the counter has the rest
                self._late_logged_at = now
                log.warning("dropped late events whose window had already closed: %s (lo2_worker_late_events_total; "
                            "key records by service, see docs/worker.md)", dict(self._n_late))
            self._n_late.clear()

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
        if self._windowed:
            self._window_partition[(event.run, event.service)] = p.partition
        late = self.builder.stats.late_events
        closed = self.builder.add(event, source=p.partition)
        if self.builder.stats.late_events != late:  # dropped: its window had closed
            self._n_late[event.service] = self._n_late.get(event.service, 0) + 1
        if closed:
            self.closed.extend(closed)
        self.store.current_partition = saved

    def _fold_pending_of_idle(self, run: str, partition: object, now_ms: int) -> None:
        """The builder's ``before_idle_close``: fold the held-back events of the sequences its idle
        scan of ``run`` (from ``partition``) is about to close.

        Without this, a sequence closed by idleness lost its newest event (still held back for its
        stack lines), and that event later opened a second sequence under the same id.  A held
        event folded here may be recent, so its sequence then stays open (it was not idle after
        all); stack lines of that event arriving after this scan count as orphans.  Rare path: it
        runs only when a run's event time crosses an idle-scan step.
        """
        for s2, p2 in list(self.pending.items()):
            if s2[0] != run or p2.partition != partition or s2 not in self.pending:
                continue
            if self.builder.would_close_idle(file_seq_id(*s2), now_ms):
                self._fold_pending(s2)

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
        self._flush_counts()
        closed, self.closed = self.closed, []
        if closed:
            groups: dict[int, tuple[LoadedModel, list[ClosedSequence]]] = {}
            for c in closed:
                m = self.draining.pop(c.seq_id, self.model)
                groups.setdefault(id(m), (m, []))[1].append(c)
            for model, seqs in groups.values():
                for s in self.scorer.score(self._routable(seqs, model), model):
                    self._emit(s)
        self.metrics.open_sequences.set(len(self.store))
        outputs, self.outputs = self.outputs, []
        return outputs, self.drain_state() if drain else []

    def _routable(self, seqs: list[ClosedSequence], model: LoadedModel) -> list[ClosedSequence]:
        """The sequences ``model`` can score; the others are counted and logged once per service.

        A per-service bundle has detectors only for the services it was trained on (training skips
        one it cannot fit, e.g. ``key`` that no error targets).  Their sequences are not bad input
        (no DLQ record), and one of them must not stop the others of the batch from being scored.
        """
        if not model.bundle.per_service:
            return seqs
        known = model.bundle.detectors
        keep = [c for c in seqs if c.accumulator.service in known]
        if len(keep) == len(seqs):
            return seqs
        for c in seqs:
            service = c.accumulator.service
            if service in known:
                continue
            self.metrics.unscored_sequences.labels(service=service, reason="no_model_for_service").inc()
            if (model.version, service) not in self._unscored_warned:
                self._unscored_warned.add((model.version, service))
                log.warning("model %s has no detector for service %r (per-service bundle for %s): its sequences are "
                            "not scored (lo2_worker_unscored_sequences_total)", model.version, service, sorted(known))
        return keep

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

