"""Geofence assignment against shapely, on the real TLC zones and on hand-made edge-case zones.

The reference is shapely: a point belongs to the lowest LocationID among the zones that cover it
(the rule of `streaming.simulator.zones.ZoneIndex.locate`). Results must match exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyspark.sql import SparkSession

from streaming import geofence
from streaming.config import load_config
from streaming.errors import ConfigError
from streaming.geofence import Zone
from streaming.simulator.zones import load_zones

POINT_SCHEMA = "k BIGINT, lat DOUBLE, lon DOUBLE"
NYC_BOX = (-74.26, 40.49, -73.69, 40.92)  # lon_min, lat_min, lon_max, lat_max


@pytest.fixture(scope="module")
def zones() -> list[Zone]:
    return geofence.read_zones()


@pytest.fixture(scope="module")
def zone_frame(spark: SparkSession, zones):
    return geofence.geofences(spark, zones).cache()


def reference(zones: list[Zone], lon: np.ndarray, lat: np.ndarray) -> list[int | None]:
    """Lowest zone id among the zones covering each point (None outside every zone)."""
    geoms = shapely.from_wkt([zone.wkt for zone in zones])
    ids = np.array([zone.zone_id for zone in zones])
    point_idx, zone_idx = shapely.STRtree(geoms).query(shapely.points(lon, lat), "covered_by")
    best: dict[int, int] = {}
    for p, z in zip(point_idx.tolist(), ids[zone_idx].tolist(), strict=True):
        best[p] = min(z, best.get(p, z))
    return [best.get(i) for i in range(len(lon))]


def shared_border_points(zones: list[Zone], limit: int) -> list[tuple[float, float]]:
    """Vertices and edge midpoints that belong to two or more zones."""
    vertex_owners: Counter[tuple[float, float]] = Counter()
    edge_owners: Counter[tuple[tuple[float, float], ...]] = Counter()
    for zone in zones:
        for ring in _rings(shapely.from_wkt(zone.wkt)):
            coords = [tuple(c) for c in shapely.get_coordinates(ring).tolist()]
            vertex_owners.update(set(coords))
            edge_owners.update({tuple(sorted(e)) for e in itertools.pairwise(coords)})
    vertices = sorted(v for v, n in vertex_owners.items() if n >= 2)[:limit]
    edges = sorted(e for e, n in edge_owners.items() if n >= 2)[:limit]
    midpoints = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in edges]
    return vertices + midpoints


def _rings(geom: shapely.Geometry) -> list[shapely.Geometry]:
    polygons = getattr(geom, "geoms", [geom])
    return [ring for p in polygons for ring in (p.exterior, *p.interiors)]


def overlap_points(zones: list[Zone], limit: int) -> list[tuple[float, float]]:
    """Points inside the slivers where two TLC polygons overlap."""
    geoms = shapely.from_wkt([zone.wkt for zone in zones])
    left, right = shapely.STRtree(geoms).query(geoms, "intersects")
    points = []
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if i < j and shapely.relate_pattern(geoms[i], geoms[j], "T********"):
            p = shapely.intersection(geoms[i], geoms[j]).point_on_surface()
            points.append((p.x, p.y))
    return points[:limit]


def island_points(zones: list[Zone]) -> list[tuple[float, float]]:
    """One interior point of every part of every MultiPolygon zone."""
    points = []
    for zone in zones:
        geom = shapely.from_wkt(zone.wkt)
        for part in getattr(geom, "geoms", []):
            p = part.point_on_surface()
            points.append((p.x, p.y))
    return points


def test_real_zones_match_shapely(spark: SparkSession, zones, zone_frame) -> None:
    rng = np.random.default_rng(20_250_611)
    random = list(
        zip(
            rng.uniform(NYC_BOX[0], NYC_BOX[2], 10_000).tolist(),
            rng.uniform(NYC_BOX[1], NYC_BOX[3], 10_000).tolist(),
            strict=True,
        )
    )
    border = shared_border_points(zones, 300)
    overlaps = overlap_points(zones, 60)
    islands = island_points(zones)
    outside = [(-74.05, 40.72), (-74.10, 40.75), (-73.60, 40.45)]  # Hudson/NJ, NJ, ocean
    lonlat = random + border + overlaps + islands + outside
    lon, lat = np.array(lonlat).T
    expected = reference(zones, lon, lat)
    assert expected[-3:] == [None, None, None]
    names = {zone.zone_id: zone.zone_name for zone in zones}

    rows = [(k, la, lo) for k, (lo, la) in enumerate(lonlat)]
    nulls = [(len(rows), None, None), (len(rows) + 1, 40.75, None), (len(rows) + 2, math.nan, 1.0)]
    points = spark.createDataFrame(rows + nulls, POINT_SCHEMA)
    result = geofence.assign_zones(points, zone_frame, "lat", "lon", ["k"], prefix="pu_")
    got = sorted(result.select("k", "pu_zone_id", "pu_zone_name").collect())

    want = [(k, z, names.get(z)) for k, z in enumerate(expected)]
    want += [(k, None, None) for k, _, _ in nulls]
    assert len(got) == len(rows) + len(nulls)  # no row lost, none duplicated
    assert [tuple(r) for r in got] == want
    # The same rule as the simulator's locator, so both ends of the pipeline agree.
    assert [z or -1 for z in expected] == load_zones().locate(lat, lon).tolist()


def test_edge_points_really_are_edge_cases(zones) -> None:
    """Guards the test above: its border and overlap points are covered by two zones."""
    geoms = shapely.from_wkt([zone.wkt for zone in zones])
    tree = shapely.STRtree(geoms)
    border = shapely.points(shared_border_points(zones, 300))
    on_two = np.bincount(tree.query(border, "touches")[0], minlength=len(border)) >= 2
    assert on_two.sum() >= 300
    inside = shapely.points(overlap_points(zones, 60))
    in_two = np.bincount(tree.query(inside, "within")[0], minlength=len(inside)) >= 2
    assert in_two.sum() >= 10
    assert not any(p.interiors for g in geoms for p in getattr(g, "geoms", [g]))  # no holes


def test_grid_settles_interior_points_and_leaves_borders_to_sedona(zones) -> None:
    """The grid answers only where one zone alone covers the whole cell; every border and
    overlap point is in a border cell (so the exact test decides it), and most points of real
    demand are settled by the grid alone."""
    grid = geofence.build_grid(zones)
    owner = dict(zip(grid.cells.tolist(), grid.zone_ids.tolist(), strict=True))

    def owners(lonlat: list[tuple[float, float]]) -> np.ndarray:
        lon, lat = np.array(lonlat).T
        return np.array([owner.get(c, -2) for c in grid.cell_of(lon, lat).tolist()])

    edges = shared_border_points(zones, 300) + overlap_points(zones, 60)
    assert (owners(edges) == -1).all()
    index = load_zones()
    rng = np.random.default_rng(7)
    lat, lon = index.sample_points(rng, index.sample_zones(rng, 20_000))
    settled = owners(list(zip(lon.tolist(), lat.tolist(), strict=True)))
    assert 0.6 < (settled >= 0).mean() < 1.0
    assert (settled[settled >= 0] == index.locate(lat, lon)[settled >= 0]).all()
    outside = owners([(-74.10, 40.75), (-75.0, 40.7)])  # New Jersey (no zone near), off the grid
    assert outside.tolist() == [-2, -2]


def square(x0: float, y0: float, x1: float, y1: float) -> shapely.Geometry:
    return shapely.box(x0, y0, x1, y1)


def test_holes_islands_overlaps_and_borders(spark: SparkSession) -> None:
    shapes = {
        1: square(0, 0, 10, 10).difference(square(4, 4, 6, 6)),  # donut, hole filled by 2
        2: square(4, 4, 6, 6),
        3: shapely.MultiPolygon([square(10, 0, 20, 10), square(30, 0, 32, 2)]),  # with an island
        4: square(19, 0, 25, 5),  # overlaps 3
        5: square(40, 0, 50, 10).difference(square(44, 4, 46, 6)),  # empty hole
    }
    zones = [
        Zone(i, f"z{i}", "B", shapely.to_wkt(g, rounding_precision=-1)) for i, g in shapes.items()
    ]
    cases = [
        ((1, 1), 1),
        ((5, 5), 2),
        ((4, 5), 1),
        ((10, 5), 1),
        ((31, 1), 3),
        ((19.5, 2), 3),
        ((22, 2), 4),
        ((20, 2), 3),
        ((0, 0), 1),
        ((45, 5), None),
        ((44, 5), 5),
        ((26, 8), None),
        ((-1, -1), None),
        ((None, None), None),
        ((5, None), None),
        ((math.nan, 5), None),
    ]
    rows = [(k, _float(lat), _float(lon)) for k, ((lon, lat), _) in enumerate(cases)]
    points = spark.createDataFrame(rows, POINT_SCHEMA)
    frame = geofence.geofences(spark, zones)
    got = sorted(geofence.assign_zones(points, frame, "lat", "lon", ["k"]).collect())
    assert [(r.k, r.zone_id, r.zone_name) for r in got] == [
        (k, z, f"z{z}" if z else None) for k, (_, z) in enumerate(cases)
    ]


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def test_plan_uses_sedona_broadcast_index_join(spark: SparkSession, zone_frame) -> None:
    points = spark.createDataFrame([(1, 40.75, -73.98)], POINT_SCHEMA)
    result = geofence.assign_zones(points, zone_frame, "lat", "lon", ["k"])
    plan = result._jdf.queryExecution().executedPlan().toString()
    assert geofence.explain_uses_broadcast_index_join(result)
    assert "BroadcastIndexJoin" in plan and "Inner, INTERSECTS" in plan


def test_geofences_round_trip_through_delta(spark: SparkSession, zones, tmp_path: Path) -> None:
    path = str(tmp_path / "silver" / "geofences")
    config = load_config({"LAKEHOUSE_ROOT": str(tmp_path)})
    geofence.write_geofences(config, zones, path)
    table = geofence.read_geofences(spark, config, path)
    assert table.zones.columns == [*geofence.GEOFENCE_COLUMNS, "geometry"]
    rows = table.zones.selectExpr(
        "zone_id",
        "zone_name",
        "borough",
        "geometry_wkt",
        "ST_AsText(geometry) IS NOT NULL AS parsed",
    ).collect()
    assert len(rows) == 263
    assert all(r.parsed for r in rows)
    assert sorted((r.zone_id, r.zone_name, r.borough, r.geometry_wkt) for r in rows) == [
        (z.zone_id, z.zone_name, z.borough, z.wkt) for z in zones
    ]


def test_missing_zones_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "taxi_zones.geojson"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        geofence.read_zones(missing)
    assert str(missing) in str(caught.value)


def test_unreadable_zones_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "zones.geojson"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid zones file"):
        geofence.read_zones(broken)
    line = {
        "type": "Feature",
        "properties": {"LocationID": 1, "zone": "a", "borough": "b"},
        "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
    }
    broken.write_text(json.dumps({"features": [line]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(broken))):
        geofence.read_zones(broken)
