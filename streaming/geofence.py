"""Geofences: NYC TLC taxi zones -> `silver/geofences`, and points -> the zone they lie in.

Input: the TLC taxi zones GeoJSON (WGS84 lon/lat; `LocationID`, `zone`, `borough`) and any
DataFrame with latitude/longitude columns. Output: the `silver/geofences` Delta table (zone_id,
zone_name, borough, geometry_wkt) and, per point row, `zone_id` / `zone_name`
(null outside every zone or when a coordinate is null).

Border rule (the same as `streaming.simulator.zones.ZoneIndex.locate`): a point belongs to the
zone with the lowest LocationID among all zones that cover it (interior or boundary). One
ST_Intersects broadcast index join over only the row key and the point finds every covering
zone; the lowest id per row key is joined back to the rows. Points on a border and in the
slivers where the TLC polygons overlap (about 300 pairs, each ~1e-12 deg^2) thus need no
second pass, and the wide rows never go through the spatial join.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import shapely
from pyspark.sql import functions as F

from streaming.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

DEFAULT_ZONES_FILE = Path(__file__).resolve().parent.parent / "data" / "nyc" / "taxi_zones.geojson"
GEOFENCE_COLUMNS = ("zone_id", "zone_name", "borough", "geometry_wkt")
GEOFENCE_SCHEMA = "zone_id INT, zone_name STRING, borough STRING, geometry_wkt STRING"
_FIX = (
    "set LAKEHOUSE_GEOFENCES to a TLC taxi zones GeoJSON file (default data/nyc/taxi_zones.geojson)"
)
# Internal column names, unlikely to collide with a caller's columns; dropped before returning.
_PT, _ZID, _ZNAME, _GEOM, _BEST = "__gf_pt", "__gf_zid", "__gf_zname", "__gf_geom", "__gf_best"


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


def write_geofences(spark: SparkSession, zones: list[Zone], path: str) -> None:
    """Replace the geofences Delta table at `path` (this is `silver/geofences`)."""
    frame = zones_frame(spark, zones).coalesce(1)
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def read_geofences(spark: SparkSession, path: str) -> DataFrame:
    """The geofences table with a Sedona `geometry` column parsed from its WKT (cache it: the
    polygons are then parsed once, not in every micro-batch)."""
    frame = spark.read.format("delta").load(path).select(*GEOFENCE_COLUMNS)
    return frame.withColumn("geometry", F.expr("ST_GeomFromWKT(geometry_wkt)"))


def assign_zones(
    points: DataFrame, zones: DataFrame, lat: str, lon: str, key: list[str], prefix: str = ""
) -> DataFrame:
    """`points` plus `{prefix}zone_id` INT and `{prefix}zone_name`, one output row per input row.

    `zones` is a geofences frame (read_geofences, or zones_frame); `key` must be unique per
    point row (e.g. Kafka partition and offset). `points` is read twice, for the spatial join of
    its keys and for the join back: persist it if its lineage is expensive. The join back
    broadcasts the located keys (about 30 bytes a row), so the wide rows are never shuffled.
    """
    geometry = "geometry" if "geometry" in zones.columns else "ST_GeomFromWKT(geometry_wkt)"
    index_side = F.broadcast(
        zones.select(
            F.col("zone_id").cast("int").alias(_ZID),
            F.col("zone_name").alias(_ZNAME),
            F.expr(geometry).alias(_GEOM),
        )
    )
    # Spatial predicate alone, broadcast on the right: Sedona plans its BroadcastIndexJoin.
    located = (
        points.select(*key, _point(lat, lon).alias(_PT))
        .where(F.col(_PT).isNotNull())
        .join(index_side, F.expr(f"ST_Intersects({_GEOM}, {_PT})"))
        .groupBy(*key)
        .agg(F.min(F.struct(_ZID, _ZNAME)).alias(_BEST))
    )
    return points.join(F.broadcast(located), on=key, how="left").select(
        *[F.col(f"`{name}`") for name in points.columns],
        F.col(f"{_BEST}.{_ZID}").alias(f"{prefix}zone_id"),
        F.col(f"{_BEST}.{_ZNAME}").alias(f"{prefix}zone_name"),
    )


def _point(lat: str, lon: str) -> Column:
    # `between` is false for null and NaN, so such rows get no point and therefore no zone.
    valid = F.col(lat).between(-90.0, 90.0) & F.col(lon).between(-180.0, 180.0)
    point = F.expr(f"ST_Point(CAST(`{lon}` AS DOUBLE), CAST(`{lat}` AS DOUBLE))")
    return F.when(valid, point)


def explain_uses_broadcast_index_join(frame: DataFrame) -> bool:
    """Whether Sedona planned its broadcast spatial index join for `frame`."""
    return "BroadcastIndexJoin" in frame._jdf.queryExecution().executedPlan().toString()
