"""Batch writes of the store, on SQLite and PostgreSQL: what goes in comes back byte for byte, and
every batch says exactly what it created, updated and left unchanged."""

import json
import threading

import pytest
import sqlalchemy as sa

from civicband_pipelines.page_writes import COLUMNS, write_pages
from civicband_pipelines.rows import PageRecord, parse_rows
from civicband_pipelines.schema import backfill_jobs
from civicband_pipelines.store import MeetingStore, utcnow

from .conftest import commit_held, wait_for_a_lock_wait

M, D = "oakland.ca", "agenda"

TRICKY_TEXTS = [
    "back\\slash \\N \\t literally", "tab\there", "new\nline", "carriage\r\nreturn", "\\", "\\N",
    "", None, "ünïcødé ✓ 🏛️", "quote ' and \" and , ; |", "x" * 20_000 + "\nend",
]


def page(n: int, text: str | None = "text", upstream_id: str | None = None, **fields) -> PageRecord:
    return PageRecord(upstream_id or f"id-{n}", "CityCouncil", "2024-01-15", n, text, f"/p/{n}.png", None, "[]")._replace(**fields)


def write(store, records, next_cursor=None):
    start = store.start_sync(M, D, restart=True, run_id=None)
    return store.write_batch(M, D, start, records, [], next_cursor)


def local(store) -> dict[int, tuple]:
    return {p["page_number"]: tuple(p[name] for name in PageRecord._fields) for p in store.iter_pages(M, D)}


def test_every_character_round_trips_exactly(store):
    records = [page(n, text, page_image=text, entities_json=text) for n, text in enumerate(TRICKY_TEXTS, start=1)]
    write(store, records)
    stored = local(store)
    for record in records:
        assert stored[record.page_number] == record._replace(meeting_date=stored[record.page_number][2]), record.text
        assert str(stored[record.page_number][2]) == record.meeting_date


def test_a_batch_reports_created_updated_and_unchanged_exactly(store):
    counts = write(store, [page(1), page(2), page(3)], next_cursor="c1")
    assert (counts.created, counts.updated, counts.unchanged) == (3, 0, 0)
    before = {p["page_number"]: p["updated_at"] for p in store.iter_pages(M, D)}

    counts = write(store, [page(1), page(2, "re-OCR'd", upstream_id="id-2b"), page(3, votes_json='["yes"]'), page(4)])
    assert (counts.created, counts.updated, counts.unchanged) == (1, 2, 1)
    after = {p["page_number"]: p for p in store.iter_pages(M, D)}
    assert after[1]["updated_at"] == before[1], "an unchanged page keeps its updated_at"
    assert after[2]["updated_at"] > before[2] and after[2]["text"] == "re-OCR'd" and after[2]["upstream_id"] == "id-2b"
    assert after[3]["votes_json"] == '["yes"]'


def test_the_stored_text_is_upstreams_even_when_the_id_did_not_change(store):
    write(store, [page(1, "first OCR")])
    write(store, [page(1, "second OCR")])  # counted unchanged (ids hash the text upstream), but stored
    assert local(store)[1][4] == "second OCR"


def test_the_later_of_two_rows_with_one_key_wins_and_the_earlier_is_kept_as_a_rejection(store):
    counts = write(store, [page(1, "first", upstream_id="a"), page(2), page(1, "second", upstream_id="b")])
    assert (counts.created, counts.updated, counts.unchanged, counts.rejected) == (2, 0, 0, 1)
    assert local(store)[1][4] == "second"
    (rejection,) = store.rejections(M, D)
    assert rejection["upstream_id"] == "a" and rejection["reason"] == "duplicate page: same meeting, date and page as id 'b'"
    assert (json.loads(rejection["raw"])["id"], json.loads(rejection["raw"])["text"]) == ("a", "first")
    job = store.job(M, D)
    assert (job["pages_fetched"], job["rejected_count"]) == (3, 1)  # every row is a page or a rejection


def test_a_first_sync_is_fresh_and_a_page_met_twice_in_it_is_updated(store):
    start = store.start_sync(M, D, restart=True, run_id=None)
    assert start.fresh, "no pages yet: batches may go straight into the table (COPY on PostgreSQL)"
    assert store.write_batch(M, D, start, [page(1, "v1", "a"), page(2)], [], "c1").created == 2
    # Upstream was rebuilt meanwhile: page 1 shows up again, re-OCR'd, further on.
    counts = store.write_batch(M, D, start, [page(1, "v2", "b"), page(3)], [], None)
    assert (counts.created, counts.updated, counts.unchanged, counts.deleted) == (1, 1, 0, 0)
    assert local(store)[1][:5] == ("b", "CityCouncil", local(store)[1][2], 1, "v2") and len(local(store)) == 3
    assert store.job(M, D)["actual_count"] == 3

    resync = store.start_sync(M, D, restart=True, run_id=None)
    assert not resync.fresh, "the pages of the first sync are there to be merged with, or removed"
    assert store.write_batch(M, D, resync, [page(2)], [], None).deleted == 2


def reset_job_table(store) -> None:
    with store.writer.begin() as conn:
        conn.execute(backfill_jobs.delete())


@pytest.mark.parametrize("job_row_from", ["sync", "verification"])
def test_a_sync_after_its_job_row_is_gone_still_removes_stale_pages(store, job_row_from):
    first = store.start_sync(M, D, restart=True, run_id=None)
    store.write_batch(M, D, first, [page(1), page(2), page(3)], [], None)
    reset_job_table(store)
    if job_row_from == "verification":  # the check runs first and writes a new job row
        store.record_verification(M, D, expected=1, actual=3, passed=False, at=utcnow())
    again = store.start_sync(M, D, restart=True, run_id=None)
    assert again.generation > first.generation and not again.fresh
    assert store.write_batch(M, D, again, [page(1)], [], None).deleted == 2


def test_a_sync_after_its_job_row_is_gone_still_removes_stale_rejections(store):
    first = store.start_sync(M, D, restart=True, run_id=None)
    _, rejections = parse_rows([{"id": "bad-1", "meeting": None, "date": "2024-01-15", "page": 1}])
    store.write_batch(M, D, first, [], rejections, "c1")  # then the run dies, and the job table is reset
    reset_job_table(store)
    again = store.start_sync(M, D, restart=True, run_id=None)
    assert again.generation > first.generation
    store.write_batch(M, D, again, [page(1)], [], None)  # upstream fixed that row meanwhile
    assert store.rejections(M, D) == []


def test_a_resumed_first_sync_is_still_fresh(store):
    start = store.start_sync(M, D, restart=True, run_id=None)
    store.write_batch(M, D, start, [page(1)], [], "c1")
    store.stop_sync(M, D, start, "failed", "boom")
    resumed = store.start_sync(M, D, restart=False, run_id=None)
    assert resumed.resumed and resumed.fresh and resumed.generation == start.generation
    store.write_batch(M, D, resumed, [page(2), page(3)], [], None)
    assert store.job(M, D)["actual_count"] == 3 == len(local(store)), "the runs' pages counted once each"


def test_ids_and_text_no_store_can_hold_are_escaped_or_replaced_and_the_batch_lands(store):
    rows = [
        {"id": "nul\x00id", "meeting": "CityCouncil", "date": "2024-01-15", "page": 1},
        {"id": "lone\ud800", "meeting": "CityCouncil", "date": "2024-01-15", "page": 2},
        {"id": "ok", "meeting": "CityCouncil", "date": "2024-01-15", "page": 3, "text": "half \udc00 pair", "votes_json": "[\"\ud83d\"]"},
    ]
    records, rejections = parse_rows(rows)
    start = store.start_sync(M, D, restart=True, run_id=None)
    counts = store.write_batch(M, D, start, records, rejections, None)
    assert (counts.created, counts.rejected) == (1, 2)
    assert {r["upstream_id"] for r in store.rejections(M, D)} == {"nul\\u0000id", "lone\\ud800"}
    stored = local(store)[3]
    assert stored[4] == "half \ufffd pair" and stored[7] == "[\"\ufffd\"]"


def test_postgresql_copies_a_fresh_batch_straight_into_the_table_and_merges_otherwise(postgres_store):
    store = postgres_store
    staged = "SELECT to_regclass('pg_temp.staged_pages') IS NOT NULL"
    with store.writer.begin() as conn:
        assert write_pages(conn, M, D, 1, [page(1), page(2)], direct=True, now=utcnow()) == (2, 0, 0, False)
        assert not conn.exec_driver_sql(staged).scalar(), "COPYed into meeting_pages directly"
        assert write_pages(conn, M, D, 1, [page(2, "new", "id-2b"), page(3)], direct=True, now=utcnow()) == (1, 1, 0, True)
        assert conn.exec_driver_sql(staged).scalar(), "page 2 exists: the batch went through the merge"
        assert write_pages(conn, M, D, 1, [page(4)], direct=False, now=utcnow()) == (1, 0, 0, False), \
            "a second merge in one transaction sees only its own batch"
    assert local(store)[2][4] == "new" and len(local(store)) == 4


def test_a_first_backfill_that_met_an_existing_page_merges_from_then_on(postgres_store):
    store = postgres_store
    start = store.start_sync(M, D, restart=True, run_id=None)
    store.write_batch(M, D, start, [page(1)], [], "c1")
    assert store.write_batch(M, D, start, [page(1, "v2", "b"), page(2)], [], "c2").updated == 1
    assert (M, D, start.generation) in store._merging, "no more COPYs bound to roll back"
    assert store.write_batch(M, D, start, [page(3)], [], None).created == 1 and len(local(store)) == 3
    assert store.job(M, D)["actual_count"] == 3


def test_the_binary_copy_matches_the_live_postgresql_columns(postgres_store):
    """page_writes encodes each column in COPY's binary format for one type: a migration that
    changed a type would break every write, so a change here must change the encoders too."""
    encoded_as = {name: "text" for name in COLUMNS} | {
        "municipality": "varchar", "document_type": "varchar", "upstream_id": "varchar", "meeting_date": "date",
        "page_number": "int4", "sync_generation": "int4", "created_at": "timestamptz", "updated_at": "timestamptz",
    }
    query = "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = 'meeting_pages'"
    with postgres_store.engine.connect() as conn:
        live = dict(conn.exec_driver_sql(query).all())
    assert {name: live[name] for name in COLUMNS} == encoded_as


def test_sqlite_writers_cache_a_big_partitions_page_key_index_and_readers_less(tmp_path):
    from civicband_pipelines.store import MeetingStore

    store = MeetingStore(f"sqlite:///{tmp_path / 'meetings.db'}")
    try:
        cache_kib = lambda connection: -connection.exec_driver_sql("PRAGMA cache_size").scalar()  # noqa: E731
        with store.engine.connect() as conn:  # one pooled connection, used both ways
            assert cache_kib(conn) == 16_384
        with store.writer.begin() as conn:
            assert cache_kib(conn) == 65_536
        with store.engine.connect() as conn:
            assert cache_kib(conn) == 16_384, "a reader gives the writer's cache back"
    finally:
        store.dispose()


def test_postgresql_commits_webhook_events_in_id_order_so_the_sensor_cursor_skips_none(postgres_store):
    """Ids come from a sequence at INSERT, not at commit: were a later event's id committed while an
    earlier one's transaction was still open, the sensor would move its cursor past the earlier one."""
    store = postgres_store
    ids: dict[str, int] = {}

    def record(subdomain):
        ids[subdomain] = store.record_webhook(subdomain, {"pages": 1})[2]

    first = threading.Thread(target=record, args=("first.ca",), name="first")
    second = threading.Thread(target=record, args=("second.ca",), name="second")
    with commit_held(store.engine, "first") as (held, release):  # the first request pauses before its commit
        try:
            first.start()
            assert held.wait(60), "the first event was inserted and its transaction is open"
            second.start()
            wait_for_a_lock_wait(store.engine, lambda: not second.is_alive(), "the second request to wait on a lock or finish")
            assert second.is_alive(), "the second event waits for the first's commit"
            assert store.webhook_events_after(0) == [], "nothing is visible while the first is uncommitted"
        finally:
            release.set()
            first.join(60)
            second.join(60)
    assert ids["first.ca"] < ids["second.ca"]
    assert [e["id"] for e in store.webhook_events_after(0)] == [ids["first.ca"], ids["second.ca"]]


def test_latest_changes_name_each_municipality_s_latest_changed_event(store):
    record = lambda subdomain, pages: store.record_webhook(subdomain, {"pages": pages})[2]  # noqa: E731
    record("oakland.ca", 1)  # new: changed
    second = record("oakland.ca", 2)
    record("oakland.ca", 2)  # a replay: not changed
    only = record("berkeley.ca", 5)
    record("berkeley.ca", 5)
    latest = store.latest_changes()
    assert sorted(latest) == ["berkeley.ca", "oakland.ca"]
    assert (latest["oakland.ca"][0], latest["berkeley.ca"][0]) == (second, only)
    (received,) = [e["received_at"] for e in store.webhook_events_after(0) if e["id"] == second]
    assert latest["oakland.ca"][1] == received


def test_page_ids_come_in_byte_order_in_short_reads_that_hold_no_transaction_open(store):
    ids = ["b", "a", "é", "Z", "a", "ä", "0", "b", "~"]  # repeats across chunk boundaries, non-ASCII
    write(store, [page(n, upstream_id=upstream_id) for n, upstream_id in enumerate(ids, start=1)])
    pages = store.iter_page_ids(M, D, chunk_rows=2)
    first = [next(pages) for _ in range(3)]  # suspended inside the second chunk
    assert _no_read_held_open(store)
    rest = list(pages)
    assert [p[0] for p in first + rest] == sorted(ids, key=lambda i: i.encode())
    assert [p[0] for p in first + rest] == [p[0] for p in store.iter_page_ids(M, D)]  # one chunk: the same


def _no_read_held_open(store) -> bool:
    """PostgreSQL: no session idle in a transaction; SQLite: a truncating checkpoint finds no reader."""
    other = store.start_sync("other.ca", D, restart=True, run_id=None)
    store.write_batch("other.ca", D, other, [page(1)], [], "c1")  # something in SQLite's WAL to check point
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return not conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                            " AND state LIKE 'idle in transaction%'")).scalar()
        return conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()[0] == 0


def test_postgresql_connections_keep_idle_flows_alive_unless_the_url_says_otherwise(postgres_store):
    def options(store) -> dict:
        with store.engine.connect() as conn:
            return conn.connection.dbapi_connection.info.dsn_parameters

    assert options(postgres_store) | {"keepalives_idle": "60", "tcp_user_timeout": "120000"} == options(postgres_store)
    own = MeetingStore(postgres_store.engine.url.update_query_dict({"keepalives_idle": "30"}).render_as_string(False))
    try:
        assert options(own)["keepalives_idle"] == "30" and options(own)["keepalives_count"] == "6"
    finally:
        own.dispose()


def test_each_read_of_page_ids_starts_at_its_id_along_the_index_without_sorting_the_partition(store):
    """On PostgreSQL the id column sorts as bytes (COLLATE "C"): under the database's collation the
    index could not give byte order, and every read of 5000 sorted the whole partition."""
    write(store, [page(n, upstream_id=f"id-{n:03}") for n in range(1, 8)])
    reads = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "ORDER BY" in statement:
            reads.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        assert len(list(store.iter_page_ids(M, D, chunk_rows=3))) == 7
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert len(reads) == 3
    with store.engine.connect() as conn:
        plan = _query_plan(conn, *reads[-1])  # a later read: after the previous one's last id
    assert not plan["sorted"], plan
    assert "upstream_id" in plan["index_condition"], plan


def _query_plan(conn, statement: str, parameters) -> dict:
    """Whether the query sorts its rows, and the condition it looks up its index with."""
    if conn.dialect.name == "sqlite":
        steps = [detail for *_, detail in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
        (search,) = [step for step in steps if step.startswith("SEARCH")]
        return {"sorted": any("TEMP B-TREE" in step for step in steps), "index_condition": search, "steps": steps}
    conn.exec_driver_sql("SET enable_sort = off")  # a sort wins only if no index gives the order
    (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
    nodes = [plan["Plan"]]
    for node in nodes:
        nodes.extend(node.get("Plans", []))
    scans = [node for node in nodes if "Index Cond" in node]
    return {"sorted": any(node["Node Type"] == "Sort" for node in nodes),
            "index_condition": " ".join(node["Index Cond"] for node in scans), "nodes": nodes}
