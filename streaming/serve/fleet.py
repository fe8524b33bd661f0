"""The fleet's latest state in memory (`silver/vehicle_state`), for lookups by vehicle and zone.

A background thread looks for a new Delta version every refresh interval and swaps in a new
copy when one lands, so a vehicle's new state is served within one refresh of its commit.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from streaming.catalog import TableRef
from streaming.serve.tables import NotFound, TableCache

log = logging.getLogger(__name__)
VEHICLE_STATE = TableRef("silver", "vehicle_state")


@dataclass(frozen=True)
class FleetCopy:
    version: int
    by_vehicle: dict[str, dict[str, Any]]
    by_zone: dict[int, list[dict[str, Any]]]


class Fleet:
    def __init__(self, tables: TableCache) -> None:
        self.tables = tables
        self.copy: FleetCopy | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)

    def start(self) -> Fleet:
        self.refresh()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def refresh(self) -> None:
        try:
            snapshot = self.tables.snapshot(VEHICLE_STATE)
        except NotFound:
            return
        if self.copy is not None and self.copy.version == snapshot.version:
            return
        columns = [c for c in snapshot.types if not c.startswith("_")]
        rows = snapshot.dataset.to_table(columns=columns).to_pylist()
        by_zone: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_zone.setdefault(row["zone_id"], []).append(row)
        self.copy = FleetCopy(snapshot.version, {r["vehicle_id"]: r for r in rows}, by_zone)

    def _loop(self) -> None:
        while not self._stop.wait(self.tables.refresh):
            try:
                self.refresh()
            except Exception as exc:  # served from the last copy until the next refresh works
                log.error("fleet: refreshing %s failed: %s", VEHICLE_STATE, exc)
