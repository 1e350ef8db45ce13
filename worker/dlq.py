"""Dead-letter records: what the worker could not use, with the original bytes and the reason.

The worker never stops for bad input: a rejected record (or a single bad line inside a batch) is
counted by reason and produced to the DLQ topic as a :class:`~shared.records.DlqRecord` (JSON), so an
operator can inspect it, fix the producer and replay the original bytes.  The original value is
base64 (it may not be UTF-8) and capped: a record rejected for being huge must not be re-produced at
full size (Kafka's default ``message.max.bytes`` is 1 MiB and base64 adds a third).  The readable
``preview`` and ``message`` go through :func:`shared.redaction.redact` because bad input is still
log text that may carry credentials.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from shared.records import DlqRecord
from shared.redaction import redact

#: Original bytes kept in a DLQ record (the rest is dropped and ``value_truncated`` is set).
MAX_DLQ_VALUE_BYTES = 262_144
PREVIEW_CHARS = 300


def dlq_record(
    *,
    reason: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    worker: str,
    line_index: int | None = None,
    now: datetime | None = None,
) -> DlqRecord:
    """Build the DLQ record of one rejected record (or of one rejected line when ``line_index`` is set)."""
    raw = value or b""
    truncated = len(raw) > MAX_DLQ_VALUE_BYTES
    kept = raw[:MAX_DLQ_VALUE_BYTES]
    preview = redact(kept[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")[:PREVIEW_CHARS])
    return DlqRecord(
        reason=reason,
        message=redact(message)[:1000],
        topic=topic,
        partition=partition,
        offset=offset,
        line_index=line_index,
        key_b64=base64.b64encode(key[:1024]).decode("ascii") if key is not None else None,
        value_b64=base64.b64encode(kept).decode("ascii"),
        value_truncated=truncated,
        preview=preview,
        received_at=now or datetime.now(UTC),
        worker=worker,
    )


def dlq_bytes(record: DlqRecord) -> bytes:
    """The record as it goes on the wire (JSON, UTF-8)."""
    return record.model_dump_json().encode("utf-8")


def original_value(record: DlqRecord) -> bytes:
    """The original (possibly truncated) bytes of a DLQ record, for re-processing."""
    return base64.b64decode(record.value_b64)
