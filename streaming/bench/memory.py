"""Memory of a pipeline over a rate step: does it level off, or grow for as long as it runs?

Resident memory alone cannot tell: a JVM keeps the heap it once took. So every sample asks the
pipeline's JVM for a class histogram (`jcmd <pid> GC.class_histogram`), which runs a full
collection first and totals what survived it, in one pause of well under a second on this heap:
the live heap, which grows without end only if something in the pipeline (state, caches, Delta
snapshots) does. A step is sampled `SAMPLES` times; the verdict
compares the live heap at its end with the one a third of the way in, once warm-up and the first
checkpoints have settled; shorter steps than `MIN_VERDICT_S` get no verdict and, so that
nothing pauses them, no heap readings (resident memory only).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from streaming.bench.procfs import kind_of, process_tree, rss_by_kind

SAMPLES = 10
MIN_EVERY_S = 5.0
# Growth over the last two thirds of a step that still counts as level: JIT code, class data
# and heap sizing move by tens of MB whatever the pipeline does.
LEVEL_FRACTION = 0.10
LEVEL_MB = 64.0
MIN_VERDICT_S = 300.0


@dataclass(frozen=True)
class MemorySample:
    at: float  # unix seconds
    live_heap_mb: float | None  # JVM heap in use right after a full collection
    rss_mb: dict[str, float]  # per process kind: python, jvm, workers


def live_heap_mb(pid: int) -> float | None:
    """What a full collection leaves on the JVM's heap, in MiB; None if it cannot be read."""
    try:
        lines = subprocess.run(
            ["jcmd", str(pid), "GC.class_histogram"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout.strip().splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    total = lines[-1].split() if lines else []  # "Total <instances> <bytes>"
    if len(total) != 3 or total[0] != "Total" or not total[2].isdigit():
        return None
    return round(int(total[2]) / 2**20, 1)


class MemoryMonitor:
    """Samples a pipeline's process tree `SAMPLES` times over `seconds` in a daemon thread."""

    def __init__(self, root: int, seconds: float) -> None:
        self.root = root
        self.every_s = max(MIN_EVERY_S, seconds / SAMPLES)
        # A step too short for a verdict is not paused for heap readings: RSS only.
        self.heap = seconds >= MIN_VERDICT_S
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def start(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def stop(self) -> list[MemorySample]:
        """The samples so far, the last one taken now."""
        self._stop.set()
        self._thread.join(timeout=120)
        self.samples.append(self._sample())
        return self.samples

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(self._sample())

    def _sample(self) -> MemorySample:
        tree = process_tree(self.root)
        rss = {kind: round(mb, 1) for kind, mb in rss_by_kind(tree, self.root).items()}
        jvm = next((p.pid for p in tree if kind_of(p, self.root) == "jvm"), None)
        heap = live_heap_mb(jvm) if jvm is not None and self.heap else None
        return MemorySample(time.time(), heap, rss)


def summary(samples: list[MemorySample], started: float) -> dict[str, Any]:
    """Live heap and RSS over the step, and whether the live heap levelled off ("level"),
    kept growing ("grows") or had too few readings or too short a step to tell
    ("undetermined")."""
    heaps = [(s.at, s.live_heap_mb) for s in samples if s.live_heap_mb is not None]
    verdict, growth = "undetermined", None
    span = heaps[-1][0] - heaps[0][0] if heaps else 0.0
    if len(heaps) >= 4 and span >= MIN_VERDICT_S:
        third = next(h for at, h in heaps if at >= heaps[0][0] + span / 3)
        last = heaps[-1][1]
        growth = round(last - third, 1)
        verdict = "level" if growth <= max(LEVEL_MB, LEVEL_FRACTION * third) else "grows"
    return {
        "verdict": verdict,
        "live_heap_growth_mb": growth,
        "live_heap_max_mb": max((h for _, h in heaps), default=None),
        "samples": [
            {"t": round(s.at - started, 1), "live_heap_mb": s.live_heap_mb, "rss_mb": s.rss_mb}
            for s in samples
        ],
    }
