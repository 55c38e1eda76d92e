"""Issue 5: a UI backfill, a sensor run and the CLI never sync one municipality at the same time,
with a real daemon, a real webserver (GraphQL, as the UI launches backfills) and the CLI."""

import itertools

import pytest

from civicband_pipelines.store import MeetingStore

from .conftest import make_municipality
from .dagster_stack import MUNICIPALITY_TAG, running_stack
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
BUSY = "Backfill already in progress for"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('no_overlap') / 'meetings.db'}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, replica, store_url):
    with running_stack(tmp_path_factory.mktemp("stack"), replica, store_url, webserver=True) as running:
        yield running


@pytest.fixture(scope="module")
def store(store_url):
    store = MeetingStore(store_url)
    yield store
    store.dispose()


def new_municipality(replica_root) -> str:
    return make_municipality(replica_root, documents=25, pages=(3, 8), odd_rows=True)


def webhook_for(stack, store, subdomain: str, pages: int) -> int:
    stack.send_webhook(subdomain, {"name": subdomain.split(".")[0].title(), "state": "CA", "pages": pages})
    return max(e["id"] for e in store.webhook_events_after(0) if e["subdomain"] == subdomain)


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


def test_ui_backfill_sensor_run_and_cli_never_sync_one_municipality_at_once(stack, store, replica, replica_root):
    a, b = new_municipality(replica_root), new_municipality(replica_root)
    # Every upstream answer takes 0.1 s: each sync of a partition takes seconds.
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.1)

    # Sensor runs: webhooks register both municipalities and queue full syncs of all four partitions.
    last = max(webhook_for(stack, store, m, len(upstream_rows(replica_root, m, "agenda"))) for m in (a, b))
    stack.wait_for_sensor_cursor(last)
    assert {r.tags["dagster/partition/document_type"] for r in stack.runs(a, trigger="webhook")} == {"agenda", "minutes"}
    # The UI backfill of both of A's partitions, and the CLI, at the same time.
    backfill = launch_ui_backfill(stack, [f"agenda|{a}", f"minutes|{a}"], batch_size=10)
    cli = stack.start_cli("backfill", f"--subdomain={a}", "--batch-size=10", "--wait")
    try:
        output, _ = cli.communicate(timeout=240)
    finally:
        cli.kill()
    backfill_runs = stack.wait_for_runs(lambda runs: len(runs) == 2, "the UI backfill's runs", timeout=120,
                                        tags={"dagster/backfill": backfill})
    stack.wait_for(lambda: stack.settled(a) and stack.settled(b), "every run of A and B to finish", timeout=240)
    replica.clear_faults()

    runs = {m: stack.runs(m) for m in (a, b)}
    intervals = {m: [i for i in map(stack.sync_interval, runs[m]) if i] for m in (a, b)}
    report = "\n".join(f"{i.municipality} {i.document_type} {i.trigger} {i.start:.2f}-{i.end:.2f} ok={i.succeeded}"
                       for m in (a, b) for i in sorted(intervals[m], key=lambda i: i.start))
    print(report)
    print(output)
    assert {r.tags.get("civicband/trigger", "ui") for r in runs[a]} >= {"ui", "webhook", "cli"}, report
    assert all(MUNICIPALITY_TAG in r.tags for r in backfill_runs)
    for x, y in itertools.combinations(intervals[a], 2):
        assert not x.overlaps(y), f"two syncs of {a} overlapped:\n{x}\n{y}\n{report}"
    assert any(x.overlaps(y) for x in intervals[a] for y in intervals[b]), f"A and B never synced at once:\n{report}"
    for m in (a, b):
        for document_type in ("agenda", "minutes"):
            assert_equals_upstream(store, replica_root, m, document_type)
