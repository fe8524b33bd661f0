"""Geofences: NYC TLC taxi zones -> `silver/geofences`, and points -> the zone they lie in.

Input: the TLC taxi zones GeoJSON (WGS84 lon/lat; `LocationID`, `zone`, `borough`) and any
DataFrame with latitude/longitude columns. Output: the `silver/geofences` Delta table (zone_id,
zone_name, borough, geometry_wkt) and, per point row, `zone_id` / `zone_name`
(null outside every zone or when a coordinate is null).

Border rule (the same as `streaming.simulator.zones.ZoneIndex.locate`): a point belongs to the
zone with the lowest LocationID among all zones that cover it (interior or boundary).

Two steps. A grid of square cells over the zones is classified once, with shapely, when the
geofences are loaded: a cell lies wholly inside one zone and touches no other (its zone is
known), touches no zone (no zone), or is a border cell. A point's cell is arithmetic on its
coordinates and one broadcast hash join; only points in border cells go through Sedona's
ST_Intersects broadcast index join, which finds every covering zone, and the lowest id per row
key is joined back. Each cell is tested enlarged by a margin far above floating-point rounding,
so a point the arithmetic puts in a cell is inside the box that was tested. Points on a border
and in the slivers where the TLC polygons overlap (about 300 pairs, each ~1e-12 deg^2) are
always in border cells, and the wide rows never go through the spatial join.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyspark.sql import functions as F

from streaming.config import Config
from streaming.errors import ConfigError
from streaming.s3.storage import delta_rs_uri, storage_options
from streaming.settings import BY_ENV

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

DEFAULT_ZONES_FILE: Path = BY_ENV["LAKEHOUSE_GEOFENCES"].default
GEOFENCE_COLUMNS = ("zone_id", "zone_name", "borough", "geometry_wkt")
GEOFENCE_SCHEMA = "zone_id INT, zone_name STRING, borough STRING, geometry_wkt STRING"
_FIX = (
    "set LAKEHOUSE_GEOFENCES to a TLC taxi zones GeoJSON file (default data/nyc/taxi_zones.geojson)"
)
# Internal column names, unlikely to collide with a caller's columns; dropped before returning.
_PT, _ZID, _ZNAME, _GEOM, _BEST = "__gf_pt", "__gf_zid", "__gf_zname", "__gf_geom", "__gf_best"
_CELL, _CZID, _CZNAME, _BORDER = "__gf_cell", "__gf_czid", "__gf_czname", "__gf_border"
GRID_CELLS = 250_000  # cells over the zones' bounding box: ~110 m squares over NYC
_GRID_SPLIT = 4  # a border cell is split into 4 x 4 children, down to the finest size
_GRID_LEVELS = 3  # finest cells are 4**3 = 64 times smaller than the first level's
_GRID_MARGIN = 1e-6  # each cell is tested enlarged by this fraction of the finest size


@dataclass(frozen=True)
class Zone:
    """One geofence: a TLC taxi zone with its geometry as full-precision WKT."""

    zone_id: int
    zone_name: str
    borough: str
    wkt: str


def read_zones(path: Path = DEFAULT_ZONES_FILE) -> list[Zone]:
    """Parse the taxi zones GeoJSON into zones ordered by zone_id; any defect is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"geofence file {path} does not exist", hint=_FIX)
    try:
        features = json.loads(path.read_text(encoding="utf-8"))["features"]
        zones = [_zone(feature) for feature in features]
    except (OSError, ValueError, KeyError, TypeError, shapely.errors.GEOSException) as exc:
        raise ConfigError(
            f"geofence file {path} is not a valid zones file: {exc}", hint=_FIX
        ) from None
    ids = [zone.zone_id for zone in zones]
    if not zones or len(set(ids)) != len(ids):
        raise ConfigError(f"geofence file {path} has no zones or repeats a LocationID", hint=_FIX)
    return sorted(zones, key=lambda zone: zone.zone_id)


def _zone(feature: dict) -> Zone:
    props = feature["properties"]
    geometry = shapely.from_geojson(json.dumps(feature["geometry"]))
    if geometry.geom_type not in ("Polygon", "MultiPolygon") or geometry.is_empty:
        raise ValueError(f"LocationID {props['LocationID']} is a {geometry.geom_type}")
    if not geometry.is_valid:
        # Point-in-polygon answers on a self-intersecting ring differ between GEOS and JTS.
        reason = shapely.is_valid_reason(geometry)
        raise ValueError(f"LocationID {props['LocationID']} is invalid: {reason}")
    # rounding_precision=-1 writes every coordinate so that it parses back to the same double.
    wkt = shapely.to_wkt(geometry, rounding_precision=-1)
    return Zone(int(props["LocationID"]), str(props["zone"]), str(props["borough"]), wkt)


def zones_frame(spark: SparkSession, zones: list[Zone]) -> DataFrame:
    """Zones as a plain, Delta-storable frame (geometry as WKT, no Sedona UDT)."""
    rows = [(zone.zone_id, zone.zone_name, zone.borough, zone.wkt) for zone in zones]
    return spark.createDataFrame(rows, GEOFENCE_SCHEMA)


@dataclass(frozen=True)
class ZoneGrid:
    """Square cells over the zones: cell = iy * nx + ix, ix = floor((lon - x0) / size).

    `cells` / `zone_ids` list every cell that is not empty: a zone id, or -1 for a border cell
    (covered by more than one zone, or partly by one). Cells not listed touch no zone.
    """

    x0: float
    y0: float
    size: float
    nx: int
    ny: int
    cells: np.ndarray
    zone_ids: np.ndarray

    def cell_of(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Cell of each point, as `assign_zones` computes it (-1 outside the grid)."""
        ix = np.floor((np.asarray(lon) - self.x0) / self.size)
        iy = np.floor((np.asarray(lat) - self.y0) / self.size)
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        return np.where(inside, iy * self.nx + ix, -1).astype(np.int64)

    def cell_column(self, lat: str, lon: str) -> Column:
        ix = F.floor((F.col(f"`{lon}`").cast("double") - F.lit(self.x0)) / F.lit(self.size))
        iy = F.floor((F.col(f"`{lat}`").cast("double") - F.lit(self.y0)) / F.lit(self.size))
        inside = ix.between(0, self.nx - 1) & iy.between(0, self.ny - 1)
        return F.when(inside, (iy * self.nx + ix).cast("int"))


def build_grid(zones: list[Zone], cells: int = GRID_CELLS) -> ZoneGrid:
    """Classify the grid's cells against the zones (shapely; ~1-2 s for the TLC zones).

    Coarse cells first: a coarse cell inside one zone or outside all is settled at once, and
    only border cells are split, level by level, down to the finest size.
    """
    geoms = shapely.from_wkt([zone.wkt for zone in zones])
    shapely.prepare(geoms)  # each zone is tested against many cells
    ids = np.array([zone.zone_id for zone in zones], dtype=np.int64)
    x_min, y_min, x_max, y_max = shapely.total_bounds(geoms).tolist()
    coarse_factor = _GRID_SPLIT**_GRID_LEVELS
    size = math.sqrt(max((x_max - x_min) * (y_max - y_min), 1e-18) / cells)
    x0, y0 = x_min - size, y_min - size  # a margin of one cell: edge points are inside
    nx = math.ceil((x_max + size - x0) / size / coarse_factor) * coarse_factor
    ny = math.ceil((y_max + size - y0) / size / coarse_factor) * coarse_factor
    margin = size * _GRID_MARGIN
    found_cells, found_zones = [], []
    ix, iy = (
        a.ravel()
        for a in np.meshgrid(np.arange(nx // coarse_factor), np.arange(ny // coarse_factor))
    )
    factor = coarse_factor
    while True:
        step = size * factor
        boxes = shapely.box(
            x0 + ix * step - margin,
            y0 + iy * step - margin,
            x0 + (ix + 1) * step + margin,
            y0 + (iy + 1) * step + margin,
        )
        # The tree holds the cells: each prepared zone is a query, not each cell.
        zone_idx, box_idx = shapely.STRtree(boxes).query(geoms, predicate="intersects")
        hits = np.bincount(box_idx, minlength=len(boxes))
        alone = hits[box_idx] == 1
        inside = np.zeros(len(boxes), dtype=bool)
        inside[box_idx[alone]] = shapely.contains_properly(
            geoms[zone_idx[alone]], boxes[box_idx[alone]]
        )
        owner = np.full(len(boxes), -1, dtype=np.int64)
        owner[box_idx[alone]] = ids[zone_idx[alone]]
        fine = _fine_cells(ix[inside], iy[inside], factor, nx)
        found_cells.append(fine.ravel())
        found_zones.append(np.repeat(owner[inside], factor * factor))
        border = (hits > 0) & ~inside
        if factor == 1:
            found_cells.append(iy[border] * nx + ix[border])
            found_zones.append(np.full(int(border.sum()), -1, dtype=np.int64))
            break
        offsets = np.arange(_GRID_SPLIT)
        ix = (ix[border, None, None] * _GRID_SPLIT + offsets[None, None, :]).repeat(_GRID_SPLIT, 1)
        iy = (iy[border, None, None] * _GRID_SPLIT + offsets[None, :, None]).repeat(_GRID_SPLIT, 2)
        ix, iy = ix.ravel(), iy.ravel()
        factor //= _GRID_SPLIT
    return ZoneGrid(x0, y0, size, nx, ny, np.concatenate(found_cells), np.concatenate(found_zones))


def _fine_cells(ix: np.ndarray, iy: np.ndarray, factor: int, nx: int) -> np.ndarray:
    """The finest cells inside each of the cells (ix, iy) that are `factor` finest cells wide."""
    offsets = np.arange(factor)
    fine_x = ix[:, None, None] * factor + offsets[None, None, :]
    fine_y = iy[:, None, None] * factor + offsets[None, :, None]
    return fine_y * nx + fine_x


@dataclass(frozen=True)
class Geofences:
    """What `assign_zones` needs: the zones (for Sedona) and the classified grid of cells."""

    zones: DataFrame
    grid: ZoneGrid
    cells: DataFrame

    def cache(self) -> Geofences:
        return Geofences(self.zones.cache(), self.grid, self.cells.cache())


def geofences(spark: SparkSession, zones: list[Zone]) -> Geofences:
    """Geofences of `zones`, with a Sedona geometry column and the grid classified."""
    frame = zones_frame(spark, zones).withColumn("geometry", F.expr("ST_GeomFromWKT(geometry_wkt)"))
    return _with_grid(spark, frame, zones)


def _with_grid(spark: SparkSession, frame: DataFrame, zones: list[Zone]) -> Geofences:
    grid = build_grid(zones)
    names = {zone.zone_id: zone.zone_name for zone in zones}
    # Runs of consecutive cells with the same zone go to the JVM (~14,000 rows for the TLC
    # zones, not ~95,000 cells) and are expanded there.
    order = np.argsort(grid.cells)
    cells, owners = grid.cells[order], grid.zone_ids[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(cells) != 1) | (np.diff(owners) != 0)])
    ends = np.r_[starts[1:], len(cells)] - 1
    runs = [
        (first, last, None if zone < 0 else zone, names.get(zone), True if zone < 0 else None)
        for first, last, zone in zip(
            cells[starts].tolist(), cells[ends].tolist(), owners[starts].tolist(), strict=True
        )
    ]
    schema = f"first INT, last INT, {_CZID} INT, {_CZNAME} STRING, {_BORDER} BOOLEAN"
    expanded = spark.createDataFrame(runs, schema).select(
        F.explode(F.sequence("first", "last")).alias(_CELL), _CZID, _CZNAME, _BORDER
    )
    return Geofences(frame, grid, expanded)


def write_geofences(config: Config, zones: list[Zone], path: str) -> None:
    """Replace the geofences Delta table at `path` (this is `silver/geofences`): 263 rows,
    written from Python (delta-rs), no Spark job."""
    import pyarrow as pa
    from deltalake import write_deltalake

    columns = list(zip(*[(z.zone_id, z.zone_name, z.borough, z.wkt) for z in zones], strict=True))
    types = (pa.int32(), pa.string(), pa.string(), pa.string())
    schema = pa.schema(list(zip(GEOFENCE_COLUMNS, types, strict=True)))
    write_deltalake(
        delta_rs_uri(path),
        pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema),
        mode="overwrite",
        schema_mode="overwrite",
        storage_options=storage_options(config),
    )


def read_geofences(spark: SparkSession, config: Config, path: str) -> Geofences:
    """The geofences table with a Sedona `geometry` column parsed from its WKT, and its grid
    (cache it: the polygons are then parsed once, not in every micro-batch). The table is read
    from Python (delta-rs): 263 rows."""
    from streaming.tables import open_table

    table = open_table(config, path)
    if table is None:
        raise ConfigError(f"{path} holds no geofence table", hint="it is written on first start")
    rows = table.to_pyarrow_table(columns=list(GEOFENCE_COLUMNS)).to_pylist()
    zones = [Zone(r["zone_id"], r["zone_name"], r["borough"], r["geometry_wkt"]) for r in rows]
    return geofences(spark, sorted(zones, key=lambda zone: zone.zone_id))


def assign_zones(
    points: DataFrame, fences: Geofences, lat: str, lon: str, key: list[str], prefix: str = ""
) -> DataFrame:
    """`points` plus `{prefix}zone_id` INT and `{prefix}zone_name`, one output row per input row.

    `fences` comes from read_geofences or geofences(); `key` must be unique per point row (e.g.
    Kafka partition and offset). `points` is read twice, for the spatial join of the keys in
    border cells and for the join back: persist it if its lineage is expensive. The join back
    broadcasts the grid (an int per cell) and the border keys located (about 30 bytes a row), so
    the wide rows are never shuffled.
    """
    index_side = F.broadcast(
        fences.zones.select(
            F.col("zone_id").cast("int").alias(_ZID),
            F.col("zone_name").alias(_ZNAME),
            F.col("geometry").alias(_GEOM),
        )
    )
    cells = F.broadcast(fences.cells)
    point = _point(lat, lon)
    cell = F.when(point.isNotNull(), fences.grid.cell_column(lat, lon))
    # Spatial predicate alone, broadcast on the right: Sedona plans its BroadcastIndexJoin.
    located = (
        points.select(*key, point.alias(_PT), cell.alias(_CELL))
        .join(cells.where(F.col(_BORDER)).select(_CELL), _CELL)
        .join(index_side, F.expr(f"ST_Intersects({_GEOM}, {_PT})"))
        .groupBy(*key)
        .agg(F.min(F.struct(_ZID, _ZNAME)).alias(_BEST))
    )
    return (
        points.withColumn(_CELL, cell)
        .join(cells, _CELL, "left")
        .join(F.broadcast(located), on=key, how="left")
        .select(
            *[F.col(f"`{name}`") for name in points.columns],
            F.coalesce(F.col(f"{_BEST}.{_ZID}"), F.col(_CZID)).alias(f"{prefix}zone_id"),
            F.coalesce(F.col(f"{_BEST}.{_ZNAME}"), F.col(_CZNAME)).alias(f"{prefix}zone_name"),
        )
    )


def _point(lat: str, lon: str) -> Column:
    # `between` is false for null and NaN, so such rows get no point and therefore no zone.
    valid = F.col(lat).between(-90.0, 90.0) & F.col(lon).between(-180.0, 180.0)
    point = F.expr(f"ST_Point(CAST(`{lon}` AS DOUBLE), CAST(`{lat}` AS DOUBLE))")
    return F.when(valid, point)


def explain_uses_broadcast_index_join(frame: DataFrame) -> bool:
    """Whether Sedona planned its broadcast spatial index join for `frame`."""
    return "BroadcastIndexJoin" in frame._jdf.queryExecution().executedPlan().toString()
