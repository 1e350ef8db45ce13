"""Kafka fixtures: one real broker per test session, and Faust settings that make tests quick.

Where the broker comes from, in this order (never a skip: no broker is a test *failure*):

1. ``KAFKA_BOOTSTRAP_SERVERS`` (or ``LO2_KAFKA_BOOTSTRAP_SERVERS``) is set: use that broker; it must
   answer a Metadata request, else every Kafka test fails saying so.
2. Java is on PATH and Maven is too (or the Kafka jars are already cached): start the project's own
   single-node KRaft broker (worker/broker.py) on a free port in a temp dir; stopped at session end.
3. Docker works: a testcontainers Kafka (image ``LO2_KAFKA_DOCKER_IMAGE``).
4. Otherwise fail with a message that names what is missing and how to fix it.

Tests isolate themselves from each other (and from other sessions on a shared external broker) by
unique topic names and group/app ids: use the ``unique_name`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from shared.errors import BrokerError
from shared.settings import Settings

#: Faust App keyword arguments that make a test app start, join its group and rebalance quickly
#: against a single-node broker.  Measured in docs/kafka.md ("Fast Faust settings"): a second member
#: joining took 4.6-7.6 s with Faust's defaults and 1.2-2.7 s with these; a member leaving, 1.5-3 s
#: and 0.3 s.
FAST_FAUST_SETTINGS: dict[str, Any] = {
    # Tables in memory (no RocksDB files to clean up); no web server (no port clashes).
    "store": "memory://",
    "web_enabled": False,
    # One broker: one replica; tests pass their own partition counts where they matter.
    "topic_replication_factor": 1,
    "topic_partitions": 1,
    # Records produced before the app joined are still read.
    "consumer_auto_offset_reset": "earliest",
    # Members notice a rebalance on their next heartbeat: 0.3 s instead of 3 s.
    "broker_heartbeat_interval": 0.3,
    # A crashed member is dropped after 6 s instead of 60 s (the broker allows >= 1 s; 6 s keeps a
    # busy 2-core machine from expiring healthy members).
    "broker_session_timeout": 6.0,
    # A stuck rebalance gives up after 10 s instead of 60 s.
    "broker_rebalance_timeout": 10.0,
    # Commit processed offsets every 0.5 s (default 2.8 s), so a restarted app resumes where it was.
    "broker_commit_interval": 0.5,
    # No standby replicas of tables: each standby adds a recovery round (~1.5 s each: Faust's
    # consumer long-polls fetches for 1.5 s and the broker answers one request per connection at
    # a time).
    "table_standby_replicas": 0,
    # Do not wait for in-flight events to drain before a rebalance or stop.
    "stream_wait_empty": False,
    "stream_recovery_delay": 0.0,
}


@dataclass(frozen=True)
class KafkaEndpoint:
    """The session's broker: where it is, where it came from and how long it took to get."""

    bootstrap: str
    kind: Literal["external", "local", "docker"]
    seconds_to_ready: float
    detail: str


@dataclass(frozen=True)
class BrokerPlan:
    kind: Literal["external", "local", "docker"]
    reason: str


class NoBrokerAvailable(Exception):
    """No way to get a Kafka broker on this machine; the message says what is missing."""


def plan_broker(
    *,
    env_bootstrap: str | None,
    java: str | None,
    mvn: str | None,
    jars_cached: bool,
    docker_problem: Callable[[], str | None],
    jar_dir: str = "the cache",
) -> BrokerPlan:
    """Decide where the session's broker comes from (see the module docstring for the order).

    ``docker_problem`` is only called when needed (it talks to the Docker daemon) and returns None
    when Docker works, else what is wrong.
    """
    if env_bootstrap:
        return BrokerPlan("external", f"KAFKA_BOOTSTRAP_SERVERS={env_bootstrap}")
    if java and (mvn or jars_cached):
        return BrokerPlan("local", "Java and the Kafka jars (or Maven to fetch them) are available")
    problem = docker_problem()
    if problem is None:
        return BrokerPlan("docker", "Java/Maven missing, Docker available: testcontainers Kafka")
    missing = []
    if not java:
        missing.append("`java` (17+) is not on PATH")
    if not mvn and not jars_cached:
        missing.append(f"`mvn` is not on PATH and no Kafka jars are cached in {jar_dir}")
    raise NoBrokerAvailable(
        "no Kafka broker for the Kafka tests: KAFKA_BOOTSTRAP_SERVERS is not set; "
        + "; ".join(missing)
        + f"; and Docker is not usable ({problem}). Fix one of them: install Java 17 and Maven "
        "(then `make kafka-jars`), start Docker, or export KAFKA_BOOTSTRAP_SERVERS=host:port."
    )


def docker_problem() -> str | None:
    """None if a Docker daemon answers a ping, else a short reason."""
    if shutil.which("docker") is None:
        return "no `docker` on PATH"
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        return f"the docker Python package is missing ({exc})"
    try:
        docker.from_env(timeout=5).ping()
    except (DockerException, OSError) as exc:
        return f"the Docker daemon does not answer: {exc}"
    return None


def unique_topic(prefix: str) -> str:
    """A topic / group / app id nobody else uses (tests share one broker, maybe with other people)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


_SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def kafka_broker(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaEndpoint]:
    """The session's real Kafka broker (see the module docstring for where it comes from)."""
    from worker import broker

    try:
        plan = plan_broker(
            env_bootstrap=settings.kafka_bootstrap_servers,
            java=shutil.which(settings.kafka_java),
            mvn=shutil.which(settings.kafka_mvn),
            jars_cached=broker.cached_jars(settings) is not None,
            docker_problem=docker_problem,
            jar_dir=str(broker.jar_dir(settings)),
        )
    except NoBrokerAvailable as exc:
        pytest.fail(str(exc), pytrace=False)

    started = time.monotonic()
    if plan.kind == "external":
        bootstrap = settings.kafka_bootstrap_servers or ""
        try:
            cluster = broker.probe(bootstrap, timeout_s=10.0)
        except BrokerError as exc:
            pytest.fail(
                f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer: {exc}", pytrace=False
            )
        endpoint = KafkaEndpoint(
            bootstrap, "external", time.monotonic() - started, f"cluster {cluster.cluster_id}"
        )
        _SUMMARY.append(f"kafka: external broker {bootstrap} ({endpoint.detail})")
        yield endpoint
        return

    if plan.kind == "local":
        state_dir = tmp_path_factory.mktemp("kafka")
        try:
            with broker.local_kafka(settings, state_dir=state_dir) as running:
                assert running.info is not None
                endpoint = KafkaEndpoint(
                    running.info.bootstrap,
                    "local",
                    time.monotonic() - started,
                    f"Apache Kafka {running.info.version}, pid {running.info.pid}, "
                    f"format {running.info.format_seconds or 0:.1f} s, broker {running.info.start_seconds or 0:.1f} s",
                )
                _SUMMARY.append(
                    f"kafka: local broker {endpoint.bootstrap} ready {endpoint.seconds_to_ready:.1f} s "
                    f"after the first test asked ({endpoint.detail}; jars fetched if needed)"
                )
                yield endpoint
        except BrokerError as exc:
            pytest.fail(f"could not start the local Kafka broker: {exc}", pytrace=False)
        return

    from testcontainers.community.kafka import KafkaContainer

    container = (
        KafkaContainer(settings.kafka_docker_image)
        .with_kraft()
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    )
    container.start()
    try:
        bootstrap = container.get_bootstrap_server()
        endpoint = KafkaEndpoint(
            bootstrap, "docker", time.monotonic() - started, settings.kafka_docker_image
        )
        _SUMMARY.append(
            f"kafka: testcontainers broker {bootstrap} ({endpoint.detail}) in {endpoint.seconds_to_ready:.1f} s"
        )
        yield endpoint
    finally:
        container.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaEndpoint) -> str:
    """``host:port`` of the session's real Kafka broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def fast_faust_settings() -> dict[str, Any]:
    """A fresh copy of :data:`FAST_FAUST_SETTINGS` (tests may change it)."""
    return dict(FAST_FAUST_SETTINGS)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("lo2.logs")`` -> ``"lo2.logs-3f9c1a2b7d"``: topic, group and app ids per test."""
    return unique_topic


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _SUMMARY:
        terminalreporter.write_line(line)


@contextlib.asynccontextmanager
async def running_faust_app(app: Any, *, timeout_s: float = 60.0) -> AsyncIterator[Any]:
    """Run a Faust app inside the current event loop until the ``async with`` block ends.

    Returns control only once the app has joined its group, recovered its tables and sought its
    stream partitions to the committed offsets (``app.tables.recovery.completed``).  Why wait:
    faust-streaming 0.15.3 resumes the stream partitions *before* that seek, so a record fetched
    in between is processed, then the seek rewinds and it is processed again.  Producing input
    only after this point keeps tests exact; production code must tolerate the duplicate
    (at-least-once).  The app is always stopped (LeaveGroup, final offset commit).
    """
    await app.start()
    try:
        try:
            await asyncio.wait_for(app.tables.recovery.completed.wait(), timeout_s)
        except TimeoutError:
            pytest.fail(
                f"Faust app {app.conf.id} did not finish joining its group and recovering its "
                f"tables within {timeout_s:.0f} s (broker {app.conf.broker})",
                pytrace=False,
            )
        yield app
    finally:
        await app.stop()
