"""Topic administration and reachability checks with confluent-kafka's AdminClient."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from streaming.config import Config, KafkaConfig
from streaming.errors import BrokerError


def admin_client(kafka: KafkaConfig, errors: list[KafkaError] | None = None) -> AdminClient:
    """An AdminClient; `errors` collects the client's background errors (failed logins)."""
    options: dict[str, Any] = kafka.client_options()
    if errors is not None:
        options["error_cb"] = errors.append
    return AdminClient(options)


def cluster_metadata(kafka: KafkaConfig, timeout_s: float = 10.0) -> ClusterMetadata:
    """Cluster metadata, or one BrokerError: the brokers refused the login or cannot be reached."""
    background: list[KafkaError] = []
    admin = admin_client(kafka, background)
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        # A refused SASL login surfaces as a background error (served by poll); the request
        # itself only times out.
        admin.poll(0.5)
        reported = [exc.args[0]] if exc.args else []
        auth = [e for e in [*reported, *background] if isinstance(e, KafkaError)
                and e.code() in _AUTH_ERRORS]  # fmt: skip
        if auth:
            error = auth[0]
            raise BrokerError(
                f"Kafka at {kafka.bootstrap_servers} refused the credentials: {error.str()}",
                hint="check KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD / KAFKA_SASL_MECHANISM",
            ) from None
        tls = [e for e in background if isinstance(e, KafkaError) and e.code() == KafkaError._SSL]
        if tls:
            raise BrokerError(
                f"TLS with Kafka at {kafka.bootstrap_servers} failed: {_first_line(tls[0].str())}",
                hint="KAFKA_SSL_CA_LOCATION must name a PEM file with the certificate (or its CA) "
                "that the brokers present, and KAFKA_SECURITY_PROTOCOL must match the listener",
            ) from None
        raise BrokerError(
            f"cannot reach Kafka at {kafka.bootstrap_servers} within {timeout_s:.0f} s",
            hint="start the local broker with `lakehouse kafka start`, "
            "or set KAFKA_BOOTSTRAP_SERVERS to a reachable broker",
        ) from None


def watermarks(
    kafka: KafkaConfig, partitions: Iterable[tuple[str, int]], timeout_s: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """The (low, high) offsets of each (topic, partition), asked of the partition's leader.
    Raises KafkaException when one does not answer within `timeout_s`."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka.client_options(), "group.id": "lakehouse-offsets"})
    try:
        return {
            (topic, partition): consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            for topic, partition in partitions
        }
    finally:
        consumer.close()


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


_AUTH_ERRORS = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


def require_topics(config: Config, entities: list[str], timeout_s: float = 10.0) -> None:
    """Fail with one line if the brokers are unreachable or a topic does not exist."""
    metadata = cluster_metadata(config.kafka, timeout_s)
    missing = [
        config.topic(e).name for e in entities if config.topic(e).name not in metadata.topics
    ]
    if missing:
        raise BrokerError(
            f"topic(s) {', '.join(missing)} do not exist on {config.kafka.bootstrap_servers}",
            hint="create them with `lakehouse topics create`",
        )


def create_topics(config: Config, partitions: int | None = None) -> list[str]:
    """Create every configured topic that is missing. Returns one status line per topic."""
    metadata = cluster_metadata(config.kafka)
    wanted = [
        NewTopic(t.name, num_partitions=partitions or t.partitions, replication_factor=-1)
        for t in config.topics
        if t.name not in metadata.topics
    ]
    lines = []
    admin = admin_client(config.kafka)  # must outlive the futures it hands out
    futures = admin.create_topics(wanted, operation_timeout=30) if wanted else {}
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"could not create topic {name}: {error.str()}") from None
    metadata = _await_topics(config, [t.name for t in config.topics])
    for topic in config.topics:
        count = len(metadata.topics[topic.name].partitions)
        verb = "created" if topic.name in futures else "exists "
        lines.append(f"{verb} {topic.name} ({count} partitions)")
    return lines


def _await_topics(config: Config, names: list[str], timeout_s: float = 30.0) -> ClusterMetadata:
    """Metadata once every named topic shows in it: a created topic reaches the metadata a
    moment after its creation is acknowledged."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = cluster_metadata(config.kafka)
        missing = [n for n in names if n not in metadata.topics]
        if not missing:
            return metadata
        if time.monotonic() > deadline:
            raise BrokerError(
                f"topic(s) {', '.join(missing)} were created but are not in the brokers' "
                f"metadata after {timeout_s:.0f} s"
            )
        time.sleep(0.2)
