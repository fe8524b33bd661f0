"""Geofences: NYC TLC taxi zones -> `silver/geofences`, and points -> the zone they lie in.

Input: the TLC taxi zones GeoJSON (WGS84 lon/lat; `LocationID`, `zone`, `borough`) and any
DataFrame with latitude/longitude columns. Output: the `silver/geofences` Delta table (zone_id,
zone_name, borough, geometry_wkt, overlap_wkt) and, per point row, `zone_id` / `zone_name`
(null outside every zone or when a coordinate is null).

Border rule (the same as `streaming.simulator.zones.ZoneIndex.locate`): a point belongs to the
zone with the lowest LocationID among all zones that cover it (interior or boundary). Points
strictly inside exactly one zone, the overwhelming majority, are settled by one ST_Contains
broadcast index join. Two kinds of point are not: points on a border (ST_Contains finds no zone)
and points in the slivers where the TLC polygons overlap (about 300 pairs, each ~1e-12 deg^2;
ST_Contains finds two zones). Those few rows get a second ST_Intersects pass that takes the
lowest zone_id per row key, so every input row comes out exactly once.
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
GEOFENCE_COLUMNS = ("zone_id", "zone_name", "borough", "geometry_wkt", "overlap_wkt")
GEOFENCE_SCHEMA = (
    "zone_id INT, zone_name STRING, borough STRING, geometry_wkt STRING, overlap_wkt STRING"
)
# Overlap boxes come from a GEOS overlay whose vertices may be rounded; a 1e-7 degree (~1 cm)
# margin keeps every overlapping point inside its box while the flagged area stays negligible.
_OVERLAP_MARGIN = 1e-7
_FIX = (
    "set LAKEHOUSE_GEOFENCES to a TLC taxi zones GeoJSON file (default data/nyc/taxi_zones.geojson)"
)
# Internal column names, unlikely to collide with a caller's columns; dropped before returning.
_PT, _ZID, _ZNAME, _GEOM, _OVERLAP = "__gf_pt", "__gf_zid", "__gf_zname", "__gf_geom", "__gf_ovl"
_UNSETTLED, _FIRST_CONTAINS, _BEST = "__gf_unsettled", "__gf_first_contains", "__gf_best"


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


def overlap_boxes(zones: list[Zone]) -> dict[int, str]:
    """WKT of boxes around the places where a zone's interior overlaps another zone's.

    A point in such a place can be inside two zones, so ST_Contains alone would duplicate it.
    """
    geoms = shapely.from_wkt([zone.wkt for zone in zones])
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    boxes: dict[int, list[shapely.Geometry]] = {}
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i < j and shapely.relate_pattern(geoms[i], geoms[j], "T********"):
            box = _overlap_box(geoms[i], geoms[j])
            boxes.setdefault(zones[i].zone_id, []).append(box)
            boxes.setdefault(zones[j].zone_id, []).append(box)
    return {zone_id: shapely.union_all(parts).wkt for zone_id, parts in boxes.items()}


def _overlap_box(a: shapely.Geometry, b: shapely.Geometry) -> shapely.Geometry:
    try:
        xmin, ymin, xmax, ymax = shapely.bounds(shapely.intersection(a, b))
    except shapely.errors.GEOSException:  # overlay failed: fall back to the envelopes' overlap
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = shapely.bounds(a), shapely.bounds(b)
        xmin, ymin, xmax, ymax = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    m = _OVERLAP_MARGIN
    return shapely.box(xmin - m, ymin - m, xmax + m, ymax + m)


def zones_frame(spark: SparkSession, zones: list[Zone]) -> DataFrame:
    """Zones as a plain, Delta-storable frame (geometry as WKT, no Sedona UDT)."""
    overlaps = overlap_boxes(zones)
    rows = [
        (zone.zone_id, zone.zone_name, zone.borough, zone.wkt, overlaps.get(zone.zone_id))
        for zone in zones
    ]
    return spark.createDataFrame(rows, GEOFENCE_SCHEMA)


def write_geofences(spark: SparkSession, zones: list[Zone], path: str) -> None:
    """Replace the geofences Delta table at `path` (this is `silver/geofences`)."""
    frame = zones_frame(spark, zones).coalesce(1)
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def read_geofences(spark: SparkSession, path: str) -> DataFrame:
    """The geofences table with a Sedona `geometry` column parsed from its WKT."""
    frame = spark.read.format("delta").load(path)
    return frame.withColumn("geometry", F.expr("ST_GeomFromWKT(geometry_wkt)"))


def assign_zones(
    points: DataFrame, zones: DataFrame, lat: str, lon: str, key: list[str], prefix: str = ""
) -> DataFrame:
    """`points` plus `{prefix}zone_id` INT and `{prefix}zone_name`, one output row per input row.

    `zones` is a geofences frame (zones_frame / read_geofences); `key` must be unique per point
    row (e.g. Kafka topic, partition, offset). `points` is evaluated twice, once for the main
    join and once for the few unsettled rows: persist it if its lineage is expensive.
    """
    index_side = F.broadcast(
        zones.select(
            F.col("zone_id").cast("int").alias(_ZID),
            F.col("zone_name").alias(_ZNAME),
            F.expr("ST_GeomFromWKT(geometry_wkt)").alias(_GEOM),
            F.expr("ST_GeomFromWKT(overlap_wkt)").alias(_OVERLAP),
        )
    )
    with_point = points.withColumn(_PT, _point(lat, lon))
    # Spatial predicate alone, broadcast on the right: Sedona plans a LeftOuter
    # BroadcastIndexJoin, so rows without a zone (or without a point) are kept.
    contained = with_point.join(index_side, F.expr(f"ST_Contains({_GEOM}, {_PT})"), "left")
    contained = contained.withColumn(_UNSETTLED, _unsettled()).drop(_GEOM, _OVERLAP)
    settled = _settle(contained, index_side, key)
    joined = contained.join(F.broadcast(settled), on=key, how="left")
    # Of the (rare) duplicate rows of an overlap point keep the one with the lowest contains-id.
    keep = F.col(_FIRST_CONTAINS).isNull() | (F.col(_ZID) == F.col(_FIRST_CONTAINS))
    return joined.filter(keep).select(
        *[F.col(f"`{name}`") for name in points.columns],
        F.coalesce(F.col(f"{_BEST}.{_ZID}"), F.col(_ZID)).alias(f"{prefix}zone_id"),
        F.coalesce(F.col(f"{_BEST}.{_ZNAME}"), F.col(_ZNAME)).alias(f"{prefix}zone_name"),
    )


def _point(lat: str, lon: str) -> Column:
    # `between` is false for null and NaN, so such rows get no point and therefore no zone.
    valid = F.col(lat).between(-90.0, 90.0) & F.col(lon).between(-180.0, 180.0)
    point = F.expr(f"ST_Point(CAST(`{lon}` AS DOUBLE), CAST(`{lat}` AS DOUBLE))")
    return F.when(valid, point)


def _unsettled() -> Column:
    """True where ST_Contains may be wrong: no zone found, or the point lies in an overlap."""
    no_zone = F.col(_ZID).isNull() & F.col(_PT).isNotNull()
    in_overlap = F.col(_OVERLAP).isNotNull() & F.expr(f"ST_Intersects({_OVERLAP}, {_PT})")
    return no_zone | F.coalesce(in_overlap, F.lit(False))


def _settle(contained: DataFrame, index_side: DataFrame, key: list[str]) -> DataFrame:
    """Per unsettled key: the lowest contains-id seen and the lowest-id zone covering the point."""
    unsettled = contained.filter(F.col(_UNSETTLED)).select(
        *key, _PT, F.col(_ZID).alias(_FIRST_CONTAINS)
    )
    covering = unsettled.join(
        index_side.select(_ZID, _ZNAME, _GEOM), F.expr(f"ST_Intersects({_GEOM}, {_PT})")
    )
    return covering.groupBy(*key).agg(
        F.min(_FIRST_CONTAINS).alias(_FIRST_CONTAINS),
        F.min(F.struct(_ZID, _ZNAME)).alias(_BEST),
    )


def explain_uses_broadcast_index_join(frame: DataFrame) -> bool:
    """Whether Sedona planned its broadcast spatial index join for `frame`."""
    return "BroadcastIndexJoin" in frame._jdf.queryExecution().executedPlan().toString()
