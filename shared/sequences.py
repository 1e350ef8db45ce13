"""Sequences: which events form one unit of scoring, and a compact running summary of each.

One implementation for batch and worker (DESIGN.md): the worker feeds events one by one into a
:class:`SequenceBuilder`; batch featurizes whole tables with the same policy and the same
arithmetic (``shared.features``), and a parity test proves the two give identical vectors.

* :class:`SequencePolicy` – ``file`` (run, test_case, service: the LO2 paper's unit; complete at an
  end marker or after an idle gap) or ``window`` (run/stream, service, tumbling event-time window;
  complete when that stream's event time passes window end + allowed lateness).  Part of the model
  bundle, so the worker groups exactly as the model was trained.
* :class:`SequenceAccumulator` – counts only (template ids, levels, error codes, hashed tokens,
  stack lines, first/last event time) plus a small ring of redacted evidence lines: memory is
  bounded by the vocabulary and hashing sizes, never by sequence length.  JSON-able, so the worker
  can keep it in a Faust changelog table.
* :class:`SequenceBuilder` – ``add(event) -> closed sequences``, ``end(...)``, ``expire(...)``,
  ``flush()``.  It needs an *encoder* (``Event -> EncodedEvent``, from ``shared.features``) that maps
  a message to its template id and tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import ConfigError, PayloadError
from shared.parsing import file_seq_id
from shared.redaction import redact

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

PolicyKind = Literal["file", "window"]
EVIDENCE_MAX_CHARS = 300
#: Distinct error codes one accumulator keeps; further codes are summed under ``ERR_OTHER``.
MAX_ERROR_CODES = 128
ERR_OTHER = "other"


@dataclass(frozen=True, slots=True)
class Event:
    """One log event as the sequence builder needs it (the worker builds it from ``parse_line``).

    ``run`` is the stream the event belongs to (the LO2 run folder; a live source name otherwise).
    ``test_case`` is only used for the ``file`` key and as metadata, never as a feature.
    """

    service: str
    run: str
    test_case: str
    timestamp_ms: int
    level: str
    logger: str
    method: str
    message: str
    n_stack_lines: int = 0
    stack: str | None = None
    line_no: int = 0


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """What featurization needs to know about one event beyond its level and stack."""

    template_id: int
    error_codes: tuple[str, ...] = ()
    token_ids: tuple[int, ...] = ()
    failure_text: bool = False
    unseen: bool = False


Encoder = Callable[[Event], EncodedEvent]


@dataclass(frozen=True, slots=True)
class SequencePolicy:
    """Which events form one sequence and when it is complete (see the module docstring)."""

    kind: PolicyKind = "file"
    window_seconds: float = 60.0
    allowed_lateness_seconds: float = 5.0
    idle_gap_seconds: float = 180.0

    def __post_init__(self) -> None:
        if self.kind not in ("file", "window"):
            raise ConfigError(f"sequence policy kind must be 'file' or 'window', got {self.kind!r}")
        for name in ("window_seconds", "idle_gap_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sequence policy {name} must be > 0, got {getattr(self, name)!r}")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError(
                f"sequence policy allowed_lateness_seconds must be >= 0, got {self.allowed_lateness_seconds!r}"
            )

    @property
    def window_ms(self) -> int:
        return int(round(self.window_seconds * 1000))

    @property
    def lateness_ms(self) -> int:
        return int(round(self.allowed_lateness_seconds * 1000))

    @property
    def idle_gap_ms(self) -> int:
        return int(round(self.idle_gap_seconds * 1000))

    def window_start_ms(self, timestamp_ms: int) -> int:
        """Start of the tumbling window that holds ``timestamp_ms`` (aligned to the epoch)."""
        return timestamp_ms - timestamp_ms % self.window_ms

    @classmethod
    def from_settings(cls, settings: Settings) -> SequencePolicy:
        """The policy the settings (``LO2_SEQUENCE_POLICY``, ``LO2_WINDOW_SECONDS``, ...) describe."""
        kind = settings.sequence_policy
        if kind not in ("file", "window"):
            raise ConfigError(f"sequence_policy must be 'file' or 'window', got {kind!r}")
        return cls(
            kind="file" if kind == "file" else "window",
            window_seconds=settings.window_seconds,
            allowed_lateness_seconds=settings.allowed_lateness_seconds,
            idle_gap_seconds=settings.idle_gap_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "window_seconds": self.window_seconds,
            "allowed_lateness_seconds": self.allowed_lateness_seconds,
            "idle_gap_seconds": self.idle_gap_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequencePolicy:
        try:
            return cls(
                kind=data["kind"],
                window_seconds=float(data["window_seconds"]),
                allowed_lateness_seconds=float(data["allowed_lateness_seconds"]),
                idle_gap_seconds=float(data["idle_gap_seconds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"sequence policy JSON is malformed: {exc!r} in {data!r}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SequencePolicy:
        return cls.from_dict(json.loads(text))


def window_seq_id(stream: str, service: str, window_start_ms: int) -> str:
    """Stable id of a window sequence (stream = run folder or live source name)."""
    return hashlib.blake2b(f"{stream}|{service}|w{window_start_ms}".encode(), digest_size=8).hexdigest()


def _priority(level: str, enc: EncodedEvent) -> int:
    """Evidence priority: errors first, then warnings and unseen templates, then the rest."""
    if level in ("ERROR", "FATAL"):
        return 3
    if level == "WARN" or enc.unseen:
        return 2
    if enc.error_codes or enc.failure_text:
        return 1
    return 0


@dataclass(slots=True)
class SequenceAccumulator:
    """Running counts of one sequence; bounded memory; JSON-able (``to_dict``/``from_dict``)."""

    seq_id: str
    run: str
    test_case: str
    service: str
    window_start_ms: int | None = None
    n_events: int = 0
    n_stack_lines: int = 0
    n_stack_events: int = 0
    n_error_code_events: int = 0
    n_failure_events: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    template_counts: dict[int, int] = field(default_factory=dict)
    level_counts: dict[str, int] = field(default_factory=dict)
    error_code_counts: dict[str, int] = field(default_factory=dict)
    token_counts: dict[int, int] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    evidence_cap: int = 5

    def add(self, event: Event, enc: EncodedEvent) -> None:
        """Fold one event in (O(tokens of the event))."""
        self.n_events += 1
        ts = event.timestamp_ms
        self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
        self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)
        tc = self.template_counts
        tc[enc.template_id] = tc.get(enc.template_id, 0) + 1
        lc = self.level_counts
        lc[event.level] = lc.get(event.level, 0) + 1
        if event.n_stack_lines > 0:
            self.n_stack_events += 1
            self.n_stack_lines += event.n_stack_lines
        if enc.failure_text:
            self.n_failure_events += 1
        if enc.error_codes:
            self.n_error_code_events += 1
            ec = self.error_code_counts
            for code in enc.error_codes:
                if code not in ec and len(ec) >= MAX_ERROR_CODES:
                    code = ERR_OTHER
                ec[code] = ec.get(code, 0) + 1
        tk = self.token_counts
        for t in enc.token_ids:
            tk[t] = tk.get(t, 0) + 1
        if self.evidence_cap > 0:
            self._offer_evidence(event, enc)

    def _offer_evidence(self, event: Event, enc: EncodedEvent) -> None:
        prio = _priority(event.level, enc)
        ev = self.evidence
        if len(ev) >= self.evidence_cap and (prio == 0 or prio <= min(e["priority"] for e in ev)):
            return  # ties keep the earliest lines (priority 0 never beats a full ring: the hot path)
        line = {
            "priority": prio,
            "line_no": event.line_no,
            "timestamp_ms": event.timestamp_ms,
            "level": event.level,
            "logger": event.logger,
            "method": event.method,
            "template_id": enc.template_id,
            "message": redact(event.message)[:EVIDENCE_MAX_CHARS],
        }
        if event.stack:
            line["stack_head"] = redact(event.stack.split("\n", 1)[0])[:EVIDENCE_MAX_CHARS]
        ev.append(line)
        if len(ev) > self.evidence_cap:
            # drop the lowest priority, latest line
            worst = min(range(len(ev)), key=lambda i: (ev[i]["priority"], -i))
            del ev[worst]

    @property
    def duration_ms(self) -> int:
        if self.first_ms is None or self.last_ms is None:
            return 0
        return self.last_ms - self.first_ms

    @property
    def duration_s(self) -> float:
        return self.duration_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq_id": self.seq_id,
            "run": self.run,
            "test_case": self.test_case,
            "service": self.service,
            "window_start_ms": self.window_start_ms,
            "n_events": self.n_events,
            "n_stack_lines": self.n_stack_lines,
            "n_stack_events": self.n_stack_events,
            "n_error_code_events": self.n_error_code_events,
            "n_failure_events": self.n_failure_events,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            # JSON object keys are strings; ints are restored in from_dict.
            "template_counts": {str(k): v for k, v in self.template_counts.items()},
            "level_counts": dict(self.level_counts),
            "error_code_counts": dict(self.error_code_counts),
            "token_counts": {str(k): v for k, v in self.token_counts.items()},
            "evidence": [dict(e) for e in self.evidence],
            "evidence_cap": self.evidence_cap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequenceAccumulator:
        try:
            return cls(
                seq_id=data["seq_id"],
                run=data["run"],
                test_case=data["test_case"],
                service=data["service"],
                window_start_ms=data["window_start_ms"],
                n_events=int(data["n_events"]),
                n_stack_lines=int(data["n_stack_lines"]),
                n_stack_events=int(data["n_stack_events"]),
                n_error_code_events=int(data["n_error_code_events"]),
                n_failure_events=int(data["n_failure_events"]),
                first_ms=data["first_ms"],
                last_ms=data["last_ms"],
                template_counts={int(k): int(v) for k, v in data["template_counts"].items()},
                level_counts={str(k): int(v) for k, v in data["level_counts"].items()},
                error_code_counts={str(k): int(v) for k, v in data["error_code_counts"].items()},
                token_counts={int(k): int(v) for k, v in data["token_counts"].items()},
                evidence=[dict(e) for e in data["evidence"]],
                evidence_cap=int(data["evidence_cap"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PayloadError("bad_accumulator_state", f"sequence accumulator state is malformed: {exc!r}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SequenceAccumulator:
        return cls.from_dict(json.loads(text))


CloseReason = Literal["end", "idle", "window", "flush"]


@dataclass(frozen=True, slots=True)
class ClosedSequence:
    """A complete sequence, ready to be vectorized and scored."""

    accumulator: SequenceAccumulator
    reason: CloseReason

    @property
    def seq_id(self) -> str:
        return self.accumulator.seq_id


@dataclass(slots=True)
class BuilderStats:
    events: int = 0
    late_events: int = 0
    closed: int = 0
    reopened: int = 0


#: A file sequence this far (event time) behind the newest event anywhere is closed on a quiet
#: input even if its own run never advanced: its end marker was lost (runs are far shorter).
STALE_AFTER_MS = 3_600_000


class SequenceBuilder:
    """Group events into sequences incrementally (the worker's and the parity test's path).

    ``store`` holds the open accumulators keyed by seq id; pass a mapping of your own (e.g. a wrapper
    around a Faust table) to persist them: the builder re-assigns ``store[key] = acc`` after every
    change so a changelog sees each update.  Watermarks and the window index are kept in memory and
    rebuilt from the stored accumulators on construction (after a restart or rebalance).

    Closing rules (event time = the events' own timestamps):

    * ``file``: :meth:`end` (end-of-file marker) closes one sequence; a sequence whose last event is
      ``idle_gap_seconds`` behind the newest event seen anywhere closes as ``idle`` (checked each
      time that newest time crosses a multiple of ``idle_gap/4``, so closing is deterministic for a
      given event order); :meth:`expire` does the same for a wall clock when the input goes quiet.
    * ``window``: a window closes when its stream's (run, service) newest event time reaches
      ``window end + allowed lateness``; a later event for a closed window is *late*: dropped and
      counted in ``stats.late_events``.
    """

    def __init__(
        self,
        policy: SequencePolicy,
        encoder: Encoder,
        *,
        store: MutableMapping[str, SequenceAccumulator] | None = None,
        evidence_cap: int = 5,
        before_idle_close: Callable[[str, object, int], None] | None = None,
    ) -> None:
        self.policy = policy
        #: ``(run, source, now_ms)`` called right before an idle scan of that run and source closes
        #: file sequences: a caller holding events back (the worker keeps each stream's newest
        #: event for its stack lines) folds those of the sequences about to close, so none is cut
        #: off from its last event.  It may call :meth:`add` again.
        self.before_idle_close = before_idle_close
        self.encoder = encoder
        self.store: MutableMapping[str, SequenceAccumulator] = {} if store is None else store
        self.evidence_cap = evidence_cap
        self.stats = BuilderStats()
        self._watermark: dict[tuple[str, str], int] = {}  # (run, service) -> newest event time
        self._global_watermark: int | None = None  # newest event time overall
        # (source, run) -> newest event time; source = the input partition in the worker (None in batch)
        self._run_watermark: dict[tuple[object, str], int] = {}
        self._source_of: dict[str, object] = {}  # seq id -> source it arrives from
        self._closed_end: dict[tuple[str, str], int] = {}  # (run, service) -> end of newest closed window
        #: streams whose ``_closed_end`` moved since :meth:`take_closed_end_changes` (to persist them)
        self._closed_end_changed: set[tuple[str, str]] = set()
        self._windows: dict[tuple[str, str], dict[int, str]] = {}  # (run, service) -> {window start: seq id}
        self._idle_step = max(self.policy.idle_gap_ms // 4, 1)
        self._idle_tick: dict[tuple[object, str], int] = {}  # (source, run) -> last idle-scan tick
        self._file_ids: dict[tuple[str, str, str], str] = {}  # cache of file_seq_id (a hash per event otherwise)
        for key, acc in list(self.store.items()):
            if acc.last_ms is not None:
                self._advance(acc.run, acc.service, acc.last_ms)
            if acc.window_start_ms is not None:
                self._windows.setdefault((acc.run, acc.service), {})[acc.window_start_ms] = key

    def _advance(self, run: str, service: str, ts: int) -> None:
        k = (run, service)
        old = self._watermark.get(k)
        if old is None or ts > old:
            self._watermark[k] = ts
        if self._global_watermark is None or ts > self._global_watermark:
            self._global_watermark = ts

    def key_of(self, event: Event) -> tuple[str, int | None]:
        """(seq id, window start or None) of the sequence this event belongs to."""
        if self.policy.kind == "file":
            k = (event.run, event.test_case, event.service)
            sid = self._file_ids.get(k)
            if sid is None:
                if len(self._file_ids) >= 100_000:
                    self._file_ids.clear()
                sid = self._file_ids[k] = file_seq_id(*k)
            return sid, None
        ws = self.policy.window_start_ms(event.timestamp_ms)
        return window_seq_id(event.run, event.service, ws), ws

    def add(self, event: Event, source: object = None) -> list[ClosedSequence]:
        """Fold one event in; return the sequences this event's time completes (often none).

        ``source`` names the ordered input the event came from (the worker passes the Kafka
        partition; one sequence always arrives from one source).  File sequences are judged idle
        against the event time of their own (source, run) only, see ``_close_idle_files``.
        """
        self.stats.events += 1
        seq_id, ws = self.key_of(event)
        stream = (event.run, event.service)
        if ws is not None:
            closed_end = self._closed_end.get(stream)
            if closed_end is not None and ws + self.policy.window_ms <= closed_end:
                self.stats.late_events += 1
                log.debug("late event dropped: %s/%s window %d already closed", event.run, event.service, ws)
                return []
        acc = self.store.get(seq_id)
        if acc is None:
            acc = SequenceAccumulator(
                seq_id=seq_id,
                run=event.run,
                test_case=event.test_case,
                service=event.service,
                window_start_ms=ws,
                evidence_cap=self.evidence_cap,
            )
            if ws is not None:
                self._windows.setdefault(stream, {})[ws] = seq_id
        acc.add(event, self.encoder(event))
        self.store[seq_id] = acc
        self._advance(event.run, event.service, event.timestamp_ms)
        if self.policy.kind == "window":
            return self._close_windows(stream, self._watermark[stream] - self.policy.lateness_ms, "window")
        # The idle gap is measured against the event time of the sequence's own run *in its own
        # source*, not the newest time seen anywhere: a replay moving on to the next run (hours
        # later) or one partition being consumed ahead of another must not close sequences whose
        # end markers are on their way.  End markers stay the primary close signal.
        src = (source, event.run)
        self._source_of[seq_id] = source
        ts = event.timestamp_ms
        run_wm = self._run_watermark.get(src)
        if run_wm is None or ts > run_wm:
            run_wm = self._run_watermark[src] = ts
        tick = run_wm // self._idle_step
        last_tick = self._idle_tick.get(src)
        if last_tick is None:
            self._idle_tick[src] = tick
        elif tick > last_tick:
            self._idle_tick[src] = tick
            if self.before_idle_close is not None:
                self.before_idle_close(event.run, source, run_wm)
            return self._close_idle_files(run_wm, run=event.run, source=source)
        return []

    def take_closed_end_changes(self) -> dict[tuple[str, str], int]:
        """Window policy: the (run, service) streams whose closed-window mark moved since the last
        call, with the mark (the end of the newest closed window).  A caller that persists open
        sequences persists these too: restored without them, a late event would reopen (and score
        again) a window that was already closed and scored."""
        out = {k: self._closed_end[k] for k in self._closed_end_changed if k in self._closed_end}
        self._closed_end_changed.clear()
        return out

    @property
    def closed_end_dirty(self) -> bool:
        """Whether :meth:`take_closed_end_changes` has something to hand out."""
        return bool(self._closed_end_changed)

    def restore_closed_end(self, run: str, service: str, end_ms: int) -> None:
        """Put back a closed-window mark of :meth:`take_closed_end_changes` (after a restart)."""
        k = (run, service)
        self._closed_end[k] = max(self._closed_end.get(k, end_ms), end_ms)

    def would_close_idle(self, seq_id: str, now_ms: int) -> bool:
        """Whether the open file sequence ``seq_id`` is idle at event time ``now_ms`` (the rule of
        ``_close_idle_files``), for a ``before_idle_close`` callback."""
        acc = self.store.get(seq_id)
        return acc is not None and acc.last_ms is not None and now_ms - acc.last_ms >= self.policy.idle_gap_ms

    def _close_windows(self, stream: tuple[str, str], up_to_ms: int, reason: CloseReason) -> list[ClosedSequence]:
        """Close the windows of ``stream`` whose end is <= ``up_to_ms`` (oldest first)."""
        windows = self._windows.get(stream)
        if not windows:
            return []
        w = self.policy.window_ms
        due = sorted(ws for ws in windows if ws + w <= up_to_ms)
        out: list[ClosedSequence] = []
        for ws in due:
            key = windows.pop(ws)
            if key in self.store:
                out.append(self._pop(key, reason))
            self._closed_end[stream] = max(self._closed_end.get(stream, ws + w), ws + w)
            self._closed_end_changed.add(stream)
        if not windows:
            del self._windows[stream]
        return out

    def _close_idle_files(self, now_ms: int, run: str | None = None, source: object = None) -> list[ClosedSequence]:
        """Close file sequences idle for the gap at ``now_ms``; with ``run``, only that run's from ``source``."""
        gap = self.policy.idle_gap_ms
        due = [
            (acc.first_ms or 0, key)
            for key, acc in list(self.store.items())
            if acc.last_ms is not None and now_ms - acc.last_ms >= gap
            and (run is None or (acc.run == run and self._source_of.get(key) == source))
        ]
        return [self._pop(key, "idle") for _, key in sorted(due)]

    def _pop(self, key: str, reason: CloseReason) -> ClosedSequence:
        acc = self.store.pop(key)
        self._source_of.pop(key, None)
        self.stats.closed += 1
        return ClosedSequence(acc, reason)

    def end(self, run: str, test_case: str, service: str) -> list[ClosedSequence]:
        """End-of-stream marker: close the file sequence (file) or every open window (window) of it."""
        if self.policy.kind == "file":
            key = file_seq_id(run, test_case, service)
            return [self._pop(key, "end")] if key in self.store else []
        return self._close_windows((run, service), 2**62, "end")

    def expire(self, now_ms: int) -> list[ClosedSequence]:
        """Close what is complete at (event or wall) time ``now_ms``, e.g. on a timer when input is quiet.

        file: idle for ``idle_gap``; window: ``now`` past window end + lateness.
        """
        if self.policy.kind == "file":
            return self._close_idle_files(now_ms)
        out: list[ClosedSequence] = []
        for stream in sorted(self._windows):
            out += self._close_windows(stream, now_ms - self.policy.lateness_ms, "window")
        return out

    def expire_quiet(self, quiet_ms: int) -> list[ClosedSequence]:
        """Close what completes when the input has been quiet for ``quiet_ms`` (wall time).

        file: a sequence is idle when its own (source, run) event time plus the quiet time is an
        idle gap past its last event (as in :meth:`add`, a later run or a partition consumed ahead
        does not count), or when the newest event time anywhere is :data:`STALE_AFTER_MS` past it
        (a sequence whose end marker was lost must not stay open forever).
        window: as :meth:`expire` at the newest event time plus the quiet time.
        """
        wm = self._global_watermark
        if wm is None:
            return []
        if self.policy.kind == "window":
            return self.expire(wm + quiet_ms)
        gap = self.policy.idle_gap_ms
        run_max: dict[str, int] = {}
        for (_, run), t in self._run_watermark.items():
            run_max[run] = max(run_max.get(run, t), t)
        due = []
        for key, acc in list(self.store.items()):
            if acc.last_ms is None:
                continue
            if key in self._source_of:
                own = self._run_watermark.get((self._source_of[key], acc.run), acc.last_ms)
            else:  # restored from a changelog and not seen since: its run's newest time
                own = run_max.get(acc.run, acc.last_ms)
            if own + quiet_ms - acc.last_ms >= gap or wm - acc.last_ms >= STALE_AFTER_MS:
                due.append((acc.first_ms or 0, key))
        return [self._pop(key, "idle") for _, key in sorted(due)]

    def flush(self) -> list[ClosedSequence]:
        """End of input: close everything still open (in order of first event time)."""
        keys = sorted(self.store, key=lambda k: (self.store[k].first_ms or 0, k))
        self._windows.clear()
        return [self._pop(k, "flush") for k in keys]

    @property
    def open_sequences(self) -> int:
        return len(self.store)
