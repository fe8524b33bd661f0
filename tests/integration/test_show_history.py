"""`lakehouse show --as-of` and `lakehouse history` on a real Delta table (delta-rs, no JVM)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from tests.builders import lakehouse, one_clear_line


def test_time_travel_and_history_through_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "LAKEHOUSE_ROOT": str(tmp_path / "lake")}
    path = tmp_path / "lake" / "gold" / "revenue_by_vehicle_type_daily"
    for n in (1, 2, 3):
        rows = pa.table({"vehicle_type": [f"t{i}" for i in range(n)], "bookings": list(range(n))})
        write_deltalake(str(path), rows, mode="overwrite")
    table = "gold.revenue_by_vehicle_type_daily"
    for version, expected in (("0", 1), ("1", 2), ("2", 3)):
        shown = lakehouse("show", table, "--as-of", version, "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        assert len(shown.stdout.splitlines()) == expected
    latest = lakehouse("show", table, "--json", env=env)
    assert [json.loads(line)["vehicle_type"] for line in latest.stdout.splitlines()] == [
        "t0",
        "t1",
        "t2",
    ]
    listed = lakehouse("history", table, "--json", env=env)
    assert [json.loads(line)["version"] for line in listed.stdout.splitlines()] == [2, 1, 0]
    one_clear_line(lakehouse("show", table, "--as-of", "9", env=env), 2, "versions 0 to 2")
    one_clear_line(
        lakehouse("show", table, "--as-of", "yesterday", env=env), 2, "--as-of 'yesterday'"
    )
    one_clear_line(lakehouse("history", "gold.nope", env=env), 2, "does not exist")
