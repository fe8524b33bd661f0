"""Bronze: Kafka topic -> `bronze/<entity>` Delta table, one named query `bronze.<entity>` each.

Input: one Kafka topic (any bytes: JSON, Avro, or garbage). Output: an append-only Delta table
with the raw key, value and headers and the Kafka coordinates (`_kafka_topic`, `_kafka_partition`,
`_kafka_offset`, `_kafka_timestamp`), the ingestion time `_ingested_at`, partitioned by
year/month/day/hour of the Kafka timestamp (UTC). Key: (topic, partition, offset), unique.
Delivery: exactly-once. The Delta sink records each batch id in the table's log and skips a batch
it already committed, and the checkpoint replays the same offset range after a crash.
Nothing is quarantined here: Bronze never rejects or rewrites a record; Silver judges them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from streaming.config import Config
from streaming.spark import stream_writer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

LAYER = "bronze"
PARTITION_COLUMNS = ("year", "month", "day", "hour")
BRONZE_COLUMNS = (
    "key",
    "value",
    "headers",
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_timestamp",
    "_kafka_timestamp_type",
    "_ingested_at",
    *PARTITION_COLUMNS,
)


# The Kafka source's columns: Bronze's schema derives from them (an empty table can be created
# before the first record arrives, so Silver can start on a quiet topic).
KAFKA_SCHEMA = (
    "key BINARY, value BINARY, topic STRING, partition INT, offset LONG, timestamp TIMESTAMP, "
    "timestampType INT, headers ARRAY<STRUCT<key: STRING, value: BINARY>>"
)


def ensure_bronze_table(spark: SparkSession, config: Config, entity: str) -> None:
    from streaming.tables import ensure_table

    empty = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA))
    ensure_table(spark, config.table_path(LAYER, entity), empty.schema, PARTITION_COLUMNS)


def to_bronze(kafka_records: DataFrame) -> DataFrame:
    """Kafka source rows -> Bronze rows. Pure: works on a batch or a streaming DataFrame."""
    kafka_time = F.col("timestamp")
    return kafka_records.select(
        F.col("key"),
        F.col("value"),
        F.col("headers"),
        F.col("topic").alias("_kafka_topic"),
        F.col("partition").alias("_kafka_partition"),
        F.col("offset").alias("_kafka_offset"),
        kafka_time.alias("_kafka_timestamp"),
        F.col("timestampType").alias("_kafka_timestamp_type"),
        F.current_timestamp().alias("_ingested_at"),
        F.year(kafka_time).alias("year"),
        F.month(kafka_time).alias("month"),
        F.dayofmonth(kafka_time).alias("day"),
        F.hour(kafka_time).alias("hour"),
    )


def query_name(entity: str) -> str:
    return f"{LAYER}.{entity}"


def read_topic(spark: SparkSession, config: Config, entity: str) -> DataFrame:
    """The Kafka source for one topic, with the security options passed through."""
    reader = (
        spark.readStream.format("kafka")
        .options(**config.kafka.spark_options())
        .option("subscribe", config.topic(entity).name)
        .option("startingOffsets", config.stream.starting_offsets)
        .option("failOnDataLoss", str(config.stream.fail_on_data_loss).lower())
        .option("includeHeaders", "true")
    )
    if config.stream.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(config.stream.max_offsets_per_trigger))
    return reader.load()


def start_bronze(spark: SparkSession, config: Config, entity: str, once: bool) -> StreamingQuery:
    """Wire `to_bronze` into the named query `bronze.<entity>` and start it."""
    name = query_name(entity)
    ensure_bronze_table(spark, config, entity)
    bronze = to_bronze(read_topic(spark, config, entity)).observe(
        name,
        F.max("_kafka_timestamp").alias("max_kafka_timestamp"),
        F.count(F.lit(1)).alias("rows"),
    )
    writer = stream_writer(bronze, name, config, once).format("delta").outputMode("append")
    return writer.partitionBy(*PARTITION_COLUMNS).start(config.table_path(LAYER, entity))
