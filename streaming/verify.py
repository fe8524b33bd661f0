"""The correctness oracles, as checks a user or a test can run at any time.

Bronze: the producer ledger (every acknowledged topic/partition/offset) against the set of
(topic, partition, offset) in the Bronze tables: 0 missing and 0 duplicated, exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming import bronze
from streaming.config import ENTITIES, Config
from streaming.errors import ConfigError

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
    by_topic: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicated == 0

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
        for path in (config.table_path(bronze.LAYER, e) for e in ENTITIES)
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
            F.count(F.when(F.col("stored").isNull(), 1)).alias("missing"),
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
        for name in ("ledger_rows", "bronze_rows", "missing", "duplicated", "unexpected")
    }
    return BronzeCheck(**total, by_topic=by_topic)
