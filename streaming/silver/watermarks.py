"""Silver's watermarks per batch, one small JSON file per batch in the pipeline's checkpoint.

A file beside the query's own offsets and commits, not a Delta commit: the watermark travels
with the checkpoint, and only a restart reads it. It is monotone in the batch id, so the newest
file before a batch holds the watermarks to resume from; a replay writes the same values again
(computed from the file before it and the batch), and only the newest few are kept.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_SUFFIX = ".json"
_KEPT = 10


class WatermarkStore:
    """{entity: watermark} after each batch, in `<checkpoint>/watermarks/<batch>.json`."""

    def __init__(self, spark: SparkSession, folder: str) -> None:
        self._files = _Files(spark, folder)
        self._last: tuple[int, dict[str, datetime]] | None = None

    def before(self, batch_id: int) -> dict[str, datetime]:
        """The watermarks recorded by the newest batch before `batch_id` ({} before any)."""
        if self._last is not None and self._last[0] == batch_id - 1:
            return dict(self._last[1])
        batches = [int(n[: -len(_SUFFIX)]) for n in self._files.names() if n.endswith(_SUFFIX)]
        earlier = [b for b in batches if b < batch_id]
        if not earlier:
            return {}
        stored = json.loads(self._files.read(f"{max(earlier)}{_SUFFIX}"))
        return {entity: datetime.fromisoformat(value) for entity, value in stored.items()}

    def record(self, batch_id: int, watermarks: dict[str, datetime]) -> None:
        name = f"{batch_id}{_SUFFIX}"
        if not self._files.exists(name):
            text = json.dumps({e: w.isoformat() for e, w in sorted(watermarks.items())})
            self._files.write_atomically(name, text)
        self._files.delete(f"{batch_id - _KEPT}{_SUFFIX}")
        self._last = (batch_id, dict(watermarks))


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
