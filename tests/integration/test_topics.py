"""ensure_topics against the real broker: creates what is missing, never alters what exists."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from shared.errors import BrokerError
from worker.topics import ensure_topics, ensure_topics_sync

pytestmark = pytest.mark.integration


async def test_creates_missing_topics_and_is_idempotent(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    a, b, c = unique_name("lo2.logs"), unique_name("lo2.anomalies"), unique_name("lo2.dlq")
    first = await ensure_topics(kafka_bootstrap, [a, b], partitions=3)
    assert first.created == (a, b) and first.existing == ()
    assert first.partitions == {a: 3, b: 3}

    again = await ensure_topics(kafka_bootstrap, [a, b, c], partitions=3)
    assert again.created == (c,)
    assert again.existing == (a, b)
    assert again.partitions == {a: 3, b: 3, c: 3}
    assert again.mismatched == {}


async def test_existing_topic_with_other_partition_count_is_reported_not_changed(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("lo2.logs")
    await ensure_topics(kafka_bootstrap, [name], partitions=2)
    report = await ensure_topics(kafka_bootstrap, [name], partitions=4)
    assert report.created == ()
    assert report.mismatched == {name: 2}
    assert report.partitions == {name: 2}


async def test_concurrent_callers_both_succeed(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("lo2.race")
    one, two = await asyncio.gather(
        ensure_topics(kafka_bootstrap, [name], partitions=2),
        ensure_topics(kafka_bootstrap, [name], partitions=2),
    )
    assert sorted([one.created, two.created]) == [(), (name,)]
    assert one.partitions == two.partitions == {name: 2}


async def test_bad_topic_config_is_a_clear_error(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("lo2.bad")
    with pytest.raises(BrokerError, match=rf"could not create topic '{name}'.*cleanup.policy"):
        await ensure_topics(
            kafka_bootstrap, [name], partitions=1, configs={"cleanup.policy": "nonsense"}
        )


def test_sync_wrapper_works_inside_and_outside_a_loop(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("lo2.sync")
    assert ensure_topics_sync(kafka_bootstrap, [name], partitions=1).created == (name,)

    async def inside() -> tuple[str, ...]:
        return ensure_topics_sync(kafka_bootstrap, [name], partitions=1).existing

    assert asyncio.run(inside()) == (name,)
