"""Exact verification and convergence of full syncs, against the replica, on SQLite and PostgreSQL."""

import httpx
import pytest
import sqlalchemy as sa

from civicband_pipelines.replica.generate import add_documents, delete_documents, reocr_pages
from civicband_pipelines.schema import meeting_pages
from civicband_pipelines.sync import sync_partition
from civicband_pipelines.verify import verify_counts, verify_ids

from .conftest import make_municipality
from .upstream import assert_equals_upstream, replica_db, upstream_rows


def delete_local_pages(store, municipality: str, document_type: str, upstream_ids: list[str]) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.delete(meeting_pages).where(
            meeting_pages.c.municipality == municipality,
            meeting_pages.c.document_type == document_type,
            meeting_pages.c.upstream_id.in_(upstream_ids),
        ))


def test_a_partition_of_more_than_10001_pages_verifies_with_its_exact_count(client, store, replica, replica_root):
    municipality = make_municipality(replica_root, documents=1050, pages=(10, 10), text_chars=100)
    capped = httpx.get(replica.base_url_template.format(subdomain=municipality) + "/meetings/agendas.json",
                       params={"_extra": "count", "_size": 1}).json()["count"]
    assert capped == 10001  # why the count comes from SQL

    sync_partition(client, store, municipality, "agenda")
    result = verify_counts(client, store, municipality, "agenda")
    assert result.expected == len(upstream_rows(replica_root, municipality, "agenda")) == 10500
    assert (result.actual, result.missing, result.extra, result.passed) == (10500, 0, 0, True)


@pytest.mark.parametrize("column, value", [("page_image", "/_agendas/moved.png"), ("votes_json", '[{"yes": 5}]')])
def test_the_id_comparison_finds_a_page_changed_under_its_id(client, store, replica_root, column, value):
    """civic.band's id hashes the text, not the image, entities or votes: a change there keeps the id."""
    import sqlite3

    municipality = make_municipality(replica_root, documents=10, pages=(3, 3), text_chars=100)
    sync_partition(client, store, municipality, "agenda")
    with sqlite3.connect(replica_db(replica_root, municipality)) as conn:
        meeting, date = conn.execute(f"UPDATE agendas SET {column} = ? WHERE id = (SELECT min(id) FROM agendas)"
                                     " RETURNING meeting, date", (value,)).fetchone()
    assert verify_counts(client, store, municipality, "agenda").passed
    deep = verify_ids(client, store, municipality, "agenda")
    assert not deep.passed and deep.documents()["stale"] == [f"{meeting} {date} (1 missing, 1 extra)"]
    assert sync_partition(client, store, municipality, "agenda").updated == 1
    assert verify_ids(client, store, municipality, "agenda").passed


def test_after_deleting_k_local_pages_verify_reports_exactly_k_missing_and_names_documents(client, store, replica_root, municipality):
    sync_partition(client, store, municipality, "agenda")
    pages = sorted(store.iter_pages(municipality, "agenda"), key=lambda p: (p["meeting_name"], p["meeting_date"], p["page_number"]))
    victims = pages[:3] + pages[-2:]  # 5 pages from at least 2 documents
    delete_local_pages(store, municipality, "agenda", [p["upstream_id"] for p in victims])

    counted = verify_counts(client, store, municipality, "agenda")
    assert (counted.passed, counted.missing, counted.extra) == (False, 5, 0)
    deep = verify_ids(client, store, municipality, "agenda")
    assert (deep.passed, deep.missing, deep.extra) == (False, 5, 0)
    expected_docs = {}
    for page in victims:
        key = (page["meeting_name"], str(page["meeting_date"]))
        expected_docs[key] = expected_docs.get(key, 0) + 1
    assert dict(deep.missing_pages) == expected_docs
    names = deep.documents()
    assert names["stale"] == names["extra"] == []
    assert names["missing"] == [f"{m} {d} ({n} missing)" for (m, d), n in sorted(expected_docs.items())]


def test_one_full_sync_converges_after_reocr_deletions_and_additions(client, store, replica_root, municipality):
    sync_partition(client, store, municipality, "minutes", batch_size=50)
    db = replica_db(replica_root, municipality)
    reocr = reocr_pages(db, "minutes", 10, seed=3)
    gone = delete_documents(db, "minutes", 2, seed=3)
    added = add_documents(db, "minutes", 3, pages=4, seed=3, avoid=gone.documents)  # else "stale", not missing

    before = verify_ids(client, store, municipality, "minutes")
    assert not before.passed
    names = before.documents()
    named = {kind: {tuple(n.split(" (")[0].split(" ")) for n in names[kind]} for kind in names}
    assert set(gone.documents) <= named["extra"] and set(added.documents) <= named["missing"]
    assert names["stale"], "re-OCR'd documents show as stale"
    assert before.missing == len(set(reocr.added) - set(gone.removed)) + len(added.added)

    result = sync_partition(client, store, municipality, "minutes", batch_size=50)
    assert result.created == len(added.added) and result.deleted == len(gone.removed)
    assert_equals_upstream(store, replica_root, municipality, "minutes")
    after = verify_ids(client, store, municipality, "minutes")
    assert (after.passed, after.missing, after.extra) == (True, 0, 0)


@pytest.mark.parametrize("window_days", [180])
def test_incremental_sync_fetches_only_the_window_and_reconciles_it(client, store, replica, replica_root, window_days):
    import datetime as dt

    today = dt.date.today()
    municipality = make_municipality(
        replica_root, documents=200, pages=(5, 5), text_chars=100,
        start_date=today - dt.timedelta(days=6 * 365), end_date=today + dt.timedelta(days=30),
    )
    sync_partition(client, store, municipality, "agenda", batch_size=100)
    db = replica_db(replica_root, municipality)
    added = add_documents(db, "agenda", 4, pages=5, seed=9)  # within the last 30 days
    replica.reset_stats()

    result = sync_partition(client, store, municipality, "agenda", batch_size=100, mode="incremental", window_days=window_days)
    assert result.mode == "incremental" and result.created == len(added.added)
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    assert result.fetched < total / 2, (result.fetched, total)  # most documents are older than 180 days
    assert replica.fault_stats()["table_pages"] <= (total // 100 + 1) / 2
    assert_equals_upstream(store, replica_root, municipality, "agenda")
    assert store.job(municipality, "agenda")["mode"] == "incremental"


def test_incremental_sync_of_a_large_municipality_stays_within_upstreams_query_time_limit(tmp_path):
    """civic.band has no index on dates: a window with few rows makes one request scan the whole table,
    which Datasette stops at its time limit (3 s; here 40 ms for 60,000 short pages), on every retry.
    (Retries: 4, so that a ranged request a loaded machine slowed past the limit is tried again.)"""
    import datetime as dt
    import sqlite3

    from civicband_pipelines.client import CivicBandClient, TransientError
    from civicband_pipelines.config import ClientSettings
    from civicband_pipelines.replica.generate import build_municipality
    from civicband_pipelines.store import MeetingStore

    from .replica_process import running_replica

    old = dt.date(2004, 1, 1)
    db = build_municipality(tmp_path / "replica", "large.ca", 3000, (20, 20), text_chars=50,
                            start_date=dt.date(2000, 1, 1), end_date=old, today=old)
    with sqlite3.connect(db) as conn:  # rows without an id, in the window: in no range of ids
        conn.executemany("INSERT INTO agendas (id, meeting, date, page, text) VALUES (NULL, 'No Id', ?, ?, 'x')",
                         [(dt.date.today().isoformat(), page) for page in (1, 2)])
    with sqlite3.connect(db) as conn:  # upstream had 2,000 of them when the copy was made
        conn.execute("CREATE TABLE archive AS SELECT * FROM agendas WHERE rowid > 2000")
        conn.execute("DELETE FROM agendas WHERE rowid > 2000")
    store = MeetingStore(f"sqlite:///{tmp_path / 'meetings.db'}")
    with running_replica(tmp_path / "replica", proxy=False, sql_time_limit_ms=40) as replica:
        settings = ClientSettings(base_url=replica.base_url_template, retries=4, backoff=0.01, max_scan_rows=2000)
        with CivicBandClient(settings) as client:
            sync_partition(client, store, "large.ca", "agenda")
            with sqlite3.connect(db) as conn:  # ... then upstream loaded the rest, all older than the window
                conn.execute("INSERT INTO agendas SELECT * FROM archive")
                conn.execute("DROP TABLE archive")
            added = add_documents(db, "agenda", 3, pages=5, seed=3)
            window = {"date__gte": (dt.date.today() - dt.timedelta(days=180)).isoformat(), "date__lte": "9999-12-31"}
            with pytest.raises(TransientError, match="HTTP 500 .*: QueryInterrupted"):  # one unbounded scan
                client.fetch_page("large.ca", "agenda", 1000, None, filters=window)

            # The ranges are sized by upstream's count, not by the 2,000 pages here.
            result = sync_partition(client, store, "large.ca", "agenda", mode="incremental")
            assert result.mode == "incremental" and result.created == len(added.added) == 15
            assert len(store.rejected_ids("large.ca", "agenda")) == 0  # rows without an id: left to full syncs
            # Without a window nothing scans: paging needs no ranges.
            full = sync_partition(client, store, "large.ca", "agenda", restart=True)
            assert (full.unchanged, full.created) == (2015, 58_000)
            assert_equals_upstream(store, tmp_path / "replica", "large.ca", "agenda")
            assert len(store.rejected_ids("large.ca", "agenda")) == 2
            assert verify_counts(client, store, "large.ca", "agenda").passed
    store.dispose()


def test_incremental_sync_drops_the_rejections_of_its_window_that_upstream_fixed_or_removed(client, store, replica_root):
    import datetime as dt
    import sqlite3

    today = dt.date.today()
    municipality = make_municipality(replica_root, documents=20, pages=(3, 3), text_chars=100,
                                     start_date=today - dt.timedelta(days=60), end_date=today)
    odd = {  # id -> (meeting, date): page "abc" makes each a rejection
        "odd-fixed": ("Fixed Later", today.isoformat()), "odd-removed": ("Removed Later", today.isoformat()),
        "odd-old": ("Long Ago", "2001-01-01"), "odd-undated": ("Undated", "TBD"),
    }
    db = replica_db(replica_root, municipality)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO agendas (id, meeting, date, page, text) VALUES (?, ?, ?, 'abc', 'x')",
                         [(i, m, d) for i, (m, d) in odd.items()])
    sync_partition(client, store, municipality, "agenda")
    assert store.rejected_ids(municipality, "agenda") == set(odd)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE agendas SET page = 1 WHERE id = 'odd-fixed'")
        conn.execute("DELETE FROM agendas WHERE id = 'odd-removed'")

    sync_partition(client, store, municipality, "agenda", mode="incremental")
    assert store.rejected_ids(municipality, "agenda") == {"odd-old", "odd-undated"}  # outside the window: kept
    assert_equals_upstream(store, replica_root, municipality, "agenda")
    assert verify_counts(client, store, municipality, "agenda").passed


def test_a_page_upstream_has_twice_in_a_batch_is_kept_once_and_the_other_row_is_a_rejection(client, store, replica_root):
    import sqlite3

    municipality = make_municipality(replica_root, documents=10, pages=(3, 3), text_chars=100)
    db = replica_db(replica_root, municipality)
    with sqlite3.connect(db) as conn:  # the same meeting, date and page under another id
        conn.execute("INSERT INTO agendas (id, meeting, date, page, text) SELECT id || '-twin', meeting, date, page, 'twin'"
                     " FROM agendas ORDER BY id LIMIT 1")
    result = sync_partition(client, store, municipality, "agenda")  # one batch
    assert result.rejected == 1 and len(store.rejected_ids(municipality, "agenda")) == 1
    assert verify_counts(client, store, municipality, "agenda").passed
    assert verify_ids(client, store, municipality, "agenda").passed


def test_rows_without_an_id_are_each_rejected_once_and_the_checks_add_them_up(client, store, replica_root):
    """SQLite lets a TEXT primary key be NULL (or empty), in several rows."""
    import sqlite3

    municipality = make_municipality(replica_root, documents=10, pages=(3, 3), text_chars=100)
    with sqlite3.connect(replica_db(replica_root, municipality)) as conn:
        conn.executemany("INSERT INTO agendas (id, meeting, date, page, text) VALUES (?, 'No Id', '2024-05-01', ?, 'x')",
                         [(None, 1), (None, 2), ("", 3)])
    for restart in (False, True):  # the same rows keep the same keys
        result = sync_partition(client, store, municipality, "agenda", restart=restart)
        assert result.rejected == 3
        assert {i for i in store.rejected_ids(municipality, "agenda") if i.startswith("(no id)")} == {
            f'(no id) ["No Id", "2024-05-01", {page}]' for page in (1, 2, 3)
        }
        assert verify_counts(client, store, municipality, "agenda").passed
        assert verify_ids(client, store, municipality, "agenda").passed


def test_a_never_synced_partition_names_its_missing_documents_even_without_a_meeting(client, store, municipality):
    result = verify_ids(client, store, municipality, "agenda")  # the odd rows include a NULL meeting
    assert not result.passed and "None 2021-06-16 (1 missing)" in result.documents()["missing"]


def test_two_rows_without_an_id_at_one_place_share_a_rejection_and_the_deep_check_names_the_other(client, store, replica_root):
    import sqlite3

    municipality = make_municipality(replica_root, documents=5, pages=(3, 3), text_chars=100)
    with sqlite3.connect(replica_db(replica_root, municipality)) as conn:
        conn.executemany("INSERT INTO agendas (id, meeting, date, page, text) VALUES (?, 'No Id', '2024-05-01', 1, ?)",
                         [(None, "one"), ("", "two")])
    sync_partition(client, store, municipality, "agenda")
    assert not verify_counts(client, store, municipality, "agenda").passed
    assert verify_ids(client, store, municipality, "agenda").documents()["missing"] == ["No Id 2024-05-01 (1 missing)"]


def test_incremental_on_a_never_synced_partition_becomes_a_full_sync(client, store, replica_root, municipality):
    result = sync_partition(client, store, municipality, "agenda", mode="incremental")
    assert result.mode == "full"
    assert store.job(municipality, "agenda")["full_synced_at"] is not None
    assert_equals_upstream(store, replica_root, municipality, "agenda")


def test_time_budget_pauses_at_a_checkpoint_and_the_next_run_continues(client, store, replica_root, municipality):
    total = len(upstream_rows(replica_root, municipality, "agenda"))
    first = sync_partition(client, store, municipality, "agenda", batch_size=10, time_budget=0.0)
    assert first.status == "paused" and first.batches == 1
    job = store.job(municipality, "agenda")
    assert job["status"] == "paused" and job["last_error"].startswith("time budget") and job["last_cursor"]
    rest = sync_partition(client, store, municipality, "agenda", batch_size=10)
    assert rest.resumed_from == job["last_cursor"] and rest.fetched == total - 10
    assert_equals_upstream(store, replica_root, municipality, "agenda")
