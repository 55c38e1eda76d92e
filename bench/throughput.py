"""Throughput, memory and verification cost of one partition: fetch ceiling vs sync vs naive upserts."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
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
BUSY_VARIANT = "prefetch, other core busy"  # beside a spinning process (see busy_core)
FETCH_VARIANTS = {  # label -> child.py flags
    "sequential": [],
    "prefetch": ["--prefetch"],
    "prefetch + parse_rows": ["--prefetch", "--parse"],
    BUSY_VARIANT: ["--prefetch"],
}
CEILING_VARIANTS = ("sequential", "prefetch")  # the ceiling is the faster of these, in each round
FIRST_ROUND_ONLY = ("prefetch + parse_rows",)  # informative, not needed in every round
CHILD_TIMEOUT = 300  # fetch and naive children; syncs get --sync-timeout


@dataclass
class PartitionResult:
    """Interleaved rounds of (fetch variants, syncs): each sync is held to the ceiling of its own round,
    measured minutes apart at most, since the machine's speed drifts by tens of percent."""

    municipality: Municipality
    rounds: list[dict] = field(default_factory=list)  # {"fetch": {variant: result}, "sync": {store: result}}
    naive: dict[str, dict] = field(default_factory=dict)  # store -> child result
    verify: dict[str, dict] = field(default_factory=dict)  # store -> requests, seconds
    resync: dict[str, dict] = field(default_factory=dict)  # store -> child result (first round)

    @staticmethod
    def round_ceiling(measured: dict) -> float:
        """The faster ceiling variant, each the mean of its runs before and after the round's syncs."""
        return max(statistics.mean(measured[when][v]["rows_per_second"] for when in ("fetch", "fetch_after")
                                   if v in measured[when])
                   for v in CEILING_VARIANTS)

    @property
    def ceiling(self) -> float:
        """The median of the rounds' fetch ceilings (the lower one of the middle two, as for every median here)."""
        return statistics.median_low(self.round_ceiling(r) for r in self.rounds)

    def ratios(self, kind: str) -> list[float]:
        """sync ÷ its round's ceiling, per round."""
        return [r["sync"][kind]["rows_per_second"] / self.round_ceiling(r) for r in self.rounds if kind in r["sync"]]

    def ratio(self, kind: str) -> float:
        return statistics.median_low(self.ratios(kind))

    @property
    def fetch(self) -> dict[str, dict]:
        """Per variant, the median run (by rows/s), before and after the syncs."""
        runs: dict[str, list[dict]] = {}
        for r in self.rounds:
            for when in ("fetch", "fetch_after"):
                for variant, run in r[when].items():
                    runs.setdefault(variant, []).append(run)
        return {v: _median_by(vruns, lambda run: run["rows_per_second"]) for v, vruns in runs.items()}

    @property
    def sync(self) -> dict[str, dict]:
        """Per store, the run of the round with the median ratio."""
        result = {}
        for kind in dict.fromkeys(k for r in self.rounds for k in r["sync"]):
            rounds = [r for r in self.rounds if kind in r["sync"]]
            median = _median_by(rounds, lambda r: r["sync"][kind]["rows_per_second"] / self.round_ceiling(r))
            result[kind] = median["sync"][kind]
        return result

    def peak_rss(self, kind: str) -> float:
        """The highest peak RSS of the store's syncs over the rounds."""
        return max(r["sync"][kind]["vmhwm_mb"] for r in self.rounds if kind in r["sync"])


def _median_by(items: list, key):
    """The item of median `key` (the lower one of the middle two, as statistics.median_low)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


@dataclass(frozen=True)
class Servers:
    """Where the CPU outside the measured process goes: the replica and PostgreSQL (with its backends)."""

    replica_pid: int
    postgres_pid: int

    def cpu(self) -> dict:
        return {"replica": tree_cpu_seconds(self.replica_pid), "postgres": tree_cpu_seconds(self.postgres_pid)}


def run_child(servers: Servers, *args: str, timeout: float = CHILD_TIMEOUT, busy: bool = False) -> dict:
    """Run child.py; its last line is the result. On timeout, the result is built from its progress lines."""
    cmd = [PYTHON, str(BENCH / "child.py"), *args]
    before, load = servers.cpu(), os.getloadavg()[0]
    try:
        with busy_core() if busy else contextlib.nullcontext():
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        stdout, timed_out = done.stdout, False
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    except subprocess.TimeoutExpired as expired:  # run() has killed the child
        stdout, timed_out = _text(expired.stdout), True
    after = servers.cpu()
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    progress = [(p["progress"], p["t"]) for p in lines if "progress" in p]
    result = lines[-1] if lines and not timed_out else partial_result(lines, timeout)
    # Server CPU is counted over the child's whole life (setup included), a little more than its timed loop.
    cpu = {f"{name}_cpu_seconds": after[name] - before[name] for name in after}
    return result | cpu | {"load_before": load, "timed_out": timed_out} | batch_rates(progress)


def partial_result(lines: list[dict], timeout: float) -> dict:
    last = next((p for p in reversed(lines) if "progress" in p), None)
    if last is None:
        raise RuntimeError(f"child timed out after {timeout:.0f} s without any progress")
    rows, seconds = last["progress"], last["t"]
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds, "cpu_seconds": float("nan"),
            "vmhwm_mb": last["vmhwm_mb"], "rss_before_sync_mb": float("nan")}


def batch_rates(progress: list[tuple[int, float]], window: int = 10) -> dict:
    """rows/s over the first and the last `window` batches: a per-batch cost that grows shows here."""
    if len(progress) < 2 * window:
        return {}
    (r0, t0), (r1, t1) = progress[window - 1], progress[-window - 1]
    (r2, t2) = progress[-1]
    return {"first_batches_rows_per_second": r0 / t0, "last_batches_rows_per_second": (r2 - r1) / (t2 - t1)}


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


@contextlib.contextmanager
def busy_core():
    """A process spinning on the CPU meanwhile: how fast upstream pages come when the machine's other core
    works, as it does during a sync (this VM's two cores slow each other down)."""
    spinner = subprocess.Popen([PYTHON, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def measure_partition(base_url: str, servers: Servers, stores: Stores, muni: Municipality, naive_rows: int | None,
                      sync_timeout: float, log, fetch_variants=tuple(FETCH_VARIANTS), repeat: int = 1) -> PartitionResult:
    """`repeat` rounds of: the fetch variants, a sync per store, the ceiling variants again (so drift during
    the round cancels out); the first round then measures verification, a re-sync and the naive upserts."""
    result = PartitionResult(muni)
    common_args = ["--base-url", base_url, "--municipality", muni.subdomain]

    def fetch(label: str) -> dict:
        run = run_child(servers, "fetch", *common_args, *FETCH_VARIANTS[label], busy=label == BUSY_VARIANT)
        log(f"    fetch {label}: {run['rows_per_second']:.0f} rows/s")
        return run

    for number in range(repeat):
        log(f"  round {number + 1} of {repeat}")
        first = number == 0
        measured: dict = {"fetch": {}, "sync": {}, "fetch_after": {}}
        for label in fetch_variants:
            if first or label not in FIRST_ROUND_ONLY:
                measured["fetch"][label] = fetch(label)
        urls = {kind: stores.fresh(kind, "sync") for kind in STORES}
        try:
            for kind, url in urls.items():
                measured["sync"][kind] = run_child(servers, "sync", *common_args, "--store", url, timeout=sync_timeout)
                log(f"    sync {kind}: {_summary(measured['sync'][kind])}")
            for label in CEILING_VARIANTS:
                if label in fetch_variants:
                    measured["fetch_after"][label] = fetch(label)
            if first:
                _first_round_extras(result, servers, common_args, stores, urls, measured["sync"], naive_rows,
                                    sync_timeout, base_url, log)
        finally:
            for url in urls.values():
                stores.drop(url)
        result.rounds.append(measured)
    return result


def _first_round_extras(result: PartitionResult, servers: Servers, common_args: list[str], stores: Stores,
                        urls: dict[str, str], syncs: dict[str, dict], naive_rows: int | None, sync_timeout: float,
                        base_url: str, log) -> None:
    """Per store: the cost of verifying what the sync wrote, a second full sync of the same partition
    (every page unchanged), and the naive per-row upserts."""
    for kind, url in urls.items():
        if not syncs[kind]["timed_out"]:
            result.verify[kind] = measure_verification(base_url, url, result.municipality)
            result.resync[kind] = run_child(servers, "sync", *common_args, "--store", url, timeout=sync_timeout)
            log(f"    re-sync {kind}: {_summary(result.resync[kind])}")
        if naive_rows:
            result.naive[kind] = measure_naive(servers, common_args, stores, kind, naive_rows)
            log(f"    naive {kind}: {result.naive[kind]['rows_per_second']:.0f} rows/s")


def _summary(sync: dict) -> str:
    timed_out = f" (TIMED OUT after {sync['seconds']:.0f} s at {sync['rows']:,} rows)" if sync["timed_out"] else ""
    return f"{sync['rows_per_second']:.0f} rows/s, peak RSS {sync['vmhwm_mb']:.0f} MB{timed_out}"


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
