"""Tables and checkpoints on S3, against a real S3 API server (s3proxy over a temp folder):
the whole chain on s3a://, delta-rs reading it back, one writer per layer, and bad S3 settings
failing with one clear line before any JVM starts."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming import lease
from streaming.config import Config, load_config
from streaming.errors import ConfigError
from streaming.gold.aggregates import TABLES
from streaming.s3 import server, storage
from tests.builders import LAKEHOUSE, PII_KEY, lakehouse, one_clear_line, stderr_of
from tests.conftest import _free_ports

BUCKET = "lakehouse-test"
SECRET = "test-only-s3-secret-0123456789"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running s3proxy with one bucket; the settings that reach it."""
    (port,) = _free_ports(1)
    env = {
        "LAKEHOUSE_S3_PORT": str(port),
        "LAKEHOUSE_S3_DIR": str(tmp_path_factory.mktemp("s3")),
        "LAKEHOUSE_S3_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "lakehouse-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": "",
        "AWS_REGION": "us-east-1",
        "LAKEHOUSE_DELTA_LOG_STORE": "",
        "LAKEHOUSE_JARS": os.environ.get("LAKEHOUSE_JARS", ""),
    }
    config = load_config(env)
    server.start(config.s3_server, config.s3, config.jars_dir, [BUCKET])
    try:
        yield env
    finally:
        server.stop(config.s3_server)


def _on_s3(s3_env: dict[str, str]) -> dict[str, str]:
    """Settings for a fresh root and checkpoint folder of one test in the bucket."""
    prefix = f"s3a://{BUCKET}/t{uuid.uuid4().hex[:8]}"
    return {
        **s3_env,
        "LAKEHOUSE_ROOT": f"{prefix}/lake",
        "LAKEHOUSE_CHECKPOINTS": f"{prefix}/checkpoints",
    }


def _lease_file(s3_env: dict[str, str], config: Config, layer: str) -> Path:
    """Where s3proxy's filesystem store keeps the lease object: <basedir>/<bucket>/<key>."""
    return Path(s3_env["LAKEHOUSE_S3_DIR"]) / "data" / lease.lease_path(config, layer)


def _command_lines(parent: int | None = None) -> list[str]:
    """Every process's command line (of `parent`'s children only, if given)."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent is not None and ppid != parent:
                continue
            lines.append(
                (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except (OSError, ValueError, IndexError):
            continue
    return lines


def _gold_rows(config: Config, table: str, layer: str = "gold") -> tuple[int, int]:
    from deltalake import DeltaTable

    opened = DeltaTable(
        storage.delta_rs_uri(config.table_path(layer, table)),
        storage_options=storage.storage_options(config),
    )
    return opened.version(), opened.to_pyarrow_dataset().count_rows()


def test_settings_for_spark_and_delta_rs_keep_the_secret_out_of_reprs(s3_env) -> None:
    config = load_config(_on_s3(s3_env))
    conf = storage.spark_conf(config)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == s3_env["LAKEHOUSE_S3_ENDPOINT"]
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith(
        "SimpleAWSCredentialsProvider"
    )
    assert conf["spark.delta.logStore.s3a.impl"] == storage.SINGLE_DRIVER_LOG_STORE
    assert SECRET not in repr(config) and SECRET not in conf.values()  # conf goes on a cmdline
    assert storage.hadoop_credentials(config)["fs.s3a.secret.key"] == SECRET
    options = storage.storage_options(config)
    assert options["AWS_ALLOW_HTTP"] == "true" and options["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert storage.delta_rs_uri(config.root).startswith(f"s3://{BUCKET}/")

    local = load_config({})
    assert storage.spark_conf(local) == {} and storage.storage_options(local) == {}
    iam = load_config({**_on_s3(s3_env), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert "spark.hadoop.fs.s3a.aws.credentials.provider" not in storage.spark_conf(iam)
    dynamo = load_config({**_on_s3(s3_env), "LAKEHOUSE_DELTA_LOG_STORE": "dynamodb"})
    assert storage.spark_conf(dynamo)["spark.delta.logStore.s3a.impl"].endswith("DynamoDBLogStore")
    assert not storage.single_driver(dynamo)


def test_cli_status_and_make_bucket(s3_env) -> None:
    env = {**os.environ, **s3_env}
    status = lakehouse("s3", "status", env=env)
    assert status.returncode == 0 and BUCKET in status.stdout, status.stdout + status.stderr
    made = lakehouse("s3", "mb", "second-bucket", env=env)
    assert made.returncode == 0 and "created" in made.stdout, made.stderr
    again = lakehouse("s3", "mb", "second-bucket", env=env)
    assert again.returncode == 0 and "exists already" in again.stdout, again.stderr
    started = lakehouse("s3", "start", env=env)
    assert started.returncode == 0 and "already running" in started.stdout, started.stderr


@pytest.mark.parametrize(
    ("overrides", "exit_code", "phrases"),
    [
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, 2, ("refused the credentials",)),
        (
            {"LAKEHOUSE_ROOT": "s3a://no-such-bucket/lake"},
            2,
            ("no-such-bucket", "does not exist", "lakehouse s3 mb"),
        ),
        (
            {"LAKEHOUSE_S3_ENDPOINT": "http://127.0.0.1:1"},
            3,
            ("cannot reach the S3 endpoint", "lakehouse s3 start"),
        ),
    ],
    ids=["wrong-secret", "missing-bucket", "unreachable-endpoint"],
)
def test_bad_s3_settings_fail_with_one_clear_line(s3_env, overrides, exit_code, phrases) -> None:
    env = {**os.environ, **_on_s3(s3_env), "LAKEHOUSE_PII_KEY": PII_KEY, **overrides}
    result = lakehouse("run", "refine", "--once", env=env, timeout=120)
    one_clear_line(result, exit_code, *phrases)
    assert SECRET not in result.stderr and "wrong-secret" not in result.stderr


def test_lease_refuses_a_live_holder_and_takes_a_stale_one(s3_env) -> None:
    config = load_config(_on_s3(s3_env))
    first = lease.Holder("host-a", 4242, "pid:[1]", "2030-01-01T00:00:00+00:00", "a" * 32)
    second = lease.Holder("host-b", 4242, "pid:[2]", "2030-01-01T00:00:00+00:00", "b" * 32)
    lost: list[str] = []
    held = lease.acquire(config, ["silver", "gold"], first, lambda: lost.append("a"), settle_s=0)
    try:
        with pytest.raises(ConfigError, match="pid 4242 on host-a"):
            lease.acquire(config, ["gold"], second, settle_s=0)
        assert _lease_file(s3_env, config, "silver").exists(), "a refused start took a lease"

        # The holder stops refreshing: 10 minutes later its lease is stale and may be taken.
        stale = time.time() - 600
        os.utime(_lease_file(s3_env, config, "gold"), (stale, stale))
        taken = lease.acquire(config, ["gold"], second, settle_s=0)
        held.refresh()  # the old holder's next heartbeat notices and stops its run
        assert lost == ["a"]
        taken.release()
        assert not _lease_file(s3_env, config, "gold").exists()
    finally:
        held.release()
    assert not _lease_file(s3_env, config, "silver").exists()


@pytest.mark.e2e
@pytest.mark.seconds(200)
def test_pipeline_on_s3_with_one_writer_per_layer(lake, s3_env) -> None:
    on_s3 = _on_s3(s3_env)
    env = lake.process_env(**on_s3, LAKEHOUSE_PII_KEY=PII_KEY)
    config = load_config({**lake.env, **on_s3})
    produce = lakehouse(
        "produce", "all", "--rate", "inf", "--count", "3000", "--vehicles", "200", env=env
    )
    assert produce.returncode == 0, produce.stderr[-2000:]

    writer = subprocess.Popen(
        [*LAKEHOUSE, "run", "all", "--once"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        silver_lease = _lease_file(s3_env, config, "silver")
        deadline = time.monotonic() + 120
        while not silver_lease.exists():
            assert writer.poll() is None, stderr_of(writer)[-3000:]
            assert time.monotonic() < deadline, "the writer took no lease"
            time.sleep(0.2)
        second = lakehouse("run", "refine", "--once", env=env, timeout=120)
        one_clear_line(second, 2, "another process writes the silver tables", f"pid {writer.pid}")
        deadline = time.monotonic() + 300
        while not any("SparkSubmit" in line for line in _command_lines(writer.pid)):
            assert writer.poll() is None and time.monotonic() < deadline, "no Spark JVM started"
            time.sleep(0.5)
        assert not any(SECRET in line for line in _command_lines()), "the secret is in a cmdline"
        _, errors = writer.communicate(timeout=1200)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, errors[-3000:]
    assert not silver_lease.exists(), "the writer left its lease behind"

    table = next(iter(TABLES))
    version, rows = _gold_rows(config, table)
    assert rows > 0
    # The run history is appended by delta-rs, with an empty AWS_SESSION_TOKEN in the writer's
    # environment (s3_env): it must not reach S3 as an empty security-token header.
    assert _gold_rows(config, "runs", layer="ops")[1] > 0
    refused = lakehouse("run", "all", "--once", env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    one_clear_line(refused, 2, "refused the credentials")
    assert _gold_rows(config, table) == (version, rows), "a refused run changed Gold"

    verify = lakehouse("verify", env=env)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    report = json.loads(verify.stdout)
    assert all(check["ok"] and check["gold_rows"] > 0 for check in report["gold"].values())
