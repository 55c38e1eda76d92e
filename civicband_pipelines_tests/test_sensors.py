"""sensors.settle_dead_runs against a real (ephemeral) Dagster instance and the store."""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from civicband_pipelines.leases import waiting_syncs
from civicband_pipelines.schema import sync_waits
from civicband_pipelines.sensors import settle_dead_runs

LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def started_run(instance: dg.DagsterInstance, run_id: str) -> None:
    instance.add_run(dg.DagsterRun(job_name="meeting_pages_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED))


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_a_report_that_fails_loses_no_dead_run(store, monkeypatch):
    instance = dg.DagsterInstance.ephemeral()
    # A sync whose process died (its job running, no lease) and one that died waiting (a stale wait).
    for run_id in ("dead-sync", "dead-wait"):
        started_run(instance, run_id)
    store.start_sync("oakland.ca", "agenda", restart=False, run_id="dead-sync")
    with store.writer.begin() as conn:
        conn.execute(sync_waits.insert().values(holder="h", municipality="alameda.ca", document_type="minutes",
                                                run_id="dead-wait", host="x", pid=1, heartbeat_at=LONG_AGO))

    reports = FailingOnce(instance, ["dead-sync"])
    monkeypatch.setattr(instance, "report_run_failed", reports)
    with pytest.raises(sa.exc.OperationalError):
        settle_dead_runs(instance, store)
    assert store.job("oakland.ca", "agenda")["status"] == "running", "not settled, since its run was not reported"
    assert status(instance, "dead-sync") == dg.DagsterRunStatus.STARTED

    reports.runs = {"dead-wait"}
    with pytest.raises(sa.exc.OperationalError):
        settle_dead_runs(instance, store)
    assert store.job("oakland.ca", "agenda")["status"] == "failed"
    assert status(instance, "dead-sync") == dg.DagsterRunStatus.FAILURE
    assert [w["run_id"] for w in waiting_syncs(store)] == ["dead-wait"], "the wait is put back"
    assert status(instance, "dead-wait") == dg.DagsterRunStatus.STARTED

    assert settle_dead_runs(instance, store) == []  # the job was settled last time
    assert status(instance, "dead-wait") == dg.DagsterRunStatus.FAILURE and waiting_syncs(store) == []


class FailingOnce:
    """instance.report_run_failed, with the instance's database away for the next report of each run in `runs`."""

    def __init__(self, instance: dg.DagsterInstance, runs: list[str]):
        self.report, self.runs = instance.report_run_failed, set(runs)

    def __call__(self, run: dg.DagsterRun, message: str | None = None):
        if run.run_id in self.runs:
            self.runs.discard(run.run_id)
            raise sa.exc.OperationalError("report_run_failed", {}, Exception("the instance's database is down"))
        return self.report(run, message)
