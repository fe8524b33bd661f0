"""Silver's watermarks per batch, one small JSON file per batch in the pipeline's checkpoint.

A file beside the query's own offsets and commits, not a Delta commit: the watermark travels
with the checkpoint, and only a restart reads it. It is monotone in the batch id, so the newest
file before a batch holds the watermarks to resume from; a replay writes the same values again
(computed from the file before it and the batch), and only the newest few are kept.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

from streaming.s3.storage import location_filesystem

if TYPE_CHECKING:
    from streaming.config import Config

_SUFFIX = ".json"
_KEPT = 10


class WatermarkStore:
    """{entity: watermark} after each batch, in `<checkpoint>/watermarks/<batch>.json`."""

    def __init__(self, config: Config, folder: str) -> None:
        self._files = _Files(config, folder)
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
    """Small text files in one folder of the checkpoint (a local folder or s3a://), through
    pyarrow's file systems with the service's S3 settings."""

    def __init__(self, config: Config, folder: str) -> None:
        self._fs, self._folder = location_filesystem(config, folder)

    def _path(self, name: str) -> str:
        return f"{self._folder}/{name}"

    def exists(self, name: str) -> bool:
        from pyarrow.fs import FileType

        return bool(self._fs.get_file_info(self._path(name)).type == FileType.File)

    def names(self) -> list[str]:
        from pyarrow.fs import FileSelector

        selector = FileSelector(self._folder, allow_not_found=True)
        return [info.base_name for info in self._fs.get_file_info(selector)]

    def read(self, name: str) -> str:
        with self._fs.open_input_stream(self._path(name)) as stream:
            return bytes(stream.read()).decode()

    def write_atomically(self, name: str, text: str) -> None:
        """Written under a hidden name, then moved: readers never see half a file (S3's
        put is atomic, so there the move is a copy of a whole object)."""
        self._fs.create_dir(self._folder, recursive=True)
        partial = self._path(f".{name}.partial")
        with self._fs.open_output_stream(partial) as stream:
            stream.write(text.encode())
        self._fs.move(partial, self._path(name))

    def delete(self, name: str) -> None:
        if self.exists(name):
            self._fs.delete_file(self._path(name))
