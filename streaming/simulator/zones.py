"""NYC taxi zones as the simulator's geography: real polygons and real per-zone demand.

Point-in-polygon tests are far too slow to run per event at tens of thousands of events per
second, so each zone gets a pool of points pre-sampled once (vectorised `shapely.contains_xy`);
drawing a location at run time is then an array lookup.

Zone polygons and trip counts: NYC Taxi & Limousine Commission, public data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from streaming.errors import ConfigError
from streaming.settings import PROJECT_DIR

NYC_DIR = PROJECT_DIR / "data" / "nyc"
ZONES_FILE = NYC_DIR / "taxi_zones.geojson"
DEMAND_FILE = NYC_DIR / "pickups_by_zone_2025.parquet"
POOL_SIZE = 256
_POOL_SEED = 20_250_101


@dataclass(frozen=True, eq=False)
class ZoneIndex:
    """Zones in LocationID order with demand probabilities and pre-sampled interior points."""

    location_ids: np.ndarray  # int64, shape (z,)
    names: tuple[str, ...]
    boroughs: tuple[str, ...]
    geometries: np.ndarray  # shapely geometries, shape (z,)
    weights: np.ndarray  # demand probabilities, sum 1
    centroid_lat: np.ndarray
    centroid_lon: np.ndarray
    pool_lat: np.ndarray  # shape (z, POOL_SIZE)
    pool_lon: np.ndarray

    def sample_zones(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Zone positions (not LocationIDs) drawn by real pickup demand."""
        return rng.choice(len(self.location_ids), size=n, p=self.weights)

    def sample_points(
        self, rng: np.random.Generator, zones: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One interior point per entry of `zones` (zone positions)."""
        slot = rng.integers(0, self.pool_lat.shape[1], size=len(zones))
        return self.pool_lat[zones, slot], self.pool_lon[zones, slot]

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """LocationID containing each point, -1 outside every zone.

        A point on a shared border belongs to the zone with the lowest LocationID.
        """
        points = shapely.points(np.asarray(lon), np.asarray(lat))
        tree = _tree(self)
        point_idx, zone_idx = tree.query(points, predicate="intersects")
        result = np.full(len(points), -1, dtype=np.int64)
        order = np.lexsort((zone_idx, point_idx))[::-1]  # lowest zone written last
        result[point_idx[order]] = self.location_ids[zone_idx[order]]
        return result


@lru_cache(maxsize=4)
def _tree(index: ZoneIndex) -> shapely.STRtree:
    return shapely.STRtree(index.geometries)


@lru_cache(maxsize=2)
def load_zones(
    zones_file: Path = ZONES_FILE, demand_file: Path = DEMAND_FILE, pool_size: int = POOL_SIZE
) -> ZoneIndex:
    """Load and cache the zone index; the point pools are seeded so runs are reproducible."""
    ids, names, boroughs, geoms = _read_geojson(zones_file)
    weights = _demand_weights(demand_file, ids)
    rng = np.random.default_rng(_POOL_SEED)
    pool_lat = np.empty((len(ids), pool_size))
    pool_lon = np.empty((len(ids), pool_size))
    for i, geom in enumerate(geoms):
        pool_lat[i], pool_lon[i] = _sample_inside(geom, pool_size, rng)
    centroids = shapely.centroid(geoms)
    return ZoneIndex(
        location_ids=ids,
        names=names,
        boroughs=boroughs,
        geometries=geoms,
        weights=weights,
        centroid_lat=shapely.get_y(centroids),
        centroid_lon=shapely.get_x(centroids),
        pool_lat=pool_lat,
        pool_lon=pool_lon,
    )


def _read_geojson(path: Path) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...], np.ndarray]:
    try:
        features = json.loads(path.read_text(encoding="utf-8"))["features"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"taxi zones file {path} cannot be read: {exc}") from None
    features = sorted(features, key=lambda f: int(f["properties"]["LocationID"]))
    ids = np.array([int(f["properties"]["LocationID"]) for f in features], dtype=np.int64)
    names = tuple(str(f["properties"]["zone"]) for f in features)
    boroughs = tuple(str(f["properties"]["borough"]) for f in features)
    geoms = np.array([shapely.from_geojson(json.dumps(f["geometry"])) for f in features])
    shapely.prepare(geoms)
    return ids, names, boroughs, geoms


def _demand_weights(path: Path, ids: np.ndarray) -> np.ndarray:
    """Total trips per pickup zone as probabilities; zones without trips get a token weight."""
    try:
        frame = pd.read_parquet(path, columns=["PULocationID", "trip_count"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"demand file {path} cannot be read: {exc}") from None
    totals = frame.groupby("PULocationID")["trip_count"].sum()
    counts = totals.reindex(ids, fill_value=0).to_numpy(dtype=np.float64)
    counts = np.maximum(counts, 1.0)
    return counts / counts.sum()


def _sample_inside(
    geom: shapely.Geometry, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rejection sampling over the bounding box, a whole batch per `contains_xy` call."""
    minx, miny, maxx, maxy = shapely.bounds(geom)
    box_area = max((maxx - minx) * (maxy - miny), 1e-12)
    fill = max(shapely.area(geom) / box_area, 0.01)
    lats: list[np.ndarray] = []
    lons: list[np.ndarray] = []
    found = 0
    while found < size:
        n = int((size - found) / fill * 1.3) + 16
        x = rng.uniform(minx, maxx, n)
        y = rng.uniform(miny, maxy, n)
        inside = shapely.contains_xy(geom, x, y)
        lons.append(x[inside])
        lats.append(y[inside])
        found += int(inside.sum())
    return np.concatenate(lats)[:size], np.concatenate(lons)[:size]
