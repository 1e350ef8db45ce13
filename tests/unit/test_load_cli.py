"""`lo2 load` command line: unknown error-case names refused up front, bad bytes never echoed raw."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batch.commands.load import escape_controls, printable
from lo2.cli import main

RUN = "LO2_run_1739743201"
EVENT = "12:00:00.{ms:03d} [XNIO-1 task-2]  Qm7rT2xWZ0aKc4Ne-P9sLw DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - msg {i}"
#: Terminal control characters (C0 without \n, DEL, C1): none may reach the terminal raw.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _write(root: Path, case: str, service: str, data: bytes) -> None:
    folder = root / RUN / case
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"light-oauth2-oauth2-{service}-1.log").write_bytes(data)


def _events(n: int = 3) -> bytes:
    return "".join(EVENT.format(ms=k, i=k) + "\n" for k in range(n)).encode()


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for case in ("correct", "get_token_404"):
        _write(root, case, "token", _events())
    return root


def test_unknown_single_error_type_is_refused_with_close_matches(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    rc = main(["load", "--root", str(runs), "--output-dir", str(out_dir), "--single-error-type", "get_token_40"])
    assert rc == 2
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "--single-error-type 'get_token_40' is not an LO2 error case" in out
    assert "did you mean get_token_404" in out
    assert not out_dir.exists()  # refused before any Parquet was written


def test_nonsense_error_type_and_correct_are_refused(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "--root", str(runs), "--no-save", "--single-error-type", "nosuch"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "'nosuch' is not an LO2 error case" in out and "53 names" in out
    assert main(["load", "--root", str(runs), "--no-save", "--single-error-type", "correct"]) == 2
    assert "'correct' is always loaded" in " ".join(capsys.readouterr().out.split())


def test_known_error_type_and_random_still_load(runs: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    assert main(["load", "--root", str(runs), "--output-dir", str(out_dir), "--single-error-type", "get_token_404",
                 "--head", "0"]) == 0
    assert (out_dir / "events.parquet").is_file()
    assert main(["load", "--root", str(runs), "--no-save", "--single-error-type", "random", "--head", "0"]) == 0


@pytest.mark.parametrize("binary", [False, True])
def test_control_bytes_of_bad_lines_are_escaped_in_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, binary: bool
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that rich does not cut the example column
    root = tmp_path / "runs"
    if binary:  # every byte value, as in a run of random bytes
        _write(root, "correct", "token", bytes(range(256)) * 4)
    else:
        # an orphan line of control bytes first (an example in the summary table), then an event
        # whose continuation line carries more (the stack column of the events preview)
        _write(root, "correct", "token", b"\x00\x07\x1b[2J bad\n" + _events(1) + b"\x01\x1b[31mred\x9b\n")
    assert main(["load", "--root", str(root), "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert not CONTROL.findall(out), sorted(set(CONTROL.findall(out)))
    if binary:
        assert r"\x00\x01\x02\x03" in out
    else:
        assert r"\x00\x07\x1b[2J bad" in out  # shown, escaped, in the bad-line examples
        assert r"\x01\x1b[3" in out  # and in the events preview (polars wraps the cell after 10 characters)


def test_escape_helpers() -> None:
    assert escape_controls("a\x00b\tc\x1bd\u2028é") == r"a\x00b\tc\x1bd\u2028é"
    assert printable("[red]x\x07") == r"\[red]x\x07"
