"""Parsing of Light-OAuth2 logback lines: the one definition shared by batch and worker.

The services log with ``%d{HH:mm:ss.SSS} [%thread] %X{sId} %X{cId} %-5level %logger{36} %M - %msg``
(see ``../shared/reference/lo2-data.md`` §3.1).  ``sId`` is always empty and Hazelcast threads have no
correlation id, so there are two or three spaces after the thread.

The regular expressions below are written in the common subset of Python's ``re`` and the Rust
``regex`` crate, because batch parses with Polars (Rust) and the worker parses line by line in
Python; ``tests/unit/test_parsing.py`` proves both give the same columns.

A raw line is one of:

* an **event**: matches :data:`LINE_REGEX`;
* **malformed**: starts with a time stamp but the rest does not fit (truncated, garbage) – counted
  and dropped;
* a **continuation**: anything else that is not blank (stack-trace frames, ``Caused by:``, wrapped
  messages) – attached to the event before it in the same stream;
* **blank** – ignored.

Log lines carry only the time of day.  :func:`resolve_timestamp_ms` puts the date back from a
reference epoch (the run folder's epoch, or the record's Kafka time) by picking the calendar day that
puts the time closest to the reference; runs last far less than 12 hours, so this handles midnight
roll-over whether the reference is the run's start (LO2v2) or its end (LO2 v1).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

#: Named groups: time, thread, correlation_id, level, logger, method, message.
#: ``[0-9]`` and an explicit whitespace class instead of ``\d``/``\S``: Python's ``re`` treats
#: non-ASCII digits and U+001C–U+001F as digits/whitespace and Rust's ``regex`` does not, which made
#: the loader and the worker disagree on crafted lines.
_NS = r"[^ \t\n\r\f\v]"
#: A clock time of day ``HH:mm:ss.SSS`` in range (00-23, 00-59, 00-59, 000-999).  An event must
#: start with one: ``99:99:99.999`` would otherwise resolve to a time days after the reference.
TIME_OF_DAY_REGEX = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{3}"
LINE_REGEX = (
    r"^(?P<time>" + TIME_OF_DAY_REGEX + r") \[(?P<thread>[^\]]*)\] +(?P<correlation_id>" + _NS + r"*) +"
    r"(?P<level>TRACE|DEBUG|INFO|WARN|ERROR|FATAL) +(?P<logger>" + _NS + r"+) +(?P<method>" + _NS + r"+) - (?P<message>.*)$"
)
#: A line that starts like an event (used to tell malformed events from continuation lines).  Any
#: two-digit fields on purpose: a line with an impossible time (``99:99:99.999 [...] ...``) is
#: malformed (counted and dropped by the loader, ``unparsable_line`` in the worker), not the
#: continuation of the event before it.
TIME_PREFIX_REGEX = r"^[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}"
#: What counts as blank (the same set in Python and in the Polars loader).
BLANK_CHARS = " \t\n\r\f\v"

LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
#: The seven Light-OAuth2 services (short names as used everywhere in lo2-stream).
SERVICES = ("client", "code", "key", "refresh-token", "service", "token", "user")

_LINE_RE = re.compile(LINE_REGEX)
_TIME_PREFIX_RE = re.compile(TIME_PREFIX_REGEX)

MS_PER_DAY = 86_400_000
_HALF_DAY_MS = MS_PER_DAY // 2


class LineKind(enum.Enum):
    EVENT = "event"
    MALFORMED = "malformed"
    CONTINUATION = "continuation"
    BLANK = "blank"


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """The columns of one event line (time of day in milliseconds since midnight)."""

    time_of_day_ms: int
    thread: str
    correlation_id: str | None
    level: str
    logger: str
    method: str
    message: str


def classify(line: str) -> LineKind:
    """Say what kind of line this is (see the module docstring)."""
    if not line.strip(BLANK_CHARS):
        return LineKind.BLANK
    if _LINE_RE.match(line):
        return LineKind.EVENT
    if _TIME_PREFIX_RE.match(line):
        return LineKind.MALFORMED
    return LineKind.CONTINUATION


def format_time_of_day(epoch_ms: int) -> str:
    """``"HH:MM:SS.mmm"`` of an epoch time in UTC: how a logback line starts (the inverse of
    :func:`time_of_day_ms` within a day)."""
    t = int(epoch_ms) % MS_PER_DAY
    return f"{t // 3_600_000:02d}:{t // 60_000 % 60:02d}:{t // 1000 % 60:02d}.{t % 1000:03d}"


def time_of_day_ms(hhmmss_mmm: str) -> int:
    """``"16:29:40.148"`` -> milliseconds since midnight.

    Raises ``ValueError`` for a time out of range (``"24:00:00.000"``, ``"12:60:00.000"``, ...).
    """
    h, m, s = int(hhmmss_mmm[0:2]), int(hhmmss_mmm[3:5]), int(hhmmss_mmm[6:8])
    if h > 23 or m > 59 or s > 59:
        raise ValueError(f"time of day {hhmmss_mmm[:12]!r}: expected 00-23:00-59:00-59.000-999")
    return h * 3_600_000 + m * 60_000 + s * 1000 + int(hhmmss_mmm[9:12])


#: The fields of :class:`ParsedLine` as a plain tuple, in its field order (see :func:`parse_fields`).
ParsedFields = tuple[int, str, str | None, str, str, str, str]


def parse_fields(line: str) -> ParsedFields | None:
    """:func:`parse_line` without the object: ``(time_of_day_ms, thread, correlation_id, level,
    logger, method, message)`` or ``None``.

    The worker parses every line of a one-line-per-record stream; a tuple from one ``groups()``
    call costs a fraction of seven ``group()`` calls and a frozen dataclass.
    """
    m = _LINE_RE.match(line.rstrip("\r\n"))
    if m is None:
        return None
    t, thread, cid, level, logger, method, message = m.groups()
    return time_of_day_ms(t), thread, cid or None, level, logger, method, message


def parse_line(line: str) -> ParsedLine | None:
    """Parse an event line; ``None`` when the line is not an event (see :func:`classify`)."""
    fields = parse_fields(line)
    return None if fields is None else ParsedLine(*fields)


def resolve_timestamp_ms(time_of_day: int, reference_epoch_ms: int) -> int:
    """Full UTC epoch milliseconds for a time of day, on the day closest to the reference.

    >>> ref = 1_719_592_986_000          # 2024-06-28T16:43:06Z, end of a v1 run
    >>> resolve_timestamp_ms(16 * 3_600_000, ref) - ref  # 16:00 the same day
    -2586000
    >>> resolve_timestamp_ms(10, 1_700_006_400_000 - 1000) > 1_700_006_400_000 - 1000  # after midnight
    True
    """
    day_start = reference_epoch_ms - reference_epoch_ms % MS_PER_DAY
    candidate = day_start + time_of_day
    diff = candidate - reference_epoch_ms
    if diff > _HALF_DAY_MS:
        candidate -= MS_PER_DAY
    elif diff < -_HALF_DAY_MS:
        candidate += MS_PER_DAY
    return candidate


def file_seq_id(run: str, test_case: str, service: str) -> str:
    """Stable id of the sequence (run, test case, service).

    A hash rather than ``run__test_case__service`` on purpose: the test-case name is the label, and
    an id that spells it out ends up in features, joins and plots (LogLead demo bug, reference §9.2).
    """
    return hashlib.blake2b(f"{run}|{test_case}|{service}".encode(), digest_size=8).hexdigest()


def service_from_filename(name: str) -> str | None:
    """``light-oauth2-oauth2-refresh-token-1.log`` -> ``refresh-token``; ``None`` for non-service files."""
    m = re.fullmatch(r"light-oauth2-oauth2-(.+)-\d+\.log", name)
    if m is None or m.group(1) not in SERVICES:
        return None
    return m.group(1)
