"""The dashboard's data: each panel is a read through the same policy, masks and audit as the
API, so a role sees on the page exactly what it may read. And the zone map, drawn once as SVG
from the geofence file (no map library, no tiles: nothing is fetched from the internet)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from streaming.catalog import TableRef
from streaming.serve.tables import Filter, Forbidden, NotFound, Read, Result

Reader = Callable[[TableRef, Read], Result]
MAP_WIDTH = 760
MAP_DETAIL_DEGREES = 0.0002


def panels(
    read: Reader,
    quality: Callable[[], dict[str, Any]],
    statuses: Callable[[], dict[str, Any]],
    health: dict[str, Any],
) -> dict[str, Any]:
    """Every panel: its rows, or why this role cannot see it."""
    built: dict[str, Any] = {"freshness": health}
    for name, panel in (
        ("demand", _demand),
        ("revenue", _revenue),
        ("funnel", _funnel),
        ("recent_bookings", _recent_bookings),
        ("journeys", _journeys),
    ):
        try:
            built[name] = panel(read)
        except (Forbidden, NotFound) as reason:
            built[name] = {"unavailable": str(reason)}
    for name, counts in (("quality", quality), ("vehicles_by_status", statuses)):
        try:
            built[name] = counts()
        except (Forbidden, NotFound) as reason:
            built[name] = {"unavailable": str(reason)}
    return built


def _newest(read: Reader, ref: TableRef, columns: tuple[str, ...]) -> dict[str, Any] | None:
    order = tuple(f"-{c}" for c in columns)
    rows = read(ref, Read(columns=columns, order=order, limit=1)).rows.to_pylist()
    return rows[0] if rows else None


def _demand(read: Reader) -> dict[str, Any]:
    """Bookings per zone in the newest hour, the 7-day average, availability and battery."""
    ref = TableRef("gold", "demand_by_zone_hour")
    newest = _newest(read, ref, ("date", "hour"))
    if newest is None:
        return {"hour": None, "zones": {}, "rows": []}
    columns = (
        "zone_id",
        "vehicle_type",
        "booking_count",
        "booking_count_7d_avg",
        "available_vehicles",
        "avg_battery_level",
    )
    filters = (
        Filter("date", "eq", (str(newest["date"]),)),
        Filter("hour", "eq", (str(newest["hour"]),)),
    )
    rows = read(ref, Read(columns=columns, filters=filters, limit=10_000)).rows.to_pylist()
    zones: dict[int, dict[str, float]] = {}
    for row in rows:
        zone = zones.setdefault(row["zone_id"], {"bookings": 0, "avg_7d": 0.0, "available": 0})
        zone["bookings"] += row["booking_count"] or 0
        zone["avg_7d"] += row["booking_count_7d_avg"] or 0.0
        zone["available"] += row["available_vehicles"] or 0
    return {"date": str(newest["date"]), "hour": newest["hour"], "zones": zones, "rows": rows}


def _revenue(read: Reader) -> dict[str, Any]:
    ref = TableRef("gold", "revenue_by_vehicle_type_daily")
    newest = _newest(read, ref, ("date",))
    if newest is None:
        return {"date": None, "rows": []}
    columns = (
        "vehicle_type",
        "bookings",
        "completed_trips",
        "total_revenue",
        "avg_revenue_per_trip",
    )
    filters = (Filter("date", "eq", (str(newest["date"]),)),)
    result = read(ref, Read(columns=columns, filters=filters, order=("vehicle_type",), limit=100))
    return {"date": str(newest["date"]), "rows": result.rows.to_pylist()}


def _funnel(read: Reader) -> dict[str, Any]:
    """Sessions of the newest day by how deep into the booking funnel they got."""
    ref = TableRef("gold", "customer_journey_events")
    newest = _newest(read, ref, ("date",))
    if newest is None:
        return {"date": None, "depths": {}}
    filters = (Filter("date", "eq", (str(newest["date"]),)),)
    result = read(ref, Read(columns=("funnel_depth", "converted"), filters=filters, limit=10_000))
    depths: dict[int, int] = {}
    for row in result.rows.to_pylist():
        depths[row["funnel_depth"]] = depths.get(row["funnel_depth"], 0) + 1
    return {"date": str(newest["date"]), "sessions": result.total, "depths": depths}


def _latest(read: Reader, table: str, columns: tuple[str, ...], time_column: str) -> dict[str, Any]:
    """The newest 8 rows of a table (ties broken by its first column)."""
    layer, name = table.split(".")
    order = (f"-{time_column}", columns[0])
    result = read(TableRef(layer, name), Read(columns=columns, order=order, limit=8))
    return {"rows": result.rows.to_pylist()}


def _recent_bookings(read: Reader) -> dict[str, Any]:
    columns = ("booking_id", "user_id", "email_masked", "email_token", "pickup_zone_name",
               "revenue", "status", "event_timestamp")  # fmt: skip
    return _latest(read, "silver.bookings", columns, "event_timestamp")


def _journeys(read: Reader) -> dict[str, Any]:
    columns = ("session_id", "user_token", "step_count", "funnel_depth", "converted",
               "session_start")  # fmt: skip
    return _latest(read, "gold.customer_journey_events", columns, "session_start")


@lru_cache(maxsize=2)
def zone_map(geofences: Path) -> str:
    """An SVG with one <path class="zone" data-zone=LocationID> per taxi zone (equirectangular,
    x scaled by cos(latitude): true to shape at New York's size)."""
    from shapely.geometry import mapping, shape

    features = json.loads(geofences.read_text())["features"]
    rings = []
    for feature in features:
        # About 20 m of detail: a map 760 px wide shows 60 m per pixel.
        geometry = mapping(shape(feature["geometry"]).simplify(MAP_DETAIL_DEGREES))
        polygons = (
            geometry["coordinates"]
            if geometry["type"] == "MultiPolygon"
            else [geometry["coordinates"]]
        )
        rings.append((feature["properties"], [ring for polygon in polygons for ring in polygon]))
    points = [p for _, zone in rings for ring in zone for p in ring]
    west, east = min(p[0] for p in points), max(p[0] for p in points)
    south, north = min(p[1] for p in points), max(p[1] for p in points)
    squeeze = math.cos(math.radians((south + north) / 2))
    scale = MAP_WIDTH / ((east - west) * squeeze)
    height = round((north - south) * scale)

    def xy(p: list[float]) -> str:
        return f"{(p[0] - west) * squeeze * scale:.1f},{(north - p[1]) * scale:.1f}"

    paths = []
    for props, zone in rings:
        d = " ".join("M" + " L".join(xy(p) for p in ring) + "Z" for ring in zone)
        title = f"{props['zone']} ({props['borough']})".replace("&", "&amp;").replace("<", "&lt;")
        paths.append(
            f'<path class="zone" data-zone="{int(props["LocationID"])}" d="{d}">'
            f"<title>{title}</title></path>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="zone-map" viewBox="0 0 {MAP_WIDTH} {height}">'
        + "".join(paths)
        + "</svg>"
    )
