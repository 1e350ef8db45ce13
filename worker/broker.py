"""A real single-node Apache Kafka broker (KRaft), run by the project itself from the official jars.

Why: the integration tests and the demo need a *real* broker (consumer-group joins and rebalances,
CreateTopics, compacted changelog topics), and most machines that run this project have Java and
Maven but no Docker.  This module fetches the Apache Kafka jars from Maven Central into the cache
once, formats a KRaft storage directory, starts ``kafka.Kafka`` in its own process group, waits
until a real Kafka Metadata request answers, and stops it cleanly (SIGTERM to the whole group,
SIGKILL after a timeout), so no stray ``java`` process outlives it.

Everything of one broker lives in its *state dir*::

    <state-dir>/server.properties   rendered from deploy/kafka/server.properties.template
    <state-dir>/data/               KRaft metadata and topic logs (log.dirs)
    <state-dir>/logs/server.log     the broker's own log4j2 log (WARN by default: quiet)
    <state-dir>/logs/stdout.log     JVM stdout/stderr (crashes, JVM warnings)
    <state-dir>/broker.json         the "pid file": pid, process start time, ports, version

Start-up is kept short by JVM flags (settings ``kafka_jvm_opts``) and by a class-data-sharing
archive per Kafka version and JVM (settings ``kafka_cds``): the first broker (and the first
``StorageTool format``) writes it when it exits, later starts map the already-parsed classes.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

from shared.errors import BrokerError
from shared.redaction import redact
from shared.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
#: Written into the jar folder once Maven has copied every jar (an interrupted fetch has none).
MARKER_NAME = ".complete"
INFO_NAME = "broker.json"
#: Kafka 4.x brokers need Java 17 (KIP-750 / KIP-1013).
MIN_JAVA = 17
#: Maven resolves ~46 jars (~40 MB); on a slow link the first fetch may take minutes.
FETCH_TIMEOUT_S = 1200.0
FORMAT_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 25
_POLL_S = 0.1


class PortInUseError(BrokerError):
    """The port the broker should listen on is taken (another broker, or a race for a free port)."""


class MissingToolError(BrokerError):
    """Java or Maven is not installed (or not where the settings say)."""


# --------------------------------------------------------------------------------------------------
# Data shapes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatePaths:
    """Where one broker keeps its files (see the module docstring)."""

    root: Path

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs / "stdout.log"

    @property
    def info(self) -> Path:
        return self.root / INFO_NAME


@dataclass(frozen=True)
class BrokerInfo:
    """What ``start`` records in ``broker.json`` so that another process can find and stop the broker."""

    pid: int
    create_time: float
    host: str
    port: int
    controller_port: int
    version: str
    cluster_id: str
    state_dir: str
    started_at: str
    start_seconds: float | None = None
    format_seconds: float | None = None
    cds_dump: str | None = None
    cds_archive: str | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterInfo:
    """The answer of a Kafka Metadata request: proof that a broker is up and serving."""

    bootstrap: str
    cluster_id: str | None
    broker_ids: tuple[int, ...]
    controller_id: int | None
    probe_seconds: float


@dataclass(frozen=True)
class BrokerStatus:
    """State of the local broker of one state dir.

    ``state`` is one of ``running`` (process alive and answering), ``not-answering`` (process alive,
    no Metadata answer), ``not-running`` (no broker recorded, or the recorded process is gone).
    """

    state: str
    state_dir: Path
    info: BrokerInfo | None
    cluster: ClusterInfo | None
    detail: str

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def bootstrap(self) -> str | None:
        return self.info.bootstrap if self.info else None


# --------------------------------------------------------------------------------------------------
# Tools and jars
# --------------------------------------------------------------------------------------------------


def find_tool(name_or_path: str, *, what: str, setting: str) -> str:
    """Absolute path of an executable, or a BrokerError that says what to install or set."""
    found = shutil.which(name_or_path)
    if found is None:
        raise MissingToolError(
            f"{what} not found: {name_or_path!r} is not an executable on PATH; install it "
            f"or point {setting} at it"
        )
    return found


def jar_dir(settings: Settings) -> Path:
    """Folder that holds (or will hold) the Kafka jars of ``settings.kafka_version``."""
    return settings.cache_dir / "kafka" / settings.kafka_version / "lib"


def cached_jars(settings: Settings) -> Path | None:
    """The jar folder if a previous fetch completed (marker present, every listed jar there)."""
    lib = jar_dir(settings)
    try:
        marker = json.loads((lib / MARKER_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    jars = marker.get("jars") if isinstance(marker, dict) else None
    if marker.get("version") != settings.kafka_version or not jars:
        return None
    if not all((lib / name).is_file() for name in jars):
        return None
    return lib


def fetch_jars(settings: Settings, *, force: bool = False) -> Path:
    """Fetch Apache Kafka ``settings.kafka_version`` and its runtime dependencies with Maven.

    Idempotent: returns at once when a completed fetch is cached.  Maven copies into a temporary
    folder that is renamed into place only when complete (with a marker file), so an interrupted or
    concurrent fetch never leaves a half-filled ``lib`` that a broker would try to run.
    """
    if not force:
        cached = cached_jars(settings)
        if cached is not None:
            log.debug("Kafka %s jars already cached in %s", settings.kafka_version, cached)
            return cached
    find_tool(
        settings.kafka_java, what="Java (needed by Maven and the broker)", setting="LO2_KAFKA_JAVA"
    )
    mvn = find_tool(
        settings.kafka_mvn, what="Maven (fetches the Kafka jars)", setting="LO2_KAFKA_MVN"
    )
    pom = settings.kafka_resources_dir / "pom.xml"
    if not pom.is_file():
        raise BrokerError(
            f"Kafka pom not found at {pom}; expected deploy/kafka/pom.xml (setting LO2_KAFKA_RESOURCES_DIR)"
        )
    lib = jar_dir(settings)
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lib.tmp-", dir=lib.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary readable data
    cmd = [
        mvn, "-B", "-q", "-ntp", "-Dstyle.color=never", "-f", str(pom),
        "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
        f"-Dkafka.version={settings.kafka_version}", "-DincludeScope=runtime",
    ]  # fmt: skip
    log.info("fetching Apache Kafka %s jars with Maven into %s", settings.kafka_version, lib)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=FETCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(
            f"Maven did not finish fetching Kafka {settings.kafka_version} within {FETCH_TIMEOUT_S:.0f} s ({shlex.join(cmd)})"
        ) from exc
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(
            f"Maven could not fetch Apache Kafka {settings.kafka_version} (exit code {proc.returncode} "
            f"from {shlex.join(cmd)}); is Maven Central reachable?\n{_tail_text(proc.stdout + proc.stderr)}"
        )
    jars = sorted(p.name for p in tmp.glob("*.jar"))
    expected = f"kafka_2.13-{settings.kafka_version}.jar"
    if expected not in jars:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(
            f"Maven finished but {expected} is not among the {len(jars)} jars it copied; check {pom}"
        )
    marker = {"version": settings.kafka_version, "jars": jars, "fetched_at": _now_iso()}
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    try:
        os.rename(tmp, lib)
    except OSError:
        # `lib` exists: a concurrent fetch finished first (keep it), or an old incomplete copy (replace it).
        if cached_jars(settings) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return lib
        shutil.rmtree(lib, ignore_errors=True)
        os.rename(tmp, lib)
    log.info("fetched %d jars in %.1f s", len(jars), time.monotonic() - started)
    return lib


def classpath(lib: Path) -> str:
    """Explicit, sorted class path (a stable order keeps the CDS archive valid between runs)."""
    jars = sorted(lib.glob("*.jar"))
    if not jars:
        raise BrokerError(f"no jars in {lib}; run `lo2 kafka fetch`")
    return os.pathsep.join(str(j) for j in jars)


_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')
_java_checked: dict[str, int] = {}


def java_major_version(java: str) -> int:
    """Major version of a Java executable (``1.8`` counts as 8); cached per executable."""
    if java in _java_checked:
        return _java_checked[java]
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"cannot run {java} -version: {exc}") from exc
    match = _JAVA_VERSION_RE.search(proc.stderr + proc.stdout)
    if match is None:
        raise BrokerError(
            f"cannot read the version of {java} from: {(proc.stderr + proc.stdout).strip()[:200]!r}"
        )
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    _java_checked[java] = major
    return major


def require_java(settings: Settings) -> str:
    java = find_tool(
        settings.kafka_java, what="Java 17+ (runs the Kafka broker)", setting="LO2_KAFKA_JAVA"
    )
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise BrokerError(
            f"Apache Kafka {settings.kafka_version} needs Java {MIN_JAVA}+, but {java} is Java {major}; install a newer JDK or set LO2_KAFKA_JAVA"
        )
    return java


# --------------------------------------------------------------------------------------------------
# Configuration, ports, storage
# --------------------------------------------------------------------------------------------------


def render_properties(
    template: str, *, host: str, port: int, controller_port: int, data_dir: Path
) -> str:
    """Fill the ``$name`` placeholders of the server.properties template."""
    try:
        return string.Template(template).substitute(
            host=host, port=port, controller_port=controller_port, data_dir=data_dir.as_posix()
        )
    except (KeyError, ValueError) as exc:
        raise BrokerError(
            f"bad placeholder in the broker properties template: {exc}; expected $host, $port, $controller_port, $data_dir"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the kernel picks it; another process may still race us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on (host, port), so a broker could not bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as Kafka's Uuid)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):  # Kafka's Uuid never starts with '-' (it would read as a flag)
            return cid


def _read_cluster_id(data_dir: Path) -> str | None:
    meta = data_dir / "meta.properties"
    if not meta.is_file():
        return None
    for line in meta.read_text(encoding="utf-8").splitlines():
        if line.startswith("cluster.id="):
            return line.split("=", 1)[1].strip()
    return None


def _cds_flags(
    settings: Settings, lib: Path, java: str, role: str, paths: StatePaths
) -> tuple[list[str], Path | None, Path | None]:
    """JVM flags that use (or, the first time, create) the CDS archive of ``role``.

    Returns (flags, where the JVM dumps a new archive at exit, where the archive is kept).  The
    archive depends on the JVM build and the exact class path, so both go into its name.
    """
    if not settings.kafka_cds:
        return [], None, None
    real_java = os.path.realpath(java)
    key_src = f"{real_java}|{os.stat(real_java).st_mtime_ns}|{classpath(lib)}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    archive = lib.parent / "cds" / f"{role}-{key}.jsa"
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}"], None, archive
    dump = paths.root / f"{role}-{os.getpid()}.jsa.tmp"
    return [f"-XX:ArchiveClassesAtExit={dump}"], dump, archive


def _adopt_cds(dump: Path | None, archive: Path | None) -> None:
    """Move an archive the JVM dumped at exit into the cache (atomic: concurrent brokers are fine)."""
    if dump is None or archive is None:
        return
    try:
        if dump.is_file() and dump.stat().st_size > 0:
            archive.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dump, archive)
            log.info(
                "saved class-data-sharing archive %s (faster broker starts from now on)", archive
            )
        else:
            dump.unlink(missing_ok=True)
    except OSError as exc:
        log.warning(
            "could not keep the CDS archive %s: %s (starts stay slower, nothing else changes)",
            dump,
            exc,
        )


def _jvm_base(settings: Settings, java: str, paths: StatePaths) -> list[str]:
    resources = settings.kafka_resources_dir
    log4j = resources / "log4j2.xml"
    if not log4j.is_file():
        raise BrokerError(
            f"log4j2 configuration not found at {log4j}; expected deploy/kafka/log4j2.xml"
        )
    return [
        java,
        f"-Xmx{settings.kafka_heap}",
        *shlex.split(settings.kafka_jvm_opts),
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlo2.kafka.log.level={settings.kafka_log_level}",
    ]


def format_storage(
    settings: Settings, java: str, lib: Path, paths: StatePaths
) -> tuple[str, float]:
    """Format the KRaft storage of ``paths`` unless already formatted; returns (cluster id, seconds)."""
    existing = _read_cluster_id(paths.data)
    if existing:
        return existing, 0.0
    cluster_id = new_cluster_id()
    cds, dump, archive = _cds_flags(settings, lib, java, "format", paths)
    cmd = [
        *_jvm_base(settings, java, paths), *cds, "-cp", classpath(lib), STORAGE_TOOL_CLASS,
        "format", "-t", cluster_id, "-c", str(paths.properties), "--ignore-formatted",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=FORMAT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"formatting the KRaft storage in {paths.data} took more than {FORMAT_TIMEOUT_S:.0f} s"
        ) from exc
    if proc.returncode != 0:
        raise BrokerError(
            f"formatting the KRaft storage in {paths.data} failed (exit code {proc.returncode}):\n"
            f"{_tail_text(proc.stdout + proc.stderr)}"
        )
    _adopt_cds(dump, archive)
    return _read_cluster_id(paths.data) or cluster_id, time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------------


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Inside a running loop (an async test, the worker): use a private loop on a helper thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lo2-kafka-probe") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def describe_cluster(bootstrap: str, *, timeout_s: float = 5.0) -> ClusterInfo:
    """Ask the cluster for its metadata (a real Kafka Metadata request through aiokafka)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    started = time.monotonic()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="lo2-kafka-probe",
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        meta = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(
            f"no Kafka Metadata answer from {bootstrap}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await admin.close()
    brokers = tuple(sorted(int(b["node_id"]) for b in meta.get("brokers", [])))
    if not brokers:
        raise BrokerError(f"Kafka at {bootstrap} answered but lists no live broker yet")
    controller = meta.get("controller_id")
    return ClusterInfo(
        bootstrap=bootstrap,
        cluster_id=meta.get("cluster_id"),
        broker_ids=brokers,
        controller_id=int(controller) if controller is not None and controller >= 0 else None,
        probe_seconds=time.monotonic() - started,
    )


def probe(bootstrap: str, *, timeout_s: float = 5.0) -> ClusterInfo:
    """Sync wrapper of :func:`describe_cluster`; raises BrokerError when nothing answers."""
    return run_sync(lambda: describe_cluster(bootstrap, timeout_s=timeout_s))


def _tcp_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------

#: Brokers started with ``attach=True`` by this process: stopped at interpreter exit at the latest.
_ATTACHED: dict[Path, subprocess.Popen[bytes]] = {}
_atexit_registered = False


def _stop_attached_at_exit() -> None:
    for root in list(_ATTACHED):
        try:
            stop(root)
        except BrokerError as exc:  # at exit there is nobody left to raise to: say it loudly
            log.error("could not stop the Kafka broker of %s at exit: %s", root, exc)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    """Ask Linux to SIGTERM the broker when the process that started it dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: atexit and stop() still apply


def read_info(state_dir: Path) -> BrokerInfo | None:
    """The recorded broker of a state dir (None if none is recorded or the record is unreadable)."""
    path = StatePaths(state_dir).info
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BrokerInfo(**data)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError) as exc:
        log.warning("ignoring unreadable broker record %s: %s", path, exc)
        return None


def _write_info(info: BrokerInfo) -> None:
    path = StatePaths(Path(info.state_dir)).info
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _process_of(info: BrokerInfo) -> psutil.Process | None:
    """The live process recorded in ``info``, checked by start time and main class (pids get reused)."""
    try:
        proc = psutil.Process(info.pid)
        if abs(proc.create_time() - info.create_time) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(info.pid)
            return None
        if MAIN_CLASS not in proc.cmdline():
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None


def _reap(pid: int) -> None:
    popen = next((p for p in _ATTACHED.values() if p.pid == pid), None)
    if popen is not None:
        popen.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(info: BrokerInfo, timeout_s: float) -> bool:
    popen = next((p for p in _ATTACHED.values() if p.pid == info.pid), None)
    if popen is not None:
        try:
            popen.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _process_of(info) is None:
            return True
        time.sleep(_POLL_S)
    return _process_of(info) is None


def _tail_file(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return _tail_text(text, lines)


def _tail_text(text: str, lines: int = LOG_TAIL_LINES) -> str:
    kept = [ln for ln in text.splitlines() if ln.strip() and "[cds]" not in ln][-lines:]
    return redact("\n".join(kept)) if kept else "(no output)"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# Public API: start / stop / status
# --------------------------------------------------------------------------------------------------


def status(state_dir: Path, *, timeout_s: float = 5.0) -> BrokerStatus:
    """Is the broker of ``state_dir`` running, and does it answer a Metadata request?"""
    paths = StatePaths(state_dir)
    info = read_info(state_dir)
    if info is None:
        return BrokerStatus(
            "not-running", state_dir, None, None, f"no broker recorded in {paths.info}"
        )
    if _process_of(info) is None:
        return BrokerStatus(
            "not-running",
            state_dir,
            info,
            None,
            f"recorded broker (pid {info.pid}) is not running any more",
        )
    try:
        cluster = probe(info.bootstrap, timeout_s=timeout_s)
    except BrokerError as exc:
        return BrokerStatus(
            "not-answering",
            state_dir,
            info,
            None,
            f"pid {info.pid} is alive but {exc}; see {paths.server_log}",
        )
    return BrokerStatus("running", state_dir, info, cluster, f"answering at {info.bootstrap}")


def start(
    settings: Settings,
    *,
    port: int | None = None,
    controller_port: int | None = None,
    state_dir: Path | None = None,
    fresh: bool = False,
    attach: bool = False,
) -> BrokerStatus:
    """Start the local broker and return once it answers a Metadata request.

    ``attach=False`` (``lo2 kafka start``) leaves the broker running after this process exits;
    ``attach=True`` (tests, ``local_kafka``) ties it to this process: it is stopped at interpreter
    exit and, on Linux, killed by the kernel if this process dies abruptly.  ``fresh`` wipes the
    topic data first.  The storage is formatted on first use and kept between starts otherwise.
    """
    global _atexit_registered
    paths = StatePaths((state_dir or settings.kafka_state_dir).resolve())
    current = status(paths.root)
    if current.state != "not-running":
        raise BrokerError(
            f"a Kafka broker of {paths.root} is already {current.state} at {current.bootstrap} "
            f"(pid {current.info.pid if current.info else '?'}); stop it first (`lo2 kafka stop`)"
        )
    if current.info is not None:  # stale record of a broker that died
        paths.info.unlink(missing_ok=True)

    lib = cached_jars(settings) or fetch_jars(settings)
    java = require_java(settings)
    host = settings.kafka_host
    port = settings.kafka_port if port is None else port
    if port_in_use(host, port):
        raise PortInUseError(
            f"port {port} on {host} is already in use (another Kafka broker or program); choose another with --port or LO2_KAFKA_PORT"
        )
    if controller_port is None:
        controller_port = settings.kafka_controller_port
        if controller_port == port or port_in_use(host, controller_port):
            controller_port = free_port(host)
            log.info(
                "controller port %d is taken; using free port %d",
                settings.kafka_controller_port,
                controller_port,
            )
    elif controller_port == port or port_in_use(host, controller_port):
        raise PortInUseError(
            f"controller port {controller_port} on {host} is already in use or equals the broker port"
        )

    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    if fresh and paths.data.exists():
        shutil.rmtree(paths.data)
    template = (settings.kafka_resources_dir / "server.properties.template").read_text(
        encoding="utf-8"
    )
    paths.properties.write_text(
        render_properties(
            template, host=host, port=port, controller_port=controller_port, data_dir=paths.data
        ),
        encoding="utf-8",
    )
    cluster_id, format_s = format_storage(settings, java, lib, paths)

    cds, dump, archive = _cds_flags(settings, lib, java, "broker", paths)
    cmd = [
        *_jvm_base(settings, java, paths),
        *cds,
        "-cp",
        classpath(lib),
        MAIN_CLASS,
        str(paths.properties),
    ]
    started = time.monotonic()
    with open(paths.stdout_log, "wb") as out:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            start_new_session=True,  # own process group: stop() signals the whole group
            preexec_fn=_die_with_parent if attach else None,  # only sets PDEATHSIG
        )
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = time.time()
    info = BrokerInfo(
        pid=popen.pid, create_time=create_time, host=host, port=port, controller_port=controller_port,
        version=settings.kafka_version, cluster_id=cluster_id, state_dir=str(paths.root),
        started_at=_now_iso(), format_seconds=round(format_s, 3),
        cds_dump=str(dump) if dump else None, cds_archive=str(archive) if archive else None,
    )  # fmt: skip
    _write_info(info)
    if attach:
        _ATTACHED[paths.root] = popen
        if not _atexit_registered:
            atexit.register(_stop_attached_at_exit)
            _atexit_registered = True
    try:
        cluster = _wait_until_ready(info, popen, paths, timeout_s=settings.kafka_start_timeout_s)
    except BrokerError:
        _ATTACHED.setdefault(paths.root, popen)  # so stop() reaps it
        stop(paths.root, timeout_s=5.0)
        raise
    info = replace(info, start_seconds=round(time.monotonic() - started, 3))
    _write_info(info)
    log.info(
        "Kafka %s broker answering at %s after %.1f s (pid %d)",
        info.version,
        info.bootstrap,
        info.start_seconds,
        info.pid,
    )
    return BrokerStatus(
        "running", paths.root, info, cluster, f"started in {info.start_seconds:.1f} s"
    )


def _wait_until_ready(
    info: BrokerInfo, popen: subprocess.Popen[bytes], paths: StatePaths, *, timeout_s: float
) -> ClusterInfo:
    deadline = time.monotonic() + timeout_s
    last_error = "the port never opened"
    while True:
        code = popen.poll()
        if code is not None:
            logs = f"{paths.stdout_log}:\n{_tail_file(paths.stdout_log)}\n{paths.server_log}:\n{_tail_file(paths.server_log)}"
            if "Address already in use" in logs:
                raise PortInUseError(
                    f"the Kafka broker could not bind {info.bootstrap} or controller port {info.controller_port}: address already in use"
                )
            raise BrokerError(
                f"the Kafka broker exited with code {code} before it answered at {info.bootstrap}; last lines of {logs}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"the Kafka broker (pid {info.pid}) did not answer at {info.bootstrap} within {timeout_s:.0f} s "
                f"(last error: {last_error}); see {paths.server_log} and {paths.stdout_log}"
            )
        if _tcp_open(info.host, info.port):
            try:
                return probe(info.bootstrap, timeout_s=min(5.0, max(remaining, 0.5)))
            except BrokerError as exc:
                last_error = str(exc)
        time.sleep(_POLL_S)


def stop(state_dir: Path, *, timeout_s: float = 30.0) -> bool:
    """Stop the broker of ``state_dir``: SIGTERM to its process group, SIGKILL after ``timeout_s``.

    Returns True if a broker was running.  Idempotent; the broker record is removed either way.
    """
    root = state_dir.resolve()
    paths = StatePaths(root)
    info = read_info(root)
    popen = _ATTACHED.get(root)
    if info is None:
        return False
    stopped = False
    if _process_of(info) is not None:
        stopped = True
        _signal_group(info.pid, signal.SIGTERM)
        if not _wait_gone(info, timeout_s):
            log.warning(
                "Kafka broker pid %d did not stop within %.0f s of SIGTERM; killing it",
                info.pid,
                timeout_s,
            )
            _signal_group(info.pid, signal.SIGKILL)
            if not _wait_gone(info, 10.0):
                raise BrokerError(f"Kafka broker pid {info.pid} survived SIGKILL; stop it by hand")
        # Anything else the broker left in its group (there should be nothing) goes too.
        _signal_group(info.pid, signal.SIGKILL)
        log.info("stopped Kafka broker pid %d (%s)", info.pid, info.bootstrap)
    if popen is not None:
        popen.wait()  # reap our child so it does not linger as a zombie
        _ATTACHED.pop(root, None)
    _adopt_cds(
        Path(info.cds_dump) if info.cds_dump else None,
        Path(info.cds_archive) if info.cds_archive else None,
    )
    paths.info.unlink(missing_ok=True)
    return stopped


@contextlib.contextmanager
def local_kafka(
    settings: Settings, *, state_dir: Path, port: int | None = None, attempts: int = 3
) -> Iterator[BrokerStatus]:
    """A broker for the duration of a ``with`` block (tests): free port, attached, always stopped.

    A free port can be taken by someone else between choosing and binding it; then we try another.
    """
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port(settings.kafka_host)
        try:
            running = start(
                settings,
                port=chosen,
                controller_port=free_port(settings.kafka_host),
                state_dir=state_dir,
                attach=True,
            )
            break
        except PortInUseError:
            if port is not None or attempt == attempts:
                raise
            log.info("port %d was taken while the broker started; retrying on another port", chosen)
    try:
        yield running
    finally:
        stop(state_dir, timeout_s=settings.kafka_stop_timeout_s)
