"""SQLAlchemy engines for the meetings store, with the settings chosen for bulk loading (README: store
settings; the measurements behind them in bench/README.md)."""

import sqlite3
from pathlib import Path

import sqlalchemy as sa

MIN_SQLITE = (3, 24)  # batch writes are UPSERTs (page_writes.py)


def create_store_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"the SQLite store needs SQLite {'.'.join(map(str, MIN_SQLITE))}+; this Python has {sqlite3.sqlite_version}")
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "isolation_level": None})
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    keepalives = {k: v for k, v in POSTGRES_KEEPALIVES.items() if k not in sa.engine.make_url(url).query}
    return sa.create_engine(url, pool_pre_ping=True, connect_args=keepalives)


# TCP keepalives (libpq options; the URL's own win): a sync's lock connection (leases.py) sits idle for
# hours, and a NAT or load balancer that drops idle flows silently would leave the server holding the
# municipality's lock for its own keepalive time (2 h), and the sync's unlock at its end hanging.
POSTGRES_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 60, "keepalives_interval": 10, "keepalives_count": 6,
                       "tcp_user_timeout": 120_000}


# Page cache of a connection (KiB; SQLite's default is 2 MB), filled only as pages are touched. A
# sync's writes touch its partition's page-key index at random (33 MB at 550,000 pages) next to the
# batch's new rows; with less, SQLite spills dirty index pages before the commit and writes them
# again (bench/README.md). Readers keep less, since a process may pool several connections.
_WRITER_CACHE_KIB, _READER_CACHE_KIB = 65_536, 16_384


def _sqlite_begin(conn: sa.Connection) -> None:
    writer = conn.get_execution_options().get("writer")
    conn.exec_driver_sql(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB if writer else _READER_CACHE_KIB}")
    # Writers take the lock at BEGIN: deferred transactions that upgrade later fail under load.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # 64 KB pages (a new file only): a commit writes each page it touched as one WAL frame, and the
    # page-key index is touched at random, so fewer, larger pages mean fewer frames (bench/README.md).
    cursor.execute("PRAGMA page_size=65536")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (UI, checks) never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA wal_autocheckpoint=1000")  # pages: 64 MB of WAL between checkpoints
    cursor.close()
