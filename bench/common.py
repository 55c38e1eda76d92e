"""Shared bits of the benchmark harness: paths, process hygiene, memory readings."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent

if str(REPO) not in sys.path:
    # civicband_pipelines_tests is not installed, only importable from the repo. Appended, so that
    # PYTHONPATH=<a copy of the code> measures that copy instead of the installed package.
    sys.path.append(str(REPO))


def peak_rss_mb() -> dict:
    """This process's peak resident memory: ru_maxrss and /proc's VmHWM (both in MB)."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kb = lambda name: int(fields[name].split()[0]) if name in fields else 0  # noqa: E731
    return {
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_mb": kb("VmHWM") / 1024,
        "vmrss_mb": kb("VmRSS") / 1024,
    }


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a server process plus its live children and its reaped ones (e.g. PostgreSQL backends)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        own = int(fields[11]) + int(fields[12])
        if int(stat.parent.name) == pid:
            total += own + int(fields[13]) + int(fields[14])  # + reaped children
        elif int(fields[1]) == pid:
            total += own
    return total / tick


def start_group(cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """Start a process in its own process group (so its children can be stopped with it)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )


def stop_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group this harness started, then SIGKILL it if it lingers."""
    if process is None:
        return
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_until(condition, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; TimeoutError past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
