"""demand_by_zone_hour: bookings and vehicles per pickup zone, vehicle type and hour, with
the 7- and 28-day rolling averages of bookings."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import Column, Window
from pyspark.sql import functions as F

from streaming.gold.table import (
    LEVEL,
    MONEY,
    SUM,
    TOTAL,
    Additive,
    GoldTable,
    members,
    merged,
    ratio,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


ROLLING_DAYS = (7, 28)
DEMAND_KEYS = ("zone_id", "vehicle_type", "date", "hour")
_ROLLING_GROUP = ("zone_id", "vehicle_type", "hour")


def _booking_zone_keys() -> dict[str, Column]:
    return {
        "zone_id": F.col("pickup_zone_id"),
        "vehicle_type": F.col("vehicle_type"),
        "date": F.col("date"),
        "hour": F.col("hour"),
        "_date": F.col("date"),
    }


def _telemetry_zone_keys() -> dict[str, Column]:
    return {k: F.col(k) for k in DEMAND_KEYS} | {"_date": F.col("date")}


def _demand_partials(silver: Mapping[str, DataFrame]) -> DataFrame:
    """Bookings by pickup zone and telemetry by zone, one partial row per key and side.

    Zones are pickup zones; rows outside every zone are not in this table.
    """
    bookings = (
        silver["bookings"]
        .where(F.col("pickup_zone_id").isNotNull())
        .groupBy(F.col("pickup_zone_id").alias("zone_id"), "vehicle_type", "date", "hour")
        .agg(
            F.count(F.lit(1)).alias("booking_count"),
            members("user_id").alias("_users"),
            F.sum(F.col("trip_duration_minutes").cast(LEVEL)).cast(SUM).alias("_trip_sum"),
            F.count("trip_duration_minutes").alias("_trip_n"),
            F.sum(F.col("revenue").cast(MONEY)).cast(TOTAL).alias("total_revenue"),
            F.max("event_timestamp").alias("_booked"),
        )
    )
    supply = (
        silver["telemetry"]
        .where(F.col("zone_id").isNotNull())
        .groupBy(*DEMAND_KEYS)
        .agg(
            members("vehicle_id").alias("_vehicles"),
            F.sum(F.col("battery_level").cast(LEVEL)).cast(SUM).alias("_battery_sum"),
            F.count("battery_level").alias("_battery_n"),
            F.max("event_timestamp").alias("_seen"),
        )
    )
    return bookings.unionByName(supply, allowMissingColumns=True)


def _demand_combine(partials: DataFrame) -> DataFrame:
    return partials.groupBy(*DEMAND_KEYS).agg(
        F.coalesce(F.sum("booking_count"), F.lit(0)).cast("long").alias("booking_count"),
        merged("_users").alias("_users"),
        F.sum("_trip_sum").cast(SUM).alias("_trip_sum"),
        F.coalesce(F.sum("_trip_n"), F.lit(0)).cast("long").alias("_trip_n"),
        F.sum("total_revenue").cast(TOTAL).alias("total_revenue"),
        F.max("_booked").alias("_booked"),
        merged("_vehicles").alias("_vehicles"),
        F.sum("_battery_sum").cast(SUM).alias("_battery_sum"),
        F.coalesce(F.sum("_battery_n"), F.lit(0)).cast("long").alias("_battery_n"),
        F.max("_seen").alias("_seen"),
    )


def _demand_finish(partials: DataFrame) -> DataFrame:
    """The seed's demand and supply per zone, vehicle type and hour (rolling averages apart).

    Counts and revenue are 0 where only one side has rows; averages stay null where there is
    nothing to average, and so does utilization_rate where a zone had no vehicles.
    """
    vehicles = F.size("_vehicles")
    return partials.select(
        *DEMAND_KEYS,
        "booking_count",
        F.size("_users").cast("long").alias("unique_users"),
        ratio("_trip_sum", "_trip_n").alias("avg_trip_duration"),
        F.coalesce("total_revenue", F.lit(0).cast(TOTAL)).alias("total_revenue"),
        vehicles.cast("long").alias("available_vehicles"),
        ratio("_battery_sum", "_battery_n").alias("avg_battery_level"),
        F.when(vehicles > 0, F.round(F.col("booking_count") * 100.0 / vehicles, 4)).alias(
            "utilization_rate"
        ),
        F.greatest("_booked", "_seen").alias("last_event_time"),
        *_DEMAND_PARTIALS,
    )


_DEMAND_PARTIALS: tuple[str, ...] = ("_users", "_trip_sum", "_trip_n", "_booked", "_vehicles")
_DEMAND_PARTIALS += ("_battery_sum", "_battery_n", "_seen")
DEMAND = Additive(_demand_partials, _demand_combine, _demand_finish)


def _rolling_column(days: int) -> Column:
    """Bookings per day over the `days` calendar days ending on the row's date (absent days: 0)."""
    window = (
        Window.partitionBy(*_ROLLING_GROUP)
        .orderBy(F.unix_date("date"))
        .rangeBetween(-(days - 1), 0)
    )
    return F.round(F.sum("booking_count").over(window) / F.lit(float(days)), 4)


def with_rolling(rows: DataFrame) -> DataFrame:
    """Add booking_count_7d_avg and _28d_avg (before utilization_rate, in the table's order)."""
    tail = ("utilization_rate", "last_event_time")
    public = [c for c in rows.columns if not c.startswith("_") and c not in tail]
    partials = [c for c in rows.columns if c.startswith("_")]
    averages = [_rolling_column(d).alias(f"booking_count_{d}d_avg") for d in ROLLING_DAYS]
    return rows.select(*public, *averages, *tail, *partials)


def refresh_rolling(fresh: DataFrame, touched: DataFrame, gold: DataFrame) -> DataFrame:
    """Rows to MERGE after `touched` keys changed: the fresh rows with their averages, and every
    existing row whose rolling window includes a touched date and whose averages moved.

    Only Gold rows of the touched (zone, type, hour) within 27 days either side are read.
    """
    group, keys, span = list(_ROLLING_GROUP), list(DEMAND_KEYS), max(ROLLING_DAYS) - 1
    averages = [f"booking_count_{d}d_avg" for d in ROLLING_DAYS]
    ranges = touched.groupBy(*group).agg(F.min("date").alias("_lo"), F.max("date").alias("_hi"))
    near = gold.join(F.broadcast(ranges), group).where(
        F.col("date").between(F.date_sub("_lo", span), F.date_add("_hi", span))
    )
    context = near.join(touched, keys, "left_anti")
    base = fresh.columns
    windowed = with_rolling(fresh.select(*base).unionByName(context.select(*base)))
    changed = (
        windowed.join(F.broadcast(ranges), group)
        .where(F.col("date").between(F.col("_lo"), F.date_add("_hi", span)))
        .join(context.select(*keys, *[F.col(a).alias(f"_old_{a}") for a in averages]), keys)
        .where(reduce(operator.or_, [~F.col(a).eqNullSafe(F.col(f"_old_{a}")) for a in averages]))
        .select(*windowed.columns)
    )
    return windowed.join(touched, keys, "left_semi").unionByName(changed)


TABLE = GoldTable(
    "demand_by_zone_hour",
    DEMAND_KEYS,
    {"bookings": _booking_zone_keys, "telemetry": _telemetry_zone_keys},
    DEMAND.build,
    partition_by=("date",),
    prune="date",
    rolling=True,
    hour="hour",
    additive=DEMAND,
)
