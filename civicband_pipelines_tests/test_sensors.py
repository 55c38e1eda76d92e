"""sensors.settle_dead_runs against a real (ephemeral) Dagster instance and the store."""

import dagster as dg
import sqlalchemy as sa

from civicband_pipelines.leases import waiting_syncs
from civicband_pipelines.sensors import settle_dead_runs

from .conftest import record_dead_wait


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
