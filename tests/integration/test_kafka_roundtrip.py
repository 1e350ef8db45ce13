"""A real produce/consume round trip through the session's broker (aiokafka, consumer group, commits)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.topics import ensure_topics

pytestmark = pytest.mark.integration


async def _consume(consumer: AIOKafkaConsumer, n: int, timeout_s: float = 30.0) -> list:
    got: list = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(got) < n and loop.time() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            got.extend(records)
    return got


async def test_produce_consume_roundtrip_keeps_keys_order_and_commits(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("roundtrip")
    group = unique_name("roundtrip-group")
    await ensure_topics(kafka_bootstrap, [topic], partitions=3)

    sent = [(f"svc-{i % 5}".encode(), f"line {i}".encode()) for i in range(60)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, key=key, value=value, headers=[("source", b"test")])
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got = await _consume(consumer, len(sent))
        await consumer.commit()
    finally:
        await consumer.stop()

    assert sorted((r.key, r.value) for r in got) == sorted(sent)
    assert all(dict(r.headers) == {"source": b"test"} for r in got)
    # One key, one partition, and the order of a key's records is the order they were sent in.
    partitions_of: dict[bytes, set[int]] = defaultdict(set)
    values_of: dict[bytes, list[bytes]] = defaultdict(list)
    for record in sorted(got, key=lambda r: (r.partition, r.offset)):
        partitions_of[record.key].add(record.partition)
        values_of[record.key].append(record.value)
    assert all(len(parts) == 1 for parts in partitions_of.values())
    assert len({next(iter(p)) for p in partitions_of.values()}) > 1  # keys spread over partitions
    for key, values in values_of.items():
        assert values == [v for k, v in sent if k == key]

    # The group committed: a new member of the same group only sees what was produced afterwards.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"svc-late", value=b"after the commit")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        later = await _consume(consumer, 1)
        more = await consumer.getmany(timeout_ms=500)
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in later] == [(b"svc-late", b"after the commit")]
    assert not any(more.values())
