"""Every setting of the service, declared once: its environment variable, its key in the TOML
file, its default, its type and what it means.

`read` looks each one up (environment first, then the file, then the default) and checks it;
`streaming.config` builds the typed configuration from what `read` returns; `lakehouse
settings` prints this table (the README's settings table is that output), and the deployment
checks accept only the variables named here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
RETAINED_LAYERS = ("bronze", "quarantine", "gold", "audit", "ops")


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
class Setting:
    """One setting. `key` is also its place in the configuration tree (`stream.trigger_interval`
    is `config.stream.trigger_interval`). `kind`: text, optional (text; empty is None), int,
    bool, float, secret (a `Secret`, never printed; empty is None), path (a local file or
    folder, relative to the working directory), location (a local folder or s3a:// URI), url
    (http:// or https://; empty is none)."""

    env: str
    key: str  # dotted key in the TOML file
    default: Any
    kind: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    upper: bool = False  # the value is upper-cased

    @property
    def shown_default(self) -> str:
        """The default as the settings table shows it (project files relative to the project)."""
        if self.default in ("", None):
            return "(none)"
        if isinstance(self.default, Path):
            try:
                return str(self.default.relative_to(PROJECT_DIR))
            except ValueError:
                return str(self.default)
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)


_s = Setting  # short, for the table below


SETTINGS: tuple[Setting, ...] = (
    # where things live
    _s("LAKEHOUSE_ROOT", "root", "lakehouse", "location",
       "where tables live: a local folder or s3a://bucket/prefix"),
    _s("LAKEHOUSE_CHECKPOINTS", "checkpoints", "checkpoints", "location",
       "one streaming checkpoint per pipeline below it (pipeline/<name>)"),
    _s("LAKEHOUSE_JARS", "jars_dir", PROJECT_DIR / "jars", "path",
       "where `make setup` put the JVM jars"),
    _s("LAKEHOUSE_SPARK_LOG", "spark_log", Path("logs/spark.log"), "path",
       "Spark's own log (only its errors reach the screen)"),
    _s("LAKEHOUSE_GEOFENCES", "geofences_file", PROJECT_DIR / "data/nyc/taxi_zones.geojson",
       "path", "zone polygons (GeoJSON) for Silver's geofence"),
    _s("LAKEHOUSE_SCHEMAS", "schemas_dir", PROJECT_DIR / "schemas", "path",
       "message schemas (JSON Schema and Avro)"),
    _s("LAKEHOUSE_CONTRACTS", "contracts_dir", PROJECT_DIR / "contracts", "path",
       "data contracts, one file per entity"),
    _s("LAKEHOUSE_PII_KEY", "pii_key", "", "secret",
       "HMAC key of PII tokens; at least 16 characters; required by Silver"),
    # Kafka
    _s("KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers", "", "text",
       "brokers to read from and publish to (default: the local broker)"),
    _s("KAFKA_SECURITY_PROTOCOL", "kafka.security_protocol", "PLAINTEXT", "text",
       "how clients reach the brokers (MSK: SASL_SSL)",
       choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), upper=True),
    _s("KAFKA_SASL_MECHANISM", "kafka.sasl_mechanism", "", "optional",
       "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
       choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), upper=True),
    _s("KAFKA_SASL_USERNAME", "kafka.sasl_username", "", "optional", "the SASL user"),
    _s("KAFKA_SASL_PASSWORD", "kafka.sasl_password", "", "secret", "the SASL password"),
    _s("KAFKA_SSL_CA_LOCATION", "kafka.ssl_ca_location", "", "optional",
       "PEM file of the CA to trust, for Python and the JVM alike"),
    _s("LAKEHOUSE_TOPIC_PREFIX", "topics.prefix", "", "text",
       "topic names are <prefix><entity>"),
    # streams
    _s("LAKEHOUSE_TRIGGER_INTERVAL", "stream.trigger_interval", "5 seconds", "text",
       "micro-batch trigger of the long-running queries"),
    _s("LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER", "stream.max_offsets_per_trigger", 500_000, "int",
       "Kafka records per micro-batch at most (0: no cap)", minimum=0),
    _s("LAKEHOUSE_MAX_FILES_PER_TRIGGER", "stream.max_files_per_trigger", 1000, "int",
       "Bronze files per `run refine` micro-batch at most", minimum=1),
    _s("LAKEHOUSE_FAIL_ON_DATA_LOSS", "stream.fail_on_data_loss", True, "bool",
       "stop when Kafka deleted offsets not yet read (false: log their count and go on)"),
    _s("LAKEHOUSE_STARTING_OFFSETS", "stream.starting_offsets", "earliest", "text",
       "where a new query starts (earliest, latest or Spark's JSON of offsets)"),
    _s("LAKEHOUSE_METRICS_PORT", "metrics_port", 9464, "int",
       "Prometheus /metrics of a running pipeline (0: off)", minimum=0, maximum=65535),
    # Spark
    _s("LAKEHOUSE_SPARK_MASTER", "spark.master", "local[*]", "text",
       "Spark master (local[*], spark://host:7077, yarn)"),
    _s("LAKEHOUSE_DRIVER_MEMORY", "spark.driver_memory", "4g", "text", "driver heap"),
    _s("LAKEHOUSE_SHUFFLE_PARTITIONS", "spark.shuffle_partitions", 4, "int",
       "spark.sql.shuffle.partitions", minimum=1),
    _s("LAKEHOUSE_SPARK_UI", "spark.ui_enabled", False, "bool", "Spark's web UI"),
    _s("LAKEHOUSE_SPARK_CODEGEN", "spark.codegen", True, "bool",
       "generate Java code for the projections Spark builds outside its whole-stage code (false: "
       "interpret them; a short run of small batches starts faster)"),
    _s("LAKEHOUSE_JVM_OPTIONS", "spark.jvm_options", "", "text",
       "extra JVM options of the driver and executors (a short run starts faster with "
       "-XX:TieredStopAtLevel=1)"),
    # local development servers
    _s("LAKEHOUSE_KAFKA_PORT", "broker.port", 9092, "int",
       "the local broker's port", minimum=1, maximum=65535),
    _s("LAKEHOUSE_KAFKA_CONTROLLER_PORT", "broker.controller_port", 0, "int",
       "the local broker's controller port (0: its port + 1)", minimum=0, maximum=65535),
    _s("LAKEHOUSE_KAFKA_DIR", "broker.data_dir", Path(".kafka"), "path",
       "the local broker's data and log"),
    _s("LAKEHOUSE_KAFKA_HEAP", "broker.heap", "768m", "text", "the local broker's heap"),
    _s("LAKEHOUSE_KAFKA_SCRAM_PORT", "broker.scram_port", 0, "int",
       "a SASL_PLAINTEXT (SCRAM) listener of the local broker (0: none)",
       minimum=0, maximum=65535),
    _s("LAKEHOUSE_KAFKA_TLS_PORT", "broker.tls_port", 0, "int",
       "a SASL_SSL listener of the local broker (0: none)", minimum=0, maximum=65535),
    _s("LAKEHOUSE_S3_PORT", "s3_server.port", 9000, "int",
       "the local S3 server's port", minimum=1, maximum=65535),
    _s("LAKEHOUSE_S3_DIR", "s3_server.data_dir", Path(".s3"), "path",
       "the local S3 server's folder"),
    _s("LAKEHOUSE_S3_HEAP", "s3_server.heap", "384m", "text", "the local S3 server's heap"),
    # S3
    _s("LAKEHOUSE_S3_ENDPOINT", "s3.endpoint", "", "url",
       "an S3 API's URL, e.g. http://127.0.0.1:9000 for `lakehouse s3 start` (empty: AWS)"),
    _s("AWS_REGION", "s3.region", "us-east-1", "text", "the bucket's region"),
    _s("AWS_ACCESS_KEY_ID", "s3.access_key_id", "", "optional",
       "S3 keys (none: the AWS credential chain, e.g. an IAM role)"),
    _s("AWS_SECRET_ACCESS_KEY", "s3.secret_access_key", "", "secret", "S3 secret key"),
    _s("AWS_SESSION_TOKEN", "s3.session_token", "", "secret", "S3 session token"),
    _s("LAKEHOUSE_DELTA_LOG_STORE", "s3.log_store", "single-driver", "text",
       "single-driver (one writer per table, held by a lease) or dynamodb",
       choices=("single-driver", "dynamodb")),
    _s("LAKEHOUSE_DYNAMODB_TABLE", "s3.dynamodb_table", "delta_log", "text",
       "the DynamoDB table of the dynamodb log store"),
    # maintenance and governance
    _s("LAKEHOUSE_MAINTAIN_INTERVAL", "maintain.interval_seconds", 3600, "int",
       "seconds between passes of `lakehouse maintain`", minimum=1),
    _s("LAKEHOUSE_MAINTAIN_RECENT_DAYS", "maintain.recent_days", 2, "int",
       "days of partitions OPTIMIZE visits", minimum=1),
    _s("LAKEHOUSE_VACUUM_HOURS", "maintain.vacuum_hours", 168, "int",
       "VACUUM retention; Delta's safety check refuses less than 168", minimum=168),
    _s("LAKEHOUSE_ERASE_GRACE_SECONDS", "maintain.erase_grace_seconds", 300, "int",
       "the longest write beside an erasure; its old copies are purged after twice this",
       minimum=1),
    *(
        _s(f"LAKEHOUSE_RETENTION_DAYS_{layer.upper()}", f"maintain.retention_days.{layer}", days,
           "int", f"days {layer} keeps (Silver: each contract's retention_days)", minimum=1)
        for layer, days in zip(RETAINED_LAYERS, (90, 90, 1825, 2555, 365), strict=True)
    ),
    _s("LAKEHOUSE_OPENLINEAGE_FILE", "lineage.file", "", "text",
       "a JSON-lines file for each batch's OpenLineage events"),
    _s("LAKEHOUSE_OPENLINEAGE_URL", "lineage.url", "", "url",
       "an OpenLineage endpoint (Marquez: http://host:5000)"),
    # serving
    _s("LAKEHOUSE_SERVE_HOST", "serve.host", "127.0.0.1", "text", "where `serve` listens"),
    _s("LAKEHOUSE_SERVE_PORT", "serve.port", 8000, "int", "`serve`'s port",
       minimum=0, maximum=65535),
    _s("LAKEHOUSE_ACCESS_POLICY", "serve.policy_file", PROJECT_DIR / "access.toml", "path",
       "roles, the tables each reads and the columns each sees masked"),
    _s("LAKEHOUSE_API_TOKENS", "serve.tokens_file", PROJECT_DIR / ".secrets/api-tokens.toml",
       "path", "API tokens' SHA-256 digests and their roles (a secret)"),
    _s("LAKEHOUSE_SERVE_REFRESH", "serve.refresh_seconds", 2.0, "float",
       "seconds between `serve`'s looks for new table versions", minimum=0.01, maximum=3600),
    _s("LAKEHOUSE_STALE_SECONDS", "serve.stale_seconds", 900, "int",
       "a Gold table whose newest event is older is stale (/health, `status`)", minimum=1),
)  # fmt: skip
BY_ENV: Mapping[str, Setting] = {s.env: s for s in SETTINGS}


def read(env: Mapping[str, str], file: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting's value by its key, typed and checked."""
    return {s.key: _value(s, env, file) for s in SETTINGS}


def _value(setting: Setting, env: Mapping[str, str], file: Mapping[str, Any]) -> Any:
    raw: Any = None
    source = setting.env
    if env.get(setting.env, "") != "":
        raw = env[setting.env]
    else:
        node: Any = file
        for part in setting.key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            raw, source = node, f"config file key {setting.key}"
    if raw is None:
        return _typed(setting, setting.default, setting.env)
    return _checked(setting, _typed(setting, raw, source), source)


def _typed(setting: Setting, raw: Any, source: str) -> Any:
    kind = setting.kind
    if kind == "int":
        if isinstance(raw, bool):
            raise _bad(setting, source, "a whole number", raw)
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise _bad(setting, source, "a whole number", raw) from None
    if kind == "float":
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise _bad(setting, source, "a number", raw) from None
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise _bad(setting, source, "true or false", raw)
    if kind == "path":
        return Path(raw).expanduser().resolve()
    if kind == "location":
        return _location(str(raw), source)
    if kind == "url":
        url = str(raw).rstrip("/")
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{source} '{url}' is not an http:// or https:// URL", hint=setting.help
            )
        return url
    if kind == "secret":
        return Secret(str(raw)) if raw != "" else None
    text = str(raw).upper() if setting.upper else str(raw)
    return None if kind == "optional" and not text else text


def _checked(setting: Setting, value: Any, source: str) -> Any:
    if setting.choices and value not in setting.choices and value is not None:
        shown = ", ".join(setting.choices)
        raise ConfigError(f"{source} '{value}' is not one of: {shown}", hint=setting.help)
    low, high = setting.minimum, setting.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise ConfigError(f"{source} must be {span}, got {value!r}", hint=setting.help)
    return value


def _bad(setting: Setting, source: str, what: str, value: Any) -> ConfigError:
    return ConfigError(
        f"{source} must be {what}, got {value!r}",
        hint=f"set e.g. {setting.env}={setting.shown_default}",
    )


def _location(value: str, source: str) -> str:
    """A local folder (made absolute) or an `s3a://bucket/prefix` URI."""
    if "://" in value:
        scheme = value.split("://", 1)[0]
        if scheme != "s3a":
            raise ConfigError(
                f"{source} '{value}' uses the scheme {scheme}://",
                hint="use a local path or s3a://bucket/prefix (Hadoop's S3A connector)",
            )
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())


def markdown() -> str:
    """The settings table (the README's)."""
    lines = ["| Variable | TOML key | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = s.shown_default if s.shown_default == "(none)" else f"`{s.shown_default}`"
        lines.append(f"| `{s.env}` | `{s.key}` | {default} | {s.help} |")
    return "\n".join(lines)
