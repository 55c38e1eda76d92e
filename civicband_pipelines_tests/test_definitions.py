"""The Dagster wiring, executed in process against the replica: asset, check, coverage (sensors: test_sensors)."""

import datetime as dt

import dagster as dg
import pytest

from civicband_pipelines.assets import coverage_report
from civicband_pipelines.definitions import defs
from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.partitions import MUNICIPALITY

from .conftest import run_job
from .test_verify import delete_local_pages
from .upstream import assert_equals_upstream


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
