"""The Silver layer of one micro-batch: Bronze rows of one entity into every Silver output.

Outputs: `silver/<entity>` (an append of the rows no dedup key has seen), `quarantine/<entity>`
(every rejected row, duplicates included with stage `duplicate`) and, for telemetry,
`silver/vehicle_state` (rewritten: the stored state and the batch, newest per vehicle).

Replay: each write goes through the pipeline's `CommitGuard`, so a table that already holds the
batch is not written again. Silver is the entity's last write and its commit records the batch's
books and watermark: a replay that finds it takes the batch's rows back from that commit instead
of judging the batch again (what Gold, later in the batch, needs). Before it, every output of a
replay is derived from the batch input and the tables as they were before the batch: duplicates
are looked up in Silver as of the version before the batch (a commit made by a writer that did
not record its books), and the watermark is the one recorded before the batch. So a replay
after a partial commit writes, to the tables it has not reached yet, exactly what the first
attempt would have written.

Silver receives an append, not an insert-only MERGE: the batch has already been joined with the
Silver rows its keys can meet (to record each duplicate), which is what such a MERGE would
compute a second time. Each Silver table has one writer, the pipeline, so the Silver it read is
the Silver it appends to.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming.commits import CommitGuard, commit_mark
from streaming.config import Config
from streaming.contracts import Contract
from streaming.errors import QueryError
from streaming.silver import transform
from streaming.tables import added_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from streaming.frames import HeldFrames
    from streaming.geofence import Geofences

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SilverBooks:
    """One entity's books for one batch: Bronze rows in, Silver rows out, and the rest."""

    bronze: int  # rows of the batch
    valid: int  # appended to Silver
    duplicate: int  # quarantined with stage `duplicate`
    stages: dict[str, int]  # quarantined per stage (decode, schema, rule, late)
    rules: dict[str, int]  # failures per rule id (a row may fail several; `warn` rules too)

    @property
    def quarantined(self) -> int:
        return sum(self.stages.values())


@dataclass(frozen=True)
class SilverPaths:
    silver: str
    quarantine: str
    vehicle_state: str

    @classmethod
    def of(cls, config: Config, entity: str) -> SilverPaths:
        return cls(
            silver=config.table_path("silver", entity),
            quarantine=config.table_path("quarantine", entity),
            vehicle_state=config.table_path("silver", "vehicle_state"),
        )


@dataclass(frozen=True)
class SilverResult:
    """What one batch did to one entity: its books, its new watermark and its fresh rows."""

    entity: str
    counts: SilverBooks
    watermark: datetime | None
    fresh: DataFrame | None  # the rows appended to Silver (held until the batch ends)
    replayed: bool = False  # read back from the batch's Silver commit, made before a restart


class SilverWriter:
    """Silver for one entity; dependencies are injected, nothing global."""

    def __init__(
        self,
        contract: Contract,
        paths: SilverPaths,
        zones: Geofences,
        pads: DataFrame,
        guard: CommitGuard,
    ) -> None:
        self.contract = contract
        self.paths = paths
        self.zones = zones
        self.pads = pads
        self.guard = guard
        self.validate = transform.validator(contract)

    @property
    def entity(self) -> str:
        return self.contract.entity

    def process(
        self,
        bronze_rows: DataFrame,
        batch_id: int,
        watermark: datetime | None,
        held: HeldFrames,
        late: bool = True,
    ) -> SilverResult:
        """Judge, deduplicate and write one batch; `watermark` is the one before the batch.

        `late=False` (a re-drive, a replay: rows the stream already took in time) applies no
        watermark: no row is late, and the watermark is neither advanced nor returned."""
        spark = bronze_rows.sparkSession
        replayed = self._replayed(spark, batch_id)
        if replayed is not None:
            return replayed
        rows = held.keep(self.validate(bronze_rows))
        scan = _scan(rows, self.contract, watermark)
        if scan.fatal:
            self._fail_on_fatal(rows, batch_id)
        if late:
            watermark = scan.advance(watermark, self.contract.watermark_seconds)
            rows = transform.mark_late(rows, watermark)
        bounds = scan.bounds(watermark)
        existing = None
        if bounds is not None:
            existing = self._silver_before(spark, batch_id).where(bounds.condition())
        # Duplicates are marked by their contract fields, before enrichment; then masked and
        # geofenced. Materialised once, lineage cut: the writes below must neither recompute
        # the dedup and geofence joins nor see Silver after its own commit.
        good = rows.where(F.col("_rejection").isNull())
        marked = held.keep(
            transform.enrich(
                transform.mark_duplicates(good, self.contract, existing),
                self.contract,
                self.zones,
                self.pads,
            )
        )
        fresh, duplicates = transform.split_duplicates(marked)
        counts = scan.counts(*_fresh_and_duplicate(marked))
        if counts.stages or counts.duplicate:
            rejected = rows.where(F.col("_rejection").isNotNull())
            quarantined = transform.quarantine_rows(rejected, batch_id)
            if counts.duplicate:
                quarantined = quarantined.unionByName(
                    transform.quarantine_rows(duplicates, batch_id)
                )
            self.guard.write(
                self.paths.quarantine, batch_id, lambda: _append(quarantined, self.paths.quarantine)
            )
        if not counts.valid:
            return SilverResult(self.entity, counts, watermark, None)
        if self.entity == "telemetry":
            self.guard.write(
                self.paths.vehicle_state, batch_id, lambda: self._update_vehicle_state(spark, fresh)
            )
        silver_rows = transform.silver_rows(fresh, batch_id)
        # The books and the watermark go in the commit, for a replay after it (`_replayed`).
        mark = commit_mark(
            self.guard.pipeline,
            batch_id,
            books=asdict(counts),
            watermark=watermark.isoformat() if watermark else None,
        )
        # A new optional field in the contract becomes a new Silver column.
        self.guard.write(
            self.paths.silver,
            batch_id,
            lambda: _append(silver_rows, self.paths.silver, evolve=True, mark=mark),
        )
        return SilverResult(self.entity, counts, watermark, silver_rows)

    def _replayed(self, spark: SparkSession, batch_id: int) -> SilverResult | None:
        """A replay of a batch whose Silver commit was made (by an attempt that died later):
        that commit's rows, and the books and watermark it recorded, instead of judging the
        batch again. Silver is the entity's last write, so its other outputs hold the batch
        too. None when Silver does not hold the batch (or its commit predates the record)."""
        own = self.guard.committed(self.paths.silver, batch_id)
        if own is None or own.batch_id != batch_id or own.version < 0:
            return None
        books, watermark = own.details.get("books"), own.details.get("watermark")
        files = added_files(self.guard.config, self.paths.silver, own.version)
        if books is None or files is None:
            return None
        rows = (
            spark.read.format("delta")
            .option("versionAsOf", own.version)
            .load(self.paths.silver)
            .where(F.col("_metadata.file_name").isin(sorted(files)))
        )
        log.info("%s already holds batch %d: its rows and books read back from version %d",
                 self.paths.silver, batch_id, own.version)  # fmt: skip
        return SilverResult(
            self.entity,
            SilverBooks(**books),
            datetime.fromisoformat(watermark) if watermark else None,
            rows,
            replayed=True,
        )

    def _silver_before(self, spark: SparkSession, batch_id: int) -> DataFrame:
        """Silver as it was before this batch: on a replay after the batch's own Silver commit,
        the version before that commit, so the batch never meets its own rows."""
        reader = spark.read.format("delta")
        own = self.guard.committed(self.paths.silver, batch_id)
        if own is not None and own.batch_id == batch_id and own.version > 0:
            reader = reader.option("versionAsOf", own.version - 1)
        return reader.load(self.paths.silver)

    def _fail_on_fatal(self, rows: DataFrame, batch_id: int) -> None:
        fatal = rows.where(F.size("_fatal") > 0).select(F.explode("_fatal")).distinct().collect()
        raise QueryError(
            f"expectation(s) with action 'fail' not met: {sorted(r[0] for r in fatal)}",
            query=f"silver.{self.entity}",
            batch_id=batch_id,
            hint=f"fix the data or the contract {self.contract.source}; the batch will replay",
        )

    def _update_vehicle_state(self, spark: SparkSession, fresh: DataFrame) -> None:
        """The stored state and the batch's telemetry, newest per vehicle, as the new table.

        A rewrite rather than a MERGE: with the whole fleet, each batch touches nearly every
        vehicle, so a MERGE rewrote every file as well, after a join to find them. The pipeline
        is the table's one writer, so the state it reads is the state it replaces; a replay
        gives the same table (only a newer event replaces a vehicle's row).
        """
        state = spark.read.format("delta").load(self.paths.vehicle_state)
        latest = transform.latest_per_vehicle(state.unionByName(transform.state_rows(fresh)))
        latest.write.format("delta").mode("overwrite").save(self.paths.vehicle_state)


@dataclass(frozen=True)
class Bounds:
    """Silver's date partitions and the event-time range that a batch's fresh rows can match
    (a duplicate carries its original's event time)."""

    dates: tuple[date, ...]
    since: datetime
    until: datetime

    def condition(self) -> Any:
        event_time = F.col("event_timestamp")
        return (
            F.col("date").isin(list(self.dates))
            & (event_time >= F.lit(self.since))
            & (event_time <= F.lit(self.until))
        )


@dataclass(frozen=True)
class Scan:
    """What one pass over a validated batch tells before anything is written."""

    newest: datetime | None  # the newest good event time
    oldest: datetime | None  # the oldest good event time not behind the previous watermark
    dates: tuple[date, ...]  # the event dates of good rows
    fatal: int  # rows that failed a `fail` expectation
    rows: int  # every row of the batch
    stages: dict[str, int]  # rejected rows per stage (decode, schema, rule), before `late`
    rules: dict[str, int]  # failures per expectation id (quarantined or warned)

    def advance(self, watermark: datetime | None, delay_seconds: float) -> datetime | None:
        """max(previous watermark, newest good event time - delay)."""
        if self.newest is None:
            return watermark
        candidate = self.newest - timedelta(seconds=delay_seconds)
        return max(candidate, watermark) if watermark else candidate

    def bounds(self, watermark: datetime | None) -> Bounds | None:
        """Where the good rows can sit in Silver once late ones (older than watermark) are out."""
        if self.oldest is None or self.newest is None:
            return None
        since = max(self.oldest, watermark) if watermark else self.oldest
        dates = tuple(d for d in self.dates if d >= since.date())
        return Bounds(dates, since, self.newest) if dates else None

    def counts(self, valid: int, duplicate: int) -> SilverBooks:
        """The batch's books: every good row that is neither fresh nor a duplicate was late."""
        good = self.rows - sum(self.stages.values())
        stages = {**self.stages, "late": good - valid - duplicate}
        return SilverBooks(
            bronze=self.rows,
            valid=valid,
            duplicate=duplicate,
            stages={stage: n for stage, n in stages.items() if n},
            rules=self.rules,
        )


_STAGES = ("decode", "schema", "rule")


def _scan(rows: DataFrame, contract: Contract, watermark: datetime | None) -> Scan:
    """Event-time bounds, `fail` hits and the tallies per stage and rule: one job."""
    rejection = F.col("_rejection")
    good = rejection.isNull()
    current = good if watermark is None else good & (F.col("event_timestamp") >= F.lit(watermark))
    failed = F.when(rejection.stage == "rule", rejection.rule_ids)
    tallied = {
        e.id: F.col("_warnings") if e.action == "warn" else failed
        for e in contract.expectations
        if e.action in ("warn", "quarantine")
    }
    row = rows.agg(
        F.max(F.when(good, F.col("event_timestamp"))),
        F.min(F.when(current, F.col("event_timestamp"))),
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


def _append(frame: DataFrame, path: str, evolve: bool = False, mark: str | None = None) -> None:
    writer = frame.write.format("delta").mode("append")
    if evolve:
        writer = writer.option("mergeSchema", "true")
    if mark is not None:  # this commit's own mark, over the batch's (the session's)
        writer = writer.option("userMetadata", mark)
    writer.save(path)
