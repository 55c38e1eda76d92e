"""Run the local civic.band replica (and its fault proxy) as a real subprocess, for tests.

    with running_replica(root, proxy=True) as replica:
        settings.base_url = replica.base_url_template     # through the proxy when proxy=True
        replica.set_faults(rate=1.0, kinds=["error_500"])
        replica.fault_stats()["table_pages_ok"]

A session-scoped pytest fixture:

    @pytest.fixture(scope="session")
    def replica(tmp_path_factory):
        root = tmp_path_factory.mktemp("replica")
        build_demo(root)
        with running_replica(root) as running:
            yield running
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT = 30.0


@dataclass
class ReplicaProcess:
    root: Path
    process: subprocess.Popen
    run_dir: Path  # holds the log and the ready file
    direct_url: str  # the Datasette router, e.g. http://127.0.0.1:PORT
    proxy_url: str | None  # the fault proxy in front of it, if started

    @property
    def base_url_template(self) -> str:
        """What the client should use: through the proxy when there is one."""
        return (self.proxy_url or self.direct_url) + "/{subdomain}"

    @property
    def direct_url_template(self) -> str:
        return self.direct_url + "/{subdomain}"

    @property
    def control_url(self) -> str | None:
        return self.proxy_url and self.proxy_url + "/__faults__"

    def set_faults(self, rate: float, kinds: list[str] | None = None, seed: int = 0,
                   **plan) -> dict:
        """Set the proxy's fault plan (see FaultPlan: slow_seconds, retry_after, ...)."""
        body = {"rate": rate, "seed": seed, **plan}
        if kinds is not None:
            body["kinds"] = list(kinds)
        return self._control("POST", "", json=body)

    def clear_faults(self) -> dict:
        return self.set_faults(0.0)

    def fault_stats(self) -> dict:
        return self._control("GET", "")

    def reset_stats(self) -> dict:
        return self._control("DELETE", "/stats")

    def _control(self, method: str, suffix: str, **kwargs) -> dict:
        if not self.control_url:
            raise RuntimeError("this replica runs without the fault proxy")
        response = httpx.request(method, self.control_url + suffix, timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def log(self) -> str:
        path = self.run_dir / "replica.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait for a clean exit (kill if it hangs); returns the exit code."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return self.process.returncode
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def start_replica(root, *, proxy: bool = True, service_secret: str | None = None,
                  sql_time_limit_ms: int | None = None, timeout: float = START_TIMEOUT) -> ReplicaProcess:
    """Start `python -m civicband_pipelines.replica serve` on free ports; return once healthy."""
    run_dir = Path(tempfile.mkdtemp(prefix="replica-run-"))
    ready = run_dir / "ready.json"
    cmd = [sys.executable, "-m", "civicband_pipelines.replica", "serve", "--dir", str(root),
           "--port", "0", "--ready-file", str(ready)]
    if proxy:
        cmd += ["--proxy-port", "0"]
    if service_secret:
        cmd += ["--service-secret", service_secret]
    if sql_time_limit_ms:
        cmd += ["--sql-time-limit-ms", str(sql_time_limit_ms)]
    with open(run_dir / "replica.log", "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    replica = ReplicaProcess(Path(root), process, run_dir, "", None)
    try:
        info = _wait_for_ready_file(replica, ready, time.monotonic() + timeout)
        replica.direct_url, replica.proxy_url = info["url"], info["proxy_url"]
        for url in filter(None, (replica.direct_url, replica.proxy_url)):
            _wait_healthy(replica, url + "/-/health", time.monotonic() + timeout)
    except BaseException:
        log_text = replica.log()
        replica.stop()
        raise RuntimeError(f"replica did not start:\n{log_text}") from None
    return replica


@contextlib.contextmanager
def running_replica(root, **kwargs) -> Iterator[ReplicaProcess]:
    replica = start_replica(root, **kwargs)
    try:
        yield replica
    finally:
        replica.stop()


def _wait_for_ready_file(replica: ReplicaProcess, ready: Path, deadline: float) -> dict:
    while not ready.exists():
        if replica.process.poll() is not None:
            raise RuntimeError(f"exited with {replica.process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("no ready file")
        time.sleep(0.05)
    return json.loads(ready.read_text())


def _wait_healthy(replica: ReplicaProcess, url: str, deadline: float) -> None:
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if replica.process.poll() is not None:
            raise RuntimeError(f"exited with {replica.process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never answered 200")
        time.sleep(0.05)
