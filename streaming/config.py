"""The one typed, frozen configuration tree.

Loaded once at the entry point (defaults < optional TOML file < environment) and passed down.
Environment variables are read here and nowhere else. Secrets are `Secret` and never printed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError

ENTITIES: tuple[str, ...] = ("telemetry", "bookings", "user_events", "external", "feedback")
DEFAULT_PARTITIONS: Mapping[str, int] = {
    "telemetry": 6,
    "bookings": 3,
    "user_events": 3,
    "external": 1,
    "feedback": 1,
}
PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Secret:
    """A value that must never reach a log, a repr or an error message."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


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

    def client_options(self) -> dict[str, str]:
        """Options for confluent-kafka (librdkafka) clients."""
        options = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
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
    heap: str = "768m"
    # A second listener, SASL_PLAINTEXT with SCRAM-SHA-256/512, when non-zero; its one user is
    # KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD (registered through the PLAINTEXT listener).
    scram_port: int = 0
    # A third listener, SASL_SSL (SCRAM over TLS, as MSK serves it), when non-zero; its
    # certificate is made at first start and clients trust `tls_ca_file`.
    tls_port: int = 0

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

    endpoint: str = ""
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    # "single-driver": one writing driver per table, enforced by a lease (streaming.lease);
    # "dynamodb": Delta's S3DynamoDBLogStore makes concurrent writers safe.
    log_store: str = "single-driver"
    dynamodb_table: str = "delta_log"


@dataclass(frozen=True)
class LocalS3Config:
    """The local S3 API server (s3proxy over a folder) that `lakehouse s3 start` runs."""

    port: int = 9000
    data_dir: Path = PROJECT_DIR / ".s3"
    heap: str = "384m"


@dataclass(frozen=True)
class StreamConfig:
    trigger_interval: str = "5 seconds"
    max_offsets_per_trigger: int | None = 500_000
    fail_on_data_loss: bool = True
    starting_offsets: str = "earliest"
    max_files_per_trigger: int = 1000


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    driver_memory: str = "4g"
    shuffle_partitions: int = 4
    ui_enabled: bool = False
    jvm_options: str = ""  # appended to the driver JVM's options
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageConfig:
    """Where OpenLineage run events go (one START and one COMPLETE per batch); both empty: off."""

    url: str = ""  # an OpenLineage HTTP endpoint (Marquez: http://host:5000)
    file: str = ""  # a JSON-lines file


@dataclass(frozen=True)
class MaintainConfig:
    """`lakehouse maintain`: compaction, checkpoints, VACUUM and retention per layer."""

    interval_seconds: int = 3600  # between passes of the long-running mode
    recent_days: int = 2  # OPTIMIZE only partitions this recent (older ones were compacted)
    vacuum_hours: int = 168  # Delta's safety check refuses less (time travel and live readers)
    # The longest write (an OPTIMIZE, a batch's MERGE) that may run beside an erasure: its old
    # file copies are purged once writes that began before it have ended (after twice this).
    erase_grace_seconds: int = 300
    # Days kept per layer (ADR-17); Silver's come from each contract's `retention_days`.
    retention_days: Mapping[str, int] = field(
        default_factory=lambda: {
            "bronze": 90,
            "quarantine": 90,
            "gold": 1825,
            "audit": 2555,
            "ops": 365,
        }
    )


@dataclass(frozen=True)
class ServeConfig:
    """`lakehouse serve`: the query API and dashboard over the tables (no JVM)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Roles, the tables each may read and the columns each sees masked (in the repository).
    policy_file: Path = PROJECT_DIR / "access.toml"
    # Bearer tokens (their SHA-256) and the role of each: a secret, outside the repository.
    tokens_file: Path = PROJECT_DIR / ".secrets" / "api-tokens.toml"
    refresh_seconds: float = 2.0  # how often a served table looks for a new Delta version
    stale_seconds: int = 900  # a Gold table whose newest event is older is stale (/health)


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
    spark_log: Path = Path("logs") / "spark.log"
    pii_key: Secret | None = None
    geofences_file: Path = PROJECT_DIR / "data" / "nyc" / "taxi_zones.geojson"
    schemas_dir: Path = PROJECT_DIR / "schemas"
    contracts_dir: Path = PROJECT_DIR / "contracts"
    s3: S3Config = field(default_factory=S3Config)
    s3_server: LocalS3Config = field(default_factory=LocalS3Config)
    serve: ServeConfig = field(default_factory=ServeConfig)
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)

    def require_pii_key(self) -> Secret:
        """The HMAC key for PII tokens; Silver refuses to start without one."""
        if self.pii_key is None or len(self.pii_key.reveal()) < 16:
            raise ConfigError(
                "LAKEHOUSE_PII_KEY is not set (or shorter than 16 characters)",
                hint="set it to a long random secret, e.g. `export LAKEHOUSE_PII_KEY=$(openssl "
                "rand -hex 32)`; keep it stable, tokens change with it",
            )
        return self.pii_key

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
    """Build the configuration: defaults, then the TOML file, then the environment."""
    env = os.environ if env is None else env
    file_path = config_file or env.get("LAKEHOUSE_CONFIG")
    file = _read_toml(Path(file_path)) if file_path else {}
    settings = _Settings(env, file)

    broker = LocalBrokerConfig(
        port=settings.integer("LAKEHOUSE_KAFKA_PORT", ("broker", "port"), 9092),
        controller_port=settings.integer(
            "LAKEHOUSE_KAFKA_CONTROLLER_PORT", ("broker", "controller_port"), 0
        ),
        data_dir=Path(settings.text("LAKEHOUSE_KAFKA_DIR", ("broker", "data_dir"), ".kafka"))
        .expanduser()
        .resolve(),
        heap=settings.text("LAKEHOUSE_KAFKA_HEAP", ("broker", "heap"), "768m"),
        scram_port=settings.integer("LAKEHOUSE_KAFKA_SCRAM_PORT", ("broker", "scram_port"), 0),
        tls_port=settings.integer("LAKEHOUSE_KAFKA_TLS_PORT", ("broker", "tls_port"), 0),
    )
    if broker.controller_port == 0:
        broker = replace(broker, controller_port=broker.port + 1)

    password = settings.text("KAFKA_SASL_PASSWORD", ("kafka", "sasl_password"), "")
    kafka = KafkaConfig(
        bootstrap_servers=settings.text(
            "KAFKA_BOOTSTRAP_SERVERS", ("kafka", "bootstrap_servers"), f"127.0.0.1:{broker.port}"
        ),
        security_protocol=settings.text(
            "KAFKA_SECURITY_PROTOCOL", ("kafka", "security_protocol"), "PLAINTEXT"
        ).upper(),
        sasl_mechanism=settings.text("KAFKA_SASL_MECHANISM", ("kafka", "sasl_mechanism"), "")
        or None,
        sasl_username=settings.text("KAFKA_SASL_USERNAME", ("kafka", "sasl_username"), "") or None,
        sasl_password=Secret(password) if password else None,
        ssl_ca_location=settings.text("KAFKA_SSL_CA_LOCATION", ("kafka", "ssl_ca_location"), "")
        or None,
    )
    _check_security(kafka)

    prefix = settings.text("LAKEHOUSE_TOPIC_PREFIX", ("topics", "prefix"), "")
    partitions = {**DEFAULT_PARTITIONS, **file.get("topics", {}).get("partitions", {})}
    topics = tuple(
        TopicConfig(entity, f"{prefix}{entity}", _positive(partitions[entity], "partitions"))
        for entity in ENTITIES
    )

    max_offsets = settings.integer(
        "LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER", ("stream", "max_offsets_per_trigger"), 500_000
    )
    stream = StreamConfig(
        trigger_interval=settings.text(
            "LAKEHOUSE_TRIGGER_INTERVAL", ("stream", "trigger_interval"), "5 seconds"
        ),
        max_offsets_per_trigger=max_offsets if max_offsets > 0 else None,
        fail_on_data_loss=settings.boolean(
            "LAKEHOUSE_FAIL_ON_DATA_LOSS", ("stream", "fail_on_data_loss"), True
        ),
        starting_offsets=settings.text(
            "LAKEHOUSE_STARTING_OFFSETS", ("stream", "starting_offsets"), "earliest"
        ),
        max_files_per_trigger=settings.integer(
            "LAKEHOUSE_MAX_FILES_PER_TRIGGER", ("stream", "max_files_per_trigger"), 1000
        ),
    )
    spark = SparkConfig(
        master=settings.text("LAKEHOUSE_SPARK_MASTER", ("spark", "master"), "local[*]"),
        driver_memory=settings.text("LAKEHOUSE_DRIVER_MEMORY", ("spark", "driver_memory"), "4g"),
        shuffle_partitions=settings.integer(
            "LAKEHOUSE_SHUFFLE_PARTITIONS", ("spark", "shuffle_partitions"), 4
        ),
        ui_enabled=settings.boolean("LAKEHOUSE_SPARK_UI", ("spark", "ui_enabled"), False),
        jvm_options=settings.text("LAKEHOUSE_JVM_OPTIONS", ("spark", "jvm_options"), ""),
        extra={str(k): str(v) for k, v in file.get("spark", {}).get("conf", {}).items()},
    )
    return Config(
        root=_storage_location(settings.text("LAKEHOUSE_ROOT", ("root",), "lakehouse"), "root"),
        checkpoints=_storage_location(
            settings.text("LAKEHOUSE_CHECKPOINTS", ("checkpoints",), "checkpoints"), "checkpoints"
        ),
        jars_dir=Path(settings.text("LAKEHOUSE_JARS", ("jars_dir",), str(PROJECT_DIR / "jars")))
        .expanduser()
        .resolve(),
        topic_prefix=prefix,
        topics=topics,
        kafka=kafka,
        broker=broker,
        stream=stream,
        spark=spark,
        metrics_port=settings.integer("LAKEHOUSE_METRICS_PORT", ("metrics_port",), 9464),
        spark_log=Path(settings.text("LAKEHOUSE_SPARK_LOG", ("spark_log",), "logs/spark.log"))
        .expanduser()
        .resolve(),
        pii_key=Secret(pii)
        if (pii := settings.text("LAKEHOUSE_PII_KEY", ("pii_key",), ""))
        else None,
        geofences_file=Path(
            settings.text(
                "LAKEHOUSE_GEOFENCES",
                ("geofences_file",),
                str(PROJECT_DIR / "data" / "nyc" / "taxi_zones.geojson"),
            )
        )
        .expanduser()
        .resolve(),
        schemas_dir=_folder(settings.text("LAKEHOUSE_SCHEMAS", ("schemas_dir",), ""), "schemas"),
        contracts_dir=_folder(
            settings.text("LAKEHOUSE_CONTRACTS", ("contracts_dir",), ""), "contracts"
        ),
        s3=_s3(settings),
        s3_server=LocalS3Config(
            port=settings.integer("LAKEHOUSE_S3_PORT", ("s3_server", "port"), 9000),
            data_dir=Path(settings.text("LAKEHOUSE_S3_DIR", ("s3_server", "data_dir"), ".s3"))
            .expanduser()
            .resolve(),
            heap=settings.text("LAKEHOUSE_S3_HEAP", ("s3_server", "heap"), "384m"),
        ),
        serve=_serve(settings),
        maintain=_maintain(settings),
        lineage=LineageConfig(
            url=settings.text("LAKEHOUSE_OPENLINEAGE_URL", ("lineage", "url"), ""),
            file=settings.text("LAKEHOUSE_OPENLINEAGE_FILE", ("lineage", "file"), ""),
        ),
    )


def _maintain(settings: _Settings) -> MaintainConfig:
    default = MaintainConfig()
    vacuum_hours = settings.integer("LAKEHOUSE_VACUUM_HOURS", ("maintain", "vacuum_hours"), 168)
    if vacuum_hours < 168:
        raise ConfigError(
            f"LAKEHOUSE_VACUUM_HOURS={vacuum_hours} is shorter than Delta's safety check (168 h)",
            hint="files younger than 7 days may still be read by a running query or time travel",
        )
    retention = dict(default.retention_days)
    for layer in retention:
        var = f"LAKEHOUSE_RETENTION_DAYS_{layer.upper()}"
        retention[layer] = _positive(
            settings.integer(var, ("maintain", "retention_days", layer), retention[layer]), var
        )
    return MaintainConfig(
        interval_seconds=_positive(
            settings.integer("LAKEHOUSE_MAINTAIN_INTERVAL", ("maintain", "interval_seconds"), 3600),
            "LAKEHOUSE_MAINTAIN_INTERVAL",
        ),
        recent_days=_positive(
            settings.integer("LAKEHOUSE_MAINTAIN_RECENT_DAYS", ("maintain", "recent_days"), 2),
            "LAKEHOUSE_MAINTAIN_RECENT_DAYS",
        ),
        vacuum_hours=vacuum_hours,
        retention_days=retention,
        erase_grace_seconds=_positive(
            settings.integer(
                "LAKEHOUSE_ERASE_GRACE_SECONDS", ("maintain", "erase_grace_seconds"), 300
            ),
            "LAKEHOUSE_ERASE_GRACE_SECONDS",
        ),
    )


def _serve(settings: _Settings) -> ServeConfig:
    default = ServeConfig()
    refresh = settings.text("LAKEHOUSE_SERVE_REFRESH", ("serve", "refresh_seconds"), "2")
    try:
        refresh_seconds = float(refresh)
    except ValueError:
        refresh_seconds = -1.0
    if not 0 < refresh_seconds <= 3600:
        raise ConfigError(
            f"LAKEHOUSE_SERVE_REFRESH must be seconds between 0 and 3600, got {refresh!r}",
            hint="set e.g. LAKEHOUSE_SERVE_REFRESH=2",
        )
    return ServeConfig(
        host=settings.text("LAKEHOUSE_SERVE_HOST", ("serve", "host"), default.host),
        port=_port(settings.integer("LAKEHOUSE_SERVE_PORT", ("serve", "port"), default.port)),
        policy_file=Path(
            settings.text("LAKEHOUSE_ACCESS_POLICY", ("serve", "policy_file"), "")
            or default.policy_file
        )
        .expanduser()
        .resolve(),
        tokens_file=Path(
            settings.text("LAKEHOUSE_API_TOKENS", ("serve", "tokens_file"), "")
            or default.tokens_file
        )
        .expanduser()
        .resolve(),
        refresh_seconds=refresh_seconds,
        stale_seconds=_positive(
            settings.integer("LAKEHOUSE_STALE_SECONDS", ("serve", "stale_seconds"), 900),
            "LAKEHOUSE_STALE_SECONDS",
        ),
    )


def _port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise ConfigError(f"LAKEHOUSE_SERVE_PORT must be a port (0-65535), got {port}")
    return port


class _Settings:
    """Looks a setting up in the environment first, then in the TOML file, then the default."""

    def __init__(self, env: Mapping[str, str], file: Mapping[str, Any]) -> None:
        self._env = env
        self._file = file

    def _raw(self, var: str, path: tuple[str, ...]) -> tuple[Any, str] | None:
        if self._env.get(var, "") != "":
            return self._env[var], var
        node: Any = self._file
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node, "config file key " + ".".join(path)

    def text(self, var: str, path: tuple[str, ...], default: str) -> str:
        found = self._raw(var, path)
        return default if found is None else str(found[0])

    def integer(self, var: str, path: tuple[str, ...], default: int) -> int:
        found = self._raw(var, path)
        if found is None:
            return default
        value, source = found
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source} must be a whole number, got {value!r}", hint=f"set e.g. {var}={default}"
            ) from None

    def boolean(self, var: str, path: tuple[str, ...], default: bool) -> bool:
        found = self._raw(var, path)
        if found is None:
            return default
        value, source = found
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{source} must be true or false, got {value!r}")


def _folder(value: str, default: str) -> Path:
    return Path(value).expanduser().resolve() if value else PROJECT_DIR / default


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", hint="fix LAKEHOUSE_CONFIG or --config"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _storage_location(value: str, name: str) -> str:
    """A local folder (made absolute) or an `s3a://bucket/prefix` URI."""
    if "://" in value:
        scheme = value.split("://", 1)[0]
        if scheme != "s3a":
            raise ConfigError(
                f"{name} '{value}' uses the scheme {scheme}://",
                hint="use a local path or s3a://bucket/prefix (Hadoop's S3A connector)",
            )
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())


def _s3(settings: _Settings) -> S3Config:
    endpoint = settings.text("LAKEHOUSE_S3_ENDPOINT", ("s3", "endpoint"), "").rstrip("/")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"LAKEHOUSE_S3_ENDPOINT '{endpoint}' is not an http:// or https:// URL",
            hint="e.g. http://127.0.0.1:9000 for `lakehouse s3 start`; leave it empty for AWS",
        )
    log_store = settings.text("LAKEHOUSE_DELTA_LOG_STORE", ("s3", "log_store"), "single-driver")
    if log_store not in {"single-driver", "dynamodb"}:
        raise ConfigError(
            f"LAKEHOUSE_DELTA_LOG_STORE '{log_store}' is not a known Delta log store",
            hint="use single-driver (one writer per table, the default) or dynamodb",
        )
    secret = settings.text("AWS_SECRET_ACCESS_KEY", ("s3", "secret_access_key"), "")
    token = settings.text("AWS_SESSION_TOKEN", ("s3", "session_token"), "")
    return S3Config(
        endpoint=endpoint,
        region=settings.text("AWS_REGION", ("s3", "region"), "us-east-1"),
        access_key_id=settings.text("AWS_ACCESS_KEY_ID", ("s3", "access_key_id"), "") or None,
        secret_access_key=Secret(secret) if secret else None,
        session_token=Secret(token) if token else None,
        log_store=log_store,
        dynamodb_table=settings.text(
            "LAKEHOUSE_DYNAMODB_TABLE", ("s3", "dynamodb_table"), "delta_log"
        ),
    )


def _positive(value: Any, name: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _check_security(kafka: KafkaConfig) -> None:
    known = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
    if kafka.security_protocol not in known:
        raise ConfigError(
            f"KAFKA_SECURITY_PROTOCOL '{kafka.security_protocol}' is not a Kafka protocol",
            hint="use one of " + ", ".join(sorted(known)),
        )
    if kafka.security_protocol.startswith("SASL") and not (
        kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password
    ):
        raise ConfigError(
            f"{kafka.security_protocol} needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME "
            "and KAFKA_SASL_PASSWORD"
        )
