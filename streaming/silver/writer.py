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
from datetime import datetime, timedelta
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
            newest, fatal = self._scan(rows)
            if fatal:
                self._fail_on_fatal(rows, batch_id)
            watermark = self._advance_watermark(spark, newest, batch_id)
            rows = self._keep(transform.mark_late(rows, watermark))
            counts = self._write(spark, rows, batch_id)
            self._record_watermark(spark, watermark, batch_id)
            if self.observer is not None:
                self.observer(self.query_name, counts)
        finally:
            while self._cached:
                self._cached.pop().unpersist()

    @staticmethod
    def _scan(rows: DataFrame) -> tuple[datetime | None, int]:
        """One pass: the newest good event time and how many rows failed a `fail` rule."""
        row = rows.agg(
            F.max(F.when(F.col("_rejection").isNull(), F.col("event_timestamp"))),
            F.coalesce(F.sum(F.size("_fatal")), F.lit(0)),
        ).first()
        return (row[0], int(row[1])) if row else (None, 0)

    def _write(self, spark: SparkSession, rows: DataFrame, batch_id: int) -> dict[str, Any]:
        counts = self._counts(rows)
        valid = self._keep(
            transform.enrich(
                rows.where(F.col("_rejection").isNull()), self.contract, self.zones, self.pads
            )
        )
        fresh, duplicates = transform.split_duplicates(
            valid, self.contract, self._recent(spark, valid)
        )
        # Materialised, lineage cut: MERGE re-plans its source and must neither recompute the
        # decode, geofence and dedup joins nor see Silver after its own commit.
        fresh, duplicates = fresh.localCheckpoint(), duplicates.localCheckpoint()
        counts["valid"], counts["duplicate"] = fresh.count(), duplicates.count()
        with self._idempotent(spark, batch_id):
            if counts["duplicate"]:
                _append(
                    duplicates.withColumn("_batch_id", F.lit(batch_id).cast("long")),
                    self.paths.duplicates,
                )
            if counts["stages"]:
                rejected = rows.where(F.col("_rejection").isNotNull())
                _append(transform.quarantine_rows(rejected, batch_id), self.paths.quarantine)
            if counts["valid"]:
                self._merge_silver(spark, transform.silver_rows(fresh, batch_id))
                if self.contract.entity == "telemetry":
                    self._merge_vehicle_state(spark, transform.latest_per_vehicle(fresh))
        return counts

    @staticmethod
    def _counts(rows: DataFrame) -> dict[str, Any]:
        stages = rows.groupBy(F.col("_rejection.stage").alias("stage")).count().collect()
        rules = (
            rows.select(
                F.explode(
                    F.concat(
                        F.when(
                            F.col("_rejection.stage") == "rule", F.col("_rejection.rule_ids")
                        ).otherwise(F.array().cast("array<string>")),
                        F.col("_warnings"),
                    )
                ).alias("rule")
            )
            .groupBy("rule")
            .count()
            .collect()
        )
        by_stage = {row["stage"]: row["count"] for row in stages}
        return {
            "bronze": sum(by_stage.values()),
            "stages": {k: v for k, v in by_stage.items() if k is not None},
            "rules": {row["rule"]: row["count"] for row in rules},
        }

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

    def _recent(self, spark: SparkSession, valid: DataFrame) -> DataFrame | None:
        """Silver rows that could share a key with this batch: same dates, not older than it."""
        from delta.tables import DeltaTable

        bounds = valid.agg(F.min("event_timestamp"), F.collect_set("date")).first()
        if bounds is None or bounds[0] is None:
            return None
        silver = DeltaTable.forPath(spark, self.paths.silver).toDF()
        return silver.where(
            F.col("date").isin(bounds[1]) & (F.col("event_timestamp") >= F.lit(bounds[0]))
        )

    def _merge_silver(self, spark: SparkSession, fresh: DataFrame) -> None:
        from delta.tables import DeltaTable

        key = self.contract.dedup_keys[0]
        bounds = fresh.agg(F.collect_set("date"), F.min("event_timestamp")).first()
        if bounds is None or not bounds[0]:
            return
        # Partition pruning (date) and file skipping (event time stats) keep the MERGE's scan
        # of Silver to the files this batch can touch.
        condition = reduce(
            lambda a, b: a & b,
            [F.col(f"t.{c}") == F.col(f"s.{c}") for c in key],
            F.col("t.date").isin(bounds[0]) & (F.col("t.event_timestamp") >= F.lit(bounds[1])),
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
