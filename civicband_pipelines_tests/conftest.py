"""Shared fixtures: a real Datasette replica (with its fault proxy), real stores (SQLite, PostgreSQL) and an
ephemeral Dagster instance with the project's resources."""

import contextlib
import datetime as dt
import itertools
import os
import threading
import time
import warnings

import dagster as dg
import pytest
import sqlalchemy as sa

from civicband_pipelines.client import CivicBandClient
from civicband_pipelines.config import ClientSettings
from civicband_pipelines.definitions import defs
from civicband_pipelines.partitions import partition_tags
from civicband_pipelines.replica.generate import build_municipality
from civicband_pipelines.resources import CivicBandResource, MeetingStoreResource
from civicband_pipelines.schema import sync_waits
from civicband_pipelines.store import MeetingStore

from .dagster_stack import running_stack
from .pg_server import PostgresUnavailable, create_database, running_postgres
from .replica_process import running_replica

warnings.filterwarnings("ignore", category=DeprecationWarning)

_names = itertools.count(1)


@pytest.fixture(scope="session")
def replica_root(tmp_path_factory):
    return tmp_path_factory.mktemp("replica")


@pytest.fixture(scope="session")
def replica(replica_root):
    """One replica server (Datasette behind the fault proxy) for the whole session."""
    with running_replica(replica_root, proxy=True) as running:
        yield running


@pytest.fixture(autouse=True)
def _transparent_proxy(request):
    """Every test starts with a proxy that misbehaves only when the test says so."""
    yield
    if "replica" in request.fixturenames:
        request.getfixturevalue("replica").clear_faults()


@pytest.fixture
def municipality(replica, replica_root):
    """A municipality of its own for this test (tests mutate upstream): ~300 pages per type + odd rows."""
    return make_municipality(replica_root, documents=40, pages=(3, 12), odd_rows=True)


def record_dead_wait(store: MeetingStore, run_id: str) -> None:
    """A wait for alameda.ca/minutes whose process died long ago: its heartbeat is years stale."""
    with store.writer.begin() as conn:
        conn.execute(sync_waits.insert().values(holder="h", municipality="alameda.ca", document_type="minutes", run_id=run_id,
                                                host="x", pid=1, heartbeat_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)))


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll `condition` until it is true (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def commit_held(engine: sa.Engine, thread_name: str):
    """The thread named `thread_name` pauses in its next commit on `engine` (its statements done) until
    the test lets it go. Yields (held, release) events; join that thread before the block ends."""
    held, release = threading.Event(), threading.Event()

    def hold(_conn):
        if threading.current_thread().name == thread_name:
            held.set()
            assert release.wait(60)

    sa.event.listen(engine, "commit", hold)
    try:
        yield held, release
    finally:
        release.set()
        sa.event.remove(engine, "commit", hold)


def wait_for_a_lock_wait(engine: sa.Engine, finished, what: str) -> None:
    """Until a session of the PostgreSQL server waits for a lock, or `finished()` (it did not wait)."""
    with engine.connect() as conn:
        wait_until(lambda: conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").scalar() or finished(), what=what)


def make_municipality(root, documents: int, pages: tuple[int, int], odd_rows: bool = False, **options) -> str:
    subdomain = f"town-{next(_names)}-{os.getpid()}.ca"
    build_municipality(root, subdomain, documents, pages, seed=len(subdomain), odd_rows=odd_rows, **options)
    return subdomain


@pytest.fixture
def client_settings(replica) -> ClientSettings:
    # Short timeout (the proxy's slow answers exceed it), fast backoff and no minute-long wait after a
    # 402 keep fault tests quick.
    return ClientSettings(base_url=replica.base_url_template, timeout=2.0, retries=3, backoff=0.01, rate_limit_wait=0.01)


@pytest.fixture
def client(client_settings):
    with CivicBandClient(client_settings) as client:
        yield client


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("CIVICBAND_HOME", str(tmp_path / "home"))
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def resources(client_settings, store_url):
    return {"civicband": CivicBandResource(base_url=client_settings.base_url, timeout=client_settings.timeout),
            "meeting_store": MeetingStoreResource(database_url=store_url)}


def run_job(name, instance, resources, municipality, document_type, run_config=None, tags=None):
    job = defs.resolve_job_def(name)
    return job.execute_in_process(
        instance=instance, resources=resources, run_config=run_config or {},
        tags=(tags or {}) | partition_tags(municipality, document_type), raise_on_error=False,
    )


@pytest.fixture(scope="session")
def postgres_server_url():
    try:
        server = running_postgres()
        url = server.__enter__()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    yield url
    server.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """Each store test runs on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meetings.db'}"
    return _production_like_database(request.getfixturevalue("postgres_server_url"))


def _production_like_database(server_url: str) -> str:
    """A database whose text sorts as in most production ones (en_US.UTF-8), not as bytes like the
    test server's default: the store must not depend on its database's collation."""
    return create_database(server_url, f"t_{next(_names)}_{os.getpid()}", icu_locale="en-US")


@pytest.fixture
def store(store_url):
    store = MeetingStore(store_url)
    yield store
    store.dispose()


@pytest.fixture
def postgres_store(postgres_server_url):
    """For what only PostgreSQL does."""
    store = MeetingStore(_production_like_database(postgres_server_url))
    yield store
    store.dispose()


@pytest.fixture(scope="session")
def dagster_stack(tmp_path_factory, replica):
    """A Dagster deployment (daemon, webserver, webhook receiver; SQLite store) shared by the
    end-to-end tests: starting one takes a while on two cores. Tests use municipalities of their own."""
    root = tmp_path_factory.mktemp("dagster_stack")
    with running_stack(root, replica, f"sqlite:///{root / 'meetings.db'}", webserver=True) as stack:
        yield stack
