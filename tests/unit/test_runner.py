"""What a user reads when the pipeline's JVM goes away under it."""

from __future__ import annotations

from pathlib import Path

from streaming.config import load_config
from streaming.runner import Plan, _jvm_ended

OOM = b"2026-12-06 03:25:50 ERROR Executor: java.lang.OutOfMemoryError: Java heap space\n"


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
