"""A daemon-launched run whose process is killed (kill -9) is retried by Dagster and resumes, also one
killed while it waited for its municipality."""

import os
import signal
from pathlib import Path

import dagster as dg

from civicband_pipelines.leases import MunicipalityLease, SyncOwner, waiting_syncs
from civicband_pipelines.naming import DOCUMENT_TYPES

from .conftest import make_municipality
from .upstream import assert_equals_upstream, upstream_rows


def test_a_killed_run_is_retried_and_resumes_at_its_checkpoint(dagster_stack, replica, replica_root):
    stack, municipality = dagster_stack, make_municipality(replica_root, documents=1000, pages=(8, 12), text_chars=200)
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.5, path_contains="/agendas.json")
    stack.send_webhook(municipality, {"name": "Retry Town", "pages": 1}, expect_action="created")
    # ~10,000 agenda rows: 10 slow pages of 1000, committed in batches of 4000 (SQLite's default) or
    # 1000 (PostgreSQL's). Kill the run's process (the lease names it) once its first batch is durable.
    job = stack.wait_for(lambda: (j := stack.store.job(municipality, "agenda")) and j["pages_fetched"] > 0 and j, "a first batch", 300)
    lease = stack.store.lease(municipality)
    first_run = lease["run_id"]
    os.kill(lease["pid"], signal.SIGKILL)
    replica.clear_faults()

    def retried():
        runs = stack.runs(municipality, "agenda")
        children = [r for r in runs if r.tags.get("dagster/parent_run_id") == first_run]
        return children if children and children[-1].status == dg.DagsterRunStatus.SUCCESS else None

    (retry,) = stack.wait_for(retried, "the retried run to succeed", 300)
    assert stack.instance.get_run_by_id(first_run).status == dg.DagsterRunStatus.FAILURE
    metadata = stack.materialization(retry.run_id)
    assert metadata["resumed"] is True
    assert metadata["pages_fetched"] == total - job["pages_fetched"]
    for document_type in DOCUMENT_TYPES:
        assert_equals_upstream(stack.store, replica_root, municipality, document_type)


def test_a_run_that_dies_waiting_for_its_municipality_with_its_code_server_is_retried(dagster_stack, replica_root):
    stack, municipality = dagster_stack, make_municipality(replica_root, documents=5, pages=(2, 3))
    # A sync outside the run queue (the CLI, say) holds the municipality; a sensor run waits for it.
    with MunicipalityLease(stack.store, municipality, SyncOwner("agenda"), stale_after=3):  # the stack's setting
        stack.send_webhook(municipality, {"name": "Wait Town", "pages": 1}, expect_action="created")
        waits = lambda: [w for w in waiting_syncs(stack.store) if w["municipality"] == municipality]  # noqa: E731
        (wait,) = stack.wait_for(waits, "a run waiting for the municipality", 120)
        # The run's process and the code server that launched it die together (a crashed machine or
        # container): no one is left to report the run, and it would show as started for ever, holding
        # the municipality's slot in the run queue. A waiting run holds no lease: its wait heartbeats.
        code_server = int(Path(f"/proc/{wait['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(code_server, signal.SIGKILL)
        os.kill(wait["pid"], signal.SIGKILL)
        # The daemon evaluates sensors again once it has replaced the code server (its workspace reload, ~60 s).
        stack.wait_for(lambda: stack.instance.get_run_by_id(wait["run_id"]).status == dg.DagsterRunStatus.FAILURE,
                       "the dead run to be reported failed", 300)
    (failure,) = stack.instance.all_logs(wait["run_id"], of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "the run's process died (its heartbeat in the meetings store went stale)" in failure.dagster_event.message
    stack.wait_for(lambda: stack.settled(municipality), "every run of the municipality to finish", 300)
    runs = stack.runs(municipality)
    retries = [r for r in runs if r.tags.get("dagster/parent_run_id") == wait["run_id"]]
    assert [r.status for r in retries] == [dg.DagsterRunStatus.SUCCESS], [(r.run_id, r.status) for r in runs]
    stack.wait_for(lambda: not waits(), "the dead wait to be settled", 30)
    for document_type in DOCUMENT_TYPES:
        assert_equals_upstream(stack.store, replica_root, municipality, document_type)
