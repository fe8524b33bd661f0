"""Silver's watermark per batch, kept as one small file per batch id in the lake.

A file, not a Delta table: a Delta commit per batch cost about a second here, for a value that
only a restart reads. The watermark is monotone in the batch id, so the newest file before a
batch holds the watermark to resume from; a replay writes the same value again (it is computed
from the files before it and the batch), and only the newest few are kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_SUFFIX = ".watermark"
_KEPT = 10


def record(spark: SparkSession, folder: str, batch_id: int, watermark: datetime) -> None:
    files = _Files(spark, folder)
    name = f"{batch_id}{_SUFFIX}"
    if not files.exists(name):
        files.write_atomically(name, watermark.isoformat())
    files.delete(f"{batch_id - _KEPT}{_SUFFIX}")


def stored(spark: SparkSession, folder: str, batch_id: int) -> datetime | None:
    """The watermark recorded by the newest batch before `batch_id`, None before any."""
    files = _Files(spark, folder)
    batches = [int(n[: -len(_SUFFIX)]) for n in files.names() if n.endswith(_SUFFIX)]
    before = [b for b in batches if b < batch_id]
    return datetime.fromisoformat(files.read(f"{max(before)}{_SUFFIX}")) if before else None


class _Files:
    """Small text files in one folder of the lake, through Hadoop's file system (so local
    paths and s3a:// alike, with the credentials Spark already has)."""

    def __init__(self, spark: SparkSession, folder: str) -> None:
        context: Any = spark.sparkContext
        self._jvm = context._jvm
        self._folder = self._jvm.org.apache.hadoop.fs.Path(folder)
        self._fs = self._folder.getFileSystem(context._jsc.hadoopConfiguration())

    def _path(self, name: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(self._folder, name)

    def exists(self, name: str) -> bool:
        return bool(self._fs.exists(self._path(name)))

    def names(self) -> list[str]:
        if not self._fs.exists(self._folder):
            return []
        return [str(status.getPath().getName()) for status in self._fs.listStatus(self._folder)]

    def read(self, name: str) -> str:
        stream = self._fs.open(self._path(name))
        try:
            return str(self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def write_atomically(self, name: str, text: str) -> None:
        """Written under a hidden name, then renamed: readers never see half a file."""
        partial = self._path(f".{name}.partial")
        stream = self._fs.create(partial, True)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()
        self._fs.rename(partial, self._path(name))

    def delete(self, name: str) -> None:
        self._fs.delete(self._path(name), False)
