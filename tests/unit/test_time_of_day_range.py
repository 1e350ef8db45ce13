"""A log line whose time of day is impossible (``99:99:99.999``, ``24:00:00.000``) is not an event.

It starts like one, so it is *malformed* everywhere: the worker dead-letters it as
``unparsable_line``, both loader paths count and drop it (and attach the stack trace after it to
the event before, as for any malformed line), and the replay sends it along with the event before it
instead of ordering it days later.  Valid range: 00-23 : 00-59 : 00-59 . 000-999.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from batch import native
from batch.loader import FileTask, parse_batch
from shared.errors import PayloadError
from shared.parsing import LineKind, classify, parse_fields, parse_line, time_of_day_ms
from worker.envelopes import ContinuationLine, decode_record, parse_item_fields
from worker.replay import ReplayStats, SeqKey, file_chunks

REST = " [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.X m - msg"
IMPOSSIBLE = ["99:99:99.999", "24:00:00.000", "29:00:00.000", "23:60:00.000", "23:59:60.000", "12:99:00.000"]
BOUNDARY = {"00:00:00.000": 0, "23:59:59.999": 86_399_999, "19:00:00.000": 68_400_000, "20:59:59.000": 75_599_000}
EPOCH = 1_700_006_400  # 2023-11-15T00:00:00Z
ENGINES = ["polars", pytest.param("native", marks=pytest.mark.skipif(not native.available(), reason="batch._native not built"))]


@pytest.mark.parametrize("time", IMPOSSIBLE)
def test_an_impossible_time_is_a_malformed_line_not_an_event(time: str) -> None:
    line = time + REST
    assert parse_line(line) is None
    assert parse_fields(line) is None
    assert classify(line) is LineKind.MALFORMED
    with pytest.raises(ValueError, match="time of day"):
        time_of_day_ms(time)


@pytest.mark.parametrize(("time", "ms"), BOUNDARY.items())
def test_the_edges_of_the_valid_range_still_parse(time: str, ms: int) -> None:
    parsed = parse_line(time + REST)
    assert parsed is not None and parsed.time_of_day_ms == ms
    assert time_of_day_ms(time) == ms


@pytest.mark.parametrize("time", IMPOSSIBLE)
def test_worker_dead_letters_it_as_unparsable_line(time: str) -> None:
    """What the agent does per line (worker/agents.py: decode_record, then parse_item_fields; a
    PayloadError goes to the DLQ with its reason)."""
    value = json.dumps({"service": "token", "run": "LO2_run_1739743201", "test_case": "correct",
                        "lines": ["12:00:00.000" + REST, time + REST, "\tat com.networknt.X.y(X.java:1)"]}).encode()
    items = decode_record(b"LO2_run_1739743201|correct|token", value).items
    assert len(items) == 3
    first = parse_item_fields(items[0], None)
    assert isinstance(first, tuple) and first[1][0] == 12 * 3_600_000
    with pytest.raises(PayloadError) as info:
        parse_item_fields(items[1], None)
    assert info.value.reason == "unparsable_line"
    # the frame after it still belongs to the stream (to the event before, as after any malformed line)
    assert isinstance(parse_item_fields(items[2], None), ContinuationLine)


def _file(*times: str) -> bytes:
    lines = []
    for t in times:
        lines += [t + REST, "\tat com.networknt.X.y(X.java:1)"]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("engine", ENGINES)
def test_loader_counts_it_as_malformed_and_keeps_its_stack_with_the_event_before(engine: str) -> None:
    task = FileTask(Path("token.log"), "LO2_run_x", EPOCH, "correct", "token", False)
    res = parse_batch([task], [_file("12:00:00.000", "99:99:99.999", "23:59:59.999", "24:00:00.000")], 0,
                      trim_mode="none", engine=engine)  # type: ignore[arg-type]
    ev = res.events
    assert ev["line_no"].to_list() == [1, 5]
    # nothing days away from the run: 12:00 that day and 23:59:59.999 the day before (closest to the epoch)
    assert ev["timestamp"].dt.epoch("ms").to_list() == [EPOCH * 1000 + 43_200_000, EPOCH * 1000 - 1]
    assert ev["n_stack_lines"].to_list() == [2, 2]
    st = res.stats[0]
    assert (st.events, st.malformed_lines, st.continuation_lines, st.lines) == (2, 2, 4, 8)
    assert [(p.line_no, p.kind) for p in res.problems] == [(3, "malformed"), (7, "malformed")]


@pytest.mark.skipif(not native.available(), reason="batch._native not built")
@pytest.mark.parametrize(("mode", "n"), [("none", 0), ("lines", 1), ("lines", 2), ("startup", 0)])
def test_loader_paths_agree_on_impossible_times(mode: str, n: int) -> None:
    datas = [_file("99:99:99.999", "12:00:00.000"), _file("12:00:00.000", "24:00:00.000", "12:00:01.000"),
             _file(*IMPOSSIBLE), _file(*BOUNDARY)]
    tasks = [FileTask(Path(f"f{i}.log"), "LO2_run_x", EPOCH, "correct", "token", False) for i in range(len(datas))]
    a = parse_batch(tasks, datas, n, trim_mode=mode, engine="polars")  # type: ignore[arg-type]
    b = parse_batch(tasks, datas, n, trim_mode=mode, engine="native")  # type: ignore[arg-type]
    assert a.events.equals(b.events) and a.sequences.equals(b.sequences)
    assert [asdict(s) for s in a.stats] == [asdict(s) for s in b.stats]
    assert a.problems == b.problems
    assert sum(s.malformed_lines for s in a.stats) == 2 + len(IMPOSSIBLE)


def test_replay_sends_it_with_the_event_before_in_file_order() -> None:
    lines = ["00:00:00.500" + REST, "99:99:99.999" + REST, "\tat frame", "00:00:01.000" + REST]
    stats = ReplayStats()
    chunks = file_chunks(lines, SeqKey("LO2_run_x", "correct", "token"), EPOCH * 1000, 0, stats, "none")
    assert [c.lines for c in chunks] == [tuple(lines[:3]), (lines[3],), ()]
    assert [c.ts_ms for c in chunks] == [EPOCH * 1000 + 500, EPOCH * 1000 + 1000, EPOCH * 1000 + 1000]
    assert stats.orphan_lines == 0
