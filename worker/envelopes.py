"""Decode every accepted form of input record into lines, end markers and per-line errors.

Pure functions, no Kafka: the agent hands in the record's key and value bytes and gets back
:class:`Decoded` (or a :class:`~shared.errors.PayloadError` whose ``reason`` is the DLQ/metric
label when the whole record is unusable).  Accepted forms (contracts in ``schemas/`` and
``docs/worker.md``):

* **line envelope** ``{"service", "line", "ts"?, "run"?, "test_case"?, "host"?}``;
* **batch envelope** ``{"service", "lines": [...], "ts"?, "run"?, "test_case"?, "host"?}``;
* **end marker** ``{"end": true, "service", "run"?, "test_case"?}`` (closes a file-policy sequence);
* **OTLP/JSON** ``{"resourceLogs": [...]}`` as the OpenTelemetry Collector's Kafka exporter writes
  it: service from the ``service.name`` resource attribute, the line from the log record's body;
* **raw**: key = service, value = the line itself (plain shippers).  In ``auto`` mode a value whose
  first non-blank byte is ``{`` is JSON, anything else is raw.

Why hand-written checks instead of the pydantic models of ``shared/records.py``: this runs for every
record on the hot path, and a plain ``dict`` walk is an order of magnitude cheaper; a unit test
proves both accept the same documents.

Line parsing (:func:`parse_line_item`) is here too, so a record's bad lines can be dead-lettered
individually while the good lines around them go on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from shared.errors import PayloadError
from shared.parsing import (
    SERVICES,
    LineKind,
    ParsedFields,
    ParsedLine,
    classify,
    parse_fields,
    resolve_timestamp_ms,
)

InputMode = Literal["auto", "json", "raw"]
INPUT_MODES: tuple[InputMode, ...] = ("auto", "json", "raw")

#: Every reason a record or line can be rejected with (the label values of the invalid-records counter).
REASONS = (
    "empty",
    "too_large",
    "invalid_utf8",
    "not_json",
    "wrong_type",
    "unknown_service",
    "unparsable_line",
)

_RUN_EPOCH_RE = re.compile(r"(?:LO2_run_|light-oauth2-data-)(\d{9,11})$")
#: A JSON escape of a UTF-16 surrogate (``\ud800``-``\udfff``). Paired ones decode to one
#: character; a lone one decodes to a str that cannot be written as UTF-8 again, which would make
#: every record built from it (score, anomaly, DLQ) fail to serialise.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")

_SERVICE_PREFIXES = ("light-oauth2-oauth2-", "light-oauth2-", "oauth2-")
_SERVICE_SET = frozenset(SERVICES)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size caps that keep one hostile record from costing the worker memory or time."""

    max_record_bytes: int = 1_048_576
    max_line_chars: int = 16_384
    max_batch_lines: int = 10_000
    max_field_chars: int = 256


@dataclass(frozen=True, slots=True)
class InputLine:
    """One raw log line with its stream context."""

    service: str
    line: str
    run: str | None
    test_case: str | None
    reference_ms: int | None  # epoch ms the line's date is resolved against (None: use the record time)
    index: int  # position in the record (0 for single-line records)


@dataclass(frozen=True, slots=True)
class EndOfSequence:
    service: str
    run: str | None
    test_case: str | None


@dataclass(frozen=True, slots=True)
class LineError:
    """A single bad line inside an otherwise good record."""

    index: int
    reason: str
    message: str
    raw: str


@dataclass(slots=True)
class Decoded:
    items: list[InputLine | EndOfSequence] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LineEvent:
    """A parsed event line with its resolved UTC timestamp (epoch ms)."""

    service: str
    run: str | None
    test_case: str | None
    timestamp_ms: int
    parsed: ParsedLine
    line: str


@dataclass(frozen=True, slots=True)
class ContinuationLine:
    """A stack-trace / wrapped line: belongs to the previous event of the same stream."""

    service: str
    run: str | None
    test_case: str | None
    text: str


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def normalize_service(name: str) -> str | None:
    """Map a service name as shippers spell it to our short name; ``None`` when it is not one of ours.

    >>> [normalize_service(n) for n in ("token", "oauth2-token-service", "light-oauth2-oauth2-refresh-token-1", "Service")]
    ['token', 'token', 'refresh-token', 'service']
    >>> normalize_service("mysql") is None
    True
    """
    candidate = name.strip().lower()
    if candidate.endswith(".log"):
        candidate = candidate[:-4]
    if candidate in _SERVICE_SET:
        return candidate
    for prefix in _SERVICE_PREFIXES:
        if candidate.startswith(prefix):
            candidate = candidate[len(prefix) :]
            break
    if candidate in _SERVICE_SET:
        return candidate
    candidate = re.sub(r"-\d+$", "", candidate)
    if candidate in _SERVICE_SET:
        return candidate
    if candidate.endswith("-service"):
        candidate = candidate[: -len("-service")]
    return candidate if candidate in _SERVICE_SET else None


@lru_cache(maxsize=4096)
def run_epoch_ms(run: str | None) -> int | None:
    """Epoch (ms) encoded in an LO2 run folder name, or ``None`` (cached: every record of a run asks)."""
    if not run:
        return None
    m = _RUN_EPOCH_RE.search(run)
    return int(m.group(1)) * 1000 if m else None


def _text_field(doc: dict[str, Any], name: str, limits: Limits, *, required: bool) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise PayloadError("wrong_type", f"field {name!r} is missing; expected a string")
        return None
    if not isinstance(value, str):
        raise PayloadError("wrong_type", f"field {name!r} is {type(value).__name__}; expected a string")
    if len(value) > limits.max_field_chars:
        raise PayloadError(
            "too_large", f"field {name!r} has {len(value)} characters; at most {limits.max_field_chars} allowed"
        )
    return value


def _service(raw: str) -> str:
    service = normalize_service(raw)
    if service is None:
        raise PayloadError("unknown_service", f"service {raw[:80]!r} is not one of {', '.join(SERVICES)}")
    return service


def _reference_ms(ts: Any, run: str | None) -> int | None:
    """The epoch ms a line's time of day is resolved against: ``ts`` if given, else the run's epoch."""
    if ts is None:
        return run_epoch_ms(run)
    if isinstance(ts, bool):
        raise PayloadError("wrong_type", "field 'ts' is a boolean; expected epoch milliseconds or ISO-8601")
    if isinstance(ts, int | float):
        if not math.isfinite(ts) or not 0 <= ts < 1e14:
            raise PayloadError("wrong_type", f"field 'ts' = {ts!r} is not epoch milliseconds (0 .. 1e14)")
        return int(ts)
    if isinstance(ts, str):
        if len(ts) > 64:
            raise PayloadError("too_large", f"field 'ts' has {len(ts)} characters; expected an ISO-8601 time")
        try:
            parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError as exc:
            raise PayloadError("wrong_type", f"field 'ts' = {ts[:64]!r} is not ISO-8601") from exc
        if parsed.tzinfo is None:
            raise PayloadError("wrong_type", f"field 'ts' = {ts!r} has no time zone; expected UTC offset or Z")
        return int(parsed.timestamp() * 1000)
    raise PayloadError("wrong_type", f"field 'ts' is {type(ts).__name__}; expected epoch milliseconds or ISO-8601")


def _line(value: Any, index: int, limits: Limits, where: str) -> str:
    if not isinstance(value, str):
        raise PayloadError("wrong_type", f"{where} is {type(value).__name__}; expected a string")
    if len(value) > limits.max_line_chars:
        raise PayloadError(
            "too_large", f"{where} has {len(value)} characters; at most {limits.max_line_chars} allowed"
        )
    return value


# ------------------------------------------------------------------------------------------------
# the forms
# ------------------------------------------------------------------------------------------------


def _optional_text_ok(value: Any, cap: int) -> bool:
    return value is None or (type(value) is str and len(value) <= cap)


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _lone_surrogates(value: Any, where: str) -> str | None:
    """Where in a decoded JSON value a string holds a lone surrogate (``None``: nowhere)."""
    if isinstance(value, str):
        return where if _has_lone_surrogate(value) else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        if isinstance(k, str) and _has_lone_surrogate(k):
            return f"a key in {where}"
        found = _lone_surrogates(v, f"{where}[{k!r}]")
        if found:
            return found
    return None


def _surrogate_error(where: str) -> PayloadError:
    return PayloadError("invalid_utf8", f"{where} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff): not valid Unicode")


def _decode_envelope(doc: dict[str, Any], limits: Limits, suspect: bool = False) -> Decoded:
    """One envelope, batch or end marker.  ``suspect``: the JSON text holds a surrogate escape, so
    every string is checked; a bad batch line becomes a line error, anything else fails the record."""
    bad_lines: frozenset[int] = frozenset()
    if suspect:
        lines_value = doc.get("lines")
        if isinstance(lines_value, list):
            bad_lines = frozenset(i for i, v in enumerate(lines_value) if isinstance(v, str) and _has_lone_surrogate(v))
        rest = {k: v for k, v in doc.items() if k != "lines"}
        where = _lone_surrogates(rest, "record")
        if where:
            raise _surrogate_error(where)
    get, cap = doc.get, limits.max_field_chars
    service_raw, run, test_case = get("service"), get("run"), get("test_case")
    # One cheap test for the usual case; _text_field explains (and raises) when it fails.
    if not (type(service_raw) is str and len(service_raw) <= cap and _optional_text_ok(run, cap)
            and _optional_text_ok(test_case, cap) and _optional_text_ok(get("host"), cap)):
        service_raw = _text_field(doc, "service", limits, required=True)
        run = _text_field(doc, "run", limits, required=False)
        test_case = _text_field(doc, "test_case", limits, required=False)
        _text_field(doc, "host", limits, required=False)
    assert service_raw is not None
    service = _service(service_raw)
    out = Decoded()
    if "end" in doc:
        if doc["end"] is not True:
            raise PayloadError("wrong_type", f"field 'end' is {doc['end']!r}; expected true")
        out.items.append(EndOfSequence(service, run, test_case))
        return out
    reference = _reference_ms(doc.get("ts"), run)
    has_line, has_lines = "line" in doc, "lines" in doc
    if has_line == has_lines:
        raise PayloadError("wrong_type", "envelope needs exactly one of 'line' (a string) or 'lines' (a list of strings)")
    if has_line:
        out.items.append(InputLine(service, _line(doc["line"], 0, limits, "field 'line'"), run, test_case, reference, 0))
        return out
    lines = doc["lines"]
    if not isinstance(lines, list):
        raise PayloadError("wrong_type", f"field 'lines' is {type(lines).__name__}; expected a list of strings")
    if len(lines) > limits.max_batch_lines:
        raise PayloadError("too_large", f"batch has {len(lines)} lines; at most {limits.max_batch_lines} allowed")
    max_chars, items = limits.max_line_chars, out.items
    for i, value in enumerate(lines):
        if type(value) is str and len(value) <= max_chars and not (bad_lines and i in bad_lines):
            items.append(InputLine(service, value, run, test_case, reference, i))
            continue
        if i in bad_lines:
            exc = _surrogate_error(f"lines[{i}]")
            out.errors.append(LineError(i, exc.reason, str(exc), value.encode("utf-8", "backslashreplace").decode()[:200]))
            continue
        try:  # not a string or too long: _line says which
            items.append(InputLine(service, _line(value, i, limits, f"lines[{i}]"), run, test_case, reference, i))
        except PayloadError as exc:
            out.errors.append(LineError(i, exc.reason, str(exc), value if isinstance(value, str) else repr(value)[:200]))
    return out


def _attributes(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise PayloadError("wrong_type", f"{where} is {type(value).__name__}; expected a list of key/value objects")
    attrs: dict[str, Any] = {}
    for kv in value:
        if isinstance(kv, dict) and isinstance(kv.get("key"), str) and isinstance(kv.get("value"), dict):
            attrs[kv["key"]] = kv["value"].get("stringValue")
    return attrs


def _otlp_time_ms(record: dict[str, Any]) -> int | None:
    for name in ("timeUnixNano", "observedTimeUnixNano"):
        raw = record.get(name)
        if raw in (None, "", 0, "0"):
            continue
        try:
            nanos = int(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else None
        except ValueError:
            nanos = None
        if nanos is None or not 0 < nanos < 10**20:
            raise PayloadError("wrong_type", f"{name} = {str(raw)[:40]!r} is not epoch nanoseconds")
        return nanos // 1_000_000
    return None


def _decode_otlp(doc: dict[str, Any], limits: Limits) -> Decoded:
    resource_logs = doc["resourceLogs"]
    if not isinstance(resource_logs, list):
        raise PayloadError("wrong_type", "field 'resourceLogs' is not a list")
    out = Decoded()
    index = 0
    for r, rl in enumerate(resource_logs):
        if not isinstance(rl, dict):
            raise PayloadError("wrong_type", f"resourceLogs[{r}] is not an object")
        resource = rl.get("resource") or {}
        if not isinstance(resource, dict):
            raise PayloadError("wrong_type", f"resourceLogs[{r}].resource is not an object")
        attrs = _attributes(resource.get("attributes"), f"resourceLogs[{r}].resource.attributes")
        name = attrs.get("service.name")
        if not isinstance(name, str):
            raise PayloadError("wrong_type", f"resourceLogs[{r}] has no string resource attribute 'service.name'")
        service = _service(name[: limits.max_field_chars])
        run = attrs.get("lo2.run") if isinstance(attrs.get("lo2.run"), str) else None
        test_case = attrs.get("lo2.test_case") if isinstance(attrs.get("lo2.test_case"), str) else None
        scope_logs = rl.get("scopeLogs") or []
        if not isinstance(scope_logs, list):
            raise PayloadError("wrong_type", f"resourceLogs[{r}].scopeLogs is not a list")
        for s, sl in enumerate(scope_logs):
            records = sl.get("logRecords") if isinstance(sl, dict) else None
            if not isinstance(records, list):
                raise PayloadError("wrong_type", f"resourceLogs[{r}].scopeLogs[{s}].logRecords is not a list")
            for rec in records:
                if index >= limits.max_batch_lines:
                    raise PayloadError("too_large", f"OTLP export has more than {limits.max_batch_lines} log records")
                where = f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{index}]"
                try:
                    if not isinstance(rec, dict) or not isinstance(rec.get("body"), dict):
                        raise PayloadError("wrong_type", f"{where} has no body object")
                    line = _line(rec["body"].get("stringValue"), index, limits, f"{where}.body.stringValue")
                    reference = _otlp_time_ms(rec) or run_epoch_ms(run)
                    out.items.append(InputLine(service, line, run, test_case, reference, index))
                except PayloadError as exc:
                    out.errors.append(LineError(index, exc.reason, str(exc), repr(rec)[:200]))
                index += 1
    return out


def decode_json(text: str, limits: Limits) -> Decoded:
    """Decode a JSON record (envelope, batch, end marker or OTLP export)."""
    try:
        doc = json.loads(text)
    except RecursionError as exc:
        raise PayloadError("not_json", "value nests too deeply to be one of our JSON forms") from exc
    except ValueError as exc:
        raise PayloadError("not_json", f"value is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PayloadError("wrong_type", f"JSON value is {type(doc).__name__}; expected an object")
    suspect = "\\u" in text and _SURROGATE_ESCAPE_RE.search(text) is not None
    if "resourceLogs" in doc:
        if suspect:
            where = _lone_surrogates(doc, "record")
            if where:
                raise _surrogate_error(where)
        return _decode_otlp(doc, limits)
    return _decode_envelope(doc, limits, suspect)


def decode_raw(key: bytes | None, text: str, limits: Limits, *, reference_ms: int | None) -> Decoded:
    """Raw mode: key = service, value = one line (or several, newline-separated)."""
    if not key:
        raise PayloadError("wrong_type", "raw record has no key; expected the service name as key")
    try:
        service_raw = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"raw record key is not UTF-8: {exc.reason}") from exc
    service = _service(service_raw[: limits.max_field_chars])
    out = Decoded()
    parts = text.split("\n") if "\n" in text else [text]
    if len(parts) > limits.max_batch_lines:
        raise PayloadError("too_large", f"raw record has {len(parts)} lines; at most {limits.max_batch_lines} allowed")
    for i, part in enumerate(parts):
        part = part.rstrip("\r")
        if not part and len(parts) > 1:
            continue
        try:
            out.items.append(InputLine(service, _line(part, i, limits, "raw line"), None, None, reference_ms, i))
        except PayloadError as exc:
            out.errors.append(LineError(i, exc.reason, str(exc), part[:200]))
    return out


def is_json_record(value: bytes | None, mode: InputMode) -> bool:
    """Whether ``mode`` reads this record as JSON: always for ``json``; for ``auto`` when its first
    non-blank byte is ``{``.  One rule for the decoder and the worker's per-form counter."""
    return mode == "json" or (mode == "auto" and (value or b"").lstrip()[:1] == b"{")


def decode_record(
    key: bytes | None,
    value: bytes | None,
    *,
    mode: InputMode = "auto",
    limits: Limits = Limits(),  # noqa: B008 - frozen dataclass, safe as a default
    record_time_ms: int | None = None,
) -> Decoded:
    """Decode one Kafka record; raise :class:`PayloadError` when nothing in it can be used."""
    if value is None or len(value) == 0:
        raise PayloadError("empty", "record has no value")
    if len(value) > limits.max_record_bytes:
        raise PayloadError("too_large", f"record value has {len(value)} bytes; at most {limits.max_record_bytes} allowed")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("invalid_utf8", f"record value is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if is_json_record(value, mode):
        return decode_json(text, limits)
    return decode_raw(key, text, limits, reference_ms=record_time_ms)


def parse_line_item(item: InputLine, record_time_ms: int | None) -> LineEvent | ContinuationLine | None:
    """Parse one line: an event, a continuation of the previous event, ``None`` for a blank line.

    Raises :class:`PayloadError` (``unparsable_line``) for a line that starts with a time stamp but
    does not fit the logback layout, and when no reference time exists for the line's date.
    """
    got = parse_item_fields(item, record_time_ms)
    if got is None or isinstance(got, ContinuationLine):
        return got
    timestamp_ms, fields = got
    return LineEvent(item.service, item.run, item.test_case, timestamp_ms, ParsedLine(*fields), item.line)


def parse_item_fields(item: InputLine, record_time_ms: int | None) -> tuple[int, ParsedFields] | ContinuationLine | None:
    """:func:`parse_line_item` for the engine's hot path: an event comes back as
    ``(timestamp_ms, fields of ParsedLine)`` instead of two objects; same rules, same errors."""
    fields = parse_fields(item.line)
    if fields is None:
        kind = classify(item.line)
        if kind is LineKind.BLANK:
            return None
        if kind is LineKind.MALFORMED:
            raise PayloadError("unparsable_line", "line starts with a time but does not fit 'HH:mm:ss.SSS [thread] cId LEVEL logger method - message'")
        return ContinuationLine(item.service, item.run, item.test_case, item.line.rstrip("\r\n"))
    reference = item.reference_ms if item.reference_ms is not None else record_time_ms
    if reference is None:
        raise PayloadError("wrong_type", "no reference time for the line's date: give 'ts', an LO2 run name or a record timestamp")
    return resolve_timestamp_ms(fields[0], reference), fields
