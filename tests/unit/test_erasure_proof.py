"""The erasure's proof scan over real Delta tables (delta-rs, no JVM), beside files a killed
writer left torn: a zero-byte and a footer-less Parquet file, which no table version names."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from streaming import erasure
from streaming.config import load_config
from tests.conftest import lake_env


def test_the_proof_finds_a_needle_and_reads_torn_files_as_raw_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure, "UNFINISHED_WAIT_S", 0.0)
    config = load_config(lake_env(tmp_path, "127.0.0.1:1", "t."))
    table = Path(config.table_path("silver", "bookings"))
    write_deltalake(str(table), pa.table({"user_id": ["U1", "U2", "U3"], "fare": [3.5, 4.0, 2.5]}))
    (table / "part-00000-torn-empty.c000.snappy.parquet").write_bytes(b"")
    # A writer killed before the footer: the magic bytes and a page holding a user id in clear.
    (table / "part-00001-torn.c000.snappy.parquet").write_bytes(b"PAR1\x15\x00U7-in-a-page")

    clean = erasure.prove(config, ["U9"])
    assert clean["hits"] == []
    assert sorted(clean["undecoded"]) == ["silver/bookings/part-00001-torn.c000.snappy.parquet"]
    assert clean["files"] == 4  # the table's data file, its log entry and the two torn files

    # Case-insensitive, inside a decoded column (U2 is neither the log's minimum nor maximum).
    decoded = erasure.prove(config, ["u2"])
    assert [h["column"] for h in decoded["hits"]] == ["user_id"]
    raw = erasure.prove(config, ["U7"])  # only in the torn file's raw bytes
    assert raw["hits"] == [
        {"file": "silver/bookings/part-00001-torn.c000.snappy.parquet", "column": None}
    ]
