"""The one place a SparkSession is built.

The fetched jars (Delta, the Kafka source, Sedona, S3A) go on the driver and executor classpath
through `spark.jars`; nothing is resolved with Ivy at start-up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from streaming import jars
from streaming.config import Config
from streaming.errors import SetupError
from streaming.s3 import storage as s3_storage
from streaming.tables import CHECKPOINT_INTERVAL

LOG4J = Path(__file__).resolve().parent / "log4j2.properties"
POOLS = Path(__file__).resolve().parent / "fairscheduler.xml"
POOL_PROPERTY = "spark.scheduler.pool"
VECTORIZED_READER = "spark.sql.parquet.enableVectorizedReader"
PIPELINE_POOL = "pipeline"  # fairscheduler.xml

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import DataStreamWriter
# JVM options for short-lived Spark processes (tests, chaos restarts): C2 compiles code a short
# run is over before it pays off (docs/benchmarks.md: the JIT's optimising tier in short runs).
SHORT_RUN_JVM = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"


def submitted() -> bool:
    """True when spark-submit launched this Python driver (its JVM is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark(config: Config, app_name: str = "lakehouse") -> SparkSession:
    """Build (or return the running) SparkSession with Delta and Sedona registered."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SetupError("Java is not installed", hint="install OpenJDK 17 and set JAVA_HOME")
    from pyspark.sql import SparkSession

    if config.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name)
    for key, value in session_conf(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    s3_storage.apply_credentials(spark, config)  # after start: off the JVM's command line
    return spark


def session_conf(config: Config) -> dict[str, str]:
    """Every Spark setting the service relies on, in one dictionary (also used by spark-submit)."""
    conf = {
        "spark.sql.extensions": ",".join(
            [
                "io.delta.sql.DeltaSparkSessionExtension",
                "org.apache.sedona.sql.SedonaSqlExtensions",
            ]
        ),
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
        "spark.kryo.registrator": "org.apache.sedona.core.serde.SedonaKryoRegistrator",
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        # A batch's layer threads submit jobs side by side: FAIR scheduling inside the
        # pipeline's pool (fairscheduler.xml) lets them share the cores.
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": package_file(POOLS),
        "spark.sql.session.timeZone": "UTC",
        # -Xss: a query stopped inside a Python foreachBatch is told from a failure by a regex
        # over the Python error text, which overflowed the default 1 MB thread stack (a
        # StackOverflowError and a thousand-line JVM trace on a Ctrl-C that caught a batch).
        "spark.driver.extraJavaOptions": (
            f"-Duser.timezone=UTC -Xss16m -Dlog4j2.configurationFile={package_file(LOG4J)} "
            f"-Dlakehouse.spark.log={config.spark_log} {config.spark.jvm_options}"
        ).strip(),
        "spark.executor.extraJavaOptions": (
            f"-Duser.timezone=UTC {config.spark.jvm_options}".strip()
        ),
        "spark.ui.enabled": str(config.spark.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        "spark.sql.streaming.metricsEnabled": "true",
        # Kafka SASL passwords travel inside jaas.config: keep them out of plans, UI and logs.
        "spark.redaction.regex": "(?i)secret|password|token|access[.]?key|jaas",
        # Delta rebuilds table state with a 50-partition shuffle by default: on a small cluster
        # that costs seconds per commit (measured 5 s -> 1.3 s per micro-batch at 400 rows).
        "spark.databricks.delta.snapshotPartitions": "1",
        # Tables Spark itself creates (the geofence grid) checkpoint as those of `tables` do.
        "spark.databricks.delta.properties.defaults.checkpointInterval": CHECKPOINT_INTERVAL,
        # `value` (Bronze's and quarantine's raw payloads) is unique per row: Parquet's attempt
        # at a dictionary for it is wasted work (a 300,000-row Bronze write: 3.2 s -> 2.5 s).
        "spark.hadoop.parquet.enable.dictionary#value": "false",
        # Spark keeps 100 compiled query classes by default. One Silver telemetry batch alone
        # needs about 170, so every batch of every query compiled them all again (12,000-row
        # batch: 165-179 classes, 14.1-14.8 s; with room for 2,000: 19-28 classes, 10.8-12.1 s).
        "spark.sql.codegen.cache.maxEntries": "2000",
        # Every MERGE source here is already materialised (localCheckpoint) before the MERGE:
        # Delta's own copy of it would be a second, redundant job per MERGE.
        "spark.databricks.delta.merge.materializeSource": "none",
        # Gold's plans union stored and new partial rows several times over; constraint
        # propagation over them failed in the optimizer (`key not found` in a Union's
        # constraints) and only costs planning time on plans this size.
        "spark.sql.constraintPropagation.enabled": "false",
        # VACUUM lists a table's folders in a job of this many tasks, 10,000 by default: on two
        # cores a six-file table's VACUUM took 38-54 s, with 32 tasks 2.3-3.9 s (each task lists
        # a share of the partition folders, so 32 still spreads a large table's listing).
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "32",
    }
    if not config.spark.codegen:
        # Generating Java for each projection a task builds (outside whole-stage code, which stays
        # compiled) pays off over many rows, not over a few small batches: a cold 300-message
        # batch over every topic took 52.9 s with it, 36.9 s without (the JVM's CPU 92 s -> 63
        # s); warm ones 24-28 s -> 20-25 s. An internal Spark setting, meant for its own tests.
        conf["spark.sql.codegen.factoryMode"] = "NO_CODEGEN"
    if not submitted():  # under spark-submit, its --master, --driver-memory and --jars rule
        conf["spark.master"] = config.spark.master
        conf["spark.driver.memory"] = config.spark.driver_memory
        conf["spark.jars"] = ",".join(str(jar) for jar in jars.require(config.jars_dir, "spark"))
    conf.update(s3_storage.spark_conf(config))  # S3A and the Delta log store, for s3a:// only
    conf.update(config.spark.extra)
    return conf


@contextmanager
def row_reader(spark: SparkSession) -> Iterator[None]:
    """Parquet read row by row inside the block, not in columnar batches of 4,096 rows: for scans
    of raw payloads (Bronze, quarantine), where a batch with a few ten-megabyte values asks for
    hundreds of megabytes of contiguous heap at once (an erasure's scan of Bronze: 438 MB)."""
    before = str(spark.conf.get(VECTORIZED_READER, "true"))
    spark.conf.set(VECTORIZED_READER, "false")
    try:
        yield
    finally:
        spark.conf.set(VECTORIZED_READER, before)


def package_file(path: Path) -> str:
    """One of the package's own files as a path on this host, for Spark or the JVM to open:
    under spark-submit the package may be a zip (--py-files) whose members are not files. Then
    its bytes are copied once to the temporary folder, under a name that changes with them."""
    if path.is_file():
        return str(path)
    data = resources.files("streaming").joinpath(path.name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"lakehouse-{digest}-{path.name}"
    if not target.is_file():
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(target)  # atomic: concurrent drivers never read half a file
    return str(target)


def stream_writer(frame: DataFrame, name: str, config: Config, once: bool) -> DataStreamWriter:
    """The writer of the named query `pipeline.<name>`: its own checkpoint, the configured
    trigger (`once`: process what is available now, then stop), and the pipeline's scheduler pool
    (a local property of the calling thread, which the query's own thread takes over).
    """
    frame.sparkSession.sparkContext.setLocalProperty(POOL_PROPERTY, PIPELINE_POOL)
    writer = frame.writeStream.queryName(name).option(
        "checkpointLocation", config.checkpoint_path(name)
    )
    if once:
        return writer.trigger(availableNow=True)
    return writer.trigger(processingTime=config.stream.trigger_interval)
