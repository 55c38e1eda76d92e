"""Issue 5: a UI backfill, a sensor run and the CLI never sync one municipality at the same time,
with a real daemon, a real webserver (GraphQL, as the UI launches backfills) and the CLI."""

import itertools
import os

import pytest

from civicband_pipelines.naming import DOCUMENT_TYPES

from .conftest import make_municipality
from .dagster_stack import BUSY, MUNICIPALITY_TAG, running_stack
from .pg_server import create_database
from .upstream import assert_equals_upstream, upstream_rows

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
  }
}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, replica):
    """The shared stack (SQLite store), or one whose store is PostgreSQL (leases by advisory lock)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("dagster_stack")
        return
    url = create_database(request.getfixturevalue("postgres_server_url"), f"overlap_{os.getpid()}")
    with running_stack(tmp_path_factory.mktemp("overlap_pg"), replica, url, webserver=True) as running:
        yield running


def new_municipality(replica_root) -> str:
    return make_municipality(replica_root, documents=25, pages=(3, 8), odd_rows=True)


def webhook(stack, replica_root, subdomain: str) -> int:
    pages = sum(len(upstream_rows(replica_root, subdomain, d)) for d in DOCUMENT_TYPES)
    return stack.send_webhook(subdomain, {"name": subdomain.split(".")[0].title(), "state": "CA", "pages": pages})


def launch_ui_backfill(stack, partitions: list[str], batch_size: int) -> str:
    """What the UI's "Materialize selected partitions" does: an asset backfill the backfill daemon runs."""
    params = {
        "assetSelection": [{"path": ["meeting_pages"]}],
        "partitionNames": partitions,
        "runConfigData": {"ops": {"meeting_pages": {"config": {"batch_size": batch_size}}}},
    }
    answer = stack.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


def describe(stack, runs) -> str:
    """One line per run, in sync order: when it synced (seconds after the first sync), or why it didn't."""
    rows = [(stack.sync_interval(run), run) for run in runs]
    t0 = min((i.start for i, _ in rows if i), default=0.0)
    lines = []
    for interval, run in sorted(rows, key=lambda row: row[0].start if row[0] else float("inf")):
        when = f"{interval.start - t0:7.2f}-{interval.end - t0:7.2f}" if interval else f"{'-':>15}"
        state = "refused (busy)" if stack.refused(run) else run.status.value
        lines.append(f"{when} {run.tags[MUNICIPALITY_TAG]} {run.tags['dagster/partition/document_type']:8} "
                     f"{run.tags.get('civicband/trigger', 'ui'):8} {state} {run.run_id[:8]}")
    return "\n".join(lines)


def test_ui_backfill_sensor_runs_and_cli_never_sync_one_municipality_at_once(stack, replica, replica_root):
    a, b = new_municipality(replica_root), new_municipality(replica_root)
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.1)  # every answer 0.1 s: syncs take seconds

    # Sensor runs: webhooks register both municipalities and queue full syncs of their four partitions.
    stack.wait_for_sensor_cursor(max(webhook(stack, replica_root, m) for m in (a, b)))
    assert len(stack.runs(a, trigger="webhook")) == 2 and len(stack.runs(b, trigger="webhook")) == 2
    # Meanwhile: the UI backfill of both of A's partitions, the CLI for A, and the CLI for B.
    backfill = launch_ui_backfill(stack, [f"agenda|{a}", f"minutes|{a}"], batch_size=10)
    clis = {m: stack.start_cli("backfill", f"--subdomain={m}", f"--batch-size={size}", "--wait")
            for m, size in ((a, 10), (b, 2))}
    try:
        outputs = {m: cli.communicate(timeout=300)[0] for m, cli in clis.items()}
    finally:
        for cli in clis.values():
            cli.kill()
            cli.wait()
    stack.wait_for_runs(lambda runs: len(runs) >= 2, "the UI backfill's runs", timeout=120,
                        tags={"dagster/backfill": backfill})
    stack.wait_for(lambda: stack.settled(a) and stack.settled(b), "every run of A and B to finish", timeout=300)
    replica.clear_faults()

    # A CLI partition can be refused too (a daemon run dequeued before the CLI's run existed may take
    # the lease between the CLI's --wait check and its sync); it then exits 1 and names it.
    for m, cli in clis.items():
        assert cli.returncode == 0 or (cli.returncode == 1 and BUSY in outputs[m]), outputs[m][-3000:]
    runs = {m: stack.runs(m) for m in (a, b)}
    report = describe(stack, runs[a] + runs[b]) + "".join(f"\n--- CLI {m}:\n{o[-1200:]}" for m, o in outputs.items())
    print(report)
    # A run that found its municipality busy failed at once, having synced nothing; run retries rerun it.
    assert all(r.status.value == "SUCCESS" or stack.refused(r) for m in (a, b) for r in runs[m]), report
    syncs = {m: [i for i in map(stack.sync_interval, runs[m]) if i] for m in (a, b)}
    assert all(i.succeeded for m in (a, b) for i in syncs[m]), report
    # Every path synced A: the UI backfill, the sensor and the CLI.
    assert {i.trigger for i in syncs[a]} == {"ui", "webhook", "cli"}, report
    assert all(MUNICIPALITY_TAG in r.tags for r in runs[a])  # what the run queue limits by
    for m in (a, b):
        for x, y in itertools.combinations(syncs[m], 2):
            assert not x.overlaps(y), f"two syncs of {m} overlapped:\n{x}\n{y}\n{report}"
    # ... while the other municipality was not held back.
    assert any(x.overlaps(y) for x in syncs[a] for y in syncs[b]), f"A and B never synced at once:\n{report}"
    for m in (a, b):
        for document_type in DOCUMENT_TYPES:
            assert_equals_upstream(stack.store, replica_root, m, document_type)
