"""The loader's optional compiled tokenizer (``batch._native``, Rust source in ``native/``).

Why: the Polars path makes one pass over every line per string expression (split, the LINE_REGEX
head replace, the field cut, the stack join), which capped ``lo2 load`` at about 5x LogLead's speed
(docs/data.md, "Ceiling").  ``batch._native.parse_batch`` does the same work in one pass per line
and hands back Arrow buffers; this module wraps them into ``pyarrow`` arrays without copying.

The extension is built by ``pip install -e .`` when ``cargo`` is on the PATH (setuptools-rust,
``optional = true`` in pyproject.toml, so a machine without Rust still installs and loads with the
Polars path).  ``loader_engine`` (settings) picks the path: ``auto`` = native when importable,
``native`` = fail when it is not, ``polars`` = always the fallback (A/B benchmarks, parity tests).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, get_args

import pyarrow as pa

from shared.errors import ConfigError
from shared.startup import STARTUP_MAIN_THREAD, TRAFFIC_THREAD_INFIXES, TRAFFIC_THREAD_PREFIXES

log = logging.getLogger(__name__)

#: Which parser ``lo2 load`` uses (setting ``loader_engine``).
LoaderEngine = Literal["auto", "native", "polars"]
LOADER_ENGINES: tuple[str, ...] = get_args(LoaderEngine)

_native: ModuleType | None
try:
    from batch import _native  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # not built (no cargo at install time): the Polars path is used
    _native = None
    IMPORT_ERROR: str | None = str(exc)
else:
    IMPORT_ERROR = None

_announced: set[str] = set()


def available() -> bool:
    """Whether the compiled tokenizer was built and imports."""
    return _native is not None


def resolve(engine: str) -> Literal["native", "polars"]:
    """The path ``engine`` means on this machine; says once per process (INFO) which one is used."""
    if engine not in LOADER_ENGINES:
        raise ConfigError(f"loader_engine={engine!r}: expected one of {list(LOADER_ENGINES)}")
    if engine == "native" and _native is None:
        raise ConfigError(
            f"loader_engine='native' but batch._native does not import ({IMPORT_ERROR}); "
            "install Rust (cargo) and run `pip install -e .` again, or use loader_engine='auto'"
        )
    chosen: Literal["native", "polars"] = "native" if engine != "polars" and _native is not None else "polars"
    if chosen not in _announced:
        _announced.add(chosen)
        why = {
            ("native", "auto"): "compiled tokenizer batch._native",
            ("native", "native"): "compiled tokenizer batch._native (forced)",
            ("polars", "polars"): "Polars expressions (forced by loader_engine='polars')",
            ("polars", "auto"): f"Polars expressions (batch._native not built: {IMPORT_ERROR})",
        }[(chosen, engine)]
        log.info("lo2 load parses with the %s", why)
    return chosen


@dataclass(slots=True)
class NativeBatch:
    """What the tokenizer returns for a batch: both contract tables and per-file counters."""

    #: events.parquet rows (in the schema given to :func:`parse`)
    events: pa.Table
    #: sequences.parquet rows: one per file with events written
    sequences: pa.Table
    #: counter name -> one value per file of the batch
    files: dict[str, list[int]]
    #: (file index, line_no, kind, text) of the first malformed / orphan continuation lines
    examples: list[tuple[int, int, str, str]]


def _buffer(buf: Any) -> pa.Buffer:
    # zero-copy: the Arrow buffer points into the Rust Vec and keeps its owner alive
    return pa.foreign_buffer(buf.address(), buf.nbytes(), base=buf)


def _table(out: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """The tokenizer's buffers as a table.  No ``pa.array(list)`` here: that imports pandas (~0.3 s)."""
    n = int(out["n"])
    arrays = []
    for f in schema:
        if f.type == pa.large_string():
            validity, offsets, data = out[f.name]
            bufs = [None if validity is None else _buffer(validity), _buffer(offsets), _buffer(data)]
        else:
            bufs = [None, _buffer(out[f.name])]
        arrays.append(pa.Array.from_buffers(f.type, n, bufs))
    return pa.Table.from_arrays(arrays, schema=schema)


#: (run, run_epoch in seconds, test_case, service, seq_id, anomaly, anomaly_service) of a file
FileColumns = tuple[str, int, str, str, str, bool, bool]


def parse(
    datas: Sequence[bytes],
    files: Sequence[FileColumns],
    trim_mode: str,
    trim_init_lines: int,
    max_examples: int,
    events_schema: pa.Schema,
    sequences_schema: pa.Schema,
) -> NativeBatch:
    """Run ``batch._native.parse_batch`` on the raw bytes of a batch's files.

    ``files`` gives each file's columns of the contract; the tokenizer repeats them on the file's
    events (a gather in Arrow would cost another pass and the ``pyarrow.compute`` import).  The
    schemas are the loader's contract (the tokenizer fills every column of both).
    """
    if _native is None:
        raise ConfigError(f"batch._native is not built ({IMPORT_ERROR})")
    out = _native.parse_batch(
        list(datas), list(files), trim_mode, trim_init_lines,
        list(TRAFFIC_THREAD_PREFIXES), list(TRAFFIC_THREAD_INFIXES), STARTUP_MAIN_THREAD, max_examples,
    )
    return NativeBatch(
        _table(out, events_schema), _table(out["sequences"], sequences_schema), out["files"], out["examples"]
    )
