"""End to end on the real broker: producer ledger == Bronze, exactly, across a kill -9 and a
restart."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from streaming import pipeline
from streaming.simulator import SIMULATED
from streaming.simulator.producer import ProduceOptions, run_producer
from streaming.verify import check_bronze
from tests.builders import broken_payloads, kill_9_mid_run, lakehouse, publish, write_ledger

pytestmark = pytest.mark.e2e


def _produce_corpus(lake, tmp_path: Path) -> list[Path]:
    """>= 100k telemetry events plus every other topic, with duplicates and malformed payloads."""
    telemetry = tmp_path / "telemetry.ledger"
    report = run_producer(
        lake.config,
        "telemetry",
        ProduceOptions(
            rate=math.inf, count=100_000, duplicates=0.01, malformed=0.01, ledger=telemetry
        ),
    )
    assert report.acked == 100_000 and report.failed == 0
    mixed = tmp_path / "all.ledger"
    report = run_producer(
        lake.config,
        "all",
        ProduceOptions(
            rate=math.inf, count=5_000, duplicates=0.02, malformed=0.05, late=0.02, ledger=mixed
        ),
    )
    assert report.acked == 5_000 and report.failed == 0
    return [telemetry, mixed]


@pytest.mark.seconds(135)
def test_kill_9_mid_run_then_restart_loses_and_duplicates_nothing(
    lake, spark: SparkSession, tmp_path: Path
) -> None:
    ledgers = _produce_corpus(lake, tmp_path)
    env = lake.process_env(
        LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER="4000", LAKEHOUSE_TRIGGER_INTERVAL="0 seconds"
    )
    log = Path(lake.config.table_path("bronze", "telemetry")) / "_delta_log"
    # A random moment inside the run: somewhere in the next few micro-batches.
    kill_9_mid_run("bronze", env, log, commits=3, timeout_s=240, jitter_s=2.0)
    partial = check_bronze(spark, lake.config, ledgers)
    assert 0 < partial.bronze_rows < partial.ledger_rows, "the kill did not land mid-run"
    assert partial.duplicated == 0

    restart = lakehouse("run", "bronze", "--once", env=lake.process_env())
    assert restart.returncode == 0, restart.stderr[-3000:]
    result = check_bronze(spark, lake.config, ledgers)
    assert (result.missing, result.duplicated, result.unexpected) == (0, 0, 0)
    assert result.bronze_rows == result.ledger_rows == 105_000
    assert set(result.by_topic) == {lake.config.topic(e).name for e in SIMULATED}


def test_malformed_payloads_land_in_bronze_unchanged(lake, spark: SparkSession) -> None:
    messages = broken_payloads()
    acked = publish(lake.config, "telemetry", messages)

    pipeline.start(spark, lake.config, "bronze", None, once=True).query.awaitTermination()

    stored = spark.read.format("delta").load(lake.config.table_path("bronze", "telemetry"))
    expected = spark.createDataFrame(
        [(t, p, o, k, v, [(hk, hv) for hk, hv in h] or None) for t, p, o, k, v, h in acked],
        "_kafka_topic STRING, _kafka_partition INT, _kafka_offset LONG, key BINARY, value BINARY, "
        "headers ARRAY<STRUCT<key: STRING, value: BINARY>>",
    )
    assert stored.count() == len(messages)
    assertDataFrameEqual(_fingerprint(stored), _fingerprint(expected))


def _fingerprint(frame):
    """Coordinates, key, headers and a SHA-256 of the value: byte-exact, readable on failure."""
    return frame.select(
        "_kafka_topic", "_kafka_partition", "_kafka_offset", "key",
        F.sha2("value", 256).alias("value_sha256"), F.length("value").alias("value_bytes"),
        F.when(F.size("headers") > 0, F.col("headers")).alias("headers"),
    )  # fmt: skip


def test_oracle_fails_when_a_bronze_row_is_removed_or_duplicated(
    lake, spark: SparkSession, tmp_path: Path
) -> None:
    from delta.tables import DeltaTable

    acked = publish(
        lake.config, "bookings", [(b"k", f'{{"n": {i}}}'.encode(), []) for i in range(50)]
    )
    ledger = write_ledger(tmp_path / "bookings.ledger", acked)
    pipeline.start(spark, lake.config, "bronze", None, once=True).query.awaitTermination()
    assert check_bronze(spark, lake.config, [ledger]).ok

    path = lake.config.table_path("bronze", "bookings")
    _, partition, offset = acked[7][:3]
    victim = (F.col("_kafka_partition") == partition) & (F.col("_kafka_offset") == offset)
    copy = spark.read.format("delta").load(path).where(victim)
    copy.write.format("delta").mode("append").save(path)
    duplicated = check_bronze(spark, lake.config, [ledger])
    assert (duplicated.missing, duplicated.duplicated, duplicated.ok) == (0, 1, False)

    DeltaTable.forPath(spark, path).delete(victim)
    removed = check_bronze(spark, lake.config, [ledger])
    assert (removed.missing, removed.duplicated, removed.ok) == (1, 0, False)

    verify = lakehouse("verify", f"--ledger={ledger}", env=lake.process_env())
    assert verify.returncode == 6
    assert '"missing": 1' in verify.stdout
    assert "1 missing, 0 duplicated" in verify.stderr
