"""Turn an upstream row into a local page record, or say exactly why it is rejected."""

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SURROGATE = re.compile("[\ud800-\udfff]")  # unpaired (JSON "\ud800"): no UTF-8 database can store one
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_ID_LENGTH = 255
# meeting_name is in PostgreSQL's unique page index, whose entries must stay under ~2700 bytes (one
# longer row fails its batch's COPY on every run): 500 characters is 2000 bytes even in 4-byte UTF-8.
MAX_MEETING_LENGTH = 500
MAX_PAGE = 2**31 - 1  # the store's page_number is a 32-bit integer
# civic.band's columns of agendas and minutes, in PageRecord's order.
UPSTREAM_COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")


class PageRecord(NamedTuple):
    """A page as stored (store column names)."""

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
        record = _plain_record(row)
        if record is None:
            record = parse_row(row)
            if isinstance(record, Rejection):
                rejections.append(record)
                continue
        records.append(record)
    return records, rejections


def parse_row(row: object) -> PageRecord | Rejection:
    """A page record or a Rejection. Never raises on odd input."""
    if not isinstance(row, dict):
        return Rejection("", f"row is not an object: {type(row).__name__}", _raw(row))
    reason = _invalid_reason(row)
    if reason:
        return Rejection(rejection_id(row), reason, _raw(row))
    get = row.get
    return PageRecord(
        row["id"], row["meeting"], row["date"], row["page"],
        _storable(get("text")), _storable(get("page_image")),
        _storable(_json_text(get("entities_json"))), _storable(_json_text(get("votes_json"))),
    )


_make_record = PageRecord._make  # builds the tuple in C, a quarter of the cost of PageRecord(...)


def _plain_record(row: object) -> PageRecord | None:
    """The record of an unremarkable row (nearly all of them), checked cheaply; None for any other row.

    Accepts only rows that parse_row would turn into the very same record.
    """
    if type(row) is not dict:
        return None
    get = row.get
    upstream_id, meeting, date, page = get("id"), get("meeting"), get("date"), get("page")
    text, image, entities, votes = get("text"), get("page_image"), get("entities_json"), get("votes_json")
    if (
        type(upstream_id) is str and 0 < len(upstream_id) <= MAX_ID_LENGTH and _plain_text(upstream_id)
        and type(meeting) is str and len(meeting) <= MAX_MEETING_LENGTH and _plain_text(meeting) and meeting.strip()
        and type(date) is str and _is_valid_date(date)
        and type(page) is int and 1 <= page <= MAX_PAGE
        and _plain_text(text) and _plain_text(image) and _plain_text(entities) and _plain_text(votes)
    ):
        return _make_record((upstream_id, meeting, date, page, text, image, entities, votes))
    return None


def _plain_text(value: object) -> bool:
    return value is None or (type(value) is str and "\x00" not in value and not _has_surrogate(value))


def _invalid_reason(row: dict) -> str | None:
    upstream_id, meeting, date, page = row.get("id"), row.get("meeting"), row.get("date"), row.get("page")
    if not has_id(row):
        return f"id is missing or not text: {upstream_id!r}"
    if len(upstream_id) > MAX_ID_LENGTH:
        return f"id is longer than {MAX_ID_LENGTH} characters"
    if not isinstance(meeting, str) or not meeting.strip():
        return f"meeting is missing or empty: {meeting!r}"
    if len(meeting) > MAX_MEETING_LENGTH:
        return f"meeting is longer than {MAX_MEETING_LENGTH} characters"
    # Part of the page's identity, so not ours to edit (unlike text, see _storable).
    if "\x00" in upstream_id or "\x00" in meeting:
        return "id or meeting contains a NUL character"
    if _has_surrogate(upstream_id) or _has_surrogate(meeting):
        return "id or meeting contains an unpaired surrogate (not valid Unicode)"
    if not isinstance(date, str) or not _is_valid_date(date):
        return f"date is not a YYYY-MM-DD date: {date!r}"
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= MAX_PAGE:
        return f"page is not a positive integer: {page!r}"
    for column in ("text", "page_image"):
        if row.get(column) is not None and not isinstance(row.get(column), str):
            return f"{column} is not text: {type(row.get(column)).__name__}"
    return None


def _is_valid_date(value: str) -> bool:
    return len(value) == 10 and _is_valid_date_text(value)


@functools.lru_cache(maxsize=65536)  # a document's pages share their date
def _is_valid_date_text(value: str) -> bool:
    return bool(_DATE.match(value)) and _is_date(value)


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
        return True
    except ValueError:
        return False


def _has_surrogate(value: str) -> bool:
    return not value.isascii() and _SURROGATE.search(value) is not None


def _storable(value: str | None) -> str | None:
    """Text as both stores keep it. PostgreSQL cannot store U+0000, and it carries no meaning in OCR
    output, image paths or JSON, so it is dropped (SQLite too, to keep the stores identical);
    unpaired surrogates become U+FFFD."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", value) if _has_surrogate(value) else value


def _json_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


NO_ID = "(no id) "  # the prefix of rejection_id for rows without an id


def has_id(row: dict) -> bool:
    return isinstance(row.get("id"), str) and row["id"] != ""


def rejection_id(row: dict) -> str:
    """A rejected row's key in rejected_rows, and how verification finds it: its storable id, or for a
    row without one (SQLite lets a TEXT primary key be NULL, several times) its place, so each such
    row is kept and counted once."""
    if has_id(row):
        return storable_id(row["id"])
    place = json.dumps([row.get("meeting"), row.get("date"), row.get("page")], default=str)
    return storable_id(f"{NO_ID}{place}")


def storable_id(upstream_id: str) -> str:
    """An upstream id as rejected_rows keeps it: at most MAX_ID_LENGTH characters, and each NUL or
    unpaired surrogate (which no store can hold) as a JSON escape. Verification compares ids so."""
    return _UNSTORABLE.sub(lambda match: f"\\u{ord(match[0]):04x}", upstream_id)[:MAX_ID_LENGTH]


def duplicate_rejection(record: PageRecord, kept: PageRecord) -> Rejection:
    """A row that repeats the page key (meeting, date, page) of a row kept in its stead."""
    row = dict(zip(UPSTREAM_COLUMNS, record))
    return Rejection(storable_id(record.upstream_id), f"duplicate page: same meeting, date and page as id {kept.upstream_id!r}", _raw(row))


def _raw(row: object) -> str:
    return json.dumps(row, default=repr)
