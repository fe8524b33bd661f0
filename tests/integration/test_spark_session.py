"""The service's SparkSession, started the way `lakehouse run` starts it, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pyspark.sql import SparkSession

from tests.builders import TRACE_MARKERS, package_zip
from tests.conftest import lake_env

# A foreachBatch query whose batch is a long Spark job; it is stopped while that job runs, as
# `lakehouse run` stops its queries on Ctrl-C or SIGTERM.
_STOP_MID_BATCH = textwrap.dedent(
    """
    import pathlib, sys, time
    from streaming.config import load_config
    from streaming.spark import build_spark

    started = pathlib.Path(sys.argv[1])
    spark = build_spark(load_config(None))

    def batch(frame, batch_id):
        started.touch()
        frame.sparkSession.range(0, 10**12).selectExpr("sum(id % 7)").collect()

    query = spark.readStream.format("rate").load().writeStream.foreachBatch(batch).start()
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    tracker = spark.sparkContext.statusTracker()
    while not tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.1)  # until the batch's job is running
    query.stop()
    print("stopped", "active" if query.isActive else "inactive", query.exception() is None)
    """
)


def test_stopping_a_query_mid_batch_prints_no_jvm_trace(tmp_path: Path) -> None:
    """Spark recognises a stop inside a Python foreachBatch by matching a regex against the
    Python error text; on the default 1 MB thread stack that match overflowed (StackOverflowError
    and a thousand-line JVM trace on every Ctrl-C that caught a batch running)."""
    started = tmp_path / "started"
    result = subprocess.run(
        [sys.executable, "-c", _STOP_MID_BATCH, str(started)],
        env={**os.environ, **lake_env(tmp_path, "127.0.0.1:1", "unused.")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert started.exists(), "the batch never started"
    assert result.stdout.split() == ["stopped", "inactive", "True"], result.stdout
    assert "StackOverflowError" not in result.stderr, result.stderr[:2000]
    for marker in TRACE_MARKERS:
        assert marker not in result.stderr, result.stderr[:2000]


def test_the_pipeline_runs_its_jobs_in_its_fair_scheduler_pool(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A batch's layer threads submit jobs side by side: in the default FIFO pool one job's
    tasks would hold every core until it ends."""
    from streaming.config import load_config
    from streaming.spark import POOL_PROPERTY, stream_writer

    config = load_config({**lake_env(tmp_path, "127.0.0.1:1", "unused."),
                          "LAKEHOUSE_TRIGGER_INTERVAL": "1 second"})  # fmt: skip
    seen: set[str | None] = set()

    def batch(frame, batch_id: int) -> None:
        seen.add(frame.sparkSession.sparkContext.getLocalProperty(POOL_PROPERTY))
        frame.count()  # a job of the query's own thread

    source = spark.readStream.format("rate").option("rowsPerSecond", 10).load()
    query = stream_writer(source, "pipeline.rates", config, once=False).foreachBatch(batch).start()
    try:
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        query.stop()
    assert seen == {"pipeline"}
    pool = spark.sparkContext._jsc.sc().getPoolForName("pipeline")
    assert pool.isDefined() and str(pool.get().schedulingMode()) == "FAIR"


def test_the_scheduler_pools_are_a_real_file_when_the_package_is_a_zip(tmp_path: Path) -> None:
    """spark-submit --py-files ships the package as a zip: a path into it is no file, and a
    SparkContext given one as its allocation file does not start."""
    from streaming.spark import POOLS

    archive = str(package_zip(tmp_path))
    probe = "import streaming.spark as s; print(s.__file__); print(s.package_file(s.POOLS))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": archive, "TMPDIR": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    module, pools = result.stdout.split()
    assert module.startswith(archive), module  # imported from the zip, as under spark-submit
    assert Path(pools).is_file(), pools
    assert Path(pools).read_bytes() == POOLS.read_bytes()
