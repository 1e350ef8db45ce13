from __future__ import annotations

from pathlib import Path

from shared.parsing import (
    LineKind,
    classify,
    file_seq_id,
    parse_line,
    resolve_timestamp_ms,
    service_from_filename,
)


def test_real_token_sample_parses_completely(real_token_sample: Path) -> None:
    lines = [ln for ln in real_token_sample.read_text(encoding="utf-8").splitlines() if ln.strip()]
    parsed = [parse_line(ln) for ln in lines]
    ok = [p for p in parsed if p is not None and p.level and p.logger and p.method]
    assert len(lines) == 22_660
    assert len(ok) / len(lines) >= 0.999


def test_hazelcast_line_has_no_correlation_id() -> None:
    p = parse_line(
        "09:15:02.007 [hz._hzInstance_1_dev.partition-operation.thread-3]   DEBUG "
        "c.networknt.oauth.cache.UserMapStore load - Load:5f3a9c1e"
    )
    assert p is not None
    assert p.correlation_id is None
    assert p.thread == "hz._hzInstance_1_dev.partition-operation.thread-3"
    assert (p.level, p.logger, p.method, p.message) == (
        "DEBUG", "c.networknt.oauth.cache.UserMapStore", "load", "Load:5f3a9c1e")
    assert p.time_of_day_ms == ((9 * 60 + 15) * 60 + 2) * 1000 + 7


def test_request_line_columns() -> None:
    p = parse_line(
        "16:29:42.425 [XNIO-1 task-2]  Qm7rT2xWZ0aKc4Ne-P9sLw ERROR "
        "c.n.o.t.h.Oauth2TokenPostHandler handleRequest - ApiException"
    )
    assert p is not None
    assert p.correlation_id == "Qm7rT2xWZ0aKc4Ne-P9sLw"
    assert p.level == "ERROR" and p.method == "handleRequest" and p.message == "ApiException"


def test_classify_kinds() -> None:
    assert classify("") is LineKind.BLANK
    assert classify("\tat com.networknt.Handler.handle(Handler.java:42)") is LineKind.CONTINUATION
    assert classify("16:29:4") is LineKind.CONTINUATION
    assert classify("16:29:40.148 [XNIO-1 task-2] garbage") is LineKind.MALFORMED
    # a time of day out of range starts like an event but is not one
    assert classify("24:00:00.000 [XNIO-1 task-2]  cid DEBUG c.n.X m - msg") is LineKind.MALFORMED
    assert classify("23:59:59.999 [XNIO-1 task-2]  cid DEBUG c.n.X m - msg") is LineKind.EVENT


def test_midnight_rollover_both_directions() -> None:
    day = 86_400_000
    start_late_evening = 20 * day + 23 * 3_600_000 + 59 * 60_000  # 23:59 reference (v2: run start)
    ts = resolve_timestamp_ms(30_000, start_late_evening)  # 00:00:30 → next day
    assert ts == 21 * day + 30_000
    end_just_after_midnight = 21 * day + 5 * 60_000  # 00:05 reference (v1: run end)
    ts = resolve_timestamp_ms(23 * 3_600_000 + 58 * 60_000, end_just_after_midnight)
    assert ts == 20 * day + 23 * 3_600_000 + 58 * 60_000  # previous day


def test_seq_id_is_stable_and_hides_label() -> None:
    a = file_seq_id("LO2_run_1739743201", "correct", "token")
    assert a == file_seq_id("LO2_run_1739743201", "correct", "token")
    assert a != file_seq_id("LO2_run_1739743201", "get_token_404", "token")
    assert "correct" not in a


def test_service_from_filename() -> None:
    assert service_from_filename("light-oauth2-oauth2-refresh-token-1.log") == "refresh-token"
    assert service_from_filename("light-oauth2-mysqldb-1.log") is None
    assert service_from_filename("traces_oauth2-token-service.csv") is None


def test_format_time_of_day_is_the_inverse_of_time_of_day_ms() -> None:
    from shared.parsing import MS_PER_DAY, format_time_of_day, time_of_day_ms

    for text in ("00:00:00.000", "09:05:07.003", "16:29:40.148", "23:59:59.999"):
        assert format_time_of_day(time_of_day_ms(text)) == text
        assert format_time_of_day(19_000 * MS_PER_DAY + time_of_day_ms(text)) == text  # any day, UTC
