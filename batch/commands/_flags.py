"""Parsers of flag values that several batch commands share.

Why a module of its own: `lo2 train` and `lo2 evaluate` take the same ``--if-*`` flags, and
`lo2 evaluate` used to parse them with bare ``int()``/``float()`` calls, so a typo there was a
Python traceback (or an IsolationForest that failed only after featurizing) while `lo2 train`
rejected it in one line.  One parser for both keeps the accepted values and messages identical.
"""

from __future__ import annotations

import argparse
from typing import Any


def csv(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the comma lists of ``--services``, ``--cases``, ``--fractions``."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def if_params(args: argparse.Namespace) -> dict[str, Any]:
    """The IsolationForest parameters of ``--if-contamination/--if-max-samples/--if-n-estimators``.

    Raises ``ConfigError`` (exit 2, one line) for a value the IsolationForest would reject or
    silently misuse, before any data is read.  A flag whose value is ``None`` (not given, in
    `lo2 evaluate`) is left out, so the registry's default applies to it.
    """
    from shared.errors import ConfigError

    out: dict[str, Any] = {}
    contamination: float | str | None = args.if_contamination
    if contamination is not None and contamination != "auto":
        try:
            contamination = float(contamination)
        except ValueError:
            msg = f"--if-contamination {args.if_contamination!r}: expected 'auto' or a fraction in (0, 0.5]"
            raise ConfigError(msg) from None
        if not 0.0 < contamination <= 0.5:
            msg = f"--if-contamination {contamination}: expected 'auto' or a fraction in (0, 0.5]"
            raise ConfigError(msg)
    if contamination is not None:
        out["contamination"] = contamination
    max_samples: int | str | None = args.if_max_samples
    if max_samples is not None and max_samples != "auto":
        if not str(max_samples).isdigit() or int(max_samples) < 1:
            msg = f"--if-max-samples {args.if_max_samples!r}: expected 'auto' or a positive integer"
            raise ConfigError(msg)
        max_samples = int(max_samples)
    if max_samples is not None:
        out["max_samples"] = max_samples
    if args.if_n_estimators is not None:
        if args.if_n_estimators < 1:
            msg = f"--if-n-estimators {args.if_n_estimators}: expected >= 1"
            raise ConfigError(msg)
        out["n_estimators"] = args.if_n_estimators
    return out
