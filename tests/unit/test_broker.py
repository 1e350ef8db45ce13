"""The broker runner's pure parts and its clear errors (no broker, no network)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from shared.errors import BrokerError
from shared.settings import Settings
from tests.plugins.kafka import FAST_FAUST_SETTINGS, NoBrokerAvailable, plan_broker, unique_topic
from worker import broker
from worker.topics import validate_topic_name

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "server.properties.template"


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def _props(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def test_template_renders_a_single_node_kraft_broker(tmp_path: Path) -> None:
    text = broker.render_properties(
        TEMPLATE.read_text(),
        host="127.0.0.1",
        port=19092,
        controller_port=19093,
        data_dir=tmp_path / "data",
    )
    props = _props(text)
    assert "$" not in text
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == (tmp_path / "data").as_posix()
    # What makes tests quick: no initial rebalance delay, one-partition internal topics.
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.num.partitions"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"


def test_template_with_an_unknown_placeholder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"placeholder.*\$host"):
        broker.render_properties(
            "listeners=$nope", host="h", port=1, controller_port=2, data_dir=tmp_path
        )


def test_cached_jars_needs_a_complete_marker(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    lib = broker.jar_dir(settings)
    lib.mkdir(parents=True)
    assert broker.cached_jars(settings) is None  # no marker: an interrupted fetch
    for name in ("a.jar", "b.jar"):
        (lib / name).write_bytes(b"PK")
    marker = {"version": settings.kafka_version, "jars": ["a.jar", "b.jar"]}
    (lib / broker.MARKER_NAME).write_text(json.dumps(marker))
    assert broker.cached_jars(settings) == lib
    (lib / "b.jar").unlink()
    assert broker.cached_jars(settings) is None  # a listed jar went missing
    (lib / "b.jar").write_bytes(b"PK")
    (lib / broker.MARKER_NAME).write_text(json.dumps({**marker, "version": "0.0.1"}))
    assert broker.cached_jars(settings) is None  # jars of another Kafka version


def test_fetch_without_maven_names_the_missing_tool(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_mvn="mvn-not-installed-lo2")
    with pytest.raises(broker.MissingToolError, match=r"Maven.*mvn-not-installed-lo2.*LO2_KAFKA_MVN"):
        broker.fetch_jars(settings)
    assert not broker.jar_dir(settings).exists()


def test_fetch_without_java_names_the_missing_tool(tmp_path: Path) -> None:
    settings = _settings(tmp_path, kafka_java="java-not-installed-lo2")
    with pytest.raises(broker.MissingToolError, match=r"Java.*java-not-installed-lo2.*LO2_KAFKA_JAVA"):
        broker.fetch_jars(settings)


def test_start_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    lib = broker.jar_dir(settings)
    lib.mkdir(parents=True)
    (lib / "kafka.jar").write_bytes(b"PK")
    (lib / broker.MARKER_NAME).write_text(
        json.dumps({"version": settings.kafka_version, "jars": ["kafka.jar"]})
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            broker.PortInUseError, match=rf"port {port} on 127.0.0.1 is already in use.*--port"
        ):
            broker.start(settings, port=port, state_dir=tmp_path / "state")


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {broker.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)


def test_free_port_is_bindable() -> None:
    port = broker.free_port()
    assert not broker.port_in_use("127.0.0.1", port)


def test_status_ignores_an_unreadable_record(tmp_path: Path) -> None:
    (tmp_path / broker.INFO_NAME).write_text("{not json")
    st = broker.status(tmp_path)
    assert st.state == "not-running"
    assert st.bootstrap is None


def _no_docker() -> str:
    return "daemon not running"


def test_plan_prefers_an_external_broker() -> None:
    plan = plan_broker(
        env_bootstrap="k:9092", java=None, mvn=None, jars_cached=False, docker_problem=_no_docker
    )
    assert plan.kind == "external"


def test_plan_uses_the_local_broker_with_java_and_maven_or_cached_jars() -> None:
    assert (
        plan_broker(
            env_bootstrap=None, java="/j", mvn="/m", jars_cached=False, docker_problem=_no_docker
        ).kind
        == "local"
    )
    assert (
        plan_broker(
            env_bootstrap=None, java="/j", mvn=None, jars_cached=True, docker_problem=_no_docker
        ).kind
        == "local"
    )


def test_plan_falls_back_to_docker_only_without_java() -> None:
    assert (
        plan_broker(
            env_bootstrap=None, java=None, mvn="/m", jars_cached=True, docker_problem=lambda: None
        ).kind
        == "docker"
    )


def test_plan_without_any_broker_fails_naming_what_is_missing() -> None:
    with pytest.raises(NoBrokerAvailable) as info:
        plan_broker(
            env_bootstrap=None,
            java=None,
            mvn=None,
            jars_cached=False,
            docker_problem=_no_docker,
            jar_dir="/c/kafka",
        )
    message = str(info.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert "`java`" in message and "`mvn`" in message and "/c/kafka" in message
    assert "daemon not running" in message


def test_fast_faust_settings_are_faster_than_faust_defaults() -> None:
    import faust

    defaults = faust.App("lo2-defaults-probe").conf
    fast = faust.App("lo2-fast-probe", **FAST_FAUST_SETTINGS).conf
    assert fast.broker_heartbeat_interval < defaults.broker_heartbeat_interval
    assert fast.broker_session_timeout < defaults.broker_session_timeout
    assert fast.broker_rebalance_timeout < defaults.broker_rebalance_timeout
    assert fast.table_standby_replicas == 0 and fast.stream_wait_empty is False
    # Kafka rejects a session timeout below 3 heartbeats' worth of slack.
    assert fast.broker_session_timeout >= 3 * fast.broker_heartbeat_interval


def test_unique_names_are_unique_and_legal_topic_names() -> None:
    names = {unique_topic("lo2.logs") for _ in range(100)}
    assert len(names) == 100
    assert all(validate_topic_name(n) == n for n in names)


@pytest.mark.parametrize("bad", ["", "has space", "a/b", ".", "..", "x" * 250])
def test_illegal_topic_names_are_rejected(bad: str) -> None:
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid Kafka topic name"):
        validate_topic_name(bad)
