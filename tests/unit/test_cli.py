"""The `lo2` front: --help, --version, and `lo2 kafka` when no broker runs (no broker needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil
import pytest

from lo2.cli import main
from worker import broker


def test_help_lists_the_kafka_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lo2" in out
    assert "kafka" in out and "fetch/start/stop/status" in out


def test_console_script_version_matches_the_package() -> None:
    lo2 = Path(sys.executable).with_name("lo2")
    proc = subprocess.run(
        [str(lo2), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"lo2-stream {metadata.version('lo2-stream')}"


def test_kafka_help_names_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["kafka", "--help"])
    out = capsys.readouterr().out
    for action in ("fetch", "start", "stop", "status"):
        assert action in out


def test_status_without_a_broker_says_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["kafka", "status", "--state-dir", str(tmp_path)])
    assert code == 3
    assert "not-running" in capsys.readouterr().out


def test_status_json_without_a_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["kafka", "status", "--state-dir", str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 3
    assert doc["state"] == "not-running"
    assert doc["bootstrap"] is None


def test_stop_without_a_broker_is_a_no_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kafka", "stop", "--state-dir", str(tmp_path)]) == 0
    assert "no Kafka broker running" in capsys.readouterr().out


def test_status_of_a_port_nobody_listens_on_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    port = broker.free_port()
    code = main(["kafka", "status", "--bootstrap", f"127.0.0.1:{port}", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["state"] == "not-answering"
    assert f"127.0.0.1:{port}" in doc["detail"]


def _record_pid(state_dir: Path, pid: int) -> None:
    proc = psutil.Process(pid)
    info = broker.BrokerInfo(
        pid=pid, create_time=proc.create_time(), host="127.0.0.1", port=1, controller_port=2,
        version="4.1.1", cluster_id="x", state_dir=str(state_dir), started_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    (state_dir / broker.INFO_NAME).write_text(json.dumps(broker.asdict(info)), encoding="utf-8")


def test_a_reused_pid_is_never_taken_for_the_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stale broker.json whose pid now belongs to another program: status says not running and
    stop must not signal that program (here: a sleeping child of this test)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _record_pid(tmp_path, sleeper.pid)
        assert main(["kafka", "status", "--state-dir", str(tmp_path)]) == 3
        assert main(["kafka", "stop", "--state-dir", str(tmp_path)]) == 0
        assert sleeper.poll() is None  # still alive: not signalled
        assert not (tmp_path / broker.INFO_NAME).exists()  # the stale record is gone
    finally:
        sleeper.kill()
        sleeper.wait()
    assert os.getpid() > 0
    capsys.readouterr()


def test_fetch_optional_without_maven_warns_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LO2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LO2_KAFKA_MVN", "mvn-that-does-not-exist-lo2")
    assert main(["kafka", "fetch", "--optional"]) == 0
    assert "Maven" in capsys.readouterr().out
    assert main(["kafka", "fetch"]) == 1
    assert "mvn-that-does-not-exist-lo2" in capsys.readouterr().err
