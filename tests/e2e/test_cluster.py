"""The pipeline on a real Spark standalone cluster (a master and one worker started from
pyspark's own `spark-class` on loopback), launched with spark-submit, unchanged: the package
ships as a zip with --py-files and the jars with --jars, as on any cluster. Its tables must equal
those of the same corpus run in local mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest
from pyspark.sql import SparkSession

import streaming
from streaming import pipeline
from streaming.config import load_config
from streaming.gold.aggregates import TABLES
from streaming.gold.table import SILVER_VERSION, UPDATED_AT
from streaming.jars import require
from streaming.silver.query import check_inputs
from streaming.simulator import SIMULATED
from streaming.spark import SHORT_RUN_JVM
from streaming.verify import check_bronze
from tests.builders import PII_KEY, lakehouse, package_zip
from tests.conftest import _free_ports

pytestmark = pytest.mark.e2e
SPARK_HOME = Path(pyspark.__file__ or "").resolve().parent
# Columns that record when (or from which Silver version) a row was written, not what it says.
WRITE_TIMES = {"_ingested_at", "_processed_at", "_quarantined_at", UPDATED_AT, "_batch_id"}
WRITE_TIMES.add(SILVER_VERSION)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(spark://127.0.0.1:<port>, web UI port) of a master with one 2-core worker."""
    port, ui, worker_ui = _free_ports(3)
    work = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(SPARK_HOME)}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master_url = f"spark://127.0.0.1:{port}"
    processes = []
    with (work / "cluster.log").open("ab") as log:
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(ui)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--cores", "2",
             "--memory", "3g", "--webui-port", str(worker_ui), "--work-dir", str(work / "work")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
    try:
        _wait_for_worker(ui, processes, work / "cluster.log")
        yield master_url, ui
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _master_state(ui: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
        return json.load(response)


def _wait_for_worker(ui: int, processes: list[subprocess.Popen], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), log.read_text()[-3000:]
        try:
            if _master_state(ui).get("aliveworkers", 0) >= 1:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("the standalone cluster did not come up: " + log.read_text()[-3000:])


def _table(spark: SparkSession, path: str):
    """A table without write times, maps as sorted entry arrays (set operations reject maps)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType

    frame = spark.read.format("delta").load(path)
    frame = frame.drop(*[c for c in frame.columns if c in WRITE_TIMES])
    maps = [f.name for f in frame.schema.fields if isinstance(f.dataType, MapType)]
    return frame.withColumns({c: F.array_sort(F.map_entries(c)) for c in maps})


@pytest.mark.seconds(235)
def test_the_pipeline_on_a_standalone_cluster_equals_local_mode(
    cluster: tuple[str, int], lake, spark: SparkSession, tmp_path: Path
) -> None:
    master, ui = cluster
    ledger = tmp_path / "corpus.ledger"
    produced = lakehouse(
        "produce", "all", "--rate", "inf", "--count", "1500", "--vehicles", "150",
        "--duplicates", "0.05", "--malformed", "0.05", "--ledger", str(ledger),
        env=lake.process_env(),
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr[-2000:]

    # The same corpus in local mode, in this test's own Spark session.
    local = {**lake.env, "LAKEHOUSE_ROOT": str(tmp_path / "local" / "lake"),
             "LAKEHOUSE_CHECKPOINTS": str(tmp_path / "local" / "checkpoints"),
             "LAKEHOUSE_PII_KEY": PII_KEY}  # fmt: skip
    local_config = load_config(local)
    pipeline.start(
        spark, local_config, "all", check_inputs(local_config), once=True
    ).query.awaitTermination()

    jars = ",".join(str(jar) for jar in require(lake.config.jars_dir, "spark"))
    # The driver reads contracts, schemas and zones from files, as on a cluster's driver host.
    project = Path(streaming.__file__).resolve().parent.parent
    submit_env = {**lake.process_env(LAKEHOUSE_PII_KEY=PII_KEY), "PYSPARK_PYTHON": sys.executable,
                  "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_HOME": str(SPARK_HOME),
                  "LAKEHOUSE_SCHEMAS": str(project / "schemas"),
                  "LAKEHOUSE_CONTRACTS": str(project / "contracts"),
                  "LAKEHOUSE_GEOFENCES": str(project / "data" / "nyc" / "taxi_zones.geojson"),
                  "LAKEHOUSE_JARS": str(lake.config.jars_dir)}  # fmt: skip
    submitted = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", master,
         "--deploy-mode", "client", "--driver-memory", "2g", "--executor-memory", "2g",
         "--driver-java-options", SHORT_RUN_JVM,
         "--total-executor-cores", "2", "--jars", jars,
         "--py-files", str(package_zip(tmp_path)),
         str(Path(streaming.__file__).parent / "cli.py"), "run", "all", "--once"],
        env=submit_env, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    errors = [line for line in submitted.stderr.splitlines() if line.startswith("error:")]
    assert submitted.returncode == 0, errors or submitted.stderr[-3000:]
    finished = [app["name"] for app in _master_state(ui)["completedapps"]]
    assert finished == ["lakehouse-all"], finished  # it ran on the cluster, not in local mode

    config = lake.config
    bronze = check_bronze(spark, config, [ledger])
    assert (bronze.missing, bronze.duplicated, bronze.bronze_rows) == (0, 0, 1500), bronze
    # Silver's books and Gold == recomputation: the tables equal local mode's, row for row, and
    # the end-to-end tests prove those oracles on local mode.
    # Every Silver, quarantine and Gold table holds exactly what local mode wrote.
    tables = [("silver", e) for e in SIMULATED] + [("quarantine", e) for e in SIMULATED]
    tables += [("gold", name) for name in TABLES]
    for layer, name in tables:
        on_cluster = _table(spark, config.table_path(layer, name))
        in_local = _table(spark, local_config.table_path(layer, name))
        assert on_cluster.count() == in_local.count() > 0 or layer == "quarantine", (layer, name)
        difference = on_cluster.exceptAll(in_local).union(in_local.exceptAll(on_cluster))
        assert difference.limit(1).count() == 0, (layer, name, difference.limit(3).collect())
