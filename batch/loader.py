"""Raw LO2 run folders -> ``events.parquet`` + ``sequences.parquet`` (+ ``load_summary.json``).

Why it is built this way (the LogLead ``LO2Loader`` bugs it fixes are in
``../shared/reference/loglead-lo2-demo.md`` §1.5, §2.2, §9.2):

* **Deterministic**: runs are found by name and sorted by epoch (:mod:`batch.layout`); every random
  choice (error cases per run, ``--single-error-type random``) comes from the seed.
* **Every line is parsed into columns** with the one shared definition
  (:data:`shared.parsing.LINE_REGEX`) run by Polars/Rust over whole batches of files, no per-line
  Python: the regex decides what is an event and where its message starts; the other fields are
  cut by splitting at the logback layout's separators, which tests/unit/test_loader_parity.py
  proves equal to ``shared.parsing.parse_line`` (off-layout lines get the regex's own groups).
  The date comes from the run epoch with the rule of :func:`shared.parsing.resolve_timestamp_ms`,
  vectorised (midnight roll-over included).
* **Two parsers, one result**: when the compiled tokenizer ``batch._native`` (Rust, ``native/``;
  :mod:`batch.native`) is built, a batch is parsed in one pass per line straight into Arrow columns
  (~7x less CPU than the Polars expressions); otherwise, or with ``loader_engine="polars"``, by
  the Polars path below.  tests/unit/test_loader_native.py proves both give identical output.
* **Stack traces are kept**: continuation lines are joined into the ``stack`` column of the event
  before them instead of being dropped.
* **Bad input never aborts**: undecodable bytes become U+FFFD (the line is kept and counted),
  malformed/garbage lines, orphan continuation lines, empty files and missing services are counted
  in :class:`LoadSummary`, with a few redacted examples, and loading goes on.
* **Bounded memory**: files are parsed in batches of about ``batch_bytes`` and streamed to Parquet
  (zstd) with a ``pyarrow`` writer, and runs are planned one at a time, so peak memory depends on the
  batch size, not on the number of runs.  A sequence is one file, so ``sequences.parquet`` rows are
  complete within a batch.
* **Start-up trimming** is content-based by default (``trim_mode="startup"``): a container's
  start-up output (JVM lines, events on ``main`` and on Hazelcast's start-up threads) is dropped
  where it is, i.e. at the head of the first test of a run (``correct`` in v1, where it leaks the
  label), and nothing else is touched.  LogLead's fork drops the first N events of *every* log
  (``trim_mode="lines"``), which on v2 data deletes whole short sequences and cuts real traffic.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from batch import native
from batch.layout import RunDir, discover_runs
from batch.native import LoaderEngine
from shared import catalog
from shared.errors import ConfigError, DataLayoutError
from shared.parsing import LINE_REGEX, MS_PER_DAY, SERVICES, TIME_PREFIX_REGEX, file_seq_id
from shared.redaction import redact
from shared.startup import STARTUP_MAIN_THREAD, THREAD_OF_EVENT_REGEX, TRAFFIC_THREAD_REGEX

log = logging.getLogger(__name__)

EVENTS_FILE = "events.parquet"
SEQUENCES_FILE = "sequences.parquet"
SUMMARY_FILE = "load_summary.json"

#: The data contract (see docs/data.md).  Column order is the file's column order.
EVENTS_SCHEMA = pa.schema(
    [
        ("run", pa.large_string()),
        ("run_epoch", pa.int64()),
        ("test_case", pa.large_string()),
        ("service", pa.large_string()),
        ("seq_id", pa.large_string()),
        ("line_no", pa.int32()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("thread", pa.large_string()),
        ("correlation_id", pa.large_string()),
        ("level", pa.large_string()),
        ("logger", pa.large_string()),
        ("method", pa.large_string()),
        ("message", pa.large_string()),
        ("stack", pa.large_string()),
        ("n_stack_lines", pa.int32()),
        ("anomaly", pa.bool_()),
        ("anomaly_service", pa.bool_()),
    ]
)
#: events.parquet columns with few distinct values per row group: dictionary-encoded.  Integer,
#: time and bool columns encode better without one (RLE/bit-packing), the text columns too.
_EVENTS_DICT = ["run", "run_epoch", "test_case", "service", "seq_id", "thread", "level", "logger", "method"]
#: events.parquet columns with min/max statistics (what readers filter on); none on the text.
_EVENTS_STATS = [
    "run", "run_epoch", "test_case", "service", "seq_id", "line_no", "timestamp", "anomaly", "anomaly_service",
]
SEQUENCES_SCHEMA = pa.schema(
    [
        ("run", pa.large_string()),
        ("run_epoch", pa.int64()),
        ("test_case", pa.large_string()),
        ("service", pa.large_string()),
        ("seq_id", pa.large_string()),
        ("n_events", pa.int32()),
        ("n_stack_lines", pa.int32()),
        ("start", pa.timestamp("ms", tz="UTC")),
        ("end", pa.timestamp("ms", tz="UTC")),
        ("duration_s", pa.float64()),
        ("anomaly", pa.bool_()),
        ("anomaly_service", pa.bool_()),
    ]
)

#: Line kinds in the intermediate frame (same meaning as shared.parsing.LineKind).
_EVENT, _BLANK, _MALFORMED, _CONTINUATION = 0, 1, 2, 3
_HALF_DAY_MS = MS_PER_DAY // 2
#: Examples of bad input kept in the summary (redacted, shortened): enough to find the cause.
MAX_EXAMPLES = 20
_EXAMPLE_CHARS = 200
_SURROGATES = re.compile("[\udc80-\udcff]+")


#: How the head of a service log is trimmed (see :class:`Selection`).
TrimMode = Literal["startup", "lines", "none"]
TRIM_MODES: tuple[str, ...] = get_args(TrimMode)
#: ``trim_init_lines`` of the "lines" mode when none is given (LogLead fork's ``init_lines_to_skip``).
DEFAULT_TRIM_INIT_LINES = 100
# The start-up rule lives in shared.startup (the replay applies it too); see its docstring.

#: (test_case, service) -> does the test case's error show in this service's log?
TargetFn = Callable[[str, str], bool]
GROUND_TRUTH_FILE = "ground_truth.json"


def target_fn_for_root(root: Path) -> TargetFn:
    """The ``anomaly_service`` rule: ``<root>/ground_truth.json`` when present, else :mod:`shared.catalog`.

    The ground-truth file (written by ``lo2 generate``) wins because a generated dataset may inject
    an error into other services than the catalog says; it maps test case -> target service(s),
    either at the top level or under ``"targets"``.
    """
    path = Path(root) / GROUND_TRUTH_FILE
    if not path.is_file():
        return catalog.targets
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataLayoutError(f"{path}: cannot read ground truth ({exc}); expected a JSON object") from exc
    raw = doc.get("targets", doc) if isinstance(doc, dict) else None
    if not isinstance(raw, dict):
        raise DataLayoutError(f"{path}: expected a JSON object mapping test case -> target service(s)")
    table: dict[str, frozenset[str]] = {}
    for case, svc in raw.items():
        names = [svc] if isinstance(svc, str) else svc if isinstance(svc, list) else None
        if names is None or not all(isinstance(n, str) for n in names):
            raise DataLayoutError(f"{path}: target of {case!r} is {svc!r}; expected a service name or a list of them")
        table[case] = frozenset(names)
    log.info("anomaly_service labels from %s (%d test cases)", path, len(table))

    def from_file(test_case: str, service: str) -> bool:
        if test_case in table:
            return service in table[test_case]
        return catalog.targets(test_case, service)

    return from_file


# --------------------------------------------------------------------------------------------
# Selection (the LogLead flags, with a seed)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which runs, test cases and services to load (the LogLead loader's flags, plus seed/trim).

    ``runs`` / ``errors_per_run``: ``None`` or ≤ 0 means all.  ``single_error_type`` is an error
    folder name or ``"random"`` (one name drawn with the seed, used for every run); it forces one
    error case per run with duplicates allowed, and a run without that folder is skipped entirely
    (reported), as in LogLead.  ``allow_duplicates=False`` never picks an error case twice across
    runs.

    Trimming (``trim_mode``):

    * ``"startup"`` (the default): drop the *start-up block* of a log, i.e. everything before its
      first event on a traffic thread (:data:`TRAFFIC_THREAD_REGEX`: ``XNIO-…`` request threads,
      Hazelcast ``partition-operation`` threads), provided that head holds an event on ``main``
      (light-4j logs its whole start-up there and nothing after).  Only a container's first test
      has one; other logs lose nothing.  A log with start-up lines but no traffic loses everything.
    * ``"lines"``: drop the first ``trim_init_lines`` events (with their stack lines) of every log,
      the LogLead fork's rule (also in short files, which the fork forgot).
    * ``"none"``: keep everything.

    For compatibility, ``trim_init_lines`` given without ``trim_mode`` means ``"lines"`` (so
    ``Selection(trim_init_lines=0)`` keeps everything, as before); neither given means
    ``"startup"``.  After construction both fields hold their resolved values.
    """

    runs: int | None = None
    errors_per_run: int | None = None
    allow_duplicates: bool = True
    single_error_type: str | None = None
    services: tuple[str, ...] = SERVICES
    seed: int = 42
    trim_init_lines: int | None = None
    trim_mode: TrimMode | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.services if s not in SERVICES]
        if bad or not self.services:
            raise ConfigError(f"services {list(self.services)!r}: expected one or more of {list(SERVICES)}")
        if self.trim_mode is not None and self.trim_mode not in TRIM_MODES:
            raise ConfigError(f"trim_mode={self.trim_mode!r}: expected one of {list(TRIM_MODES)}")
        if self.trim_init_lines is not None and self.trim_init_lines < 0:
            raise ConfigError(f"trim_init_lines={self.trim_init_lines}: expected 0 (off) or a positive count")
        mode = self.trim_mode or ("lines" if self.trim_init_lines is not None else "startup")
        n = DEFAULT_TRIM_INIT_LINES if self.trim_init_lines is None else self.trim_init_lines
        object.__setattr__(self, "trim_mode", mode)
        object.__setattr__(self, "trim_init_lines", n)

    @property
    def trim(self) -> tuple[TrimMode, int]:
        """The resolved (trim_mode, trim_init_lines)."""
        return self.trim_mode or "startup", self.trim_init_lines or 0


def make_selection(
    *,
    runs: int | None = None,
    errors_per_run: int | None = None,
    allow_duplicates: bool = True,
    single_error_type: str | None = None,
    single_service: str | None = None,
    service_types: Sequence[str] | None = None,
    seed: int = 42,
    trim_init_lines: int | None = None,
    trim_mode: TrimMode | None = None,
) -> Selection:
    """Build a :class:`Selection` from the LogLead-style flags (``single_service`` xor ``service_types``).

    Trimming defaults as in :class:`Selection`: ``trim_init_lines`` alone means ``trim_mode="lines"``.
    """
    if single_service and service_types:
        raise ConfigError(
            f"single_service={single_service!r} and service_types={list(service_types)!r} both given; "
            "expected at most one of them"
        )
    wanted = [single_service] if single_service else list(service_types or SERVICES)
    bad = [s for s in wanted if s not in SERVICES]
    if bad:
        raise ConfigError(f"unknown service(s) {bad}: expected some of {list(SERVICES)}")
    return Selection(
        runs=runs if runs and runs > 0 else None,
        errors_per_run=errors_per_run if errors_per_run and errors_per_run > 0 else None,
        allow_duplicates=allow_duplicates,
        single_error_type=single_error_type or None,
        services=tuple(s for s in SERVICES if s in wanted),
        seed=seed,
        trim_init_lines=trim_init_lines,
        trim_mode=trim_mode,
    )


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FileStats:
    """Line counts of one service log.  ``lines == blank + events + continuation + orphan + malformed``."""

    lines: int = 0
    blank_lines: int = 0
    events: int = 0
    continuation_lines: int = 0
    orphan_continuation_lines: int = 0
    malformed_lines: int = 0
    undecodable_lines: int = 0
    events_trimmed: int = 0
    #: physical lines dropped by the trim (events, their stack and blank lines, JVM lines at the head)
    lines_trimmed: int = 0
    events_written: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """One example of bad input: where it is and what it looked like (redacted, shortened)."""

    file: str
    line_no: int
    kind: str
    text: str


@dataclass(slots=True)
class LoadSummary:
    """Everything a load did and every kind of bad input it met (written as load_summary.json)."""

    root: str
    selection: dict[str, object]
    layouts: dict[str, int] = field(default_factory=dict)
    runs_available: int = 0
    runs_loaded: int = 0
    runs_skipped: list[dict[str, str]] = field(default_factory=list)
    test_cases_by_run: dict[str, list[str]] = field(default_factory=dict)
    test_cases_available: int = 0
    files_read: int = 0
    bytes_read: int = 0
    lines: int = 0
    blank_lines: int = 0
    events: int = 0
    events_trimmed: int = 0
    lines_trimmed: int = 0
    files_trimmed: int = 0
    events_written: int = 0
    continuation_lines: int = 0
    orphan_continuation_lines: int = 0
    malformed_lines: int = 0
    undecodable_lines: int = 0
    files_with_undecodable_bytes: int = 0
    empty_files: int = 0
    files_without_events: int = 0
    sequences_written: int = 0
    missing_services: list[dict[str, object]] = field(default_factory=list)
    missing_test_cases: list[dict[str, str]] = field(default_factory=list)
    examples: list[Problem] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def test_cases_loaded(self) -> int:
        return sum(len(v) for v in self.test_cases_by_run.values())

    @property
    def downsampled(self) -> bool:
        """True when runs or error cases were left out (LogLead's "Downsampling occurred")."""
        return (
            self.runs_loaded < self.runs_available
            or self.test_cases_loaded < self.test_cases_available
            or len(self.selection.get("services") or SERVICES) < len(SERVICES)  # type: ignore[arg-type]
        )

    def add(self, stats: FileStats) -> None:
        self.files_read += 1
        self.lines += stats.lines
        self.blank_lines += stats.blank_lines
        self.events += stats.events
        self.events_trimmed += stats.events_trimmed
        self.lines_trimmed += stats.lines_trimmed
        self.files_trimmed += stats.lines_trimmed > 0
        self.events_written += stats.events_written
        self.continuation_lines += stats.continuation_lines
        self.orphan_continuation_lines += stats.orphan_continuation_lines
        self.malformed_lines += stats.malformed_lines
        self.undecodable_lines += stats.undecodable_lines
        self.files_with_undecodable_bytes += stats.undecodable_lines > 0
        self.files_without_events += stats.lines > 0 and stats.events_written == 0

    def note(self, problem: Problem) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(problem)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["test_cases_loaded"] = self.test_cases_loaded
        d["downsampled"] = self.downsampled
        return d

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Planning: runs -> test cases -> files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileTask:
    """One service log to parse, with the per-file columns of the contract."""

    path: Path
    run: str
    run_epoch: int
    test_case: str
    service: str
    anomaly_service: bool

    @property
    def seq_id(self) -> str:
        return file_seq_id(self.run, self.test_case, self.service)


def _pick_error_cases(
    run: RunDir,
    errors: list[str],
    sel: Selection,
    used: set[str],
    pinned: list[str | None],
    summary: LoadSummary,
) -> list[str] | None:
    """The error cases of one run (sorted), or ``None`` when the run is skipped."""
    rng = random.Random(f"{sel.seed}:{run.run}")
    if sel.single_error_type == "random":
        if pinned[0] is None:
            if not errors:
                summary.runs_skipped.append({"run": run.run, "reason": "no error cases to draw from"})
                return None
            pinned[0] = random.Random(f"{sel.seed}:single_error_type").choice(errors)
            log.info("single error type drawn with seed %d: %s", sel.seed, pinned[0])
        wanted = pinned[0]
    else:
        wanted = sel.single_error_type
    if wanted is not None:
        if wanted not in errors:
            summary.runs_skipped.append({"run": run.run, "reason": f"no test case {wanted!r}"})
            return None
        return [wanted]
    pool = errors if sel.allow_duplicates else [e for e in errors if e not in used]
    k = len(pool) if sel.errors_per_run is None else min(sel.errors_per_run, len(pool))
    if not sel.allow_duplicates and sel.errors_per_run is not None and len(pool) < sel.errors_per_run:
        log.warning("run %s: only %d unused error cases left, %d wanted", run.run, len(pool), sel.errors_per_run)
    chosen = sorted(rng.sample(pool, k)) if k < len(pool) else list(pool)
    used.update(chosen)
    return chosen


def plan_runs(
    runs: list[RunDir], sel: Selection, target: TargetFn, summary: LoadSummary
) -> Iterator[list[FileTask]]:
    """Yield the file tasks run by run (lazily, so planning 1,700 runs costs no memory)."""
    used: set[str] = set()
    pinned: list[str | None] = [None]
    for run in runs:
        cases = {c.name: c for c in run.test_cases()}
        if not cases:
            summary.runs_skipped.append({"run": run.run, "reason": "no test-case folders"})
            continue
        errors = sorted(n for n in cases if n != "correct")
        chosen = _pick_error_cases(run, errors, sel, used, pinned, summary)
        if chosen is None:
            continue
        if "correct" not in cases:
            summary.missing_test_cases.append({"run": run.run, "test_case": "correct"})
        selected = (["correct"] if "correct" in cases else []) + chosen
        summary.runs_loaded += 1
        summary.layouts[run.layout] = summary.layouts.get(run.layout, 0) + 1
        summary.test_cases_by_run[run.run] = selected
        summary.test_cases_available += len(cases)
        tasks = []
        for name in selected:
            case = cases[name]
            missing = [s for s in sel.services if s not in case.service_files]
            if missing:
                summary.missing_services.append({"run": run.run, "test_case": name, "services": missing})
            for svc in sel.services:
                if svc in case.service_files:
                    tasks.append(
                        FileTask(
                            path=case.service_files[svc],
                            run=run.run,
                            run_epoch=run.epoch,
                            test_case=name,
                            service=svc,
                            anomaly_service=target(name, svc),
                        )
                    )
        yield tasks


# --------------------------------------------------------------------------------------------
# Parsing (Polars, whole batches of files at once)
# --------------------------------------------------------------------------------------------


def decode_lines(data: bytes) -> tuple[str, list[int]]:
    """UTF-8 text of a file and the 1-based numbers of lines that held undecodable bytes.

    Bad bytes become U+FFFD so the rest of the line (and the file) is still parsed; LogLead dropped
    the whole file on the first bad byte.
    """
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="surrogateescape")
    bad_lines: list[int] = []
    line, pos = 1, 0
    for m in _SURROGATES.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        if not bad_lines or bad_lines[-1] != line:
            bad_lines.append(line)
    return _SURROGATES.sub(lambda m: "\ufffd" * len(m.group()), text), bad_lines


def _lines_frame(texts: pl.Series) -> pl.LazyFrame:
    """One row per raw line: fid (index in ``texts``), line_no (1-based), text (without line break)."""
    raw = pl.DataFrame({"fid": pl.int_range(texts.len(), dtype=pl.Int32, eager=True), "text": texts})
    raw = raw.filter(pl.col("text") != "")  # empty files have no lines, not one blank line
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    new_file = pl.col("fid") != pl.col("fid").shift(1, fill_value=-1)
    # one memchr scan of the whole files spares a pass over every line when there is no CR at all
    has_cr = bool(texts.str.contains("\r", literal=True).any())
    text = pl.col("text").str.strip_chars_end("\r") if has_cr else pl.col("text")
    return (
        raw.lazy()
        .with_columns(pl.col("text").str.strip_suffix("\n").str.split("\n"))
        .explode("text")
        .with_columns(text, _row=row)
        .with_columns(
            line_no=(pl.col("_row") - pl.when(new_file).then(pl.col("_row")).forward_fill() + 1).cast(pl.Int32)
        )
        .drop("_row")
    )


#: What precedes the message in :data:`LINE_REGEX`.  Its leftmost-first match is exactly the head of
#: LINE_REGEX's match, because ``(?P<message>.*)$`` matches whatever rest a line has; so replacing it
#: by "" yields the message, and whether it matched says whether the line is an event.  A regex find
#: is several times cheaper than capturing seven groups.
_MESSAGE_GROUP = "(?P<message>.*)$"
if not LINE_REGEX.endswith(" - " + _MESSAGE_GROUP):
    raise RuntimeError("batch.loader expects shared.parsing.LINE_REGEX to end with ' - (?P<message>.*)$'")
_HEAD_REGEX = LINE_REGEX.removesuffix(_MESSAGE_GROUP)
#: ``\d`` also matches non-ASCII digits (Rust and Python); such a "time" is not a clock time, so the
#: line counts as malformed rather than failing the batch on a cast.
_ASCII_TIME = r"^[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3} "
_FIELDS = ("thread", "correlation_id", "level", "logger", "method", "message")


def _classified(lines: pl.LazyFrame) -> pl.LazyFrame:
    """Add the message, the line kind, the owning event (gid) and the event's ordinal in its file."""
    t = pl.col("text")
    head_len = t.str.len_bytes() - pl.col("message").str.len_bytes()
    is_event = (head_len > 0) & t.str.contains(_ASCII_TIME)
    kind = (
        pl.when(is_event)
        .then(pl.lit(_EVENT))
        .when(~t.str.contains(r"[^ \t\n\r\f\v]"))  # blank (shared.parsing.BLANK_CHARS); a regex test allocates nothing, strip_chars would
        .then(pl.lit(_BLANK))
        .when(t.str.contains(TIME_PREFIX_REGEX))
        .then(pl.lit(_MALFORMED))
        .otherwise(pl.lit(_CONTINUATION))
        .cast(pl.Int8)
    )
    ev = (pl.col("kind") == _EVENT).cast(pl.Int64)
    new_file = pl.col("fid") != pl.col("fid").shift(1, fill_value=-1)
    return (
        lines.with_columns(message=t.str.replace(_HEAD_REGEX, ""))
        .with_columns(kind=kind)
        .with_columns(gid=ev.cum_sum())
        .with_columns(
            # events before this file started, so that ordinal = events of this file up to here
            ev_no=pl.col("gid") - pl.when(new_file).then(pl.col("gid") - ev).forward_fill()
        )
    )


def _event_fields(events: pl.LazyFrame) -> pl.LazyFrame:
    """Cut time, thread, correlation id, level, logger, method out of event rows (message is there).

    Between ``]`` and the message an event has `` +cid +LEVEL +logger +method - `` (cid may be
    empty) and no token holds whitespace, so its non-empty pieces split on " " are exactly the
    regex's tokens: 5 with a correlation id, 4 without.  The loader reads them at the positions of
    the logback layout (``]  cid LEVEL logger``, ``]   LEVEL logger``; ``INFO``/``WARN`` padded with
    one more space) and checks that layout; a row that does not fit it is marked ``_slow`` and gets
    ``str.extract_groups(LINE_REGEX)``.  Working on the head (the line without its message) keeps
    every string short.
    """
    # str.slice counts characters and str.find bytes: split at the first "]" instead (the thread
    # cannot hold one), and cut the message off, so no offsets are mixed up.
    head = pl.col("text").str.strip_suffix(pl.col("message"))
    part = pl.col("_parts").struct

    def f(i: int) -> pl.Expr:
        return part.field(f"field_{i}")

    one = f(4) != ""  # one space after the level (5 letters); INFO/WARN have two
    fits = (
        (f(0) == "")
        & (f(1) == "")
        & (f(3) != "")
        & pl.when(one)
        .then((f(5) != "") & (f(6) == "-") & (f(7) == "") & f(8).is_null())
        .otherwise((f(5) != "") & (f(6) != "") & (f(7) == "-") & (f(8) == ""))
    )
    return (
        events.with_columns(_bracket=head.str.splitn("]", 2))
        .with_columns(_parts=pl.col("_bracket").struct.field("field_1").str.split_exact(" ", 8))
        .with_columns(
            time=pl.col("text").str.slice(0, 12),
            thread=pl.col("_bracket").struct.field("field_0").str.slice(14),
            correlation_id=pl.when(f(2) != "").then(f(2)),
            level=f(3),
            logger=pl.when(one).then(f(4)).otherwise(f(5)),
            method=pl.when(one).then(f(5)).otherwise(f(6)),
            _slow=~fits.fill_null(False),
        )
        .drop("_parts", "_bracket")
    )


def _fix_slow_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Parse the rare rows off the logback layout (odd spacing) with the regex's own groups."""
    idx = rows.select(pl.arg_where(pl.col("_slow"))).to_series()
    if idx.len() == 0:
        return rows.drop("_slow")
    groups = rows["text"].gather(idx).str.extract_groups(LINE_REGEX).struct.unnest()
    cols = {}
    for name in _FIELDS:
        fixed = groups[name]
        if name == "correlation_id":
            fixed = fixed.replace("", None)
        cols[name] = rows[name].scatter(idx, fixed)
    return rows.with_columns(**cols).drop("_slow")


def _hhmmssmmm(time_col: pl.Expr) -> pl.Expr:
    """``"HH:MM:SS.mmm"`` -> the integer HHMMSSmmm: one cast instead of four slices and casts."""
    return time_col.str.replace_all(":", "", literal=True).str.replace(".", "", literal=True).cast(pl.Int64)


def _time_of_day_ms(v: pl.Expr) -> pl.Expr:
    """HHMMSSmmm (a column: it is used four times) -> ms since midnight, like ``time_of_day_ms``."""
    return (v // 10_000_000) * 3_600_000 + (v // 100_000 % 100) * 60_000 + (v // 1000 % 100) * 1000 + v % 1000


def _resolve_ms(tod: pl.Expr, run_epoch_s: pl.Expr) -> pl.Expr:
    """Vectorised :func:`shared.parsing.resolve_timestamp_ms` (same rule, same roll-over).

    ``tod`` should be a column, not an expression, because it is used three times.
    """
    ref = run_epoch_s * 1000
    cand = ref - ref % MS_PER_DAY + tod
    diff = cand - ref
    return (
        pl.when(diff > _HALF_DAY_MS)
        .then(cand - MS_PER_DAY)
        .when(diff < -_HALF_DAY_MS)
        .then(cand + MS_PER_DAY)
        .otherwise(cand)
    )


def startup_cutoffs(rows: pl.DataFrame, n_files: int) -> pl.Series:
    """Per file (index = fid): the first line_no after its start-up block (1 = no block).

    ``rows`` are the classified lines of a batch (fid, line_no, kind, ev_no, text).  Only files
    whose first event is not on a traffic thread can have a block, so the thread is cut out of one
    event per file, and out of every event only for those few files (a run's first test).
    """
    kind, text = pl.col("kind"), pl.col("text")
    thread = text.str.extract(THREAD_OF_EVENT_REGEX, 1)
    firsts = rows.filter((kind == _EVENT) & (pl.col("ev_no") == 1)).select(
        "fid", traffic=thread.str.contains(TRAFFIC_THREAD_REGEX)
    )
    cands = firsts.filter(~pl.col("traffic"))["fid"]
    cut = pl.Series("cut", [1] * n_files, dtype=pl.Int64)
    if cands.len() == 0:
        return cut
    heads = (
        rows.filter(pl.col("fid").is_in(cands.implode()) & (kind == _EVENT))
        .select("fid", "line_no", thread=thread)
        .with_columns(traffic=pl.col("thread").str.contains(TRAFFIC_THREAD_REGEX))
        .group_by("fid")
        .agg(
            # no traffic at all: the whole file is start-up output
            first_traffic=pl.col("line_no").filter(pl.col("traffic")).min().fill_null(2**31 - 1),
            mains=pl.col("line_no").filter(pl.col("thread") == STARTUP_MAIN_THREAD).min(),
        )
        .filter(pl.col("mains") < pl.col("first_traffic"))
    )
    return cut.scatter(heads["fid"], heads["first_traffic"].cast(pl.Int64))


def _attach(fields: pl.DataFrame, stacks: pl.DataFrame, meta: pl.DataFrame) -> pl.DataFrame:
    """Add each event's stack (by its gid) and its file's columns (by its fid) without joins.

    Events are in gid order and a stack's gid is its event's, so a binary search places the few
    stacks; ``fid`` is the row of ``meta``, so the per-file columns are a gather.  Both are several
    times cheaper than hash joins that keep the row order.
    """
    n = fields.height
    pos = fields["gid"].search_sorted(stacks["gid"])
    stack = pl.repeat(None, n, dtype=pl.String, eager=True).scatter(pos, stacks["stack"])
    n_stack = pl.zeros(n, dtype=pl.Int32, eager=True).scatter(pos, stacks["n_stack_lines"])
    per_file = meta.drop("fid")[fields["fid"]]
    return pl.concat(
        [fields, per_file, pl.DataFrame([stack.alias("stack"), n_stack.alias("n_stack_lines")])], how="horizontal"
    )


@dataclass(slots=True)
class BatchResult:
    """A parsed batch.  The native path gives Arrow tables already in the contract schema (what the
    writer takes, no conversion), the Polars path gives frames; ``events``/``sequences`` are frames."""

    events_data: pl.DataFrame | pa.Table
    sequences_data: pl.DataFrame | pa.Table
    stats: list[FileStats]
    problems: list[Problem]

    @property
    def events(self) -> pl.DataFrame:
        return _frame(self.events_data)

    @property
    def sequences(self) -> pl.DataFrame:
        return _frame(self.sequences_data)

    @property
    def n_sequences(self) -> int:
        return self.sequences_data.num_rows if isinstance(self.sequences_data, pa.Table) else self.sequences_data.height


def _frame(data: pl.DataFrame | pa.Table) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    frame = pl.from_arrow(data)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _arrow(data: pl.DataFrame | pa.Table, schema: pa.Schema) -> pa.Table:
    return data if isinstance(data, pa.Table) else data.to_arrow().cast(schema)


def parse_batch(
    tasks: Sequence[FileTask],
    datas: Sequence[bytes],
    trim_init_lines: int = 0,
    *,
    trim_mode: TrimMode = "lines",
    engine: LoaderEngine = "auto",
) -> BatchResult:
    """Parse the raw bytes of several service logs at once into contract frames and per-file stats.

    ``trim_mode`` / ``trim_init_lines`` as in :class:`Selection` (the default trims nothing).
    ``engine``: the compiled tokenizer or the Polars expressions (:mod:`batch.native`); both give the
    same result (tests/unit/test_loader_native.py).
    """
    if trim_mode not in TRIM_MODES:
        raise ConfigError(f"trim_mode={trim_mode!r}: expected one of {list(TRIM_MODES)}")
    if native.resolve(engine) == "native":
        return _parse_batch_native(tasks, datas, trim_init_lines, trim_mode)
    problems: list[Problem] = []
    # Polars checks UTF-8 itself (much cheaper than decoding to Python str and back); only a batch
    # with bad bytes takes the Python path that marks and replaces them file by file.
    bad_lines: list[list[int]] = [[] for _ in tasks]
    try:
        texts = pl.Series("text", datas, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.ComputeError:
        decoded = [decode_lines(d) for d in datas]
        texts = pl.Series("text", [text for text, _ in decoded], dtype=pl.String)
        for i, (_, bad) in enumerate(decoded):
            bad_lines[i] = bad
            if bad:
                problems.append(
                    Problem(str(tasks[i].path), bad[0], "undecodable",
                            f"{len(bad)} line(s) with bytes that are not UTF-8 (kept, bad bytes as U+FFFD)")
                )
    del datas
    meta = pl.DataFrame(
        {
            "fid": list(range(len(tasks))),
            "run": [t.run for t in tasks],
            "run_epoch": [t.run_epoch for t in tasks],
            "test_case": [t.test_case for t in tasks],
            "service": [t.service for t in tasks],
            "seq_id": [t.seq_id for t in tasks],
            "anomaly": [t.test_case != "correct" for t in tasks],
            "anomaly_service": [t.anomaly_service for t in tasks],
        },
        schema={
            "fid": pl.Int32, "run": pl.String, "run_epoch": pl.Int64, "test_case": pl.String,
            "service": pl.String, "seq_id": pl.String, "anomaly": pl.Boolean, "anomaly_service": pl.Boolean,
        },
    )
    rows = _classified(_lines_frame(texts)).collect()
    del texts

    kind = pl.col("kind")
    owned = pl.col("ev_no") > 0
    if trim_mode == "startup":
        cut = startup_cutoffs(rows, len(tasks))
        rows = rows.with_columns(_trim=pl.col("line_no") < cut.gather(rows["fid"]))
    elif trim_mode == "lines" and trim_init_lines > 0:
        rows = rows.with_columns(_trim=owned & (pl.col("ev_no") <= trim_init_lines))
    elif trim_mode in ("lines", "none"):
        rows = rows.with_columns(_trim=pl.lit(False))
    else:
        raise ConfigError(f"trim_mode={trim_mode!r}: expected one of {list(TRIM_MODES)}")
    trimmed = pl.col("_trim")
    kept = owned & ~trimmed
    per_file = (
        rows.group_by("fid")
        .agg(
            lines=pl.len(),
            blank_lines=(kind == _BLANK).sum(),
            events=(kind == _EVENT).sum(),
            continuation_lines=((kind == _CONTINUATION) & owned).sum(),
            orphan_continuation_lines=((kind == _CONTINUATION) & ~owned).sum(),
            malformed_lines=(kind == _MALFORMED).sum(),
            events_trimmed=((kind == _EVENT) & trimmed).sum(),
            lines_trimmed=trimmed.sum(),
            events_written=((kind == _EVENT) & kept).sum(),
        )
        .sort("fid")
    )
    stats = [FileStats(undecodable_lines=len(b)) for b in bad_lines]
    for rec in per_file.iter_rows(named=True):
        st = stats[rec.pop("fid")]
        for k, v in rec.items():
            setattr(st, k, int(v))

    bad_rows = rows.filter((kind == _MALFORMED) | ((kind == _CONTINUATION) & ~owned)).head(MAX_EXAMPLES)
    for fid, line_no, k, text in bad_rows.select("fid", "line_no", "kind", "text").iter_rows():
        problems.append(
            Problem(
                str(tasks[fid].path),
                line_no,
                "malformed" if k == _MALFORMED else "orphan_continuation",
                redact(text[:_EXAMPLE_CHARS]),
            )
        )

    stacks = (
        rows.lazy()
        .filter((kind == _CONTINUATION) & kept)
        .group_by("gid")
        .agg(stack=pl.col("text").str.join("\n"), n_stack_lines=pl.len().cast(pl.Int32))
        .collect()
    )
    fields = _fix_slow_rows(
        _event_fields(
            rows.lazy().filter((kind == _EVENT) & kept).select("fid", "gid", "line_no", "text", "message")
        ).collect()
    ).drop("text")
    events = (
        _attach(fields, stacks, meta)
        .lazy()
        .with_columns(_v=_hhmmssmmm(pl.col("time")))
        .with_columns(_tod=_time_of_day_ms(pl.col("_v")))
        .with_columns(timestamp=_resolve_ms(pl.col("_tod"), pl.col("run_epoch")).cast(pl.Datetime("ms", "UTC")))
        .select(EVENTS_SCHEMA.names + ["fid"])
        .collect()
    )
    del rows
    sequences = (
        events.lazy()
        .group_by("fid")
        .agg(
            n_events=pl.len().cast(pl.Int32),
            n_stack_lines=pl.col("n_stack_lines").sum().cast(pl.Int32),
            start=pl.col("timestamp").min(),
            end=pl.col("timestamp").max(),
        )
        .join(meta.lazy(), on="fid", how="left")
        .with_columns(duration_s=(pl.col("end") - pl.col("start")).dt.total_milliseconds() / 1000.0)
        .sort("fid")
        .select(SEQUENCES_SCHEMA.names)
        .collect()
    )
    return BatchResult(events.drop("fid"), sequences, stats, problems)


def _parse_batch_native(
    tasks: Sequence[FileTask], datas: Sequence[bytes], trim_init_lines: int, trim_mode: TrimMode
) -> BatchResult:
    """:func:`parse_batch` with the compiled tokenizer: one pass per line, Arrow columns out."""
    file_cols = [
        (t.run, t.run_epoch, t.test_case, t.service, t.seq_id, t.test_case != "correct", t.anomaly_service)
        for t in tasks
    ]
    nb = native.parse(datas, file_cols, trim_mode, trim_init_lines, MAX_EXAMPLES, EVENTS_SCHEMA, SEQUENCES_SCHEMA)
    files = nb.files
    stats = [
        FileStats(
            lines=files["lines"][i],
            blank_lines=files["blank_lines"][i],
            events=files["events"][i],
            continuation_lines=files["continuation_lines"][i],
            orphan_continuation_lines=files["orphan_continuation_lines"][i],
            malformed_lines=files["malformed_lines"][i],
            undecodable_lines=files["undecodable_lines"][i],
            events_trimmed=files["events_trimmed"][i],
            lines_trimmed=files["lines_trimmed"][i],
            events_written=files["events_written"][i],
        )
        for i in range(len(tasks))
    ]
    problems = [
        Problem(str(tasks[i].path), files["first_undecodable_line"][i], "undecodable",
                f"{n} line(s) with bytes that are not UTF-8 (kept, bad bytes as U+FFFD)")
        for i, n in enumerate(files["undecodable_lines"])
        if n
    ]
    problems += [Problem(str(tasks[fid].path), line_no, kind, redact(text[:_EXAMPLE_CHARS]))
                 for fid, line_no, kind, text in nb.examples]
    return BatchResult(nb.events, nb.sequences, stats, problems)


def parse_file(
    path: Path,
    run: str,
    run_epoch: int,
    test_case: str,
    service: str,
    *,
    trim_init_lines: int = 0,
    trim_mode: TrimMode = "lines",
    anomaly_service: bool = False,
    engine: LoaderEngine = "auto",
) -> tuple[pl.DataFrame, FileStats]:
    """Parse one service log into the events contract (for tests and tools; trims nothing by default)."""
    task = FileTask(Path(path), run, run_epoch, test_case, service, anomaly_service)
    res = parse_batch([task], [Path(path).read_bytes()], trim_init_lines, trim_mode=trim_mode, engine=engine)
    return res.events, res.stats[0]


# --------------------------------------------------------------------------------------------
# Streaming writer and the whole load
# --------------------------------------------------------------------------------------------


class _ParquetStream:
    """Append batches to a Parquet file; it appears under its real name only when complete."""

    def __init__(
        self, path: Path, schema: pa.Schema, *, dictionary: list[str] | None = None, statistics: list[str] | None = None
    ) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self.schema = schema
        # Dictionaries and min/max statistics only pay off on some columns; building them for
        # message/stack/correlation_id (and dictionaries for line_no/timestamp) costs ~half of the
        # write and makes the file bigger.
        self.writer = pq.ParquetWriter(
            self.tmp,
            schema,
            compression="zstd",
            use_dictionary=dictionary if dictionary is not None else True,
            write_statistics=statistics if statistics is not None else True,
        )
        self.rows = 0

    def write(self, data: pl.DataFrame | pa.Table) -> None:
        table = _arrow(data, self.schema)
        if table.num_rows:
            self.writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self.writer.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


#: Progress callback: (files done, runs done, runs total, lines so far).
ProgressFn = Callable[[int, int, int, int], None]


def _batches(
    plans: Iterator[list[FileTask]], batch_bytes: int
) -> Iterator[tuple[list[FileTask], list[bytes], int]]:
    """Group files into batches of about ``batch_bytes``; also say how many runs are finished."""
    tasks: list[FileTask] = []
    datas: list[bytes] = []
    size = 0
    runs_done = 0
    for run_tasks in plans:
        for t in run_tasks:
            # unbuffered: one read of the whole file, half the CPU of Path.read_bytes()
            with open(t.path, "rb", buffering=0) as fh:
                data = fh.readall()
            tasks.append(t)
            datas.append(data)
            size += len(data)
            if size >= batch_bytes:
                yield tasks, datas, runs_done
                tasks, datas, size = [], [], 0
        runs_done += 1
    if tasks:
        yield tasks, datas, runs_done
    elif runs_done:
        yield [], [], runs_done


def _write_batch(streams: dict[str, _ParquetStream], res: BatchResult) -> None:
    if "events" in streams:
        streams["events"].write(res.events_data)
    if "sequences" in streams:
        streams["sequences"].write(res.sequences_data)


def load_runs(
    root: Path,
    selection: Selection,
    out_dir: Path | None,
    *,
    write_events: bool = True,
    write_sequences: bool = True,
    batch_bytes: int = 32 << 20,
    target: TargetFn | None = None,
    progress: ProgressFn | None = None,
    engine: LoaderEngine = "auto",
) -> LoadSummary:
    """Load the selected runs under ``root`` and stream them to ``out_dir`` (None = only count).

    ``engine``: the parser (setting ``loader_engine``; :mod:`batch.native`).

    Returns the :class:`LoadSummary`, also written as ``load_summary.json`` next to the Parquets.
    Raises :class:`shared.errors.DataLayoutError` when ``root`` holds no known run layout.
    """
    t0 = time.perf_counter()
    root = Path(root)
    native.resolve(engine)  # a bad or unavailable engine fails before any work
    all_runs = discover_runs(root)
    runs = all_runs if selection.runs is None else all_runs[: selection.runs]
    summary = LoadSummary(root=str(root), selection=asdict(selection), runs_available=len(all_runs))
    target = target or target_fn_for_root(root)
    streams: dict[str, _ParquetStream] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if write_events:
            streams["events"] = _ParquetStream(
                out_dir / EVENTS_FILE, EVENTS_SCHEMA, dictionary=_EVENTS_DICT, statistics=_EVENTS_STATS
            )
        if write_sequences:
            streams["sequences"] = _ParquetStream(out_dir / SEQUENCES_FILE, SEQUENCES_SCHEMA)
    # Batch N is compressed and written on a second thread while batch N+1 is read and parsed
    # (pyarrow and Polars release the GIL, so both cores work: ~13 % less wall-clock measured); at
    # most one batch waits for the writer, so memory stays bounded by the batch size.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lo2-parquet") if streams else None
    pending: Future[None] | None = None
    try:
        for tasks, datas, runs_done in _batches(plan_runs(runs, selection, target, summary), batch_bytes):
            summary.bytes_read += sum(len(d) for d in datas)
            summary.empty_files += sum(1 for d in datas if not d)
            if tasks:
                mode, n = selection.trim
                res = parse_batch(tasks, datas, n, trim_mode=mode, engine=engine)
                del datas
                for st in res.stats:
                    summary.add(st)
                for p in res.problems:
                    summary.note(p)
                summary.sequences_written += res.n_sequences
                if pending is not None:
                    pending.result()
                pending = pool.submit(_write_batch, streams, res) if pool is not None else None
                del res
            if progress is not None:
                progress(summary.files_read, runs_done, len(runs), summary.lines)
        if pending is not None:
            pending.result()
    except BaseException:
        if pending is not None:
            wait([pending])  # never close a writer while the other thread writes to it
        for s in streams.values():
            s.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    for name, s in streams.items():
        s.close()
        summary.outputs[name] = str(s.path)
    summary.seconds = round(time.perf_counter() - t0, 3)
    if out_dir is not None:
        summary.outputs["summary"] = str(out_dir / SUMMARY_FILE)
        summary.write_json(out_dir / SUMMARY_FILE)
    _log_problems(summary)
    return summary


def _log_problems(s: LoadSummary) -> None:
    bad = {
        "malformed lines": s.malformed_lines,
        "orphan continuation lines": s.orphan_continuation_lines,
        "undecodable lines": s.undecodable_lines,
        "empty files": s.empty_files,
        "test cases with missing services": len(s.missing_services),
        "runs skipped": len(s.runs_skipped),
    }
    found = {k: v for k, v in bad.items() if v}
    if found:
        log.warning("bad input met and counted (see load_summary.json): %s", found)
