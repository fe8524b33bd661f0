"""The one-pass pipeline: one streaming query whose `foreachBatch` applies the layers in order.

- `all`: Kafka (every topic) -> Bronze -> Silver -> Gold.
- `bronze`: Kafka -> Bronze (the capture half of the split deployment).
- `refine`: the Bronze tables (a Delta stream) -> Silver -> Gold (the other half).

Each batch is read once and held (a local checkpoint on disk). Bronze appends its rows per topic;
Silver judges the same rows per entity (never re-reading Bronze); Gold is updated from the Silver
rows the batch added (never from a change feed read by a second query). Entities, and then Gold
tables, are processed side by side in threads: while one waits on a Delta commit, another's
tasks use the cores.

Exactly-once: every commit carries the pipeline's name and batch id (`commits.BatchScope`); a
replayed batch skips the tables that already hold it and recomputes the others from the same
input and the state before the batch. Watermarks after each batch are kept in the checkpoint.
One checkpoint per pipeline: `<checkpoints>/pipeline/<name>`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from pyspark.sql import functions as F

from streaming import bronze
from streaming.audit import record_writes
from streaming.commits import BatchScope, CommitGuard
from streaming.config import Config
from streaming.erasure import Tombstones
from streaming.frames import HeldFrames
from streaming.gold.query import GoldLayer
from streaming.lineage import OpenLineageEmitter
from streaming.silver.query import SilverInputs, silver_writers
from streaming.silver.watermarks import WatermarkStore
from streaming.spark import PIPELINE_POOL, POOL_PROPERTY, stream_writer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from streaming.gold.writer import GoldSummary
    from streaming.silver.writer import SilverBooks, SilverResult, SilverWriter

log = logging.getLogger(__name__)
LAYERS: dict[str, tuple[str, ...]] = {
    "all": ("bronze", "silver", "gold"),
    "bronze": ("bronze",),
    "refine": ("silver", "gold"),
}
# Bronze bytes per `refine` batch when it catches up on a backlog (about 900,000 telemetry rows).
MAX_BYTES_PER_TRIGGER = "64m"
_T = TypeVar("_T")


def query_name(pipeline: str) -> str:
    return f"pipeline.{pipeline}"


@dataclass
class BatchReport:
    """What one batch did, layer by layer: what the log line and the metrics read."""

    batch_id: int
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    rows_in: dict[str, int] = field(default_factory=dict)  # per entity
    newest_kafka: dict[str, datetime] = field(default_factory=dict)  # per entity
    bronze_written: list[str] = field(default_factory=list)
    silver: dict[str, SilverBooks] = field(default_factory=dict)  # per entity: its books
    gold: dict[str, GoldSummary] = field(default_factory=dict)  # per table: its summary
    seconds: dict[str, float] = field(default_factory=dict)  # per layer
    watermarks: dict[str, datetime] = field(default_factory=dict)  # per entity, after the batch
    versions: dict[str, int] = field(default_factory=dict)  # per table written: its new version

    def line(self, pipeline: str) -> str:
        total = sum(self.rows_in.values())
        parts = [f"{pipeline} batch {self.batch_id}: {total} rows"]
        if self.bronze_written:
            parts.append(f"bronze {len(self.bronze_written)} tables")
        if self.silver:
            valid = sum(c.valid for c in self.silver.values())
            duplicate = sum(c.duplicate for c in self.silver.values())
            rejected = sum(c.quarantined for c in self.silver.values())
            parts.append(f"silver {valid} valid, {duplicate} duplicate, {rejected} quarantined")
        if self.gold:
            upserted = sum(s.upserted for s in self.gold.values())
            parts.append(f"gold {len(self.gold)} tables, {upserted} rows")
        timing = " ".join(f"{layer} {s:.1f}" for layer, s in self.seconds.items())
        return ", ".join(parts) + f" ({timing} s)"


Observer = Callable[[BatchReport], None]


class BatchWriter:
    """The pipeline's foreachBatch callable: the layers of `LAYERS[pipeline]` in order."""

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        pipeline: str,
        inputs: SilverInputs | None,
        observer: Observer | None = None,
        layers: tuple[str, ...] | None = None,
        workers: int | None = None,
    ) -> None:
        """`layers`: a subset of the pipeline's own, in order (Silver alone, say, in a test);
        `workers`: how many entities (or Gold tables) are processed side by side (1: in order)."""
        self.pipeline = pipeline
        self.config = config
        self.layers = layers or LAYERS[pipeline]
        self.guard = CommitGuard(config, query_name(pipeline))
        self.observer = observer
        self.workers = workers or len(config.entities)
        self.entity_of = {config.topic(e).name: e for e in config.entities}
        self.bronze_paths = {e: config.table_path(bronze.LAYER, e) for e in config.entities}
        for entity in config.entities:
            bronze.ensure_bronze_table(spark, config, entity)
        self.silver: dict[str, SilverWriter] = {}
        self.gold: GoldLayer | None = None
        if "silver" in self.layers:
            assert inputs is not None
            self.silver = silver_writers(spark, config, inputs, self.guard)
            self.watermarks = WatermarkStore(
                config, f"{config.checkpoint_path(query_name(pipeline))}/watermarks"
            )
        if "gold" in self.layers:
            self.gold = GoldLayer(spark, config, self.guard)
        self.threads = ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix="layer",
            # A thread's jobs go to its scheduler pool, a thread-local property: the query's
            # own thread has the pipeline's, which new threads do not inherit.
            initializer=spark.sparkContext.setLocalProperty,
            initargs=(POOL_PROPERTY, PIPELINE_POOL),
        )
        self.tombstones = Tombstones(config)
        self.lineage = OpenLineageEmitter(config, pipeline)
        # Held for each batch: what else writes these tables from this process (an erasure)
        # runs between two batches.
        self.lock = threading.Lock()
        self.finished = -1  # the newest batch this process wrote in full

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        with self.lock:
            report = self._batch(batch, batch_id)
            self.finished = max(self.finished, batch_id)
        rules = {entity: books.rules for entity, books in report.silver.items()}
        written = record_writes(self.config, self.guard, batch_id, report.rows_in, rules)
        report.versions = {row["table"]: row["version"] for row in written}
        self.lineage.emit(report, written)
        if report.rows_in:
            log.info(report.line(self.pipeline))
            if self.observer is not None:
                self.observer(report)

    def _batch(self, batch: DataFrame, batch_id: int) -> BatchReport:
        spark = batch.sparkSession
        report = BatchReport(batch_id)
        held = HeldFrames()
        try:
            with BatchScope(spark, query_name(self.pipeline), batch_id):
                rows = bronze.to_bronze(batch) if "bronze" in self.layers else batch
                # Erased records never return; raw payloads are held on disk, not in the heap.
                rows = held.keep(self.tombstones.drop(rows), on_disk=True)
                by_entity = self._split(rows, report)
                if by_entity:
                    self._layers(by_entity, batch_id, report, held)
        finally:
            held.release()
        report.ended_at = datetime.now(UTC)
        return report

    def _layers(
        self,
        by_entity: dict[str, DataFrame],
        batch_id: int,
        report: BatchReport,
        held: HeldFrames,
    ) -> None:
        if "bronze" in self.layers:
            with _timed(report, "bronze"):
                self._bronze(by_entity, batch_id, report)
        if self.silver:
            with _timed(report, "silver"):
                results = self._silver(by_entity, batch_id, held)
            report.silver = {r.entity: r.counts for r in results}
            report.watermarks = {r.entity: r.watermark for r in results if r.watermark}
            if self.gold is not None:
                with _timed(report, "gold"):
                    self._gold(results, batch_id, report)

    def _split(self, rows: DataFrame, report: BatchReport) -> dict[str, DataFrame]:
        """The batch's rows per entity, for the entities that have any (one small job)."""
        tallies = (
            rows.groupBy("_kafka_topic")
            .agg(F.count(F.lit(1)).alias("rows"), F.max("_kafka_timestamp").alias("newest"))
            .collect()
        )
        by_entity = {}
        for tally in tallies:
            entity = self.entity_of.get(tally["_kafka_topic"])
            if entity is None:
                continue  # a topic this pipeline does not own (the Kafka source subscribes by name)
            report.rows_in[entity] = int(tally["rows"])
            report.newest_kafka[entity] = tally["newest"]
            by_entity[entity] = rows.where(F.col("_kafka_topic") == tally["_kafka_topic"])
        return by_entity

    def _bronze(self, by_entity: dict[str, DataFrame], batch_id: int, report: BatchReport) -> None:
        def write(entity: str) -> bool:
            path = self.bronze_paths[entity]
            return self.guard.write(path, batch_id, lambda: bronze.append(by_entity[entity], path))

        written = self._each(list(by_entity), write)
        report.bronze_written = [e for e, wrote in zip(by_entity, written, strict=True) if wrote]

    def _silver(
        self, by_entity: dict[str, DataFrame], batch_id: int, held: HeldFrames
    ) -> list[SilverResult]:
        before = self.watermarks.before(batch_id)
        entities = [e for e in by_entity if e in self.silver]
        results = self._each(
            entities,
            lambda e: self.silver[e].process(by_entity[e], batch_id, before.get(e), held),
        )
        # Rows read back from a commit made before a restart: records erased since then are
        # dropped from them, as they are from the batch's input.
        results = [
            replace(r, fresh=self.tombstones.drop(r.fresh))
            if r.replayed and r.fresh is not None
            else r
            for r in results
        ]
        after = dict(before)
        after.update({r.entity: r.watermark for r in results if r.watermark is not None})
        if after != before:
            self.watermarks.record(batch_id, after)
        return results

    def _gold(self, results: list[SilverResult], batch_id: int, report: BatchReport) -> None:
        assert self.gold is not None
        fresh = {r.entity: r.fresh for r in results if r.fresh is not None}
        report.gold = self.gold.update(
            fresh,
            lambda entity: self.guard.holding(self.silver[entity].paths.silver, batch_id),
            batch_id,
            self._each,
        )

    def _each(self, items: list[str], work: Callable[[str], _T]) -> list[_T]:
        """`work` on every item side by side. A failure fails the batch, once every item has
        ended: none may still be writing, or reading the batch's frames, after it."""
        if len(items) == 1 or self.workers == 1:
            return [work(item) for item in items]
        futures = [self.threads.submit(work, item) for item in items]
        wait(futures)
        return [future.result() for future in futures]


@contextmanager
def _timed(report: BatchReport, layer: str) -> Iterator[None]:
    """The layer's wall time in the batch's report."""
    started = time.monotonic()
    try:
        yield
    finally:
        report.seconds[layer] = time.monotonic() - started


def source(spark: SparkSession, config: Config, pipeline: str) -> DataFrame:
    """Kafka over every topic for `all` and `bronze`; the Bronze tables for `refine`."""
    if "bronze" in LAYERS[pipeline]:
        return bronze.read_topics(spark, config, list(config.entities))
    streams = [
        spark.readStream.format("delta")
        # Retention and erasure delete from Bronze: such commits hold no new rows to refine.
        .option("skipChangeCommits", "true")
        .option("maxBytesPerTrigger", MAX_BYTES_PER_TRIGGER)
        .option("maxFilesPerTrigger", str(config.stream.max_files_per_trigger))
        .load(config.table_path(bronze.LAYER, entity))
        for entity in config.entities
    ]
    union = streams[0]
    for stream in streams[1:]:
        union = union.unionByName(stream)
    return union


class Started(NamedTuple):
    query: StreamingQuery
    writer: BatchWriter  # its lock keeps other writes of this process between batches


def start(
    spark: SparkSession,
    config: Config,
    pipeline: str,
    inputs: SilverInputs | None,
    once: bool,
    observer: Observer | None = None,
) -> Started:
    """Create every table of the pipeline's layers (Bronze's too: `refine` reads it, and an
    empty table is a quiet topic), then start its one query."""
    writer = BatchWriter(spark, config, pipeline, inputs, observer)
    frame = source(spark, config, pipeline)
    query = stream_writer(frame, query_name(pipeline), config, once).foreachBatch(writer).start()
    return Started(query, writer)
