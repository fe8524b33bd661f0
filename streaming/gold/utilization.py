"""vehicle_utilization_daily: per vehicle and day, from bookings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from streaming.gold.table import DISTANCE, MONEY, TOTAL, Additive, GoldTable, booking_keys, in_trip

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


UTILIZATION_COLUMNS = (
    "vehicle_id",
    "date",
    "vehicle_type",
    "trips",
    "cancelled",
    "minutes_in_use",
    "distance_km",
    "revenue",
    "utilization_pct",
    "last_event_time",
)
UTILIZATION_KEYS = ("vehicle_id", "date")


def _utilization_partials(silver: Mapping[str, DataFrame]) -> DataFrame:
    """Per vehicle and day, from bookings: trips (completed or in progress), cancellations,
    minutes in use, distance, revenue."""
    trip = in_trip()
    return (
        silver["bookings"]
        .groupBy(*UTILIZATION_KEYS)
        .agg(
            F.max("vehicle_type").alias("vehicle_type"),
            F.count(F.when(trip, 1)).alias("trips"),
            F.count(F.when(F.col("status") == "cancelled", 1)).alias("cancelled"),
            F.sum(F.when(trip, F.col("trip_duration_minutes").cast(MONEY)))
            .cast(TOTAL)
            .alias("minutes_in_use"),
            F.sum(F.col("distance_km").cast("decimal(18,3)")).cast(DISTANCE).alias("distance_km"),
            F.sum(F.col("revenue").cast(MONEY)).cast(TOTAL).alias("revenue"),
            F.max("event_timestamp").alias("last_event_time"),
        )
    )


def _utilization_combine(partials: DataFrame) -> DataFrame:
    return partials.groupBy(*UTILIZATION_KEYS).agg(
        F.max("vehicle_type").alias("vehicle_type"),
        F.sum("trips").cast("long").alias("trips"),
        F.sum("cancelled").cast("long").alias("cancelled"),
        F.sum("minutes_in_use").cast(TOTAL).alias("minutes_in_use"),
        F.sum("distance_km").cast(DISTANCE).alias("distance_km"),
        F.sum("revenue").cast(TOTAL).alias("revenue"),
        F.max("last_event_time").alias("last_event_time"),
    )


def _utilization_finish(partials: DataFrame) -> DataFrame:
    """Utilisation = minutes in use / 1440."""
    minutes = F.coalesce("minutes_in_use", F.lit(0).cast(TOTAL))
    return partials.withColumns(
        {
            "minutes_in_use": minutes,
            "utilization_pct": F.round(minutes.cast("double") * 100.0 / 1440.0, 4),
        }
    ).select(*UTILIZATION_COLUMNS)


UTILIZATION = Additive(_utilization_partials, _utilization_combine, _utilization_finish)


TABLE = GoldTable(
    "vehicle_utilization_daily",
    ("vehicle_id", "date"),
    {"bookings": booking_keys("vehicle_id", "date")},
    UTILIZATION.build,
    partition_by=("date",),
    prune="date",
    additive=UTILIZATION,
)
