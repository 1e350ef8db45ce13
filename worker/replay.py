"""Replay LO2 data into the input topic: run folders (raw logs) or ``events.parquet``.

The replay is the producer side of the worker's contract (``docs/worker.md``): it sends batch (or
line) envelopes keyed by the sequence key, in timestamp order across all files of a run, and an
end-of-sequence marker after the last line of every (run, test case, service), so file-policy
sequences close exactly where the batch loader's files end.

Why it parses files itself instead of calling the batch loader: the worker package must not import
``batch/`` (dependency rule).  It only needs the time prefix of each line (to order and pace lines
across files) and the event/continuation split (a stack trace travels with its event); the worker
does the real parsing with :mod:`shared.parsing`.  Like the loader, it trims the head of every
file with the same rule (:mod:`shared.startup`: the start-up block by default, or the first N
events in "lines" mode), so a replayed sequence holds the same events as the batch sequence of the
same file.

Pacing: ``speed`` = 0 sends as fast as the broker takes it; ``speed`` = 1 replays in real time
(log-time gaps are slept), 10 ten times faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.errors import BrokerError, DataLayoutError
from shared.parsing import (
    BLANK_CHARS,
    TIME_OF_DAY_REGEX,
    format_time_of_day,
    resolve_timestamp_ms,
    service_from_filename,
    time_of_day_ms,
)
from shared.startup import event_thread, startup_block_events

log = logging.getLogger(__name__)

KeyBy = Literal["sequence", "service"]

_RUN_RE = re.compile(r"(?:light-oauth2-data-(?P<v1>\d{9,11}))|(?:(?:oauth2_logs_)?(?P<run>LO2_run_(?P<v2>\d{9,11})))")
#: An event starts with a clock time; a line with an impossible one (``99:99:99.999 ...``) travels
#: with the event before it, like a malformed line in the loader, and the worker dead-letters it.
_TIME_RE = re.compile("^" + TIME_OF_DAY_REGEX)


@dataclass(frozen=True, slots=True)
class SeqKey:
    run: str | None
    test_case: str | None
    service: str

    def kafka_key(self, key_by: KeyBy) -> bytes:
        """The record key: one sequence always lands on one partition."""
        if key_by == "service":
            return self.service.encode()
        return f"{self.run or ''}|{self.test_case or ''}|{self.service}".encode()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One event line with its continuation lines (or an end-of-file marker when ``lines`` is empty)."""

    ts_ms: int
    key: SeqKey
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutRecord:
    key: bytes
    value: bytes
    ts_ms: int  # log time of the last line (pacing only)
    n_lines: int
    is_end: bool


@dataclass(slots=True)
class ReplayStats:
    records: int = 0
    lines: int = 0
    end_markers: int = 0
    sequences: set[SeqKey] = field(default_factory=set)
    trimmed_events: int = 0
    orphan_lines: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "records": self.records,
            "lines": self.lines,
            "end_markers": self.end_markers,
            "sequences": len(self.sequences),
            "trimmed_events": self.trimmed_events,
            "orphan_lines": self.orphan_lines,
            "seconds": round(self.seconds, 3),
            "lines_per_s": round(self.lines / self.seconds, 1) if self.seconds > 0 else 0.0,
        }


# ------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------


def _run_of(path: Path) -> tuple[str, int] | None:
    m = _RUN_RE.fullmatch(path.name)
    if m is None:
        return None
    if m.group("v1"):
        return path.name, int(m.group("v1"))
    return m.group("run"), int(m.group("v2"))


def discover_run_dirs(root: Path) -> list[tuple[str, int, Path]]:
    """(run id, epoch s, folder) of every run under ``root`` (itself, children or grandchildren), sorted."""
    if not root.is_dir():
        raise DataLayoutError(f"replay source {str(root)!r} is not a folder; expected an LO2 run folder or a folder of runs")
    itself = _run_of(root)
    if itself is not None:
        return [(itself[0], itself[1], root)]
    found = []
    for level in (list(root.iterdir()), [g for c in root.iterdir() if c.is_dir() for g in c.iterdir()]):
        found = [(r[0], r[1], p) for p in level if p.is_dir() and (r := _run_of(p)) is not None]
        if found:
            break
    if not found:
        names = sorted(p.name for p in root.iterdir())[:8]
        raise DataLayoutError(
            f"no LO2 run folders (light-oauth2-data-<epoch> or LO2_run_<epoch>) under {str(root)!r}; found {names}"
        )
    return sorted(found, key=lambda r: (r[1], r[0]))


TrimMode = Literal["startup", "lines", "none"]


def _events_to_drop(events: list[list[str]], trim_mode: TrimMode, trim_init_lines: int) -> int:
    """How many leading events of a file the loader's trim rule drops (see shared.startup)."""
    if trim_mode == "none":
        return 0
    if trim_mode == "lines":
        return min(trim_init_lines, len(events))
    return startup_block_events([event_thread(ev[0]) for ev in events])


def file_chunks(
    lines: Iterable[str], key: SeqKey, reference_ms: int, trim_init_lines: int, stats: ReplayStats,
    trim_mode: TrimMode = "lines",
) -> list[Chunk]:
    """Group a file's lines into events with their continuation lines; trim the head like the loader."""
    events: list[list[str]] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if _TIME_RE.match(line):
            events.append([line])
        elif not line.strip(BLANK_CHARS):
            continue
        elif events:
            events[-1].append(line)
        else:
            stats.orphan_lines += 1
    drop = _events_to_drop(events, trim_mode, trim_init_lines)
    stats.trimmed_events += drop
    chunks = [
        Chunk(resolve_timestamp_ms(time_of_day_ms(ev[0][:12]), reference_ms), key, tuple(ev))
        for ev in events[drop:]
    ]
    end_ts = chunks[-1].ts_ms if chunks else reference_ms
    chunks.append(Chunk(end_ts, key, ()))
    return chunks


def folder_chunks(
    root: Path, trim_init_lines: int, stats: ReplayStats, trim_mode: TrimMode = "lines"
) -> Iterator[Chunk]:
    """Every chunk of every run under ``root``, runs in epoch order, each run merged by timestamp."""
    for run, epoch, path in discover_run_dirs(root):
        per_file: list[list[Chunk]] = []
        for case in sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name):
            for f in sorted(case.iterdir(), key=lambda p: p.name):
                service = service_from_filename(f.name)
                if service is None or not f.is_file():
                    continue
                text = f.read_bytes().decode("utf-8", errors="replace")
                per_file.append(file_chunks(text.splitlines(), SeqKey(run, case.name, service), epoch * 1000,
                                            trim_init_lines, stats, trim_mode))
        # Stable merge: equal timestamps keep file order; the end marker sorts after its file's last line.
        yield from heapq.merge(*per_file, key=lambda c: c.ts_ms)


_PARQUET_COLUMNS = ["run", "test_case", "service", "seq_id", "line_no", "timestamp", "thread", "correlation_id",
                    "level", "logger", "method", "message", "stack"]


def check_source(path: Path) -> None:
    """Fail early, with a :class:`DataLayoutError` that names the path, when ``path`` cannot be replayed.

    A ``.parquet`` path must be a readable Parquet file with the loader's events columns; any other
    path must be an LO2 run folder or a folder of runs (:func:`discover_run_dirs`).  The sources are
    read lazily while records are produced, so without this a wrong path would only fail mid-replay.
    """
    if path.suffix != ".parquet":
        discover_run_dirs(path)
        return
    from shared.tables import checked_parquet_schema  # polars, only for Parquet sources

    if not path.is_file():
        raise DataLayoutError(f"replay source {str(path)!r} is not a file; expected an events.parquet written by `lo2 load`")
    checked_parquet_schema(path, _PARQUET_COLUMNS, "replay source")


def parquet_chunks(path: Path) -> Iterator[Chunk]:
    """Chunks rebuilt from ``events.parquet`` (already trimmed by the loader), in timestamp order."""
    import polars as pl

    df = pl.read_parquet(path, columns=_PARQUET_COLUMNS).sort(["timestamp", "seq_id", "line_no"])
    ts_ms = df.get_column("timestamp").dt.epoch("ms").to_list()
    last_row: dict[SeqKey, int] = {}
    rows = df.drop("timestamp").iter_rows()
    keys: list[SeqKey] = []
    lines: list[tuple[str, ...]] = []
    for i, (run, case, service, _sid, _ln, thread, cid, level, logger, method, message, stack) in enumerate(rows):
        key = SeqKey(run, case, service)
        line = f"{format_time_of_day(ts_ms[i])} [{thread}]  {cid or ''} {level} {logger} {method} - {message}"
        keys.append(key)
        lines.append((line, *stack.split("\n")) if stack else (line,))
        last_row[key] = i
    ends = {i: k for k, i in last_row.items()}
    for i, key in enumerate(keys):
        yield Chunk(ts_ms[i], key, lines[i])
        if i in ends:
            yield Chunk(ts_ms[i], key, ())


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------


def _envelope(key: SeqKey, lines: list[str]) -> bytes:
    doc: dict[str, object] = {"service": key.service}
    if key.run is not None:
        doc["run"] = key.run
    if key.test_case is not None:
        doc["test_case"] = key.test_case
    if len(lines) == 1:
        doc["line"] = lines[0]
    else:
        doc["lines"] = lines
    return json.dumps(doc, separators=(",", ":")).encode()


def end_marker(key: SeqKey) -> bytes:
    doc: dict[str, object] = {"end": True, "service": key.service}
    if key.run is not None:
        doc["run"] = key.run
    if key.test_case is not None:
        doc["test_case"] = key.test_case
    return json.dumps(doc, separators=(",", ":")).encode()


def build_records(
    chunks: Iterable[Chunk],
    *,
    batch_lines: int = 200,
    key_by: KeyBy = "sequence",
    end_markers: bool = True,
    max_span_ms: int | None = None,
    stats: ReplayStats | None = None,
) -> Iterator[OutRecord]:
    """Turn chunks into Kafka records: per-sequence batches of up to ``batch_lines`` lines.

    A batch is sent when it is full, when its sequence ends (followed by the end marker), or, with
    ``max_span_ms``, when the next chunk is that much later in log time (paced replays stay live).
    ``batch_lines=1`` sends one line envelope per line (continuation lines each get their own).
    """
    if batch_lines < 1:
        raise ValueError(f"batch_lines={batch_lines}: expected at least 1")
    st = stats if stats is not None else ReplayStats()
    pending: dict[SeqKey, tuple[int, list[str]]] = {}

    def flush(key: SeqKey, ts: int) -> Iterator[OutRecord]:
        first_ts, buf = pending.pop(key)
        for start in range(0, len(buf), batch_lines):
            part = buf[start : start + batch_lines]
            st.records += 1
            st.lines += len(part)
            yield OutRecord(key.kafka_key(key_by), _envelope(key, part), ts, len(part), False)

    for chunk in chunks:
        key = chunk.key
        if max_span_ms is not None:
            for k in [k for k, (t0, _) in pending.items() if chunk.ts_ms - t0 >= max_span_ms]:
                yield from flush(k, chunk.ts_ms)
        if not chunk.lines:  # end of the file
            if key in pending:
                yield from flush(key, chunk.ts_ms)
            if end_markers:
                st.records += 1
                st.end_markers += 1
                yield OutRecord(key.kafka_key(key_by), end_marker(key), chunk.ts_ms, 0, True)
            continue
        st.sequences.add(key)
        first_ts, buf = pending.setdefault(key, (chunk.ts_ms, []))
        buf.extend(chunk.lines)
        if len(buf) >= batch_lines:
            yield from flush(key, chunk.ts_ms)
    for key in list(pending):
        yield from flush(key, pending[key][0])


# ------------------------------------------------------------------------------------------------
# producing
# ------------------------------------------------------------------------------------------------


async def produce(
    records: Iterable[OutRecord],
    *,
    bootstrap: str,
    topic: str,
    speed: float = 0.0,
    on_record: Callable[[OutRecord], None] | None = None,
) -> int:
    """Send the records (pacing by log time when ``speed`` > 0); return how many were sent.

    Raises :class:`BrokerError` when the producer cannot connect to ``bootstrap``.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1_048_576, max_request_size=4_194_304, acks=1
    )
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        with contextlib.suppress(KafkaError, OSError):
            await producer.stop()
        raise BrokerError(f"cannot connect a producer to {bootstrap}: {type(exc).__name__}: {exc}") from exc
    sent = 0
    # Pacing follows log time forward only: when it jumps back (the next run starts), it goes on
    # from where it was instead of sending the rest at once.
    t_wall0 = time.monotonic()
    target = 0.0
    prev_ts: int | None = None
    futures: list[asyncio.Future[object]] = []
    try:
        for rec in records:
            if speed > 0:
                if prev_ts is not None:
                    target += max(0, rec.ts_ms - prev_ts) / 1000.0 / speed
                prev_ts = rec.ts_ms
                delay = target - (time.monotonic() - t_wall0)
                if delay > 0.001:
                    await asyncio.sleep(delay)
            futures.append(await producer.send(topic, rec.value, key=rec.key))
            sent += 1
            if on_record is not None:
                on_record(rec)
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures.clear()
        await producer.flush()
        if futures:
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
