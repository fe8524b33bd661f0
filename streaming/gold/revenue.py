"""revenue_by_vehicle_type_daily: per vehicle type and day, from bookings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from streaming.gold.table import (
    DISTANCE,
    MONEY,
    TOTAL,
    Additive,
    GoldTable,
    booking_keys,
    members,
    merged,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


REVENUE_COLUMNS = (
    "vehicle_type",
    "date",
    "bookings",
    "completed_trips",
    "cancelled_bookings",
    "total_revenue",
    "avg_revenue_per_trip",
    "total_distance_km",
    "unique_users",
    "active_vehicles",
    "last_event_time",
)
REVENUE_KEYS = ("vehicle_type", "date")


def _revenue_partials(silver: Mapping[str, DataFrame]) -> DataFrame:
    """Per vehicle type and day: bookings, trips, cancellations, revenue, distance, reach."""
    return (
        silver["bookings"]
        .groupBy(*REVENUE_KEYS)
        .agg(
            F.count(F.lit(1)).alias("bookings"),
            F.count(F.when(F.col("status") == "completed", 1)).alias("completed_trips"),
            F.count(F.when(F.col("status") == "cancelled", 1)).alias("cancelled_bookings"),
            F.sum(F.col("revenue").cast(MONEY)).cast(TOTAL).alias("total_revenue"),
            F.sum(F.col("distance_km").cast("decimal(18,3)"))
            .cast(DISTANCE)
            .alias("total_distance_km"),
            members("user_id").alias("_users"),
            members("vehicle_id").alias("_vehicles"),
            F.max("event_timestamp").alias("last_event_time"),
        )
    )


def _revenue_combine(partials: DataFrame) -> DataFrame:
    return partials.groupBy(*REVENUE_KEYS).agg(
        *[
            F.sum(c).cast("long").alias(c)
            for c in ("bookings", "completed_trips", "cancelled_bookings")
        ],
        F.sum("total_revenue").cast(TOTAL).alias("total_revenue"),
        F.sum("total_distance_km").cast(DISTANCE).alias("total_distance_km"),
        merged("_users").alias("_users"),
        merged("_vehicles").alias("_vehicles"),
        F.max("last_event_time").alias("last_event_time"),
    )


def _revenue_finish(partials: DataFrame) -> DataFrame:
    return partials.withColumns(
        {
            "unique_users": F.size("_users").cast("long"),
            "active_vehicles": F.size("_vehicles").cast("long"),
            "avg_revenue_per_trip": F.when(
                F.col("completed_trips") > 0,
                F.round(F.col("total_revenue") / F.col("completed_trips"), 4).cast("double"),
            ),
        }
    ).select(*REVENUE_COLUMNS, "_users", "_vehicles")


REVENUE = Additive(_revenue_partials, _revenue_combine, _revenue_finish)


TABLE = GoldTable(
    "revenue_by_vehicle_type_daily",
    ("vehicle_type", "date"),
    {"bookings": booking_keys("vehicle_type", "date")},
    REVENUE.build,
    prune="date",
    additive=REVENUE,
)
