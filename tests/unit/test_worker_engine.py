"""The worker's engine without Kafka: replayed records -> sequences -> scores equal the batch path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from shared.records import AnomalyRecord, DlqRecord, ScoreRecord
from tests.worker_data import TRIM, batch_scores, build_bundle, load_events, write_runs
from worker.agents import MAX_REWINDS, EngineConfig, RecordIn, StreamEngine
from worker.replay import ReplayStats, build_records, folder_chunks
from worker.scoring import LoadedModel, ModelWatcher, Scorer
from worker.telemetry import WorkerMetrics


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, real_token_sample: Path) -> dict[str, object]:
    root = write_runs(tmp_path_factory.mktemp("runs"), real_token_sample)
    parquet = tmp_path_factory.mktemp("parquet")
    events = load_events(root, parquet)
    bundle_dir = build_bundle(events, tmp_path_factory.mktemp("models"))
    return {"root": root, "events": events, "bundle": bundle_dir, "batch": batch_scores(events, bundle_dir),
            "parquet": parquet / "events.parquet"}


def _run(engine: StreamEngine, root: Path, batch_lines: int, *, extra: list[RecordIn] = ()) -> list[tuple[str, bytes]]:  # type: ignore[assignment]
    stats = ReplayStats()
    records = list(build_records(folder_chunks(root, TRIM, stats), batch_lines=batch_lines, stats=stats))
    out: list[tuple[str, bytes]] = []
    ins = [RecordIn(r.key, r.value, "lo2.logs", 0, i, 1719592986000) for i, r in enumerate(records)]
    ins[len(ins) // 2 : len(ins) // 2] = list(extra)
    ins = [RecordIn(r.key, r.value, r.topic, r.partition, i, r.timestamp_ms) for i, r in enumerate(ins)]  # offsets in order
    for i in range(0, len(ins), 50):  # batches as the agent would see them
        for rec in ins[i : i + 50]:
            engine.handle(rec)
        outputs, _ = engine.finish_batch()
        out.extend((o.kind, o.value) for o in outputs)
    return out


def _engine(bundle: Path) -> StreamEngine:
    metrics = WorkerMetrics.create()
    model = ModelWatcher(bundle, metrics, follow_current=False).load_initial()
    return StreamEngine(model, Scorer(metrics, online=True, seed=1), metrics, EngineConfig(worker_id="t"))


@pytest.mark.parametrize("batch_lines", [1, 64])
def test_stream_scores_equal_batch_scores(world: dict[str, object], batch_lines: int) -> None:
    engine = _engine(world["bundle"])  # type: ignore[arg-type]
    out = _run(engine, world["root"], batch_lines)  # type: ignore[arg-type]
    scores = {}
    for kind, value in out:
        if kind == "score":
            rec = ScoreRecord.model_validate_json(value)
            key = (rec.sequence.run, rec.sequence.test_case, rec.service)
            assert key not in scores, f"sequence {key} scored twice"
            scores[key] = rec
    expected: dict[tuple[str, str, str], float] = world["batch"]  # type: ignore[assignment]
    assert set(scores) == set(expected)
    for key, rec in scores.items():
        assert rec.score == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
        assert rec.closed_by == "end_marker"
    events: pl.DataFrame = world["events"]  # type: ignore[assignment]
    counts = {tuple(k): n for *k, n in events.group_by("run", "test_case", "service").len().iter_rows()}
    assert {k: r.event_count for k, r in scores.items()} == counts
    anomalies = [AnomalyRecord.model_validate_json(v) for k, v in out if k == "anomaly"]
    assert anomalies, "the injected errors should make some sequences anomalous"
    assert all(a.explanation.evidence and a.explanation.top_features for a in anomalies)
    # every evidence line says when it was logged (docs/worker.md), with the explainer as without
    assert all(re.match(r"\d{2}:\d{2}:\d{2}\.\d{3} [A-Z]+ ", line) for a in anomalies for line in a.explanation.evidence)
    assert {a.id for a in anomalies} <= {r.id for r in scores.values()}
    assert engine.store.data == {} and engine.pending == {}
    normal = sum(1 for r in scores.values() if not r.is_anomaly)
    learned = engine.metrics.registry.get_sample_value("lo2_worker_online_learned_sequences_total")
    assert learned == normal, "River learns from the sequences the bundle did not flag, and only those"
    assert all(r.online_score is not None and 0.0 <= r.online_score <= 1.0 for r in scores.values())


def test_bad_records_go_to_the_dlq_and_good_ones_are_still_scored(world: dict[str, object]) -> None:
    bad = [
        RecordIn(None, b"{not json", "lo2.logs", 0, 10_000, 1),
        RecordIn(None, b'{"service": "mysql", "line": "x"}', "lo2.logs", 0, 10_001, 1),
        RecordIn(None, b"\xff\xfe", "lo2.logs", 0, 10_002, 1),
        RecordIn(None, json.dumps({"service": "token", "lines": ["16:29:40.148 [x] broken", 3]}).encode(), "lo2.logs", 0, 10_003, 1),
    ]
    engine = _engine(world["bundle"])  # type: ignore[arg-type]
    out = _run(engine, world["root"], 32, extra=bad)  # type: ignore[arg-type]
    dlq = [DlqRecord.model_validate_json(v) for k, v in out if k == "dlq"]
    assert sorted(d.reason for d in dlq) == ["invalid_utf8", "not_json", "unknown_service", "unparsable_line", "wrong_type"]
    scored = {ScoreRecord.model_validate_json(v).id for k, v in out if k == "score"}
    assert len(scored) == len(world["batch"])  # type: ignore[arg-type]
    invalid = engine.metrics.registry.get_sample_value
    assert invalid("lo2_worker_invalid_records_total", {"reason": "not_json"}) == 1
    # every record read counts in records_total, rejected ones too (offsets run 0..N-1 in _run)
    read = sum(invalid("lo2_worker_records_total", {"form": f}) or 0 for f in ("json", "raw"))
    assert read == engine.offsets[("lo2.logs", 0)] + 1


def test_restored_state_resumes_open_sequences(world: dict[str, object]) -> None:
    """Stop mid-stream, rebuild a new engine from the persisted state only, finish: same scores."""
    stats = ReplayStats()
    records = list(build_records(folder_chunks(world["root"], TRIM, stats), batch_lines=16, stats=stats))  # type: ignore[arg-type]
    table: dict[str, object] = {}
    first = _engine(world["bundle"])  # type: ignore[arg-type]
    scores: dict[str, float] = {}
    half = len(records) // 2
    for i, r in enumerate(records[:half]):
        first.handle(RecordIn(r.key, r.value, "lo2.logs", 0, i, 1))
    outputs, changes = first.finish_batch()
    for ch in changes:
        if ch.value is None:
            table.pop(ch.key, None)
        else:
            table[ch.key] = json.loads(json.dumps(ch.value))
    scores.update({(rec := ScoreRecord.model_validate_json(o.value)).id: rec.score for o in outputs if o.kind == "score"})
    second = _engine(world["bundle"])  # type: ignore[arg-type]
    second.restore(table.items())
    assert len(second.store) > 0 and len(second.pending) > 0
    for i, r in enumerate(records):  # the whole stream again: the first half is skipped by offset
        second.handle(RecordIn(r.key, r.value, "lo2.logs", 0, i, 1))
    outputs, _ = second.finish_batch()
    for o in outputs:
        if o.kind == "score":
            rec = ScoreRecord.model_validate_json(o.value)
            assert rec.id not in scores
            scores[rec.id] = rec.score
    assert sorted(scores.values()) == pytest.approx(sorted(world["batch"].values()))  # type: ignore[attr-defined]


def _records(world: dict[str, object], batch_lines: int = 16) -> list[RecordIn]:
    stats = ReplayStats()
    records = list(build_records(folder_chunks(world["root"], TRIM, stats), batch_lines=batch_lines, stats=stats))  # type: ignore[arg-type]
    return [RecordIn(r.key, r.value, "lo2.logs", 0, i, 1) for i, r in enumerate(records)]


def _scores(engine: StreamEngine) -> dict[str, tuple[float, int]]:
    outputs, _ = engine.finish_batch()
    return {(r := ScoreRecord.model_validate_json(o.value)).id: (r.score, r.event_count) for o in outputs if o.kind == "score"}


def test_a_dropped_record_is_re_read_not_lost(world: dict[str, object]) -> None:
    """Offsets 0..9, then 12, 13 (11 and 10 never came), then the re-read from 10: all processed once."""
    recs = _records(world)
    reference = _engine(world["bundle"])  # type: ignore[arg-type]
    for r in recs:
        reference.handle(r)
    expected = _scores(reference)
    engine = _engine(world["bundle"])  # type: ignore[arg-type]
    for r in recs[:10]:
        engine.handle(r)
    engine.handle(recs[12])  # the hole: 10 and 11 are missing
    assert engine.take_rewinds() == {("lo2.logs", 0): 10}
    engine.handle(recs[13])  # still from the fetch before the seek: ignored, and the seek is asked again
    assert engine.offsets[("lo2.logs", 0)] == 9
    assert engine.take_rewinds() == {("lo2.logs", 0): 10}
    for r in recs[10:]:  # the re-read after the seek
        engine.handle(r)
    assert engine.take_rewinds() == {}
    reg = engine.metrics.registry
    assert reg.get_sample_value("lo2_worker_input_rewinds_total") == 1
    assert reg.get_sample_value("lo2_worker_input_offset_holes_total") == 0
    assert _scores(engine) == expected


def test_a_hole_the_broker_confirms_is_counted_and_skipped(world: dict[str, object]) -> None:
    """When the re-read starts past the hole too (e.g. transaction markers), processing goes on from there."""
    recs = _records(world)
    engine = _engine(world["bundle"])  # type: ignore[arg-type]
    for r in recs[:5]:
        engine.handle(r)
    moved = [RecordIn(r.key, r.value, r.topic, r.partition, r.offset + 2, r.timestamp_ms) for r in recs[5:9]]
    engine.handle(moved[0])  # offset 7 after 4: re-read from 5
    assert engine.take_rewinds() == {("lo2.logs", 0): 5}
    reg = engine.metrics.registry
    for attempt in range(2, MAX_REWINDS + 1):  # each re-read starts at 7 again: asked again
        engine.handle(moved[0])
        assert engine.take_rewinds() == {("lo2.logs", 0): 5}, attempt
    assert reg.get_sample_value("lo2_worker_input_offset_holes_total") == 0
    for r in moved:  # the last re-read: offsets 5 and 6 do not exist
        engine.handle(r)
    assert reg.get_sample_value("lo2_worker_input_rewinds_total") == MAX_REWINDS
    assert reg.get_sample_value("lo2_worker_input_offset_holes_total") == 2
    assert engine.offsets[("lo2.logs", 0)] == moved[-1].offset
    engine.handle(recs[9])  # offset 9 after 10: already processed, not a hole
    assert engine.take_rewinds() == {} and engine.offsets[("lo2.logs", 0)] == moved[-1].offset


def test_hot_reload_keeps_the_old_model_when_the_new_one_is_broken(world: dict[str, object], tmp_path: Path) -> None:
    import shutil

    from shared.bundle import promote

    models = tmp_path / "models"
    good = Path(shutil.copytree(world["bundle"], models / "good"))  # type: ignore[arg-type]
    promote(good, models)
    metrics = WorkerMetrics.create()
    watcher = ModelWatcher(models, metrics, follow_current=True)
    model = watcher.load_initial()
    broken = Path(shutil.copytree(good, models / "broken"))
    (broken / "feature_spec.json").write_text("{}", encoding="utf-8")
    import os

    os.replace(models / "current", models / "current.bak")
    os.symlink("broken", models / "current")
    assert watcher.check(model) is None
    assert metrics.registry.get_sample_value("lo2_worker_model_reloads_total", {"result": "failed"}) == 1
    shutil.copytree(good, models / "second")
    os.replace(models / "current.bak", models / "current")
    (models / "current").unlink()
    os.symlink("second", models / "current")
    new = watcher.check(model)
    assert isinstance(new, LoadedModel) and new.version == "second"
    assert metrics.registry.get_sample_value("lo2_worker_model_info", {"model": "isolation_forest", "version": "second"}) == 1


def test_window_policy_stream_scores_equal_batch_scores(world: dict[str, object], tmp_path: Path) -> None:
    """Window policy: records keyed by service, no end markers; windows close by watermark or idleness."""
    from shared import bundle as bundle_mod
    from shared.features import featurize_events
    from shared.sequences import SequencePolicy

    events: pl.DataFrame = world["events"]  # type: ignore[assignment]
    policy = SequencePolicy(kind="window", window_seconds=10.0, allowed_lateness_seconds=1.0, idle_gap_seconds=30.0)
    bundle_dir = build_bundle(events, tmp_path, "window-test", policy=policy)
    b = bundle_mod.load(bundle_dir)
    fm = featurize_events(events, b.feature_spec)
    expected = {
        (run, service, ws): float(score)
        for (run, service, ws), score in zip(
            fm.meta.select("run", "service", "window_start_ms").iter_rows(), bundle_mod.score(b, fm.X), strict=True
        )
    }
    engine = _engine(bundle_dir)
    stats = ReplayStats()
    records = build_records(folder_chunks(world["root"], TRIM, stats), batch_lines=16, key_by="service",  # type: ignore[arg-type]
                            end_markers=False, stats=stats)
    outputs = []
    for i, r in enumerate(records):
        engine.handle(RecordIn(r.key, r.value, "lo2.logs", 0, i, 1))
        if i % 40 == 0:
            outputs.extend(engine.finish_batch()[0])
    engine.tick(engine.last_arrival + 60.0)  # the stream went idle: fold held-back events, close the rest
    outputs.extend(engine.finish_batch()[0])
    got = {}
    for o in outputs:
        if o.kind == "score":
            rec = ScoreRecord.model_validate_json(o.value)
            assert rec.sequence.window_start is not None and rec.sequence.test_case is None
            key = (rec.sequence.run, rec.service, int(rec.sequence.window_start.timestamp() * 1000))
            assert key not in got, f"window {key} scored twice"
            got[key] = rec.score
    assert engine.builder.stats.late_events == 0
    assert set(got) == set(expected)
    for key, score in got.items():
        assert score == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_replay_from_events_parquet_rebuilds_lines_that_score_like_batch(world: dict[str, object]) -> None:
    """`lo2 replay events.parquet`: lines rebuilt from the columns parse back to the same events."""
    from worker.replay import parquet_chunks

    engine = _engine(world["bundle"])  # type: ignore[arg-type]
    records = list(build_records(parquet_chunks(world["parquet"]), batch_lines=50))  # type: ignore[arg-type]
    for i, r in enumerate(records):
        engine.handle(RecordIn(r.key, r.value, "lo2.logs", 0, i, 1))
    outputs, _ = engine.finish_batch()
    got = {}
    for o in outputs:
        assert o.kind != "dlq", o.value
        if o.kind == "score":
            rec = ScoreRecord.model_validate_json(o.value)
            got[(rec.sequence.run, rec.sequence.test_case, rec.service)] = rec.score
    expected: dict[tuple[str, str, str], float] = world["batch"]  # type: ignore[assignment]
    assert set(got) == set(expected)
    for key, score in got.items():
        assert score == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_tail_deduplicates_and_renders_redacted_text() -> None:
    from datetime import UTC, datetime

    from shared.records import Explanation, ModelRef, SequenceKey
    from worker.tail import Deduplicator, render

    dd = Deduplicator(capacity=2)
    assert [dd.seen(x) for x in ("a", "b", "a", "c", "b", "a")] == [False, False, True, False, False, False]
    t = datetime(2024, 6, 28, 16, 30, 27, 105000, tzinfo=UTC)
    rec = AnomalyRecord(
        id="x" * 32, service="token", sequence=SequenceKey(policy="file", service="token", run="r", test_case="c"),
        start=t, end=t, event_count=3, score=0.7, threshold=0.5, model=ModelRef(name="m", version="v"),
        closed_by="end_marker", detected_at=t,
        explanation=Explanation(method="deviation", evidence=['validate("Basic dGVzdDpzZWNyZXQ=")']),
    )
    text = render(rec)
    assert "16:30:27.105" in text and "r/c" in text and "Basic ***" in text and "dGVzdDpzZWNyZXQ" not in text


def test_a_sequence_closed_as_idle_keeps_its_held_back_last_event(world: dict[str, object]) -> None:
    """Found live: token/A (no end marker) then user/B of the same run minutes later.  A was
    closed as idle without its newest event (held back for stack lines), which then opened a
    second sequence with one event under the same id."""
    run = "LO2_run_1739998000"

    def line(second: int, text: str) -> str:
        return f"10:{second // 60:02d}:{second % 60:02d}.000 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.X handleRequest - {text}"

    def rec(offset: int, service: str, test_case: str, lines: list[str]) -> RecordIn:
        value = json.dumps({"service": service, "run": run, "test_case": test_case, "lines": lines}).encode()
        return RecordIn(None, value, "lo2.logs", 0, offset, 1)

    engine = _engine(world["bundle"])  # type: ignore[arg-type]
    engine.handle(rec(0, "token", "A", [line(s, f"a{s}") for s in range(20)]))
    assert engine.model.policy.idle_gap_seconds == 600.0  # the bundle's policy (tests/worker_data.py)
    engine.handle(rec(1, "user", "B", [line(s, f"b{s}") for s in range(30, 601, 30)]))
    engine.handle(rec(2, "user", "B", [line(s, f"b{s}") for s in range(601, 900, 10)]))
    outputs, _ = engine.finish_batch()
    engine.flush_all()
    more, _ = engine.finish_batch()
    scored = [ScoreRecord.model_validate_json(o.value) for o in [*outputs, *more] if o.kind == "score"]
    token = [r for r in scored if r.service == "token"]
    assert [(r.event_count, r.closed_by) for r in token] == [(20, "idle")]
    assert len({r.id for r in scored}) == len(scored)


def test_a_per_service_bundle_scores_its_services_and_counts_the_others(generated_v2: Path, tmp_path: Path) -> None:
    """Found live: a per-service bundle stopped the worker at start-up (explainer warm-up without a
    service), and a sequence of a service it has no detector for crashed the agent for good."""
    from batch.loader import EVENTS_FILE, load_runs, make_selection
    from batch.train import TrainConfig, train
    from shared.bundle import load

    load_runs(generated_v2, make_selection(seed=1, trim_init_lines=TRIM), tmp_path / "pq", write_sequences=False)
    events = pl.read_parquet(tmp_path / "pq" / EVENTS_FILE)
    covered = ("client", "service", "token", "user")
    result = train(events, TrainConfig(models=("if",), seed=7, per_service=True, services=covered,
                                       model_params={"if": {"n_estimators": 30}}))
    bundle_dir = result.bundles["if"].save(tmp_path / "models" / "if-per-service")
    assert isinstance(load(bundle_dir).explainer_state, dict)

    engine = _engine(bundle_dir)  # loads and warms up one explainer per service
    out = _run(engine, generated_v2, 64)
    scored = [ScoreRecord.model_validate_json(v) for k, v in out if k == "score"]
    anomalies = [AnomalyRecord.model_validate_json(v) for k, v in out if k == "anomaly"]
    assert {r.service for r in scored} == set(covered)
    assert all(a.explanation.method != "evidence_only" for a in anomalies)  # each service's own explainer
    n_seqs = dict(events.group_by("service").agg(pl.col("seq_id").n_unique()).iter_rows())
    assert len(scored) == sum(n_seqs[s] for s in covered)
    sample = engine.metrics.registry.get_sample_value
    for service in set(n_seqs) - set(covered):
        got = sample("lo2_worker_unscored_sequences_total", {"service": service, "reason": "no_model_for_service"})
        assert got == n_seqs[service], service


def test_a_closed_window_stays_closed_after_a_restart(world: dict[str, object], tmp_path: Path) -> None:
    """Found live: after a restart, a late event reopened a window that had been closed and scored,
    and the window was scored again under another record id.  The closed-window mark is state."""
    from shared.sequences import SequencePolicy

    events: pl.DataFrame = world["events"]  # type: ignore[assignment]
    policy = SequencePolicy(kind="window", window_seconds=10.0, allowed_lateness_seconds=1.0, idle_gap_seconds=30.0)
    bundle_dir = build_bundle(events, tmp_path, "window-restart", policy=policy)

    def rec(offset: int, second: int) -> RecordIn:
        line = f"10:00:{second:02d}.000 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.X handleRequest - event {second}"
        return RecordIn(b"token", json.dumps({"service": "token", "run": "LO2_run_1739998000", "line": line}).encode(),
                        "lo2.logs", 0, offset, 1)

    def windows(outputs: list[object]) -> list[int]:
        scored = [ScoreRecord.model_validate_json(o.value) for o in outputs if o.kind == "score"]  # type: ignore[attr-defined]
        return [r.sequence.window_start.second for r in scored if r.sequence.window_start is not None]

    first = _engine(bundle_dir)
    for i, second in enumerate([1, 2, 15, 16]):  # folding 15 moves the watermark past 0-10 + lateness
        first.handle(rec(i, second))
    outputs, changes = first.finish_batch()
    assert windows(outputs) == [0]
    table = {ch.key: json.loads(json.dumps(ch.value)) for ch in changes if ch.value is not None}
    assert any(k.startswith("w|") for k in table), "the closed-window mark must be persisted"

    second = _engine(bundle_dir)
    second.restore(table.items())
    second.handle(rec(4, 3))  # late for the closed window 0-10
    second.handle(rec(5, 17))
    second.tick(second.last_arrival + 120.0)
    outputs, _ = second.finish_batch()
    assert windows(outputs) == [10]
    assert second.metrics.registry.get_sample_value("lo2_worker_late_events_total", {"service": "token"}) == 1
