"""A daemon-launched run whose process is killed (kill -9) is retried by Dagster and resumes."""

import os
import signal

import dagster as dg

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
