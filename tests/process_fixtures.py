"""Killing a real subprocess in the middle of its work, for the crash-safety tests."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, poll: float = 0.05) -> None:
    """Wait until `ready()` while `proc` still runs, then SIGKILL it, so the kill lands in the middle
    of its work. Fails (with the process's output) when it ends first, or when `ready` has not come
    within `timeout` seconds; the process never outlives the call."""
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"finished before it could be killed:\n{proc.stdout.read() if proc.stdout else ''}"
            assert time.time() < deadline, f"not ready to be killed within {timeout} s"
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
