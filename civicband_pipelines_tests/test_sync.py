"""The sync engine over real HTTP against the Datasette replica, on SQLite and PostgreSQL."""

import threading
import urllib.parse

import httpx
import pytest

from civicband_pipelines.client import CivicBandClient, TransientError, UpstreamError
from civicband_pipelines.naming import DOCUMENT_TYPES
from civicband_pipelines.replica.faults import BROKEN_BODIES
from civicband_pipelines.replica.generate import ODD_ROW_REASONS, delete_documents, odd_rows_for, reocr_pages
from civicband_pipelines.rows import storable_id
from civicband_pipelines.sync import PREFETCH_PAGES, prefetched_pages, sync_partition

from .conftest import make_municipality, wait_until
from .replica_process import running_replica
from .upstream import assert_equals_upstream, expected_rejections, replica_db, upstream_rows


@pytest.mark.parametrize("batch_size", [1000, 7])
def test_full_backfill_equals_upstream_row_for_row(client, store, replica_root, municipality, batch_size):
    for document_type in DOCUMENT_TYPES:
        result = sync_partition(client, store, municipality, document_type, batch_size=batch_size)
        upstream = upstream_rows(replica_root, municipality, document_type)
        assert result.status == "completed"
        assert result.fetched == len(upstream)
        assert result.batches == -(-len(upstream) // batch_size)
        assert_equals_upstream(store, replica_root, municipality, document_type)
        job = store.job(municipality, document_type)
        assert (job["status"], job["last_cursor"], job["pages_fetched"]) == ("completed", None, len(upstream))


def test_rerun_of_completed_partition_changes_nothing(client, store, replica_root, municipality):
    first = sync_partition(client, store, municipality, "agenda", batch_size=50)
    before = list(store.iter_pages(municipality, "agenda"))
    second = sync_partition(client, store, municipality, "agenda", batch_size=50)
    after = list(store.iter_pages(municipality, "agenda"))
    assert second.resumed_from is None
    assert (second.created, second.updated, second.deleted) == (0, 0, 0)
    assert second.unchanged == first.created
    strip = lambda pages: [{k: v for k, v in p.items() if k != "sync_generation"} for p in pages]  # noqa: E731
    assert strip(after) == strip(before)


def test_odd_rows_are_rejected_with_reasons_while_their_batches_land(client, store, replica_root, municipality):
    # Batch size 7: every odd row shares its batch with good rows.
    result = sync_partition(client, store, municipality, "minutes", batch_size=7)
    odd = odd_rows_for(municipality, "minutes")
    rejected = {r["upstream_id"]: r for r in store.rejections(municipality, "minutes")}
    # An id no store can hold (a NUL) is kept escaped: the batch lands on PostgreSQL too.
    assert set(rejected) == {storable_id(o.id) for o in odd if not o.accepted} == expected_rejections(replica_root, municipality, "minutes")
    assert result.rejected == len(rejected)
    reasons = {o.reason: rejected[storable_id(o.id)]["reason"] for o in odd if not o.accepted}
    assert "meeting" in reasons["null_meeting"] and "date" in reasons["bad_date"] and "'TBD'" in reasons["tbd_date"]
    assert "page" in reasons["page_not_number"] and "'abc'" in reasons["page_not_number"]
    nul_id = next(o.id for o in odd if o.reason == "nul_in_id")
    assert "NUL" in reasons["nul_in_id"] and storable_id(nul_id) == nul_id.replace("\x00", "\\u0000")
    assert all(r["raw"] for r in rejected.values())
    local_ids = {p["upstream_id"] for p in store.iter_pages(municipality, "minutes")}
    assert {o.id for o in odd if o.accepted} <= local_ids  # URL-special ids, NULs, empty and NULL text
    assert_equals_upstream(store, replica_root, municipality, "minutes")
    assert sum(ODD_ROW_REASONS.values()) == len([o for o in odd if o.accepted])


def test_changed_pages_replace_old_ones_and_vanished_pages_are_removed(client, store, replica_root, municipality):
    sync_partition(client, store, municipality, "agenda", batch_size=100)
    reocr = reocr_pages(replica_db(replica_root, municipality), "agenda", 12, seed=1)
    deleted = delete_documents(replica_db(replica_root, municipality), "agenda", 2, seed=1)
    result = sync_partition(client, store, municipality, "agenda", batch_size=100)
    assert result.updated == len(set(reocr.added) - set(deleted.removed))
    assert result.deleted == len(deleted.removed)  # whole documents gone, whatever their pages' ids
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_backfill_converges_exactly_with_20_percent_of_requests_failing(client_settings, store, replica, replica_root, municipality):
    replica.set_faults(rate=0.2, seed=7, slow_seconds=3.0, retry_after=0)
    with CivicBandClient(client_settings) as client:
        for document_type in DOCUMENT_TYPES:
            attempts = 0
            while True:  # a run that still fails after its retries is resumed, as Dagster's run retries do
                attempts += 1
                try:
                    sync_partition(client, store, municipality, document_type, batch_size=25)
                    break
                except Exception:
                    assert attempts < 10, "did not converge"
            assert_equals_upstream(store, replica_root, municipality, document_type)
    stats = replica.fault_stats()
    assert stats["faults_total"] >= 5 and len(stats["faults"]) >= 4, stats["faults"]


class _BreakUpstreamAfter:
    """A log that turns the proxy's 500s on once `batches` batches have landed."""

    def __init__(self, replica, batches: int):
        self.replica, self.batches, self.seen = replica, batches, 0

    def info(self, message, *args):
        if message.startswith("%s/%s: batch"):
            self.seen += 1
            if self.seen == self.batches:
                self.replica.set_faults(rate=1.0, kinds=["error_500"])


def test_a_failed_sync_resumes_at_its_saved_cursor(client, store, replica, replica_root, municipality):
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    with pytest.raises(Exception, match="HTTP 500"):
        sync_partition(client, store, municipality, "agenda", batch_size=20, log=_BreakUpstreamAfter(replica, 3))
    job = store.job(municipality, "agenda")
    assert job["status"] == "failed" and "HTTP 500" in job["last_error"]
    assert job["last_cursor"] and job["pages_fetched"] == store.count_pages(municipality, "agenda") + job["rejected_count"]
    saved = job["pages_fetched"]
    assert saved >= 60  # at least the 3 batches before the fault (a prefetched page may have landed too)

    replica.clear_faults()
    resumed = sync_partition(client, store, municipality, "agenda", batch_size=20)
    assert resumed.resumed_from == job["last_cursor"]
    assert resumed.fetched == total - saved
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_restart_ignores_the_saved_cursor(client, store, replica, replica_root, municipality):
    with pytest.raises(Exception):
        sync_partition(client, store, municipality, "agenda", batch_size=20, log=_BreakUpstreamAfter(replica, 2))
    replica.clear_faults()
    result = sync_partition(client, store, municipality, "agenda", batch_size=20, restart=True)
    assert result.resumed_from is None
    assert result.fetched == len(upstream_rows(replica_root, municipality, "agenda"))
    assert_equals_upstream(store, replica_root, municipality, "agenda")


@pytest.mark.parametrize("retry_of, resumes", [("restart-run", True), ("another-run", False), (None, False)])
def test_a_retry_of_a_restart_resumes_the_sync_the_restart_began(client, store, replica, replica_root, municipality, retry_of, resumes):
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    sync_partition(client, store, municipality, "agenda", batch_size=20)
    with pytest.raises(Exception, match="HTTP 500"):
        sync_partition(client, store, municipality, "agenda", batch_size=20, restart=True, run_id="restart-run",
                       log=_BreakUpstreamAfter(replica, 2))
    broken = store.job(municipality, "agenda")
    replica.clear_faults()
    # Dagster retries a run with its run config, so the retry asks for a restart too.
    retry = sync_partition(client, store, municipality, "agenda", batch_size=20, restart=True, run_id="retry", retry_of=retry_of)
    assert (retry.resumed_from, retry.generation) == ((broken["last_cursor"], 2) if resumes else (None, 3))
    assert retry.fetched == (total - broken["pages_fetched"] if resumes else total)
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_an_incremental_sync_that_cannot_count_upstream_fails_with_the_error(client, store, replica, municipality):
    sync_partition(client, store, municipality, "agenda", batch_size=20)
    # An incremental sync first counts upstream (to size its ranges of ids), before any page.
    replica.set_faults(rate=1.0, kinds=["error_500"])
    with pytest.raises(Exception, match="HTTP 500"):
        sync_partition(client, store, municipality, "agenda", batch_size=20, mode="incremental")
    job = store.job(municipality, "agenda")
    assert job["status"] == "failed" and "HTTP 500" in job["last_error"]


def _page_sizes(replica, subdomain: str) -> list[int]:
    """The `_size` of every table page the replica was asked for, for this municipality."""
    pages = [p for p in replica.fault_stats()["table_page_requests"] if p.get("subdomain") == subdomain]
    return [int(urllib.parse.parse_qs(p["query"])["_size"][0]) for p in pages]


class _CountingLog:
    def __init__(self):
        self.batches = 0

    def info(self, message, *args):
        self.batches += message.startswith("%s/%s: batch")


def test_a_batch_above_1000_rows_is_fetched_in_even_pages_and_committed_once(client, store, replica, replica_root):
    big = make_municipality(replica_root, documents=250, pages=(10, 10))  # 2,500 pages a type
    log = _CountingLog()
    result = sync_partition(client, store, big, "agenda", batch_size=1500, log=log)
    assert (result.status, result.fetched, result.batches, log.batches) == ("completed", 2500, 2, 2)
    assert set(_page_sizes(replica, big)) == {750}, "1,500 rows a commit = 2 requests of 750 (civic.band's limit is 1,000)"
    assert_equals_upstream(store, replica_root, big, "agenda")
    job = store.job(big, "agenda")
    assert (job["status"], job["pages_fetched"], job["pages_created"]) == ("completed", 2500, 2500)


def test_a_fetch_failing_inside_a_batch_commits_the_pages_before_it(client, store, replica, replica_root):
    big = make_municipality(replica_root, documents=250, pages=(10, 10))

    def break_after_first_page(response):  # the proxy fails every request after the first page
        if "/meetings/agendas.json" in str(response.request.url):
            replica.set_faults(rate=1.0, kinds=["error_500"])

    client._http.event_hooks["response"].append(break_after_first_page)
    with pytest.raises(Exception, match="HTTP 500"):
        sync_partition(client, store, big, "agenda", batch_size=3000)
    job = store.job(big, "agenda")
    assert job["status"] == "failed" and job["last_cursor"], "the first page was committed with its cursor"
    assert job["pages_fetched"] == 1000 == store.count_pages(big, "agenda")

    client._http.event_hooks["response"].clear()
    replica.clear_faults()
    resumed = sync_partition(client, store, big, "agenda", batch_size=3000)
    assert (resumed.resumed_from, resumed.fetched) == (job["last_cursor"], 1500)
    assert_equals_upstream(store, replica_root, big, "agenda")


@pytest.mark.parametrize("kind", BROKEN_BODIES)
def test_a_broken_page_fails_the_sync_and_removes_nothing(client, store, replica, replica_root, municipality, kind):
    """Taken for good pages, a page without `next` would end the sync there (and it would remove every
    page after it), rows that are not objects would all be rejected (and their pages removed), and a
    `next` that does not move on would fetch the same page for ever."""
    assert sync_partition(client, store, municipality, "agenda", batch_size=20).status == "completed"
    synced = store.count_pages(municipality, "agenda")
    replica.set_faults(rate=1.0, kinds=[kind], path_contains="/meetings/agendas")
    with pytest.raises((TransientError, httpx.DecodingError)):
        sync_partition(client, store, municipality, "agenda", batch_size=20, restart=True)
    assert store.job(municipality, "agenda")["status"] == "failed"
    assert store.count_pages(municipality, "agenda") == synced
    replica.clear_faults()
    sync_partition(client, store, municipality, "agenda", batch_size=20)
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_rows_without_an_id_that_end_a_page_fail_the_sync_and_remove_nothing(client, store, replica_root):
    """Datasette pages on after the last row's id: after a NULL one its `next` is "None" (`id > 'None'`
    skips every id starting with a digit), after an empty one there is none (the page looks last). Both
    would let a full sync complete without the rows after them, and remove them locally."""
    import sqlite3

    municipality = make_municipality(replica_root, documents=10, pages=(3, 3), text_chars=100)
    with sqlite3.connect(replica_db(replica_root, municipality)) as conn:  # ids sort NULL, NULL, "", hex...
        conn.executemany("INSERT INTO agendas (id, meeting, date, page, text) VALUES (?, 'No Id', '2024-05-01', ?, 'x')",
                         [(None, 1), (None, 2), ("", 3)])
    assert sync_partition(client, store, municipality, "agenda").status == "completed"  # they fit in one page
    synced = store.count_pages(municipality, "agenda")
    for batch_size in (2, 3):  # the first page ends in a NULL id, then in the empty one
        with pytest.raises(UpstreamError, match="ends in a row without an id"):
            sync_partition(client, store, municipality, "agenda", batch_size=batch_size, restart=True)
        job = store.job(municipality, "agenda")
        assert job["status"] == "failed" and "pages of its batch size" in job["last_error"]
        assert store.count_pages(municipality, "agenda") == synced


def test_an_empty_id_that_ends_a_page_capped_by_civic_band_fails_the_sync_too(client_settings, store, replica_root):
    """Without the service secret civic.band returns 100 rows for any `_size`: that page is full too."""
    import dataclasses
    import sqlite3

    municipality = make_municipality(replica_root, documents=10, pages=(3, 3), text_chars=100)
    with sqlite3.connect(replica_db(replica_root, municipality)) as conn:
        conn.executemany("INSERT INTO agendas (id, meeting, date, page, text) VALUES (?, 'No Id', '2024-05-01', ?, 'x')",
                         [(None, page) for page in range(1, 100)] + [("", 100)])
    with running_replica(replica_root, proxy=False, service_secret="s3cret") as guarded:
        anonymous = dataclasses.replace(client_settings, base_url=guarded.base_url_template, service_secret=None)
        with CivicBandClient(anonymous) as client, pytest.raises(UpstreamError, match="100 without CIVICBAND_SERVICE_SECRET"):
            sync_partition(client, store, municipality, "agenda")
    assert store.count_pages(municipality, "agenda") == 0 and store.job(municipality, "agenda")["status"] == "failed"


def test_batch_size_is_bounded(client, store, municipality):
    for size in (0, 10_001):
        with pytest.raises(ValueError, match="between 1 and 10000"):
            sync_partition(client, store, municipality, "agenda", batch_size=size)
    assert store.job(municipality, "agenda") is None, "nothing started"


@pytest.mark.parametrize("depth", [None, 7])
def test_prefetch_runs_a_bounded_way_ahead_and_stops_when_closed(client, replica, municipality, depth):
    def requested() -> int:  # table pages of this municipality the replica was asked for
        return sum(p.get("subdomain") == municipality for p in replica.fault_stats()["table_page_requests"])

    before = set(threading.enumerate())
    pages = prefetched_pages(client, municipality, "agenda", 10, **({"depth": depth} if depth else {}))
    assert next(pages).next_cursor, "the partition has many pages of 10"
    (thread,) = set(threading.enumerate()) - before
    # The consumer holds page 1: the thread fills the queue, fetches one more page and waits with it.
    ahead = 2 + (depth or PREFETCH_PAGES)
    wait_until(lambda: requested() == ahead, timeout=30, what="the prefetch to run ahead")
    pages.close()
    thread.join(timeout=10)
    assert not thread.is_alive(), "closing the pages stops the prefetch thread"
    assert requested() == ahead, "no page fetched after the consumer left"


class _HoldAfterFirstBatch:
    """A log that, once the first batch has landed, holds the sync until `condition()` holds."""

    def __init__(self, condition):
        self.condition, self.held = condition, False

    def info(self, message, *args):
        if message.startswith("%s/%s: batch") and not self.held:
            self.held = True
            wait_until(self.condition, timeout=30, what="the prefetch to run a batch ahead")


def test_the_fetch_runs_a_whole_batch_ahead_of_the_writes(client, store, replica, replica_root):
    big = make_municipality(replica_root, documents=1500, pages=(10, 10), text_chars=200)  # 15 pages of 1000
    requested = lambda: len(_page_sizes(replica, big))  # noqa: E731
    # While batch 1 (5 pages) is held, the thread fetches batch 2 (5 pages) and one more, and waits
    # with it: with only PREFETCH_PAGES of room it would stop 2 pages short.
    log = _HoldAfterFirstBatch(lambda: requested() == 5 + 5 + 1)
    result = sync_partition(client, store, big, "agenda", batch_size=5000, log=log)
    assert log.held and (result.status, result.batches) == ("completed", 3)
    assert_equals_upstream(store, replica_root, big, "agenda")


def test_the_default_batch_is_the_stores(client, store, replica, replica_root):
    big = make_municipality(replica_root, documents=1100, pages=(10, 10), text_chars=200)
    result = sync_partition(client, store, big, "agenda")
    expected = {"sqlite": 4000, "postgresql": 1000}[store.engine.dialect.name]
    assert store.batch_size == expected
    assert result.batches == -(-11_000 // expected) and set(_page_sizes(replica, big)) == {1000}
    assert_equals_upstream(store, replica_root, big, "agenda")
