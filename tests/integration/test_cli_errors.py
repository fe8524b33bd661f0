"""Bad input: one clear line, a non-zero exit, no stack trace, and nothing in Bronze is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tests.builders import lakehouse, one_clear_line, publish


def test_unreachable_broker(lake) -> None:
    result = lakehouse(
        "run", "bronze", "--once", env=lake.process_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    )
    one_clear_line(result, 4, "cannot reach Kafka at 127.0.0.1:1", "lakehouse kafka start")


def test_wrong_bootstrap_address_for_the_producer(lake) -> None:
    result = lakehouse(
        "produce", "telemetry", "--count", "10",
        env=lake.process_env(KAFKA_BOOTSTRAP_SERVERS="no-such-host.invalid:9092"),
    )  # fmt: skip
    one_clear_line(result, 4, "no-such-host.invalid:9092")


def test_jars_not_fetched(lake, tmp_path: Path) -> None:
    result = lakehouse(
        "run", "bronze", "--once", env=lake.process_env(LAKEHOUSE_JARS=str(tmp_path))
    )
    one_clear_line(result, 3, "not fetched", "make setup")


def test_unwritable_root_loses_nothing_already_in_bronze(
    lake, spark: SparkSession, tmp_path: Path
) -> None:
    publish(lake.config, "feedback", [(b"k", b"v%d" % i, []) for i in range(20)])
    assert lakehouse("run", "bronze", "--once", env=lake.process_env()).returncode == 0
    table = lake.config.table_path("bronze", "feedback")
    before = spark.read.format("delta").load(table).count()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = lakehouse(
        "run", "bronze", "--once", env=lake.process_env(LAKEHOUSE_ROOT=str(blocker / "lake"))
    )
    one_clear_line(result, 2, "LAKEHOUSE_ROOT", "not writable")
    unreachable = lakehouse(
        "run", "bronze", "--once", env=lake.process_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    )
    assert unreachable.returncode == 4
    assert spark.read.format("delta").load(table).count() == before == 20


def test_missing_topic(lake) -> None:
    result = lakehouse(
        "run", "bronze", "--once", env=lake.process_env(LAKEHOUSE_TOPIC_PREFIX="nowhere.")
    )
    one_clear_line(result, 4, "nowhere.telemetry", "lakehouse topics create")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["produce", "rocket"], "invalid choice: 'rocket'"),
        (["run", "bronze", "--sideways"], "unrecognized arguments: --sideways"),
        (["produce", "telemetry", "--rate", "fast"], "invalid float value: 'fast'"),
        (["topics", "create", "--partitions", "0"], "must be at least 1"),
    ],
)
def test_flag_mistakes(args: list[str], phrase: str, tmp_path: Path) -> None:
    result = lakehouse(*args, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert phrase in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("layer", ["silver", "gold"])
def test_run_silver_or_gold_names_the_refine_pipeline(layer: str, tmp_path: Path) -> None:
    result = lakehouse("run", layer, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    one_clear_line(result, 2, f"`run {layer}` is now part of `run refine`")


def test_bad_setting_value(lake) -> None:
    result = lakehouse(
        "produce", "telemetry", env=lake.process_env(LAKEHOUSE_METRICS_PORT="ninety")
    )
    one_clear_line(result, 2, "LAKEHOUSE_METRICS_PORT must be a whole number")


def test_bad_producer_option(lake) -> None:
    result = lakehouse("produce", "telemetry", "--duplicates", "1.5", env=lake.process_env())
    one_clear_line(result, 2, "duplicates")
