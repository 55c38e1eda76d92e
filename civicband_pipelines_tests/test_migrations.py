"""Migrations of the meetings store, on SQLite and on a real PostgreSQL server."""

import multiprocessing
import threading
import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from civicband_pipelines.migrations import BASELINE, current_revision, head_revision, revisions, upgrade
from civicband_pipelines.schema import metadata

from . import pg_server

CONCURRENCY = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new, empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meetings.db'}"
        return
    server = request.getfixturevalue("postgres_server_url")  # conftest.py: one server per session
    url = pg_server.create_database(server, f"t_{uuid.uuid4().hex[:12]}")
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def engine(db_url):
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def schema_differences(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, metadata)


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def add_municipality(engine: sa.Engine, subdomain: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO municipalities (subdomain) VALUES (:s)"), {"s": subdomain})


def municipality_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM municipalities")).scalar_one()


def test_upgrade_creates_the_schema(db_url, engine):
    assert current_revision(engine) is None
    upgrade(db_url)
    assert current_revision(engine) == head_revision()
    assert table_names(engine) == set(metadata.tables) | {"alembic_version"}


def test_schema_matches_metadata(db_url, engine):
    upgrade(db_url)
    assert schema_differences(engine) == []


def test_second_upgrade_is_a_no_op(db_url, engine):
    upgrade(db_url)
    add_municipality(engine, "oakland.ca")
    upgrade(engine)  # an Engine works as well as a URL
    assert current_revision(engine) == head_revision()
    assert municipality_count(engine) == 1


def _upgrade_at_barrier(url: str, barrier) -> None:
    barrier.wait(timeout=30)
    upgrade(url)


def test_concurrent_upgrades_in_processes(db_url, engine):
    context = multiprocessing.get_context("fork")  # fast; each child opens its own connections
    barrier = context.Barrier(CONCURRENCY)
    workers = [context.Process(target=_upgrade_at_barrier, args=(db_url, barrier)) for _ in range(CONCURRENCY)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * CONCURRENCY
    assert current_revision(engine) == head_revision()
    assert schema_differences(engine) == []


def test_concurrent_upgrades_in_threads(db_url, engine):
    barrier = threading.Barrier(CONCURRENCY)
    errors = []

    def work():
        try:
            _upgrade_at_barrier(db_url, barrier)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert current_revision(engine) == head_revision()


@pytest.mark.parametrize("revision", revisions())
def test_database_at_any_revision_upgrades_in_place(db_url, engine, revision):
    upgrade(db_url, revision)
    add_municipality(engine, "oakland.ca")  # municipalities exists since the first revision
    upgrade(db_url)
    assert current_revision(engine) == head_revision()
    assert municipality_count(engine) == 1
    assert schema_differences(engine) == []


def test_unversioned_baseline_database_is_adopted(db_url, engine):
    # What `metadata.create_all` made before migrations: the baseline tables, no alembic_version.
    upgrade(db_url, BASELINE)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
    add_municipality(engine, "oakland.ca")
    upgrade(db_url)
    assert current_revision(engine) == head_revision()
    assert municipality_count(engine) == 1


def test_create_all_database_is_adopted_at_head(db_url, engine):
    metadata.create_all(engine)  # what MeetingStore did before migrations
    add_municipality(engine, "oakland.ca")
    upgrade(db_url)
    assert current_revision(engine) == head_revision()
    assert municipality_count(engine) == 1


def test_in_memory_sqlite_engine():
    engine = sa.create_engine("sqlite://")
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert schema_differences(engine) == []


def test_postgresql_page_text_is_compressed_with_lz4(postgres_server_url):
    db_url = pg_server.create_database(postgres_server_url, f"t_{uuid.uuid4().hex[:12]}")
    upgrade(db_url)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        lz4 = conn.exec_driver_sql("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'").scalar()
        method = conn.exec_driver_sql(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'meeting_pages'::regclass AND attname = 'text'"
        ).scalar()
    engine.dispose()
    pg_server.drop_database(db_url)
    assert lz4, "the test server (PostgreSQL 15 from Debian) is built with lz4"
    assert method == "l"


def test_postgresql_page_ids_sort_as_bytes_after_0007_whatever_the_database_s_collation(postgres_server_url):
    db_url = pg_server.create_database(postgres_server_url, f"t_{uuid.uuid4().hex[:12]}", icu_locale="en-US")
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    ids = ["b", "B", "a", "é", "~", "Z"]
    try:
        upgrade(db_url, "0006")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO meeting_pages (municipality, document_type, meeting_name, meeting_date, page_number,"
                " upstream_id, sync_generation) VALUES ('oakland.ca', 'agenda', 'CityCouncil', '2024-01-15', :n, :id, 1)"),
                [{"n": n, "id": upstream_id} for n, upstream_id in enumerate(ids)])
        assert _ids_in_order(engine) == ["~", "a", "b", "B", "é", "Z"], "en-US: by letter, then case"
        upgrade(db_url)
        assert _ids_in_order(engine) == sorted(ids, key=str.encode)
    finally:
        engine.dispose()
        pg_server.drop_database(db_url)


def _ids_in_order(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT upstream_id FROM meeting_pages ORDER BY upstream_id")).scalars().all()


def test_0008_gives_each_begun_sync_the_last_webhook_event_received_by_its_start(db_url, engine):
    upgrade(db_url, "0007")
    events = "INSERT INTO webhook_events (subdomain, action, changed, payload, received_at) VALUES ('oakland.ca', 'updated', :c, '{}', :t)"
    jobs = "INSERT INTO backfill_jobs (municipality, document_type, started_at) VALUES ('oakland.ca', :d, :t)"
    with engine.begin() as conn:
        conn.execute(sa.text(events), [{"c": True, "t": "2026-01-01 10:00:00"}, {"c": False, "t": "2026-01-01 12:00:00"}])
        conn.execute(sa.text(jobs), [{"d": "agenda", "t": "2026-01-01 11:00:00"}, {"d": "minutes", "t": None}])
        first_event = conn.execute(sa.text("SELECT min(id) FROM webhook_events")).scalar_one()
    upgrade(db_url)
    with engine.connect() as conn:
        started_after = dict(conn.execute(sa.text("SELECT document_type, started_after_event FROM backfill_jobs")).all())
    assert started_after == {"agenda": first_event, "minutes": None}
