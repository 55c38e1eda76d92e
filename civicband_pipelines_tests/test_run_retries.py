"""A daemon-launched run whose process is killed (kill -9) is retried by Dagster and resumes, also one
that restarted its partition (a repair) and one killed while it waited for its municipality."""

import os
import signal
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from civicband_pipelines.leases import MunicipalityLease, SyncOwner, waiting_syncs
from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.schema import meeting_pages

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

    (retry,) = stack.wait_for(retried_run(stack, municipality, first_run), "the retried run to succeed", 300)
    assert stack.instance.get_run_by_id(first_run).status == dg.DagsterRunStatus.FAILURE
    metadata = stack.materialization(retry.run_id)
    assert metadata["resumed"] is True
    assert metadata["pages_fetched"] == total - job["pages_fetched"]
    for document_type in DOCUMENT_TYPES:
        assert_equals_upstream(stack.store, replica_root, municipality, document_type)


def retried_run(stack, municipality: str, run_id: str):
    """A condition: the retries of run `run_id`, once the last of them succeeded."""
    def retried():
        children = [r for r in stack.runs(municipality, "agenda") if r.tags.get("dagster/parent_run_id") == run_id]
        return children if children and children[-1].status == dg.DagsterRunStatus.SUCCESS else None
    return retried


def test_a_killed_repair_run_is_retried_and_resumes_the_repair_instead_of_restarting_it(dagster_stack, replica, replica_root):
    stack, municipality = dagster_stack, make_municipality(replica_root, documents=1000, pages=(8, 12), text_chars=200)
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    done = stack.cli("backfill", f"--subdomain={municipality}", "--document-type=agenda")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    generation = stack.store.job(municipality, "agenda")["sync_generation"]
    with stack.store.engine.begin() as conn:  # a local page lost: its check fails, and a repair restarts the partition
        partition = (meeting_pages.c.municipality == municipality, meeting_pages.c.document_type == "agenda")
        lost = conn.execute(sa.select(meeting_pages.c.id).where(*partition).limit(1)).scalar_one()
        conn.execute(sa.delete(meeting_pages).where(meeting_pages.c.id == lost))
    replica.set_faults(rate=1.0, kinds=["slow"], slow_seconds=0.5, path_contains="/agendas.json")
    assert stack.cli("verify", f"--subdomain={municipality}", "--document-type=agenda").returncode == 1
    repairing = lambda: (j := stack.store.job(municipality, "agenda"))["sync_generation"] > generation and j["pages_fetched"] > 0  # noqa: E731
    stack.wait_for(repairing, "the repair's first batch", 300)
    lease = stack.store.lease(municipality)
    repair = stack.instance.get_run_by_id(lease["run_id"])
    assert repair.tags["civicband/trigger"] == "repair" and repair.run_config["ops"]["meeting_pages"]["config"]["restart"] is True
    os.kill(lease["pid"], signal.SIGKILL)
    killed = stack.store.job(municipality, "agenda")  # as the repair left it: its process is gone
    replica.clear_faults()

    # Dagster retries the run with its config, restart included: the retry goes on with the repair's sync.
    (retry,) = stack.wait_for(retried_run(stack, municipality, repair.run_id), "the retried repair to succeed", 300)
    metadata = stack.materialization(retry.run_id)
    assert (metadata["resumed"], metadata["sync_generation"]) == (True, generation + 1)
    assert metadata["pages_fetched"] == total - killed["pages_fetched"]
    assert_equals_upstream(stack.store, replica_root, municipality, "agenda")


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
