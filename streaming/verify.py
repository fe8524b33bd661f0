"""The correctness oracles, as checks a user or a test can run at any time.

Bronze: the producer ledger (every acknowledged topic/partition/offset) against the set of
(topic, partition, offset) in the Bronze tables: 0 missing and 0 duplicated, exactly.
Silver: every Bronze row exactly once in Silver or quarantine (duplicates: stage `duplicate`).
Gold: each table equals a batch recomputation from Silver, row for row, compared both ways.
Run them when the queries have drained (`run --once`) or stopped: a running Gold lags Silver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming import bronze
from streaming.config import Config
from streaming.errors import ConfigError
from streaming.tables import exists

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LEDGER_SCHEMA = "topic STRING, partition INT, offset LONG, kind STRING"


@dataclass(frozen=True)
class BronzeCheck:
    ledger_rows: int
    bronze_rows: int
    missing: int
    duplicated: int
    unexpected: int
    erased: int = 0  # ledger rows an erasure removed (tombstoned): not missing
    unerased: int = 0  # tombstoned rows still in Bronze
    by_topic: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicated == 0 and self.unerased == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def read_ledgers(spark: SparkSession, ledgers: list[Path]) -> DataFrame:
    for ledger in ledgers:
        if not ledger.is_file():
            raise ConfigError(
                f"ledger {ledger} does not exist",
                hint="pass the file written by `lakehouse produce --ledger FILE`",
            )
    return spark.read.csv([str(p) for p in ledgers], header=True, schema=LEDGER_SCHEMA)


def bronze_coordinates(spark: SparkSession, config: Config) -> DataFrame | None:
    """(topic, partition, offset) of every row in every Bronze table that exists."""
    from delta.tables import DeltaTable

    frames = [
        spark.read.format("delta")
        .load(path)
        .select(
            F.col("_kafka_topic").alias("topic"),
            F.col("_kafka_partition").alias("partition"),
            F.col("_kafka_offset").alias("offset"),
        )
        for path in (config.table_path(bronze.LAYER, e) for e in config.entities)
        if DeltaTable.isDeltaTable(spark, path)
    ]
    if not frames:
        return None
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return union


def check_bronze(spark: SparkSession, config: Config, ledgers: list[Path]) -> BronzeCheck:
    """Ledger vs Bronze. Only topics named in the ledger are compared."""
    ledger = read_ledgers(spark, ledgers)
    keys = ["topic", "partition", "offset"]
    acked = ledger.groupBy(*keys).agg(F.count(F.lit(1)).alias("acked"))
    tombstones = _tombstones(spark, config)
    if tombstones is not None:
        acked = acked.join(tombstones, keys, "left")
    else:
        acked = acked.withColumn("erased", F.lit(None).cast("boolean"))
    landed = bronze_coordinates(spark, config)
    if landed is None:
        landed = spark.createDataFrame([], "topic STRING, partition INT, offset LONG")
    topics = acked.select("topic").distinct()
    stored = (
        landed.join(F.broadcast(topics), "topic")
        .groupBy(*keys)
        .agg(F.count(F.lit(1)).alias("stored"))
    )
    joined = acked.join(stored, keys, "full_outer")
    per_topic = (
        joined.groupBy("topic")
        .agg(
            F.coalesce(F.sum("acked"), F.lit(0)).alias("ledger_rows"),
            F.coalesce(F.sum("stored"), F.lit(0)).alias("bronze_rows"),
            F.count(F.when(F.col("stored").isNull() & F.col("erased").isNull(), 1)).alias(
                "missing"
            ),
            F.count("erased").alias("erased"),
            F.count(F.when(F.col("stored").isNotNull() & F.col("erased"), 1)).alias("unerased"),
            F.coalesce(F.sum(F.when(F.col("stored") > 1, F.col("stored") - 1)), F.lit(0)).alias(
                "duplicated"
            ),
            F.coalesce(F.sum(F.when(F.col("acked").isNull(), F.col("stored"))), F.lit(0)).alias(
                "unexpected"
            ),
        )
        .collect()
    )
    by_topic = {
        row["topic"]: {k: int(v) for k, v in row.asDict().items() if k != "topic"}
        for row in per_topic
    }
    total = {
        name: sum(t[name] for t in by_topic.values())
        for name in ("ledger_rows", "bronze_rows", "missing", "duplicated", "unexpected",
                     "erased", "unerased")
    }  # fmt: skip
    return BronzeCheck(**total, by_topic=by_topic)


def _tombstones(spark: SparkSession, config: Config) -> DataFrame | None:
    """(topic, partition, offset, erased=True) of every record an erasure removed."""
    from streaming.catalog import TOMBSTONES, TableRef

    path = TableRef(*TOMBSTONES).path(config)
    if not exists(config, path):
        return None
    return (
        spark.read.format("delta").load(path)
        .select(F.col("_kafka_topic").alias("topic"), F.col("_kafka_partition").alias("partition"),
                F.col("_kafka_offset").alias("offset"), F.lit(True).alias("erased"))
        .distinct()
    )  # fmt: skip


@dataclass(frozen=True)
class SilverCheck:
    """Silver's books for one entity: every Bronze row exactly once in one of three places."""

    entity: str
    bronze_rows: int
    silver: int
    quarantined: int
    duplicates: int
    missing: int
    repeated: int
    unexpected: int
    unnamed: int
    by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.missing == self.repeated == self.unexpected == self.unnamed == 0

    @property
    def violation(self) -> str:
        return (
            f"silver.{self.entity} books do not close: {self.missing} missing, {self.repeated} "
            f"repeated, {self.unexpected} unexpected, {self.unnamed} quarantined without a rule"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_silver(spark: SparkSession, config: Config, entity: str) -> SilverCheck:
    """bronze rows = silver + quarantined + duplicates, row for row (Kafka coordinates).

    Duplicates are the quarantine rows of stage `duplicate`; `quarantined` counts the others.
    Quarantine rows that a re-drive took (`_redriven_by`) are not counted: the re-drive put
    each of them in Silver or back in quarantine.
    """
    keys = ["_kafka_topic", "_kafka_partition", "_kafka_offset"]

    def load(layer: str, table: str) -> DataFrame:
        return spark.read.format("delta").load(config.table_path(layer, table))

    quarantine = load("quarantine", entity)
    if "_redriven_by" in quarantine.columns:  # a re-driven row counts where the re-drive put it
        quarantine = quarantine.where(F.col("_redriven_by").isNull())
    # Duplicates are quarantined with stage `duplicate`: counted apart from the rejected rows.
    place = F.when(F.col("stage") == "duplicate", "duplicate").otherwise("quarantine")
    placed = (
        load("silver", entity)
        .select(*keys, F.lit("silver").alias("place"))
        .unionByName(quarantine.select(*keys, place.alias("place")))
        .groupBy(*keys)
        .agg(F.count(F.lit(1)).alias("times"), F.first("place").alias("place"))
    )
    bronze_keys = load("bronze", entity).select(*keys).withColumn("in_bronze", F.lit(1))
    joined = bronze_keys.join(placed, keys, "full_outer")
    totals = joined.agg(
        F.count("in_bronze").alias("bronze_rows"),
        F.count(F.when(F.col("place") == "silver", 1)).alias("silver"),
        F.count(F.when(F.col("place") == "quarantine", 1)).alias("quarantined"),
        F.count(F.when(F.col("place") == "duplicate", 1)).alias("duplicates"),
        F.count(F.when(F.col("times").isNull(), 1)).alias("missing"),
        F.coalesce(F.sum(F.when(F.col("times") > 1, F.col("times") - 1)), F.lit(0)).alias(
            "repeated"
        ),
        F.count(F.when(F.col("in_bronze").isNull(), 1)).alias("unexpected"),
    ).first()
    unnamed = quarantine.where(
        F.col("stage").isNull() | F.col("rule_ids").isNull() | (F.size("rule_ids") == 0)
    ).count()
    stages = quarantine.groupBy("stage").count().collect()
    return SilverCheck(
        entity=entity,
        **{k: int(v) for k, v in totals.asDict().items()},  # type: ignore[union-attr]
        unnamed=unnamed,
        by_stage={row["stage"]: int(row["count"]) for row in stages},
    )


@dataclass(frozen=True)
class GoldCheck:
    """One Gold table against a batch recomputation from all of Silver, both ways."""

    table: str
    gold_rows: int
    expected_rows: int
    missing: int  # in the recomputation, not in Gold (or with other values)
    unexpected: int  # in Gold, not in the recomputation (or with other values)
    gold_newest: str | None
    silver_newest: str | None
    lag_seconds: float | None  # newest event time the recomputation has minus Gold's

    @property
    def ok(self) -> bool:
        return self.missing == self.unexpected == 0

    @property
    def violation(self) -> str:
        return (
            f"gold.{self.table} differs from a recomputation from Silver: {self.missing} rows "
            f"missing or different, {self.unexpected} unexpected"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_gold(spark: SparkSession, config: Config, name: str) -> GoldCheck:
    """Gold == recompute(Silver) as multisets of rows (every column but `_updated_at`)."""
    from streaming.gold.aggregates import TABLES, recompute
    from streaming.gold.table import UPDATED_AT

    table = TABLES[name]
    silver = {
        entity: spark.read.format("delta").load(config.table_path("silver", entity))
        for entity in table.sources
    }
    expected = recompute(table, silver).localCheckpoint()
    gold = spark.read.format("delta").load(config.table_path("gold", name)).drop(UPDATED_AT)
    actual = gold.select(*expected.columns).localCheckpoint()
    newest = [frame.agg(F.max("last_event_time")).first()[0] for frame in (actual, expected)]  # type: ignore[index]
    lag = (newest[1] - newest[0]).total_seconds() if all(newest) else None
    return GoldCheck(
        table=name,
        gold_rows=actual.count(),
        expected_rows=expected.count(),
        missing=expected.exceptAll(actual).count(),
        unexpected=actual.exceptAll(expected).count(),
        gold_newest=str(newest[0]) if newest[0] else None,
        silver_newest=str(newest[1]) if newest[1] else None,
        lag_seconds=lag,
    )


def run_checks(spark: SparkSession, config: Config, ledgers: list[Path]) -> dict[str, Any]:
    """Every oracle that applies to what exists: Bronze vs ledgers, Silver's books per entity."""
    from delta.tables import DeltaTable

    report: dict[str, Any] = {"violations": []}
    if ledgers:
        bronze_check = check_bronze(spark, config, ledgers)
        report["bronze"] = bronze_check.as_dict()
        if not bronze_check.ok:
            report["violations"].append(
                f"Bronze does not match the ledger: {bronze_check.missing} missing, "
                f"{bronze_check.duplicated} duplicated, {bronze_check.unerased} erased but present"
            )
    from streaming.gold.aggregates import TABLES

    layers: dict[str, tuple[Callable[..., SilverCheck | GoldCheck], Iterable[str]]] = {
        "silver": (check_silver, config.entities),
        "gold": (check_gold, TABLES),
    }
    for layer, (check, names) in layers.items():
        checks = {
            name: check(spark, config, name)
            for name in names
            if DeltaTable.isDeltaTable(spark, config.table_path(layer, name))
        }
        if checks:
            report[layer] = {name: c.as_dict() for name, c in checks.items()}
        report["violations"].extend(c.violation for c in checks.values() if not c.ok)
    if not ledgers and "silver" not in report:
        raise ConfigError("nothing to verify", hint="pass --ledger FILE or run Silver first")
    report["ok"] = not report["violations"]
    return report
