"""Every table the service writes, by layer: what `serve` may offer and what a role's policy names.

A table is `<layer>.<name>` and lives at `<root>/<layer>/<name>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streaming.config import Config

if TYPE_CHECKING:
    import pyarrow as pa

LAYERS = ("bronze", "silver", "quarantine", "gold", "audit", "ops")
AUDIT_READS = ("audit", "reads")  # one row per read through `lakehouse serve`
RUN_HISTORY = ("ops", "runs")  # one row per micro-batch of every pipeline
AUDIT_MAINTENANCE = ("audit", "maintenance")  # one row per maintenance action
AUDIT_WRITES = ("audit", "writes")  # one row per Delta commit of a batch, re-drive, replay, erasure
REDRIVES = ("ops", "redrives")  # one row per finished quarantine re-drive
REPLAYS = ("ops", "replays")  # a row when a replay from Bronze starts, one when it ends
ERASURES = ("audit", "erasures")  # an erasure requested, applied, done (with its receipt)
TOMBSTONES = ("ops", "tombstones")  # the Kafka coordinates of erased records, never written again


@dataclass(frozen=True, order=True)
class TableRef:
    layer: str
    name: str

    def __str__(self) -> str:
        return f"{self.layer}.{self.name}"

    def path(self, config: Config) -> str:
        return config.table_path(self.layer, self.name)


def all_tables(config: Config) -> list[TableRef]:
    from streaming.gold.aggregates import TABLES

    tables = [
        TableRef(layer, e) for layer in ("bronze", "silver", "quarantine") for e in config.entities
    ]
    tables.append(TableRef("silver", "vehicle_state"))
    tables += [TableRef("gold", name) for name in TABLES]
    tables.append(TableRef(*AUDIT_READS))
    tables.append(TableRef(*AUDIT_MAINTENANCE))
    tables.append(TableRef(*AUDIT_WRITES))
    tables.append(TableRef(*RUN_HISTORY))
    tables.append(TableRef(*REDRIVES))
    tables.append(TableRef(*REPLAYS))
    tables.append(TableRef(*ERASURES))
    tables.append(TableRef(*TOMBSTONES))
    return sorted(tables, key=lambda t: (LAYERS.index(t.layer), t.name))


def parse(config: Config, name: str) -> TableRef | None:
    """`gold.demand_by_zone_hour` -> its TableRef; None for a name that is not a table."""
    layer, _, table = name.partition(".")
    ref = TableRef(layer, table)
    return ref if ref in all_tables(config) else None


def append_rows(
    config: Config, ref: TableRef, rows: list[dict[str, Any]], schema: pa.Schema
) -> None:
    """Append `rows` to a date-partitioned table from Python (delta-rs: one commit, no JVM).
    The service's own records (run history, audit) are written this way."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from streaming.s3.storage import delta_rs_uri, storage_options

    write_deltalake(
        delta_rs_uri(ref.path(config)),
        pa.Table.from_pylist(rows, schema=schema),
        mode="append",
        schema_mode="merge",  # a record that gained a column keeps its older rows
        partition_by=["date"],
        storage_options=storage_options(config),
    )
