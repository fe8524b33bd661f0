"""customer_journey_events: one row per app session, its steps in event order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import Column
from pyspark.sql import functions as F

from streaming.gold.table import Additive, GoldTable, seconds_between

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


FUNNEL = ("app_open", "search", "view_vehicle", "start_booking", "payment", "end_trip", "rating")


def _session_keys() -> dict[str, Column]:
    return {"session_id": F.col("session_id"), "_date": F.col("date")}


_STEP = ("event_timestamp", "_kafka_partition", "_kafka_offset", "event_id", "event_type")


def _journey_partials(silver: Mapping[str, DataFrame]) -> DataFrame:
    """Per app session: its user's token, first and last event, its steps in event order (events
    of one instant keep their Kafka order: a user's events share a partition), first payment."""
    return (
        silver["user_events"]
        .groupBy("session_id")
        .agg(
            F.min("email_token").alias("user_token"),
            F.min("event_timestamp").alias("session_start"),
            F.max("event_timestamp").alias("session_end"),
            F.sort_array(F.collect_list(F.struct(*_STEP))).alias("_ordered"),
            F.min(F.when(F.col("event_type") == "payment", F.col("event_timestamp"))).alias(
                "_booked_at"
            ),
        )
    )


def _journey_combine(partials: DataFrame) -> DataFrame:
    return partials.groupBy("session_id").agg(
        F.min("user_token").alias("user_token"),
        F.min("session_start").alias("session_start"),
        F.max("session_end").alias("session_end"),
        F.sort_array(F.flatten(F.collect_list("_ordered"))).alias("_ordered"),
        F.min("_booked_at").alias("_booked_at"),
    )


def _journey_finish(partials: DataFrame) -> DataFrame:
    """The user is identified by the HMAC token of their email (Silver's `email_token`), never in
    clear. A session converts when it reaches `payment`; time to book runs from its first event.
    """
    funnel = F.array(*[F.lit(step) for step in FUNNEL])
    return partials.select(
        "session_id",
        F.to_date("session_start").alias("date"),
        "user_token",
        "session_start",
        "session_end",
        F.transform("_ordered", lambda step: step["event_type"]).alias("steps"),
        F.size("_ordered").alias("step_count"),
        F.array_max(
            F.transform("_ordered", lambda step: F.array_position(funnel, step["event_type"]))
        ).alias("funnel_depth"),
        F.col("_booked_at").isNotNull().alias("converted"),
        seconds_between(F.col("session_start"), F.col("_booked_at")).alias("time_to_book_seconds"),
        F.col("session_end").alias("last_event_time"),
        "_ordered",
        "_booked_at",
    )


JOURNEYS = Additive(_journey_partials, _journey_combine, _journey_finish)


TABLE = GoldTable(
    "customer_journey_events",
    ("session_id",),
    {"user_events": _session_keys},
    JOURNEYS.build,
    span=(-1, 1),  # a session may cross midnight; sessions are shorter than a day
    additive=JOURNEYS,
)
