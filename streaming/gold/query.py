"""Gold in the one-pass pipeline: each batch's fresh Silver rows into every Gold table."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from streaming.commits import CommitGuard
from streaming.config import Config
from streaming.gold.aggregates import TABLES, recompute
from streaming.gold.table import SILVER_VERSION, UPDATED_AT, GoldTable
from streaming.gold.writer import GoldSummary, GoldWriter
from streaming.tables import ensure_table, exists

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LAYER = "gold"


def silver_paths(config: Config, table: GoldTable) -> dict[str, str]:
    return {entity: config.table_path("silver", entity) for entity in table.sources}


def ensure_gold_table(spark: SparkSession, config: Config, table: GoldTable) -> str:
    """Create the Gold table (empty, with the schema a recomputation would have)."""
    path = config.table_path(LAYER, table.name)
    if exists(config, path):
        return path
    empty = {
        entity: spark.read.format("delta").load(p).limit(0)
        for entity, p in silver_paths(config, table).items()
    }
    rows = recompute(table, empty)
    if table.extend is not None:
        rows = rows.withColumn(SILVER_VERSION, F.lit(None).cast("long"))
    schema = rows.withColumn(UPDATED_AT, F.current_timestamp()).schema
    ensure_table(config, path, schema, table.partition_by)
    return path


def touched_keys(table: GoldTable, changes: dict[str, DataFrame]) -> DataFrame | None:
    """The Gold keys (and anchor dates) that Silver change rows touch, over the sources given.

    Every change type counts: an insert, both images of an update and a delete each touch the
    key of the row they carry. For a table with an extension, each change also carries its
    type, its Silver version and the columns the extension reads.
    """
    frames = []
    for entity, key_columns in table.sources.items():
        if entity not in changes:
            continue
        columns = key_columns()
        if table.extend is not None:
            extra = ("_change_type", "_commit_version", *table.extend.columns)
            columns |= {c: F.col(c) for c in extra if c not in columns}
        frames.append(
            changes[entity]
            .select(*[v.alias(k) for k, v in columns.items()])
            .where(reduce(lambda a, b: a & b, [F.col(k).isNotNull() for k in key_columns()]))
        )
    return reduce(lambda a, b: a.unionByName(b), frames) if frames else None


def as_inserts(fresh: DataFrame, version: int | None) -> DataFrame:
    """A batch's fresh Silver rows as change rows: inserts at the Silver version holding them
    (None where no table extended by that source needs it)."""
    return fresh.withColumns(
        {"_change_type": F.lit("insert"), "_commit_version": F.lit(version).cast("long")}
    )


class GoldLayer:
    """Every Gold table's writer, created with its table."""

    def __init__(self, spark: SparkSession, config: Config, guard: CommitGuard) -> None:
        self.writers = {
            name: GoldWriter(
                table, ensure_gold_table(spark, config, table), silver_paths(config, table), guard
            )
            for name, table in TABLES.items()
        }

    def extended_sources(self) -> set[str]:
        """The Silver entities of tables with an extension: their changes carry a version."""
        return {e for w in self.writers.values() if w.table.extend for e in w.table.sources}

    def update(
        self,
        fresh: dict[str, DataFrame],
        silver_version: Callable[[str], int],
        batch_id: int,
        each: Callable[[list[str], Callable[[str], Any]], list[Any]] | None = None,
    ) -> dict[str, GoldSummary]:
        """A batch's fresh Silver rows per entity into every Gold table they touch; the summary
        of each table that changed. `silver_version(entity)`: the Silver version holding the
        rows (read only for the sources of an extended table); `each`: how the tables are run
        (side by side in the pipeline's threads; in order by default)."""
        versioned = self.extended_sources()
        changes = {
            entity: as_inserts(rows, silver_version(entity) if entity in versioned else None)
            for entity, rows in fresh.items()
        }
        names = self.tables_for(set(changes))
        run = each or (lambda items, work: [work(item) for item in items])
        summaries = run(names, lambda name: self.add(name, changes, batch_id))
        return {n: s for n, s in zip(names, summaries, strict=True) if s is not None}

    def tables_for(self, entities: set[str]) -> list[str]:
        """The Gold tables that rows of `entities` touch."""
        return [n for n, w in self.writers.items() if entities & set(w.table.sources)]

    def add(self, name: str, fresh: dict[str, DataFrame], batch_id: int) -> GoldSummary | None:
        """A batch's fresh Silver rows (inserts, stamped with their Silver version) into one
        table: additively where the table is kept by partials, else through its touched keys."""
        writer = self.writers[name]
        if writer.table.additive is not None:
            return writer.add(
                {e: f for e, f in fresh.items() if e in writer.table.sources}, batch_id
            )
        return self.apply(name, fresh, batch_id)

    def apply(self, name: str, changes: dict[str, DataFrame], batch_id: int) -> GoldSummary | None:
        """Changes of any type (a deletion's too) into one table, by rebuilding the keys they
        touch from Silver (and extending where the table allows)."""
        writer = self.writers[name]
        keys = touched_keys(writer.table, changes)
        return writer.apply(keys, batch_id) if keys is not None else None
