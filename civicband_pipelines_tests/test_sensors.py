"""The sensors against a real (ephemeral) Dagster instance and the store: settle_dead_runs, then the run
requests of webhook_sensor and sync_followup_sensor (some runs executed in process against the replica)."""

import datetime as dt
import json

import dagster as dg
import pytest
import sqlalchemy as sa

from civicband_pipelines import sensors
from civicband_pipelines.leases import WAIT_FOREVER, waiting_syncs
from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.partitions import MUNICIPALITY, partition_key, partition_tags
from civicband_pipelines.resources import MeetingStoreResource
from civicband_pipelines.schema import webhook_events
from civicband_pipelines.sensors import EVENTS_PER_TICK, MAX_REPAIRS, settle_dead_runs, sync_followup_sensor, webhook_sensor

from .conftest import record_dead_wait, run_job
from .upstream import assert_equals_upstream, replica_db


def started_run(instance: dg.DagsterInstance, run_id: str) -> None:
    instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED))


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_a_report_that_fails_loses_no_dead_run_and_stops_no_other(store, monkeypatch, caplog):
    instance = dg.DagsterInstance.ephemeral()
    # Syncs whose processes died (their jobs running, no lease), and one that died waiting (a stale wait).
    for run_id in ("dead-sync", "dead-sync-2", "dead-wait"):
        started_run(instance, run_id)
    store.start_sync("oakland.ca", "agenda", restart=False, run_id="dead-sync")
    store.start_sync("berkeley.ca", "agenda", restart=False, run_id="dead-sync-2")
    record_dead_wait(store, "dead-wait")

    monkeypatch.setattr(instance, "report_run_failed", FailingOnce(instance, ["dead-sync", "dead-wait"]))
    (settled,) = settle_dead_runs(instance, store)
    assert settled["run_id"] == "dead-sync-2" and status(instance, "dead-sync-2") == dg.DagsterRunStatus.FAILURE
    assert "could not report the dead run dead-sync (OperationalError" in caplog.text
    assert store.job("oakland.ca", "agenda")["status"] == "running", "not settled, since its run was not reported"
    assert [w["run_id"] for w in waiting_syncs(store)] == ["dead-wait"], "the wait is put back"
    assert status(instance, "dead-sync") == status(instance, "dead-wait") == dg.DagsterRunStatus.STARTED

    (settled,) = settle_dead_runs(instance, store)  # the database is back
    assert settled["run_id"] == "dead-sync" and store.job("oakland.ca", "agenda")["status"] == "failed"
    assert status(instance, "dead-sync") == status(instance, "dead-wait") == dg.DagsterRunStatus.FAILURE
    assert waiting_syncs(store) == []


def test_a_report_that_failed_after_it_landed_counts(store, monkeypatch):
    instance = dg.DagsterInstance.ephemeral()
    started_run(instance, "dead-wait")
    record_dead_wait(store, "dead-wait")
    monkeypatch.setattr(instance, "report_run_failed", FailingOnce(instance, ["dead-wait"], after_landing=True))
    settle_dead_runs(instance, store)
    assert status(instance, "dead-wait") == dg.DagsterRunStatus.FAILURE
    assert waiting_syncs(store) == [], "not put back: its sync, should it live, must find its wait gone and stop"


class FailingOnce:
    """instance.report_run_failed with the instance's database away for the next report of each run in
    `runs`: before the report (or, `after_landing`, once it was stored)."""

    def __init__(self, instance: dg.DagsterInstance, runs: list[str], after_landing: bool = False):
        self.report, self.runs, self.after_landing = instance.report_run_failed, set(runs), after_landing

    def __call__(self, run: dg.DagsterRun, message: str | None = None):
        if run.run_id not in self.runs:
            return self.report(run, message)
        self.runs.discard(run.run_id)
        if self.after_landing:
            self.report(run, message)
        raise sa.exc.OperationalError("report_run_failed", {}, Exception("the instance's database is down"))


WINDOW = (dt.date(2020, 1, 1), dt.date(2030, 12, 31))


def _completed_sync(store, run_id: str | None, **kwargs) -> None:
    """A sync of oakland.ca/agenda begun and completed (upstream empty: one last batch)."""
    start = store.start_sync("oakland.ca", "agenda", restart=False, run_id=run_id, **kwargs)
    store.write_batch("oakland.ca", "agenda", start, [], [], None)


def _sensor_context(instance, store_url, cursor=None):
    return dg.build_sensor_context(instance=instance, cursor=cursor, resources={"meeting_store": MeetingStoreResource(database_url=store_url)})


def _webhook_tick(instance, store_url, cursor=None):
    return webhook_sensor(_sensor_context(instance, store_url, cursor))


def test_webhook_sensor_registers_new_municipalities_and_requests_runs_once(instance, store, store_url):
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})  # a replay: nothing changed
    result = _webhook_tick(instance, store_url)
    (add,) = result.dynamic_partitions_requests
    assert list(add.partition_keys) == ["oakland.ca"]
    assert sorted(r.partition_key for r in result.run_requests) == sorted(partition_key("oakland.ca", d) for d in DOCUMENT_TYPES)
    assert all(r.tags["civicband/trigger"] == "webhook" and r.tags["civicband/mode"] == "full" for r in result.run_requests)
    assert result.cursor == "2"

    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})  # replayed again later
    again = _webhook_tick(instance, store_url, cursor=result.cursor)
    assert again.run_requests == [] and again.dynamic_partitions_requests == []


def test_a_cursor_kept_from_a_replaced_store_reads_the_new_stores_events_from_its_first(instance, store, store_url):
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 11})
    # The Dagster instance kept the cursor of an earlier store of 50 events (a new file, SQLite to PostgreSQL).
    result = _webhook_tick(instance, store_url, cursor="50")
    assert result.cursor == "2" and len(result.run_requests) == len(DOCUMENT_TYPES)
    # The earlier store's runs used its ids: the keys hold the event's time too, or the daemon would drop them.
    received = store.webhook_events_after(1)[0]["received_at"]
    for request in result.run_requests:
        assert request.run_key.startswith(f"webhook-2-{received:%Y%m%dT%H%M%S%f}-oakland.ca-")
    assert _webhook_tick(instance, store_url, cursor=result.cursor).run_requests == []


def test_a_tick_reads_a_bounded_number_of_events_and_the_next_tick_goes_on(instance, store, store_url):
    # A tick past Dagster's sensor timeout would never advance its cursor: a fleet-wide deploy takes several.
    for pages in range(EVENTS_PER_TICK):
        store.record_webhook("oakland.ca", {"name": "Oakland", "pages": pages})
    store.record_webhook("berkeley.ca", {"name": "Berkeley", "pages": 1})
    first = _webhook_tick(instance, store_url)
    assert first.cursor == str(EVENTS_PER_TICK)
    assert [list(add.partition_keys) for add in first.dynamic_partitions_requests] == [["oakland.ca"]]
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    second = _webhook_tick(instance, store_url, cursor=first.cursor)
    assert [list(add.partition_keys) for add in second.dynamic_partitions_requests] == [["berkeley.ca"]]
    assert second.cursor == str(EVENTS_PER_TICK + 1)


@pytest.mark.parametrize("under_way", ["its sync", "its run"])
def test_a_webhook_during_a_first_backfill_requests_an_incremental_run_not_a_second_full_one(instance, store, store_url, under_way):
    # The queued webhook run starts once the backfill has completed: a full sync would fetch it all again.
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    for document_type in DOCUMENT_TYPES:
        if under_way == "its sync":
            store.start_sync("oakland.ca", document_type, restart=False, run_id=None)
        else:  # started, its sync not begun yet (waiting for the municipality, say)
            tags = partition_tags("oakland.ca", document_type)
            instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.STARTED, tags=tags))
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
    requests = _webhook_tick(instance, store_url).run_requests
    assert sorted(r.partition_key for r in requests) == sorted(partition_key("oakland.ca", d) for d in DOCUMENT_TYPES)
    for request in requests:
        assert request.tags["civicband/mode"] == request.run_config["ops"]["meeting_pages"]["config"]["mode"] == "incremental"


@pytest.mark.parametrize("queued_job, assets, runs_requested", [
    ("verify_job", None, True), ("meeting_pages_job", None, False),
    ("__ASSET_JOB", {"meeting_pages"}, False), ("__ASSET_JOB", None, True),  # the UI: Materialize, or checks alone
])
def test_a_queued_sync_of_the_partition_stands_in_for_a_webhook_run_but_a_queued_verification_does_not(
    instance, store, store_url, queued_job, assets, runs_requested
):
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    selection = frozenset(dg.AssetKey(a) for a in assets) if assets else None
    for document_type in DOCUMENT_TYPES:
        tags = partition_tags("oakland.ca", document_type)
        instance.add_run(dg.DagsterRun(job_name=queued_job, status=dg.DagsterRunStatus.NOT_STARTED, tags=tags,
                                       asset_selection=selection))
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
    requested = [r.partition_key for r in _webhook_tick(instance, store_url).run_requests]
    assert sorted(requested) == (sorted(partition_key("oakland.ca", d) for d in DOCUMENT_TYPES) if runs_requested else [])


@pytest.mark.parametrize("trigger, runs_requested", [("continuation", True), (None, True), ("webhook", False), ("repair", False)])
def test_a_queued_sync_that_goes_on_from_a_cursor_does_not_stand_in_for_a_webhook_run(instance, store, store_url, trigger, runs_requested):
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    for document_type in DOCUMENT_TYPES:  # paused by its time budget: a run resumes it at its cursor
        store.stop_sync("oakland.ca", document_type, store.start_sync("oakland.ca", document_type, restart=False, run_id=None), "paused", "x")
        tags = partition_tags("oakland.ca", document_type) | ({"civicband/trigger": trigger} if trigger else {})
        instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.NOT_STARTED, tags=tags))
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
    requested = [r.partition_key for r in _webhook_tick(instance, store_url).run_requests]
    assert sorted(requested) == (sorted(partition_key("oakland.ca", d) for d in DOCUMENT_TYPES) if runs_requested else [])


@pytest.mark.parametrize("receiver_clock", ["the worker's", "an hour ahead of the worker's"])
def test_a_changed_webhook_whose_stand_in_run_was_canceled_gets_its_own_run_once(
    instance, resources, store, store_url, replica_root, municipality, receiver_clock
):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    for document_type in DOCUMENT_TYPES:  # synced, then a UI run queued: it stands in for the webhook's
        assert run_job("meeting_pages_job", instance, resources, municipality, document_type).success
        instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.NOT_STARTED,
                                       tags=partition_tags(municipality, document_type)))
    _, _, event_id = store.record_webhook(municipality, {"name": "Town", "pages": 1})
    if receiver_clock != "the worker's":  # by the receiver's clock, the webhook is later than the sync it gets
        (event,) = store.webhook_events_after(event_id - 1)
        with store.writer.begin() as conn:
            conn.execute(sa.update(webhook_events).values(received_at=event["received_at"] + dt.timedelta(hours=1)))
    assert _webhook_tick(instance, store_url).run_requests == []
    later_tick = lambda: _webhook_tick(instance, store_url, cursor=str(event_id)).run_requests or []  # noqa: E731
    assert later_tick() == []  # the stand-in is still queued
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.NOT_STARTED])):
        instance.report_run_canceled(record.dagster_run)
    # A tick that reads the event (now with no stand-in) requests the webhook's own runs, and only those.
    own = _webhook_tick(instance, store_url, cursor=str(event_id - 1)).run_requests
    assert sorted(r.run_key.split("-")[0] for r in own) == ["webhook"] * len(DOCUMENT_TYPES)
    requests = later_tick()
    assert sorted(r.partition_key for r in requests) == sorted(partition_key(municipality, d) for d in DOCUMENT_TYPES)
    for request in requests:
        assert request.tags["civicband/trigger"] == "webhook" and request.tags["civicband/event"] == str(event_id)
        assert request.run_config["ops"]["meeting_pages"]["config"]["mode"] == "incremental"
    agenda, minutes = sorted(requests, key=lambda r: r.partition_key)
    # minutes: its run failed before its sync began (upstream down, say); once per event: not asked again.
    instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.FAILURE,
                                   tags=partition_tags(municipality, "minutes")
                                   | {"dagster/run_key": minutes.run_key, "dagster/sensor_name": "webhook_sensor"}))
    # agenda: its run syncs; a sync began after the webhook, so nothing is missed any more.
    assert run_job("meeting_pages_job", instance, resources, municipality, "agenda", agenda.run_config, agenda.tags).success
    assert store.job(municipality, "agenda")["mode"] == "incremental"
    assert_equals_upstream(store, replica_root, municipality, "agenda")
    assert later_tick() == []


@pytest.mark.parametrize("history", ["nothing", "a verification"])
def test_a_first_backfill_canceled_before_it_began_is_not_requested_again(instance, store, store_url, history):
    # Verifying a partition never synced gives it a job row (its counts) with no sync begun: the
    # missed-webhook rule must not read that as "a sync that gave up".
    _, _, event_id = store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 10})
    first = _webhook_tick(instance, store_url).run_requests
    assert sorted(r.tags["civicband/mode"] for r in first) == ["full"] * len(DOCUMENT_TYPES)
    instance.add_dynamic_partitions(MUNICIPALITY, ["oakland.ca"])
    for document_type in DOCUMENT_TYPES:  # canceled in the queue, before their syncs began
        (request,) = [r for r in first if r.partition_key == partition_key("oakland.ca", document_type)]
        tags = partition_tags("oakland.ca", document_type) | {
            "dagster/run_key": request.run_key, "dagster/sensor_name": "webhook_sensor"}
        instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.CANCELED, tags=tags))
    if history == "a verification":
        for document_type in DOCUMENT_TYPES:
            store.record_verification("oakland.ca", document_type, 10, 0, False, dt.datetime.now(dt.timezone.utc))
        assert all(store.job("oakland.ca", d)["sync_generation"] == 0 for d in DOCUMENT_TYPES)
    assert _webhook_tick(instance, store_url, cursor=str(event_id)).run_requests == []


def test_a_sync_resumed_before_its_first_batch_covers_the_webhooks_before_it(instance, store, store_url):
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 1})
    _completed_sync(store, "first")
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 2})
    failed = store.start_sync("oakland.ca", "agenda", restart=False, run_id="failed", mode="incremental", window=WINDOW)
    store.stop_sync("oakland.ca", "agenda", failed, "failed", "UpstreamError: down")  # before its first batch
    _, _, event_id = store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 3})
    # The later deploy's run resumes that sync, from the first page since nothing of it was committed,
    # so after the deploy: nothing is missed.
    _completed_sync(store, "later", mode="incremental", window=WINDOW)
    assert _webhook_tick(instance, store_url, cursor=str(event_id)).run_requests == []


def test_a_run_that_syncs_while_the_sensor_looks_for_missed_webhooks_is_not_missed(instance, store, store_url, monkeypatch):
    store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 1})
    _completed_sync(store, "first")
    _, _, event_id = store.record_webhook("oakland.ca", {"name": "Oakland", "pages": 2})
    pending_syncs = sensors._pending_syncs

    def the_webhook_run_syncs_meanwhile(*args):  # after the sensor read the jobs, before it asks for runs
        _completed_sync(store, "webhook", mode="incremental", window=WINDOW)
        return pending_syncs(*args)  # and it has finished

    monkeypatch.setattr(sensors, "_pending_syncs", the_webhook_run_syncs_meanwhile)
    assert _webhook_tick(instance, store_url, cursor=str(event_id)).run_requests == []


def _paused_sync_then_a_deploy(instance, resources, store, store_url, replica_root, municipality):
    """A first sync paused by its budget, then a deploy and its webhook. Returns the webhook's agenda run
    request, with a window that covers the replica's dates (years back)."""
    import sqlite3

    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    budget = {"ops": {"meeting_pages": {"config": {"batch_size": 50, "time_budget_seconds": 0.001}}}}
    assert run_job("meeting_pages_job", instance, resources, municipality, "agenda", budget).success
    assert store.job(municipality, "agenda")["status"] == "paused"
    # The deploy re-OCRs a page behind the cursor, and its new id sorts behind it too: the resumed
    # sync sees neither, so it keeps the old page, and the counts still match.
    with sqlite3.connect(replica_db(replica_root, municipality)) as conn:
        (old,) = conn.execute("SELECT min(id) FROM agendas WHERE length(id) = 12").fetchone()
        conn.execute("UPDATE agendas SET id = '00000000000a', text = text || ' [re-OCR]' WHERE id = ?", (old,))
    store.record_webhook(municipality, {"name": "Town", "pages": 1})
    (request,) = [r for r in _webhook_tick(instance, store_url).run_requests if r.partition_key == partition_key(municipality, "agenda")]
    request.run_config["ops"]["meeting_pages"]["config"]["window_days"] = 36500
    return request


@pytest.mark.parametrize("receiver_clock", ["the worker's", "an hour behind the worker's"])
def test_a_webhook_run_that_resumes_a_sync_then_syncs_what_changed_behind_its_cursor(
    instance, resources, store, store_url, replica_root, municipality, receiver_clock
):
    request = _paused_sync_then_a_deploy(instance, resources, store, store_url, replica_root, municipality)
    if receiver_clock != "the worker's":  # the webhook came after the sync began, by the receiver's clock before it
        received_at = store.job(municipality, "agenda")["started_at"] - dt.timedelta(hours=1)
        with store.writer.begin() as conn:
            conn.execute(sa.update(webhook_events).values(received_at=received_at))
    result = run_job("meeting_pages_job", instance, resources, municipality, "agenda", request.run_config, request.tags)
    assert result.success and store.job(municipality, "agenda")["mode"] == "incremental"
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_a_webhook_run_paused_again_leaves_the_incremental_sync_to_the_continuation_that_completes(
    instance, resources, store, store_url, replica_root, municipality
):
    request = _paused_sync_then_a_deploy(instance, resources, store, store_url, replica_root, municipality)
    request.run_config["ops"]["meeting_pages"]["config"] |= {"batch_size": 50, "time_budget_seconds": 0.001}
    assert run_job("meeting_pages_job", instance, resources, municipality, "agenda", request.run_config, request.tags).success
    assert store.job(municipality, "agenda")["status"] == "paused"
    # No sync began after the webhook, but the continuation will sync it: webhook_sensor asks for nothing.
    last_event = store.webhook_events_after(0)[-1]["id"]
    assert _webhook_tick(instance, store_url, cursor=str(last_event)).run_requests == []
    context = _sensor_context(instance, store_url)
    (continuation,) = sync_followup_sensor(context).run_requests
    continuation.run_config["ops"]["meeting_pages"]["config"]["window_days"] = 36500
    result = run_job("meeting_pages_job", instance, resources, municipality, "agenda", continuation.run_config, continuation.tags)
    assert result.success and continuation.tags["civicband/trigger"] == "continuation"
    assert store.job(municipality, "agenda")["mode"] == "incremental"
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_a_webhook_run_that_failed_leaves_the_incremental_sync_to_the_run_that_resumes_it(
    instance, resources, store, store_url, replica, replica_root, municipality
):
    request = _paused_sync_then_a_deploy(instance, resources, store, store_url, replica_root, municipality)
    replica.set_faults(rate=1.0, kinds=["error_500"])
    assert not run_job("meeting_pages_job", instance, resources, municipality, "agenda", request.run_config, request.tags).success
    replica.clear_faults()
    assert store.job(municipality, "agenda")["status"] == "failed"
    ui_run = {"ops": {"meeting_pages": {"config": {"window_days": 36500}}}}  # Materialize: no trigger tag
    assert run_job("meeting_pages_job", instance, resources, municipality, "agenda", ui_run).success
    assert store.job(municipality, "agenda")["mode"] == "incremental"
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_followup_sensor_repairs_a_failing_partition_a_bounded_number_of_times(instance, store, store_url):
    _completed_sync(store, None)
    context = lambda: _sensor_context(instance, store_url)  # noqa: E731
    requests = []
    for attempt in range(MAX_REPAIRS + 2):
        store.record_verification("oakland.ca", "agenda", 10, 9, False, dt.datetime(2026, 1, 1, 0, 0, attempt, tzinfo=dt.timezone.utc))
        requests += sync_followup_sensor(context()).run_requests or []
    assert len(requests) == MAX_REPAIRS
    assert all(r.tags["civicband/trigger"] == "repair" and r.run_config["ops"]["meeting_pages"]["config"]["restart"] for r in requests)
    assert json.dumps(store.job("oakland.ca", "agenda")["repair_attempts"]) == str(MAX_REPAIRS)


def _failing_partition(instance, store, store_url):
    """oakland.ca/agenda synced (empty) and failing its check; returns a sensor context factory."""
    _completed_sync(store, None)
    store.record_verification("oakland.ca", "agenda", 10, 9, False, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    return lambda: _sensor_context(instance, store_url)


def test_a_repair_whose_run_ended_without_a_new_verification_is_not_counted_again(instance, store, store_url):
    context = _failing_partition(instance, store, store_url)
    (repair,) = sync_followup_sensor(context()).run_requests
    # Its run ended without a check result (upstream down while counting): verified_at stays, and so
    # would the run key, which the daemon drops as used.
    instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.FAILURE,
                                   tags=partition_tags("oakland.ca", "agenda")
                                   | {"dagster/run_key": repair.run_key, "dagster/sensor_name": "sync_followup_sensor"}))
    for _ in range(3):
        assert not sync_followup_sensor(context()).run_requests
    assert store.job("oakland.ca", "agenda")["repair_attempts"] == 1
    store.record_verification("oakland.ca", "agenda", 10, 9, False, dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    (again,) = sync_followup_sensor(context()).run_requests  # a new verification failed: the next repair
    assert again.run_key != repair.run_key and store.job("oakland.ca", "agenda")["repair_attempts"] == 2


def test_a_repair_is_counted_once_while_its_run_is_unfinished_and_sensor_runs_wait_for_a_busy_municipality(instance, store, store_url):
    context = _failing_partition(instance, store, store_url)
    (repair,) = sync_followup_sensor(context()).run_requests
    assert repair.run_config["ops"]["meeting_pages"]["config"]["lease_wait_seconds"] == WAIT_FOREVER
    # The repair run started (its check will say whether it worked): later ticks neither ask nor count again.
    instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.STARTED,
                                   tags=partition_tags("oakland.ca", "agenda")))
    for _ in range(3):
        assert not sync_followup_sensor(context()).run_requests
    assert store.job("oakland.ca", "agenda")["repair_attempts"] == 1


def test_a_continuation_that_moved_the_cursor_without_new_pages_is_continued_again(instance, store, store_url):
    """Batches of an incremental sync through ranges of ids can be empty: a continuation may pause on
    its budget with the cursor further on but no page more. It is continued all the same."""
    context = lambda: _sensor_context(instance, store_url)  # noqa: E731
    keys = []
    for cursor in ("c1", "c2"):  # the same pages fetched (none), the cursor moved on
        start = store.start_sync("oakland.ca", "agenda", restart=False, run_id=None)
        store.write_batch("oakland.ca", "agenda", start, [], [], cursor)
        store.stop_sync("oakland.ca", "agenda", start, "paused", "time budget of 60 s reached")
        (continuation,) = sync_followup_sensor(context()).run_requests
        assert continuation.tags["civicband/trigger"] == "continuation"
        keys.append(continuation.run_key)
        instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", status=dg.DagsterRunStatus.SUCCESS,
                                       tags=partition_tags("oakland.ca", "agenda")
                                       | {"dagster/run_key": continuation.run_key, "dagster/sensor_name": "sync_followup_sensor"}))
    assert keys[0] != keys[1]
    assert not sync_followup_sensor(context()).run_requests  # the same pause is continued once
