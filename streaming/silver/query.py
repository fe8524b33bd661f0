"""Wiring: Silver's named streaming queries `silver.<entity>` over the Bronze Delta tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streaming import bronze
from streaming.config import Config
from streaming.contracts import Contract, load_contracts
from streaming.geofence import Geofences, Zone, read_geofences, read_zones, write_geofences
from streaming.pii import pads_frame
from streaming.schemas import load_schemas
from streaming.silver import transform
from streaming.silver.writer import SilverPaths, SilverWriter
from streaming.spark import stream_writer
from streaming.tables import CHANGE_FEED, ensure_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

LAYER = "silver"
# Bronze bytes per Silver batch (about 900,000 telemetry rows). A task is never preempted, so in
# `run all` Bronze waits for Silver's running tasks to end: at 256 MB (3.5 M rows) they lasted
# so long that Bronze's freshness p95 at 25,000/s was 61 s; at 64 MB it was 21 s, and Gold
# committed twice as often, for a fixed cost of 12-15 s per Silver batch paid more often.
MAX_BYTES_PER_TRIGGER = "64m"


@dataclass(frozen=True)
class SilverInputs:
    """Everything Silver needs that can be wrong on disk, checked before any stream starts."""

    contracts: dict[str, Contract]
    zones: list[Zone]


def check_inputs(config: Config) -> SilverInputs:
    """Contracts, the PII key and the geofence file: one clear error each, before Spark starts."""
    config.require_pii_key()
    contracts = load_contracts(config.contracts_dir, load_schemas(config.schemas_dir))
    return SilverInputs(contracts=contracts, zones=read_zones(config.geofences_file))


def query_name(entity: str) -> str:
    return f"{LAYER}.{entity}"


def start_silver(
    spark: SparkSession, config: Config, inputs: SilverInputs, once: bool, observer: Any = None
) -> list[StreamingQuery]:
    fences = _geofences(spark, config, inputs.zones)  # one grid and one cached copy for all
    return [
        _start_one(spark, config, writer_for(spark, config, inputs, entity, observer, fences), once)
        for entity in inputs.contracts
    ]


def writer_for(
    spark: SparkSession,
    config: Config,
    inputs: SilverInputs,
    entity: str,
    observer: Any = None,
    fences: Geofences | None = None,
) -> SilverWriter:
    """The foreachBatch writer of one entity, with every table it writes created."""
    zones = fences if fences is not None else _geofences(spark, config, inputs.zones)
    pads = pads_frame(spark, config.require_pii_key()).cache()
    contract = inputs.contracts[entity]
    paths = SilverPaths.of(config, entity)
    bronze.ensure_bronze_table(spark, config, entity)
    _ensure_outputs(spark, contract, paths, zones, pads)
    return SilverWriter(contract, paths, zones, pads, query_name(entity), observer)


def _geofences(spark: SparkSession, config: Config, zones: list[Zone]) -> Geofences:
    from delta.tables import DeltaTable

    path = config.table_path(LAYER, "geofences")
    if not DeltaTable.isDeltaTable(spark, path):
        write_geofences(spark, zones, path)
    return read_geofences(spark, path).cache()


def _start_one(
    spark: SparkSession, config: Config, silver_writer: SilverWriter, once: bool
) -> StreamingQuery:
    entity = silver_writer.contract.entity
    name = query_name(entity)
    source = (
        spark.readStream.format("delta")
        .option("maxBytesPerTrigger", MAX_BYTES_PER_TRIGGER)
        .option("maxFilesPerTrigger", str(config.stream.max_files_per_trigger))
        .load(config.table_path(bronze.LAYER, entity))
    )
    return stream_writer(source, name, config, once).foreachBatch(silver_writer).start()


def _ensure_outputs(
    spark: SparkSession, contract: Contract, paths: SilverPaths, zones: Geofences, pads: DataFrame
) -> None:
    """Create every output table (empty) so MERGE targets and Gold's sources always exist."""
    empty = bronze.to_bronze(spark.createDataFrame([], bronze.KAFKA_SCHEMA))
    rows = transform.validate(empty, contract)
    fresh = transform.enrich(rows, contract, zones, pads)
    ensure_table(
        spark,
        paths.silver,
        transform.silver_rows(fresh, 0).schema,
        contract.partition_by,
        CHANGE_FEED,
    )
    ensure_table(spark, paths.quarantine, transform.quarantine_rows(rows, 0).schema)
    _, duplicates = transform.split_duplicates(transform.mark_duplicates(fresh, contract, None))
    ensure_table(spark, paths.duplicates, duplicates.withColumn("_batch_id", _long()).schema)
    if contract.entity == "telemetry":
        # No change data feed: nothing follows this table's changes, and every batch rewrites
        # it (see SilverWriter._update_vehicle_state), so a feed would write each row again.
        ensure_table(spark, paths.vehicle_state, transform.state_rows(fresh).schema)


def _long() -> Any:
    from pyspark.sql import functions as F

    return F.lit(0).cast("long")
