"""Frames computed once and held for one micro-batch, their lineage cut, freed when it ends."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class HeldFrames:
    """Local checkpoints of one batch (thread-safe: the layers run entities side by side).

    A local checkpoint rather than a cache: every later plan over it starts from its rows
    instead of carrying (and re-analysing, and matching against the cache) the whole decode
    and validation plan.
    """

    def __init__(self) -> None:
        self._held: list[DataFrame] = []
        self._lock = threading.Lock()

    def keep(self, frame: DataFrame, on_disk: bool = False) -> DataFrame:
        """`on_disk`: the rows are held on local disk, not in the heap (a batch's raw payloads:
        a few ten-megabyte messages must not crowd out the memory the batch's work needs)."""
        from pyspark import StorageLevel

        held = frame.localCheckpoint(storageLevel=StorageLevel.DISK_ONLY if on_disk else None)
        with self._lock:
            self._held.append(held)
        return held

    def release(self) -> None:
        """Unpersist the checkpoints' blocks now rather than when the JVM collects them."""
        with self._lock:
            held, self._held = self._held, []
        for frame in held:
            # A checkpoint's blocks belong to its RDD, which DataFrame.unpersist does not reach.
            frame._jdf.logicalPlan().rdd().unpersist(False)
