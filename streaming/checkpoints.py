"""What a restart finds in a pipeline's checkpoint, checked before its query starts.

Spark writes a batch's offset file (`offsets/<N>`) before it runs the batch and its commit file
(`commits/<N>`) after. Two things can meet a restart:

* A torn last offset file (a store that lost the end of a write). Spark cannot read it and the
  query would fail at start. If no table holds batch N (the commit marks of `CommitGuard`), the
  batch wrote nothing: the file is set aside in `<checkpoint>/torn/` and Spark plans batch N
  again. If a table holds batch N, planning it again could give it other rows than the ones
  committed: the run is refused, naming the file and the tables.
* Retention overtaking the stream: Kafka deleted offsets that the pipeline had not read. With
  `LAKEHOUSE_FAIL_ON_DATA_LOSS` (the default) the run stops, with the count per topic; without
  it, the count is logged and Spark skips them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streaming.catalog import all_tables
from streaming.commits import CommitGuard
from streaming.errors import QueryError
from streaming.s3.storage import location_filesystem

if TYPE_CHECKING:
    from streaming.config import Config

log = logging.getLogger(__name__)
TORN = "torn"


@dataclass(frozen=True)
class Skipped:
    """Offsets of one topic that Kafka deleted before the pipeline read them."""

    topic: str
    offsets: int
    partitions: int


def parse_offsets(text: str) -> list[dict[str, dict[str, int]] | None]:
    """An offset file's sources (None for a source without offsets); ValueError when torn.

    The format: a version line (`v1`), the batch's metadata as JSON, one line per source."""
    lines = text.split("\n")
    if len(lines) < 3 or not lines[0].startswith("v") or not lines[0][1:].isdigit():
        raise ValueError("no version line, metadata and sources")
    json.loads(lines[1])
    return [None if line == "-" else json.loads(line) for line in lines[2:]]


def checksum_name(batch_id: int) -> str:
    """The checksum file Hadoop's local file system writes beside a checkpoint file."""
    return f".{batch_id}.crc"


def _missing() -> object:
    from pyarrow import fs

    return fs.FileType.NotFound


class Checkpoint:
    """One query's checkpoint folder (local or s3a://), read through pyarrow's file systems."""

    def __init__(self, config: Config, location: str) -> None:
        self.config = config
        self.location = location
        self._fs, self._root = location_filesystem(config, location)

    def batches(self, log_name: str) -> list[int]:
        from pyarrow import fs

        selector = fs.FileSelector(f"{self._root}/{log_name}", allow_not_found=True)
        names = [info.base_name for info in self._fs.get_file_info(selector)]
        return sorted(int(name) for name in names if name.isdigit())

    def read(self, log_name: str, batch_id: int) -> str:
        with self._fs.open_input_stream(f"{self._root}/{log_name}/{batch_id}") as stream:
            return stream.read().decode("utf-8", errors="replace")

    def set_aside(self, log_name: str, batch_id: int) -> str:
        """Move a batch's file to `<checkpoint>/torn/` (Spark only lists numbered files), with
        the checksum file Hadoop keeps beside it on a local disk (left behind, it would make
        Spark's next write of that batch fail as a concurrent writer's)."""
        target = f"{self._root}/{TORN}/{log_name}-{batch_id}"
        self._fs.create_dir(f"{self._root}/{TORN}", recursive=True)
        self._fs.move(f"{self._root}/{log_name}/{batch_id}", target)
        checksum = f"{self._root}/{log_name}/{checksum_name(batch_id)}"
        if self._fs.get_file_info(checksum).type != _missing():
            self._fs.move(checksum, f"{target}.crc")
        return target

    def tear(self, log_name: str, batch_id: int) -> None:
        """Cut a batch's file to half its bytes (a store that lost the end of a write)."""
        path = f"{self._root}/{log_name}/{batch_id}"
        with self._fs.open_input_stream(path) as stream:
            data = stream.read()
        with self._fs.open_output_stream(path) as out:
            out.write(data[: len(data) // 2])

    def delete(self, log_name: str, batch_id: int) -> None:
        """Delete a batch's file and its checksum, as a lost write leaves no trace."""
        self._fs.delete_file(f"{self._root}/{log_name}/{batch_id}")
        checksum = f"{self._root}/{log_name}/{checksum_name(batch_id)}"
        if self._fs.get_file_info(checksum).type != _missing():
            self._fs.delete_file(checksum)

    def uncommitted(self) -> int | None:
        """The last batch planned (its offset file written) and not committed, if any."""
        offsets = self.batches("offsets")
        if not offsets or offsets[-1] in self.batches("commits"):
            return None
        return offsets[-1]

    def committed_offsets(self) -> dict[str, dict[str, int]]:
        """The Kafka end offsets of the newest committed batch ({} before any, or for a source
        that is not Kafka): {topic: {partition: offset}}."""
        commits = self.batches("commits")
        offsets = set(self.batches("offsets"))
        for batch_id in reversed(commits):
            if batch_id in offsets:
                try:
                    sources = parse_offsets(self.read("offsets", batch_id))
                except ValueError:
                    continue
                merged: dict[str, dict[str, int]] = {}
                for source in sources:
                    if source and all(isinstance(v, dict) for v in source.values()):
                        merged.update(source)
                return merged
        return {}


def repair_torn_offsets(config: Config, pipeline: str, location: str) -> str | None:
    """Set aside a torn last offset file whose batch no table holds; what was done, or None."""
    checkpoint = Checkpoint(config, location)
    batch_id = checkpoint.uncommitted()
    if batch_id is None:
        return None
    try:
        parse_offsets(checkpoint.read("offsets", batch_id))
        return None
    except ValueError:
        pass
    holders = _holders(config, pipeline, batch_id)
    where = f"{location}/offsets/{batch_id}"
    if holders:
        raise QueryError(
            f"the checkpoint's offset file {where} is torn, and {', '.join(holders)} hold "
            f"batch {batch_id}: planning it again could give it other rows",
            query=pipeline,
            batch_id=batch_id,
            hint="restore the file from a backup of the checkpoint",
        )
    moved = checkpoint.set_aside("offsets", batch_id)
    return (
        f"the checkpoint's offset file {where} was torn and no table holds batch {batch_id}: "
        f"set aside to {moved}; the batch is planned again"
    )


def _holders(config: Config, pipeline: str, batch_id: int) -> list[str]:
    """The tables of the lake that hold `pipeline`'s commit of `batch_id` (or a later one)."""
    guard = CommitGuard(config, pipeline)
    return [
        str(ref) for ref in all_tables(config)
        if guard.committed(ref.path(config), batch_id) is not None
    ]  # fmt: skip


def part_written(config: Config, pipeline: str) -> tuple[int, list[str]] | None:
    """The batch the pipeline's checkpoint planned and did not commit, when some tables already
    hold it (a run that died inside the batch: its restart finishes it), with those tables."""
    batch_id = Checkpoint(config, config.checkpoint_path(pipeline)).uncommitted()
    if batch_id is None:
        return None
    holders = _holders(config, pipeline, batch_id)
    return (batch_id, holders) if holders else None


def skipped_offsets(config: Config, location: str) -> list[Skipped]:
    """Per topic, offsets after the checkpoint's last committed batch that Kafka no longer
    holds (retention deleted them before the pipeline read them)."""
    from streaming.kafka.admin import watermarks

    committed = Checkpoint(config, location).committed_offsets()
    if not committed:
        return []
    marks = watermarks(config.kafka, [(t, int(p)) for t, ps in committed.items() for p in ps])
    found = []
    for topic, partitions in sorted(committed.items()):
        gaps = [max(0, marks[topic, int(p)][0] - offset) for p, offset in partitions.items()]
        if sum(gaps):
            found.append(Skipped(topic, sum(gaps), sum(1 for g in gaps if g)))
    return found


def check_data_loss(config: Config, pipeline: str, location: str) -> None:
    """Stop with the count when retention overtook the stream, unless told to skip."""
    skipped = skipped_offsets(config, location)
    if not skipped:
        return
    text = "; ".join(f"{s.topic}: {s.offsets} offsets in {s.partitions} partitions"
                     for s in skipped)  # fmt: skip
    if config.stream.fail_on_data_loss:
        raise QueryError(
            f"Kafka deleted records the pipeline had not read (retention overtook the stream): "
            f"{text}",
            query=pipeline,
            hint="raise the topics' retention; to go on without them, run with "
            "LAKEHOUSE_FAIL_ON_DATA_LOSS=false (the skipped offsets are logged)",
        )
    log.warning("skipping offsets Kafka no longer holds (LAKEHOUSE_FAIL_ON_DATA_LOSS=false): %s",
                text)  # fmt: skip
