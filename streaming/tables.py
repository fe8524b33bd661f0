"""Creating and opening Delta tables: one place for table properties and creation races."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from streaming.errors import ConfigError

if TYPE_CHECKING:
    from delta.tables import DeltaTable
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

# Readers outside Spark (delta-rs, DuckDB through Arrow) must read every table: keep to table
# features they support. The change data feed lets Gold follow MERGEs and DELETEs in Silver.
CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: StructType,
    partition_by: tuple[str, ...] = (),
    properties: Mapping[str, str] | None = None,
) -> DeltaTable:
    """Create the table at `path` if it does not exist yet; return it."""
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    try:
        return builder.execute()
    except Exception as exc:
        if "DELTA_CREATE_TABLE_SCHEME_MISMATCH" in str(exc) or "schema" in str(exc).lower():
            raise ConfigError(
                f"the table at {path} exists with a different schema",
                hint="a semantic change needs a new table and checkpoint; move the old one away",
            ) from None
        raise


def empty_like(spark: SparkSession, frame: DataFrame) -> DataFrame:
    return spark.createDataFrame([], frame.schema)
