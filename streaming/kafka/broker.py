"""The local single-node Apache Kafka broker (KRaft combined mode) for development and tests.

Runs the real broker from the Maven-fetched classpath in `jars/kafka` as a plain JVM process on
loopback: `kafka.tools.StorageTool format` on first start, then `kafka.Kafka server.properties`.
State lives in `LAKEHOUSE_KAFKA_DIR` (default `./.kafka`): data, pid file, logs.
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from streaming import jars
from streaming.config import KafkaConfig, LocalBrokerConfig
from streaming.errors import BrokerError, ConfigError, SetupError
from streaming.kafka import tls
from streaming.kafka.admin import admin_client, cluster_metadata, watermarks
from streaming.processes import alive, log_tail, require_free_port, stop_service
from streaming.settings import Secret

if TYPE_CHECKING:
    from confluent_kafka.admin import ClusterMetadata

ScramUser = tuple[str, Secret]

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def start(broker: LocalBrokerConfig, jars_dir: Path, scram: ScramUser | None = None) -> str:
    """Start the broker unless it runs already; return once it answers metadata requests.

    With `broker.scram_port` set, a SASL_PLAINTEXT listener takes SCRAM logins and `scram`
    (user, password) is registered for both SCRAM mechanisms once the broker is up. With
    `broker.tls_port` set, a SASL_SSL listener takes the same logins over TLS.
    """
    classpath = f"{jars_dir / 'kafka'}/*"
    jars.require(jars_dir, "kafka")
    pid = running_pid(broker)
    if pid is not None:
        return f"Kafka broker already running (pid {pid}) on 127.0.0.1:{broker.port}"
    if (broker.scram_port or broker.tls_port) and scram is None:
        raise ConfigError(
            "the SCRAM listeners (LAKEHOUSE_KAFKA_SCRAM_PORT, LAKEHOUSE_KAFKA_TLS_PORT) "
            "need a user",
            hint="set KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        )
    for port in (broker.port, broker.controller_port, broker.scram_port, broker.tls_port):
        if port:
            require_free_port(port, BrokerError, "LAKEHOUSE_KAFKA_PORT")
    broker.data_dir.mkdir(parents=True, exist_ok=True)
    if broker.tls_port:
        tls.ensure_certificate(broker.tls_dir)
    properties = _write_config(broker)
    if not (broker.data_dir / "data" / "meta.properties").exists():
        _format_storage(classpath, properties, broker)
    with (broker.data_dir / "broker.out").open("ab") as out:
        process = subprocess.Popen(
            [
                "java", f"-Xmx{broker.heap}", f"-Xms{broker.heap}", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={broker.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={broker.data_dir}",
                "-cp", classpath, "kafka.Kafka", str(properties),
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _pid_file(broker).write_text(str(process.pid))
    _wait_ready(broker, process)
    extra = ""
    if scram is not None and (broker.scram_port or broker.tls_port):
        _register_scram_user(broker, *scram)
        if broker.scram_port:
            extra += f", SASL/SCRAM on 127.0.0.1:{broker.scram_port}"
        if broker.tls_port:
            extra += f", SASL/SCRAM over TLS on 127.0.0.1:{broker.tls_port}"
        extra += f" for user {scram[0]}"
        if broker.tls_port:
            extra += f" (clients trust {broker.tls_ca_file})"
    return (
        f"Kafka broker started (pid {process.pid}) on 127.0.0.1:{broker.port}{extra}, "
        f"data in {broker.data_dir}"
    )


def _register_scram_user(broker: LocalBrokerConfig, user: str, password: Secret) -> None:
    """Upsert the user's SCRAM credentials over the PLAINTEXT listener (never on a command
    line, where `ps` would show the password)."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            user, ScramCredentialInfo(mechanism, 4096), password.reveal().encode()
        )
        for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)
    ]
    admin = admin_client(_local_client(broker))  # must outlive the futures it hands out
    for upsert in upserts:  # one alteration per user and request
        try:
            for future in admin.alter_user_scram_credentials([upsert]).values():
                future.result(timeout=30)
        except Exception as exc:  # one line, without the credentials
            raise BrokerError(f"registering the SCRAM user {user} failed: {exc}") from None


def stop(broker: LocalBrokerConfig) -> str:
    """Stop the broker by pid: SIGTERM for a clean shutdown, SIGKILL only after a timeout."""
    return stop_service(running_pid(broker), _pid_file(broker), "Kafka broker", STOP_TIMEOUT_S)


def status(broker: LocalBrokerConfig) -> tuple[bool, str]:
    pid = running_pid(broker)
    if pid is None:
        return False, f"Kafka broker is not running (data folder {broker.data_dir})"
    try:
        metadata = cluster_metadata(_local_client(broker), timeout_s=5)
    except BrokerError:
        return False, f"Kafka broker process {pid} runs but does not answer on port {broker.port}"
    topics = sorted(t for t in metadata.topics if not t.startswith("__"))
    return (
        True,
        f"Kafka broker running (pid {pid}) on 127.0.0.1:{broker.port}; {len(topics)} topics",
    )


def running_pid(broker: LocalBrokerConfig) -> int | None:
    """The pid in the pid file if that process is alive and is a Kafka broker."""
    try:
        pid = int(_pid_file(broker).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid if alive(pid) else None
    return pid if b"kafka.Kafka" in cmdline else None


def _local_client(broker: LocalBrokerConfig) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=f"127.0.0.1:{broker.port}")


def _wait_ready(broker: LocalBrokerConfig, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _pid_file(broker).unlink(missing_ok=True)
            raise BrokerError(
                f"the Kafka broker exited with code {process.returncode} during start-up: "
                + _log_tail(broker),
                hint=f"see {broker.data_dir / 'broker.out'}",
            )
        try:
            metadata = cluster_metadata(_local_client(broker), timeout_s=2)
        except BrokerError:
            time.sleep(0.5)
            continue
        # Restarted on existing data, the broker answers before it leads its partitions again,
        # and lists a leader a moment before that leader serves: ready means every partition
        # answers an offsets request (no "not leader" for the first client).
        leaders = all(
            p.leader >= 0 for t in metadata.topics.values() for p in t.partitions.values()
        )
        if leaders and _partitions_answer(broker, metadata):
            return
        time.sleep(0.5)
    raise BrokerError(
        f"the Kafka broker did not answer within {READY_TIMEOUT_S:.0f} s",
        hint=f"see {broker.data_dir / 'broker.out'}; stop it with `lakehouse kafka stop`",
    )


def _partitions_answer(broker: LocalBrokerConfig, metadata: ClusterMetadata) -> bool:
    from confluent_kafka import KafkaException

    partitions = [(name, p) for name, topic in metadata.topics.items() for p in topic.partitions]
    try:
        watermarks(_local_client(broker), partitions, timeout_s=2)
        return True
    except KafkaException:
        return False


def new_cluster_id() -> str:
    """A random KRaft cluster id, as Kafka's own Uuid.randomUuid makes it: never starting with
    '-', which the storage tool's argument parser would read as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(classpath: str, properties: Path, broker: LocalBrokerConfig) -> None:
    cluster_id = new_cluster_id()
    result = subprocess.run(
        [
            "java", "-Xmx256m",
            f"-Dlog4j2.configurationFile={broker.data_dir / 'log4j2.properties'}",
            "-cp", classpath, "kafka.tools.StorageTool",
            "format", "-t", cluster_id, "-c", str(properties), "--ignore-formatted",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SetupError(
            "formatting the Kafka storage failed: " + (result.stderr or result.stdout)[-400:],
            hint=f"remove {broker.data_dir} to start from a clean state",
        )


def _write_config(broker: LocalBrokerConfig) -> Path:
    data = broker.data_dir
    properties = data / "server.properties"
    scram_listener = f",SASL_PLAINTEXT://127.0.0.1:{broker.scram_port}" if broker.scram_port else ""
    if broker.tls_port:
        scram_listener += f",SASL_SSL://127.0.0.1:{broker.tls_port}"
    properties.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{broker.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{broker.port},"
                f"CONTROLLER://127.0.0.1:{broker.controller_port}{scram_listener}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker.port}{scram_listener}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map="
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
                "SASL_SSL:SASL_SSL",
                "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
                *[
                    f"listener.name.{listener}.{m.lower()}.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    for listener in ("sasl_plaintext", "sasl_ssl")
                    for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                ],
                *(tls.listener_properties(broker.tls_dir, "sasl_ssl") if broker.tls_port else []),
                f"log.dirs={data / 'data'}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=5",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "message.max.bytes=2097152",
                "num.network.threads=2",
                "num.io.threads=4",
                "",
            ]
        )
    )
    (data / "log4j2.properties").write_text(
        "\n".join(
            [
                "appender.file.type=File",
                "appender.file.name=file",
                f"appender.file.fileName={data / 'broker.log'}",
                "appender.file.layout.type=PatternLayout",
                "appender.file.layout.pattern=[%d] %p %m (%c)%n",
                "rootLogger.level=INFO",
                "rootLogger.appenderRef.file.ref=file",
                "logger.kafka.name=kafka",
                "logger.kafka.level=INFO",
                "logger.state.name=state.change.logger",
                "logger.state.level=WARN",
                "",
            ]
        )
    )
    return properties


def _pid_file(broker: LocalBrokerConfig) -> Path:
    return broker.data_dir / "broker.pid"


def _log_tail(broker: LocalBrokerConfig) -> str:
    return log_tail([broker.data_dir / "broker.out", broker.data_dir / "broker.log"])
