"""The simulated fleet: every vehicle's state as numpy columns, advanced a slice at a time.

Keeping state columnar lets one call move thousands of vehicles, which is what makes
tens of thousands of telemetry events per second possible from a single Python process.
"""

from __future__ import annotations

import numpy as np

from streaming.simulator.zones import ZoneIndex

VEHICLE_TYPES: tuple[str, ...] = ("scooter", "ebike", "car", "van")
TYPE_CODES: tuple[str, ...] = ("SC", "EB", "CA", "VA")
TYPE_SHARES = np.array([0.45, 0.30, 0.18, 0.07])
STATUSES: tuple[str, ...] = ("available", "in_use", "charging", "maintenance")
AVAILABLE, IN_USE, CHARGING, MAINTENANCE = range(4)

CRUISE_KMH = np.array([15.0, 20.0, 30.0, 25.0])
DRAIN_PER_KM = np.array([2.5, 1.5, 0.4, 0.5])  # battery percent per km driven
CHARGE_PER_MIN = np.array([1.0, 0.8, 0.5, 0.4])  # battery percent per minute charging
TRIP_KM = np.array([2.0, 3.0, 6.0, 5.0])  # mean wanted trip length
LOW_BATTERY = 15.0
IDLE_MEAN_S = 900.0
MAINTENANCE_MEAN_S = 7_200.0
BREAKDOWN_MEAN_S = 2_000_000.0
_CANDIDATE_ZONES = 8
KM_PER_DEG_LAT = 111.32


class Fleet:
    """Vehicle columns plus the state machine available -> in_use -> available/charging."""

    def __init__(self, size: int, zones: ZoneIndex, rng: np.random.Generator) -> None:
        self.zones = zones
        self.rng = rng
        self.vtype = rng.choice(len(VEHICLE_TYPES), size=size, p=TYPE_SHARES).astype(np.int8)
        codes = np.array(TYPE_CODES)[self.vtype]
        self.ids: list[str] = [f"{c}{i:06d}" for i, c in enumerate(codes.tolist())]
        self.lat, self.lon = zones.sample_points(rng, zones.sample_zones(rng, size))
        self.battery = rng.uniform(30.0, 100.0, size)
        self.status = rng.choice(4, size=size, p=[0.80, 0.12, 0.06, 0.02]).astype(np.int8)
        self.speed = np.zeros(size)
        self.target_lat = self.lat.copy()
        self.target_lon = self.lon.copy()
        self._start_trips(np.flatnonzero(self.status == IN_USE))

    def __len__(self) -> int:
        return len(self.ids)

    def step(self, idx: np.ndarray, dt_s: float, demand: float = 1.0) -> None:
        """Advance vehicles `idx` by `dt_s` simulated seconds; `demand` scales trip starts."""
        status = self.status[idx]
        self._move(idx[status == IN_USE], dt_s)
        self._charge(idx[status == CHARGING], dt_s)
        self._idle(idx[status == AVAILABLE], dt_s, demand)
        self._repair(idx[status == MAINTENANCE], dt_s)

    def _move(self, idx: np.ndarray, dt_s: float) -> None:
        if not len(idx):
            return
        kinds = self.vtype[idx]
        speed = CRUISE_KMH[kinds] * self.rng.uniform(0.6, 1.2, len(idx))
        step_km = speed * dt_s / 3600.0
        d_lat = self.target_lat[idx] - self.lat[idx]
        d_lon = self.target_lon[idx] - self.lon[idx]
        left_km = np.hypot(d_lat, d_lon * np.cos(np.radians(self.lat[idx]))) * KM_PER_DEG_LAT
        frac = np.minimum(1.0, step_km / np.maximum(left_km, 1e-9))
        self.lat[idx] += d_lat * frac
        self.lon[idx] += d_lon * frac
        self.battery[idx] = np.maximum(
            0.0, self.battery[idx] - DRAIN_PER_KM[kinds] * frac * left_km
        )
        self.speed[idx] = speed
        arrived = idx[frac >= 1.0]
        self.speed[arrived] = 0.0
        low = self.battery[arrived] < LOW_BATTERY
        self.status[arrived] = np.where(low, CHARGING, AVAILABLE)

    def _charge(self, idx: np.ndarray, dt_s: float) -> None:
        if not len(idx):
            return
        gained = CHARGE_PER_MIN[self.vtype[idx]] * dt_s / 60.0
        self.battery[idx] = np.minimum(100.0, self.battery[idx] + gained)
        self.speed[idx] = 0.0
        self.status[idx[self.battery[idx] >= 100.0]] = AVAILABLE

    def _idle(self, idx: np.ndarray, dt_s: float, demand: float) -> None:
        if not len(idx):
            return
        self.speed[idx] = 0.0
        low = self.battery[idx] < LOW_BATTERY
        self.status[idx[low]] = CHARGING
        idx = idx[~low]
        draw = self.rng.random(len(idx))
        p_trip = 1.0 - np.exp(-dt_s * demand / IDLE_MEAN_S)
        p_break = 1.0 - np.exp(-dt_s / BREAKDOWN_MEAN_S)
        self.status[idx[draw < p_break]] = MAINTENANCE
        self._start_trips(idx[(draw >= p_break) & (draw < p_break + p_trip)])

    def _repair(self, idx: np.ndarray, dt_s: float) -> None:
        if not len(idx):
            return
        self.speed[idx] = 0.0
        done = self.rng.random(len(idx)) < 1.0 - np.exp(-dt_s / MAINTENANCE_MEAN_S)
        self.status[idx[done]] = AVAILABLE

    def _start_trips(self, idx: np.ndarray) -> None:
        if not len(idx):
            return
        wanted = self.rng.exponential(TRIP_KM[self.vtype[idx]])
        self.target_lat[idx], self.target_lon[idx] = choose_destinations(
            self.zones, self.rng, self.lat[idx], self.lon[idx], wanted
        )
        self.status[idx] = IN_USE


def choose_destinations(
    zones: ZoneIndex,
    rng: np.random.Generator,
    lat: np.ndarray,
    lon: np.ndarray,
    wanted_km: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Destinations in demand-weighted zones whose distance is close to the wanted trip length.

    Drawing a few candidate zones by demand and keeping the best-fitting one keeps both the
    real demand pattern and plausible trip lengths (no scooter rides from the Bronx to JFK).
    """
    n = len(lat)
    candidates = zones.sample_zones(rng, n * _CANDIDATE_ZONES).reshape(n, -1)
    lat0 = lat[:, None]
    d_lat = zones.centroid_lat[candidates] - lat0
    d_lon = (zones.centroid_lon[candidates] - lon[:, None]) * np.cos(np.radians(lat0))
    dist = np.hypot(d_lat, d_lon) * KM_PER_DEG_LAT
    best = candidates[np.arange(n), np.argmin(np.abs(dist - wanted_km[:, None]), axis=1)]
    return zones.sample_points(rng, best)


def haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km (vectorised)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    d_lat, d_lon = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(d_lat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(d_lon / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
