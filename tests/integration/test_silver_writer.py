"""The Silver writer on hand-made Bronze batches: replays change nothing, state stays newest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from streaming import bronze
from streaming.config import load_config
from streaming.pipeline import BatchWriter
from streaming.silver.query import check_inputs
from tests.builders import PII_KEY
from tests.conftest import lake_env

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def config(tmp_path: Path):
    return load_config({**lake_env(tmp_path, "127.0.0.1:1", "w."), "LAKEHOUSE_PII_KEY": PII_KEY})


def silver_writer(spark: SparkSession, config) -> BatchWriter:
    """The `refine` pipeline's batch writer with Silver alone, as after a (re)start."""
    return BatchWriter(spark, config, "refine", check_inputs(config), layers=("silver",))


def telemetry(event_id: str, at: datetime, battery: float, lat: float = 40.7580) -> dict:
    return {
        "event_id": event_id, "vehicle_id": "SC000042", "vehicle_type": "scooter",
        "timestamp": at.isoformat(), "latitude": lat, "longitude": -73.9855,
        "battery_level": battery, "speed_kmh": 12.0, "status": "in_use",
    }  # fmt: skip


def bronze_batch(spark: SparkSession, events: list[dict], first_offset: int):
    rows: list[tuple[Any, ...]] = [
        (b"SC000042", json.dumps(e).encode(), "w.telemetry", 0, first_offset + i, NOW, 0, [])
        for i, e in enumerate(events)
    ]
    return bronze.to_bronze(spark.createDataFrame(rows, bronze.KAFKA_SCHEMA))


def snapshot(spark: SparkSession, config):
    from delta.tables import DeltaTable

    tables = {
        "silver": config.table_path("silver", "telemetry"),
        "quarantine": config.table_path("quarantine", "telemetry"),
        "vehicle_state": config.table_path("silver", "vehicle_state"),
    }
    versions = {
        n: DeltaTable.forPath(spark, p).history(1).collect()[0]["version"]
        for n, p in tables.items()
    }
    contents = {
        n: spark.read.format("delta")
        .load(p)
        .drop("_processed_at", "_updated_at", "_quarantined_at")
        for n, p in tables.items()
    }
    return versions, contents


def test_replaying_a_batch_id_changes_nothing(spark: SparkSession, config) -> None:
    writer = silver_writer(spark, config)
    events = [telemetry(f"e-{i}", NOW - timedelta(seconds=i), 50.0 + i) for i in range(20)]
    events.append(dict(events[0]))  # a producer retry inside the batch
    events.append({**telemetry("bad", NOW, 150.0)})  # quarantined: battery out of range
    batch = bronze_batch(spark, events, first_offset=0)

    writer(batch, 7)
    versions, contents = snapshot(spark, config)
    frozen = {name: frame.collect() for name, frame in contents.items()}

    writer(batch, 7)  # the same batch id again, as after a crash before the checkpoint commit
    again_versions, again = snapshot(spark, config)
    assert again_versions == versions
    for name, frame in again.items():
        assertDataFrameEqual(frame, frozen[name])
    stages = sorted(r["stage"] for r in frozen["quarantine"])
    assert len(frozen["silver"]) == 20 and stages == ["duplicate", "rule"]

    writer(batch, 8)  # the same rows under a new batch id: every one is now a duplicate
    _, later = snapshot(spark, config)
    assertDataFrameEqual(later["silver"], frozen["silver"])
    duplicates = later["quarantine"].where("stage = 'duplicate'")
    assert duplicates.count() == 1 + 21


def test_an_out_of_order_event_leaves_vehicle_state_at_the_newest(
    spark: SparkSession, config
) -> None:
    writer = silver_writer(spark, config)
    newer = telemetry("newer", NOW, 80.0, lat=40.7580)
    older = telemetry("older", NOW - timedelta(minutes=2), 20.0, lat=40.6413)

    writer(bronze_batch(spark, [newer], first_offset=0), 0)
    writer(bronze_batch(spark, [older], first_offset=1), 1)  # arrives later, happened earlier

    state = spark.read.format("delta").load(config.table_path("silver", "vehicle_state")).collect()
    assert len(state) == 1
    assert (state[0]["event_timestamp"], state[0]["battery_level"]) == (
        NOW.replace(tzinfo=None),
        80.0,
    )
    assert state[0]["battery_status"] == "good" and state[0]["zone_name"] is not None
    silver = spark.read.format("delta").load(config.table_path("silver", "telemetry"))
    assert silver.count() == 2  # both events are kept in Silver; only the state ignores the older

    same_batch = [telemetry("late-in-batch", NOW - timedelta(minutes=1), 10.0),
                  telemetry("newest", NOW + timedelta(seconds=30), 55.0)]  # fmt: skip
    writer(bronze_batch(spark, same_batch[::-1], first_offset=2), 2)
    newest = spark.read.format("delta").load(config.table_path("silver", "vehicle_state"))
    assert newest.collect()[0]["battery_level"] == 55.0


def test_a_new_optional_field_becomes_a_column_and_an_incompatible_one_is_quarantined(
    spark: SparkSession, tmp_path: Path
) -> None:
    import shutil

    from streaming.schemas import SCHEMA_DIR, encode_avro, load_schemas

    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schemas)
    env = {**lake_env(tmp_path, "127.0.0.1:1", "w."), "LAKEHOUSE_PII_KEY": PII_KEY}
    config = load_config({**env, "LAKEHOUSE_SCHEMAS": str(schemas)})
    silver_writer(spark, config)(
        bronze_batch(spark, [telemetry("v1-json", NOW, 60.0)], first_offset=0), 0
    )

    # A producer adds an optional field and registers the new version of the contract.
    v2 = json.loads((schemas / "telemetry.avsc").read_text())
    v2["schema_id"] = 6
    v2["fields"].append({"name": "firmware_version", "type": ["null", "string"], "default": None})
    (schemas / "telemetry.v2.avsc").write_text(json.dumps(v2))
    versions = load_schemas(schemas)
    # (vehicle_id, timestamp) is a dedup key of telemetry: each event gets its own instant.
    at = [NOW - timedelta(seconds=n) for n in range(1, 5)]
    avro_v1 = encode_avro(
        versions["telemetry"], {**telemetry("v1-avro", at[0], 61.0), "timestamp": at[0]}
    )
    avro_v2 = encode_avro(
        versions["telemetry.v2"],
        {**telemetry("v2-avro", at[1], 62.0), "timestamp": at[1], "firmware_version": "3.1.5"},
    )
    v2_json = {**telemetry("v2-json", at[2], 63.0), "firmware_version": "3.1.4"}
    retyped = {**telemetry("retyped", at[3], 1.0), "battery_level": "high"}
    rows = [
        (b"SC000042", json.dumps(v2_json).encode()),
        (b"SC000042", avro_v1),
        (b"SC000042", avro_v2),
        (b"SC000042", json.dumps(retyped).encode()),
    ]
    batch = bronze.to_bronze(
        spark.createDataFrame(
            [(k, v, "w.telemetry", 0, 1 + i, NOW, 0, []) for i, (k, v) in enumerate(rows)],
            bronze.KAFKA_SCHEMA,
        )
    )
    silver_writer(spark, config)(batch, 1)  # after a restart

    silver = spark.read.format("delta").load(config.table_path("silver", "telemetry"))
    firmware = {r["event_id"]: r["firmware_version"] for r in silver.collect()}
    assert firmware == {"v1-json": None, "v1-avro": None, "v2-avro": "3.1.5", "v2-json": "3.1.4"}
    quarantine = spark.read.format("delta").load(config.table_path("quarantine", "telemetry"))
    assert [(r["stage"], r["rule_ids"]) for r in quarantine.collect()] == [
        ("schema", ["schema.wrong_type"])
    ]


def test_a_restarted_writer_resumes_from_the_watermark_of_the_last_batch(
    spark: SparkSession, config
) -> None:
    silver_writer(spark, config)(
        bronze_batch(spark, [telemetry("newest", NOW, 50.0)], first_offset=0), 0
    )
    restarted = silver_writer(spark, config)  # nothing in memory
    # Older than the newest event time so far minus telemetry's 10 minutes: late, though it is
    # the only event of its batch.
    old = telemetry("old", NOW - timedelta(minutes=11), 50.0)
    restarted(bronze_batch(spark, [old], first_offset=1), 1)

    quarantine = spark.read.format("delta").load(config.table_path("quarantine", "telemetry"))
    assert [(r["stage"], r["rule_ids"]) for r in quarantine.collect()] == [
        ("late", ["late.watermark"])
    ]
