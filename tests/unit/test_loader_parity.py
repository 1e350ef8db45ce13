"""The loader's Polars parsing gives exactly what shared.parsing.parse_line gives (batch = worker).

The loader does not run ``extract_groups(LINE_REGEX)`` on every line (too slow): it replaces the
regex's head to get the message and splits the rest on spaces.  These tests prove that this equals the
shared definition line by line, on the real token sample and on generated lines built to hit the
ambiguous spots (level words as correlation ids, runs of spaces, tabs, ``-`` tokens, ``]`` in
messages, CRs, non-ASCII).
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch.loader import FileTask, parse_batch, parse_file
from shared.parsing import parse_line, resolve_timestamp_ms

#: Python's ``\s`` counts U+001C..U+001F as white space, Rust's (Unicode White_Space) does not: the one
#: place where the shared regex itself differs between the engines, so generated text avoids them.
_NOT_GENERATED = "\n"  # lines are split on newlines; every other character is fair game
EPOCH = 1_719_592_986  # run light-oauth2-data-1719592986 (v1: the run's end)
_ASCII_TIME = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")


def _expected(lines: list[str], epoch: int) -> dict[int, tuple[object, ...]]:
    """line_no -> the event columns parse_line gives (lines with a non-ASCII "time" excluded)."""
    out = {}
    for i, line in enumerate(lines, start=1):
        p = parse_line(line)
        if p is None or not _ASCII_TIME.match(line):
            continue
        ts = resolve_timestamp_ms(p.time_of_day_ms, epoch * 1000)
        out[i] = (ts, p.thread, p.correlation_id, p.level, p.logger, p.method, p.message)
    return out


def _actual(df: object) -> dict[int, tuple[object, ...]]:
    rows = df.select(  # type: ignore[attr-defined]
        "line_no", "timestamp", "thread", "correlation_id", "level", "logger", "method", "message"
    ).with_columns(timestamp=__import__("polars").col("timestamp").dt.epoch("ms"))
    return {r[0]: tuple(r[1:]) for r in rows.iter_rows()}


def test_real_token_sample_equals_parse_line(real_token_sample: Path) -> None:
    text = real_token_sample.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    df, stats = parse_file(real_token_sample, "light-oauth2-data-1719592986", EPOCH, "correct", "token")
    assert stats.lines == len(lines)
    assert (stats.events, stats.blank_lines, stats.malformed_lines) == (22_660, 1, 0)  # ends in "\n\n"
    expected = _expected(lines, EPOCH)
    assert _actual(df) == expected
    complete = df.drop_nulls(["timestamp", "thread", "level", "logger", "method", "message"]).height
    assert complete / stats.events >= 0.999
    # the run ended 16:43 UTC: every event is on that day, in order of the file
    assert df["timestamp"].dt.date().unique().to_list() == [__import__("datetime").date(2024, 6, 28)]


_LEVELS = st.sampled_from(["DEBUG", "INFO ", "WARN ", "ERROR", "TRACE", "FATAL", "INFO", "DEBUGX"])
_TOKEN = st.one_of(
    st.sampled_from(["", "-", "DEBUG", "INFO", "ERROR", "Qm7rT2xWZ0aKc4Ne-P9sLw", "a]b", "x\ty"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=_NOT_GENERATED), max_size=8),
)
_SPACES = st.sampled_from([" ", "  ", "   ", " " * 9, " " * 17, "\t", " \t "])
_TIME = st.sampled_from(["16:29:40.148", "23:59:59.999", "00:00:00.000", "16:29:4", "1६:29:40.148"])


@st.composite
def log_line(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:  # anything at all
        return draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=_NOT_GENERATED), max_size=40))
    thread = draw(st.sampled_from(["XNIO-1 task-2", "hz._hzInstance_1_dev.partition-operation.thread-8", "", "a - b"]))
    parts = [
        draw(_TIME), " [", thread, "]", draw(_SPACES), draw(_TOKEN), draw(_SPACES), draw(_LEVELS),
        draw(_SPACES), draw(_TOKEN), draw(_SPACES), draw(_TOKEN),
        draw(st.sampled_from([" - ", "  - ", " -", " - - "])),
        draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=_NOT_GENERATED), max_size=30)),
        draw(st.sampled_from(["", "\r", "\r\r", " "])),
    ]
    return "".join(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(log_line(), min_size=1, max_size=25), st.integers(1_600_000_000, 1_800_000_000))
def test_generated_lines_equal_parse_line(lines: list[str], epoch: int) -> None:
    task = FileTask(Path("gen.log"), "LO2_run_x", epoch, "correct", "token", False)
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    res = parse_batch([task], [data], 0)
    assert _actual(res.events) == _expected(lines, epoch)
    st_ = res.stats[0]
    assert st_.lines == len(lines)
    assert st_.lines == (st_.blank_lines + st_.events + st_.continuation_lines
                         + st_.orphan_continuation_lines + st_.malformed_lines)


def test_long_space_runs_take_the_exact_slow_path() -> None:
    line = "16:29:40.148 [XNIO-1 task-2]" + " " * 40 + "cid DEBUG" + " " * 33 + "lg m - msg"
    hz = "16:29:40.149 [hz.thread-1]" + " " * 20 + "INFO" + " " * 12 + "lg m - msg"
    task = FileTask(Path("gen.log"), "LO2_run_x", EPOCH, "correct", "token", False)
    res = parse_batch([task], [f"{line}\n{hz}\n".encode()], 0)
    assert _actual(res.events) == _expected([line, hz], EPOCH)
    assert res.events["correlation_id"].to_list() == ["cid", None]
