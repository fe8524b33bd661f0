"""What a user reads when the pipeline's JVM goes away under it or its disk fills up."""

from __future__ import annotations

from pathlib import Path

from streaming.config import load_config
from streaming.errors import QueryError
from streaming.runner import Plan, _jvm_ended, _query_failed

OOM = b"2026-12-06 03:25:50 ERROR Executor: java.lang.OutOfMemoryError: Java heap space\n"
FULL = b"Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device\n"


def test_a_jvm_out_of_heap_in_this_run_is_named_with_the_settings_that_mend_it(
    tmp_path: Path,
) -> None:
    spark_log = tmp_path / "spark.log"
    config = load_config({"LAKEHOUSE_SPARK_LOG": str(spark_log), "LAKEHOUSE_DRIVER_MEMORY": "3g"})
    plan = Plan("all", ["bronze", "silver", "gold"], None)
    spark_log.write_bytes(OOM)  # an earlier run's
    start = spark_log.stat().st_size
    ended = str(_jvm_ended(config, plan, start))
    assert "ended unexpectedly" in ended and str(spark_log) in ended
    spark_log.write_bytes(OOM + b"INFO a line\n" + OOM)
    ended = str(_jvm_ended(config, plan, start))
    assert "query pipeline.all stopped: its JVM ran out of heap" in ended
    assert "LAKEHOUSE_DRIVER_MEMORY=3g" in ended and "LAKEHOUSE_MAX_OFFSETS_PER_TRIGGER" in ended


def test_a_query_failed_on_a_full_disk_in_this_run_says_so_and_how_to_resume(
    tmp_path: Path,
) -> None:
    spark_log = tmp_path / "spark.log"
    config = load_config({"LAKEHOUSE_SPARK_LOG": str(spark_log)})
    plan = Plan("all", ["bronze", "silver", "gold"], None)
    failed = QueryError("query pipeline.all failed: [STREAM_FAILED] ...", query="pipeline.all")
    spark_log.write_bytes(FULL)  # an earlier run's
    start = spark_log.stat().st_size
    assert _query_failed(config, plan, start, failed) is failed
    spark_log.write_bytes(FULL + b"INFO a line\n" + FULL)
    said = str(_query_failed(config, plan, start, failed))
    assert "query pipeline.all stopped: no space left on the device" in said
    assert "the checkpoint resumes after the last committed batch" in said
