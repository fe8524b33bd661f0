"""Silver in the one-pass pipeline: its inputs checked before Spark starts, its tables created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from streaming import bronze
from streaming.commits import CommitGuard
from streaming.config import Config
from streaming.contracts import Contract, load_contracts
from streaming.geofence import Geofences, Zone, read_geofences, read_zones, write_geofences
from streaming.pii import pads_frame
from streaming.schemas import load_schemas
from streaming.silver import transform
from streaming.silver.writer import SilverPaths, SilverWriter
from streaming.tables import ensure_table, exists

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

LAYER = "silver"


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


def silver_writers(
    spark: SparkSession, config: Config, inputs: SilverInputs, guard: CommitGuard
) -> dict[str, SilverWriter]:
    """One writer per entity, with every table it writes created; one geofence grid for all."""
    fences = _geofences(spark, config, inputs.zones)
    pads = pads_frame(spark, config.require_pii_key()).cache()
    return {
        entity: writer_for(spark, config, inputs, entity, guard, fences, pads)
        for entity in inputs.contracts
    }


def writer_for(
    spark: SparkSession,
    config: Config,
    inputs: SilverInputs,
    entity: str,
    guard: CommitGuard,
    fences: Geofences | None = None,
    pads: DataFrame | None = None,
) -> SilverWriter:
    """The Silver writer of one entity, with every table it writes created."""
    zones = fences if fences is not None else _geofences(spark, config, inputs.zones)
    if pads is None:
        pads = pads_frame(spark, config.require_pii_key()).cache()
    writer = SilverWriter(
        inputs.contracts[entity], SilverPaths.of(config, entity), zones, pads, guard
    )
    _ensure_outputs(spark, config, writer)
    return writer


def _geofences(spark: SparkSession, config: Config, zones: list[Zone]) -> Geofences:
    path = config.table_path(LAYER, "geofences")
    if not exists(config, path):
        write_geofences(config, zones, path)
    return read_geofences(spark, config, path).cache()


def _ensure_outputs(spark: SparkSession, config: Config, writer: SilverWriter) -> None:
    """Create every output table (empty) so readers and Gold's rebuilds always find them."""
    contract, paths = writer.contract, writer.paths
    needed = [paths.silver, paths.quarantine]
    if contract.entity == "telemetry":
        needed.append(paths.vehicle_state)
    if all(exists(config, path) for path in needed):
        return  # a restart: their schemas need not be worked out again (about 0.4 s each)
    empty = bronze.to_bronze(spark.createDataFrame([], bronze.KAFKA_SCHEMA))
    rows = writer.validate(empty)
    fresh = transform.enrich(rows, contract, writer.zones, writer.pads)
    silver_schema = transform.silver_rows(fresh, 0).schema
    ensure_table(config, paths.silver, silver_schema, contract.partition_by)
    ensure_table(config, paths.quarantine, transform.quarantine_rows(rows, 0).schema)
    if contract.entity == "telemetry":
        ensure_table(config, paths.vehicle_state, transform.state_rows(fresh).schema)
