"""Sequence policy, accumulator and the incremental builder (file and window policies)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ConfigError, PayloadError
from shared.parsing import file_seq_id
from shared.sequences import (
    STALE_AFTER_MS,
    EncodedEvent,
    Event,
    SequenceAccumulator,
    SequenceBuilder,
    SequencePolicy,
    window_seq_id,
)
from shared.settings import Settings

T0 = 1_719_592_980_000  # ms, a multiple of 60 s


def simple_encoder(event: Event) -> EncodedEvent:
    """A stand-in encoder: template id from the message's first word, one token per word."""
    words = event.message.split()
    return EncodedEvent(
        template_id=2 + (len(words[0]) if words else 0) % 3,
        error_codes=tuple(w for w in words if w.startswith("ERR")),
        token_ids=tuple(len(w) for w in words),
        failure_text="fail" in event.message,
        unseen=event.message.startswith("new"),
    )


def ev(t_ms: int, *, run: str = "r1", tc: str = "correct", svc: str = "token", level: str = "DEBUG",
       msg: str = "hello world", stack: str | None = None, line_no: int = 0) -> Event:
    return Event(
        service=svc, run=run, test_case=tc, timestamp_ms=t_ms, level=level, logger="c.n.X", method="m",
        message=msg, n_stack_lines=0 if stack is None else stack.count("\n") + 1, stack=stack, line_no=line_no,
    )


# --- policy ------------------------------------------------------------------------------------------
def test_policy_json_round_trip_and_validation() -> None:
    p = SequencePolicy("window", window_seconds=30, allowed_lateness_seconds=2.5, idle_gap_seconds=10)
    assert SequencePolicy.from_json(p.to_json()) == p
    assert json.loads(p.to_json())["kind"] == "window"
    assert p.window_start_ms(T0 + 31_000) == T0 + 30_000
    with pytest.raises(ConfigError, match="kind"):
        SequencePolicy("session")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window_seconds"):
        SequencePolicy("window", window_seconds=0)
    with pytest.raises(ConfigError, match="allowed_lateness"):
        SequencePolicy("window", allowed_lateness_seconds=-1)
    with pytest.raises(ConfigError, match="malformed"):
        SequencePolicy.from_dict({"kind": "file"})


def test_policy_from_settings() -> None:
    s = Settings(sequence_policy="window", window_seconds=15, allowed_lateness_seconds=1, idle_gap_seconds=7)
    assert SequencePolicy.from_settings(s) == SequencePolicy("window", 15, 1, 7)
    assert SequencePolicy.from_settings(Settings()).kind == "file"


# --- accumulator -------------------------------------------------------------------------------------
def test_accumulator_counts_and_json_round_trip() -> None:
    acc = SequenceAccumulator(seq_id="s", run="r", test_case="correct", service="token")
    acc.add(ev(T0 + 500, msg="one two"), simple_encoder(ev(0, msg="one two")))
    e2 = ev(T0, level="ERROR", msg="fail ERR12014 x", stack="com.X: boom\n\tat a.b(C.java:1)")
    acc.add(e2, simple_encoder(e2))
    assert acc.n_events == 2
    assert (acc.first_ms, acc.last_ms, acc.duration_s) == (T0, T0 + 500, 0.5)
    assert acc.level_counts == {"DEBUG": 1, "ERROR": 1}
    assert acc.error_code_counts == {"ERR12014": 1}
    assert (acc.n_error_code_events, acc.n_failure_events, acc.n_stack_events, acc.n_stack_lines) == (1, 1, 1, 2)
    assert sum(acc.token_counts.values()) == 5
    back = SequenceAccumulator.from_json(acc.to_json())
    assert back == acc
    assert back.to_json() == acc.to_json()
    with pytest.raises(PayloadError) as err:
        SequenceAccumulator.from_dict({"seq_id": "x"})
    assert err.value.reason == "bad_accumulator_state"


def test_evidence_is_bounded_redacted_and_prefers_errors() -> None:
    acc = SequenceAccumulator(seq_id="s", run="r", test_case="c", service="token", evidence_cap=3)
    for i in range(1000):
        e = ev(T0 + i, msg=f"line {i} password = hunter{i}", line_no=i + 1)
        acc.add(e, simple_encoder(e))
    err = ev(T0 + 2000, level="ERROR", msg='{"password":"hunter2"} failed', line_no=2001)
    acc.add(err, simple_encoder(err))
    warn = ev(T0 + 2001, level="WARN", msg="slow", line_no=2002)
    acc.add(warn, simple_encoder(warn))
    assert len(acc.evidence) == 3
    assert [e["level"] for e in sorted(acc.evidence, key=lambda e: -e["priority"])][:2] == ["ERROR", "WARN"]
    text = json.dumps(acc.evidence)
    assert "hunter" not in text and "***" in text
    # the remaining DEBUG line is the earliest one (ties keep the first lines)
    assert min(e["line_no"] for e in acc.evidence) == 1
    # memory does not grow with the sequence: counts are keyed by template/token, not by event
    assert len(acc.template_counts) <= 3 and len(acc.token_counts) < 10


# --- file policy -------------------------------------------------------------------------------------
def test_file_sequences_close_on_end_marker_and_flush() -> None:
    b = SequenceBuilder(SequencePolicy("file", idle_gap_seconds=60), simple_encoder)
    closed = []
    for i in range(10):
        closed += b.add(ev(T0 + i * 100, svc="token"))
        closed += b.add(ev(T0 + i * 100 + 50, svc="user", tc="correct"))
    assert closed == [] and b.open_sequences == 2
    done = b.end("r1", "correct", "token")
    assert [c.seq_id for c in done] == [file_seq_id("r1", "correct", "token")]
    assert done[0].reason == "end" and done[0].accumulator.n_events == 10
    assert b.end("r1", "correct", "token") == []  # already closed
    rest = b.flush()
    assert [(c.accumulator.service, c.reason, c.accumulator.n_events) for c in rest] == [("user", "flush", 10)]
    assert b.open_sequences == 0 and b.stats.closed == 2 and b.stats.events == 20


def test_file_sequences_close_after_an_idle_gap() -> None:
    b = SequenceBuilder(SequencePolicy("file", idle_gap_seconds=10), simple_encoder)
    assert b.add(ev(T0, tc="a")) == []
    assert b.add(ev(T0 + 1000, tc="b")) == []
    out = b.add(ev(T0 + 10_500, tc="b"))  # "a" idle for 10.5 s, "b" only 9.5 s
    assert [(c.accumulator.test_case, c.reason) for c in out] == [("a", "idle")]
    assert [c.accumulator.test_case for c in b.expire(T0 + 30_000)] == ["b"]
    assert b.open_sequences == 0


def test_idle_gap_is_measured_in_the_sequences_own_run() -> None:
    """A replay moving on to a later run (or a partition running ahead) must not close sequences
    of another run whose end markers are still on their way; their own run's time does."""
    b = SequenceBuilder(SequencePolicy("file", idle_gap_seconds=10), simple_encoder)
    assert b.add(ev(T0, run="r1", tc="a")) == []
    # run r2 is hours later: r1's sequence is not idle in r1's own time
    assert b.add(ev(T0 + 3_600_000, run="r2", tc="x")) == []
    # 60 s later in r2: r2's own "x" is idle in r2's time and closes; r1's "a" stays open
    out = b.add(ev(T0 + 3_600_000 + 60_000, run="r2", tc="y"))
    assert [(c.accumulator.run, c.accumulator.test_case, c.reason) for c in out] == [("r2", "x", "idle")]
    assert {(acc.run, acc.test_case) for acc in b.store.values()} == {("r1", "a"), ("r2", "y")}
    # r1's own time passes the gap: now it closes
    out = b.add(ev(T0 + 10_500, run="r1", tc="b"))
    assert [(c.accumulator.run, c.accumulator.test_case, c.reason) for c in out] == [("r1", "a", "idle")]
    assert [c.accumulator.test_case for c in b.end("r1", "b", "token")] == ["b"]


def test_idle_gap_is_measured_per_source() -> None:
    """One sequence always arrives from one partition; another partition consumed ahead of it
    (same run, later event time) must not make it idle."""
    b = SequenceBuilder(SequencePolicy("file", idle_gap_seconds=10), simple_encoder)
    assert b.add(ev(T0, tc="a"), source=1) == []
    assert b.add(ev(T0 + 1000, tc="b"), source=0) == []
    assert b.add(ev(T0 + 30_000, tc="b"), source=0) == []  # partition 0 runs 30 s ahead
    assert {acc.test_case for acc in b.store.values()} == {"a", "b"}
    out = b.add(ev(T0 + 10_500, tc="c"), source=1)  # partition 1's own time passes a's gap
    assert [(c.accumulator.test_case, c.reason) for c in out] == [("a", "idle")]


def test_quiet_input_closes_by_own_run_time_and_stale_sequences() -> None:
    b = SequenceBuilder(SequencePolicy("file", idle_gap_seconds=10), simple_encoder)
    b.add(ev(T0, run="r1", tc="a"), source=0)
    b.add(ev(T0 + 8_000, run="r1", tc="b"), source=0)
    b.add(ev(T0 + 600_000, run="r2", tc="x"), source=1)  # a later run, 10 min ahead
    # 3 s of quiet input: "a" is 8 s behind its own run + 3 s = 11 s >= gap; "b" and "x" are not
    assert [c.accumulator.test_case for c in b.expire_quiet(3_000)] == ["a"]
    assert {acc.test_case for acc in b.store.values()} == {"b", "x"}
    # an end marker lost for an hour of newer event time anywhere: closed even without quiet time
    b.add(ev(T0 + 600_000 + STALE_AFTER_MS, run="r3", tc="z"), source=2)
    assert sorted(c.accumulator.test_case for c in b.expire_quiet(0)) == ["b", "x"]


def test_builder_writes_through_an_external_store_and_resumes_from_it() -> None:
    class RecordingStore(dict[str, SequenceAccumulator]):
        sets = 0

        def __setitem__(self, key: str, value: SequenceAccumulator) -> None:
            type(self).sets += 1
            super().__setitem__(key, value)

    store = RecordingStore()
    b = SequenceBuilder(SequencePolicy("window", window_seconds=10, allowed_lateness_seconds=0), simple_encoder,
                        store=store)
    for i in range(5):
        b.add(ev(T0 + i * 1000))
    assert RecordingStore.sets == 5 and len(store) == 1
    # a restarted worker: state comes back from the (JSON) changelog
    restored = {k: SequenceAccumulator.from_json(v.to_json()) for k, v in store.items()}
    b2 = SequenceBuilder(b.policy, simple_encoder, store=restored)
    out = b2.add(ev(T0 + 10_000))
    assert [(c.reason, c.accumulator.n_events) for c in out] == [("window", 5)]


# --- window policy -----------------------------------------------------------------------------------
def test_windows_close_when_event_time_passes_end_plus_lateness() -> None:
    b = SequenceBuilder(SequencePolicy("window", window_seconds=10, allowed_lateness_seconds=2), simple_encoder)
    assert b.add(ev(T0 + 1_000)) == []
    assert b.add(ev(T0 + 9_000)) == []
    assert b.add(ev(T0 + 11_000)) == []  # next window; the first waits for late events
    assert b.add(ev(T0 + 9_500)) == []  # late but within lateness: accepted
    out = b.add(ev(T0 + 12_000))  # watermark = end (10 s) + lateness (2 s)
    assert len(out) == 1 and out[0].reason == "window"
    acc = out[0].accumulator
    assert acc.seq_id == window_seq_id("r1", "token", T0) and acc.window_start_ms == T0 and acc.n_events == 3
    assert b.add(ev(T0 + 5_000)) == []  # too late: dropped and counted
    assert b.stats.late_events == 1
    # another service has its own event time
    assert b.add(ev(T0 + 1_000, svc="user")) == []
    rest = b.flush()
    assert sorted((c.accumulator.service, c.accumulator.n_events) for c in rest) == [("token", 2), ("user", 1)]


def test_window_end_marker_and_wall_clock_expiry() -> None:
    b = SequenceBuilder(SequencePolicy("window", window_seconds=10, allowed_lateness_seconds=1), simple_encoder)
    for t in (0, 4_000, 10_500):  # 10.5 s < end (10 s) + lateness (1 s): the first window stays open
        assert b.add(ev(T0 + t)) == []
    b.add(ev(T0, svc="user"))
    out = b.end("r1", "ignored", "token")
    assert [(c.reason, c.accumulator.window_start_ms) for c in out] == [("end", T0), ("end", T0 + 10_000)]
    assert [c.accumulator.service for c in b.expire(T0 + 10_999)] == []
    assert [c.accumulator.service for c in b.expire(T0 + 11_000)] == ["user"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 120_000), st.sampled_from(["token", "user"]), st.sampled_from(["r1", "r2"])),
        min_size=1,
        max_size=200,
    ),
    st.integers(1, 30),
    st.integers(0, 5),
)
def test_window_builder_loses_no_event_and_respects_window_bounds(
    items: list[tuple[int, str, str]], window_s: int, lateness_s: int
) -> None:
    policy = SequencePolicy("window", window_seconds=window_s, allowed_lateness_seconds=lateness_s)
    b = SequenceBuilder(policy, simple_encoder)
    closed = []
    for t, svc, run in items:  # arbitrary order: late events happen
        closed += b.add(ev(T0 + t, svc=svc, run=run))
    closed += b.flush()
    assert sum(c.accumulator.n_events for c in closed) + b.stats.late_events == len(items)
    ids = [c.seq_id for c in closed]
    assert len(ids) == len(set(ids)), "a window was emitted twice"
    for c in closed:
        a = c.accumulator
        assert a.window_start_ms is not None and a.first_ms is not None and a.last_ms is not None
        assert a.window_start_ms <= a.first_ms <= a.last_ms < a.window_start_ms + policy.window_ms
        assert a.seq_id == window_seq_id(a.run, a.service, a.window_start_ms)
    if items == sorted(items):  # in event-time order nothing is late
        assert b.stats.late_events == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 600_000), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=200))
def test_file_builder_loses_no_event(items: list[tuple[int, str]]) -> None:
    b = SequenceBuilder(SequencePolicy("file", idle_gap_seconds=30), simple_encoder)
    closed = []
    for t, tc in sorted(items):
        closed += b.add(ev(T0 + t, tc=tc))
    closed += b.flush()
    assert sum(c.accumulator.n_events for c in closed) == len(items)
    by_case: dict[str, list[SequenceAccumulator]] = {}
    for c in closed:
        assert c.reason in ("idle", "flush")
        by_case.setdefault(c.accumulator.test_case, []).append(c.accumulator)
    for accs in by_case.values():  # a file is split only at a silence of at least idle_gap
        accs.sort(key=lambda a: a.first_ms or 0)
        for prev, nxt in zip(accs, accs[1:], strict=False):
            assert prev.last_ms is not None and nxt.first_ms is not None
            assert nxt.first_ms - prev.last_ms >= 30_000
