"""Bulk writes of one batch of pages into meeting_pages: no SQL statement per row, and no per-row
Python beyond handing each record to the driver.

- SQLite: one executemany of an UPSERT. The driver binds plain tuples and releases the GIL while
  SQLite works; two indexed counts then say what the batch created and changed.
- PostgreSQL: binary COPY (no text escaping on either side). A first backfill has its batches
  COPYed straight into meeting_pages; otherwise, or if a page turns out to exist after all, the
  batch is COPYed into a temporary table and merged with one UPSERT ... RETURNING.

Either way every page is one probe of the unique index, whatever the database's statistics say.
"""

import codecs
import datetime as dt
import functools
import operator
import struct
from collections.abc import Iterator
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .rows import PageRecord
from .schema import meeting_pages

PAGE_KEY = ("municipality", "document_type", "meeting_name", "meeting_date", "page_number")
# Columns whose change makes an existing page "updated" (upstream_id changes with the text).
COMPARED = ("upstream_id", "page_image", "entities_json", "votes_json")
REPLACED = ("upstream_id", "text", "page_image", "entities_json", "votes_json", "sync_generation")
COLUMNS = ("municipality", "document_type", *PageRecord._fields, "sync_generation", "created_at", "updated_at")


class Written(NamedTuple):
    created: int
    updated: int
    unchanged: int
    merged: bool = False  # PostgreSQL: asked for a direct COPY, the batch had to be merged after all


def write_pages(
    conn: sa.Connection, municipality: str, document_type: str, generation: int, records: list[PageRecord],
    *, direct: bool, now: dt.datetime,
) -> Written:
    """Upsert `records` (unique by page key: the store dedupes them) as seen by sync `generation`.

    `direct` (PostgreSQL): try a COPY straight into meeting_pages, for a partition whose pages
    should all be new (a first backfill).
    """
    if conn.dialect.name != "postgresql":
        return _sqlite_upsert(conn, municipality, document_type, generation, records, now)
    copy = _PostgresCopy(conn, municipality, document_type, generation, now)
    if direct and copy.into_pages(records):
        return Written(len(records), 0, 0)
    copy.into_staging(records)
    params = {"municipality": municipality, "document_type": document_type, "generation": generation, "now": now}
    merged = conn.execute(_MERGE_STAGED, params).all()
    created = sum(was_created for was_created, _ in merged)
    changed = sum(was_changed for _, was_changed in merged)
    return Written(created, changed - created, len(merged) - changed, merged=direct)


def _upsert(insert):
    new = insert.excluded
    replaced = {name: new[name] for name in REPLACED}
    # An unchanged page keeps its updated_at: only the generation says it was seen again.
    unchanged = sa.and_(*(meeting_pages.c[name].is_not_distinct_from(new[name]) for name in COMPARED))
    replaced["updated_at"] = sa.case((unchanged, meeting_pages.c.updated_at), else_=new.updated_at)
    return insert.on_conflict_do_update(index_elements=list(PAGE_KEY), set_=replaced)


# -- SQLite ---------------------------------------------------------------------------------------

def _sqlite_upsert_sql() -> tuple[str, operator.itemgetter]:
    """The UPSERT for executemany, and what puts a row's COLUMNS values in its placeholders' order."""
    # INSERT ... VALUES: SQLite runs the INSERT ... SELECT form at twice the cost per row.
    values = sqlite.insert(meeting_pages).values({name: sa.bindparam(name) for name in COLUMNS})
    compiled = _upsert(values).compile(dialect=sqlite.dialect())
    return str(compiled), operator.itemgetter(*map(COLUMNS.index, compiled.positiontup))


_SQLITE_UPSERT, _SQLITE_ORDER = _sqlite_upsert_sql()
_SQLITE_DATETIME = sa.DateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
# A new row gets a rowid above the table's largest, so the pages a batch created are those above the
# largest rowid before it; the existing pages it changed carry one of its ids and its updated_at. The
# writer lock is held throughout.
_SQLITE_MAX_ID = "SELECT coalesce(max(id), 0) FROM meeting_pages"
_SQLITE_CREATED = "SELECT count(*) FROM meeting_pages WHERE id > ?"
_SQLITE_CHANGED = (
    "SELECT count(*) FROM meeting_pages WHERE municipality = ? AND document_type = ?"
    " AND upstream_id BETWEEN ? AND ? AND id <= ? AND updated_at = ?"
)


def _sqlite_upsert(conn, municipality, document_type, generation, records, now) -> Written:
    stamp = _SQLITE_DATETIME(now)
    max_id = conn.exec_driver_sql(_SQLITE_MAX_ID).scalar_one()
    rows = [_SQLITE_ORDER((municipality, document_type, *record, generation, stamp, stamp)) for record in records]
    conn.exec_driver_sql(_SQLITE_UPSERT, rows)
    created = conn.exec_driver_sql(_SQLITE_CREATED, (max_id,)).scalar_one()
    ids = [record.upstream_id for record in records]
    changed = conn.exec_driver_sql(_SQLITE_CHANGED, (municipality, document_type, min(ids), max(ids), max_id, stamp)).scalar_one()
    return Written(created, changed, len(records) - created - changed)


# -- PostgreSQL -----------------------------------------------------------------------------------

staged_pages = sa.Table(
    "staged_pages",
    sa.MetaData(),
    *(sa.Column(name, meeting_pages.c[name].type) for name in PageRecord._fields),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


def _merge_staged() -> sa.Insert:
    now = sa.bindparam("now", type_=meeting_pages.c.updated_at.type)
    rows = sa.select(
        sa.bindparam("municipality", type_=sa.String), sa.bindparam("document_type", type_=sa.String),
        *staged_pages.c, sa.bindparam("generation", type_=sa.Integer), now, now,
    )
    upsert = _upsert(postgresql.insert(meeting_pages).from_select(list(COLUMNS), rows))
    # A page whose created_at is `now` was inserted; one whose updated_at is `now` was changed.
    return upsert.returning(meeting_pages.c.created_at == now, meeting_pages.c.updated_at == now)


_MERGE_STAGED = _merge_staged()
# COPY's binary format: a header, then per row a field count and each field as length + bytes
# (-1 for NULL), then a trailer. Dates and timestamps count days and microseconds from 2000-01-01.
# Each column is encoded for its type (text, int4, date, timestamptz): test_store checks the live schema.
_INT2, _INT4, _INT8 = struct.Struct("!h").pack, struct.Struct("!i").pack, struct.Struct("!q").pack
_HEADER = b"PGCOPY\n\xff\r\n\x00" + _INT4(0) + _INT4(0)
_TRAILER = _INT2(-1)
_NULL = _INT4(-1)
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH_DAY = _EPOCH.date().toordinal()


class _PostgresCopy:
    """A batch as binary COPY, streamed a row per read(): no batch-sized buffer."""

    def __init__(self, conn: sa.Connection, municipality: str, document_type: str, generation: int, now: dt.datetime):
        self.conn = conn
        self.dbapi = conn.connection.dbapi_connection  # psycopg2, in the same transaction
        self.encoding = _python_codec(self.dbapi.encoding)
        stamp = _INT4(8) + _INT8((now - _EPOCH) // dt.timedelta(microseconds=1))
        self.page_prefix = _INT2(len(COLUMNS)) + self._text(municipality) + self._text(document_type)
        self.page_suffix = _int4(generation) + stamp + stamp

    def into_pages(self, records: list[PageRecord]) -> bool:
        """COPY straight into meeting_pages; False, with nothing written, if one of the pages exists."""
        try:
            with self.conn.begin_nested():
                self._copy("meeting_pages", COLUMNS, self._rows(records, self.page_prefix, self.page_suffix))
        except self.conn.dialect.dbapi.IntegrityError:
            return False
        return True

    def into_staging(self, records: list[PageRecord]) -> None:
        if self.conn.exec_driver_sql("SELECT to_regclass('pg_temp.staged_pages')").scalar() is None:
            self.conn.execute(sa.schema.CreateTable(staged_pages))
            # Staged text is read once: compressing it would double the COPY's cost.
            self.conn.exec_driver_sql("ALTER TABLE staged_pages ALTER COLUMN text SET STORAGE EXTERNAL")
        else:  # emptied at each commit; this is for a second batch in one transaction
            self.conn.exec_driver_sql("DELETE FROM staged_pages")
        self._copy("staged_pages", PageRecord._fields, self._rows(records, _INT2(len(PageRecord._fields)), b""))

    def _copy(self, table: str, columns: tuple[str, ...], rows: Iterator[bytes]) -> None:
        with self.dbapi.cursor() as cursor:
            cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT binary)", _Reader(rows))

    def _rows(self, records: list[PageRecord], prefix: bytes, suffix: bytes) -> Iterator[bytes]:
        text = self._text
        yield _HEADER
        for upstream_id, meeting, date, page, page_text, image, entities, votes in records:
            yield b"".join((
                prefix, text(upstream_id), text(meeting), _date(date), _int4(page),
                text(page_text), text(image), text(entities), text(votes), suffix,
            ))
        yield _TRAILER

    def _text(self, value: str | None) -> bytes:
        if value is None:
            return _NULL
        data = value.encode(self.encoding)
        return _INT4(len(data)) + data


def _int4(value: int) -> bytes:
    return b"\x00\x00\x00\x04" + _INT4(value)


@functools.lru_cache(maxsize=65536)  # a document's pages share their date
def _date(iso: str) -> bytes:  # a validated YYYY-MM-DD
    return _int4(dt.date.fromisoformat(iso).toordinal() - _EPOCH_DAY)


def _python_codec(encoding: str) -> str:
    """The Python codec of the connection's client encoding (UTF8 -> utf-8, which str.encode does fastest)."""
    from psycopg2.extensions import encodings  # only a PostgreSQL store needs the driver

    return codecs.lookup(encodings[encoding]).name


class _Reader:
    """A file for copy_expert: each read() hands over the next row."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks

    def read(self, _size: int = -1) -> bytes:
        return next(self._chunks, b"")
