"""Creating and opening Delta tables: one place for table properties and creation races."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from delta.tables import DeltaTable
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

# Readers outside Spark (delta-rs, DuckDB through Arrow) must read every table: keep to table
# features they support.


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
