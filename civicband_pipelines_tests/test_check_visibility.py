"""A failing verification is visible per partition where users look: the UI's GraphQL and the CLI."""

import sqlalchemy as sa

from civicband_pipelines.partitions import partition_key
from civicband_pipelines.schema import meeting_pages

from .conftest import make_municipality

CHECK_EXECUTIONS = """
query ($partition: String!) {
  assetCheckExecutions(assetKey: {path: ["meeting_pages"]}, checkName: "matches_upstream", partition: $partition, limit: 1) {
    status
    evaluation { success partition metadataEntries { label ... on IntMetadataEntry { intValue } } }
  }
}
"""


def latest_check(stack, municipality: str, document_type: str) -> dict:
    data = stack.graphql(CHECK_EXECUTIONS, {"partition": partition_key(municipality, document_type)})
    (execution,) = data["assetCheckExecutions"]
    evaluation = execution["evaluation"]
    numbers = {e["label"]: e.get("intValue") for e in evaluation["metadataEntries"]}
    return {"status": execution["status"], "success": evaluation["success"], **numbers}


def test_a_failing_check_shows_per_partition_in_graphql_and_the_cli(dagster_stack, replica_root):
    stack, municipality = dagster_stack, make_municipality(replica_root, documents=10, pages=(3, 5))
    done = stack.cli("backfill", f"--subdomain={municipality}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert latest_check(stack, municipality, "agenda")["success"] is True

    with stack.store.engine.begin() as conn:  # lose 2 local agenda pages
        ids = conn.execute(sa.select(meeting_pages.c.id).where(
            meeting_pages.c.municipality == municipality, meeting_pages.c.document_type == "agenda").limit(2)).scalars().all()
        conn.execute(sa.delete(meeting_pages).where(meeting_pages.c.id.in_(ids)))

    verify = stack.cli("verify", f"--subdomain={municipality}")
    assert verify.returncode == 1
    assert f"{municipality}/agenda: MISMATCH" in verify.stdout and "missing 2" in verify.stdout
    assert f"{municipality}/minutes: OK" in verify.stdout

    failing, passing = latest_check(stack, municipality, "agenda"), latest_check(stack, municipality, "minutes")
    assert failing["status"] == "FAILED" and failing["success"] is False and failing["missing"] == 2
    assert passing["status"] == "SUCCEEDED" and passing["success"] is True and passing["missing"] == 0
    lines = {line.split()[1]: line.split() for line in stack.cli("status").stdout.splitlines() if line.startswith(municipality)}
    assert "False" in lines["agenda"] and "True" in lines["minutes"]  # the verified_ok column
