"""A commit's mark (pipeline, batch and the write's details), the files a commit added, and a
batch a pipeline died inside: read from real Delta logs written by delta-rs (no JVM) and a
checkpoint's files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake

from streaming.checkpoints import part_written
from streaming.commits import commit_mark, parse_mark
from streaming.config import load_config
from streaming.erasure import part_written_batches
from streaming.tables import added_files
from tests.conftest import lake_env


def test_a_mark_carries_its_details_and_other_metadata_is_not_a_mark() -> None:
    mark = parse_mark(commit_mark("pipeline.all", 7, books={"valid": 3}, watermark=None))
    assert mark is not None
    assert (mark.pipeline, mark.batch_id) == ("pipeline.all", 7)
    assert mark.details == {"books": {"valid": 3}, "watermark": None}
    assert parse_mark(commit_mark("pipeline.all", 7)) == ("pipeline.all", 7, {})
    for foreign in (None, "", "fixing a typo", "[1, 2]", '{"pipeline": "x"}', '{"batch": "b"}'):
        assert parse_mark(foreign) is None, foreign


def test_added_files_are_the_files_of_that_commit_alone(tmp_path: Path) -> None:
    config = load_config(lake_env(tmp_path, "127.0.0.1:1", "t."))
    path = str(tmp_path / "t")
    for day in ("2026-12-05", "2026-12-06", "2026-12-06"):
        rows = pa.table({"date": [day], "n": [1]})
        write_deltalake(path, rows, mode="append", partition_by=["date"])
    table = DeltaTable(path)
    every = {Path(p).name for p in table.file_uris()}
    assert len(every) == 3
    by_version = [added_files(config, path, version) for version in range(3)]
    assert all(files is not None and len(files) == 1 for files in by_version)
    assert set().union(*[files or set() for files in by_version]) == every
    assert added_files(config, path, 3) is None  # no such commit


def test_a_batch_is_part_written_when_a_table_holds_it_and_the_checkpoint_did_not_commit_it(
    tmp_path: Path,
) -> None:
    config = load_config(lake_env(tmp_path, "127.0.0.1:1", "t."))
    folder = Path(config.checkpoint_path("pipeline.all"))
    for log_name, batches in (("offsets", (0, 1)), ("commits", (0,))):
        (folder / log_name).mkdir(parents=True)
        for batch_id in batches:
            (folder / log_name / str(batch_id)).write_text("v1\n")
    bronze = config.table_path("bronze", "telemetry")

    def commit(batch_id: int) -> None:
        marked = CommitProperties(
            custom_metadata={"userMetadata": commit_mark("pipeline.all", batch_id)}
        )
        write_deltalake(bronze, pa.table({"n": [batch_id]}), mode="append",
                        commit_properties=marked)  # fmt: skip

    commit(0)
    assert part_written(config, "pipeline.all") is None  # batch 1 planned, nothing written yet
    assert part_written_batches(config) == {}
    commit(1)
    assert part_written(config, "pipeline.all") == (1, ["bronze.telemetry"])
    assert part_written_batches(config) == {"pipeline.all": 1}
    (folder / "commits" / "1").write_text("v1\n")
    assert part_written(config, "pipeline.all") is None  # finished
    assert part_written(config, "pipeline.refine") is None  # no checkpoint at all
