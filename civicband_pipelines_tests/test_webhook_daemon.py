"""Issue 4 end to end: webhooks through the real receiver, the real `dagster-daemon` (webhook_sensor,
run queue, run workers) and the store, against the civic.band replica."""

import datetime as dt
import math
from types import SimpleNamespace

import pytest

from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.partitions import MUNICIPALITY
from civicband_pipelines.replica.generate import add_documents

from .conftest import make_municipality
from .upstream import assert_equals_upstream, replica_db, upstream_rows

PENDING = ("QUEUED", "NOT_STARTED")


@pytest.fixture(scope="module")
def stack(dagster_stack):
    return dagster_stack


@pytest.fixture(scope="module")
def big(replica, replica_root) -> str:
    """A municipality whose ~6,000 pages per type are all more than a year and a half old (so an
    incremental sync's window, 180 days around today, holds none of them), plus the odd rows."""
    today = dt.date.today()
    return make_municipality(replica_root, documents=500, pages=(10, 14), odd_rows=True, text_chars=200,
                             start_date=today - dt.timedelta(days=6 * 365), today=today - dt.timedelta(days=730))


def upstream_pages(replica_root, subdomain: str) -> int:
    return sum(len(upstream_rows(replica_root, subdomain, d)) for d in DOCUMENT_TYPES)


def table_pages(replica, subdomain: str) -> int:
    """Table pages the fault proxy served for this municipality since its stats were reset."""
    return sum(1 for p in replica.fault_stats()["table_page_requests"] if p["subdomain"] == subdomain)


def body(subdomain: str, pages: int) -> dict:
    return {"name": subdomain.split(".")[0].title(), "state": "CA", "country": "US", "kind": "city", "pages": pages}


def new_runs(stack, subdomain: str, before: set[str]) -> list:
    return [r for r in stack.runs(subdomain) if r.run_id not in before]


def by_document_type(runs) -> dict:
    found = {r.tags["dagster/partition/document_type"]: r for r in runs}
    assert len(found) == len(runs) and set(found) == set(DOCUMENT_TYPES), [dict(r.tags) for r in runs]
    return found


@pytest.fixture(scope="module")
def backfilled(stack, replica, replica_root, big):
    """(a) The first webhook of a municipality nobody registered, through to the end of its runs."""
    assert big not in stack.instance.get_dynamic_partitions(MUNICIPALITY) and not stack.runs(big)
    replica.reset_stats()
    event = stack.send_webhook(big, body(big, upstream_pages(replica_root, big)), expect_action="created")
    stack.wait_for_sensor_cursor(event)  # the tick that read the event has submitted its runs
    runs = by_document_type(stack.runs(big))
    finished = stack.wait_until_finished(list(runs.values()), timeout=300)
    return SimpleNamespace(event=event, runs=by_document_type(finished), table_pages=table_pages(replica, big))


def test_webhook_for_a_new_municipality_registers_it_and_backfills_both_partitions(stack, replica_root, big, backfilled):
    assert big in stack.instance.get_dynamic_partitions(MUNICIPALITY)
    for document_type, run in backfilled.runs.items():
        assert run.status.value == "SUCCESS", stack.run_failure(run.run_id)
        assert run.tags["civicband/trigger"] == "webhook"
        assert run.tags["civicband/mode"] == "full"
        assert run.tags["civicband/event"] == str(backfilled.event)
        key = run.tags["dagster/run_key"]  # webhook-<event>-<received at>-<partition>
        assert key.startswith(f"webhook-{backfilled.event}-") and key.endswith(f"-{big}-{document_type}")
        metadata = stack.materialization(run.run_id)
        assert metadata["mode"] == "full" and metadata["status"] == "completed"
        assert metadata["pages_fetched"] == len(upstream_rows(replica_root, big, document_type))
        assert_equals_upstream(stack.store, replica_root, big, document_type)
        job = stack.store.job(big, document_type)
        assert job["status"] == "completed" and job["verified_ok"] is True and job["full_synced_at"]
    # Over 5,000 rows per type in pages of 1,000 (the asset's default batch size).
    pages = sum(math.ceil(len(upstream_rows(replica_root, big, d)) / 1000) for d in DOCUMENT_TYPES)
    assert backfilled.table_pages >= pages >= 2 * 6


@pytest.fixture(scope="module")
def incremental(stack, replica, replica_root, big, backfilled):
    """(b) Upstream adds recent documents; the webhook says so with a new page count."""
    added = {
        "agenda": add_documents(replica_db(replica_root, big), "agenda", 4, pages=5, dates_near_today=True, seed=1),
        "minutes": add_documents(replica_db(replica_root, big), "minutes", 2, pages=5, dates_near_today=True, seed=2),
    }
    before = {r.run_id for r in stack.runs(big)}
    replica.reset_stats()
    sent = body(big, upstream_pages(replica_root, big))
    event = stack.send_webhook(big, sent, expect_action="updated")
    stack.wait_for_sensor_cursor(event)
    runs = by_document_type(new_runs(stack, big, before))
    finished = stack.wait_until_finished(list(runs.values()), timeout=300)
    return SimpleNamespace(event=event, body=sent, added=added, runs=by_document_type(finished),
                           table_pages=table_pages(replica, big))


def test_changed_page_count_runs_incremental_syncs_that_fetch_only_recent_pages(stack, replica_root, big, backfilled, incremental):
    for document_type, run in incremental.runs.items():
        assert run.status.value == "SUCCESS", stack.run_failure(run.run_id)
        assert run.tags["civicband/trigger"] == "webhook" and run.tags["civicband/event"] == str(incremental.event)
        assert run.tags["civicband/mode"] == "incremental"
        metadata = stack.materialization(run.run_id)
        assert metadata["mode"] == "incremental" and metadata["status"] == "completed"
        # Only the window around today: exactly the added pages, not the ~6,000 older ones.
        added = len(incremental.added[document_type].added)
        assert metadata["pages_fetched"] == added
        assert metadata["pages_created"] == added and metadata["pages_deleted"] == 0
        full = stack.materialization(backfilled.runs[document_type].run_id)["pages_fetched"]
        assert added * 100 < full
        assert_equals_upstream(stack.store, replica_root, big, document_type)
    assert incremental.table_pages <= len(DOCUMENT_TYPES)  # one filtered page each
    assert incremental.table_pages * 6 <= backfilled.table_pages


def test_replayed_webhook_launches_nothing(stack, big, incremental):
    before = stack.runs(big)
    event = stack.send_webhook(big, incremental.body, expect_action="updated")  # the same body again
    assert stack.webhook_events(big)[-1]["changed"] is False
    stack.wait_for_sensor_cursor(event)  # the sensor has read it (and submitted whatever it requested)
    assert [r.run_id for r in stack.runs(big)] == [r.run_id for r in before]


def test_burst_during_a_cli_sync_makes_one_run_per_partition_which_survives_a_kill_9_of_the_cli(
        stack, replica, replica_root, big, incremental):
    """Five changed-page-count webhooks, in two bursts read by separate sensor ticks, arrive while a CLI
    sync holds the municipality (its run keeps the first runs queued): one run per partition. Then the
    CLI dies by kill -9. Its run cannot report its own death and would hold the municipality's slot in
    the run queue forever; sync_followup_sensor reports it failed once its lease is stale, and the
    queued runs go through, the agenda one resuming the dead sync at its cursor. No manual cleanup."""
    before = {r.run_id for r in stack.runs(big)}
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.15, path_contains=f"/{big}/meetings/agendas")
    holder = stack.start_cli("backfill", f"--subdomain={big}", "--document-type=agenda", "--batch-size=10", "--restart")
    try:
        stack.wait_for(lambda: (stack.store.lease(big) or {}).get("trigger") == "cli"
                       and (stack.store.job(big, "agenda") or {}).get("last_cursor"), "the CLI sync to hold the municipality")
        (cli_run,) = new_runs(stack, big, before)
        assert cli_run.status.value == "STARTED" and cli_run.tags["civicband/trigger"] == "cli"
        pages = upstream_pages(replica_root, big)
        events = [stack.send_webhook(big, body(big, pages + i)) for i in (1, 2)]
        stack.wait_for_sensor_cursor(events[-1])
        events += [stack.send_webhook(big, body(big, pages + i)) for i in (3, 4, 5)]
        stack.wait_for_sensor_cursor(events[-1])
        assert holder.poll() is None, "the CLI sync ended before the sensor read the burst: nothing held the queue"
        assert [e["changed"] for e in stack.webhook_events(big)[-5:]] == [True] * 5
        runs = by_document_type([r for r in new_runs(stack, big, before) if r.run_id != cli_run.run_id])
        assert all(r.tags["civicband/trigger"] == "webhook" and r.tags["civicband/mode"] == "incremental"
                   and r.tags["civicband/event"] in {str(e) for e in events} for r in runs.values())
        assert all(stack.instance.get_run_by_id(r.run_id).status.value in PENDING for r in runs.values())
    finally:
        holder.kill()  # SIGKILL: no cleanup of any kind
        holder.wait()
    replica.clear_faults()
    dead = stack.store.job(big, "agenda")
    assert dead["status"] == "running" and dead["last_cursor"]

    for run in stack.wait_until_finished(list(runs.values()), timeout=300):
        assert run.status.value == "SUCCESS", stack.run_failure(run.run_id)
    assert stack.instance.get_run_by_id(cli_run.run_id).status.value == "FAILURE"  # reported by the sensor
    webhook_runs = [r.run_id for r in new_runs(stack, big, before) if r.tags.get("civicband/trigger") == "webhook"]
    assert sorted(webhook_runs) == sorted(r.run_id for r in runs.values())  # still one per partition
    metadata = stack.materialization(runs["agenda"].run_id)
    # It resumed the dead sync, then ran the incremental sync the webhooks asked for.
    assert f"resumed at cursor {dead['last_cursor']!r}" in metadata["resumed_sync"] and metadata["mode"] == "incremental"
    for document_type in DOCUMENT_TYPES:
        assert_equals_upstream(stack.store, replica_root, big, document_type)


def test_a_cli_run_killed_outside_a_sync_is_reported_failed_and_frees_the_run_queue(stack, replica, replica_root, big):
    """A `civicband verify` killed mid-run leaves no lease or wait to go stale; its run, STARTED for
    ever, would hold the municipality's slot in the run queue, and no webhook run would start again."""
    before = {r.run_id for r in stack.runs(big)}
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=600, path_contains=f"/{big}/meetings/agendas")
    replica.reset_stats()
    holder = stack.start_cli("verify", f"--subdomain={big}", "--document-type=agenda", "--deep")
    try:
        stack.wait_for(lambda: replica.fault_stats()["faults"].get("slow"), "the comparison's first request", timeout=120)
        (cli_run,) = stack.wait_for(lambda: new_runs(stack, big, before), "the CLI's run")
        assert cli_run.job_name == "verify_job" and cli_run.status.value == "STARTED"
    finally:
        holder.kill()  # SIGKILL: no cleanup of any kind
        holder.wait()
    replica.clear_faults()
    failed = stack.wait_for(lambda: (run := stack.instance.get_run_by_id(cli_run.run_id)).status.value == "FAILURE" and run,
                            "the follow-up sensor to report the dead CLI run", timeout=120)
    assert failed.status.value == "FAILURE"
    event = stack.send_webhook(big, body(big, upstream_pages(replica_root, big) + 100))
    stack.wait_for_sensor_cursor(event)
    runs = stack.runs(big, tags={"civicband/event": str(event)})
    assert len(runs) == len(DOCUMENT_TYPES)
    for run in stack.wait_until_finished(runs, timeout=300):
        assert run.status.value == "SUCCESS", stack.run_failure(run.run_id)
