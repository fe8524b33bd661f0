"""Creating Delta tables: one place for table properties and creation races.

Tables are created by delta-rs from Python (one small commit, about 10 ms) rather than through
Spark (about 0.4 s each, 21 tables on a fresh lake). Spark writes to them from then on. The
protocol is the one Spark would choose (reader 1, writer 2), so readers outside Spark (delta-rs,
DuckDB through Arrow) read every table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from streaming.config import Config
from streaming.s3.storage import delta_rs_uri, storage_options

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql.types import StructType

# A Delta checkpoint costs 2.5-9 s on two cores, and every table here takes a commit per
# micro-batch: at Delta's default of one per 10 commits a Silver batch (4-5 commits) paid for
# one every other batch. Tables checkpoint every 100 commits (40 one-row appends: 47 s -> 20 s);
# commits in between were measured not to slow down. Maintenance writes checkpoints too.
CHECKPOINT_INTERVAL = "100"
PROPERTIES = {"delta.checkpointInterval": CHECKPOINT_INTERVAL}
# Columns that identify a person (in clear or as a stable token): never in a table's statistics.
IDENTIFYING = frozenset(
    {"user_id", "email", "phone", "email_token", "phone_token", "email_masked", "phone_masked",
     "user_token"}
)  # fmt: skip


def open_table(config: Config, path: str) -> DeltaTable | None:
    """The table at `path` read from its log by delta-rs (no JVM); None if there is none."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(delta_rs_uri(path), storage_options=storage_options(config))
    except TableNotFoundError:
        return None


def exists(config: Config, path: str) -> bool:
    """Whether `path` holds a Delta table (read from its log, no JVM)."""
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(delta_rs_uri(path), storage_options(config))


def ensure_table(
    config: Config,
    path: str,
    schema: StructType,
    partition_by: tuple[str, ...] = (),
    properties: Mapping[str, str] | None = None,
) -> None:
    """Create the table at `path` (empty) unless it exists.

    An existing table is left as it is: its schema may have grown since (schema evolution adds
    columns in the writers), which is not a mismatch. Two processes creating the same table at
    once both succeed: the log's first commit is written only if absent, and the loser ignores
    the table the winner made.
    """
    from deltalake import DeltaTable
    from pyspark.sql.pandas.types import to_arrow_schema

    configuration = {**PROPERTIES, **(properties or {})}
    identifying = [f.name for f in schema.fields if f.name in IDENTIFYING]
    if identifying:
        # Delta keeps each file's min and max per column in its log, which outlives the file:
        # a user's identifier there would survive the user's erasure. No statistics for them.
        kept = [f"`{f.name}`" for f in schema.fields if f.name not in IDENTIFYING]
        configuration["delta.dataSkippingStatsColumns"] = ",".join(kept)
    DeltaTable.create(
        delta_rs_uri(path),
        to_arrow_schema(schema),
        mode="ignore",
        partition_by=list(partition_by) or None,
        configuration=configuration,
        storage_options=storage_options(config),
    )


def added_files(config: Config, path: str, version: int) -> frozenset[str] | None:
    """The names of the data files that commit `version` of the table added, read from the
    commit's own log entry; None if that entry is gone (log retention)."""
    import json
    from posixpath import basename
    from urllib.parse import unquote

    from streaming.s3.storage import location_filesystem

    fs, folder = location_filesystem(config, path)
    try:
        with fs.open_input_stream(f"{folder}/_delta_log/{version:020d}.json") as stream:
            lines = bytes(stream.read()).decode().splitlines()
    except FileNotFoundError:
        return None
    actions = (json.loads(line) for line in lines if line.strip())
    return frozenset(basename(unquote(a["add"]["path"])) for a in actions if "add" in a)
