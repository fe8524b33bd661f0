"""`lakehouse maintain`: keep the tables fast and within their retention, beside live streams.

Per table, in one pass:
- **retention**: rows of partitions older than the layer's retention are deleted (whole
  partitions where the table is partitioned by date: a metadata-only commit); `--dry-run` says
  what would go and changes nothing;
- **OPTIMIZE** of the recent partitions, Z-ordered by the columns readers filter by;
- **checkpoint** of the Delta log (delta-rs), so readers replay few JSON commits;
- **VACUUM** of files unreferenced for longer than `vacuum_hours` (at least Delta's 7 days).

Compaction commits with `dataChange=false` and never conflicts with appends; with a MERGE or
DELETE it can, and such a conflict is retried with backoff. Every action is reported (files and
bytes before and after, rows deleted, seconds) and appended to `audit/maintenance`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streaming.audit import actor
from streaming.catalog import AUDIT_MAINTENANCE, TableRef, all_tables, append_rows
from streaming.commits import retrying
from streaming.errors import ConfigError
from streaming.s3.storage import delta_rs_uri, storage_options

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

    from streaming.config import Config

log = logging.getLogger(__name__)
# Layers whose tables hold raw Kafka payloads.
RAW_PAYLOADS = ("bronze", "quarantine")
# The columns dashboards and lookups filter by (partition columns are pruned anyway).
ZORDER: dict[str, tuple[str, ...]] = {
    "silver.telemetry": ("vehicle_id", "event_timestamp"),
    "silver.bookings": ("vehicle_id", "event_timestamp"),
    "silver.vehicle_state": ("zone_id",),
    "gold.demand_by_zone_hour": ("zone_id", "hour"),
    "gold.vehicle_utilization_daily": ("vehicle_id",),
    "gold.battery_health_metrics_weekly": ("vehicle_id",),
    "gold.customer_journey_events": ("session_id",),
}


@dataclass(frozen=True)
class Action:
    """One thing done (or, in a dry run, that would be done) to one table."""

    table: str
    action: str  # retention, optimize, checkpoint, vacuum
    at: datetime
    seconds: float
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    rows_deleted: int
    version: int
    detail: str
    dry_run: bool

    def line(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        rows = f", {verb} {self.rows_deleted} rows" if self.action == "retention" else ""
        return (
            f"{self.table} {self.action}: files {self.files_before} -> {self.files_after}, "
            f"{self.bytes_before / 2**20:.1f} -> {self.bytes_after / 2**20:.1f} MiB{rows} "
            f"({self.seconds:.1f} s, v{self.version}){' ' + self.detail if self.detail else ''}"
        )


def retention_days(config: Config, silver: dict[str, int], ref: TableRef) -> int | None:
    """The layer's retention; Silver's from its contract (`silver`: entity -> days)."""
    if ref.layer == "silver":
        return silver.get(ref.name)  # vehicle_state (latest state per vehicle): none expires
    return config.maintain.retention_days.get(ref.layer)


def tables_named(config: Config, names: list[str] | None) -> list[TableRef]:
    if not names:
        return all_tables(config)
    refs = []
    for name in names:
        matched = [t for t in all_tables(config) if _matches(str(t), name)]
        if not matched:
            raise ConfigError(f"no table matches {name!r}", hint="e.g. gold.* or silver.telemetry")
        refs += [t for t in matched if t not in refs]
    return refs


def _matches(table: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(table, pattern)


class Maintainer:
    def __init__(self, spark: SparkSession, config: Config, dry_run: bool = False) -> None:
        self.spark = spark
        self.config = config
        self.dry_run = dry_run
        self.today = datetime.now(UTC).date()
        from streaming.contracts import load_contracts
        from streaming.schemas import load_schemas

        contracts = load_contracts(config.contracts_dir, load_schemas(config.schemas_dir))
        self.silver_days = {e: c.retention_days for e, c in contracts.items()}

    def table(self, ref: TableRef, vacuum: bool = True) -> list[Action]:
        """Every action on one table (a table not written yet: none)."""
        if self._files(ref) is None:
            return []
        actions = []
        days = retention_days(self.config, self.silver_days, ref)
        if days is not None:
            actions.append(self._retention(ref, days))
        if not self.dry_run:
            actions.append(self._optimize(ref))
            actions.append(self._checkpoint(ref))
            if vacuum:
                actions.append(self._vacuum(ref))
        return actions

    def _retention(self, ref: TableRef, days: int) -> Action:
        from delta.tables import DeltaTable

        cutoff = self.today - timedelta(days=days)
        expired = _date_expression(self._partitions(ref), self._columns(ref))
        if expired is None:
            return self._action(ref, "retention", lambda: 0, f"no date column: kept ({days} days)")
        condition = f"{expired} < DATE'{cutoff.isoformat()}'"
        rows = self.spark.read.format("delta").load(ref.path(self.config)).where(condition).count()
        detail = f"older than {cutoff} ({days} days)"
        if self.dry_run or not rows:
            return self._action(ref, "retention", lambda: rows, detail)

        def delete() -> int:
            DeltaTable.forPath(self.spark, ref.path(self.config)).delete(condition)
            return rows

        return self._action(ref, "retention", delete, detail)

    def _optimize(self, ref: TableRef) -> Action:
        from delta.tables import DeltaTable

        zorder = ZORDER.get(str(ref), ())
        recent = _date_expression(self._partitions(ref), self._partitions(ref))
        since = self.today - timedelta(days=self.config.maintain.recent_days)

        def optimize() -> int:
            builder = DeltaTable.forPath(self.spark, ref.path(self.config)).optimize()
            if recent is not None:  # only partitions: older ones were compacted before
                builder = builder.where(f"{recent} >= DATE'{since.isoformat()}'")
            (builder.executeZOrderBy(*zorder) if zorder else builder.executeCompaction()).collect()
            return 0

        scope = f"partitions since {since}" if recent is not None else "whole table"
        by = f", z-order by {', '.join(zorder)}" if zorder else ""
        return self._action(ref, "optimize", optimize, scope + by)

    def _checkpoint(self, ref: TableRef) -> Action:
        def checkpoint() -> int:
            self._delta_rs(ref).create_checkpoint()
            return 0

        return self._action(ref, "checkpoint", checkpoint, "")

    def _vacuum(self, ref: TableRef) -> Action:
        from delta.tables import DeltaTable

        hours = self.config.maintain.vacuum_hours

        def vacuum() -> int:
            DeltaTable.forPath(self.spark, ref.path(self.config)).vacuum(hours)
            return 0

        return self._action(ref, "vacuum", vacuum, f"files unreferenced for {hours} h")

    def _action(self, ref: TableRef, action: str, work: Callable[[], int], detail: str) -> Action:
        before = self._files(ref) or (0, 0)
        started = time.monotonic()
        at = datetime.now(UTC)
        rows = work() if self.dry_run else retrying(work, f"{action} of {ref}")
        after = self._files(ref) or (0, 0)
        return Action(str(ref), action, at, round(time.monotonic() - started, 2), before[0],
                      after[0], before[1], after[1], rows, self._delta_rs(ref).version(), detail,
                      self.dry_run)  # fmt: skip

    def _delta_rs(self, ref: TableRef) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(
            delta_rs_uri(ref.path(self.config)), storage_options=storage_options(self.config)
        )

    def _files(self, ref: TableRef) -> tuple[int, int] | None:
        """(active files, bytes) of the table's current version; None if it does not exist."""
        from deltalake.exceptions import TableNotFoundError

        try:
            actions = self._delta_rs(ref).get_add_actions(flatten=True)
        except TableNotFoundError:
            return None
        sizes = actions.column("size_bytes").to_pylist() if actions.num_rows else []
        return len(sizes), int(sum(sizes))

    def _partitions(self, ref: TableRef) -> list[str]:
        return list(self._delta_rs(ref).metadata().partition_columns)

    def _columns(self, ref: TableRef) -> list[str]:
        return [f.name for f in self._delta_rs(ref).schema().fields]


def _date_expression(partitions: list[str], columns: list[str]) -> str | None:
    """A SQL date of each row from `columns` (a date, a week's start, year/month/day partitions
    or the Kafka timestamp)."""
    for column in ("date", "week_start"):
        if column in columns:
            return f"`{column}`"
    if {"year", "month", "day"} <= set(partitions):
        return "make_date(`year`, `month`, `day`)"
    if "_kafka_timestamp" in columns:  # quarantine: Bronze's clock, so it expires with Bronze
        return "to_date(`_kafka_timestamp`)"
    return None


def maintenance_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("table", pa.string()),
            ("action", pa.string()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("date", pa.date32()),
            ("seconds", pa.float64()),
            ("files_before", pa.int64()),
            ("files_after", pa.int64()),
            ("bytes_before", pa.int64()),
            ("bytes_after", pa.int64()),
            ("rows_deleted", pa.int64()),
            ("version", pa.int64()),
            ("detail", pa.string()),
            ("dry_run", pa.bool_()),
            ("by", pa.string()),  # user@host pid
        ]
    )


def record(config: Config, actions: list[Action]) -> None:
    """Append the actions to `audit/maintenance` (what was done, when, to what)."""
    if actions:
        by = actor()
        rows = [{**asdict(a), "date": a.at.date(), "by": by} for a in actions]
        append_rows(config, TableRef(*AUDIT_MAINTENANCE), rows, maintenance_schema())


def maintain(
    spark: SparkSession, config: Config, names: list[str] | None, dry_run: bool, vacuum: bool
) -> list[Action]:
    """One pass over the tables; every action logged as it ends."""
    from contextlib import nullcontext

    from streaming.spark import row_reader

    maintainer = Maintainer(spark, config, dry_run)
    actions: list[Action] = []
    for ref in tables_named(config, names):
        if ref == TableRef(*AUDIT_MAINTENANCE):
            continue  # its own record: kept by `record`, never rewritten under it
        # A compaction reads every row: raw payloads (some of ten megabytes) row by row.
        with row_reader(spark) if ref.layer in RAW_PAYLOADS else nullcontext():
            for action in maintainer.table(ref, vacuum):
                log.info(action.line())
                actions.append(action)
    if not dry_run:
        record(config, actions)
    return actions
