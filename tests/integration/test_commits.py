"""A real Delta write conflict is retried: a MERGE that loses the race to a concurrent append."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from streaming import commits
from streaming.errors import RetryableError
from streaming.redrive import delete_matching


def _slow_keys(spark: SparkSession, start: int, end: int) -> DataFrame:
    """The MERGE's source: one second a row (in the JVM), so that a commit lands between the
    MERGE's read of the table and its commit."""
    pause = "0 * coalesce(length(reflect('java.lang.Thread', 'sleep', cast(1000 AS bigint))), 0)"
    return spark.range(start, end, 1, 1).selectExpr(f"id + {pause} AS id")


def _race(spark: SparkSession, path: str, appends: int) -> tuple[list[str], threading.Thread]:
    """Append to the table `appends` times, 1.5 s apart (inside the slow MERGE's window)."""
    done: list[str] = []

    def append() -> None:
        for n in range(appends):
            time.sleep(1.5)
            rows = spark.range(100 + n * 10, 110 + n * 10).withColumn("p", F.lit(1))
            rows.write.format("delta").mode("append").save(path)
            done.append(f"append {n}")

    thread = threading.Thread(target=append)
    thread.start()
    return done, thread


def test_a_merge_that_conflicts_with_an_append_is_retried_and_commits(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "t")
    spark.range(10).withColumn("p", F.lit(1)).write.format("delta").partitionBy("p").save(path)
    keys = _slow_keys(spark, 0, 3)
    monkeypatch.setattr(commits, "BACKOFF_SECONDS", 0.1)
    attempts: list[int] = []

    def delete() -> None:
        attempts.append(len(attempts))
        delete_matching(spark, path, keys, on=["id"])

    done, thread = _race(spark, path, appends=1)
    commits.retrying(delete, "the test's delete")
    thread.join()
    assert done == ["append 0"] and len(attempts) == 2  # the first attempt lost the race
    ids = sorted(r.id for r in spark.read.format("delta").load(path).collect())
    assert ids == [*range(3, 10), *range(100, 110)]

    # a conflict on every attempt ends in RetryableError, with nothing deleted
    monkeypatch.setattr(commits, "RETRIES", 1)
    keys = _slow_keys(spark, 3, 5)
    done, thread = _race(spark, path, appends=1)
    with pytest.raises(RetryableError, match="kept conflicting"):
        commits.retrying(lambda: delete_matching(spark, path, keys, on=["id"]), "the delete")
    thread.join()
    assert {3, 4} <= {r.id for r in spark.read.format("delta").load(path).collect()}
