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
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.plugins.kafka import running_faust_app
from worker.topics import ensure_topics

pytestmark = pytest.mark.integration


def _build_app(
    app_id: str, bootstrap: str, src: str, dst: str, settings: dict[str, Any]
) -> faust.App:
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", **settings)
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


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
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


async def _end_offsets_total(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # topic created moments ago
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_faust_agent_counts_in_a_table_and_survives_a_restart(
    kafka_bootstrap: str, fast_faust_settings: dict[str, Any], unique_name: Callable[[str], str]
) -> None:
    app_id, src, dst = (
        unique_name("lo2-faust-test"),
        unique_name("faust-in"),
        unique_name("faust-out"),
    )
    await ensure_topics(kafka_bootstrap, [src, dst], partitions=2)
    lines = [(f"svc-{i % 3}".encode(), b"x" * (i + 1)) for i in range(30)]

    out = AIOKafkaConsumer(dst, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await out.start()
    try:
        app = _build_app(app_id, kafka_bootstrap, src, dst, fast_faust_settings)
        async with running_faust_app(app):
            await _produce(kafka_bootstrap, src, lines)
            first = await _read(out, len(lines))

        expected = Counter(k.decode() for k, _ in lines)
        assert len(first) == len(lines)
        for service, n in expected.items():
            seen = [r["count"] for r in first if r["service"] == service]
            assert seen == list(range(1, n + 1)), service  # per-key order, table increments
        assert sorted(r["chars"] for r in first) == sorted(len(v) for _, v in lines)
        # The table is Kafka-backed: every update went to its changelog topic.
        assert await _end_offsets_total(kafka_bootstrap, f"{app_id}-counts-changelog") == len(lines)

        # A new app instance with the same id recovers the table from the changelog and resumes
        # from the committed offsets: one new line continues the count instead of restarting it,
        # and no old line is processed again.
        app2 = _build_app(app_id, kafka_bootstrap, src, dst, fast_faust_settings)
        async with running_faust_app(app2):
            await _produce(kafka_bootstrap, src, [(b"svc-0", b"late line")])
            second = await _read(out, 1)
            extra = await out.getmany(timeout_ms=1500)
    finally:
        await out.stop()
    assert second == [
        {"service": "svc-0", "count": expected["svc-0"] + 1, "chars": len(b"late line")}
    ]
    assert not any(extra.values())  # nothing was processed twice
