"""Turn an upstream row into a local page record, or say exactly why it is rejected."""

import datetime as dt
import json
import re
from dataclasses import dataclass

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class Rejection:
    upstream_id: str
    reason: str
    raw: str  # the row as JSON, so nothing is lost


def parse_row(row: object) -> dict | Rejection:
    """A page record (store column names) or a Rejection. Never raises on odd input."""
    if not isinstance(row, dict):
        return Rejection("", f"row is not an object: {type(row).__name__}", _raw(row))
    reason = _invalid_reason(row)
    if reason:
        return Rejection(_id_text(row.get("id")), reason, _raw(row))
    return {
        "upstream_id": row["id"],
        "meeting_name": row["meeting"],
        "meeting_date": dt.date.fromisoformat(row["date"]),
        "page_number": row["page"],
        # PostgreSQL cannot store U+0000 in text; it carries no meaning in OCR output, so it is
        # dropped everywhere (SQLite too) to keep both stores identical.
        "text": row.get("text").replace("\x00", "") if isinstance(row.get("text"), str) else None,
        "page_image": row.get("page_image"),
        "entities_json": _json_text(row.get("entities_json")),
        "votes_json": _json_text(row.get("votes_json")),
    }


def _invalid_reason(row: dict) -> str | None:
    upstream_id, meeting, date, page = row.get("id"), row.get("meeting"), row.get("date"), row.get("page")
    if not isinstance(upstream_id, str) or not upstream_id:
        return f"id is missing or not text: {upstream_id!r}"
    if len(upstream_id) > MAX_ID_LENGTH:
        return f"id is longer than {MAX_ID_LENGTH} characters"
    if not isinstance(meeting, str) or not meeting.strip():
        return f"meeting is missing or empty: {meeting!r}"
    if not isinstance(date, str) or not _DATE.match(date) or not _is_date(date):
        return f"date is not a YYYY-MM-DD date: {date!r}"
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
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


def _json_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _id_text(value: object) -> str:
    return value[:MAX_ID_LENGTH] if isinstance(value, str) else ""


def _raw(row: object) -> str:
    return json.dumps(row, default=repr)
