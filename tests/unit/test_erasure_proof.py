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


def test_the_proof_decodes_a_file_a_bounded_slice_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compacted file of ten-megabyte payloads is small on disk and huge decoded: the proof
    holds a slice of it at a time, and still finds a needle in the last payload."""
    import pyarrow.parquet as pq

    config = load_config(lake_env(tmp_path, "127.0.0.1:1", "t."))
    folder = Path(config.table_path("bronze", "feedback"))
    folder.mkdir(parents=True)
    # 24 payloads of 8 MiB (192 MiB decoded): the same one, and all different.
    same = ["x" * (8 << 20)] * 23 + ["x" * ((8 << 20) - 9) + "U42-erase"]
    different = [chr(97 + i % 26) * (8 << 20) for i in range(23)] + same[-1:]
    for name, payloads in (("same", same), ("different", different)):
        values = pa.array(payloads, pa.large_string())
        # Stored plain, as Spark's writer stores values past its 1 MB dictionary limit, and in
        # pages of about 1 MB (a page is decoded whole: one of these payloads each).
        path = folder / f"part-{name}.c000.snappy.parquet"
        pq.write_table(pa.table({"value": values}), path, use_dictionary=False,
                       write_batch_size=1, data_page_size=1 << 20)  # fmt: skip
        assert path.stat().st_size < 16 << 20
    del same, different, values

    held_mb: list[float] = []
    holds = erasure._holds

    def measured(column: pa.ChunkedArray | pa.Array, needles: list[str]) -> bool:
        held_mb.append(pa.total_allocated_bytes() / 2**20)
        return holds(column, needles)

    monkeypatch.setattr(erasure, "_holds", measured)
    proof = erasure.prove(config, ["u42-ERASE"])
    assert sorted(h["file"] for h in proof["hits"]) == [
        "bronze/feedback/part-different.c000.snappy.parquet",
        "bronze/feedback/part-same.c000.snappy.parquet",
    ]
    assert max(held_mb) < 80, held_mb  # read whole, each file held 192 MiB and more
