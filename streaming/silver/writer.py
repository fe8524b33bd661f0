"""The Silver foreachBatch writer: one micro-batch of Bronze rows into every Silver output.

Write order matters for exactly-once: the duplicates table, quarantine and vehicle_state are
written before Silver, and all of them carry (txnAppId, txnVersion = batch id). Duplicate
detection reads Silver, so on a replay after a partial commit it sees the same Silver as the
first attempt until the Silver write itself has committed, and after that every write of the
batch is skipped. (A replay would then find every row of the batch in Silver already, with no
fresh row left to bring vehicle_state up to date: hence vehicle_state before Silver. Only a
newer event replaces a vehicle's row there, so doing it again changes nothing.)

Silver receives an append, not an insert-only MERGE: the batch has already been anti-joined
with the Silver rows its keys can meet (to record each duplicate), and that anti-join is what
such a MERGE would compute a second time. Each Silver table has one writer, this query, so the
Silver it read is the Silver it appends to.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming.config import Config
from streaming.contracts import Contract
from streaming.errors import QueryError
from streaming.silver import transform, watermarks
from streaming.tables import idempotent

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from streaming.geofence import Geofences

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
        zones: Geofences,
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
        self._held: list[DataFrame] = []

    def _keep(self, frame: DataFrame) -> DataFrame:
        """`frame` computed once and held for this batch only, its lineage cut.

        A local checkpoint rather than a cache: every later plan over it then starts from its
        rows instead of carrying (and re-analysing, and matching against the cache) the whole
        decode and validation plan. Released when the batch ends.
        """
        held = frame.localCheckpoint()
        self._held.append(held)
        return held

    def _release(self) -> None:
        while self._held:
            # The checkpoint's blocks, freed now rather than whenever the JVM collects them.
            self._held.pop()._jdf.logicalPlan().rdd().unpersist(False)

    def __call__(self, bronze_batch: DataFrame, batch_id: int) -> None:
        spark = bronze_batch.sparkSession
        rows = self._keep(transform.validate(bronze_batch, self.contract))
        try:
            scan = _scan(rows, self.contract)
            if scan.fatal:
                self._fail_on_fatal(rows, batch_id)
            watermark = self._advance_watermark(spark, scan.newest, batch_id)
            rows = transform.mark_late(rows, watermark)
            counts = self._write(spark, rows, scan, watermark, batch_id)
            self._record_watermark(spark, watermark, batch_id)
            if self.observer is not None:
                self.observer(self.query_name, counts)
        finally:
            self._release()

    def _write(
        self,
        spark: SparkSession,
        rows: DataFrame,
        scan: Scan,
        watermark: datetime | None,
        batch_id: int,
    ) -> dict[str, Any]:
        bounds = scan.bounds(watermark)
        valid = self._keep(
            transform.enrich(
                rows.where(F.col("_rejection").isNull()), self.contract, self.zones, self.pads
            )
        )
        existing = self._silver(spark).where(bounds.condition()) if bounds else None
        # Materialised once, lineage cut: the writes below must neither recompute the decode,
        # geofence and dedup joins nor see Silver after its own commit.
        marked = self._keep(transform.mark_duplicates(valid, self.contract, existing))
        fresh, duplicates = transform.split_duplicates(marked)
        counts = scan.counts(*_fresh_and_duplicate(marked))
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
                if self.contract.entity == "telemetry":  # before Silver: see the module doc
                    self._update_vehicle_state(spark, fresh)
                # A new optional field in the contract becomes a new Silver column.
                _append(transform.silver_rows(fresh, batch_id), self.paths.silver, evolve=True)
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
            self._watermark = watermarks.stored(spark, self.paths.watermarks, batch_id)
        if newest is None:
            return self._watermark
        candidate = newest - timedelta(seconds=self.contract.watermark_seconds)
        return max(candidate, self._watermark) if self._watermark else candidate

    def _record_watermark(
        self, spark: SparkSession, watermark: datetime | None, batch_id: int
    ) -> None:
        if watermark is not None:
            watermarks.record(spark, self.paths.watermarks, batch_id, watermark)
        self._watermark, self._watermark_batch = watermark, batch_id

    def _silver(self, spark: SparkSession) -> DataFrame:
        from delta.tables import DeltaTable

        return DeltaTable.forPath(spark, self.paths.silver).toDF()

    def _update_vehicle_state(self, spark: SparkSession, fresh: DataFrame) -> None:
        """The stored state and the batch's telemetry, newest per vehicle, as the new table.

        A rewrite rather than a MERGE: with the whole fleet, each batch touches nearly every
        vehicle, so a MERGE rewrote every file as well, after a join to find them. This query is
        the table's one writer, so the state it reads is the state it replaces.
        """
        state = spark.read.format("delta").load(self.paths.vehicle_state)
        latest = transform.latest_per_vehicle(state.unionByName(transform.state_rows(fresh)))
        latest.write.format("delta").mode("overwrite").save(self.paths.vehicle_state)

    def _idempotent(self, spark: SparkSession, batch_id: int) -> AbstractContextManager[None]:
        return idempotent(spark, self.query_name, batch_id)


@dataclass(frozen=True)
class Bounds:
    """Silver's date partitions and the event-time floor that a batch's good rows can match."""

    dates: tuple[date, ...]
    since: datetime

    def condition(self) -> Any:
        return F.col("date").isin(list(self.dates)) & (
            F.col("event_timestamp") >= F.lit(self.since)
        )


@dataclass(frozen=True)
class Scan:
    """What one pass over a validated batch tells before anything is written."""

    newest: datetime | None  # the newest good event time
    oldest: datetime | None  # the oldest good event time
    dates: tuple[date, ...]  # the event dates of good rows
    fatal: int  # rows that failed a `fail` expectation
    rows: int  # every row of the batch
    stages: dict[str, int]  # rejected rows per stage (decode, schema, rule), before `late`
    rules: dict[str, int]  # failures per expectation id (quarantined or warned)

    def bounds(self, watermark: datetime | None) -> Bounds | None:
        """Where the good rows can sit in Silver once late ones (older than watermark) are out."""
        if self.oldest is None:
            return None
        if watermark is None or self.oldest >= watermark:
            return Bounds(self.dates, self.oldest)
        dates = tuple(d for d in self.dates if d >= watermark.date())
        return Bounds(dates, watermark) if dates else None

    def counts(self, valid: int, duplicate: int) -> dict[str, Any]:
        """The batch's books: every good row that is neither fresh nor a duplicate was late."""
        good = self.rows - sum(self.stages.values())
        stages = {**self.stages, "late": good - valid - duplicate}
        return {
            "bronze": self.rows,
            "valid": valid,
            "duplicate": duplicate,
            "stages": {stage: n for stage, n in stages.items() if n},
            "rules": self.rules,
        }


_STAGES = ("decode", "schema", "rule")


def _scan(rows: DataFrame, contract: Contract) -> Scan:
    """Event-time bounds, `fail` hits and the tallies per stage and rule: one job."""
    rejection = F.col("_rejection")
    good = rejection.isNull()
    failed = F.when(rejection.stage == "rule", rejection.rule_ids)
    tallied = {
        e.id: F.col("_warnings") if e.action == "warn" else failed
        for e in contract.expectations
        if e.action in ("warn", "quarantine")
    }
    row = rows.agg(
        F.max(F.when(good, F.col("event_timestamp"))),
        F.min(F.when(good, F.col("event_timestamp"))),
        F.collect_set(F.when(good, F.col("date"))),
        F.coalesce(F.sum(F.size("_fatal")), F.lit(0)),
        F.count(F.lit(1)),
        *[F.count(F.when(rejection.stage == stage, 1)) for stage in _STAGES],
        *[F.count(F.when(F.array_contains(ids, rule_id), 1)) for rule_id, ids in tallied.items()],
    ).first()
    assert row is not None  # a global aggregate has one row, also over no rows
    stages = dict(zip(_STAGES, row[5 : 5 + len(_STAGES)], strict=True))
    rules = dict(zip(tallied, row[5 + len(_STAGES) :], strict=True))
    return Scan(
        newest=row[0],
        oldest=row[1],
        dates=tuple(sorted(row[2])),
        fatal=int(row[3]),
        rows=int(row[4]),
        stages={stage: n for stage, n in stages.items() if n},
        rules={rule_id: n for rule_id, n in rules.items() if n},
    )


def _fresh_and_duplicate(marked: DataFrame) -> tuple[int, int]:
    row = marked.agg(
        F.count(F.when(F.col(transform.DUPLICATE_OF).isNull(), 1)),
        F.count(transform.DUPLICATE_OF),
    ).first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _append(frame: DataFrame, path: str, evolve: bool = False) -> None:
    writer = frame.write.format("delta").mode("append")
    if evolve:
        writer = writer.option("mergeSchema", "true")
    writer.save(path)
