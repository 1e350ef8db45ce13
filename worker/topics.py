"""Create the Kafka topics the worker needs, idempotently, through Kafka's admin API (aiokafka).

Why: Faust declares only its *internal* topics (table changelogs, repartition topics); the source
and sink topics (``lo2.logs``, ``lo2.anomalies``, ``lo2.dlq``) must exist before the worker
subscribes, or its consumer group is assigned nothing until the next metadata refresh.  Relying on
the broker's ``auto.create.topics.enable`` would also give them the broker's default partition
count, and the partition count is part of our keying contract (one sequence, one partition).

``ensure_topics`` creates the missing topics, leaves existing ones alone (it never adds partitions:
that would move keys between partitions), reports both, and waits until every new partition has a
leader so that a producer can write at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import BrokerError, ConfigError
from worker.broker import run_sync

log = logging.getLogger(__name__)

#: Kafka's rule for topic names (kafka.common.internals.Topic): legal characters, at most 249.
_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicsReport:
    """What ``ensure_topics`` found and did.  ``partitions`` maps every requested topic to its count."""

    created: tuple[str, ...]
    existing: tuple[str, ...]
    partitions: dict[str, int] = field(default_factory=dict)
    #: Existing topics whose partition count differs from the one asked for (left unchanged).
    mismatched: dict[str, int] = field(default_factory=dict)


def validate_topic_name(name: str) -> str:
    """Return ``name`` if Kafka accepts it as a topic name, else raise ConfigError saying why."""
    if not _LEGAL_TOPIC.match(name) or name in {".", ".."}:
        raise ConfigError(
            f"invalid Kafka topic name {name!r}: expected 1-249 characters from [a-zA-Z0-9._-], not '.' or '..'"
        )
    return name


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> TopicsReport:
    """Make sure every topic in ``names`` exists; create the missing ones with the given layout.

    Safe to call concurrently from several workers: a topic created by someone else between our
    check and our request counts as existing.  ``configs`` (e.g. ``{"cleanup.policy": "compact"}``)
    apply to the topics this call creates.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, for_code

    wanted = list(dict.fromkeys(validate_topic_name(n) for n in names))
    if partitions < 1:
        raise ConfigError(f"partitions must be >= 1, got {partitions}")
    if replication < 1:
        raise ConfigError(f"replication must be >= 1, got {replication}")
    if not wanted:
        return TopicsReport(created=(), existing=())

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="lo2-topics",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        present = await _partition_counts(admin, wanted)
        missing = [n for n in wanted if n not in present]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(n, partitions, replication, topic_configs=dict(configs or {}))
                    for n in missing
                ],
                timeout_ms=int(timeout_s * 1000),
            )
            for entry in response.topic_errors:
                topic, code = entry[0], entry[1]
                message = entry[2] if len(entry) > 2 else None
                if code == 0:
                    created.append(topic)
                elif code != _TOPIC_ALREADY_EXISTS:
                    err = for_code(code)
                    raise BrokerError(
                        f"could not create topic {topic!r} on {bootstrap} ({partitions} partitions, "
                        f"replication {replication}): {err.__name__}: {message or err.description}"
                    )
            if created:
                await _wait_for_leaders(admin, created, partitions, timeout_s)
            present = await _partition_counts(admin, wanted)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(
            f"topic admin on {bootstrap} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await admin.close()

    existing = tuple(n for n in wanted if n not in created)
    mismatched = {n: present[n] for n in existing if n in present and present[n] != partitions}
    for name, count in mismatched.items():
        log.warning(
            "topic %s exists with %d partitions, not %d; left unchanged (adding partitions moves keys)",
            name,
            count,
            partitions,
        )
    if created:
        log.info(
            "created topics %s (%d partitions) on %s", ", ".join(created), partitions, bootstrap
        )
    return TopicsReport(
        created=tuple(created),
        existing=existing,
        partitions={n: present.get(n, 0) for n in wanted},
        mismatched=mismatched,
    )


def ensure_topics_sync(bootstrap: str, names: Iterable[str], **kwargs: Any) -> TopicsReport:
    """:func:`ensure_topics` for sync callers (CLI commands, fixtures)."""
    names = list(names)
    return run_sync(lambda: ensure_topics(bootstrap, names, **kwargs))


async def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """Partition count of each topic in ``names`` that exists (with no error) on the cluster.

    Lists all topics first: a Metadata request that *names* a missing topic makes a broker with
    ``auto.create.topics.enable`` create it on the spot, with the broker's default partition count.
    """
    existing = set(await admin.list_topics())
    asked = [n for n in names if n in existing]
    if not asked:
        return {}
    counts: dict[str, int] = {}
    for meta in await admin.describe_topics(asked):
        if meta.get("error_code", 0) == 0 and meta.get("partitions"):
            counts[meta["topic"]] = len(meta["partitions"])
    return counts


async def _wait_for_leaders(
    admin: Any, names: list[str], partitions: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        for meta in await admin.describe_topics(sorted(pending)):
            parts = meta.get("partitions") or []
            if (
                meta.get("error_code", 0) == 0
                and len(parts) >= partitions
                and all(p.get("leader", -1) >= 0 for p in parts)
            ):
                pending.discard(meta["topic"])
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BrokerError(
                f"topics {sorted(pending)} were created but have no partition leader after {timeout_s:.0f} s"
            )
        await asyncio.sleep(0.05)
