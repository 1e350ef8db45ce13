"""Bad input: a fuzzed batch of malformed records lands in the DLQ, counted; the good records are all scored."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from shared.records import DlqRecord, ScoreRecord
from tests.integration.worker_harness import (
    Topics,
    base_env,
    produce,
    read_topic,
    replay,
    scores_by_key,
    start_worker,
    wait_until,
    world,
)

pytestmark = pytest.mark.integration

LINE = "16:29:40.148 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - hello"
MAX_BYTES = 20_000


def fuzzed_bad_records(seed: int, n: int) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected DLQ reason): every kind of bad input, with random content."""
    rng = random.Random(seed)

    def junk(k: int) -> str:
        return "".join(rng.choice("abc xyz:,[]{}\"'\\0123") for _ in range(k))

    makers = [
        lambda: (None, ('{"service": "token", "line": ' + junk(rng.randint(0, 30))).encode(), "not_json"),
        lambda: (b"token", b'{"service":"token","line":"' + bytes([0xFF, rng.randint(0x80, 0xBF)]) + junk(5).encode() + b'"}', "invalid_utf8"),
        lambda: (None, json.dumps({"service": "token", "line": rng.choice([1, 2.5, True, None, [LINE], {"l": LINE}])}).encode(), "wrong_type"),
        lambda: (None, json.dumps({"service": "token", "line": LINE, "ts": rng.choice([1e300, -5, "noon", True])}).encode(), "wrong_type"),
        lambda: (None, json.dumps(rng.choice([[LINE], "token", 42, None])).encode(), "wrong_type"),
        lambda: (None, json.dumps({"service": f"nope-{junk(4)}", "line": LINE}).encode(), "unknown_service"),
        lambda: (None, json.dumps({"service": "token", "line": f"16:29:{rng.randint(10, 59)}.148 [{junk(20)}"}).encode(), "unparsable_line"),
        lambda: (b"token", f"16:29:40.{rng.randint(100, 999)} no thread here {junk(10)}".encode(), "unparsable_line"),
        lambda: (None, json.dumps({"service": "token", "line": "x" * (MAX_BYTES + rng.randint(1, 5000))}).encode(), "too_large"),
        lambda: (None, b"", "empty"),
        lambda: (None, f"16:29:40.148 raw line without a key {junk(5)}".encode(), "wrong_type"),
        lambda: (b"\xff\xfe", LINE.encode(), "invalid_utf8"),
    ]
    out = [makers[i % len(makers)]() for i in range(n)]
    rng.shuffle(out)
    return out


def _dlq_value(value: bytes, reason: str) -> bytes:
    if reason == "unparsable_line" and value.startswith(b"{"):
        return str(json.loads(value)["line"]).encode()
    return value


def test_malformed_records_go_to_the_dlq_and_good_ones_are_scored(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, real_token_sample: Path
) -> None:
    w = world(tmp_path_factory.getbasetemp() / "worker-world", real_token_sample)
    topics = Topics()
    # Faust's own sensor is off by default; this worker turns it on so that its branch of the
    # /metrics page (both families on one page) stays covered.
    env = base_env(kafka_bootstrap, topics, LO2_WORKER_MAX_RECORD_BYTES=str(MAX_BYTES), LO2_WORKER_FAUST_METRICS="true")
    worker = start_worker(env, w.bundle, tmp_path_factory.mktemp("bad-input"))
    bad = fuzzed_bad_records(seed=11, n=72)
    try:
        produce(kafka_bootstrap, topics.input, [(k, v) for k, v, _ in bad[:36]])
        replay(env, w.root, "--batch-lines", "50")
        produce(kafka_bootstrap, topics.input, [(k, v) for k, v, _ in bad[36:]])
        wait_until(lambda: worker.metric("lo2_worker_sequences_scored_total") >= len(w.batch)
                   and worker.metric("lo2_worker_invalid_records_total") >= len(bad), 90,
                   "all good sequences scored and all bad records dead-lettered", worker)
        assert worker.proc.poll() is None, "the worker must keep running"
        page = worker.metrics_text()
        assert f"lo2_faust_lo2_test_{topics.tag}_messages_received_total" in page

        dlq = [DlqRecord.model_validate_json(v) for _, v in read_topic(kafka_bootstrap, topics.dlq)]
        assert len(dlq) == len(bad)
        got = Counter((base64.b64decode(d.value_b64), d.reason) for d in dlq)
        # A bad line inside a JSON envelope is dead-lettered as that line (line_index set), the rest whole.
        want = Counter((_dlq_value(v, r), r) for _, v, r in bad)
        assert got == want
        assert all(d.topic == topics.input and d.offset >= 0 for d in dlq)
        expected = Counter(r for _, _, r in bad)
        for reason, n in expected.items():
            sample = f'lo2_worker_invalid_records_total{{reason="{reason}"}}'
            line = next(ln for ln in worker.metrics_text().splitlines() if ln.startswith(sample))
            assert float(line.rsplit(" ", 1)[1]) == n, reason

        scores = scores_by_key(read_topic(kafka_bootstrap, topics.scores))
        assert set(scores) == set(w.batch)
        for key, recs in scores.items():
            assert len(recs) == 1
            assert ScoreRecord.model_validate(recs[0]).score == pytest.approx(w.batch[key], rel=1e-9, abs=1e-12)
    finally:
        worker.stop()
