"""The Silver foreachBatch writer: one micro-batch of Bronze rows into every Silver output.

Write order matters for exactly-once: the duplicates table and quarantine are written before the
Silver MERGE, and all of them carry (txnAppId, txnVersion = batch id). Duplicate detection reads
Silver, so on a replay after a partial commit it sees the same Silver as the first attempt until
the Silver MERGE itself has committed, and after that every write of the batch is skipped.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming.config import Config
from streaming.contracts import Contract
from streaming.errors import QueryError
from streaming.silver import transform
from streaming.tables import idempotent

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SilverPaths:
    silver: str
    quarantine: str
    duplicates: str
    watermarks: str
    vehicle_state: str

    @classmethod
    def of(cls, config: Config, entity: str) -> SilverPaths:
        return cls(
            silver=config.table_path("silver", entity),
            quarantine=config.table_path("quarantine", entity),
            duplicates=config.table_path("silver", f"_duplicates/{entity}"),
            watermarks=config.table_path("silver", f"_watermarks/{entity}"),
            vehicle_state=config.table_path("silver", "vehicle_state"),
        )


class SilverWriter:
    """foreachBatch callable for one entity; dependencies are injected, nothing global."""

    def __init__(
        self,
        contract: Contract,
        paths: SilverPaths,
        zones: DataFrame,
        pads: DataFrame,
        query_name: str,
        observer: Any = None,
    ) -> None:
        self.contract = contract
        self.paths = paths
        self.zones = zones
        self.pads = pads
        self.query_name = query_name
        self.observer = observer
        self._watermark: datetime | None = None
        self._watermark_batch: int | None = None
        self._cached: list[DataFrame] = []

    def _keep(self, frame: DataFrame) -> DataFrame:
        """Persist a frame for this batch only (unpersisted when the batch ends)."""
        self._cached.append(frame.persist())
        return frame

    def __call__(self, bronze_batch: DataFrame, batch_id: int) -> None:
        spark = bronze_batch.sparkSession
        rows = self._keep(transform.validate(bronze_batch, self.contract))
        try:
            scan = _scan(rows)
            if scan.fatal:
                self._fail_on_fatal(rows, batch_id)
            watermark = self._advance_watermark(spark, scan.newest, batch_id)
            rows = self._keep(transform.mark_late(rows, watermark))
            counts = self._write(spark, rows, scan.bounds(watermark), batch_id)
            self._record_watermark(spark, watermark, batch_id)
            if self.observer is not None:
                self.observer(self.query_name, counts)
        finally:
            while self._cached:
                self._cached.pop().unpersist()

    def _write(
        self, spark: SparkSession, rows: DataFrame, bounds: Bounds | None, batch_id: int
    ) -> dict[str, Any]:
        counts = _counts(rows)
        valid = self._keep(
            transform.enrich(
                rows.where(F.col("_rejection").isNull()), self.contract, self.zones, self.pads
            )
        )
        existing = self._silver(spark).where(bounds.condition("")) if bounds else None
        # Materialised once, lineage cut: MERGE re-plans its source and must neither recompute
        # the decode, geofence and dedup joins nor see Silver after its own commit.
        marked = transform.mark_duplicates(valid, self.contract, existing).localCheckpoint()
        fresh, duplicates = transform.split_duplicates(marked)
        counts["valid"], counts["duplicate"] = _fresh_and_duplicate(marked)
        with self._idempotent(spark, batch_id):
            if counts["duplicate"]:
                _append(
                    duplicates.withColumn("_batch_id", F.lit(batch_id).cast("long")),
                    self.paths.duplicates,
                )
            if counts["stages"]:
                rejected = rows.where(F.col("_rejection").isNotNull())
                _append(transform.quarantine_rows(rejected, batch_id), self.paths.quarantine)
            if counts["valid"] and bounds:
                self._merge_silver(spark, transform.silver_rows(fresh, batch_id), bounds)
                if self.contract.entity == "telemetry":
                    self._merge_vehicle_state(spark, transform.latest_per_vehicle(fresh))
        return counts

    def _fail_on_fatal(self, rows: DataFrame, batch_id: int) -> None:
        fatal = rows.where(F.size("_fatal") > 0).select(F.explode("_fatal")).distinct().collect()
        raise QueryError(
            f"expectation(s) with action 'fail' not met: {sorted(r[0] for r in fatal)}",
            query=self.query_name,
            batch_id=batch_id,
            hint=f"fix the data or the contract {self.contract.source}; the batch will replay",
        )

    def _advance_watermark(
        self, spark: SparkSession, newest: datetime | None, batch_id: int
    ) -> datetime | None:
        """max(previous watermark, newest good event time - delay), stable under replay."""
        if self._watermark_batch is None or self._watermark_batch != batch_id - 1:
            self._watermark = _stored_watermark(spark, self.paths.watermarks, batch_id)
        if newest is None:
            return self._watermark
        candidate = newest - timedelta(seconds=self.contract.watermark_seconds)
        return max(candidate, self._watermark) if self._watermark else candidate

    def _record_watermark(
        self, spark: SparkSession, watermark: datetime | None, batch_id: int
    ) -> None:
        if watermark is not None:
            frame = spark.createDataFrame(
                [(batch_id, watermark)], "batch_id LONG, watermark TIMESTAMP"
            )
            with self._idempotent(spark, batch_id):
                _append(frame, self.paths.watermarks)
        self._watermark, self._watermark_batch = watermark, batch_id

    def _silver(self, spark: SparkSession) -> DataFrame:
        from delta.tables import DeltaTable

        return DeltaTable.forPath(spark, self.paths.silver).toDF()

    def _merge_silver(self, spark: SparkSession, fresh: DataFrame, bounds: Bounds) -> None:
        from delta.tables import DeltaTable

        key = self.contract.dedup_keys[0]
        # Partition pruning (date) and file skipping (event time stats) keep the MERGE's scan
        # of Silver to the files this batch can touch.
        condition = reduce(
            lambda a, b: a & b,
            [F.col(f"t.{c}") == F.col(f"s.{c}") for c in key],
            bounds.condition("t."),
        )
        (
            DeltaTable.forPath(spark, self.paths.silver)
            .alias("t")
            .merge(fresh.alias("s"), condition)
            .whenNotMatchedInsertAll()
            .withSchemaEvolution()  # a new optional field in the contract becomes a new column
            .execute()
        )

    def _merge_vehicle_state(self, spark: SparkSession, latest: DataFrame) -> None:
        from delta.tables import DeltaTable

        (
            DeltaTable.forPath(spark, self.paths.vehicle_state)
            .alias("t")
            .merge(latest.alias("s"), F.col("t.vehicle_id") == F.col("s.vehicle_id"))
            .whenMatchedUpdateAll(condition=_newer())
            .whenNotMatchedInsertAll()
            .execute()
        )

    def _idempotent(self, spark: SparkSession, batch_id: int) -> AbstractContextManager[None]:
        return idempotent(spark, self.query_name, batch_id)


@dataclass(frozen=True)
class Bounds:
    """Silver's date partitions and the event-time floor that a batch's good rows can match."""

    dates: tuple[date, ...]
    since: datetime

    def condition(self, prefix: str) -> Any:
        return F.col(f"{prefix}date").isin(list(self.dates)) & (
            F.col(f"{prefix}event_timestamp") >= F.lit(self.since)
        )


@dataclass(frozen=True)
class Scan:
    """What one pass over a validated batch tells before anything is written."""

    newest: datetime | None  # the newest good event time
    oldest: datetime | None  # the oldest good event time
    dates: tuple[date, ...]  # the event dates of good rows
    fatal: int  # rows that failed a `fail` expectation

    def bounds(self, watermark: datetime | None) -> Bounds | None:
        """Where the good rows can sit in Silver once late ones (older than watermark) are out."""
        if self.oldest is None:
            return None
        if watermark is None or self.oldest >= watermark:
            return Bounds(self.dates, self.oldest)
        dates = tuple(d for d in self.dates if d >= watermark.date())
        return Bounds(dates, watermark) if dates else None


def _scan(rows: DataFrame) -> Scan:
    good = F.col("_rejection").isNull()
    row = rows.agg(
        F.max(F.when(good, F.col("event_timestamp"))),
        F.min(F.when(good, F.col("event_timestamp"))),
        F.collect_set(F.when(good, F.col("date"))),
        F.coalesce(F.sum(F.size("_fatal")), F.lit(0)),
    ).first()
    if row is None:
        return Scan(None, None, (), 0)
    return Scan(row[0], row[1], tuple(sorted(row[2])), int(row[3]))


def _counts(rows: DataFrame) -> dict[str, Any]:
    """Rows per outcome stage and failures per rule (quarantine and warn), in one job."""
    stage = F.col("_rejection.stage")
    failed = F.when(stage == "rule", F.col("_rejection.rule_ids")).otherwise(
        F.array().cast("array<string>")
    )
    tallies = (
        rows.select(
            F.explode(
                F.concat(
                    F.array(F.concat(F.lit("stage:"), F.coalesce(stage, F.lit("")))),
                    F.transform(
                        F.concat(failed, F.col("_warnings")),
                        lambda rule: F.concat(F.lit("rule:"), rule),
                    ),
                )
            ).alias("tally")
        )
        .groupBy("tally")
        .count()
        .collect()
    )
    stages = {r["tally"][6:]: r["count"] for r in tallies if r["tally"].startswith("stage:")}
    return {
        "bronze": sum(stages.values()),
        "stages": {stage: n for stage, n in stages.items() if stage},
        "rules": {r["tally"][5:]: r["count"] for r in tallies if r["tally"].startswith("rule:")},
    }


def _fresh_and_duplicate(marked: DataFrame) -> tuple[int, int]:
    row = marked.agg(
        F.count(F.when(F.col(transform.DUPLICATE_OF).isNull(), 1)),
        F.count(transform.DUPLICATE_OF),
    ).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _newer() -> Any:
    """An older event arriving late never overwrites a newer state (Kafka order breaks ties)."""
    return (F.col("s.event_timestamp") > F.col("t.event_timestamp")) | (
        (F.col("s.event_timestamp") == F.col("t.event_timestamp"))
        & (
            F.struct("s._kafka_partition", "s._kafka_offset")
            > F.struct("t._kafka_partition", "t._kafka_offset")
        )
    )


def _append(frame: DataFrame, path: str) -> None:
    frame.write.format("delta").mode("append").save(path)


def _stored_watermark(spark: SparkSession, path: str, batch_id: int) -> datetime | None:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    row = (
        spark.read.format("delta")
        .load(path)
        .where(F.col("batch_id") < batch_id)
        .agg(F.max("watermark"))
        .first()
    )
    return row[0] if row else None
