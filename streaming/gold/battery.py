"""battery_health_metrics_weekly: per vehicle and ISO week, from telemetry in event-time
order; new readings extend a week's stored row (`Extension`) instead of rebuilding it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import Column, Window
from pyspark.sql import functions as F

from streaming.gold.table import LEVEL, SUM, Extension, GoldTable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


MAX_GAP_MICROS = 10 * 60 * 1_000_000  # readings further apart than this: the vehicle was offline


def _week_start(timestamp: Column) -> Column:
    return F.date_trunc("week", timestamp).cast("date")  # Monday, as ISO weeks start


def _battery_keys() -> dict[str, Column]:
    week = _week_start(F.col("event_timestamp"))
    return {"vehicle_id": F.col("vehicle_id"), "week_start": week, "_date": week}


BATTERY_KEYS = ("vehicle_id", "week_start")
# The partials behind a battery health row, kept in the row so that new readings extend it.
BATTERY_PARTIALS = (
    "_level_sum",
    "_critical_micros",
    "_low_micros",
    "_drop_sum",
    "_drain_micros",
    "_last_level",
    "_last_status",
    "_last_battery_status",
)
_READING = ("vehicle_type", "event_timestamp", "level", "status", "battery_status")
_KAFKA_ORDER = ("_kafka_partition", "_kafka_offset")
_BATTERY_SILVER: tuple[str, ...] = ("vehicle_type", "event_timestamp", "battery_level")
_BATTERY_SILVER += ("status", "battery_status", *_KAFKA_ORDER)  # what a new reading extends by


def battery_health_metrics_weekly(silver: Mapping[str, DataFrame]) -> DataFrame:
    """Per vehicle and ISO week, from telemetry in event-time order.

    Time in a state is the time from a reading to the next one in the same week; gaps over ten
    minutes (the vehicle was offline) count nowhere. A charge cycle is a reading that enters
    `charging`. Drain rate is battery percent lost per hour between consecutive readings while
    not charging. Readings of one instant keep their Kafka order.
    """
    return _battery_finish(_battery_partials(_battery_readings(silver["telemetry"])))


def _battery_readings(telemetry: DataFrame) -> DataFrame:
    return telemetry.select(
        "vehicle_id",
        _week_start(F.col("event_timestamp")).alias("week_start"),
        "vehicle_type",
        "event_timestamp",
        F.col("battery_level").cast(LEVEL).alias("level"),
        "status",
        "battery_status",
        *_KAFKA_ORDER,
        F.lit(False).alias("_anchor"),
    )


def _battery_partials(readings: DataFrame) -> DataFrame:
    """Per key, the sums a week's row is finished from, and its last reading.

    An `_anchor` row is the stored last reading of a key that new readings extend: it counts
    only through its gap to the next reading (and as the previous reading of that one).
    """
    order = Window.partitionBy(*BATTERY_KEYS).orderBy("event_timestamp", *_KAFKA_ORDER)
    micros = F.unix_micros("event_timestamp")
    gap = F.lead(micros).over(order) - micros
    previous_gap = micros - F.lag(micros).over(order)
    draining = (
        (F.col("status") != "charging")
        & (F.lag("status").over(order) != "charging")
        & (previous_gap <= MAX_GAP_MICROS)
    )
    steps = readings.select(
        *BATTERY_KEYS,
        *_READING,
        *_KAFKA_ORDER,
        "_anchor",
        F.when(gap <= MAX_GAP_MICROS, gap).alias("_gap"),
        F.when(draining, F.lag("level").over(order) - F.col("level")).alias("_drop"),
        F.when(draining, previous_gap).alias("_drain"),
        (
            (F.col("status") == "charging")
            & F.coalesce(F.lag("status").over(order) != "charging", F.lit(True))
        ).alias("_charge_start"),
    )
    real = ~F.col("_anchor")

    def micros_where(status: str) -> Column:
        spent = F.sum(F.when(F.col("battery_status") == status, F.col("_gap")))
        return F.coalesce(spent, F.lit(0)).cast("long")

    last = F.max_by(
        F.struct(
            F.col("level").alias("level"),
            F.col("status").alias("status"),
            F.col("battery_status").alias("battery_status"),
        ),
        F.when(real, F.struct("event_timestamp", *_KAFKA_ORDER)),
    )
    return steps.groupBy(*BATTERY_KEYS).agg(
        F.max(F.when(real, F.col("vehicle_type"))).alias("vehicle_type"),
        F.count(F.when(real, 1)).alias("readings"),
        F.min(F.when(real, F.col("level"))).cast("double").alias("min_battery"),
        F.coalesce(F.sum(F.when(real, F.col("level"))), F.lit(0)).cast(SUM).alias("_level_sum"),
        micros_where("critical").alias("_critical_micros"),
        micros_where("low").alias("_low_micros"),
        F.count(F.when(real & F.col("_charge_start"), 1)).alias("charge_cycles"),
        F.sum("_drop").cast(SUM).alias("_drop_sum"),
        F.sum("_drain").cast("long").alias("_drain_micros"),
        F.max(F.when(real, F.col("event_timestamp"))).alias("last_event_time"),
        last.alias("_last"),
    )


def _battery_finish(partials: DataFrame) -> DataFrame:
    """The public columns from the partials; the partials stay, as `_` columns."""

    def minutes(column: str) -> Column:
        return F.round(F.col(column) / F.lit(60_000_000.0), 4)

    drained_hours = F.col("_drain_micros") / F.lit(3_600_000_000.0)
    return partials.select(
        *BATTERY_KEYS,
        F.format_string(
            "%d-W%02d", F.year(F.date_add("week_start", 3)), F.weekofyear("week_start")
        ).alias("iso_week"),
        "vehicle_type",
        "readings",
        "min_battery",
        F.round(F.col("_level_sum") / F.col("readings"), 4).cast("double").alias("avg_battery"),
        minutes("_critical_micros").alias("minutes_critical"),
        minutes("_low_micros").alias("minutes_low"),
        "charge_cycles",
        F.when(
            drained_hours > 0, F.round(F.col("_drop_sum").cast("double") / drained_hours, 4)
        ).alias("drain_rate_pct_per_hour"),
        "last_event_time",
        "_level_sum",
        "_critical_micros",
        "_low_micros",
        "_drop_sum",
        "_drain_micros",
        F.col("_last.level").alias("_last_level"),
        F.col("_last.status").alias("_last_status"),
        F.col("_last.battery_status").alias("_last_battery_status"),
    )


def _grow_battery(stored: DataFrame, fresh: DataFrame) -> DataFrame:
    """Stored rows extended by readings all later than each row's last one.

    The stored last reading goes in as the anchor of its key, so the first new reading's gap,
    drain and charge start see it; the partials of the two sides then add up.
    """
    anchors = stored.select(
        *BATTERY_KEYS,
        "vehicle_type",
        F.col("last_event_time").alias("event_timestamp"),
        F.col("_last_level").alias("level"),
        F.col("_last_status").alias("status"),
        F.col("_last_battery_status").alias("battery_status"),
        *[F.lit(None).cast("long").alias(c) for c in _KAFKA_ORDER],
        F.lit(True).alias("_anchor"),
    )
    new = _battery_partials(_battery_readings(fresh).unionByName(anchors)).alias("n")
    old = stored.alias("s")

    def total(column: str, cast: str) -> Column:
        """Both sides' sum; null only where both are (no drain on either side)."""
        n, s = F.col(f"n.{column}"), F.col(f"s.{column}")
        return (
            F.when(n.isNull() & s.isNull(), F.lit(None))
            .otherwise(F.coalesce(n, F.lit(0)) + F.coalesce(s, F.lit(0)))
            .cast(cast)
        )

    combined = new.join(old, list(BATTERY_KEYS), "left").select(
        *BATTERY_KEYS,
        F.greatest("n.vehicle_type", "s.vehicle_type").alias("vehicle_type"),
        total("readings", "long").alias("readings"),
        F.least("n.min_battery", "s.min_battery").alias("min_battery"),
        total("_level_sum", SUM).alias("_level_sum"),
        total("_critical_micros", "long").alias("_critical_micros"),
        total("_low_micros", "long").alias("_low_micros"),
        total("charge_cycles", "long").alias("charge_cycles"),
        total("_drop_sum", SUM).alias("_drop_sum"),
        total("_drain_micros", "long").alias("_drain_micros"),
        F.col("n.last_event_time").alias("last_event_time"),
        F.col("n._last").alias("_last"),
    )
    return _battery_finish(combined)


TABLE = GoldTable(
    "battery_health_metrics_weekly",
    ("vehicle_id", "week_start"),
    {"telemetry": _battery_keys},
    battery_health_metrics_weekly,
    span=(0, 6),
    partition_by=("week_start",),
    prune="week_start",
    extend=Extension(_BATTERY_SILVER, _grow_battery),
)
