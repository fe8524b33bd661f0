"""How every engine reaches `s3a://` locations: Spark's S3A settings, delta-rs storage options,
a pyarrow filesystem for the service's own small objects, and the pre-flight check that the
bucket exists and the credentials work (one clear line instead of a JVM stack trace).
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

from streaming.config import Config, S3Config
from streaming.errors import ConfigError, SetupError

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem, S3FileSystem
    from pyspark.sql import SparkSession

SCHEME = "s3a://"
SINGLE_DRIVER_LOG_STORE = "io.delta.storage.S3SingleDriverLogStore"
DYNAMODB_LOG_STORE = "io.delta.storage.S3DynamoDBLogStore"
DYNAMODB_JAR = "delta-storage-s3-dynamodb"
_S3A = "spark.hadoop.fs.s3a."
_DENIED = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY", "SIGNATURE_DOES_NOT_MATCH")


def is_s3(location: str) -> bool:
    return location.startswith(SCHEME)


def uses_s3(config: Config) -> bool:
    return is_s3(config.root) or is_s3(config.checkpoints)


def split(location: str) -> tuple[str, str]:
    """`s3a://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not is_s3(location):
        raise ValueError(f"not an {SCHEME} location: {location}")
    bucket, _, key = location[len(SCHEME) :].partition("/")
    if not bucket:
        raise ConfigError(f"{location} names no bucket", hint="use s3a://bucket/prefix")
    return bucket, key.strip("/")


def delta_rs_uri(location: str) -> str:
    """delta-rs (object_store) knows `s3://`, not Hadoop's `s3a://`; local paths pass through."""
    return "s3://" + location[len(SCHEME) :] if is_s3(location) else location


def spark_conf(config: Config) -> dict[str, str]:
    """S3A and Delta log-store settings; empty unless a root or checkpoint location is S3.

    No keys in here: pyspark passes these settings to the JVM on its command line, where any
    local user could read them. `apply_credentials` sets them once the JVM runs.
    """
    if not uses_s3(config):
        return {}
    s3 = config.s3
    conf = {_S3A + "endpoint.region": s3.region}
    if s3.endpoint:
        conf[_S3A + "endpoint"] = s3.endpoint
        conf[_S3A + "path.style.access"] = "true"
        conf[_S3A + "connection.ssl.enabled"] = str(s3.endpoint.startswith("https://")).lower()
    if s3.access_key_id and s3.secret_access_key:
        temporary = s3.session_token is not None
        conf[_S3A + "aws.credentials.provider"] = "org.apache.hadoop.fs.s3a." + (
            "TemporaryAWSCredentialsProvider" if temporary else "SimpleAWSCredentialsProvider"
        )
    # Without keys S3A uses its default chain: environment, profile, container or instance role.
    if s3.log_store == "dynamodb":
        conf["spark.delta.logStore.s3a.impl"] = DYNAMODB_LOG_STORE
        conf["spark.delta.logStore.s3.impl"] = DYNAMODB_LOG_STORE
        ddb = f"spark.{DYNAMODB_LOG_STORE}.ddb."
        conf[ddb + "tableName"] = s3.dynamodb_table
        conf[ddb + "region"] = s3.region
    else:
        conf["spark.delta.logStore.s3a.impl"] = SINGLE_DRIVER_LOG_STORE
    return conf


def hadoop_credentials(config: Config) -> dict[str, str]:
    """The S3A keys as Hadoop settings (redacted by `spark.redaction.regex`: secret, access.key,
    token); empty when the default AWS credential chain applies."""
    s3 = config.s3
    if not (uses_s3(config) and s3.access_key_id and s3.secret_access_key):
        return {}
    credentials = {
        "fs.s3a.access.key": s3.access_key_id,
        "fs.s3a.secret.key": s3.secret_access_key.reveal(),
    }
    if s3.session_token is not None:
        credentials["fs.s3a.session.token"] = s3.session_token.reveal()
    return credentials


def apply_credentials(spark: SparkSession, config: Config) -> None:
    """Set the S3A keys in the running driver's Hadoop configuration, which every job and
    streaming checkpoint derives its own from (and ships to executors)."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in hadoop_credentials(config).items():
        hadoop.set(key, value)


def single_driver(config: Config) -> bool:
    """True when Delta tables live on S3 with the single-driver log store: then only one
    process may write a table at a time, which the writer lease enforces."""
    return is_s3(config.root) and config.s3.log_store != "dynamodb"


def storage_options(config: Config) -> dict[str, str]:
    """delta-rs options for the tables under LAKEHOUSE_ROOT (empty for a local root)."""
    if not is_s3(config.root):
        return {}
    # delta-rs also reads AWS_* variables from the environment, and sends an empty
    # AWS_SESSION_TOKEN as an empty security-token header, which S3 servers refuse. Empty is
    # unset to every other client here (the settings read it as no token): make it so here too.
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        if os.environ.get(name) == "":
            del os.environ[name]
    s3 = config.s3
    options = {"AWS_REGION": s3.region}
    if s3.endpoint:
        options["AWS_ENDPOINT_URL"] = s3.endpoint
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
        if s3.endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if s3.access_key_id and s3.secret_access_key:
        options["AWS_ACCESS_KEY_ID"] = s3.access_key_id
        options["AWS_SECRET_ACCESS_KEY"] = s3.secret_access_key.reveal()
        if s3.session_token is not None:
            options["AWS_SESSION_TOKEN"] = s3.session_token.reveal()
    # delta-rs writes (none here: Spark is the writer) would commit with If-None-Match.
    options["aws_conditional_put"] = "etag"
    return options


def filesystem(
    s3: S3Config, endpoint: str | None = None, allow_bucket_creation: bool = False
) -> S3FileSystem:
    """A pyarrow S3 filesystem on the configured endpoint (or `endpoint`), failing fast."""
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

    url = s3.endpoint if endpoint is None else endpoint
    scheme, _, host = url.partition("://")
    keys = {}
    if s3.access_key_id and s3.secret_access_key:
        keys = {"access_key": s3.access_key_id, "secret_key": s3.secret_access_key.reveal()}
        if s3.session_token is not None:
            keys["session_token"] = s3.session_token.reveal()
    return S3FileSystem(
        **keys,
        region=s3.region,
        scheme=scheme if url else "https",
        endpoint_override=host or None,
        connect_timeout=3,
        request_timeout=15,
        retry_strategy=AwsStandardS3RetryStrategy(max_attempts=2),
        allow_bucket_creation=allow_bucket_creation,
    )


def location_filesystem(config: Config, location: str) -> tuple[FileSystem, str]:
    """A pyarrow filesystem for a lake location (a local folder or s3a://) and the location's
    path on it: what the service's own small files and scans use, without a JVM."""
    if is_s3(location):
        bucket, prefix = split(location)
        return filesystem(config.s3), f"{bucket}/{prefix}".rstrip("/")
    from pathlib import Path

    from pyarrow.fs import LocalFileSystem

    return LocalFileSystem(), str(Path(location).resolve())


def check_location(config: Config, setting: str, location: str) -> None:
    """The bucket exists, the credentials are accepted, and the prefix is writable."""
    from pyarrow.fs import FileType

    bucket, prefix = split(location)
    fs = filesystem(config.s3)
    try:
        if fs.get_file_info(bucket).type == FileType.NotFound:
            raise ConfigError(
                f"{setting} {location}: the bucket '{bucket}' does not exist",
                hint=f"create it first (`lakehouse s3 mb {bucket}`) or fix {setting}",
            )
        probe = f"{bucket}/{prefix}/.write-probe-{uuid.uuid4().hex}".replace("//", "/")
        with fs.open_output_stream(probe) as out:
            out.write(b"probe")
        fs.delete_file(probe)
    except OSError as exc:
        raise s3_error(config, f"{setting} {location}", exc) from None


def s3_error(config: Config, what: str, exc: OSError) -> ConfigError | SetupError:
    """One clear error for a failed S3 request: credentials, reachability, or anything else."""
    text = str(exc)
    where = config.s3.endpoint or f"AWS S3 ({config.s3.region})"
    if any(code in text for code in _DENIED):
        return ConfigError(
            f"{what}: {where} refused the credentials (access denied)",
            hint="check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may read "
            "and write this bucket",
        )
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not connect" in text:
        local = "127.0.0.1" in where or "localhost" in where
        return SetupError(
            f"{what}: cannot reach the S3 endpoint {where}",
            hint="start the local server with `lakehouse s3 start`"
            if local
            else "check LAKEHOUSE_S3_ENDPOINT and the network",
        )
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    return SetupError(f"{what}: the S3 request failed: {first}", hint=f"endpoint {where}")


def make_bucket(s3: S3Config, bucket: str, endpoint: str | None = None) -> bool:
    """Create `bucket` unless it exists; True if it was created."""
    from pyarrow.fs import FileType

    fs = filesystem(s3, endpoint, allow_bucket_creation=True)
    if fs.get_file_info(bucket).type != FileType.NotFound:
        return False
    fs.create_dir(bucket)
    return True


def require_log_store_jars(config: Config, spark_jars: list[str]) -> None:
    """The DynamoDB log store is a separate artifact that `make setup` does not fetch."""
    if single_driver(config) or not is_s3(config.root):
        return
    if not any(DYNAMODB_JAR in name for name in spark_jars):
        raise SetupError(
            "LAKEHOUSE_DELTA_LOG_STORE=dynamodb needs the io.delta:delta-storage-s3-dynamodb jar",
            hint="add it (version 4.4.0) to jvm/spark/pom.xml and run `make setup`",
        )
