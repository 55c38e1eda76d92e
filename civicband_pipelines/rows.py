"""Turn an upstream row into a local page record, or say exactly why it is rejected."""

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_ID_LENGTH = 255
MAX_PAGE = 2**31 - 1  # the store's page_number is a 32-bit integer


class PageRecord(NamedTuple):
    """A page as stored (store column names, in the staging table's column order)."""

    upstream_id: str
    meeting_name: str
    meeting_date: str  # YYYY-MM-DD, validated
    page_number: int
    text: str | None
    page_image: str | None
    entities_json: str | None
    votes_json: str | None


@dataclass(frozen=True)
class Rejection:
    upstream_id: str
    reason: str
    raw: str  # the row as JSON, so nothing is lost


def parse_rows(rows: list) -> tuple[list[PageRecord], list[Rejection]]:
    """Split a page of upstream rows into records and rejections."""
    records, rejections = [], []
    for row in rows:
        parsed = parse_row(row)
        (rejections if isinstance(parsed, Rejection) else records).append(parsed)
    return records, rejections


def parse_row(row: object) -> PageRecord | Rejection:
    """A page record or a Rejection. Never raises on odd input."""
    if not isinstance(row, dict):
        return Rejection("", f"row is not an object: {type(row).__name__}", _raw(row))
    reason = _invalid_reason(row)
    if reason:
        return Rejection(_id_text(row.get("id")), reason, _raw(row))
    get = row.get
    return PageRecord(
        row["id"], row["meeting"], row["date"], row["page"],
        # PostgreSQL cannot store U+0000 in text; it carries no meaning in OCR output or image
        # paths, so it is dropped everywhere (SQLite too) to keep both stores identical.
        _without_nul(get("text")), _without_nul(get("page_image")),
        _without_nul(_json_text(get("entities_json"))), _without_nul(_json_text(get("votes_json"))),
    )


def _invalid_reason(row: dict) -> str | None:
    upstream_id, meeting, date, page = row.get("id"), row.get("meeting"), row.get("date"), row.get("page")
    if not isinstance(upstream_id, str) or not upstream_id:
        return f"id is missing or not text: {upstream_id!r}"
    if len(upstream_id) > MAX_ID_LENGTH:
        return f"id is longer than {MAX_ID_LENGTH} characters"
    if not isinstance(meeting, str) or not meeting.strip():
        return f"meeting is missing or empty: {meeting!r}"
    if "\x00" in upstream_id or "\x00" in meeting:  # part of the page's identity: not ours to edit
        return "id or meeting contains a NUL character"
    if not isinstance(date, str) or not _DATE.match(date) or not _is_date(date):
        return f"date is not a YYYY-MM-DD date: {date!r}"
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= MAX_PAGE:
        return f"page is not a positive integer: {page!r}"
    for column in ("text", "page_image"):
        if row.get(column) is not None and not isinstance(row.get(column), str):
            return f"{column} is not text: {type(row.get(column)).__name__}"
    return None


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
        return True
    except ValueError:
        return False


def _without_nul(value: str | None) -> str | None:
    return value.replace("\x00", "") if value is not None and "\x00" in value else value


def _json_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _id_text(value: object) -> str:
    return value[:MAX_ID_LENGTH] if isinstance(value, str) else ""


def _raw(row: object) -> str:
    return json.dumps(row, default=repr)
