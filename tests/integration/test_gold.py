"""Gold writers on Silver built from hand-made Bronze batches: late data, replays, deletes, and
the recomputation oracle shown to fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from streaming import bronze
from streaming.commits import CommitGuard
from streaming.config import load_config
from streaming.gold.aggregates import TABLES
from streaming.gold.query import GoldLayer
from streaming.gold.table import UPDATED_AT
from streaming.gold.writer import GoldSummary
from streaming.pipeline import BatchReport, BatchWriter
from streaming.show import read_table
from streaming.silver.query import check_inputs
from streaming.verify import check_gold
from tests.builders import PII_KEY
from tests.conftest import lake_env

# Each test runs Silver and Gold batches; the module's late corpus is built once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.seconds(45)]

TIMES_SQUARE = (40.7580, -73.9855)  # TLC zone 230, Times Sq/Theatre District
ZONE = 230
# "Yesterday", ten minutes into an hour that has passed today: every booking is in the past,
# and readings a few minutes later stay in the same hour whatever time the suite runs.
BASE = (datetime.now(UTC) - timedelta(days=1, hours=1)).replace(minute=10, second=0, microsecond=0)


@pytest.fixture
def config(tmp_path: Path):
    return load_config({**lake_env(tmp_path, "127.0.0.1:1", "g."), "LAKEHOUSE_PII_KEY": PII_KEY})


def booking(booking_id: str, at: datetime, user: str = "u-1", revenue: float = 10.0) -> dict:
    lat, lon = TIMES_SQUARE
    return {
        "booking_id": booking_id, "user_id": user, "vehicle_id": "SC000042",
        "vehicle_type": "scooter", "booking_timestamp": at.isoformat(),
        "pickup_latitude": lat, "pickup_longitude": lon,
        "dropoff_latitude": lat + 0.01, "dropoff_longitude": lon,
        "trip_duration_minutes": 12.5, "distance_km": 1.2, "revenue": revenue,
        "currency": "USD", "status": "completed",
        "email": f"{user}@example.com", "phone": "+1 212 555 0100",
    }  # fmt: skip


def reading(event_id: str, at: datetime, battery: float, status: str = "available") -> dict:
    lat, lon = TIMES_SQUARE
    return {
        "event_id": event_id, "vehicle_id": "SC000042", "vehicle_type": "scooter",
        "timestamp": at.isoformat(), "latitude": lat, "longitude": lon,
        "battery_level": battery, "speed_kmh": 0.0, "status": status,
    }  # fmt: skip


class Pipeline:
    """The `refine` pipeline's batch writer fed by hand: Silver, then Gold, per batch."""

    def __init__(self, spark: SparkSession, config) -> None:
        self.spark, self.config = spark, config
        self.offset = 0
        self.batch_id = 0
        self.reports: list[BatchReport] = []
        self.writer = self.restarted()
        self.gold = {n for n, t in TABLES.items() if set(t.sources) <= {"bookings", "telemetry"}}

    def restarted(self) -> BatchWriter:
        """A new writer, as after a restart: nothing in memory."""
        inputs = check_inputs(self.config)
        return BatchWriter(self.spark, self.config, "refine", inputs, self.reports.append)

    def bronze(self, entity: str, events: list[dict]):
        rows: list[tuple[Any, ...]] = [
            (b"k", json.dumps(e).encode(), f"g.{entity}", 0, self.offset + i, BASE, 0, [])
            for i, e in enumerate(events)
        ]
        self.offset += len(events)
        return bronze.to_bronze(self.spark.createDataFrame(rows, bronze.KAFKA_SCHEMA))

    def batch(self, entity: str, events: list[dict]):
        """One batch of Bronze rows through Silver and Gold; returns it, for replays."""
        frame = self.bronze(entity, events).localCheckpoint()
        self.writer(frame, self.batch_id)
        self.batch_id += 1
        return frame

    def summary(self, table: str) -> GoldSummary:
        return self.reports[-1].gold[table]

    def demand(self) -> dict:
        rows = self.spark.read.format("delta").load(
            self.config.table_path("gold", "demand_by_zone_hour")
        )
        return {r["date"]: r for r in rows.where(F.col("zone_id") == ZONE).collect()}


DAYS = (-10, -3, -1, 0, 1)


def day(n: int) -> datetime:
    return BASE + timedelta(days=n)


@pytest.fixture(scope="module")
def late(spark: SparkSession, tmp_path_factory):
    """Bookings over five days, Gold, then a booking for yesterday arriving a day late.

    Shared by the tests below, which read it; a test that alters Gold restores it.
    """
    config = load_config(
        {**lake_env(tmp_path_factory.mktemp("late"), "127.0.0.1:1", "g."),
         "LAKEHOUSE_PII_KEY": PII_KEY}
    )  # fmt: skip
    pipeline = Pipeline(spark, config)
    # Oldest first, so the 7-day watermark never quarantines the history itself.
    pipeline.batch("bookings", [booking("b-10", day(-10))])
    pipeline.batch("bookings", [
        booking("b-3a", day(-3)), booking("b-3b", day(-3), "u-2"), booking("b-1", day(-1)),
        booking("b0", day(0)), booking("b+1", day(1), revenue=7.25),
    ])  # fmt: skip
    minute = lambda n: day(-1) + timedelta(minutes=n)  # noqa: E731
    pipeline.batch("telemetry", [
        reading("t1", minute(0), 12.0), reading("t2", minute(1), 8.0),
        reading("t3", minute(2), 9.0, "charging"), reading("t4", minute(3), 11.0, "charging"),
    ])  # fmt: skip
    before = pipeline.demand()
    # Yesterday's booking arrives a day late: within bookings' 7-day watermark, so it counts.
    last = pipeline.batch("bookings", [booking("late", day(0), "u-3", revenue=20.0)])
    return pipeline, before, last


def test_a_late_booking_changes_that_day_and_the_rolling_averages(
    spark: SparkSession, late
) -> None:
    pipeline, before, _ = late
    after = pipeline.demand()
    dates = {n: day(n).date() for n in DAYS}
    assert {d: r["booking_count"] for d, r in before.items()} == {
        dates[-10]: 1,
        dates[-3]: 2,
        dates[-1]: 1,
        dates[0]: 1,
        dates[1]: 1,
    }
    assert before[dates[0]]["booking_count_7d_avg"] == round(4 / 7, 4)  # days -6..0: 2+1+1
    assert before[dates[1]]["booking_count_28d_avg"] == round(6 / 28, 4)

    assert after[dates[0]]["booking_count"] == 2 and after[dates[0]]["unique_users"] == 2
    assert float(after[dates[0]]["total_revenue"]) == 30.0
    assert after[dates[0]]["booking_count_7d_avg"] == round(5 / 7, 4)
    assert after[dates[1]]["booking_count_7d_avg"] == round(6 / 7, 4)  # days -5..1: 2+1+2+1
    assert after[dates[1]]["booking_count_28d_avg"] == round(7 / 28, 4)
    for n in (-10, -3, -1):  # windows that end before the late day do not move
        assert after[dates[n]].asDict() == before[dates[n]].asDict()
    # No vehicle reported from the zone: supply is 0 and utilisation is unknown, not infinite.
    assert after[dates[0]]["available_vehicles"] == 0
    assert after[dates[0]]["utilization_rate"] is None
    assert (after[dates[-1]]["available_vehicles"], after[dates[-1]]["utilization_rate"]) == (
        1,
        100.0,
    )

    for name in pipeline.gold:
        check = check_gold(spark, pipeline.config, name)
        assert check.ok and check.gold_rows > 0 and check.lag_seconds == 0, check


def test_battery_time_in_state_charge_cycles_and_drain(spark: SparkSession, late) -> None:
    pipeline, _, _ = late
    path = pipeline.config.table_path("gold", "battery_health_metrics_weekly")
    rows = spark.read.format("delta").load(path).collect()
    assert [(r["readings"], r["min_battery"], r["charge_cycles"]) for r in rows] == [(4, 8.0, 1)]
    # 12 (low) -> 8 (critical) -> 9 (critical, charging) -> 11: a minute from each reading
    assert (rows[0]["minutes_critical"], rows[0]["minutes_low"]) == (2.0, 1.0)
    assert rows[0]["drain_rate_pct_per_hour"] == 240.0  # 4 points in the one draining minute


def battery(pipeline: Pipeline) -> tuple:
    path = pipeline.config.table_path("gold", "battery_health_metrics_weekly")
    (row,) = pipeline.spark.read.format("delta").load(path).collect()
    return (
        row["readings"], row["min_battery"], row["charge_cycles"], row["minutes_critical"],
        row["minutes_low"], row["drain_rate_pct_per_hour"],
    )  # fmt: skip


def test_battery_health_extended_reading_by_reading_equals_the_rebuild(
    spark: SparkSession, config
) -> None:
    """The late fixture's four readings, in three Silver batches with a Gold batch after each:
    every Gold batch extends the stored week instead of rebuilding it, and ends where the one
    batch of all four did. An earlier reading arriving after them makes the week rebuild."""
    pipeline = Pipeline(spark, config)
    minute = lambda n: day(-1) + timedelta(minutes=n)  # noqa: E731
    name = "battery_health_metrics_weekly"
    batches = [
        [reading("t1", minute(0), 12.0)],
        [reading("t2", minute(1), 8.0)],
        [reading("t3", minute(2), 9.0, "charging"), reading("t4", minute(3), 11.0, "charging")],
    ]
    for events in batches:
        pipeline.batch("telemetry", events)
        assert pipeline.summary(name).extended == 1
    assert battery(pipeline) == (4, 8.0, 1, 2.0, 1.0, 240.0)
    assert check_gold(spark, config, "battery_health_metrics_weekly").ok

    # A minute before t1: 15 (low) -> 12 adds a minute low and 3 points to the drain.
    pipeline.batch("telemetry", [reading("t0", minute(-1), 15.0)])
    check = check_gold(spark, config, "battery_health_metrics_weekly")
    assert check.ok, check
    assert battery(pipeline) == (5, 8.0, 1, 2.0, 2.0, 210.0)
    assert pipeline.summary(name).extended == 0


def test_replaying_a_batch_after_a_restart_changes_nothing(spark: SparkSession, late) -> None:
    from delta.tables import DeltaTable

    pipeline, _, last = late
    tables = [("gold", n) for n in pipeline.gold] + [
        ("silver", "bookings"),
        ("quarantine", "bookings"),
    ]
    paths = {f"{layer}.{n}": pipeline.config.table_path(layer, n) for layer, n in tables}

    def state():
        return {
            name: (
                DeltaTable.forPath(spark, path).history(1).collect()[0]["version"],
                sorted(spark.read.format("delta").load(path).collect()),
            )
            for name, path in paths.items()
        }

    first = state()
    # The last batch id again, as after a crash before the checkpoint's commit.
    pipeline.restarted()(last, pipeline.batch_id - 1)
    assert state() == first


def test_the_recomputation_oracle_fails_on_one_altered_lost_or_extra_row(
    spark: SparkSession, late
) -> None:
    from delta.tables import DeltaTable

    pipeline, _, _ = late
    config = pipeline.config
    path = config.table_path("gold", "demand_by_zone_hour")
    gold = DeltaTable.forPath(spark, path)
    good = gold.history(1).collect()[0]["version"]
    one_row = (F.col("zone_id") == ZONE) & (F.col("date") == day(-3).date())
    try:
        gold.update(one_row, {"total_revenue": F.col("total_revenue") + F.lit(0.01)})
        altered = check_gold(spark, config, "demand_by_zone_hour")
        assert (altered.missing, altered.unexpected, altered.ok) == (1, 1, False)

        gold.restoreToVersion(good)
        extra = spark.read.format("delta").load(path).where(one_row)
        extra.write.format("delta").mode("append").save(path)
        duplicated = check_gold(spark, config, "demand_by_zone_hour")
        assert (duplicated.missing, duplicated.unexpected) == (0, 1)

        gold.restoreToVersion(good)
        gold.delete(one_row)
        lost = check_gold(spark, config, "demand_by_zone_hour")
        assert (lost.missing, lost.unexpected) == (1, 0)
    finally:
        gold.restoreToVersion(good)


def test_gold_tables_are_readable_by_delta_rs_and_duckdb(late) -> None:
    from deltalake import DeltaTable

    pipeline, _, _ = late
    for name in pipeline.gold:
        protocol = DeltaTable(pipeline.config.table_path("gold", name)).protocol()
        assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2), protocol
    columns, rows, total = read_table(
        pipeline.config, "gold.demand_by_zone_hour", where=f"zone_id = {ZONE}", limit=2
    )
    assert total == len(DAYS) and len(rows) == 2
    assert UPDATED_AT in columns and "booking_count_28d_avg" in columns


def test_demand_rebuilds_an_hour_from_both_ends_of_it_and_leaves_other_hours(
    spark: SparkSession, config
) -> None:
    """Demand's rebuild reads Silver only within the touched hours ([start, end)): a reading
    at the first and at the last microsecond of the hour both count, the hour before is kept."""
    pipeline = Pipeline(spark, config)
    hour = BASE.replace(minute=0)
    pipeline.batch("telemetry", [reading("before", hour - timedelta(microseconds=1), 10.0),
                                 reading("first", hour, 20.0)])  # fmt: skip
    # A batch of its own: its watermark (newest - 10 minutes) would make `first` late.
    last = hour + timedelta(hours=1, microseconds=-1)
    pipeline.batch("telemetry", [reading("last", last, 40.0)])  # its rebuild must find `first`
    path = config.table_path("gold", "demand_by_zone_hour")
    rows = spark.read.format("delta").load(path).where(F.col("zone_id") == ZONE).collect()
    supply = {
        (r["date"], r["hour"]): (r["available_vehicles"], r["avg_battery_level"]) for r in rows
    }
    before = hour - timedelta(microseconds=1)
    expected = {(hour.date(), hour.hour): (1, 30.0), (before.date(), before.hour): (1, 10.0)}
    assert supply == expected
    check = check_gold(spark, config, "demand_by_zone_hour")
    assert check.ok and check.gold_rows == 2, check


def test_a_delete_in_silver_reaches_gold_through_its_touched_keys(
    spark: SparkSession, config
) -> None:
    """An erasure deletes Silver rows, then hands them to Gold as `delete` changes: the keys
    they touched are rebuilt from what Silver has left."""
    from delta.tables import DeltaTable

    pipeline = Pipeline(spark, config)
    pipeline.batch("bookings", [booking("keep", BASE), booking("erase", BASE, "u-9")])
    gold = GoldLayer(spark, config, CommitGuard(config, "erase"))
    silver = DeltaTable.forPath(spark, config.table_path("silver", "bookings"))

    def erase(condition: str, erasure: int) -> None:
        gone = silver.toDF().where(condition).localCheckpoint()
        silver.delete(condition)
        changes = {"bookings": gone.withColumns(
            {"_change_type": F.lit("delete"), "_commit_version": F.lit(None).cast("long")}
        )}  # fmt: skip
        for name in gold.tables_for({"bookings"}):
            gold.apply(name, changes, erasure)

    erase("user_id = 'u-9'", 0)
    row = pipeline.demand()[BASE.date()]
    assert (row["booking_count"], row["unique_users"]) == (1, 1)
    for name in pipeline.gold:
        assert check_gold(spark, config, name).ok

    erase("true", 1)  # no booking left: every key it touched disappears from Gold
    assert pipeline.demand() == {}
    for name in pipeline.gold:
        check = check_gold(spark, config, name)
        assert check.ok and check.gold_rows == 0, check
