"""The Dagster UI in a real browser (Playwright + Debian's Chromium) against a real webserver and daemon.

A user opens meeting_pages, sees its two partition dimensions, launches a backfill of one municipality
from the launch dialog, and reads the matches_upstream result per partition. What the UI says is also
checked against GraphQL and the stores. The screenshots taken on the way go to a temp dir; with
CIVICBAND_UPDATE_SCREENSHOTS=1 they replace the ones in docs/screenshots (used by docs/ui.md).
"""

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from civicband_pipelines import devstack
from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.replica.generate import DEMO_MUNICIPALITIES
from civicband_pipelines.store import MeetingStore

from .pg_server import free_port
from .upstream import assert_equals_upstream, expected_rejections, upstream_rows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MUNICIPALITY = "berkeley.ca"  # the smallest demo municipality: the one backfilled
DOC_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
VIEWPORT = {"width": 1600, "height": 900}
UI_TIMEOUT = 30_000  # ms, for any one thing to show in the browser
BACKFILL_TIMEOUT = 300.0  # s: two runs, one after the other (the run queue allows one per municipality)

if not os.environ.get("CI") and not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); CI runs this test", allow_module_level=True)
if not os.environ.get("CI"):
    pytest.importorskip("playwright", reason="pip install playwright; CI runs this test")

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

BACKFILL = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { status } } }"""
RUNS = """query ($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId status tags { key value } } } } }"""
CHECK_EXECUTIONS = """query ($partition: String!) { assetCheckExecutions(
  assetKey: {path: ["meeting_pages"]}, checkName: "matches_upstream", partition: $partition, limit: 1) {
    status partition evaluation { success metadataEntries { label ... on IntMetadataEntry { intValue } } } } }"""
COVERAGE = """{ assetNodeOrError(assetKey: {path: ["coverage_report"]}) {
  ... on AssetNode { assetMaterializations(limit: 1) { runId } } } }"""
MATERIALIZATION = """query ($partition: String!) { assetNodeOrError(assetKey: {path: ["meeting_pages"]}) {
  ... on AssetNode { assetMaterializations(partitions: [$partition], limit: 1) {
    metadataEntries { label ... on IntMetadataEntry { intValue } ... on UrlMetadataEntry { url } } } } } }"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Replica, webserver and daemon in a tmp dir (no webhook receiver), with the demo municipalities."""
    root = tmp_path_factory.mktemp("devstack")
    env = devstack.prepare(root)
    env.update(CIVICBAND_HTTP_TIMEOUT="10", CIVICBAND_HTTP_BACKOFF="0.1")
    with devstack.Stack(root, env) as running:
        devstack.start_replica(running)
        ui = devstack.start_dagster(running, free_port())
        devstack.register(running.env, [m.subdomain for m in DEMO_MUNICIPALITIES])
        running.ui = ui
        yield running


@pytest.fixture
def shots(tmp_path):
    """Where the screenshots go: docs/screenshots only when asked, so a test run leaves the repo as it was."""
    if os.environ.get("CIVICBAND_UPDATE_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        return DOC_SHOTS
    return tmp_path


@pytest.fixture
def page(stack):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT)
            expect.set_options(timeout=UI_TIMEOUT)
            # The UI greets a new instance with a newsletter dialog: mark it seen, and skip it should it show.
            _graphql(stack.ui, "mutation { setNuxSeen }")
            page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                                     lambda: page.get_by_role("button", name="Skip").click())
            yield page
        finally:
            browser.close()


def test_backfill_one_municipality_from_the_ui_and_read_the_checks_per_partition(stack, page: Page, shots: Path):
    ui = stack.ui
    partitions = [f"{document_type}|{MUNICIPALITY}" for document_type in DOCUMENT_TYPES]  # Dagster's key order
    total = len(DEMO_MUNICIPALITIES) * len(DOCUMENT_TYPES)

    # 1. The asset's partitions: two dimensions, document_type and municipality.
    page.goto(f"{ui}/assets/meeting_pages?view=partitions")
    expect(page.get_by_placeholder(re.compile("Filter by document_type"))).to_be_visible()
    expect(page.get_by_placeholder(re.compile("Filter by municipality"))).to_be_visible()
    for key in (*DOCUMENT_TYPES, *(m.subdomain for m in DEMO_MUNICIPALITIES)):
        expect(_visible_text(page, key)).to_be_visible()
    expect(page.get_by_text(f"Missing ({total})", exact=True)).to_be_visible()
    page.screenshot(path=shots / "asset-partitions.png")

    # 2. Launch a backfill of the municipality's partitions from the launch dialog.
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("document_type", exact=True)).to_be_visible()
    expect(dialog.get_by_text("municipality", exact=True)).to_be_visible()
    dialog.get_by_text("Select a partition or create one").nth(1).click()  # the municipality dimension
    page.keyboard.type(MUNICIPALITY)
    page.locator("li").filter(has_text=MUNICIPALITY).last.click()
    page.keyboard.press("Escape")  # close the dropdown, not the dialog
    dialog.get_by_role("button", name="All").first.click()  # every document type
    expect(dialog.get_by_text("2 partitions")).to_be_visible()
    page.screenshot(path=shots / "launch-backfill.png")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    expect(toast).to_be_visible()
    backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)

    # 3. The daemon runs it, one run per partition: wait for them (GraphQL), then see them in the UI.
    runs = _wait_for_runs(ui, backfill_id, count=len(partitions))
    assert sorted(_tags(r)["dagster/partition"] for r in runs) == sorted(partitions)
    assert all(_tags(r).get("dagster/from_ui") == "true" for r in runs)

    # 4. The check's result per partition.
    page.goto(f"{ui}/assets/meeting_pages?view=checks")
    expect(page.get_by_text("matches_upstream").first).to_be_visible()
    _visible_text(page, "Partitions").last.click()  # the check's tab, not the asset's
    expect(page.get_by_text("Passed (2)", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Missing ({total - 2})", exact=True)).to_be_visible()  # only what was backfilled
    expect(page.get_by_text("Failed (0)", exact=True)).to_be_visible()
    for document_type in DOCUMENT_TYPES:
        _visible_text(page, document_type).last.click()
        _visible_text(page, MUNICIPALITY).last.click()
        expect(_visible_text(page, f"{document_type}|{MUNICIPALITY}").first).to_be_visible()
        expect(page.get_by_text("Passed", exact=True)).to_be_visible()
        expect(page.get_by_text("rejected", exact=True)).to_be_visible()
    page.screenshot(path=shots / "check-partitions.png")

    # 5. A partition's materialization metadata, with the link back to the source.
    page.goto(f"{ui}/assets/meeting_pages?view=partitions")
    _visible_text(page, "agenda").last.click()
    _visible_text(page, MUNICIPALITY).last.click()
    expect(page.get_by_text("pages_fetched", exact=True)).to_be_visible()
    source = stack.env["CIVICBAND_BASE_URL"].format(subdomain=MUNICIPALITY) + "/meetings/agendas"
    expect(page.locator(f'a[href="{source}"]').first).to_be_visible()
    page.screenshot(path=shots / "partition-metadata.png")

    # 6. The coverage report, materialized from its page.
    page.goto(f"{ui}/assets/coverage_report")
    page.get_by_role("button", name="Materialize", exact=False).first.click()
    _poll(lambda: _graphql(ui, COVERAGE)["assetNodeOrError"]["assetMaterializations"], 120, "the coverage report")
    page.goto(f"{ui}/assets/coverage_report")
    page.set_viewport_size({"width": 2000, "height": 1400})  # the numbers and the whole table under them
    expect(page.get_by_text("partitions_verified_exact", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"\bago$")).first).to_be_visible()  # "Latest materialization: 3 seconds ago"
    page.screenshot(path=shots / "coverage-report.png")
    page.set_viewport_size(VIEWPORT)

    # 7. The backfill with its runs, once the daemon has marked it done.
    _wait_for_backfill(ui, backfill_id)
    page.goto(f"{ui}/runs/b/{backfill_id}?tab=runs")
    expect(page.get_by_text("Succeeded", exact=True)).to_be_visible()
    for key in partitions:
        expect(page.get_by_text(f"partition: {key}").first).to_be_visible()
    expect(page.get_by_text("Success", exact=True)).to_have_count(len(partitions))
    page.screenshot(path=shots / "backfill-runs.png")

    # What the UI showed agrees with GraphQL, the replica and the local store.
    replica_root = stack.root / "replica"
    for document_type, key in zip(DOCUMENT_TYPES, partitions):
        upstream = len(upstream_rows(replica_root, MUNICIPALITY, document_type))
        rejected = len(expected_rejections(replica_root, MUNICIPALITY, document_type))
        [execution] = _graphql(ui, CHECK_EXECUTIONS, partition=key)["assetCheckExecutions"]
        assert execution["status"] == "SUCCEEDED" and execution["evaluation"]["success"], execution
        check = _metadata(execution["evaluation"])
        assert (check["expected"], check["actual"], check["rejected"]) == (upstream, upstream - rejected, rejected)
        assert check["missing"] == check["extra"] == 0
        [materialization] = _graphql(ui, MATERIALIZATION, partition=key)["assetNodeOrError"]["assetMaterializations"]
        synced = _metadata(materialization)
        assert synced["pages_fetched"] == upstream and synced["pages_rejected"] == rejected
        table = "agendas" if document_type == "agenda" else "minutes"
        assert synced["source"] == stack.env["CIVICBAND_BASE_URL"].format(subdomain=MUNICIPALITY) + f"/meetings/{table}"
    store = MeetingStore(stack.env["CIVICBAND_DATABASE_URL"])
    try:
        for document_type in DOCUMENT_TYPES:
            assert_equals_upstream(store, replica_root, MUNICIPALITY, document_type)
    finally:
        store.dispose()


def _visible_text(page: Page, text: str):
    """Text the user sees: the UI also renders hidden copies of names, to measure truncation."""
    return page.get_by_text(text, exact=True).filter(visible=True)


def _wait_for_runs(ui: str, backfill_id: str, count: int) -> list[dict]:
    def done():
        runs = _graphql(ui, RUNS, id=backfill_id)["runsOrError"]["results"]
        failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
        assert not failed, f"backfill runs failed: {failed}"
        return runs if len(runs) == count and all(r["status"] == "SUCCESS" for r in runs) else None

    return _poll(done, BACKFILL_TIMEOUT, f"the {count} runs of backfill {backfill_id}")


def _wait_for_backfill(ui: str, backfill_id: str) -> None:
    """The backfill daemon marks a backfill done on its next pass (every 30 s)."""
    def done():
        backfill = _graphql(ui, BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert backfill.get("status") in ("REQUESTED", "COMPLETED_SUCCESS"), backfill
        return backfill["status"] == "COMPLETED_SUCCESS"

    _poll(done, 180, f"backfill {backfill_id} to be marked done")


def _poll(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)
    return value


def _graphql(ui: str, query: str, **variables) -> dict:
    answer = httpx.post(f"{ui}/graphql", json={"query": query, "variables": variables}, timeout=30).json()
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


def _metadata(entry: dict) -> dict:
    return {m["label"]: m.get("intValue", m.get("url")) for m in entry["metadataEntries"]}


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["tags"]}
