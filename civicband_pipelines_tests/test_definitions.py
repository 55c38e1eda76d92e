"""The Dagster wiring, executed in process against the replica: asset, check, coverage, sensors."""

import datetime as dt
import json

import dagster as dg
import pytest
import sqlalchemy as sa

from civicband_pipelines import sensors
from civicband_pipelines.assets import coverage_report
from civicband_pipelines.definitions import defs
from civicband_pipelines.leases import WAIT_FOREVER
from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.partitions import MUNICIPALITY, partition_key, partition_tags
from civicband_pipelines.resources import CivicBandResource, MeetingStoreResource
from civicband_pipelines.schema import webhook_events
from civicband_pipelines.sensors import EVENTS_PER_TICK, MAX_REPAIRS, sync_followup_sensor, webhook_sensor

from .test_verify import delete_local_pages
from .upstream import assert_equals_upstream, replica_db


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("CIVICBAND_HOME", str(tmp_path / "home"))
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def resources(client_settings, store_url):
    return {"civicband": CivicBandResource(base_url=client_settings.base_url, timeout=client_settings.timeout),
            "meeting_store": MeetingStoreResource(database_url=store_url)}


def run_job(name, instance, resources, municipality, document_type, run_config=None, tags=None):
    job = defs.resolve_job_def(name)
    return job.execute_in_process(
        instance=instance, resources=resources, run_config=run_config or {},
        tags=(tags or {}) | partition_tags(municipality, document_type), raise_on_error=False,
    )


def test_definitions_describe_the_partitioned_asset_and_its_check():
    asset = defs.resolve_assets_def("meeting_pages")
    dims = {d.name for d in asset.partitions_def.partitions_defs}
    assert dims == {"municipality", "document_type"}
    assert asset.descriptions_by_key[dg.AssetKey("meeting_pages")]
    checks = list(defs.resolve_asset_graph().asset_check_keys)
    assert dg.AssetCheckKey(dg.AssetKey("meeting_pages"), "matches_upstream") in checks
    assert {s.name for s in defs.sensors} == {"webhook_sensor", "sync_followup_sensor"}


def test_the_cli_counts_a_run_as_synced_only_if_its_own_sync_completed(instance, resources, store, municipality):
    from civicband_pipelines.cli import _completed

    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    budget = {"ops": {"meeting_pages": {"config": {"batch_size": 50, "time_budget_seconds": 0.001}}}}
    paused = run_job("meeting_pages_job", instance, resources, municipality, "agenda", budget)
    assert paused.success and store.job(municipality, "agenda")["status"] == "paused" and not _completed(paused)
    done = run_job("meeting_pages_job", instance, resources, municipality, "agenda")
    with store.engine.begin() as conn:  # another sync has taken the partition since: its job row says so
        conn.exec_driver_sql("UPDATE backfill_jobs SET status = 'running'")
    assert _completed(done)


def test_a_paused_sync_is_not_verified_until_it_completes(instance, resources, store, replica, municipality):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    budget = {"ops": {"meeting_pages": {"config": {"batch_size": 50, "time_budget_seconds": 0.001}}}}
    replica.reset_stats()
    paused = run_job("meeting_pages_job", instance, resources, municipality, "agenda", budget)
    assert paused.success and store.job(municipality, "agenda")["status"] == "paused"
    (evaluation,) = paused.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description.startswith("NOT VERIFIED: its full sync is paused (50 pages fetched so far)")
    # No count of upstream (each check starts with one), so no comparison page by page either.
    paths = replica.fault_stats()["paths"]
    assert not any(path.endswith("/-/query.json") for path in paths), paths
    assert store.job(municipality, "agenda")["verified_at"] is None
    from civicband_pipelines.cli import _outcome, _verification_line  # `civicband verify` says so too

    assert _verification_line((municipality, "agenda"), evaluation) == f"{municipality}/agenda: {evaluation.description}"
    done = run_job("meeting_pages_job", instance, resources, municipality, "agenda")
    (done_evaluation,) = done.get_asset_check_evaluations()
    assert done_evaluation.passed and store.job(municipality, "agenda")["verified_ok"] is True
    # `civicband backfill`: a paused sync is not done; a completed one whose check found another sync
    # begun since (a run that took the municipality in between) is left to that sync to verify.
    assert (_outcome(paused, evaluation), _outcome(done, done_evaluation), _outcome(done, evaluation)) == ("failed", "verified", "later")


@pytest.mark.parametrize("config", [{"lease_wait_seconds": 1e300}, {"lease_wait_seconds": float("inf")},
                                    {"time_budget_seconds": -5}, {"time_budget_seconds": float("nan")}])
def test_waits_and_budgets_the_sync_cannot_keep_are_refused_before_it_starts(instance, resources, store, municipality, config):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    result = run_job("meeting_pages_job", instance, resources, municipality, "agenda", {"ops": {"meeting_pages": {"config": config}}})
    assert not result.success and store.job(municipality, "agenda") is None
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert next(iter(config)) in str(failure.step_failure_data.error)


def test_materialization_records_metadata_and_the_check_passes(instance, resources, store, replica_root, municipality):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    result = run_job("meeting_pages_job", instance, resources, municipality, "agenda",
                     {"ops": {"meeting_pages": {"config": {"batch_size": 50}}}})
    assert result.success
    metadata = result.asset_materializations_for_node("meeting_pages")[0].metadata
    for key in ("pages_fetched", "pages_created", "pages_updated", "pages_rejected", "rows_per_second", "resumed", "source"):
        assert key in metadata
    assert metadata["pages_rejected"].value == 5
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["missing"].value == 0
    assert_equals_upstream(store, replica_root, municipality, "agenda")
    job = store.job(municipality, "agenda")
    assert job["verified_ok"] is True and job["expected_count"] == job["actual_count"] + 5


def test_failing_check_lands_in_the_job_table_and_names_documents(instance, resources, store, replica, municipality):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    assert run_job("meeting_pages_job", instance, resources, municipality, "minutes").success
    victims = [p["upstream_id"] for p in list(store.iter_pages(municipality, "minutes"))[:2]]
    delete_local_pages(store, municipality, "minutes", victims)
    replica.reset_stats()
    result = run_job("verify_job", instance, resources, municipality, "minutes")
    counts = sum(n for path, n in replica.fault_stats()["paths"].items() if path.endswith("/-/query.json"))
    assert counts == 1, "the comparison by id reuses the count that found the mismatch"
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["missing"].value == 2
    assert "missing" in evaluation.metadata["missing_documents"].value
    job = store.job(municipality, "minutes")
    assert job["verified_ok"] is False and job["status"] == "completed"  # verifying blocks nothing


@pytest.mark.parametrize("history", ["never synced", "failed"])
def test_a_partition_without_a_completed_sync_is_verified_by_counts_without_paging_through_upstream(
    instance, resources, store, replica, municipality, history
):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality])
    if history == "failed":
        store.stop_sync(municipality, "minutes", store.start_sync(municipality, "minutes", restart=False, run_id=None), "failed", "x")
    replica.reset_stats()
    result = run_job("verify_job", instance, resources, municipality, "minutes")
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["missing"].value == evaluation.metadata["expected"].value > 0
    assert ("never synced" if history == "never synced" else "its last sync is failed") in evaluation.description
    assert replica.fault_stats()["table_pages"] == 0  # the count only
    deep = {"ops": {"meeting_pages_matches_upstream": {"config": {"compare_ids": True}}}}
    (evaluation,) = run_job("verify_job", instance, resources, municipality, "minutes", deep).get_asset_check_evaluations()
    assert evaluation.metadata["compared_ids"].value is True and "missing_documents" in evaluation.metadata


def test_coverage_report_lists_every_partition_and_writes_csv(instance, resources, store, municipality, tmp_path):
    instance.add_dynamic_partitions(MUNICIPALITY, [municipality, "added-in-the-ui.ca"])  # never in the store
    store.upsert_municipality(municipality, {})
    assert run_job("meeting_pages_job", instance, resources, municipality, "agenda").success
    assert run_job("verify_job", instance, resources, municipality, "minutes").success  # counts, no sync
    result = dg.materialize([coverage_report], instance=instance, resources=resources)
    metadata = result.asset_materializations_for_node("coverage_report")[0].metadata
    rows = {(r.data["municipality"], r.data["document_type"]): r.data for r in metadata["coverage"].value.records}
    assert rows[(municipality, "agenda")]["status"] == "completed" and rows[(municipality, "agenda")]["missing"] == 0
    assert rows[(municipality, "minutes")]["status"] == "never synced" and rows[(municipality, "minutes")]["missing"] > 0
    assert {rows[("added-in-the-ui.ca", d)]["status"] for d in DOCUMENT_TYPES} == {"never synced"}
    csv = (tmp_path / "home" / "coverage.csv").read_text()
    assert csv.splitlines()[0] == "municipality,document_type,status,expected,actual,missing,check_passed,last_sync,last_verified"


def test_coverage_counts_a_partition_exact_only_if_its_check_passed_and_extra_pages_cover_nothing(store):
    from civicband_pipelines.coverage import coverage_frame, coverage_summary

    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for municipality, (expected, actual, passed) in {
        "a.ca": (10, 10, True),
        "b.ca": (10, 10, False),  # the ids differ: 1 missing, 1 extra, the same count
        "c.ca": (10, 12, False),  # 2 extra
    }.items():
        store.upsert_municipality(municipality, {})
        start = store.start_sync(municipality, "agenda", restart=False, run_id=None)
        store.write_batch(municipality, "agenda", start, [], [], None)
        store.record_verification(municipality, "agenda", expected, actual, passed, at)
    frame = coverage_frame(store)
    summary = coverage_summary(frame)
    assert frame.set_index("municipality")["check_passed"].dropna().to_dict() == {"a.ca": True, "b.ca": False, "c.ca": False}
    assert summary["partitions_verified_exact"] == 1
    assert (summary["pages_expected"], summary["pages_local"], summary["coverage_percent"]) == (30, 32, 100.0)


def _webhook_tick(instance, store_url, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"meeting_store": MeetingStoreResource(database_url=store_url)})
    return webhook_sensor(context)


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


WINDOW = (dt.date(2020, 1, 1), dt.date(2030, 12, 31))


def _completed_sync(store, run_id: str, **kwargs) -> None:
    """A sync of oakland.ca/agenda begun and completed (upstream empty: one last batch)."""
    start = store.start_sync("oakland.ca", "agenda", restart=False, run_id=run_id, **kwargs)
    store.write_batch("oakland.ca", "agenda", start, [], [], None)


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
    context = dg.build_sensor_context(instance=instance, resources={"meeting_store": MeetingStoreResource(database_url=store_url)})
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
    start = store.start_sync("oakland.ca", "agenda", restart=False, run_id=None)
    store.write_batch("oakland.ca", "agenda", start, [], [], None)  # a completed (empty) sync
    context = lambda: dg.build_sensor_context(instance=instance, resources={"meeting_store": MeetingStoreResource(database_url=store_url)})  # noqa: E731
    requests = []
    for attempt in range(MAX_REPAIRS + 2):
        store.record_verification("oakland.ca", "agenda", 10, 9, False, dt.datetime(2026, 1, 1, 0, 0, attempt, tzinfo=dt.timezone.utc))
        requests += sync_followup_sensor(context()).run_requests or []
    assert len(requests) == MAX_REPAIRS
    assert all(r.tags["civicband/trigger"] == "repair" and r.run_config["ops"]["meeting_pages"]["config"]["restart"] for r in requests)
    assert json.dumps(store.job("oakland.ca", "agenda")["repair_attempts"]) == str(MAX_REPAIRS)


def _failing_partition(instance, store, store_url):
    """oakland.ca/agenda synced (empty) and failing its check; returns a sensor context factory."""
    start = store.start_sync("oakland.ca", "agenda", restart=False, run_id=None)
    store.write_batch("oakland.ca", "agenda", start, [], [], None)
    store.record_verification("oakland.ca", "agenda", 10, 9, False, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    return lambda: dg.build_sensor_context(instance=instance, resources={"meeting_store": MeetingStoreResource(database_url=store_url)})


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
    context = lambda: dg.build_sensor_context(instance=instance, resources={"meeting_store": MeetingStoreResource(database_url=store_url)})  # noqa: E731
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
