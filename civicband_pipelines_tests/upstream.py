"""Ground truth for assertions: what a municipality's replica database holds, and the local copy."""

import sqlite3
from pathlib import Path

from civicband_pipelines.naming import TABLES
from civicband_pipelines.rows import UPSTREAM_COLUMNS as COLUMNS
from civicband_pipelines.rows import PageRecord, Rejection, parse_row


def replica_db(root: Path, subdomain: str) -> Path:
    return Path(root) / subdomain / "meetings.db"


def upstream_rows(root: Path, subdomain: str, document_type: str) -> list[dict]:
    with sqlite3.connect(replica_db(root, subdomain)) as conn:
        rows = conn.execute(f"select {', '.join(COLUMNS)} from {TABLES[document_type]}").fetchall()
    return [dict(zip(COLUMNS, row)) for row in rows]


def expected_pages(root: Path, subdomain: str, document_type: str) -> set[tuple]:
    """The local pages a sync must produce: every acceptable upstream row, as stored."""
    records = (parse_row(row) for row in upstream_rows(root, subdomain, document_type))
    return {_record_tuple(r) for r in records if not isinstance(r, Rejection)}


def expected_rejections(root: Path, subdomain: str, document_type: str) -> set[str]:
    records = (parse_row(row) for row in upstream_rows(root, subdomain, document_type))
    return {r.upstream_id for r in records if isinstance(r, Rejection)}


def local_pages(store, subdomain: str, document_type: str) -> list[tuple]:
    return [_record_tuple(p) for p in store.iter_pages(subdomain, document_type)]


def _record_tuple(record) -> tuple:
    """A parsed upstream record (PageRecord) or a local page (dict) as comparable values."""
    if isinstance(record, dict):
        record = PageRecord(*(record[name] for name in PageRecord._fields))
    return record._replace(meeting_date=str(record.meeting_date))


def assert_equals_upstream(store, root: Path, subdomain: str, document_type: str) -> None:
    local = local_pages(store, subdomain, document_type)
    assert len(local) == len(set(local)), "duplicate local pages"
    expected = expected_pages(root, subdomain, document_type)
    assert set(local) == expected, (
        f"{len(expected - set(local))} missing, {len(set(local) - expected)} unexpected local pages"
    )
