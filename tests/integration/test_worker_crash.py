"""Crash: SIGKILL the worker mid-replay, restart it: every sequence is scored, with nothing lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.records import AnomalyRecord
from tests.integration.worker_harness import (
    Topics,
    base_env,
    group_lag,
    read_topic,
    replay,
    scores_by_key,
    start_worker,
    wait_until,
    world,
)

pytestmark = pytest.mark.integration


def test_killed_worker_resumes_from_changelog_and_offsets(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, real_token_sample: Path
) -> None:
    w = world(tmp_path_factory.getbasetemp() / "worker-world", real_token_sample)
    topics = Topics()
    env = base_env(kafka_bootstrap, topics)
    work = tmp_path_factory.mktemp("crash")
    first = start_worker(env, w.bundle, work, name="first", log_level="info")
    second = None
    # ~250 s of log time at speed 25: the replay runs ~10 s, so the kill lands in the middle of it.
    feeder = replay(env, w.root, "--batch-lines", "10", "--speed", "25", background=True)
    assert feeder is not None
    try:
        wait_until(lambda: first.metric("lo2_worker_sequences_scored_total") >= 4, 60, "first sequences scored", first)
        open_before = first.metric("lo2_worker_open_sequences") + first.metric("lo2_worker_events_total")
        assert feeder.poll() is None, "the replay finished before the kill; slow it down"
        first.kill()
        assert open_before > 0
        time.sleep(0.5)
        second = start_worker(env, w.bundle, work, name="second", log_level="info")
        assert feeder.wait(timeout=120) == 0, feeder.stderr.read().decode() if feeder.stderr else ""
        wait_until(lambda: len(scores_by_key(read_topic(kafka_bootstrap, topics.scores, idle_s=0.5))) >= len(w.batch),
                   120, "every sequence of the replay scored after the restart", second)
        time.sleep(1.0)  # let re-emissions (if any) land before reading everything

        scores = scores_by_key(read_topic(kafka_bootstrap, topics.scores))
        assert set(scores) == set(w.batch), "a sequence was lost"
        for key, recs in scores.items():
            ids = {r["id"] for r in recs}
            assert len(ids) == 1, f"{key}: one sequence must keep one id across the crash, got {ids}"
            for r in recs:  # re-emitted duplicates are identical: nothing lost, nothing counted twice
                assert r["event_count"] == w.counts[key], key
                assert r["score"] == pytest.approx(w.batch[key], rel=1e-9, abs=1e-12), key
        anomalies = [AnomalyRecord.model_validate_json(v) for _, v in read_topic(kafka_bootstrap, topics.anomalies)]
        unique = {a.id: a for a in anomalies}
        flagged = {recs[0]["id"] for recs in scores.values() if recs[0]["is_anomaly"]}
        assert set(unique) == flagged
        assert len({(a.sequence.run, a.sequence.test_case, a.service) for a in unique.values()}) == len(unique)
        assert second.metric("lo2_worker_sequences_scored_total") > 0, "the restarted worker took over"
        assert second.metric("lo2_worker_input_offset_holes_total") == 0, "input records were skipped"
        # The worker commits input offsets itself, after each checkpoint: all of them, in the end.
        group = env["LO2_APP_ID"]
        wait_until(lambda: all(c == end for c, end in group_lag(kafka_bootstrap, group, topics.input).values()),
                   30, f"the group commits every input offset ({group_lag(kafka_bootstrap, group, topics.input)})", second)
    except BaseException:
        # The info logs (restored offsets, rebalances, skipped input) are what explains a failure here.
        for proc in (first, second):
            if proc is not None:
                proc.dump_tasks()
                print(f"--- {proc.log_path.name}\n{_interesting(proc.log_path)}")
        raise
    finally:
        if feeder.poll() is None:
            feeder.kill()
        first.kill()
        if second is not None:
            second.stop()


def _interesting(log: Path) -> str:
    """The worker log without Faust's start/stop chatter."""
    lines = log.read_text(errors="replace").splitlines()
    noise = ("Starting...", "Stopping...", "Creating topic", "+---", "| ")
    return "\n".join(ln for ln in lines if ln.strip() and not any(n in ln for n in noise))[-20000:]
