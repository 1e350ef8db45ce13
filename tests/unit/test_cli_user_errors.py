"""User mistakes in `lo2 replay` and `lo2 tail` end in one clear line on stderr and exit code 2.

No traceback, no broker needed: wrong sources are checked before any topic is touched, and an
unreachable broker is a port nobody listens on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lo2.cli import main
from shared.errors import BrokerError
from worker import broker
from worker.replay import produce


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A bootstrap address nobody answers on; settings point at tmp_path so nothing lands in the repo."""
    for name in ("DATA", "MODEL", "ARTIFACTS", "CACHE"):
        monkeypatch.setenv(f"LO2_{name}_DIR", str(tmp_path / name.lower()))
    bootstrap = f"127.0.0.1:{broker.free_port()}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    return bootstrap


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "LO2_run_1739743201"
    (run / "correct").mkdir(parents=True)
    (run / "correct" / "light-oauth2-oauth2-token-1.log").write_text(
        "12:00:00.000 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.X m - msg\n", encoding="utf-8"
    )
    return run


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"lo2 {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _replay(*args: str) -> int:
    return main(["replay", "--no-progress", *args])


def test_replay_of_a_missing_folder(no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent"
    assert _replay(str(missing)) == 2
    line = _error_line(capsys, "replay")
    # the source is checked before the topic: the message is about the path, not the broker
    assert str(missing) in line and "is not a folder" in line
    assert no_broker not in line


def test_replay_of_a_folder_without_runs(no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("hello", encoding="utf-8")
    assert _replay(str(tmp_path / "notes")) == 2
    line = _error_line(capsys, "replay")
    assert "no LO2 run folders" in line and "README.txt" in line


def test_replay_of_a_missing_parquet(no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(str(tmp_path / "x.parquet")) == 2
    line = _error_line(capsys, "replay")
    assert str(tmp_path / "x.parquet") in line and "not a file" in line


def test_replay_of_a_file_that_is_not_parquet(no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "events.parquet"
    fake.write_text("password=hunter2 is not parquet\n", encoding="utf-8")
    assert _replay(str(fake)) == 2
    line = _error_line(capsys, "replay")
    assert str(fake) in line and "not a readable Parquet file" in line
    assert "hunter2" not in line


def test_replay_of_a_parquet_without_the_events_columns(no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import polars as pl

    other = tmp_path / "sequences.parquet"
    pl.DataFrame({"seq_id": ["a"], "n_events": [1]}).write_parquet(other)
    assert _replay(str(other)) == 2
    assert "no column(s)" in _error_line(capsys, "replay")


def test_replay_to_an_unreachable_broker(no_broker: str, run_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(str(run_folder), "--bootstrap", no_broker) == 2
    assert no_broker in _error_line(capsys, "replay")


def test_tail_from_an_unreachable_broker(no_broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--bootstrap", no_broker, "--idle-timeout", "1"]) == 2
    assert no_broker in _error_line(capsys, "tail")


def test_produce_to_an_unreachable_broker_is_a_broker_error(no_broker: str) -> None:
    """The producer itself (past the topic check, e.g. the broker went away) fails as a BrokerError."""
    import asyncio

    with pytest.raises(BrokerError, match=no_broker.replace(".", r"\.")):
        asyncio.run(produce([], bootstrap=no_broker, topic="lo2.logs"))


# --- batch commands: unreadable inputs and unwritable outputs -----------------------------------


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_file_that_is_not_parquet_is_one_line(
    command: str, no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "events.parquet"
    bad.write_bytes(b"PAR1 truncated, not a parquet file")
    assert main([command, "--input", str(bad)]) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())  # rich wraps long lines
    assert "Traceback" not in text and "is not a readable Parquet file" in text


def test_an_output_folder_that_cannot_be_written_is_one_line(
    no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["generate", "--runs", "1", "--errors-per-run", "0", "--out", str(blocker / "runs")]) == 2
    assert "lo2 generate: error: " in _error_line(capsys, "generate")


def test_verbose_flags_raise_the_log_level(no_broker: str) -> None:
    import logging

    main(["-v"])  # no command: prints help, but the level is set first
    assert logging.getLogger("batch").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("aiokafka").getEffectiveLevel() > logging.DEBUG  # libraries only with -vv
    for package in ("batch", "worker", "shared", "lo2"):
        logging.getLogger(package).setLevel(logging.NOTSET)


def test_explain_on_a_file_that_is_not_parquet_is_one_line(
    no_broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "events.parquet"
    bad.write_bytes(b"not a parquet file")
    assert main(["explain", "--root", str(tmp_path)]) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "Traceback" not in text and "is not a readable Parquet file" in text


def test_tables_keep_whole_model_names_when_output_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    monkeypatch.setenv("COLUMNS", "0")
    monkeypatch.delenv("COLUMNS")  # unset for the command; restored (unset) after the test
    assert main(["train", "--list-models"]) == 0
    out = capsys.readouterr().out
    assert os.environ.get("COLUMNS") == "200"
    assert "event_oneclass_svm_words" in out and "sequence_shap_lr_words" in out and "…" not in out
