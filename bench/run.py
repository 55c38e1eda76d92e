"""Issue 7's benchmark: sync throughput vs the fetch ceiling and naive upserts, memory, verification
cost and Dagster fleet overhead, on SQLite and PostgreSQL. Writes a markdown report.

  .venv/bin/python bench/run.py [--pages 200000] [--small 20000] [--naive-slice 5000] [--fleet 100]
                                [--out BENCHMARKS.md]   (more options: --help; bench/README.md)

Everything runs against loopback servers this script starts (a Datasette replica, a throwaway
PostgreSQL, Dagster daemon and webserver) and everything is stopped and deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
import fleet
import report
import setup_env
import throughput

from civicband_pipelines_tests.pg_server import running_postgres
from civicband_pipelines_tests.replica_process import running_replica


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200_000, help="agenda pages of the large municipality")
    parser.add_argument("--small", type=int, default=20_000, help="agenda pages of the small municipality")
    parser.add_argument("--naive-slice", type=int, default=5000, help="rows upserted one by one (naive)")
    parser.add_argument("--fleet", type=int, default=100, help="partitions in the Dagster backfill (0 = skip)")
    parser.add_argument("--fleet-variants", default=",".join(fleet.DEFAULT_VARIANTS),
                        help=f"comma-separated, from: {', '.join(fleet.VARIANTS)}")
    parser.add_argument("--fleet-timeout", type=float, default=120,
                        help="seconds a variant's runs may take (from its first run); beyond, the wall time is extrapolated")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of fetch ceiling and syncs per "
                        "partition; each sync is held to its own round's ceiling and the median is reported")
    parser.add_argument("--sync-timeout", type=float, default=240, help="seconds before a sync child is stopped "
                        "(its rate is then taken from the batches it committed)")
    parser.add_argument("--latency-ms", type=int, default=200, help="also measure the small partition through a "
                        "proxy adding this delay to every request (0 = skip)")
    parser.add_argument("--only", choices=("throughput", "fleet"), help="run one half only (for debugging)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores) for debugging")
    parser.add_argument("--out", type=Path, default=common.REPO / "BENCHMARKS.md")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="civicband-bench-"))
    try:
        results = run_all(args, work)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.monotonic() - started
    args.out.write_text(report.render(results, args))
    log(f"wrote {args.out} ({results['total_seconds']:.0f} s in all)")
    return 0


def run_all(args, work: Path) -> dict:
    replica_root = work / "replica"
    log(f"building the replica in {replica_root}")
    measured = build_measured(args, replica_root)
    fleet_names = setup_env.build_fleet(replica_root, (args.fleet + 1) // 2) if args.fleet and args.only != "throughput" else []
    setup_env.warm_page_cache(replica_root)
    results: dict = {"machine": report.machine(), "partitions": []}
    with running_replica(replica_root, proxy=False) as replica, running_postgres("civicband_bench") as pg_url:
        results["machine"]["postgresql"], postmaster = report.postgres_info(pg_url)
        servers = throughput.Servers(replica.process.pid, postmaster)
        base_url = replica.direct_url_template
        stores = setup_env.Stores(work, pg_url)
        setup_env.warm_up(base_url, [muni.subdomain for muni, _ in measured])
        for muni, naive in measured:
            log(f"partition {muni.subdomain}/agenda: {muni.agenda_pages} pages")
            results["partitions"].append(throughput.measure_partition(base_url, servers, stores, muni, naive, args.sync_timeout,
                                                                      log, repeat=args.repeat))
        if measured and args.latency_ms:
            results["latency"] = measure_with_latency(args, replica_root, measured[0][0], postmaster, stores)
        if fleet_names:
            results["fleet"] = fleet.measure_fleet(
                base_url, work / "fleet", fleet_names, args.fleet, args.fleet_variants.split(","), args.fleet_timeout, log
            )
    return results


def build_measured(args, root: Path) -> list[tuple[setup_env.Municipality, int | None]]:
    """The small and the large municipality, each with its naive slice (only the large one gets one)."""
    if args.only == "fleet":
        return []
    small = setup_env.build_measured(root, "small.bench", args.small, seed=2)
    large = setup_env.build_measured(root, "large.bench", args.pages, seed=1)
    return [(small, None), (large, args.naive_slice)]


def measure_with_latency(args, replica_root: Path, muni: setup_env.Municipality, postmaster: int, stores) -> dict:
    """The small partition again, through the replica's proxy delaying every request: upstream is remote in
    production, so fetching, not local CPU, is the bottleneck there."""
    log(f"partition {muni.subdomain}/agenda through a proxy adding {args.latency_ms} ms per request")
    with running_replica(replica_root, proxy=True) as slow:
        slow.set_faults(rate=1.0, kinds=["slow"], slow_seconds=args.latency_ms / 1000)
        servers = throughput.Servers(slow.process.pid, postmaster)  # the proxy runs in the replica's process
        setup_env.warm_up(slow.base_url_template, [muni.subdomain])
        result = throughput.measure_partition(slow.base_url_template, servers, stores, muni, None, args.sync_timeout, log,
                                              fetch_variants=("sequential", "prefetch"))
    return {"latency_ms": args.latency_ms, "result": result}


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
