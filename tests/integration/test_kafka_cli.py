"""`lo2 kafka start | status | stop` end to end, with the real console script and a real broker.

Where Java or Maven is missing (a Docker-only machine) the same commands must fail with a message
that names the missing tool; that is asserted instead.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from shared.settings import Settings
from worker import broker
from worker.topics import ensure_topics_sync

pytestmark = pytest.mark.integration

LO2 = str(Path(sys.executable).with_name("lo2"))


def _lo2(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LO2, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def _brokers_of(state_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) Kafka broker processes whose command line points into ``state_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if broker.MAIN_CLASS in cmd and any(str(state_dir) in part for part in cmd):
            if proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _local_broker_possible(settings: Settings) -> bool:
    return shutil.which(settings.kafka_java) is not None and (
        shutil.which(settings.kafka_mvn) is not None or broker.cached_jars(settings) is not None
    )


def test_start_status_stop_leaves_no_broker_behind(settings: Settings, tmp_path: Path) -> None:
    state = tmp_path / "kafka-state"
    port = broker.free_port()
    if not _local_broker_possible(settings):
        proc = _lo2("kafka", "start", "--port", str(port), "--state-dir", str(state))
        assert proc.returncode == 1
        assert "Java" in proc.stderr or "Maven" in proc.stderr
        return

    started = _lo2("kafka", "start", "--port", str(port), "--state-dir", str(state))
    assert started.returncode == 0, started.stderr
    assert f"127.0.0.1:{port}" in started.stdout
    try:
        status = _lo2("kafka", "status", "--state-dir", str(state), "--json")
        doc = json.loads(status.stdout)
        assert status.returncode == 0
        assert doc["state"] == "running"
        assert doc["bootstrap"] == f"127.0.0.1:{port}"
        assert doc["broker_ids"] == [1]
        assert doc["start_seconds"] > 0
        # The broker outlived the `lo2 kafka start` process and serves clients.
        topic = f"cli-check-{port}"
        assert ensure_topics_sync(doc["bootstrap"], [topic], partitions=2).partitions == {topic: 2}
        # Starting again is harmless and says where the running broker is.
        again = _lo2("kafka", "start", "--port", str(port), "--state-dir", str(state))
        assert again.returncode == 0 and "already running" in again.stdout
        pid = doc["pid"]
        assert [p.pid for p in _brokers_of(state)] == [pid]
    finally:
        stopped = _lo2("kafka", "stop", "--state-dir", str(state))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert _brokers_of(state) == []
    after = _lo2("kafka", "status", "--state-dir", str(state))
    assert after.returncode == 3
    assert "not-running" in after.stdout


_OWNER = """
import sys, time
from pathlib import Path
from shared.settings import Settings
from worker import broker
with broker.local_kafka(Settings(), state_dir=Path(sys.argv[1])) as running:
    print(running.info.pid, flush=True)
    time.sleep(600)
"""


def test_a_broker_dies_with_the_process_that_owns_it(settings: Settings, tmp_path: Path) -> None:
    """Tests attach their broker to their own process: even a SIGKILLed pytest leaves none behind."""
    state = tmp_path / "owned"
    if not _local_broker_possible(settings):
        with pytest.raises(Exception, match="Java|Maven"):
            broker.start(settings, state_dir=state, port=broker.free_port())
        return
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline().strip())
        assert psutil.pid_exists(pid)
        owner.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can clean up
        owner.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _brokers_of(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _brokers_of(state) == []
    finally:
        if owner.poll() is None:
            owner.kill()
        for leftover in _brokers_of(state):  # only if the assertion above failed
            leftover.kill()
