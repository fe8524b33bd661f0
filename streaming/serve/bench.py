"""`lakehouse serve bench`: latency and concurrency of a running `lakehouse serve`, as figures.

- a filtered Gold read: one zone's day of `gold.demand_by_zone_hour`, sequentially;
- `GET /vehicles/{id}` for random vehicles of the served fleet, sequentially;
- `clients` dashboard clients side by side, each refreshing `/dashboard/data` as fast as it is
  answered (the page refreshes every 5 s: this is a multiple of 50 real clients' load).
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @staticmethod
    def of(seconds: list[float], errors: int) -> Timing:
        ordered = sorted(seconds) or [0.0]

        def at(q: float) -> float:
            return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

        return Timing(len(seconds), errors, at(0.50), at(0.95), at(0.99))


def _get(url: str, token: str) -> tuple[float, int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except OSError:
        body, status = b"", 0
    return time.perf_counter() - started, status, body


def _sequential(urls: list[str], token: str) -> Timing:
    seconds, errors = [], 0
    for url in urls:
        took, status, _ = _get(url, token)
        seconds.append(took)
        errors += status != 200
    return Timing.of(seconds, errors)


def run_bench(base: str, token: str, requests: int, clients: int, seconds: float) -> dict[str, Any]:
    base = base.rstrip("/") + "/"
    rng = random.Random(7)
    _, status, body = _get(
        base + "tables/gold.demand_by_zone_hour?columns=zone_id,date&limit=10000", token
    )
    if status != 200:
        raise RuntimeError(f"reading gold.demand_by_zone_hour answered {status}: {body[:200]!r}")
    keys = [(r["zone_id"], r["date"]) for r in json.loads(body)["rows"]]
    gold = [
        base + f"tables/gold.demand_by_zone_hour?filter=zone_id:eq:{z}&filter=date:eq:{d}"
        for z, d in (rng.choice(keys) for _ in range(requests))
    ]
    _, status, body = _get(
        base + "tables/silver.vehicle_state?columns=vehicle_id&limit=10000", token
    )
    vehicles = [r["vehicle_id"] for r in json.loads(body)["rows"]] if status == 200 else []
    figures: dict[str, Any] = {"gold_zone_day": _sequential(gold, token).__dict__}
    if vehicles:
        lookups = [base + f"vehicles/{rng.choice(vehicles)}" for _ in range(requests)]
        figures["vehicle_lookup"] = _sequential(lookups, token).__dict__
    deadline = time.monotonic() + seconds

    def client(_: int) -> tuple[list[float], int]:
        took: list[float] = []
        errors = 0
        while time.monotonic() < deadline:
            spent, answered, _unused = _get(base + "dashboard/data", token)
            took.append(spent)
            errors += answered != 200
        return took, errors

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    every = [s for took, _ in results for s in took]
    dashboard = Timing.of(every, sum(e for _, e in results)).__dict__
    figures["dashboard_clients"] = {**dashboard, "clients": clients, "seconds": seconds,
                                    "per_second": round(len(every) / seconds, 1)}  # fmt: skip
    return figures
