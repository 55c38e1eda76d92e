"""Throughput, memory and verification cost of one partition: fetch ceiling vs sync vs naive upserts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field

from common import BENCH, PYTHON, tree_cpu_seconds
from setup_env import Municipality, Stores

from civicband_pipelines.client import CivicBandClient
from civicband_pipelines.config import ClientSettings
from civicband_pipelines.store import MeetingStore
from civicband_pipelines.verify import verify_counts

STORES = ("sqlite", "postgresql")
FETCH_VARIANTS = {  # label -> child.py flags
    "sequential": [],
    "prefetch": ["--prefetch"],
    "prefetch + parse_row": ["--prefetch", "--parse"],
}
CHILD_TIMEOUT = 900


@dataclass
class PartitionResult:
    municipality: Municipality
    fetch: dict[str, dict] = field(default_factory=dict)  # variant -> child result
    sync: dict[str, dict] = field(default_factory=dict)  # store -> child result
    naive: dict[str, dict] = field(default_factory=dict)  # store -> child result
    verify: dict[str, dict] = field(default_factory=dict)  # store -> requests, seconds

    @property
    def ceiling(self) -> float:
        """The fetch ceiling the sync is held to: the faster of the plain fetch variants."""
        return max(self.fetch[v]["rows_per_second"] for v in ("sequential", "prefetch"))


@dataclass(frozen=True)
class Servers:
    """Where the CPU outside the measured process goes: the replica and PostgreSQL (with its backends)."""

    replica_pid: int
    postgres_pid: int

    def cpu(self) -> dict:
        return {"replica": tree_cpu_seconds(self.replica_pid), "postgres": tree_cpu_seconds(self.postgres_pid)}


def run_child(servers: Servers, *args: str) -> dict:
    cmd = [PYTHON, str(BENCH / "child.py"), *args]
    before, load = servers.cpu(), os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    after = servers.cpu()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Server CPU is counted over the child's whole life (setup included), a little more than its timed loop.
    return result | {f"{name}_cpu_seconds": after[name] - before[name] for name in after} | {"load_before": load}


def measure_partition(base_url: str, servers: Servers, stores: Stores, muni: Municipality, naive_rows: int | None, log) -> PartitionResult:
    result = PartitionResult(muni)
    common_args = ["--base-url", base_url, "--municipality", muni.subdomain]
    for label, flags in FETCH_VARIANTS.items():
        result.fetch[label] = run_child(servers, "fetch", *common_args, *flags)
        log(f"  fetch {label}: {result.fetch[label]['rows_per_second']:.0f} rows/s")
    for kind in STORES:
        url = stores.fresh(kind, "sync")
        try:
            result.sync[kind] = run_child(servers, "sync", *common_args, "--store", url)
            log(f"  sync {kind}: {result.sync[kind]['rows_per_second']:.0f} rows/s, peak RSS {result.sync[kind]['vmhwm_mb']:.0f} MB")
            result.verify[kind] = measure_verification(base_url, url, muni)
        finally:
            stores.drop(url)
        if naive_rows:
            result.naive[kind] = measure_naive(servers, common_args, stores, kind, naive_rows)
            log(f"  naive {kind}: {result.naive[kind]['rows_per_second']:.0f} rows/s")
    return result


def measure_naive(servers: Servers, common_args: list[str], stores: Stores, kind: str, rows: int) -> dict:
    url = stores.fresh(kind, "naive")
    try:
        return run_child(servers, "naive", *common_args, "--store", url, "--rows", str(rows))
    finally:
        stores.drop(url)


def measure_verification(base_url: str, store_url: str, muni: Municipality) -> dict:
    """HTTP requests and time of an exact count upstream, and of the whole count check."""
    requests: list[str] = []
    client = CivicBandClient(ClientSettings(base_url=base_url, retries=0))
    client._http.event_hooks["request"].append(lambda request: requests.append(str(request.url)))
    store = MeetingStore(store_url)
    try:
        start = time.perf_counter()
        upstream = client.count(muni.subdomain, "agenda")
        count_seconds = time.perf_counter() - start
        count_requests = len(requests)
        start = time.perf_counter()
        check = verify_counts(client, store, muni.subdomain, "agenda")
        check_seconds = time.perf_counter() - start
    finally:
        client.close()
        store.dispose()
    return {"count": upstream, "count_requests": count_requests, "count_seconds": count_seconds,
            "check_requests": len(requests) - count_requests, "check_seconds": check_seconds,
            "check_passed": check.passed}
