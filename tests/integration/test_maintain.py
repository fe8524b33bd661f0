"""`lakehouse maintain` on real Delta tables (Spark writes them, as the pipeline does):
retention (dry run and real run agree, nothing younger touched), compaction with Z-order,
log checkpoints, VACUUM, and the record of what was done."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from streaming.config import Config, load_config
from streaming.maintain import maintain
from tests.builders import lakehouse, one_clear_line

TODAY = datetime.now(UTC).date()
SCHEMA = "zone_id int, date date, hour int, booking_count long"


def _config(root: Path) -> Config:
    return load_config(
        {"LAKEHOUSE_ROOT": str(root / "lake"), "LAKEHOUSE_RETENTION_DAYS_GOLD": "30"}
    )


def _small_appends(spark: SparkSession, config: Config) -> str:
    """gold.demand_by_zone_hour-like: 12 one-row appends today and yesterday, 3 of 40 days ago."""
    path = config.table_path("gold", "demand_by_zone_hour")
    days = [TODAY] * 6 + [TODAY - timedelta(days=1)] * 6 + [TODAY - timedelta(days=40)] * 3
    for i, day in enumerate(days):
        row = spark.createDataFrame([(i % 5 + 1, day, i % 24, i)], SCHEMA)
        row.write.format("delta").mode("append").partitionBy("date").save(path)
    return path


def test_retention_dry_run_and_real_run_agree_and_compaction_keeps_every_row(
    spark: SparkSession, tmp_path: Path
) -> None:
    config = _config(tmp_path)
    path = _small_appends(spark, config)
    before = DeltaTable(path)
    assert len(before.file_uris()) == 15
    planned = maintain(spark, config, ["gold.demand_by_zone_hour"], dry_run=True, vacuum=True)
    assert [(a.action, a.rows_deleted, a.dry_run) for a in planned] == [("retention", 3, True)]
    assert DeltaTable(path).version() == before.version()  # a dry run changes nothing

    done = maintain(spark, config, ["gold.demand_by_zone_hour"], dry_run=False, vacuum=True)
    by_action = {a.action: a for a in done}
    assert list(by_action) == ["retention", "optimize", "checkpoint", "vacuum"]
    assert by_action["retention"].rows_deleted == 3 == planned[0].rows_deleted
    assert by_action["retention"].files_after == 12
    assert (by_action["optimize"].files_before, by_action["optimize"].files_after) == (12, 2)
    rows = spark.read.format("delta").load(path)
    assert rows.count() == 12 and rows.where(f"date < '{TODAY - timedelta(days=30)}'").count() == 0
    assert sorted(r.booking_count for r in rows.collect()) == list(range(12))
    history = {h["operation"]: h for h in DeltaTable(path).history()}
    assert "zone_id" in history["OPTIMIZE"]["operationParameters"]["zOrderBy"]
    assert list(Path(path, "_delta_log").glob("*.checkpoint.parquet"))
    assert "VACUUM END" in history
    recorded = DeltaTable(config.table_path("audit", "maintenance")).to_pyarrow_table().to_pylist()
    assert [(r["table"], r["action"]) for r in recorded] == [
        ("gold.demand_by_zone_hour", a) for a in by_action
    ]
    again = maintain(spark, config, ["gold.demand_by_zone_hour"], dry_run=True, vacuum=True)
    assert again[0].rows_deleted == 0  # nothing younger than the limit is touched


def test_bad_maintenance_input_gets_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "LAKEHOUSE_ROOT": str(tmp_path / "lake")}
    one_clear_line(
        lakehouse("maintain", "--once", "--tables", "gold.nope", env=env), 2, "no table matches"
    )
    short = lakehouse("maintain", "--once", env={**env, "LAKEHOUSE_VACUUM_HOURS": "1"})
    one_clear_line(short, 2, "LAKEHOUSE_VACUUM_HOURS must be at least 168", "Delta's safety check")


@pytest.mark.parametrize(
    "setting", ["LAKEHOUSE_RETENTION_DAYS_BRONZE=0", "LAKEHOUSE_MAINTAIN_INTERVAL=x"]
)
def test_bad_maintenance_settings_are_refused(setting: str) -> None:
    from streaming.errors import ConfigError

    name, value = setting.split("=")
    with pytest.raises(ConfigError):
        load_config({name: value})
