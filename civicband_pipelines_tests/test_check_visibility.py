"""A failing verification is visible per partition where users look (the UI's GraphQL, the CLI), and repairs itself."""

import dagster as dg
import sqlalchemy as sa

from civicband_pipelines.partitions import partition_key
from civicband_pipelines.schema import meeting_pages

from .conftest import make_municipality

CHECK_EXECUTIONS = """
query ($partition: String!) {
  assetCheckExecutions(assetKey: {path: ["meeting_pages"]}, checkName: "matches_upstream", partition: $partition, limit: 10) {
    runId
    status
    evaluation { success partition metadataEntries { label ... on IntMetadataEntry { intValue } } }
  }
}
"""


def check_in_run(stack, municipality: str, document_type: str, run_id: str) -> dict:
    """The check's execution for this partition in the given run, as the UI reads it."""
    data = stack.graphql(CHECK_EXECUTIONS, {"partition": partition_key(municipality, document_type)})
    (execution,) = [e for e in data["assetCheckExecutions"] if e["runId"] == run_id]
    evaluation = execution["evaluation"]
    numbers = {e["label"]: e.get("intValue") for e in evaluation["metadataEntries"]}
    return {"status": execution["status"], "success": evaluation["success"], **numbers}


def last_cli_run(stack, municipality: str, document_type: str) -> str:
    return stack.runs(municipality, document_type, trigger="cli")[-1].run_id


def test_a_failing_check_shows_per_partition_in_graphql_and_the_cli(dagster_stack, replica_root):
    stack, municipality = dagster_stack, make_municipality(replica_root, documents=10, pages=(3, 5))
    done = stack.cli("backfill", f"--subdomain={municipality}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert check_in_run(stack, municipality, "agenda", last_cli_run(stack, municipality, "agenda"))["success"] is True

    with stack.store.engine.begin() as conn:  # lose 2 local agenda pages
        ids = conn.execute(sa.select(meeting_pages.c.id).where(
            meeting_pages.c.municipality == municipality, meeting_pages.c.document_type == "agenda").limit(2)).scalars().all()
        conn.execute(sa.delete(meeting_pages).where(meeting_pages.c.id.in_(ids)))

    verify = stack.cli("verify", f"--subdomain={municipality}")
    assert verify.returncode == 1
    assert f"{municipality}/agenda: MISMATCH" in verify.stdout and "missing 2" in verify.stdout
    assert f"{municipality}/minutes: OK" in verify.stdout

    failing = check_in_run(stack, municipality, "agenda", last_cli_run(stack, municipality, "agenda"))
    passing = check_in_run(stack, municipality, "minutes", last_cli_run(stack, municipality, "minutes"))
    assert failing["status"] == "FAILED" and failing["success"] is False and failing["missing"] == 2
    assert passing["status"] == "SUCCEEDED" and passing["success"] is True and passing["missing"] == 0

    # Self-repair: the follow-up sensor resyncs the failing partition, and its check passes again.
    def repaired():
        runs = [r for r in stack.runs(municipality, "agenda", trigger="repair") if r.status == dg.DagsterRunStatus.SUCCESS]
        return runs[-1] if runs else None

    repair = stack.wait_for(repaired, "a repair run to succeed", 180)
    assert check_in_run(stack, municipality, "agenda", repair.run_id)["success"] is True
    lines = {line.split()[1]: line.split() for line in stack.cli("status").stdout.splitlines() if line.startswith(municipality)}
    assert "True" in lines["agenda"] and "True" in lines["minutes"]  # the verified_ok column
    assert stack.store.job(municipality, "agenda")["repair_attempts"] == 0
