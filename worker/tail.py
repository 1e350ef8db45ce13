"""Read anomaly records from the anomalies topic: decode, de-duplicate by id, render for people.

De-duplication matters because the worker is at-least-once: after a crash it re-emits the records of
sequences whose input offsets were not committed yet, with the same deterministic ``id``.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime

from pydantic import ValidationError

from shared.records import AnomalyRecord
from shared.redaction import redact

log = logging.getLogger(__name__)


class Deduplicator:
    """Remembers the last ``capacity`` ids; ``seen(id)`` is True for a repeat."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def seen(self, record_id: str) -> bool:
        if record_id in self._ids:
            self._ids.move_to_end(record_id)
            return True
        self._ids[record_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return False


def decode_anomaly(value: bytes) -> AnomalyRecord | None:
    """The record, or ``None`` (logged) when the bytes are not an anomaly record we understand."""
    try:
        return AnomalyRecord.model_validate_json(value)
    except ValidationError as exc:
        log.warning("skipping a record that is not a v1 anomaly record: %s", redact(str(exc))[:300])
        return None


def _hms(t: datetime) -> str:
    return f"{t:%H:%M:%S}.{t.microsecond // 1000:03d}"


def render(rec: AnomalyRecord) -> str:
    """A few readable lines per anomaly (all text already redacted by the worker; redacted again)."""
    seq = rec.sequence
    where = f"{seq.run}/{seq.test_case}" if seq.policy == "file" else f"window {seq.window_start:%H:%M:%S}"
    out = [
        f"[{rec.detected_at:%Y-%m-%d %H:%M:%S}Z] ANOMALY {rec.service} {where}  score {rec.score:.4f} >= {rec.threshold:.4f}"
        f"  ({rec.event_count} events {_hms(rec.start)}..{_hms(rec.end)}, model {rec.model.name}@{rec.model.version},"
        f" closed by {rec.closed_by}, id {rec.id[:12]})",
    ]
    for f in rec.explanation.top_features:
        out.append(f"    {f.name}: {f.value:g} (normal {f.normal_low:g}..{f.normal_high:g}, contribution {f.contribution:+.3f})")
    nn = rec.explanation.nearest_normal
    if nn is not None:
        out.append(f"    nearest normal {nn.seq_id} at distance {nn.distance:.3f}")
    for line in rec.explanation.evidence:
        out.append(f"    | {redact(line)[:240]}")
    return "\n".join(out)


async def iter_anomalies(
    *,
    bootstrap: str,
    topic: str,
    from_beginning: bool,
    idle_timeout_s: float | None,
    dedupe: bool = True,
) -> AsyncIterator[AnomalyRecord]:
    """Anomaly records from ``topic`` (no consumer group, nothing committed); stops after an idle timeout."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    dd = Deduplicator()
    try:
        await consumer.start()  # inside the try: a failed start still closes the client
        while True:
            batch = await consumer.getmany(timeout_ms=int((idle_timeout_s or 1.0) * 1000))
            if not batch:
                if idle_timeout_s is not None:
                    return
                continue
            for messages in batch.values():
                for msg in messages:
                    rec = decode_anomaly(msg.value or b"")
                    if rec is None or (dedupe and dd.seen(rec.id)):
                        continue
                    yield rec
    finally:
        await consumer.stop()


def as_json_line(rec: AnomalyRecord) -> str:
    return json.dumps(json.loads(rec.model_dump_json()), separators=(",", ":"))
