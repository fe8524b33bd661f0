"""`lakehouse replay`: rebuild one entity's Silver and Gold for a range of Kafka time from Bronze.

After a contract or code fix (a derivation, a mask, a geofence), the rows already in Silver keep
what the old version made of them. A replay takes the Bronze rows whose Kafka time is in
[from, to), removes what they became (their Silver rows, quarantine rows and vehicle state), and
runs them through today's Silver as one batch; then every Gold key that the old or the new rows
touch is rebuilt from Silver. Rows outside the range are untouched; a duplicate whose original
lies outside the range stays a duplicate. Rows that were quarantined as late keep that verdict
(a watermark decided it; `lakehouse redrive --stage late` takes them).

Exactly-once: a replay has a number. It records its start (entity, range) in `ops.replays`,
clears its rows in one commit per table (marked `replay.<entity>.clear`), writes as batch
<number> of `replay.<entity>` through the same commit guard as the pipeline, and records its
end. A replay that died is finished by the next `lakehouse replay` of that entity, with its own
range, before anything else. The Silver rows it removed are read back by time travel, so a
resumed replay still knows which Gold keys they touched. It holds the Silver and Gold writer
leases: it refuses while a pipeline writes those layers.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming import bronze
from streaming.audit import record_writes
from streaming.catalog import REPLAYS, TableRef, append_rows
from streaming.commits import BatchScope, CommitGuard
from streaming.config import Config
from streaming.errors import ConfigError
from streaming.frames import HeldFrames
from streaming.gold.query import GoldLayer
from streaming.redrive import (
    COORDINATES,
    REDRIVEN,
    Rewrite,
    delete_matching,
    read_records,
    require_tables,
)
from streaming.silver.query import SilverInputs, writer_for
from streaming.silver.writer import SilverPaths
from streaming.tables import exists

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """Kafka time from `start` (inclusive) to `end` (exclusive, open when None)."""

    entity: str
    start: datetime
    end: datetime | None

    def describe(self) -> str:
        end = self.end.isoformat() if self.end else "now"
        return f"Kafka time {self.start.isoformat()} to {end}"

    def condition(self) -> Any:
        kafka_time = F.col("_kafka_timestamp")
        chosen = kafka_time >= F.lit(self.start)
        if self.end is not None:
            chosen &= kafka_time < F.lit(self.end)
        day = F.make_date("year", "month", "day")  # Bronze's partitions: pruned by this filter
        chosen &= day >= F.lit(self.start.date())
        if self.end is not None:
            chosen &= day <= F.lit(self.end.date())
        return chosen


@dataclass
class ReplayReport(Rewrite):
    range: str = ""
    bronze: int = 0  # Bronze rows in the range
    kept_late: int = 0  # of those, quarantined as late: left as they are
    replayed: int = 0
    removed_silver: int = 0

    def line(self) -> str:
        parts = [f"{self.bronze} Bronze rows ({self.range})"]
        if self.kept_late:
            parts.append(f"{self.kept_late} quarantined as late: left")
        if not self.dry_run:
            parts.append(f"{self.removed_silver} Silver rows replaced")
            parts += self.outcome()
        return f"{self.head('replay')}: " + "; ".join(parts) + f" ({self.seconds:.1f} s)"


def check_range(inputs: SilverInputs, entity: str, start: str, end: str | None) -> Range:
    """The flags, checked before Spark starts: one clear error each."""
    if entity not in inputs.contracts:
        raise ConfigError(
            f"unknown entity {entity!r}", hint=f"one of: {', '.join(sorted(inputs.contracts))}"
        )
    first = _moment("--from", start)
    last = _moment("--to", end) if end is not None else None
    if last is not None and last <= first:
        raise ConfigError(
            f"--from {start} is not before --to {end}", hint="the range is [from, to)"
        )
    return Range(entity, first, last)


def _moment(flag: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a time", hint="ISO 8601, e.g. 2026-12-05T10:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def replay(
    spark: SparkSession,
    config: Config,
    inputs: SilverInputs,
    wanted: Range,
    dry_run: bool = False,
) -> ReplayReport:
    """Finish an unfinished replay of the entity, else replay `wanted`."""
    started = time.monotonic()
    entity = wanted.entity
    paths = SilverPaths.of(config, entity)
    require_tables(config, paths.silver, config.table_path(bronze.LAYER, entity))
    records = read_records(config, REPLAYS, entity)
    unfinished = _unfinished(records)
    chosen = unfinished[1] if unfinished and not dry_run else wanted
    report = ReplayReport(
        entity, dry_run=dry_run, resumed=bool(unfinished), range=chosen.describe()
    )
    rows = _rows(spark, config, paths, chosen, report)
    if dry_run:
        report.resumed = False
        report.seconds = time.monotonic() - started
        return report
    if unfinished:
        replay_id = unfinished[0]
    else:
        replay_id = max((int(r["replay_id"]) for r in records), default=0) + 1
        _record(config, replay_id, chosen, "started", report)
    report.number = replay_id
    _apply(spark, config, inputs, paths, rows, replay_id, report)
    report.seconds = time.monotonic() - started
    _record(config, replay_id, chosen, "done", report)
    return report


def _unfinished(records: list[dict[str, Any]]) -> tuple[int, Range] | None:
    done = {int(r["replay_id"]) for r in records if r["status"] == "done"}
    for record in sorted(records, key=lambda r: -int(r["replay_id"])):
        if record["status"] == "started" and int(record["replay_id"]) not in done:
            return int(record["replay_id"]), Range(record["entity"], record["start"], record["end"])
    return None


def _rows(
    spark: SparkSession, config: Config, paths: SilverPaths, chosen: Range, report: ReplayReport
) -> DataFrame:
    """The range's Bronze rows, but those quarantined as late (held, counted in the report)."""
    table = spark.read.format("delta").load(config.table_path(bronze.LAYER, chosen.entity))
    in_range = table.where(chosen.condition())
    late = F.col("stage") == "late"
    if exists(config, paths.quarantine):
        quarantine = spark.read.format("delta").load(paths.quarantine)
        if REDRIVEN in quarantine.columns:
            late &= F.col(REDRIVEN).isNull()
        kept = quarantine.where(late).select(*COORDINATES).withColumn("_late", F.lit(True))
        in_range = in_range.join(kept, COORDINATES, "left")
    else:
        in_range = in_range.withColumn("_late", F.lit(None).cast("boolean"))
    judged = in_range.localCheckpoint()  # the range is read once
    tally = judged.agg(F.count(F.lit(1)), F.count("_late")).first()
    assert tally is not None
    report.bronze, report.kept_late = int(tally[0]), int(tally[1])
    report.replayed = report.bronze - report.kept_late
    return judged.where(F.col("_late").isNull()).drop("_late")


def _apply(
    spark: SparkSession,
    config: Config,
    inputs: SilverInputs,
    paths: SilverPaths,
    rows: DataFrame,
    replay_id: int,
    report: ReplayReport,
) -> None:
    entity = report.entity
    keys = rows.select(*COORDINATES).localCheckpoint()
    clear = CommitGuard(config, f"replay.{entity}.clear")
    targets = [paths.silver, paths.quarantine]
    targets += [paths.vehicle_state] if entity == "telemetry" else []
    with BatchScope(spark, clear.pipeline, replay_id):
        for path in targets:
            # vehicle_state holds one topic's rows: its rows carry no topic
            on = COORDINATES if path != paths.vehicle_state else COORDINATES[1:]
            clear.write(path, replay_id, functools.partial(delete_matching, spark, path, keys, on))
    # What the rows were in Silver before the clear (read back by time travel when resumed).
    before = clear.holding(paths.silver, replay_id) - 1
    removed = (
        spark.read.format("delta")
        .option("versionAsOf", before)
        .load(paths.silver)
        .join(keys, COORDINATES, "left_semi")
        .localCheckpoint()
    )
    report.removed_silver = removed.count()
    guard = CommitGuard(config, f"replay.{entity}")
    writer = writer_for(spark, config, inputs, entity, guard)
    gold = GoldLayer(spark, config, guard)
    held = HeldFrames()
    try:
        with BatchScope(spark, guard.pipeline, replay_id):
            result = writer.process(rows, replay_id, None, held, late=False)
            report.take(result.counts)
            version = clear.newest(paths.silver)
            changes = removed.withColumn("_change_type", F.lit("delete"))
            if result.fresh is not None:
                changes = changes.unionByName(
                    result.fresh.withColumn("_change_type", F.lit("insert")),
                    allowMissingColumns=True,
                )
            changes = changes.withColumn("_commit_version", F.lit(version).cast("long"))
            for name in gold.tables_for({entity}):
                summary = gold.apply(name, {entity: changes}, replay_id)
                if summary is not None:
                    report.gold[name] = int(summary.upserted)
    finally:
        held.release()
    record_writes(config, clear, replay_id)
    record_writes(config, guard, replay_id, {entity: report.replayed}, {entity: report.rules})


def replays_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("replay_id", pa.int64()),
            ("entity", pa.string()),
            ("start", pa.timestamp("us", tz="UTC")),
            ("end", pa.timestamp("us", tz="UTC")),
            ("status", pa.string()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("replayed", pa.int64()),
            ("removed_silver", pa.int64()),
            ("to_silver", pa.int64()),
            ("duplicate", pa.int64()),
            ("quarantined", pa.int64()),
            ("gold_tables", pa.string()),
            ("seconds", pa.float64()),
            ("date", pa.date32()),
        ]
    )


def _record(
    config: Config, replay_id: int, chosen: Range, status: str, report: ReplayReport
) -> None:
    now = datetime.now(UTC)
    row = {
        "replay_id": replay_id,
        "entity": chosen.entity,
        "start": chosen.start,
        "end": chosen.end,
        "status": status,
        "at": now,
        "replayed": report.replayed,
        "removed_silver": report.removed_silver,
        "to_silver": report.to_silver,
        "duplicate": report.duplicate,
        "quarantined": sum(report.quarantined.values()),
        "gold_tables": ",".join(sorted(report.gold)),
        "seconds": report.seconds,
        "date": now.date(),
    }
    append_rows(config, TableRef(*REPLAYS), [row], replays_schema())
