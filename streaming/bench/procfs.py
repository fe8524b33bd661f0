"""CPU time and memory of a process tree, read from /proc (Linux).

A sampler thread walks the tree under one root pid every 0.2 s: the Python process, its JVM (Spark
launches the JVM as a child of the Python driver) and any worker below them (Spark's Python
workers). CPU is utime + stime summed over every process seen; memory is the peak VmRSS of the
root Python process, of the JVM, and of the workers summed (forked workers share pages, so that
sum over-states them).
`mark()` closes a phase: its CPU seconds and peaks since the previous mark.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
INTERVAL_S = 0.2


@dataclass(frozen=True)
class Phase:
    """What one stretch of a process tree's life cost."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    comm: str
    cpu_ticks: int


def read_proc(pid: int) -> _Proc | None:
    """One process's parent, command name and utime + stime, or None if it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Proc(pid, int(fields[1]), comm, int(fields[11]) + int(fields[12]))


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (0 if it is gone)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_tree(root: int) -> list[_Proc]:
    """The root and every descendant alive now."""
    procs = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (proc := read_proc(int(entry.name))) is not None:
            procs[proc.pid] = proc
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            tree.append(procs[pid])
            todo.extend(children.get(pid, []))
    return tree


def rss_by_kind(tree: list[_Proc], root: int) -> dict[str, float]:
    """Resident MiB of a process tree per kind (python, jvm, workers)."""
    rss: dict[str, float] = {}
    for proc in tree:
        kind = kind_of(proc, root)
        rss[kind] = rss.get(kind, 0.0) + rss_mb(proc.pid)
    return rss


def kind_of(proc: _Proc, root: int) -> str:
    if proc.comm == "java":
        return "jvm"
    return "python" if proc.pid == root else "workers"


class TreeSampler:
    """Samples a process tree in a daemon thread until `stop()`; `mark()` ends a phase."""

    def __init__(self, root: int, interval_s: float = INTERVAL_S) -> None:
        self.root = root
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._base: dict[int, int] = {p.pid: p.cpu_ticks for p in process_tree(root)}
        self._ticks: dict[int, int] = dict(self._base)
        self._peaks: dict[str, float] = {}
        self._last_rss: dict[str, float] = {}
        self._overall: dict[str, float] = {}
        self._since = time.monotonic()
        self._cpu_at_mark = 0
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> Phase:
        """The last phase (since the previous mark); the thread ends."""
        phase = self.mark()
        self._stop.set()
        self._thread.join(timeout=5)
        return phase

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        tree = process_tree(self.root)
        rss = rss_by_kind(tree, self.root)
        with self._lock:
            for proc in tree:
                self._ticks[proc.pid] = max(self._ticks.get(proc.pid, 0), proc.cpu_ticks)
            self._last_rss = rss
            for kind, value in rss.items():
                self._peaks[kind] = max(self._peaks.get(kind, 0.0), value)
                self._overall[kind] = max(self._overall.get(kind, 0.0), value)

    def cpu_s(self) -> float:
        """CPU seconds of the tree since the sampler was made (exited processes: last sample)."""
        with self._lock:
            ticks = sum(t - self._base.get(pid, 0) for pid, t in self._ticks.items())
        return ticks / TICKS

    def mark(self) -> Phase:
        """Close the current phase: its wall time, CPU seconds and peak RSS per process kind."""
        self.sample()
        now = time.monotonic()
        with self._lock:
            total = sum(t - self._base.get(pid, 0) for pid, t in self._ticks.items())
            phase = Phase(
                wall_s=round(now - self._since, 3),
                cpu_s=round((total - self._cpu_at_mark) / TICKS, 2),
                peak_rss_mb={k: round(v, 1) for k, v in sorted(self._peaks.items())},
            )
            self._cpu_at_mark = total
            self._since = now
            self._peaks = dict(self._last_rss)  # what is resident now belongs to the next one too
        return phase

    def overall_peaks(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 1) for k, v in sorted(self._overall.items())}
