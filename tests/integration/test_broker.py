"""The local broker: start from a clean folder, stop, start again on the existing data."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streaming.config import load_config
from streaming.errors import BrokerError
from streaming.kafka import broker
from streaming.kafka.admin import create_topics
from tests.builders import publish
from tests.conftest import _free_ports


def _count(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "count", "enable.auto.commit": False}
    )
    try:
        total = 0
        for partition in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def test_start_stop_from_clean_state_and_from_existing_data(tmp_path: Path) -> None:
    port, controller = _free_ports(2)
    config = load_config(
        {
            "LAKEHOUSE_KAFKA_PORT": str(port),
            "LAKEHOUSE_KAFKA_CONTROLLER_PORT": str(controller),
            "LAKEHOUSE_KAFKA_DIR": str(tmp_path / "kafka"),
        }
    )
    try:
        assert broker.status(config.broker)[0] is False
        assert "started" in broker.start(config.broker, config.jars_dir)
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
        assert "already running" in broker.start(config.broker, config.jars_dir)
        assert any("created" in line for line in create_topics(config))
        publish(config, "external", [(b"k", b"v%d" % i, []) for i in range(25)])
        assert "stopped" in broker.stop(config.broker)
        assert broker.status(config.broker)[0] is False
        assert broker.stop(config.broker) == "Kafka broker is not running"

        assert "started" in broker.start(config.broker, config.jars_dir)
        running, line = broker.status(config.broker)
        assert running and "5 topics" in line
        assert _count(config.kafka.bootstrap_servers, config.topic("external").name, 1) == 25
    finally:
        broker.stop(config.broker)


def test_start_refuses_a_port_in_use(tmp_path: Path, kafka_bootstrap: str) -> None:
    taken = int(kafka_bootstrap.rsplit(":", 1)[1])
    config = load_config(
        {"LAKEHOUSE_KAFKA_PORT": str(taken), "LAKEHOUSE_KAFKA_DIR": str(tmp_path / "kafka")}
    )
    try:
        broker.start(config.broker, config.jars_dir)
    except BrokerError as exc:
        assert f"port {taken}" in str(exc) and "LAKEHOUSE_KAFKA_PORT" in str(exc)
    else:
        raise AssertionError("a second broker started on a port in use")


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage tool reads `-t -…` as an option; a random id starting with '-' (1 in 64) once
    failed a whole start. The first uuid here encodes to '-…', so the id must be the second."""
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=bytes(16))
    uuids = iter([dashed, plain])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(uuids))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    assert broker.new_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAA"
