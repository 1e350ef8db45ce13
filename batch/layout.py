"""Find LO2 runs on disk and say which layout they use, in a fixed, sorted order.

Three run-folder spellings exist (``../shared/reference/lo2-data.md`` §1):

* v1: ``light-oauth2-data-<epoch>/`` (the epoch is roughly the run's end);
* v2: ``LO2_run_<epoch>/`` (the epoch is the run's start);
* v2, reduced log archive ``light-oauth2-logs.zip``: ``oauth2_logs_LO2_run_<epoch>/``.

Each run folder holds one folder per test case (``correct`` + error cases) with one
``light-oauth2-oauth2-<service>-1.log`` per service.  The LogLead loader walked ``os.listdir`` in
filesystem order and treated any folder as a run, so which runs it loaded depended on the disk; here
runs are recognised by name and sorted by (epoch, name), so the same root always gives the same runs.

The ``run`` id of the zip variant drops the ``oauth2_logs_`` prefix, so a run has the same id whether
its logs come from ``LO2v2.zip`` or from ``light-oauth2-logs.zip`` (and matches its metrics folder).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import DataLayoutError
from shared.parsing import service_from_filename

_RUN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("v1", re.compile(r"light-oauth2-data-(?P<epoch>\d{9,11})")),
    ("v2", re.compile(r"(?:oauth2_logs_)?(?P<run>LO2_run_(?P<epoch>\d{9,11}))")),
)

#: How a layout error lists the entries it saw (enough to recognise the folder, not a flood).
_MAX_LISTED = 8


@dataclass(frozen=True, slots=True)
class TestCaseDir:
    """One test-case folder of a run and the service logs found in it."""

    name: str
    path: Path
    #: service short name -> log file, only the seven Light-OAuth2 services.
    service_files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunDir:
    """One run folder: its id (``run`` column), epoch in seconds, layout and location."""

    run: str
    epoch: int
    layout: str
    path: Path

    def test_cases(self) -> list[TestCaseDir]:
        """The run's test-case folders, sorted by name, with their service logs.

        ``os.scandir``: its entries know their type without a ``stat`` per file, which made
        ``Path.iterdir`` + ``is_dir``/``is_file`` ~20 % of a whole load's CPU time.
        """
        cases = []
        with os.scandir(self.path) as it:
            case_dirs = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)  # not run_log.log etc.
        for entry in case_dirs:
            files: dict[str, Path] = {}
            with os.scandir(entry.path) as it:
                for f in sorted(it, key=lambda e: e.name):
                    svc = service_from_filename(f.name)
                    if svc is not None and f.is_file():
                        files[svc] = Path(f.path)
            cases.append(TestCaseDir(name=entry.name, path=Path(entry.path), service_files=files))
        return cases


def match_run_dir(path: Path) -> RunDir | None:
    """A :class:`RunDir` if ``path``'s name is one of the known run-folder spellings, else ``None``."""
    for layout, pattern in _RUN_PATTERNS:
        m = pattern.fullmatch(path.name)
        if m is not None:
            run = m.groupdict().get("run") or path.name
            return RunDir(run=run, epoch=int(m.group("epoch")), layout=layout, path=path)
    return None


def _runs_in(folder: Path) -> list[RunDir]:
    found = []
    for entry in folder.iterdir():
        if entry.is_dir():
            run = match_run_dir(entry)
            if run is not None:
                found.append(run)
    return found


def discover_runs(root: Path) -> list[RunDir]:
    """All runs under ``root``, sorted by (epoch, run id).

    ``root`` may be a run folder itself, a folder of run folders, or a folder one level above them
    (``lo2-sample/`` with its ``logs/``, or the ``light-oauth2-logs/`` archive folder next to
    ``prerun results/``).  Anything else is a :class:`DataLayoutError` that lists what was there.
    """
    root = Path(root)
    if not root.exists():
        raise DataLayoutError(f"LO2 root {str(root)!r} does not exist; expected a folder of run folders")
    if not root.is_dir():
        raise DataLayoutError(f"LO2 root {str(root)!r} is a file; expected a folder of run folders")
    itself = match_run_dir(root)
    if itself is not None:
        return [itself]
    runs = _runs_in(root)
    if not runs:
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            runs.extend(_runs_in(sub))
    if not runs:
        entries = sorted(p.name for p in root.iterdir())
        shown = ", ".join(entries[:_MAX_LISTED]) + (" …" if len(entries) > _MAX_LISTED else "")
        raise DataLayoutError(
            f"no LO2 run folders under {str(root)!r} (found: {shown or 'nothing'}); expected folders "
            "named light-oauth2-data-<epoch> (v1), LO2_run_<epoch> or oauth2_logs_LO2_run_<epoch> (v2), "
            "directly in the root or one level below"
        )
    seen: dict[str, Path] = {}
    for r in runs:
        if r.run in seen:
            raise DataLayoutError(
                f"run {r.run!r} appears twice: {str(seen[r.run])!r} and {str(r.path)!r}; "
                "expected every run once under the root"
            )
        seen[r.run] = r.path
    return sorted(runs, key=lambda r: (r.epoch, r.run))

