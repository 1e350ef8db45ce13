"""Checks of the Parquet tables lo2-stream reads back (``events.parquet`` of ``lo2 load``).

Readers scan these files lazily, so a truncated or foreign file would only fail deep inside the
work; every reader checks the file's schema first, with one message for the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from shared.errors import DataLayoutError


def checked_parquet_schema(path: Path, required: Sequence[str], what: str) -> pl.Schema:
    """The schema of ``path``; :class:`DataLayoutError` (naming ``what``) when the file is not a
    readable Parquet file or lacks one of the ``required`` columns."""
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataLayoutError(f"{what} {path} is not a readable Parquet file ({first}); run `lo2 load` to write one") from exc
    missing = [c for c in required if c not in schema]
    if missing:
        raise DataLayoutError(f"{what} {path} is not an events table of `lo2 load`: no column(s) {missing}")
    return pl.Schema(schema)
