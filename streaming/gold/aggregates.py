"""Gold aggregates as pure functions of Silver.

Each Gold table is described once (`GoldTable`): its key, how a Silver row maps to the key it
touches, which Silver dates a touched key needs, and how to build rows from Silver. The writer
runs `build` on the Silver rows of the keys a micro-batch touched; `verify` runs the same `build`
on all of Silver. Arithmetic is exact where it can be (counts, decimal sums, integer time), and
every rounding is deterministic, so incremental Gold and a recomputation compare equal, exactly.

A table whose keys keep growing through a long period (battery health: a vehicle's week) also
has an `Extension`: its rows carry their partial aggregates as `_` columns, and new Silver rows
extend them without reading the key's earlier Silver rows again. Partials and public columns
come from one `finish`, in the rebuild and in the extension alike, so the two agree exactly.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import Column, Window
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MONEY = "decimal(18,2)"
LEVEL = "decimal(9,4)"
MAX_GAP_MICROS = 10 * 60 * 1_000_000  # readings further apart than this: the vehicle was offline
FUNNEL = ("app_open", "search", "view_vehicle", "start_booking", "payment", "end_trip", "rating")
IN_TRIP = ("completed", "in_progress")
ROLLING_DAYS = (7, 28)
UPDATED_AT = "_updated_at"
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
SILVER_VERSION = "_silver_version"  # an extended table's rows: the Silver version built from


@dataclass(frozen=True)
class Extension:
    """How new Silver inserts extend a table's stored rows without a rebuild.

    The writer extends a key when every change of the batch for it is an insert of a Silver
    version after the one its stored row was built from (SILVER_VERSION), with an event time
    after the row's `last_event_time`; any other key is rebuilt from Silver. `grow(stored, fresh)`
    returns the rows of the keys in `fresh` (new Silver rows: key columns and `columns`) from
    their stored rows, where there are any.
    """

    columns: tuple[str, ...]
    grow: Callable[[DataFrame, DataFrame], DataFrame]


@dataclass(frozen=True)
class Additive:
    """A table kept by partial aggregates, so a batch's Silver rows update it without reading
    Silver again.

    `partials` maps Silver rows (per source) to partial rows: the key columns and columns that
    several rows of one key can be combined from (counts, exact sums, minima, maxima, sorted
    sets of distinct members). `combine` folds any number of partial rows per key into one;
    `finish` derives the public columns from one partial row per key and keeps the partials
    as `_` columns. A batch then finishes combine(stored rows' partials + the batch's partials),
    and a recomputation finishes combine(partials of all of Silver): the same functions, so the
    two agree exactly.
    """

    partials: Callable[[Mapping[str, DataFrame]], DataFrame]
    combine: Callable[[DataFrame], DataFrame]
    finish: Callable[[DataFrame], DataFrame]

    def build(self, silver: Mapping[str, DataFrame]) -> DataFrame:
        return self.finish(self.combine(self.partials(silver)))


@dataclass(frozen=True)
class GoldTable:
    """One Gold table: its key, its Silver sources and how to build it.

    `sources` maps a Silver entity to the key columns of a Silver row, plus `_date`: the row's
    anchor date. A touched key needs the Silver partitions `_date + span[0] .. _date + span[1]`.
    `prune` names the key column the MERGE can prune target files by; `hour`, the key column
    that holds the hour of the rows' event time, so the rebuild reads only the touched hours.
    """

    name: str
    keys: tuple[str, ...]
    sources: Mapping[str, Callable[[], dict[str, Column]]]
    build: Callable[[Mapping[str, DataFrame]], DataFrame]
    span: tuple[int, int] = (0, 0)
    partition_by: tuple[str, ...] = ()
    prune: str | None = None
    rolling: bool = False  # demand's 7- and 28-day averages: see with_rolling, refresh_rolling
    hour: str | None = None  # a key column holding the rows' event hour (of the key's `date`)
    extend: Extension | None = None  # only for a table with one Silver source
    additive: Additive | None = None  # its rows are partial aggregates: see Additive

    def __post_init__(self) -> None:
        if self.extend is not None and len(self.sources) != 1:
            raise ValueError(f"{self.name}: an extension needs exactly one Silver source")


def _avg(column: str, scale: int = 4) -> Column:
    """Average over an exact decimal sum, rounded once: the same value in any row order."""
    return F.round(F.avg(F.col(column).cast(LEVEL)), scale).cast("double")


def _seconds_between(start: Column, end: Column) -> Column:
    return (F.unix_micros(end) - F.unix_micros(start)) / F.lit(1_000_000.0)


# demand_by_zone_hour ------------------------------------------------------------------------

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


TOTAL = "decimal(28,2)"  # a sum of money
DISTANCE = "decimal(28,3)"  # a sum of kilometres


def _members(column: str) -> Column:
    """The distinct values of `column` in a group, sorted: a set that partial rows can merge."""
    return F.array_sort(F.collect_set(F.col(column)))


def _merged(column: str) -> Column:
    """The union of the member sets of a key's partial rows, sorted."""
    return F.array_sort(F.array_distinct(F.flatten(F.collect_list(F.col(column)))))


def _ratio(total: str, count: str) -> Column:
    """An exact sum over its count, rounded once (null where there is nothing to average)."""
    return F.when(F.col(count) > 0, F.round(F.col(total) / F.col(count), 4).cast("double"))


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
            _members("user_id").alias("_users"),
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
            _members("vehicle_id").alias("_vehicles"),
            F.sum(F.col("battery_level").cast(LEVEL)).cast(SUM).alias("_battery_sum"),
            F.count("battery_level").alias("_battery_n"),
            F.max("event_timestamp").alias("_seen"),
        )
    )
    return bookings.unionByName(supply, allowMissingColumns=True)


def _demand_combine(partials: DataFrame) -> DataFrame:
    return partials.groupBy(*DEMAND_KEYS).agg(
        F.coalesce(F.sum("booking_count"), F.lit(0)).cast("long").alias("booking_count"),
        _merged("_users").alias("_users"),
        F.sum("_trip_sum").cast(SUM).alias("_trip_sum"),
        F.coalesce(F.sum("_trip_n"), F.lit(0)).cast("long").alias("_trip_n"),
        F.sum("total_revenue").cast(TOTAL).alias("total_revenue"),
        F.max("_booked").alias("_booked"),
        _merged("_vehicles").alias("_vehicles"),
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
        _ratio("_trip_sum", "_trip_n").alias("avg_trip_duration"),
        F.coalesce("total_revenue", F.lit(0).cast(TOTAL)).alias("total_revenue"),
        vehicles.cast("long").alias("available_vehicles"),
        _ratio("_battery_sum", "_battery_n").alias("avg_battery_level"),
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


# vehicle_utilization_daily, revenue_by_vehicle_type_daily -----------------------------------


def _booking_keys(*names: str) -> Callable[[], dict[str, Column]]:
    return lambda: {n: F.col(n) for n in names} | {"_date": F.col("date")}


def _in_trip() -> Column:
    return F.col("status").isin(*IN_TRIP)


UTILIZATION_KEYS = ("vehicle_id", "date")


def _utilization_partials(silver: Mapping[str, DataFrame]) -> DataFrame:
    """Per vehicle and day, from bookings: trips (completed or in progress), cancellations,
    minutes in use, distance, revenue."""
    trip = _in_trip()
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
            _members("user_id").alias("_users"),
            _members("vehicle_id").alias("_vehicles"),
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
        _merged("_users").alias("_users"),
        _merged("_vehicles").alias("_vehicles"),
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


# battery_health_metrics_weekly ----------------------------------------------------------------


def _week_start(timestamp: Column) -> Column:
    return F.date_trunc("week", timestamp).cast("date")  # Monday, as ISO weeks start


def _battery_keys() -> dict[str, Column]:
    week = _week_start(F.col("event_timestamp"))
    return {"vehicle_id": F.col("vehicle_id"), "week_start": week, "_date": week}


BATTERY_KEYS = ("vehicle_id", "week_start")
SUM = "decimal(22,4)"  # a week's sum of battery levels, exact
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


# customer_journey_events ----------------------------------------------------------------------


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
        _seconds_between(F.col("session_start"), F.col("_booked_at")).alias("time_to_book_seconds"),
        F.col("session_end").alias("last_event_time"),
        "_ordered",
        "_booked_at",
    )


JOURNEYS = Additive(_journey_partials, _journey_combine, _journey_finish)


TABLES: dict[str, GoldTable] = {
    t.name: t
    for t in (
        GoldTable(
            "demand_by_zone_hour",
            DEMAND_KEYS,
            {"bookings": _booking_zone_keys, "telemetry": _telemetry_zone_keys},
            DEMAND.build,
            partition_by=("date",),
            prune="date",
            rolling=True,
            hour="hour",
            additive=DEMAND,
        ),
        GoldTable(
            "vehicle_utilization_daily",
            ("vehicle_id", "date"),
            {"bookings": _booking_keys("vehicle_id", "date")},
            UTILIZATION.build,
            partition_by=("date",),
            prune="date",
            additive=UTILIZATION,
        ),
        GoldTable(
            "revenue_by_vehicle_type_daily",
            ("vehicle_type", "date"),
            {"bookings": _booking_keys("vehicle_type", "date")},
            REVENUE.build,
            prune="date",
            additive=REVENUE,
        ),
        GoldTable(
            "battery_health_metrics_weekly",
            ("vehicle_id", "week_start"),
            {"telemetry": _battery_keys},
            battery_health_metrics_weekly,
            span=(0, 6),
            partition_by=("week_start",),
            prune="week_start",
            extend=Extension(_BATTERY_SILVER, _grow_battery),
        ),
        GoldTable(
            "customer_journey_events",
            ("session_id",),
            {"user_events": _session_keys},
            JOURNEYS.build,
            span=(-1, 1),  # a session may cross midnight; sessions are shorter than a day
            additive=JOURNEYS,
        ),
    )
}


def recompute(table: GoldTable, silver: Mapping[str, DataFrame]) -> DataFrame:
    """The whole table from the given Silver frames: what Gold must equal."""
    rows = table.build(silver)
    return with_rolling(rows) if table.rolling else rows
