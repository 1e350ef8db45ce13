"""A small Faust app (agent reads a topic, keeps a table, writes another topic) on the real broker.

It runs inside the test's event loop through ``running_faust_app`` (``await app.start()``, wait for
the end of table recovery, ... ``await app.stop()``); docs/kafka.md says why not ``faust.Worker``
and why the test produces only once the app is ready (a Faust 0.15.3 race during recovery can
process a record twice).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.plugins.kafka import running_faust_app
from worker.topics import ensure_topics

pytestmark = pytest.mark.integration


def _build_app(
    app_id: str, bootstrap: str, src: str, dst: str, settings: dict[str, Any], datadir: Path
) -> faust.App:
    # an explicit datadir: Faust's default is "<app id>-data" in the working directory (the checkout)
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", datadir=str(datadir), **settings)
    source = app.topic(src, key_serializer="raw", value_serializer="raw")
    sink = app.topic(dst, key_serializer="raw", value_serializer="json")
    counts = app.Table("counts", default=int, partitions=2)

    @app.agent(source)
    async def count_lines(stream: Any) -> None:
        async for key, value in stream.items():
            service = key.decode()
            counts[service] += 1
            await sink.send(
                key=key, value={"service": service, "count": counts[service], "chars": len(value)}
            )

    return app


async def _produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Send ``records`` in order; returns the (partition, offset) each one got."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        placed = []
        for key, value in records:
            meta = await producer.send_and_wait(topic, key=key, value=value)
            placed.append((meta.partition, meta.offset))
        return placed
    finally:
        await producer.stop()


async def _read(
    consumer: AIOKafkaConsumer, n: int, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < n and loop.time() < deadline:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            out.extend(json.loads(r.value) for r in records)
    return out


async def _read_until(
    consumer: AIOKafkaConsumer,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 60.0,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done(out) and loop.time() < deadline:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            out.extend(json.loads(r.value) for r in records)
    return out


async def _offsets(bootstrap: str, topic: str, group: str | None = None) -> dict[int, int]:
    """End offsets of every partition of ``topic``, or the group's committed offsets (0 if none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # topic created moments ago
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if group is None:
            return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}
    finally:
        await consumer.stop()


#: Told apart from the 30 test lines by its length, so it must be longer than all of them (1..30).
LATE_LINE = b"late line " * 4


async def test_faust_agent_counts_in_a_table_and_survives_a_restart(
    kafka_bootstrap: str, fast_faust_settings: dict[str, Any], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    app_id, src, dst = (
        unique_name("lo2-faust-test"),
        unique_name("faust-in"),
        unique_name("faust-out"),
    )
    await ensure_topics(kafka_bootstrap, [src, dst], partitions=2)
    lines = [(f"svc-{i % 3}".encode(), b"x" * (i + 1)) for i in range(30)]
    expected = Counter(k.decode() for k, _ in lines)

    out = AIOKafkaConsumer(dst, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await out.start()
    try:
        app = _build_app(app_id, kafka_bootstrap, src, dst, fast_faust_settings, tmp_path)
        async with running_faust_app(app):
            placed = await _produce(kafka_bootstrap, src, lines)
            first = await _read(out, len(lines))

        assert len(first) == len(lines)
        for service, n in expected.items():
            seen = [r["count"] for r in first if r["service"] == service]
            assert seen == list(range(1, n + 1)), service  # per-key order, table increments
        assert sorted(r["chars"] for r in first) == sorted(len(v) for _, v in lines)
        # The table is Kafka-backed: every update went to its changelog topic.
        changelog = await _offsets(kafka_bootstrap, f"{app_id}-counts-changelog")
        assert sum(changelog.values()) == len(lines)

        # What the group committed decides where a restart resumes.  Faust commits at least
        # once, not exactly once: under load its last commit can lag the processed offsets
        # (faust-streaming#606), and that tail is replayed.  The test checks the replay is that
        # tail and nothing older, instead of hoping it is empty.
        committed = await _offsets(kafka_bootstrap, src, group=app_id)
        assert sum(committed.values()) > 0
        tail = {
            len(v) for (_, v), (p, off) in zip(lines, placed, strict=True) if off >= committed[p]
        }

        # A new app instance with the same id recovers the table from the changelog and resumes
        # from the committed offsets: the late line continues the count instead of restarting it.
        app2 = _build_app(app_id, kafka_bootstrap, src, dst, fast_faust_settings, tmp_path)
        async with running_faust_app(app2):
            await _produce(kafka_bootstrap, src, [(b"svc-0", LATE_LINE)])
            second = await _read_until(out, lambda got: any(r["chars"] == len(LATE_LINE) for r in got))
            second += await _read(out, 10**6, timeout_s=1.5)  # and whatever else follows
    finally:
        await out.stop()

    late = [r for r in second if r["chars"] == len(LATE_LINE)]
    replays = [r for r in second if r["chars"] != len(LATE_LINE)]
    assert len(late) == 1
    assert {r["chars"] for r in replays} == tail  # the uncommitted tail, all of it, nothing older
    for service, n in expected.items():  # recovered table: counts go on from where they were
        counts = [r["count"] for r in second if r["service"] == service]
        assert counts == list(range(n + 1, n + 1 + len(counts))), service
    replayed_svc0 = sum(1 for r in replays if r["service"] == "svc-0")
    assert late[0] == {
        "service": "svc-0",
        "count": expected["svc-0"] + replayed_svc0 + 1,
        "chars": len(LATE_LINE),
    }
