"""Scale-out: two worker processes in one group split the partitions and score every sequence once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.worker_harness import (
    Topics,
    base_env,
    read_topic,
    replay,
    scores_by_key,
    spawn_worker,
    wait_until,
    wait_up,
    world,
)

pytestmark = pytest.mark.integration


def test_two_workers_split_partitions_and_score_like_one(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, real_token_sample: Path
) -> None:
    w = world(tmp_path_factory.getbasetemp() / "worker-world", real_token_sample)
    topics = Topics(partitions=4)
    env = base_env(kafka_bootstrap, topics)
    work = tmp_path_factory.mktemp("scale-out")
    a = spawn_worker(env, w.bundle, work, name="a")
    b = spawn_worker(env, w.bundle, work, name="b")
    try:
        wait_up(a)
        wait_up(b)
        time.sleep(3.0)  # the group settles with both members (~1-3 s with the fast settings)
        replay(env, w.root, "--batch-lines", "50")
        wait_until(lambda: a.metric("lo2_worker_sequences_scored_total") + b.metric("lo2_worker_sequences_scored_total")
                   >= len(w.batch), 90, "every sequence scored by the pair", a)
        scores = scores_by_key(read_topic(kafka_bootstrap, topics.scores))
        assert set(scores) == set(w.batch)
        for key, recs in scores.items():
            assert len(recs) == 1, f"{key} scored {len(recs)} times"
            assert recs[0]["score"] == pytest.approx(w.batch[key], rel=1e-9, abs=1e-12), key
            assert recs[0]["event_count"] == w.counts[key]
        events_a, events_b = a.metric("lo2_worker_events_total"), b.metric("lo2_worker_events_total")
        assert events_a > 0 and events_b > 0, f"both workers must take partitions: {events_a} / {events_b}"
        assert events_a + events_b == sum(w.counts.values())
        assert a.metric("lo2_worker_sequences_scored_total") + b.metric("lo2_worker_sequences_scored_total") == len(w.batch)
    finally:
        a.stop()
        b.stop()
