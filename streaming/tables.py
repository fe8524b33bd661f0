"""Creating and opening Delta tables: one place for table properties and creation races."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from delta.tables import DeltaTable
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

# Readers outside Spark (delta-rs, DuckDB through Arrow) must read every table: keep to table
# features they support. The change data feed lets Gold follow MERGEs and DELETEs in Silver.
CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}
_TXN_APP, _TXN_VERSION = (
    "spark.databricks.delta.write.txnAppId",
    "spark.databricks.delta.write.txnVersion",
)


@contextmanager
def idempotent(spark: SparkSession, app_id: str, batch_id: int) -> Iterator[None]:
    """Every Delta write inside carries (app id, batch id): Delta skips a write it has already
    committed for that pair, so a replayed foreachBatch changes nothing."""
    spark.conf.set(_TXN_APP, app_id)
    spark.conf.set(_TXN_VERSION, str(batch_id))
    try:
        yield
    finally:
        spark.conf.unset(_TXN_APP)
        spark.conf.unset(_TXN_VERSION)


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: StructType,
    partition_by: tuple[str, ...] = (),
    properties: Mapping[str, str] | None = None,
) -> DeltaTable:
    """Create the table at `path` if it does not exist yet; return it.

    An existing table is returned as it is: its schema may have grown since (schema evolution
    adds columns in the writers' MERGEs), which is not a mismatch.
    """
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, path):
        return DeltaTable.forPath(spark, path)
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    return builder.execute()
