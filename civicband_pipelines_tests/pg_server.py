"""Throwaway PostgreSQL servers for tests.

    with running_postgres() as url:   # postgresql+psycopg2://postgres@127.0.0.1:PORT/civicband_test
        other = create_database(url, "per_test_db")

- CIVICBAND_TEST_POSTGRES_URL=postgresql+psycopg2://user:pw@host:port/db uses that server instead:
  a fresh database is created on it (needs CREATEDB) and dropped afterwards.
- Binaries are looked up in CIVICBAND_PG_BIN, /usr/lib/postgresql/15/bin, then PATH.
- Without binaries: PostgresUnavailable (callers skip), or a RuntimeError when CI=true,
  so CI never silently skips the PostgreSQL tests.

A session-scoped pytest fixture (one server for the whole test session):

    @pytest.fixture(scope="session")
    def postgres_server_url():
        yield from pg_server.postgres_fixture()
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

ENV_URL = "CIVICBAND_TEST_POSTGRES_URL"
DEFAULT_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
SERVER_OPTIONS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
OS_USER = "postgres"  # initdb and postgres refuse to run as root
START_TIMEOUT = 30.0


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries here (outside CI): skip the PostgreSQL tests."""


@contextlib.contextmanager
def running_postgres(db_name: str = "civicband_test") -> Iterator[str]:
    """Yield the SQLAlchemy URL of a new, empty database on a throwaway (or the configured) server."""
    if os.environ.get(ENV_URL):
        url = create_database(os.environ[ENV_URL], f"{db_name}_{uuid.uuid4().hex[:8]}")
        try:
            yield url
        finally:
            drop_database(url)
        return
    server = start_postgres()
    try:
        yield create_database(server.admin_url, db_name)
    finally:
        server.stop()


def postgres_fixture(db_name: str = "civicband_test") -> Iterator[str]:
    """Body of a pytest fixture: the URL of running_postgres(), or a skip if there is no PostgreSQL."""
    import pytest  # here: the rest of this module works without pytest

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(running_postgres(db_name))
        except PostgresUnavailable as error:
            pytest.skip(str(error))
        yield url


class PostgresServer:
    """A postgres process on a free loopback port, with its data and socket in a temp dir."""

    def __init__(self, bin_dir: Path, root: Path, port: int, process: subprocess.Popen):
        self.bin_dir, self.root, self.port, self.process = bin_dir, root, port, process
        self.admin_url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                _run(self.bin_dir / "pg_ctl", "stop", "-D", str(self.root / "data"), "-m", "fast", "-w")
                self.process.wait(timeout=30)
        except BaseException:
            self.process.kill()  # never leave a server running on a deleted directory
            raise
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb a temp cluster and start it; the caller must call .stop()."""
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="civicband-pg-"))
    try:
        _chown_for_server(root)
        _run(bin_dir / "initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    for _attempt in range(3):  # the free port can be taken between probing and binding
        server = _launch(bin_dir, root)
        try:
            if _wait_ready(server):
                return server
        except BaseException:
            server.stop()
            raise
    log = _log_tail(root)
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start; log:\n{log}")


def find_bin_dir() -> Path:
    candidates = [os.environ.get("CIVICBAND_PG_BIN"), *DEFAULT_BIN_DIRS]
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else None)
    for candidate in filter(None, candidates):
        if all((Path(candidate) / tool).exists() for tool in ("initdb", "postgres", "pg_ctl", "pg_isready")):
            return Path(candidate)
    message = "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found; set CIVICBAND_PG_BIN or " + ENV_URL
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError(message + " (CI=true: PostgreSQL tests must not be skipped)")
    raise PostgresUnavailable(message)


def create_database(url: str, name: str, icu_locale: str | None = None) -> str:
    """Create database `name` on the server of `url`; return its URL. With `icu_locale` (e.g. "en-US"),
    its text sorts by that language's rules, as in a database made with a typical locale, not as bytes."""
    server = sa.engine.make_url(url)
    collation = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'" if icu_locale else ""
    with _autocommit(server.set(database="postgres")) as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{collation}')
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    target = sa.engine.make_url(url)
    with _autocommit(target.set(database="postgres")) as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')


@contextlib.contextmanager
def _autocommit(url: sa.URL) -> Iterator[sa.Connection]:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _launch(bin_dir: Path, root: Path) -> PostgresServer:
    port = free_port()
    with open(root / "postgres.log", "ab") as log:
        process = subprocess.Popen(
            _as_server_user(bin_dir / "postgres", "-D", str(root / "data"), "-p", str(port),
                            "-k", str(root), "-c", "listen_addresses=127.0.0.1", *SERVER_OPTIONS),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return PostgresServer(bin_dir, root, port, process)


def _wait_ready(server: PostgresServer) -> bool:
    """Poll pg_isready until the server accepts connections; False if it exited (e.g. port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        ready = subprocess.run(
            [server.bin_dir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"],
            check=False,
        )
        if ready.returncode == 0:
            return True
        time.sleep(0.05)
    raise TimeoutError(f"PostgreSQL not ready after {START_TIMEOUT:.0f}s; log:\n{_log_tail(server.root)}")


def free_port() -> int:
    """A port free now on 127.0.0.1 (another process may take it before the caller binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_root() -> bool:
    return os.geteuid() == 0


def _chown_for_server(root: Path) -> None:
    if _is_root():
        user = pwd.getpwnam(OS_USER)
        os.chown(root, user.pw_uid, user.pw_gid)


def _as_server_user(*args) -> list[str]:
    # setpriv execs in place (no wrapper process), so Popen's pid is the postmaster itself.
    args = [str(a) for a in args]
    if not _is_root():
        return args
    return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", *args]


def _run(*args) -> None:
    result = subprocess.run(_as_server_user(*args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")


def _log_tail(root: Path) -> str:
    log = root / "postgres.log"
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
