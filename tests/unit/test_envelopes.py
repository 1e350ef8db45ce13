"""Decoding of every input form (worker/envelopes.py): good forms, each kind of bad input, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.errors import PayloadError
from shared.parsing import SERVICES
from shared.records import BatchEnvelope, EndMarker, LineEnvelope
from worker.envelopes import (
    REASONS,
    ContinuationLine,
    EndOfSequence,
    InputLine,
    Limits,
    LineEvent,
    decode_record,
    normalize_service,
    parse_line_item,
    run_epoch_ms,
)

LINE = "16:29:40.148 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - grant_type = client_credentials"
HAZEL = "16:29:41.002 [hz._hzInstance_1_dev.cached.thread-3]   INFO c.h.i.c.ClusterService log - members changed"
STACK = "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:104)"


def _enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _reason(key: bytes | None, value: bytes | None, **kw: object) -> str:
    with pytest.raises(PayloadError) as info:
        decode_record(key, value, **kw)  # type: ignore[arg-type]
    assert info.value.reason in REASONS
    return info.value.reason


# ---------------------------------------------------------------- accepted forms


def test_line_envelope_becomes_one_line_with_run_epoch_reference() -> None:
    doc = {"service": "token", "line": LINE, "run": "LO2_run_1739743201", "test_case": "correct", "host": "h"}
    out = decode_record(None, _enc(doc))
    assert out.errors == []
    assert out.items == [InputLine("token", LINE, "LO2_run_1739743201", "correct", 1739743201000, 0)]


def test_batch_envelope_keeps_order_and_isolates_one_bad_line() -> None:
    doc = {"service": "oauth2-token-service", "lines": [LINE, 17, STACK], "ts": "2024-06-28T16:29:40Z"}
    out = decode_record(b"token", _enc(doc))
    assert [i.line for i in out.items if isinstance(i, InputLine)] == [LINE, STACK]
    assert [i.index for i in out.items if isinstance(i, InputLine)] == [0, 2]
    assert [(e.index, e.reason) for e in out.errors] == [(1, "wrong_type")]
    assert all(i.reference_ms == 1719592180000 for i in out.items if isinstance(i, InputLine))


def test_end_marker() -> None:
    out = decode_record(None, _enc({"end": True, "service": "user", "run": "r", "test_case": "t"}))
    assert out.items == [EndOfSequence("user", "r", "t")]


def test_otlp_json_export_reads_service_name_body_and_time() -> None:
    doc = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "oauth2-refresh-token-service"}},
                        {"key": "lo2.run", "value": {"stringValue": "LO2_run_1739743201"}},
                    ]
                },
                "scopeLogs": [
                    {
                        "scope": {},
                        "logRecords": [
                            {"timeUnixNano": "1719592180148000000", "body": {"stringValue": LINE}},
                            {"body": {"kvlistValue": {}}},
                            {"observedTimeUnixNano": 1719592181000000000, "body": {"stringValue": STACK}},
                        ],
                    }
                ],
            }
        ]
    }
    out = decode_record(None, _enc(doc))
    lines = [i for i in out.items if isinstance(i, InputLine)]
    assert [(i.service, i.line, i.reference_ms, i.run) for i in lines] == [
        ("refresh-token", LINE, 1719592180148, "LO2_run_1739743201"),
        ("refresh-token", STACK, 1719592181000, "LO2_run_1739743201"),
    ]
    assert [(e.index, e.reason) for e in out.errors] == [(1, "wrong_type")]


def test_raw_mode_key_is_service_and_record_time_is_reference() -> None:
    out = decode_record(b"light-oauth2-oauth2-code-1", LINE.encode(), record_time_ms=1719592186000)
    assert out.items == [InputLine("code", LINE, None, None, 1719592186000, 0)]
    # forced raw mode treats even a brace-first value as a line
    out = decode_record(b"code", b'{"not": "an envelope"}', mode="raw", record_time_ms=1)
    assert isinstance(out.items[0], InputLine) and out.items[0].line == '{"not": "an envelope"}'


@pytest.mark.parametrize(
    ("name", "expected"),
    [("token", "token"), ("TOKEN", "token"), ("oauth2-service-service", "service"), ("oauth2-service", "service"),
     ("light-oauth2-oauth2-refresh-token-1.log", "refresh-token"), ("key-1", "key"), ("mysql", None),
     ("", None), ("oauth2-", None)],
)
def test_normalize_service(name: str, expected: str | None) -> None:
    assert normalize_service(name) == expected


def test_run_epoch_from_both_layouts() -> None:
    assert run_epoch_ms("LO2_run_1739743201") == 1739743201000
    assert run_epoch_ms("light-oauth2-data-1719592986") == 1719592986000
    assert run_epoch_ms("live") is None


# ---------------------------------------------------------------- every kind of bad input


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, b"", "empty"),
        (None, None, "empty"),
        (None, b"{" + b" " * 2_000_000 + b"}", "too_large"),
        (None, b'{"service": "token", "line": "\xff\xfe"}', "invalid_utf8"),
        (None, b"{not json", "not_json"),
        (None, b"{" * 100_000, "not_json"),
        (None, b'{"a": ' + b"9" * 5000 + b"}", "not_json"),
        (None, b'{"service": 3, "line": "x"}', "wrong_type"),
        (None, b'{"service": "token", "line": ["x"]}', "wrong_type"),
        (None, b'{"service": "token"}', "wrong_type"),
        (None, b'{"service": "token", "line": "x", "lines": []}', "wrong_type"),
        (None, b'{"service": "token", "lines": "x"}', "wrong_type"),
        (None, b'{"service": "token", "line": "x", "ts": true}', "wrong_type"),
        (None, b'{"service": "token", "line": "x", "ts": 1e300}', "wrong_type"),
        (None, b'{"service": "token", "line": "x", "ts": "yesterday"}', "wrong_type"),
        (None, b'{"service": "token", "line": "x", "ts": "2024-06-28T16:29:40"}', "wrong_type"),
        (None, b'{"service": "token", "end": 1}', "wrong_type"),
        (None, b"[1, 2]", "wrong_type"),
        (None, b'{"service": "mysql", "line": "x"}', "unknown_service"),
        (None, b'{"resourceLogs": [{"resource": {"attributes": []}}]}', "wrong_type"),
        (None, b'{"resourceLogs": {}}', "wrong_type"),
        (None, b"16:29:40.148 raw line without key", "wrong_type"),
        (b"\xff", b"16:29:40.148 raw line", "invalid_utf8"),
        (b"nginx", b"16:29:40.148 raw line", "unknown_service"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(key: bytes | None, value: bytes | None, reason: str) -> None:
    assert _reason(key, value) == reason


def test_limits_apply_to_lines_fields_and_batches() -> None:
    limits = Limits(max_record_bytes=10_000, max_line_chars=50, max_batch_lines=3, max_field_chars=10)
    assert _reason(None, _enc({"service": "token", "line": "x" * 51}), limits=limits) == "too_large"
    assert _reason(None, _enc({"service": "token", "lines": ["a"] * 4}), limits=limits) == "too_large"
    assert _reason(None, _enc({"service": "token", "run": "r" * 11, "line": "x"}), limits=limits) == "too_large"
    out = decode_record(None, _enc({"service": "token", "lines": ["a", "b" * 60]}), limits=limits)
    assert [e.reason for e in out.errors] == ["too_large"] and len(out.items) == 1


# ---------------------------------------------------------------- line parsing


def test_parse_event_continuation_blank_and_malformed() -> None:
    item = InputLine("token", LINE, "LO2_run_1739743201", "correct", 1719592986000, 0)
    event = parse_line_item(item, None)
    assert isinstance(event, LineEvent)
    assert event.timestamp_ms == 1719592180148 and event.parsed.level == "DEBUG"
    hz = parse_line_item(InputLine("token", HAZEL, None, None, 1719592986000, 0), None)
    assert isinstance(hz, LineEvent) and hz.parsed.correlation_id is None
    cont = parse_line_item(InputLine("token", STACK, None, None, None, 0), None)
    assert cont == ContinuationLine("token", None, None, STACK)
    assert parse_line_item(InputLine("token", "   ", None, None, None, 0), None) is None
    with pytest.raises(PayloadError) as info:
        parse_line_item(InputLine("token", "16:29:40.148 [XNIO-1 garbage", None, None, 1, 0), None)
    assert info.value.reason == "unparsable_line"
    with pytest.raises(PayloadError) as info:
        parse_line_item(InputLine("token", LINE, None, None, None, 0), None)
    assert info.value.reason == "wrong_type"
    # the record time stands in when the line carries no reference
    late = parse_line_item(InputLine("token", LINE, None, None, None, 0), 1719592986000)
    assert isinstance(late, LineEvent) and late.timestamp_ms == 1719592180148


def test_real_token_sample_lines_all_parse(real_token_sample: Path) -> None:
    lines = real_token_sample.read_text(encoding="utf-8").splitlines()[:3000]
    doc = {"service": "token", "run": "light-oauth2-data-1719592986", "test_case": "correct", "lines": lines}
    out = decode_record(b"x", _enc(doc))
    assert out.errors == []
    parsed = [parse_line_item(i, None) for i in out.items if isinstance(i, InputLine)]
    events = [p for p in parsed if isinstance(p, LineEvent)]
    assert len(events) == len(lines)
    assert all(e.timestamp_ms // 86_400_000 == 1719592986000 // 86_400_000 for e in events)


# ---------------------------------------------------------------- fuzzing and schema agreement

_text = st.text(max_size=40)
_scalar = st.none() | st.booleans() | st.integers() | st.floats() | _text
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(_text, c, max_size=4), max_leaves=12)
_keys = st.sampled_from(["service", "line", "lines", "ts", "run", "test_case", "host", "end", "resourceLogs"])
_docs = st.dictionaries(_keys, _json | st.sampled_from(SERVICES) | st.just(LINE), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.none() | st.binary(max_size=20), value=st.binary(max_size=300))
def test_fuzz_bytes_never_escape_as_other_errors(key: bytes | None, value: bytes) -> None:
    try:
        decode_record(key, value, record_time_ms=1719592986000)
    except PayloadError as exc:
        assert exc.reason in REASONS


@settings(max_examples=200, deadline=None)
@given(doc=_docs)
def test_fuzz_json_documents_decode_or_fail_with_a_known_reason(doc: dict[str, object]) -> None:
    try:
        out = decode_record(None, json.dumps(doc).encode())
    except PayloadError as exc:
        assert exc.reason in REASONS
        return
    for item in out.items:
        assert item.service in SERVICES
    for err in out.errors:
        assert err.reason in REASONS


@settings(max_examples=200, deadline=None)
@given(doc=_docs)
def test_decoder_accepts_what_the_published_schema_accepts(doc: dict[str, object]) -> None:
    """An envelope valid under the pydantic contract with a known service always decodes."""
    model: type[LineEnvelope] | type[BatchEnvelope] | type[EndMarker]
    if "end" in doc:
        model = EndMarker
    elif "lines" in doc:
        model = BatchEnvelope
    else:
        model = LineEnvelope
    try:
        model.model_validate(doc, strict=True)
    except ValidationError:
        return
    ts = doc.get("ts")
    if normalize_service(str(doc["service"])) is None or (ts is not None and not isinstance(ts, str | int | float)):
        return
    try:
        decode_record(None, json.dumps(doc).encode())
    except PayloadError as exc:
        # the schema cannot express value ranges of ts and the size limits: those are the only rejections
        assert exc.reason in ("wrong_type", "too_large") and "ts" in str(exc), str(exc)


@given(line=st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_fuzz_parse_line_item_returns_a_kind_or_unparsable(line: str) -> None:
    try:
        parse_line_item(InputLine("token", line, None, None, 1719592986000, 0), None)
    except PayloadError as exc:
        assert exc.reason == "unparsable_line"


# --- lone UTF-16 surrogates: valid JSON escapes, but not Unicode text --------------------------


def _batch(lines: list[str], **fields: str) -> bytes:
    return json.dumps({"service": "token", "run": "LO2_run_1739997000", "test_case": "c", "lines": lines, **fields}).encode()


def test_lone_surrogate_in_a_batch_line_is_a_line_error_and_the_rest_decodes() -> None:
    # found live: the anomaly record built from such a line failed to serialise, the agent
    # crashed and the anomaly was lost
    out = decode_record(None, _batch([LINE, "\tat com.example.Foo(\ud800Foo.java:1)", "\tat ok"]))
    assert [item.index for item in out.items] == [0, 2]
    (err,) = out.errors
    assert (err.index, err.reason) == (1, "invalid_utf8") and "surrogate" in err.message
    err.raw.encode("utf-8")  # the DLQ preview itself must be writable


@pytest.mark.parametrize("field", ["service", "run", "test_case", "host"])
def test_lone_surrogate_in_a_field_rejects_the_record(field: str) -> None:
    doc = {"service": "token", "run": "LO2_run_1739997000", "line": LINE, field: "x\udfff"}
    with pytest.raises(PayloadError) as info:
        decode_record(None, json.dumps(doc).encode())
    assert info.value.reason == "invalid_utf8" and field in str(info.value)


def test_lone_surrogate_in_an_otlp_export_rejects_the_record() -> None:
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "a \ud800"}}]}]}]}
    with pytest.raises(PayloadError) as info:
        decode_record(None, json.dumps(doc).encode())
    assert info.value.reason == "invalid_utf8"


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    out = decode_record(None, _batch([LINE + " \U0001f600", LINE + " \\ud800 (a backslash, then text)"]))
    assert len(out.items) == 2 and not out.errors


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=8), max_size=5))
def test_fuzz_decoded_lines_and_errors_are_always_utf8(lines: list[str]) -> None:
    out = decode_record(None, _batch(lines))
    assert len(out.items) + len(out.errors) == len(lines)
    for item in out.items:
        item.line.encode("utf-8")
    for err in out.errors:
        err.raw.encode("utf-8")
