"""The one typed, frozen configuration tree.

Loaded once at the entry point (defaults < optional TOML file < environment) and passed down.
Environment variables are read here and nowhere else. Secrets are `Secret` and never printed.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streaming import settings
from streaming.errors import ConfigError
from streaming.settings import Secret


@dataclass(frozen=True)
class TopicConfig:
    entity: str
    name: str
    partitions: int


@dataclass(frozen=True)
class KafkaConfig:
    """Where the brokers are and how to authenticate (passed to Spark and to librdkafka)."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None

    def client_options(self) -> dict[str, Any]:
        """Options for confluent-kafka (librdkafka) clients. Their own log lines (a broker
        that is away, a retried request) go to the log file, not the screen."""
        options: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "logger": logging.getLogger("streaming.kafka.client"),
        }
        if self.sasl_mechanism:
            options["sasl.mechanisms"] = self.sasl_mechanism
        if self.sasl_username:
            options["sasl.username"] = self.sasl_username
        if self.sasl_password:
            options["sasl.password"] = self.sasl_password.reveal()
        if self.ssl_ca_location:
            options["ssl.ca.location"] = self.ssl_ca_location
        return options

    def spark_options(self) -> dict[str, str]:
        """Options for Spark's Kafka source (`kafka.`-prefixed Java client settings)."""
        options = {
            "kafka.bootstrap.servers": self.bootstrap_servers,
            "kafka.security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options["kafka.sasl.mechanism"] = self.sasl_mechanism
            module = (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.sasl_mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            password = self.sasl_password.reveal() if self.sasl_password else ""
            options["kafka.sasl.jaas.config"] = (
                f"{module} required username={_jaas_quoted(self.sasl_username or '')} "
                f"password={_jaas_quoted(password)};"
            )
        if self.ssl_ca_location:  # a PEM bundle, the same file librdkafka reads
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = self.ssl_ca_location
        return options


@dataclass(frozen=True)
class LocalBrokerConfig:
    """The single-node development broker that `lakehouse kafka start` runs."""

    port: int
    controller_port: int
    data_dir: Path
    heap: str
    # A second listener, SASL_PLAINTEXT with SCRAM-SHA-256/512, when non-zero; its one user is
    # KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD (registered through the PLAINTEXT listener).
    scram_port: int
    # A third listener, SASL_SSL (SCRAM over TLS, as MSK serves it), when non-zero; its
    # certificate is made at first start and clients trust `tls_ca_file`.
    tls_port: int

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def tls_ca_file(self) -> Path:
        """The broker's self-signed certificate (PEM): what KAFKA_SSL_CA_LOCATION points at."""
        return self.tls_dir / "ca.pem"


@dataclass(frozen=True)
class S3Config:
    """The S3 API behind `s3a://` locations, for Spark (S3A), delta-rs and pyarrow alike.

    No endpoint means AWS itself; no keys means the default AWS credential chain (an IAM role).
    """

    endpoint: str
    region: str
    access_key_id: str | None
    secret_access_key: Secret | None
    session_token: Secret | None
    # "single-driver": one writing driver per table, enforced by a lease (streaming.lease);
    # "dynamodb": Delta's S3DynamoDBLogStore makes concurrent writers safe.
    log_store: str
    dynamodb_table: str


@dataclass(frozen=True)
class LocalS3Config:
    """The local S3 API server (s3proxy over a folder) that `lakehouse s3 start` runs."""

    port: int
    data_dir: Path
    heap: str


@dataclass(frozen=True)
class StreamConfig:
    trigger_interval: str
    max_offsets_per_trigger: int | None
    fail_on_data_loss: bool
    starting_offsets: str
    max_files_per_trigger: int


@dataclass(frozen=True)
class SparkConfig:
    master: str
    driver_memory: str
    shuffle_partitions: int
    ui_enabled: bool
    codegen: bool  # false: Spark interprets projections outside its whole-stage code
    jvm_options: str  # appended to the driver JVM's options
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageConfig:
    """Where OpenLineage run events go (one START and one COMPLETE per batch); both empty: off."""

    url: str  # an OpenLineage HTTP endpoint (Marquez: http://host:5000)
    file: str  # a JSON-lines file


@dataclass(frozen=True)
class MaintainConfig:
    """`lakehouse maintain`: compaction, checkpoints, VACUUM and retention per layer."""

    interval_seconds: int  # between passes of the long-running mode
    recent_days: int  # OPTIMIZE only partitions this recent (older ones were compacted)
    vacuum_hours: int  # Delta's safety check refuses less (time travel and live readers)
    # The longest write (an OPTIMIZE, a batch's MERGE) that may run beside an erasure: its old
    # file copies are purged once writes that began before it have ended (after twice this).
    erase_grace_seconds: int
    # Days kept per layer (ADR-17); Silver's come from each contract's `retention_days`.
    retention_days: Mapping[str, int]


@dataclass(frozen=True)
class ServeConfig:
    """`lakehouse serve`: the query API and dashboard over the tables (no JVM)."""

    host: str
    port: int
    # Roles, the tables each may read and the columns each sees masked (in the repository).
    policy_file: Path
    # Bearer tokens (their SHA-256) and the role of each: a secret, outside the repository.
    tokens_file: Path
    refresh_seconds: float  # how often a served table looks for a new Delta version
    stale_seconds: int  # a Gold table whose newest event is older is stale (/health)


@dataclass(frozen=True)
class Config:
    root: str
    checkpoints: str
    jars_dir: Path
    topic_prefix: str
    topics: tuple[TopicConfig, ...]
    kafka: KafkaConfig
    broker: LocalBrokerConfig
    stream: StreamConfig
    spark: SparkConfig
    metrics_port: int
    spark_log: Path
    pii_key: Secret | None
    geofences_file: Path
    schemas_dir: Path
    contracts_dir: Path
    s3: S3Config
    s3_server: LocalS3Config
    serve: ServeConfig
    maintain: MaintainConfig
    lineage: LineageConfig

    def require_pii_key(self) -> Secret:
        """The HMAC key for PII tokens; Silver refuses to start without one."""
        if self.pii_key is None or len(self.pii_key.reveal()) < 16:
            raise ConfigError(
                "LAKEHOUSE_PII_KEY is not set (or shorter than 16 characters)",
                hint="set it to a long random secret, e.g. `export LAKEHOUSE_PII_KEY=$(openssl "
                "rand -hex 32)`; keep it stable, tokens change with it",
            )
        return self.pii_key

    @property
    def entities(self) -> tuple[str, ...]:
        """The entities: one per contract in `contracts_dir`, each with its topic."""
        return tuple(t.entity for t in self.topics)

    def topic(self, entity: str) -> TopicConfig:
        for topic in self.topics:
            if topic.entity == entity:
                return topic
        known = ", ".join(t.entity for t in self.topics)
        raise ConfigError(f"unknown topic '{entity}'", hint=f"choose one of: {known}")

    def table_path(self, layer: str, table: str) -> str:
        return f"{self.root.rstrip('/')}/{layer}/{table}"

    def checkpoint_path(self, query_name: str) -> str:
        """`pipeline.all` -> `<checkpoints>/pipeline/all`: one checkpoint per query."""
        layer, _, table = query_name.partition(".")
        return f"{self.checkpoints.rstrip('/')}/{layer}/{table}"


def _jaas_quoted(value: str) -> str:
    """A JAAS option value in double quotes: Kafka's parser reads backslash escapes there, so a
    quote or backslash in a password must be escaped, or it ends (or bends) the value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_config(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Config:
    """Build the configuration: defaults, then the TOML file, then the environment (each
    setting is declared once, in `streaming.settings`)."""
    env = os.environ if env is None else env
    file_path = config_file or env.get("LAKEHOUSE_CONFIG")
    file = _read_toml(Path(file_path)) if file_path else {}
    v = settings.read(env, file)

    def section(name: str) -> dict[str, Any]:
        """The settings of one part of the tree (`stream.*`), by field name."""
        return {
            k.split(".")[1]: x
            for k, x in v.items()
            if k.count(".") == 1 and k.startswith(f"{name}.")
        }

    top = {k: x for k, x in v.items() if "." not in k}
    broker = LocalBrokerConfig(**section("broker"))
    if broker.controller_port == 0:
        broker = replace(broker, controller_port=broker.port + 1)
    kafka = KafkaConfig(**section("kafka"))
    if not kafka.bootstrap_servers:
        kafka = replace(kafka, bootstrap_servers=f"127.0.0.1:{broker.port}")
    _check_security(kafka)

    prefix = v["topics.prefix"]
    partitions = _entities(v["contracts_dir"])
    overrides = file.get("topics", {}).get("partitions", {})
    if set(overrides) - set(partitions):
        raise ConfigError(
            f"config file key topics.partitions names {sorted(set(overrides) - set(partitions))}",
            hint="name only entities that have a contract: " + ", ".join(partitions),
        )
    partitions.update(overrides)
    topics = tuple(
        TopicConfig(entity, f"{prefix}{entity}", _positive(count, "partitions"))
        for entity, count in partitions.items()
    )
    stream = StreamConfig(**section("stream"))
    if not stream.max_offsets_per_trigger:
        stream = replace(stream, max_offsets_per_trigger=None)
    retention = {layer: v[f"maintain.retention_days.{layer}"] for layer in settings.RETAINED_LAYERS}
    conf = file.get("spark", {}).get("conf", {})
    return Config(
        **top,
        topic_prefix=prefix,
        topics=topics,
        kafka=kafka,
        broker=broker,
        stream=stream,
        spark=SparkConfig(**section("spark"), extra={str(k): str(x) for k, x in conf.items()}),
        s3=S3Config(**section("s3")),
        s3_server=LocalS3Config(**section("s3_server")),
        serve=ServeConfig(**section("serve")),
        maintain=MaintainConfig(**section("maintain"), retention_days=retention),
        lineage=LineageConfig(**section("lineage")),
    )


def _entities(folder: Path) -> dict[str, Any]:
    """Each entity (one contract in the folder: `contracts/<entity>.toml`) and its topic's
    partitions. The contracts themselves are checked when a pipeline starts."""
    found = {}
    for path in sorted(folder.glob("*.toml")):
        contract = _read_toml(path)
        entity = contract.get("entity")
        if not isinstance(entity, str) or not entity:
            raise ConfigError(f"contract {path} names no entity", hint='add entity = "<name>"')
        found[entity] = contract.get("partitions", 1)
    if not found:
        raise ConfigError(
            f"no contracts (*.toml) in {folder}", hint="fix LAKEHOUSE_CONTRACTS: one per entity"
        )
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", hint="fix LAKEHOUSE_CONFIG or --config"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def _positive(value: Any, name: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _check_security(kafka: KafkaConfig) -> None:
    if kafka.security_protocol.startswith("SASL") and not (
        kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password
    ):
        raise ConfigError(
            f"{kafka.security_protocol} needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME "
            "and KAFKA_SASL_PASSWORD"
        )
