"""Governance beside live streams: `run all` keeps streaming while `maintain` compacts every
minute and `erase` removes a person; no stream fails, every oracle holds, files per partition go
down, and the erasure's proof finds nothing."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from streaming.catalog import AUDIT_MAINTENANCE, TableRef
from streaming.simulator.producer import ProduceOptions, run_producer
from streaming.tables import open_table
from streaming.verify import check_bronze
from tests.builders import LAKEHOUSE, lakehouse

pytestmark = pytest.mark.e2e
PII_KEY = "test-only-pii-key-0123456789abcdef"


def _produce(lake, path: Path, seed: int) -> Path:  # type: ignore[no-untyped-def]
    options = ProduceOptions(
        rate=math.inf, count=2_000, duplicates=0.05, malformed=0.05, seed=seed, ledger=path
    )
    assert run_producer(lake.config, "all", options).failed == 0
    return path


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*LAKEHOUSE, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(condition, what: str, processes, timeout_s: float = 400) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        for process, log in processes:
            assert process.poll() is None, f"{log.name} ended: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(2)


def test_maintenance_and_an_erasure_beside_a_running_stream(lake, spark, tmp_path: Path) -> None:
    ledgers = [_produce(lake, tmp_path / "first.ledger", seed=21)]
    env = lake.process_env(
        LAKEHOUSE_PII_KEY=PII_KEY,
        LAKEHOUSE_TRIGGER_INTERVAL="2 seconds",
        LAKEHOUSE_MAINTAIN_INTERVAL="60",
        # A compaction beside the erasure takes seconds here; its leftovers are purged after 30 s.
        LAKEHOUSE_ERASE_GRACE_SECONDS="15",
    )
    stream_log, maintain_log = tmp_path / "stream.log", tmp_path / "maintain.log"
    stream = _start(["run", "all"], env, stream_log)
    running = [(stream, stream_log)]
    maintain = None
    try:
        _wait(lambda: check_bronze(spark, lake.config, ledgers).missing == 0, "the first corpus",
              running)  # fmt: skip
        maintain = _start(["maintain", "--no-vacuum"], env, maintain_log)
        running.append((maintain, maintain_log))

        # The person with the most bookings and app events so far, erased while both run.
        silver = [
            spark.read.format("delta").load(lake.config.table_path("silver", e)).select("user_id")
            for e in ("bookings", "user_events")
        ]
        counts = silver[0].unionByName(silver[1]).groupBy("user_id").count()
        user = counts.orderBy(F.desc("count"), "user_id").first()["user_id"]  # type: ignore[index]
        receipt_file = tmp_path / "receipt.json"
        erased = lakehouse(
            "erase", "--user-id", user, "--receipt", str(receipt_file), env=env, timeout=900
        )
        assert erased.returncode == 0, erased.stdout[-2000:] + erased.stderr[-3000:]
        receipt = json.loads(receipt_file.read_text())
        assert receipt["proof"]["hits"] == [] and receipt["tombstones"] > 0, receipt
        assert f"pid {stream.pid}" in receipt["applied_by"]  # the running pipeline applied it

        # More data while maintenance compacts: its commits meet the stream's MERGEs.
        ledgers.append(_produce(lake, tmp_path / "second.ledger", seed=22))
        _wait(lambda: check_bronze(spark, lake.config, ledgers).missing == 0, "the second corpus",
              running)  # fmt: skip
        _wait(lambda: _optimized(lake.config) > 0, "a compaction", running)
    finally:
        for process, _ in reversed(running):
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=120) for process, _ in running]
    assert codes == [0] * len(codes), [log.read_text()[-3000:] for _, log in running]
    errors = [line for line in stream_log.read_text().splitlines() if " E streaming." in line]
    assert not errors, errors  # no failed batch, no failed erasure attempt

    verify = lakehouse("verify", *[f"--ledger={p}" for p in ledgers], env=env)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
    report = json.loads(verify.stdout)
    assert report["bronze"]["erased"] == receipt["tombstones"]


def _optimized(config) -> int:  # type: ignore[no-untyped-def]
    """OPTIMIZE actions that left fewer files than they found."""
    table = open_table(config, TableRef(*AUDIT_MAINTENANCE).path(config))
    if table is None:
        return 0
    rows = table.to_pyarrow_table().to_pylist()
    return sum(
        1 for r in rows if r["action"] == "optimize" and r["files_after"] < r["files_before"]
    )
