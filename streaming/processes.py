"""Local helper processes (the Kafka broker, the S3 server): liveness, ports, stopping by pid."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from streaming.errors import LakehouseError


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie child of ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True


def require_free_port(port: int, error: type[LakehouseError], setting: str) -> None:
    """Raise `error` naming `setting` when something already listens on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise error(
                f"port {port} on 127.0.0.1 is already in use by another process",
                hint=f"stop that process or choose another port with {setting}",
            ) from None


def stop_pid(pid: int, timeout_s: float) -> bool:
    """SIGTERM for a clean shutdown, SIGKILL only after `timeout_s`. True when it was forced."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    forced = alive(pid)
    if forced:
        os.kill(pid, signal.SIGKILL)
    return forced


def log_tail(logs: list[Path], causes_first: bool = False) -> str:
    """The most telling line of the first log that exists: the last error line (or, with
    `causes_first`, the first `…Exception:` / `…Error:` cause line), else the last line."""
    for path in logs:
        if path.exists():
            lines = [line for line in path.read_text(errors="replace").splitlines() if line]
            causes = [line for line in lines if "Exception:" in line or "Error:" in line]
            errors = [line for line in lines if "ERROR" in line or "Exception" in line]
            picked = (causes[:1] if causes_first else []) or errors[-1:] or lines[-1:] or [""]
            return picked[0][:300]
    return ""


def stop_service(pid: int | None, pid_file: Path, label: str, timeout_s: float) -> str:
    """Stop a helper server by its pid (SIGTERM, SIGKILL after `timeout_s`), drop its pid file
    and say what happened, e.g. `Kafka broker stopped (pid 42)`."""
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return f"{label} is not running"
    forced = stop_pid(pid, timeout_s)
    pid_file.unlink(missing_ok=True)
    return f"{label} stopped (pid {pid}){' with SIGKILL after a timeout' if forced else ''}"
