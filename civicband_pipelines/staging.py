"""Bulk batch writes: stage a batch in a temporary table, then merge it into meeting_pages in SQL.

Python only streams the batch into the staging table (SQLite: one executemany of plain tuples;
PostgreSQL: COPY). One set-based upsert then merges it and reports what it created, updated and
left unchanged: no SQL statement per row, and every page is one probe of the unique index, whatever
the database's statistics say (a join planned from stale statistics scans the whole partition).
"""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .rows import PageRecord
from .schema import meeting_pages

PAGE_KEY = ("meeting_name", "meeting_date", "page_number")
# Columns whose change makes an existing page "updated" (upstream_id changes with the text).
COMPARED = ("upstream_id", "page_image", "entities_json", "votes_json")

staged_pages = sa.Table(
    "staged_pages",
    sa.MetaData(),
    *(sa.Column(name, meeting_pages.c[name].type) for name in PageRecord._fields),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",  # SQLite has no ON COMMIT: `stage` empties it there
)
_STAGED_COLUMNS = ", ".join(PageRecord._fields)
_SQLITE_STAGE = f"INSERT INTO temp.staged_pages ({_STAGED_COLUMNS}) VALUES ({', '.join('?' * len(PageRecord._fields))})"


def stage(conn: sa.Connection, records: list[PageRecord]) -> None:
    """Replace the connection's staged batch with `records` (inside the caller's transaction)."""
    if conn.dialect.name == "postgresql":
        _create_postgresql_staging(conn)
        with conn.connection.dbapi_connection.cursor() as cursor:  # psycopg2, same transaction
            cursor.copy_expert(f"COPY staged_pages ({_STAGED_COLUMNS}) FROM STDIN", _CopySource(records))
    else:
        conn.execute(sa.schema.CreateTable(staged_pages, if_not_exists=True))
        conn.exec_driver_sql("DELETE FROM temp.staged_pages")
        conn.exec_driver_sql(_SQLITE_STAGE, records)


def _create_postgresql_staging(conn: sa.Connection) -> None:
    if conn.exec_driver_sql("SELECT to_regclass('pg_temp.staged_pages')").scalar() is None:
        conn.execute(sa.schema.CreateTable(staged_pages))
        # Staged text is read once: compressing it (pglz, the default) would double the COPY's cost.
        conn.exec_driver_sql("ALTER TABLE staged_pages ALTER COLUMN text SET STORAGE EXTERNAL")


def merge_staged(conn: sa.Connection, municipality: str, document_type: str, generation: int, now) -> tuple[int, int, int]:
    """Upsert the staged batch, marking every page seen by `generation`; returns (created, updated, unchanged).

    The statement's conflict target is the unique key, so each page is one probe of that index.
    """
    params = {"municipality": municipality, "document_type": document_type, "generation": generation, "now": now}
    # A page whose created_at is `now` was inserted; one whose updated_at is `now` was changed.
    merged = conn.execute(_UPSERT[conn.dialect.name], params).all()
    created = sum(was_created for was_created, _ in merged)
    changed = sum(was_changed for _, was_changed in merged)
    return created, changed - created, len(merged) - changed


def _unchanged(page, new) -> sa.ColumnElement[bool]:
    return sa.and_(*(page.c[name].is_not_distinct_from(new[name]) for name in COMPARED))


def _upsert(dialect) -> sa.Insert:
    now = sa.bindparam("now", type_=meeting_pages.c.updated_at.type)
    columns = ["municipality", "document_type", *PageRecord._fields, "sync_generation", "created_at", "updated_at"]
    rows = sa.select(
        sa.bindparam("municipality", type_=sa.String),
        sa.bindparam("document_type", type_=sa.String),
        *staged_pages.c,
        sa.bindparam("generation", type_=sa.Integer),
        now,
        now,
    ).where(sa.true())  # SQLite needs a WHERE to parse INSERT ... SELECT ... ON CONFLICT
    insert = dialect.insert(meeting_pages).from_select(columns, rows)
    new = insert.excluded
    replaced = {name: new[name] for name in ("upstream_id", "text", "page_image", "entities_json", "votes_json", "sync_generation")}
    # An unchanged page keeps its updated_at: only the generation says it was seen again.
    replaced["updated_at"] = sa.case((_unchanged(meeting_pages, new), meeting_pages.c.updated_at), else_=new.updated_at)
    upsert = insert.on_conflict_do_update(index_elements=["municipality", "document_type", *PAGE_KEY], set_=replaced)
    return upsert.returning(meeting_pages.c.created_at == now, meeting_pages.c.updated_at == now)


_UPSERT = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}


class _CopySource:
    """The batch in COPY's text format, a row per read(): no batch-sized buffer."""

    def __init__(self, records: list[PageRecord]):
        self._rows = ("\t".join(map(_copy_field, record)) + "\n" for record in records)

    def read(self, _size: int = -1) -> str:
        return next(self._rows, "")


def _copy_field(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, int):
        return str(value)
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
