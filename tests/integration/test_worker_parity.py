"""Parity: sequences replayed through a real broker and the worker get the batch scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.records import AnomalyRecord, ScoreRecord
from tests.integration.worker_harness import (
    Topics,
    base_env,
    read_topic,
    replay,
    scores_by_key,
    start_worker,
    wait_until,
    world,
)

pytestmark = pytest.mark.integration


def test_replayed_sequences_score_like_batch(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, real_token_sample: Path
) -> None:
    """One line per record, then batch envelopes: both times every sequence gets its batch score."""
    w = world(tmp_path_factory.getbasetemp() / "worker-world", real_token_sample)
    topics = Topics()
    env = base_env(kafka_bootstrap, topics)
    worker = start_worker(env, w.bundle, tmp_path_factory.mktemp("parity"))
    try:
        for round_no, batch_lines in enumerate((1, 100), start=1):
            replay(env, w.root, "--batch-lines", str(batch_lines))
            wait_until(lambda n=round_no: worker.metric("lo2_worker_sequences_scored_total") >= n * len(w.batch), 90,
                       f"every sequence of replay {round_no} scored", worker)
        scores = scores_by_key(read_topic(kafka_bootstrap, topics.scores))
        assert set(scores) == set(w.batch)
        for key, recs in scores.items():
            assert len(recs) == 2, f"{key} scored {len(recs)} times in two replays"
            for raw in recs:
                rec = ScoreRecord.model_validate(raw)
                assert rec.score == pytest.approx(w.batch[key], rel=1e-9, abs=1e-12), key
                assert rec.event_count == w.counts[key]
                assert rec.closed_by == "end_marker"
            assert recs[0]["id"] == recs[1]["id"], "same sequence, same model: same deterministic id"
        anomalies = [AnomalyRecord.model_validate_json(v) for _, v in read_topic(kafka_bootstrap, topics.anomalies)]
        flagged = {r["id"] for recs in scores.values() for r in recs if r["is_anomaly"]}
        assert anomalies and {a.id for a in anomalies} == flagged
        assert all(a.explanation.evidence and a.explanation.top_features for a in anomalies)
        text = json.dumps([a.model_dump(mode="json") for a in anomalies])
        # no Basic credential left (light-4j's prose "Basic authentication ..." may stay)
        assert not re.search(r"Basic (?!\*\*\*|authentication\b|credentials\b)[A-Za-z0-9+/=]{8,}", text)
        assert worker.metric("lo2_worker_invalid_records_total") == 0
        assert worker.metric("lo2_worker_events_total") == 2 * sum(w.counts.values())
        # one latency observation per scored sequence (anomaly records are not counted again)
        assert worker.metric("lo2_worker_end_to_end_latency_seconds_count") == 2 * len(w.batch)
    finally:
        worker.stop()
