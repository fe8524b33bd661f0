"""`lakehouse redrive`: quarantined rows through today's contract again, once each.

After a contract is fixed, the rows it wrongly rejected are still in quarantine. A re-drive
selects them (by entity, stage, rule, quarantine time), reads their Bronze rows, and judges
them with today's contract as one batch of the Silver layer: rows that now pass go to Silver
(deduplicated against Silver as usual) and on to Gold; rows that now fail for another reason
go back to quarantine with the new reason. Rows that would fail exactly as before are left as
they are, so running the same re-drive again changes nothing.

Books: a re-driven quarantine row is marked with the re-drive that took it (`_redriven_by`);
`verify` counts the row where it went instead. Late rows can be re-driven too: no watermark
applies to a re-drive, so they reach Silver, and Gold's rows of their hours change.

Exactly-once: the re-drive first claims its rows (one commit that marks them), then writes as
a pipeline batch named `redrive.<entity>` with the re-drive's number as batch id, through the
same commit guard. A re-drive that died is resumed by the next one, with the rows it claimed.
It holds the Silver and Gold writer leases: it refuses while a pipeline writes those layers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming import bronze
from streaming.audit import record_writes
from streaming.catalog import REDRIVES, TableRef, append_rows
from streaming.commits import USER_METADATA, BatchScope, CommitGuard, commit_mark
from streaming.config import Config
from streaming.contracts import Contract
from streaming.errors import ConfigError
from streaming.frames import HeldFrames
from streaming.gold.query import GoldLayer
from streaming.silver.query import SilverInputs, writer_for
from streaming.silver.writer import SilverBooks, SilverPaths
from streaming.tables import exists, open_table

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
REDRIVEN = "_redriven_by"  # quarantine column: the number of the re-drive that took the row
STAGES = ("decode", "schema", "rule", "late")  # duplicates are right where they are
_PREFIXED = ("decode.", "schema.", "late.")  # rule ids of the decode, schema and late stages
COORDINATES = ["_kafka_topic", "_kafka_partition", "_kafka_offset"]


@dataclass(frozen=True)
class Selection:
    """Which quarantined rows of one entity a re-drive takes."""

    entity: str
    stage: str | None = None
    rule: str | None = None
    since: datetime | None = None  # quarantined at or after

    def describe(self) -> str:
        parts = [f"stage {self.stage}" if self.stage else "every stage but duplicate"]
        if self.rule:
            parts.append(f"rule {self.rule}")
        if self.since:
            parts.append(f"quarantined since {self.since.isoformat()}")
        return ", ".join(parts)


@dataclass
class Rewrite:
    """What a command that rewrites an entity's Silver and Gold did (or, dry, would do)."""

    entity: str
    number: int | None = None  # the re-drive's or replay's number (its batch id)
    dry_run: bool = False
    resumed: bool = False  # it finished an earlier run that had died
    to_silver: int = 0
    duplicate: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # per stage
    rules: dict[str, int] = field(default_factory=dict)  # failures per rule id
    gold: dict[str, int] = field(default_factory=dict)  # rows upserted per Gold table
    seconds: float = 0.0

    def head(self, command: str) -> str:
        text = f"{command} {self.entity}" + (f" #{self.number}" if self.number else "")
        return (
            text + (" (dry run)" if self.dry_run else "") + (" (resumed)" if self.resumed else "")
        )

    def outcome(self) -> list[str]:
        again = ", ".join(f"{n} {stage}" for stage, n in sorted(self.quarantined.items()))
        parts = [f"{self.to_silver} to Silver, {self.duplicate} duplicates"]
        parts.append(f"quarantined: {again or 0}")
        if self.gold:
            parts.append("gold " + ", ".join(f"{t} {n}" for t, n in sorted(self.gold.items())))
        return parts

    def take(self, counts: SilverBooks) -> None:
        """The Silver layer's books of the rewrite's batch."""
        self.to_silver = counts.valid
        self.duplicate = counts.duplicate
        self.quarantined = dict(counts.stages)
        self.rules = dict(counts.rules)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RedriveReport(Rewrite):
    selection: str = ""
    selected: int = 0  # quarantined rows matching the selection, not yet re-driven
    no_bronze: int = 0  # of those, rows whose Bronze row has expired (cannot be re-driven)
    unchanged: int = 0  # would fail exactly as before: left in quarantine as they are
    taken: int = 0  # claimed and judged again
    passing: int = 0  # pass today's contract (Silver, or quarantine as a duplicate)
    late_dates: list[str] = field(default_factory=list)  # event dates of re-driven late rows

    def line(self) -> str:
        parts = [f"{self.selected} selected ({self.selection})"]
        if self.no_bronze:
            parts.append(f"{self.no_bronze} without their Bronze row (expired): left")
        parts.append(f"{self.unchanged} would fail as before: left")
        if self.dry_run:
            parts.append(f"{self.passing} pass today's contract")
            parts.append(f"{self.taken - self.passing} fail for another reason")
        else:
            parts += self.outcome()
        text = f"{self.head('redrive')}: " + "; ".join(parts) + f" ({self.seconds:.1f} s)"
        if self.late_dates:
            text += (
                f"\n  late rows reached Silver: Gold's rows of their hours on "
                f"{', '.join(self.late_dates)} now count them"
            )
        return text


def check_selection(
    inputs: SilverInputs,
    entity: str,
    stage: str | None = None,
    rule: str | None = None,
    since: str | None = None,
) -> Selection:
    """The flags, checked before Spark starts: one clear error each."""
    if entity not in inputs.contracts:
        raise ConfigError(
            f"unknown entity {entity!r}", hint=f"one of: {', '.join(sorted(inputs.contracts))}"
        )
    if stage == "duplicate":
        raise ConfigError(
            "duplicates are not re-driven: an earlier row with the same key is in Silver",
            hint=f"--stage one of: {', '.join(STAGES)}",
        )
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}", hint=f"one of: {', '.join(STAGES)}")
    contract = inputs.contracts[entity]
    if rule is not None and not _known_rule(contract, rule):
        ids = ", ".join(e.id for e in contract.expectations)
        raise ConfigError(
            f"unknown rule {rule!r} for {entity}",
            hint=f"one of: {ids}, or an id of the decode, schema or late stage "
            "(decode.not_json, schema.wrong_type, late.watermark, ...)",
        )
    moment = None
    if since is not None:
        try:
            moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"--since {since!r} is not a time", hint="ISO 8601, e.g. 2026-12-05T10:00:00Z"
            ) from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return Selection(entity, stage, rule, moment)


def _known_rule(contract: Contract, rule: str) -> bool:
    return any(e.id == rule for e in contract.expectations) or rule.startswith(_PREFIXED)


def redrive(
    spark: SparkSession,
    config: Config,
    inputs: SilverInputs,
    selection: Selection,
    dry_run: bool = False,
) -> RedriveReport:
    """Re-drive the selected rows (or, with `dry_run`, say what a re-drive would do)."""
    started = time.monotonic()
    entity = selection.entity
    paths = SilverPaths.of(config, entity)
    require_tables(config, paths.quarantine, config.table_path(bronze.LAYER, entity))
    contract = inputs.contracts[entity]
    report = RedriveReport(entity, dry_run=dry_run, selection=selection.describe())
    pending, next_id = (None, 0) if dry_run else _numbers(spark, config, paths.quarantine, entity)
    if pending is None:
        candidates = _candidates(spark, config, paths.quarantine, selection)
        judged = _judge(config, contract, entity, candidates)
        tally = judged.agg(
            F.count(F.lit(1)),
            F.count(F.when(F.col("_bronze").isNull(), 1)),
            F.count(F.when(F.col("_bronze") & F.col("_unchanged"), 1)),
            F.count(F.when(F.col("_bronze") & ~F.col("_unchanged") & F.col("_passes"), 1)),
        ).first()
        assert tally is not None
        report.selected, report.no_bronze, report.unchanged, report.passing = map(int, tally)
        report.taken = report.selected - report.no_bronze - report.unchanged
        if dry_run or not report.taken:
            report.seconds = time.monotonic() - started
            return report
        redrive_id = next_id
        _claim(spark, paths.quarantine, judged, redrive_id, entity)
    else:
        redrive_id, report.resumed = pending, True
    report.number = redrive_id
    _apply(spark, config, inputs, entity, redrive_id, report)
    report.seconds = time.monotonic() - started
    _record(config, selection, report)
    return report


def require_tables(config: Config, *paths: str) -> None:
    for path in paths:
        if not exists(config, path):
            raise ConfigError(
                f"{path} is not a Delta table yet",
                hint="run the pipeline first: `lakehouse run all`",
            )


def _candidates(
    spark: SparkSession, config: Config, quarantine_path: str, selection: Selection
) -> DataFrame:
    quarantine = _with_redriven(spark.read.format("delta").load(quarantine_path))
    chosen = F.col(REDRIVEN).isNull() & (F.col("stage") != "duplicate")
    if selection.stage:
        chosen &= F.col("stage") == selection.stage
    if selection.rule:
        chosen &= F.array_contains("rule_ids", selection.rule)
    if selection.since:
        chosen &= F.col("_quarantined_at") >= F.lit(selection.since)
    return quarantine.where(chosen).select(
        *COORDINATES,
        "_kafka_timestamp",
        F.col("stage").alias("_was_stage"),
        F.col("rule_ids").alias("_was_rules"),
    )


def _bronze_rows(spark: SparkSession, config: Config, entity: str, keys: DataFrame) -> DataFrame:
    """The Bronze rows of `keys` (coordinates and Kafka time), reading only the days they span."""
    kafka_day = F.to_date("_kafka_timestamp")  # in the session's time zone, UTC, as Bronze's
    span = keys.agg(F.min(kafka_day), F.max(kafka_day)).first()
    table = spark.read.format("delta").load(config.table_path(bronze.LAYER, entity))
    if span is None or span[0] is None:
        return table.limit(0)
    day = F.make_date("year", "month", "day")  # Bronze's partitions: pruned by this filter
    scoped = table.where(day.between(F.lit(span[0]), F.lit(span[1])))
    return scoped.join(F.broadcast(keys.select(*COORDINATES)), COORDINATES, "left_semi")


def _judge(config: Config, contract: Contract, entity: str, candidates: DataFrame) -> DataFrame:
    """Each candidate with `_bronze` (its Bronze row exists), `_passes` (today's contract
    accepts it) and `_unchanged` (it would fail exactly as before)."""
    from streaming.silver import transform

    spark = candidates.sparkSession
    candidates = candidates.localCheckpoint()
    rows = _bronze_rows(spark, config, entity, candidates)
    verdicts = transform.validator(contract)(rows).select(
        *COORDINATES,
        F.lit(True).alias("_bronze"),
        F.col("_rejection.stage").alias("_now_stage"),
        F.col("_rejection.rule_ids").alias("_now_rules"),
    )
    same = (F.col("_now_stage") == F.col("_was_stage")) & (
        F.col("_now_rules") == F.col("_was_rules")
    )
    return (
        candidates.join(verdicts, COORDINATES, "left")
        .withColumn("_bronze", F.coalesce("_bronze", F.lit(False)))
        .withColumn("_passes", F.col("_bronze") & F.col("_now_stage").isNull())
        .withColumn("_unchanged", F.col("_bronze") & F.coalesce(same, F.lit(False)))
        .localCheckpoint()
    )


def _with_redriven(quarantine: DataFrame) -> DataFrame:
    """Quarantine as read, with `_redriven_by` null where the table has no such column yet."""
    if REDRIVEN in quarantine.columns:
        return quarantine
    return quarantine.withColumn(REDRIVEN, F.lit(None).cast("long"))


def _numbers(
    spark: SparkSession, config: Config, quarantine_path: str, entity: str
) -> tuple[int | None, int]:
    """(the number of a re-drive that claimed rows and did not record its end, if any; the
    number the next re-drive takes), from the newest claim in quarantine and ops.redrives."""
    claimed = _with_redriven(spark.read.format("delta").load(quarantine_path))
    row = claimed.agg(F.max(REDRIVEN)).first()
    newest = int(row[0]) if row is not None and row[0] is not None else None
    finished = {int(r["redrive_id"]) for r in read_records(config, REDRIVES, entity)}
    unfinished = newest if newest is not None and newest not in finished else None
    return unfinished, max(newest or 0, max(finished, default=0)) + 1


def delete_matching(
    spark: SparkSession, path: str, keys: DataFrame, on: list[str] = COORDINATES
) -> None:
    """Delete the rows of the table at `path` that match a row of `keys` on `on` (one MERGE)."""
    from delta.tables import DeltaTable

    match = " AND ".join(f"t.{c} = s.{c}" for c in on)
    table = DeltaTable.forPath(spark, path).alias("t")
    table.merge(keys.alias("s"), match).whenMatchedDelete().execute()


def read_records(config: Config, table: tuple[str, str], entity: str) -> list[dict[str, Any]]:
    """The rows of one of the service's own record tables (`ops.*`) about `entity`."""
    found = open_table(config, TableRef(*table).path(config))
    if found is None:
        return []
    return [r for r in found.to_pyarrow_table().to_pylist() if r["entity"] == entity]


def _claim(
    spark: SparkSession, quarantine_path: str, judged: DataFrame, redrive_id: int, entity: str
) -> None:
    """Mark the rows to re-drive with the re-drive's number: one commit."""
    from delta.tables import DeltaTable

    if REDRIVEN not in spark.read.format("delta").load(quarantine_path).columns:
        spark.sql(f"ALTER TABLE delta.`{quarantine_path}` ADD COLUMNS ({REDRIVEN} BIGINT)")
    taken = judged.where(F.col("_bronze") & ~F.col("_unchanged")).select(*COORDINATES)
    match = " AND ".join(f"t.{c} = s.{c}" for c in COORDINATES)
    spark.conf.set(USER_METADATA, commit_mark(f"redrive.{entity}.claim", redrive_id))
    try:
        (
            DeltaTable.forPath(spark, quarantine_path)
            .alias("t")
            .merge(
                taken.alias("s"),
                f"{match} AND t.{REDRIVEN} IS NULL AND t.stage <> 'duplicate'",
            )
            .whenMatchedUpdate(set={REDRIVEN: F.lit(redrive_id).cast("long")})
            .execute()
        )
    finally:
        spark.conf.unset(USER_METADATA)


def _apply(
    spark: SparkSession,
    config: Config,
    inputs: SilverInputs,
    entity: str,
    redrive_id: int,
    report: RedriveReport,
) -> None:
    """The claimed rows through Silver and Gold as batch `redrive_id` of `redrive.<entity>`."""
    paths = SilverPaths.of(config, entity)
    claimed = (
        spark.read.format("delta")
        .load(paths.quarantine)
        .where(F.col(REDRIVEN) == redrive_id)
        .select(*COORDINATES, "_kafka_timestamp", F.col("stage").alias("_was_stage"))
        .localCheckpoint()
    )
    rows = _bronze_rows(spark, config, entity, claimed)
    pipeline = f"redrive.{entity}"
    guard = CommitGuard(config, pipeline)
    writer = writer_for(spark, config, inputs, entity, guard)
    gold = GoldLayer(spark, config, guard)
    held = HeldFrames()
    try:
        with BatchScope(spark, pipeline, redrive_id):
            result = writer.process(held.keep(rows), redrive_id, None, held, late=False)
            report.take(result.counts)
            report.taken = int(result.counts.bronze)
            report.passing = report.to_silver + report.duplicate
            if result.fresh is not None:
                report.late_dates = _late_dates(claimed, result.fresh)
                summaries = gold.update(
                    {entity: result.fresh},
                    lambda e: guard.holding(paths.silver, redrive_id),
                    redrive_id,
                )
                report.gold = {name: int(s.upserted) for name, s in summaries.items()}
    finally:
        held.release()
    record_writes(config, guard, redrive_id, {entity: report.taken}, {entity: report.rules})


def _late_dates(claimed: DataFrame, fresh: DataFrame) -> list[str]:
    """The event dates of the rows that were late and now reached Silver."""
    late = claimed.where(F.col("_was_stage") == "late").select(*COORDINATES)
    dates = fresh.join(late, COORDINATES, "left_semi").select("date").distinct().collect()
    return sorted(str(r[0]) for r in dates if isinstance(r[0], date))


def redrives_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("redrive_id", pa.int64()),
            ("entity", pa.string()),
            ("selection", pa.string()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("selected", pa.int64()),
            ("unchanged", pa.int64()),
            ("taken", pa.int64()),
            ("to_silver", pa.int64()),
            ("duplicate", pa.int64()),
            ("quarantined", pa.int64()),
            ("late_dates", pa.string()),
            ("gold_tables", pa.string()),
            ("seconds", pa.float64()),
            ("date", pa.date32()),
        ]
    )


def _record(config: Config, selection: Selection, report: RedriveReport) -> None:
    """The re-drive's end, one row of ops.redrives (a re-drive without one is resumed)."""
    now = datetime.now(UTC)
    row = {
        "redrive_id": report.number,
        "entity": report.entity,
        "selection": selection.describe(),
        "at": now,
        "selected": report.selected,
        "unchanged": report.unchanged,
        "taken": report.taken,
        "to_silver": report.to_silver,
        "duplicate": report.duplicate,
        "quarantined": sum(report.quarantined.values()),
        "late_dates": ",".join(report.late_dates),
        "gold_tables": ",".join(sorted(report.gold)),
        "seconds": report.seconds,
        "date": now.date(),
    }
    append_rows(config, TableRef(*REDRIVES), [row], redrives_schema())
