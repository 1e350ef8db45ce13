"""The test run must leave the checkout as it found it.

Faust writes ``<app id>-data`` folders into the working directory unless an app gets a
``datadir``; the suite once left one per Faust test in the repository.  This plugin fails the
session when any new top-level entry (ignored by git or not) appears in the repository root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Tool caches and the venv come and go legitimately.
ALLOWED = {".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".venv", "__pycache__", ".coverage"}

_before: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _before.update(p.name for p in ROOT.iterdir())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    new = sorted(p.name for p in ROOT.iterdir() if p.name not in _before and p.name not in ALLOWED)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"the test run left new entries in the checkout {ROOT}: {new} (give files a tmp_path / datadir)"
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
