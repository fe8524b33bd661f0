"""The Gold layer of one micro-batch: the Silver rows a batch added, into one Gold table.

The batch's fresh Silver rows (of every Silver source of the table) arrive as changes of type
`insert`, stamped with the Silver version that holds them. The writer rebuilds exactly the keys
they touch from the Silver partitions those keys need, then MERGEs them: rebuilt rows replace or
insert, keys with no rows left are deleted. A table with an extension (battery health) first
extends the stored rows of the keys whose changes are all new, later inserts, and rebuilds only
the others. Demand's rolling averages also refresh the later rows whose 7- and 28-day windows
include a touched date. The MERGE goes through the pipeline's `CommitGuard`: a replayed batch
whose MERGE committed is skipped, and one whose MERGE did not is computed again from the same
Silver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from streaming.commits import CommitGuard
from streaming.gold.demand import refresh_rolling
from streaming.gold.table import SILVER_VERSION, UPDATED_AT, GoldTable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
_PRESENT = "_present"
_GROWN = "_grown"


@dataclass(frozen=True)
class GoldSummary:
    """What one batch did to one Gold table (one MERGE)."""

    upserted: int  # rows inserted or updated
    deleted: int  # keys left with no Silver row
    extended: int  # of the upserted: rows extended from their stored partials, not rebuilt
    newest: datetime | None  # the newest event time among the rows written
    seconds: float


class GoldWriter:
    """Gold for one table; paths and the guard are injected, nothing global."""

    def __init__(
        self,
        table: GoldTable,
        path: str,
        silver_paths: Mapping[str, str],
        guard: CommitGuard,
    ) -> None:
        self.table = table
        self.path = path
        self.silver_paths = dict(silver_paths)
        self.guard = guard

    def apply(self, changes: DataFrame, batch_id: int) -> GoldSummary | None:
        """MERGE the keys `changes` touch; their summary, or None when nothing changed."""
        if self.guard.committed(self.path, batch_id) is not None:
            return None
        started = time.monotonic()
        spark = changes.sparkSession
        keys = list(self.table.keys)
        parts = []
        version = None
        if self.table.extend is not None:
            changes = changes.localCheckpoint()
            version = changes.agg(F.max("_commit_version")).first()[0]  # type: ignore[index]
            if version is None:
                return None
            grown, changes = self._extend(spark, changes, version)
            parts.append(_present(grown).withColumn(_GROWN, F.lit(True)))
        touched = changes.select(*keys, "_date").distinct().localCheckpoint()
        # One pass: the anchor dates and, for an hourly table, the first and last touched hour.
        hours = _hour_starts(self.table.hour) if self.table.hour else []
        scope = touched.agg(F.collect_set("_date"), *hours).first()
        assert scope is not None  # a global aggregate has one row, also over no rows
        anchors = scope[0]
        if anchors:
            window = _within_hours(scope[1], scope[2]) if hours else None
            touched_keys = touched.select(*keys).distinct()
            dates = _dates(anchors, self.table.span)
            rows = self._rebuild(spark, touched_keys, dates, window, version)
            parts.append(_merge_plan(rows, touched_keys, keys).withColumn(_GROWN, F.lit(False)))
        if not parts:
            return None
        plan = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), parts)
        if version is not None:
            plan = plan.withColumn(SILVER_VERSION, F.lit(version).cast("long"))
        return self._commit(plan, batch_id, started)

    def add(self, fresh: Mapping[str, DataFrame], batch_id: int) -> GoldSummary | None:
        """An additive table: the batch's partial aggregates combined with the stored rows of
        the keys they touch, MERGEd. Reads no Silver (and, for demand, only the Gold rows that
        the touched keys' rolling windows span)."""
        additive = self.table.additive
        assert additive is not None
        if self.guard.committed(self.path, batch_id) is not None:
            return None
        started = time.monotonic()
        spark = next(iter(fresh.values())).sparkSession
        keys = list(self.table.keys)
        sources = {
            entity: fresh[entity] if entity in fresh else self._no_rows(spark, entity)
            for entity in self.table.sources
        }
        new = additive.partials(sources).localCheckpoint()
        touched = new.select(*keys).distinct().localCheckpoint()
        gold = spark.read.format("delta").load(self.path).drop(UPDATED_AT)
        stored = gold
        if self.table.prune:  # only the partitions of the touched keys
            values = [r[0] for r in touched.select(self.table.prune).distinct().collect()]
            stored = stored.where(F.col(self.table.prune).isin(values))
        stored = stored.join(F.broadcast(touched), keys, "left_semi").select(*new.columns)
        rows = additive.finish(additive.combine(stored.unionByName(new)))
        if self.table.rolling:
            rows = refresh_rolling(rows, touched, gold)
        plan = _present(rows).withColumn(_GROWN, F.lit(False))
        return self._commit(plan, batch_id, started)

    def _no_rows(self, spark: SparkSession, entity: str) -> DataFrame:
        return spark.read.format("delta").load(self.silver_paths[entity]).limit(0)

    def _commit(self, plan: DataFrame, batch_id: int, started: float) -> GoldSummary | None:
        """MERGE the plan (one commit, through the guard); its summary."""
        spark = plan.sparkSession
        plan = plan.localCheckpoint()
        prune = F.collect_set(self.table.prune) if self.table.prune else F.lit(None)
        stats = plan.agg(
            F.count(F.when(F.col(_PRESENT), 1)).alias("upserted"),
            F.count(F.when(~F.col(_PRESENT), 1)).alias("deleted"),
            F.count(F.when(F.col(_GROWN), 1)).alias("extended"),
            F.max("last_event_time").alias("newest"),
            prune.alias("prune"),
        ).first()
        assert stats is not None
        if not stats["upserted"] and not stats["deleted"]:
            return None
        self.guard.write(self.path, batch_id, lambda: self._merge(spark, plan, stats["prune"]))
        return GoldSummary(
            upserted=stats["upserted"],
            deleted=stats["deleted"],
            extended=stats["extended"],
            newest=stats["newest"],
            seconds=time.monotonic() - started,
        )

    def _extend(
        self, spark: SparkSession, changes: DataFrame, version: int
    ) -> tuple[DataFrame, DataFrame]:
        """(the rows of the keys this batch extends, the changes of the keys to rebuild).

        A key is extended when each of its changes is an insert of a Silver version after its
        stored row's, with an event time after the stored row's newest: then none of them can
        be in the stored row yet, and the stored last reading precedes them all.
        """
        assert self.table.extend is not None
        keys = list(self.table.keys)
        batch_keys = changes.select(*keys).distinct()
        gold = spark.read.format("delta").load(self.path)
        if self.table.prune:
            touched = [r[0] for r in changes.select(self.table.prune).distinct().collect()]
            gold = gold.where(F.col(self.table.prune).isin(touched))
        stored = gold.join(batch_keys, keys, "left_semi").drop(UPDATED_AT).localCheckpoint()
        built = stored.select(
            *keys, F.col(SILVER_VERSION).alias("_built"), F.col("last_event_time").alias("_after")
        )
        later = (
            (F.col("_change_type") == "insert")
            & (F.col("_commit_version") > F.coalesce(F.col("_built"), F.lit(-1)))
            & (F.col("_after").isNull() | (F.col("event_timestamp") > F.col("_after")))
        )
        verdict = (
            changes.join(built, keys, "left")
            .groupBy(*keys)
            .agg(F.bool_and(F.coalesce(later, F.lit(False))).alias(_GROWN))
        )
        judged = changes.join(verdict, keys).localCheckpoint()
        fresh = judged.where(F.col(_GROWN)).select(*keys, *self.table.extend.columns)
        grown = self.table.extend.grow(
            stored.join(fresh.select(*keys).distinct(), keys, "left_semi").drop(SILVER_VERSION),
            fresh,
        )
        return grown, judged.where(~F.col(_GROWN)).drop(_GROWN)

    def _rebuild(
        self,
        spark: SparkSession,
        touched: DataFrame,
        dates: list[date],
        window: Column | None,
        version: int | None,
    ) -> DataFrame:
        """Rows of the touched keys, built from only the Silver partitions they need (and, for
        an hourly table, only the files whose event times reach a touched hour).

        An extended table reads Silver as of the batch's newest version: its rows then hold
        exactly the Silver versions up to that one, which the next batch's extension relies on.
        """
        keys = list(self.table.keys)
        scoped = {}
        for entity, key_columns in self.table.sources.items():
            reader = spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            silver = reader.load(self.silver_paths[entity])
            mapped = {k: v for k, v in key_columns().items() if k != "_date"}
            needed = F.col("date").isin(dates)
            if window is not None:
                needed = needed & window
            scoped[entity] = (
                silver.where(needed)
                .withColumns({f"_key_{k}": v for k, v in mapped.items()})
                .join(
                    F.broadcast(touched.select(*[F.col(k).alias(f"_key_{k}") for k in keys])),
                    [f"_key_{k}" for k in keys],
                    "left_semi",
                )
                .select(*silver.columns)
            )
        rows = self.table.build(scoped).join(touched, keys, "left_semi")
        if self.table.rolling:
            gold = spark.read.format("delta").load(self.path).drop(UPDATED_AT)
            rows = refresh_rolling(rows, touched, gold)
        return rows

    def _merge(self, spark: SparkSession, plan: DataFrame, prune: list[Any] | None) -> None:
        from delta.tables import DeltaTable

        condition = reduce(
            lambda a, b: a & b, [F.col(f"t.{k}") == F.col(f"s.{k}") for k in self.table.keys]
        )
        if self.table.prune:  # partition pruning: only the target files of the touched dates
            condition = condition & F.col(f"t.{self.table.prune}").isin(prune or [])
        columns = [c for c in plan.columns if c not in (_PRESENT, _GROWN)]
        values: dict[str, str | Column] = {c: F.col(f"s.{c}") for c in columns}
        (
            DeltaTable.forPath(spark, self.path)
            .alias("t")
            .merge(plan.alias("s"), condition)
            .whenMatchedDelete(condition=~F.col(f"s.{_PRESENT}"))
            .whenMatchedUpdate(set=values)
            .whenNotMatchedInsert(condition=F.col(f"s.{_PRESENT}"), values=values)
            .execute()
        )


def _hour_starts(hour: str) -> list[Column]:
    """The first and last touched hour, as unix seconds of their start."""
    start = F.unix_date("date").cast("long") * 86_400 + F.col(hour).cast("long") * 3_600
    return [F.min(start), F.max(start)]


def _within_hours(first: int, last: int) -> Column:
    """event_timestamp from the first touched hour's start to the last one's end: Delta skips
    the Silver files outside it by their statistics (the semi-join then keeps exact keys)."""
    event_time = F.col("event_timestamp")
    return (event_time >= F.timestamp_seconds(F.lit(first))) & (
        event_time < F.timestamp_seconds(F.lit(last + 3_600))
    )


def _dates(anchors: list[date], span: tuple[int, int]) -> list[date]:
    return sorted({a + timedelta(days=d) for a in anchors for d in range(span[0], span[1] + 1)})


def _merge_plan(rows: DataFrame, touched: DataFrame, keys: list[str]) -> DataFrame:
    """Rebuilt rows (present) and touched keys that no longer have a row (absent: delete)."""
    absent = touched.join(rows, keys, "left_anti").withColumn(_PRESENT, F.lit(False))
    return _present(rows).unionByName(absent, allowMissingColumns=True)


def _present(rows: DataFrame) -> DataFrame:
    return rows.withColumns({UPDATED_AT: F.current_timestamp(), _PRESENT: F.lit(True)})
