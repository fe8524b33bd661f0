"""How `lakehouse chaos` reports a command of a scenario that failed: its one `error:` line, or
the signal that killed it (a process the OOM killer ends writes no error line)."""

from __future__ import annotations

import subprocess

from streaming.chaos.scenarios import _failed


def _done(returncode: int, stderr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["lakehouse", "erase"], returncode, "", stderr)


def test_a_failed_command_is_its_error_line() -> None:
    done = _done(4, "12:00:00 I streaming.erasure: erasure 1: applying\nerror: no such table\n")
    assert str(_failed("the erasure", done)) == "the erasure failed: error: no such table"
    assert str(_failed("the erasure", _done(3, ""))) == "the erasure failed: exit 3"


def test_a_command_killed_by_a_signal_says_which_and_not_its_last_log_line() -> None:
    done = _done(-9, "12:00:00 I streaming.erasure: erasure 1: purging old file copies in 9 s\n")
    said = str(_failed("the erasure", done))
    assert said.startswith("the erasure was killed by SIGKILL (exit -9)"), said
    assert "purging" not in said and "out-of-memory" in said
