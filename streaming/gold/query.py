"""Wiring: Gold's named streaming queries `gold.<table>` over Silver's change data feed."""

from __future__ import annotations

from functools import reduce
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming.config import Config
from streaming.errors import SetupError
from streaming.gold.aggregates import SILVER_VERSION, TABLES, UPDATED_AT, GoldTable, recompute
from streaming.gold.writer import GoldWriter
from streaming.spark import stream_writer
from streaming.tables import ensure_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

LAYER = "gold"


def query_name(table: str) -> str:
    return f"{LAYER}.{table}"


def silver_paths(config: Config, table: GoldTable) -> dict[str, str]:
    return {entity: config.table_path("silver", entity) for entity in table.sources}


def require_silver(spark: SparkSession, config: Config) -> None:
    """Gold reads Silver's tables: each must exist (Silver creates them when it first starts)."""
    from delta.tables import DeltaTable

    for entity in sorted({e for t in TABLES.values() for e in t.sources}):
        path = config.table_path("silver", entity)
        if not DeltaTable.isDeltaTable(spark, path):
            raise SetupError(
                f"Silver table {path} does not exist yet",
                hint="start Silver first (`lakehouse run silver`); it creates its tables at once",
            )


def start_gold(
    spark: SparkSession, config: Config, once: bool, observer: Any = None
) -> list[StreamingQuery]:
    require_silver(spark, config)
    return [_start_one(spark, config, table, once, observer) for table in TABLES.values()]


def ensure_gold_table(spark: SparkSession, config: Config, table: GoldTable) -> str:
    """Create the Gold table (empty, with the schema a recomputation would have)."""
    path = config.table_path(LAYER, table.name)
    empty = {
        entity: spark.read.format("delta").load(p).limit(0)
        for entity, p in silver_paths(config, table).items()
    }
    rows = recompute(table, empty)
    if table.extend is not None:
        rows = rows.withColumn(SILVER_VERSION, F.lit(None).cast("long"))
    schema = rows.withColumn(UPDATED_AT, F.current_timestamp()).schema
    ensure_table(spark, path, schema, table.partition_by)
    return path


def touched_keys(table: GoldTable, changes: dict[str, DataFrame]) -> DataFrame:
    """The Gold keys (and anchor dates) that Silver change rows touch, over every source.

    Every change type counts: an insert, both images of an update and a delete each touch the
    key of the row they carry. For a table with an extension, each change also carries its
    type, its Silver version and the columns the extension reads.
    """
    frames = []
    for entity, key_columns in table.sources.items():
        columns = key_columns()
        if table.extend is not None:
            extra = ("_change_type", "_commit_version", *table.extend.columns)
            columns |= {c: F.col(c) for c in extra if c not in columns}
        frames.append(
            changes[entity]
            .select(*[v.alias(k) for k, v in columns.items()])
            .where(reduce(lambda a, b: a & b, [F.col(k).isNotNull() for k in key_columns()]))
        )
    return reduce(lambda a, b: a.unionByName(b), frames)


def _change_streams(spark: SparkSession, config: Config, table: GoldTable) -> dict[str, DataFrame]:
    return {
        entity: spark.readStream.format("delta")
        .option("readChangeFeed", "true")
        .option("maxFilesPerTrigger", str(config.stream.max_files_per_trigger))
        .load(config.table_path("silver", entity))
        for entity in table.sources
    }


def _start_one(
    spark: SparkSession, config: Config, table: GoldTable, once: bool, observer: Any
) -> StreamingQuery:
    name = query_name(table.name)
    path = ensure_gold_table(spark, config, table)
    writer = GoldWriter(table, path, silver_paths(config, table), name, observer)
    keys = touched_keys(table, _change_streams(spark, config, table))
    return stream_writer(keys, name, config, once).foreachBatch(writer).start()
