"""Bronze: Kafka records -> `bronze/<entity>` Delta tables, the first layer of each batch.

Input: one Kafka topic (any bytes: JSON, Avro, or garbage). Output: an append-only Delta table
with the raw key, value and headers and the Kafka coordinates (`_kafka_topic`, `_kafka_partition`,
`_kafka_offset`, `_kafka_timestamp`), the ingestion time `_ingested_at`, partitioned by
year/month/day/hour of the Kafka timestamp (UTC). Key: (topic, partition, offset), unique.
Delivery: exactly-once. The pipeline's checkpoint replays the same offset range after a crash,
and its `CommitGuard` skips the append of a batch that a table already holds.
Nothing is quarantined here: Bronze never rejects or rewrites a record; Silver judges them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from streaming.config import Config

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

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
    from streaming.tables import ensure_table, exists

    path = config.table_path(LAYER, entity)
    if exists(config, path):
        return
    empty = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA))
    ensure_table(config, path, empty.schema, PARTITION_COLUMNS)


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


def read_topics(spark: SparkSession, config: Config, entities: list[str]) -> DataFrame:
    """One Kafka source over the entities' topics, with the security options passed through."""
    reader = (
        spark.readStream.format("kafka")
        .options(**config.kafka.spark_options())
        .option("subscribe", ",".join(config.topic(e).name for e in entities))
        .option("startingOffsets", config.stream.starting_offsets)
        .option("failOnDataLoss", str(config.stream.fail_on_data_loss).lower())
        .option("includeHeaders", "true")
    )
    if config.stream.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(config.stream.max_offsets_per_trigger))
    return reader.load()


def append(rows: DataFrame, path: str) -> None:
    """One batch's Bronze rows of one topic, appended (one commit)."""
    rows.write.format("delta").mode("append").partitionBy(*PARTITION_COLUMNS).save(path)
