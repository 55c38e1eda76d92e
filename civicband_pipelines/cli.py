"""`civicband`: the command line, mirroring the original `resilient_backfill` management command."""

import argparse
import fcntl
import os
import socket
import sys
import time
from collections.abc import Sequence

import dagster as dg
import httpx

from .assets import PROCESS_TAG, TRIGGER_TAG
from .checks import matches_upstream
from .client import CivicBandClient, TransientError, UpstreamError
from .config import ClientSettings, ConfigError, civicband_home, database_url_from_env
from .leases import WAIT_FOREVER, active_lease, refusal, stale_after_from_env
from .naming import DOCUMENT_TYPES, InvalidSubdomain, validate_subdomain
from .partitions import MUNICIPALITY, partition_tags
from .resources import StoreUnavailable, open_store
from .schema import RESUMED_STATUSES
from .sync import BATCH_SIZE_HELP, MAX_BATCH_SIZE

# `running` too: a sync killed before anyone settled it. While its lease is live (it may be alive, or
# just killed) the municipality is busy: refused, or waited for with --wait.
RESUMABLE = RESUMED_STATUSES
NONE_REGISTERED = ("nothing to do: no municipality is registered yet (`civicband municipalities add SUBDOMAIN...`; "
                   "a webhook registers its municipality too)")
DEEP_HELP = ("compare every page (id, image, entities, votes), not only the counts (a request per 1000 upstream "
             "rows, 100 without the service secret; finds changed pages too)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: stopped (a sync that was running stopped at its last checkpoint, status paused; "
              "the same command again goes on from there, and syncs what it had not begun)", file=sys.stderr)
        return 130
    except (InvalidSubdomain, UpstreamError, ConfigError, StoreUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (TransientError, httpx.HTTPError) as error:
        print(f"error: civic.band did not answer after retries: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="civicband", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    backfill = commands.add_parser("backfill", help="sync partitions of meeting_pages in the foreground")
    backfill.add_argument("--subdomain", required=True, help="a municipality such as oakland.ca, or 'all'")
    backfill.add_argument("--document-type", choices=DOCUMENT_TYPES, help="default: both")
    backfill.add_argument("--batch-size", type=int, help=BATCH_SIZE_HELP)
    mode = backfill.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="only partitions whose last sync failed, was paused or died")
    mode.add_argument("--restart", action="store_true", help="ignore saved cursors and start new full syncs")
    mode.add_argument("--verify-only", action="store_true", help="sync nothing; verify as `civicband verify` does")
    backfill.add_argument("--deep", action="store_true", help=f"with --verify-only: {DEEP_HELP}")
    backfill.add_argument("--wait", action="store_true", help="wait for a busy municipality instead of refusing")
    backfill.set_defaults(handler=_backfill)

    verify = commands.add_parser("verify", help="compare partitions with upstream exactly; exit 1 on a mismatch")
    verify.add_argument("--subdomain", required=True, help="a municipality such as oakland.ca, or 'all'")
    verify.add_argument("--document-type", choices=DOCUMENT_TYPES, help="default: both")
    verify.add_argument("--deep", action="store_true", help=DEEP_HELP)
    verify.set_defaults(handler=_verify)

    status = commands.add_parser("status", help="print the job table")
    status.set_defaults(handler=_status)

    webhooks = commands.add_parser("webhooks", help="the receiver for civic.band's update webhook")
    webhooks_commands = webhooks.add_subparsers(required=True, metavar="ACTION")
    serve = webhooks_commands.add_parser("serve", help="serve PUT/POST /munis/api/update/<subdomain>/")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(handler=_webhooks_serve)

    dev = commands.add_parser("dev", help="local stack: replica, webhook receiver, Dagster UI and daemon")
    dev.add_argument("--dir", default=".civicband-dev", help="where the stack keeps its files (default: ./.civicband-dev)")
    dev.add_argument("--port", type=_tcp_port, default=3000, help="Dagster UI port (default 3000)")
    dev.add_argument("--webhook-port", type=_tcp_port, default=8080, help="webhook receiver port (default 8080)")
    dev.set_defaults(handler=_dev)

    munis = commands.add_parser("municipalities", help="register municipalities (new partitions)")
    munis_commands = munis.add_subparsers(required=True, metavar="ACTION")
    add = munis_commands.add_parser("add", help="register subdomains that civic.band has")
    add.add_argument("subdomains", nargs="*", metavar="SUBDOMAIN")
    add.add_argument("--file", type=argparse.FileType("r"), help="a file with one subdomain per line")
    add.set_defaults(handler=_municipalities_add)
    return parser


def _tcp_port(text: str) -> int:
    """A fixed port: the stack waits for each server on its port, so 0 (any free port) cannot work."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port between 1 and 65535")
    return int(text)


def _backfill(args: argparse.Namespace) -> int:
    if args.verify_only:
        return _verify(args)
    if args.deep:
        print("error: --deep goes with --verify-only", file=sys.stderr)
        return 2
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        print(f"error: --batch-size must be between 1 and {MAX_BATCH_SIZE}", file=sys.stderr)
        return 2
    _check_run_settings()
    instance, store = dagster_instance(), open_store(database_url_from_env())
    partitions = _partitions(instance, args)
    if args.resume:
        partitions = [(m, d) for m, d in partitions if (store.job(m, d) or {}).get("status") in RESUMABLE]
    if not partitions:
        print("nothing to do: no matching partitions to resume" if args.resume else NONE_REGISTERED)
        return 0
    busy = [m for m in dict.fromkeys(m for m, _ in partitions) if not _until_free(store, m, args.wait)]
    partitions = [(m, d) for m, d in partitions if m not in busy]
    if not partitions:
        _print_busy(busy)
        return 3
    # With --wait, each partition's sync also waits for the lease: a queued run may take it in between.
    sync_config = {"restart": args.restart, "lease_wait_seconds": WAIT_FOREVER if args.wait else 0}
    if args.batch_size is not None:  # else the store's default
        sync_config["batch_size"] = args.batch_size
    failed, taken, later, verifications = _sync_and_verify(instance, partitions, {"ops": {"meeting_pages": {"config": sync_config}}})
    ran = [p for p in partitions if p not in taken]
    if ran:  # else every one was SKIPPED
        _print_jobs(ran)
        print("\n".join(verifications))
        print(f"{len(ran) - len(failed) - len(later)} of {len(ran)} partitions synced and verified"
              + (f"; {len(later)} synced, verified when the sync that took it since completes" if later else ""))
    for municipality, document_type in failed:
        print(f"FAILED: {municipality}/{document_type}", file=sys.stderr)
    _print_busy(busy)
    for municipality, document_type in taken:
        print(f"SKIPPED: {municipality}/{document_type} (another sync took {municipality} while this command ran; "
              "--wait waits for it)", file=sys.stderr)
    return 1 if failed else 3 if busy or taken else 0


def _check_run_settings() -> None:
    """Read the settings the runs read, up front: a wrong one stops the command with one line (ConfigError)
    rather than failing every partition's run on it. (CLI runs ignore the time budget.)"""
    ClientSettings.from_env()
    stale_after_from_env()


def _print_busy(municipalities: list[str]) -> None:
    for municipality in municipalities:
        print(f"SKIPPED: {municipality} (another sync holds it; --wait waits for it)", file=sys.stderr)


def _sync_and_verify(instance: dg.DagsterInstance, partitions: list[tuple[str, str]], run_config: dict):
    """Run meeting_pages_job (sync, then check) per partition; returns (failed partitions, partitions
    whose municipality another sync had taken meanwhile, partitions synced but left to verify by a
    sync that began between this one and its check, check lines).

    A partition counts as synced only if its sync completed and its check passed."""
    failed, taken, later, lines = [], [], [], []
    for partition in partitions:
        result = _run(instance, "meeting_pages_job", partition, run_config)
        if _failed_with(result, "MunicipalityBusy"):
            taken.append(partition)
            continue
        evaluation = _evaluation(result)
        lines.append(_verification_line(partition, evaluation))
        outcome = _outcome(result, evaluation)
        if outcome != "verified":
            (later if outcome == "later" else failed).append(partition)
    return failed, taken, later, lines


def _outcome(result, evaluation) -> str:
    """`verified`; `later`: synced, and its check found a sync of the partition that began since (another
    run took the municipality between the sync and its check), which verifies it; else `failed`."""
    if not (result.success and _completed(result) and evaluation):
        return "failed"
    return "verified" if evaluation.passed else "failed" if _compared(evaluation) else "later"


def _completed(result) -> bool:
    """The run's sync completed, as its materialization says (the job row may be another sync's by now)."""
    statuses = (m.metadata.get("status") for m in result.asset_materializations_for_node("meeting_pages"))
    return any(status is not None and status.value == "completed" for status in statuses)


def _until_free(store, municipality: str, wait: bool) -> bool:
    """True once no other sync holds the municipality; without `wait`, refuse at once."""
    lease = active_lease(store, municipality)
    if lease is not None and not wait:
        print(refusal(municipality, lease), file=sys.stderr)
        return False
    if lease is not None:
        print(f"{refusal(municipality, lease)} Waiting...", file=sys.stderr, flush=True)
    while lease is not None:
        time.sleep(2)
        lease = active_lease(store, municipality)
    return True


def _verify(args: argparse.Namespace) -> int:
    _check_run_settings()
    instance = dagster_instance()
    partitions = _partitions(instance, args)
    failures = 0
    if not partitions:
        print(NONE_REGISTERED)
        return 0
    run_config = {"ops": {matches_upstream.op.name: {"config": {"compare_ids": args.deep}}}}
    for partition in partitions:
        evaluation = _evaluation(_run(instance, "verify_job", partition, run_config))
        failures += not (evaluation and evaluation.passed)
        print(_verification_line(partition, evaluation))
    print(f"{len(partitions) - failures} of {len(partitions)} partitions match upstream exactly")
    return 1 if failures else 0


def _evaluation(result):
    evaluations = result.get_asset_check_evaluations()
    return evaluations[0] if evaluations else None


def _verification_line(partition: tuple[str, str], evaluation) -> str:
    name = "/".join(partition)
    if evaluation is None:
        return f"{name}: ERROR could not verify (see the run's logs)"
    if not _compared(evaluation):
        return f"{name}: {evaluation.description}"
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    line = (f"{name}: {'OK' if evaluation.passed else 'MISMATCH'} expected {meta['expected']}, actual {meta['actual']}, "
            f"rejected {meta['rejected']}, missing {meta['missing']}, extra {meta['extra']}")
    details = [f"  {kind.replace('_documents', '')}:\n" + _indented(text) for kind, text in meta.items() if kind.endswith("_documents")]
    return "\n".join([line, *details])


def _compared(evaluation) -> bool:
    """False for a check that compared nothing, since the partition's sync is unfinished (checks.py)."""
    return "expected" in evaluation.metadata


def _indented(bullets: str) -> str:
    return "\n".join(f"    {line}" for line in bullets.strip().splitlines())


def _partitions(instance: dg.DagsterInstance, args: argparse.Namespace) -> list[tuple[str, str]]:
    subdomains = _registered(instance) if args.subdomain == "all" else _register(instance, [args.subdomain])
    types = [args.document_type] if args.document_type else list(DOCUMENT_TYPES)
    return [(m, d) for m in subdomains for d in types]


def _run(instance: dg.DagsterInstance, job_name: str, partition: tuple[str, str], run_config: dict):
    """Execute a job for one partition in this process, recorded in the instance (visible in the UI)."""
    from .definitions import defs  # imported late: loading Dagster definitions is slow

    print(f"==> {job_name} {'/'.join(partition)}", flush=True)
    # The partition goes in as run tags: execute_in_process(partition_key=...) rejects jobs that
    # select only asset checks (Dagster 1.13 looks for a partitioned asset in the selection).
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        run_config={**run_config, "loggers": {"terminal": {"config": {"log_level": "INFO"}}}},
        tags={**partition_tags(*partition), TRIGGER_TAG: "cli", PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"},
        raise_on_error=False,
    )
    # Dagster turns a Ctrl-C during a run into a failed step; it stops the command, not just this partition.
    if _failed_with(result, "DagsterExecutionInterruptedError"):
        raise KeyboardInterrupt
    return result


def _failed_with(result, error_class: str) -> bool:
    """A step of the run failed with this exception, or with one it caused (dg.Failure ... from error)."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            if error.cls_name == error_class:
                return True
            error = error.cause
    return False


def _status(_args: argparse.Namespace) -> int:
    _print_jobs(None)
    return 0


def _municipalities_add(args: argparse.Namespace) -> int:
    lines = (line.split("#", 1)[0].strip() for line in args.file) if args.file else ()
    subdomains = list(args.subdomains) + [line for line in lines if line]
    if not subdomains:
        print("error: name at least one subdomain, or --file", file=sys.stderr)
        return 2
    for subdomain in _register(dagster_instance(), subdomains):
        print(f"registered {subdomain}")
    return 0


def _webhooks_serve(args: argparse.Namespace) -> int:
    from .webhooks import serve

    serve(args.host, args.port)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from .devstack import main as devstack

    return devstack(["--dir", str(args.dir), "--port", str(args.port), "--webhook-port", str(args.webhook_port)])


def dagster_instance() -> dg.DagsterInstance:
    """The instance at DAGSTER_HOME (default CIVICBAND_HOME/dagster), so CLI runs show in the UI."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(civicband_home() / "dagster")
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    # Dagster creates its SQLite storage on first use without a lock: two commands started at once on a
    # new home would both create its tables ("table runs already exists"). One at a time, then.
    with open(os.path.join(os.environ["DAGSTER_HOME"], ".civicband-instance.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return dg.DagsterInstance.get()


def _registered(instance: dg.DagsterInstance) -> list[str]:
    """Every municipality: the partitions, and any the webhook receiver stored that webhook_sensor has
    not made partitions yet (they are added now)."""
    partitions = set(instance.get_dynamic_partitions(MUNICIPALITY))
    new = sorted(set(open_store(database_url_from_env()).municipality_subdomains()) - partitions)
    if new:
        instance.add_dynamic_partitions(MUNICIPALITY, new)
    return sorted(partitions | set(new))


def _register(instance: dg.DagsterInstance, subdomains: list[str]) -> list[str]:
    """Validate subdomains and register those not yet known, after checking that civic.band has them."""
    subdomains = [validate_subdomain(s) for s in subdomains]
    known = set(instance.get_dynamic_partitions(MUNICIPALITY))
    new = [s for s in dict.fromkeys(subdomains) if s not in known]
    if new:
        with CivicBandClient() as client:
            for subdomain in new:
                client.count(subdomain, DOCUMENT_TYPES[0])  # raises UnknownMunicipality
        store = open_store(database_url_from_env())
        for subdomain in new:
            store.upsert_municipality(subdomain, {})
        instance.add_dynamic_partitions(MUNICIPALITY, new)
    return subdomains


def _print_jobs(partitions: list[tuple[str, str]] | None) -> None:
    from .sensors import settle_dead_runs  # imported late: it reads the sensors' settings (ConfigError is caught)

    store, instance = open_store(database_url_from_env()), dagster_instance()
    settle_dead_runs(instance, store)
    jobs = {(job["municipality"], job["document_type"]): job for job in store.jobs()}
    if partitions is None:  # every partition (one never synced has no job yet), and every job
        registered = instance.get_dynamic_partitions(MUNICIPALITY)
        partitions = sorted({*jobs, *((m, d) for m in registered for d in DOCUMENT_TYPES)})
    columns = ("municipality", "document_type", "status", "pages_fetched", "pages_created", "pages_updated",
               "pages_deleted", "rejected_count", "expected_count", "actual_count", "verified_ok", "verified_at", "last_error")
    pending = dict.fromkeys(columns) | {"status": "pending"}
    rows = [jobs.get((m, d)) or pending | {"municipality": m, "document_type": d} for m, d in partitions]
    print(format_table(columns, [[_cell(row[c]) for c in columns] for row in rows]))


def format_table(columns: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines) if rows else lines[0] + "\n(no jobs yet)"


def _cell(value) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    sys.exit(main())
