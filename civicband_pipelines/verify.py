"""Exact verification of a partition against upstream: counts, and which documents differ."""

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from .client import CivicBandClient
from .rows import Rejection, has_id, parse_row, rejection_id, storable_id
from .store import MeetingStore, utcnow

MAX_NAMED_DOCUMENTS = 50  # documents named in metadata and CLI output; the counts are always complete
# Fetched to compare pages by id: what names a document, and what a page's id does not stand for.
COMPARED_COLUMNS = ("meeting", "date", "page", "page_image", "entities_json", "votes_json")


@dataclass
class Verification:
    municipality: str
    document_type: str
    expected: int  # upstream rows, exact (SQL count)
    actual: int  # local pages
    rejected: int  # upstream rows refused with a reason (see rejected_rows)
    verified_at: dt.datetime = field(default_factory=utcnow)
    deep: bool = False  # True when ids were compared, not only counts
    missing_pages: Counter = field(default_factory=Counter)  # (meeting, date) -> pages upstream, not here
    extra_pages: Counter = field(default_factory=Counter)  # (meeting, date) -> pages here, not upstream

    @property
    def missing(self) -> int:
        return sum(self.missing_pages.values()) if self.deep else max(0, self.expected - self.rejected - self.actual)

    @property
    def extra(self) -> int:
        return sum(self.extra_pages.values()) if self.deep else max(0, self.actual + self.rejected - self.expected)

    @property
    def passed(self) -> bool:
        return self.expected == self.actual + self.rejected and self.missing == 0 and self.extra == 0

    def documents(self) -> dict[str, list[str]]:
        """Differing documents by kind: missing (absent here), extra (gone upstream), stale (changed)."""
        stale = self.missing_pages.keys() & self.extra_pages.keys()
        named = {
            "missing": self.missing_pages.keys() - stale,
            "stale": stale,
            "extra": self.extra_pages.keys() - stale,
        }
        # A row that was never synced may lack its meeting or date (None): sorted as text.
        return {kind: [_document_name(d, self) for d in sorted(docs, key=lambda d: tuple(map(str, d)))] for kind, docs in named.items()}

    def summary(self) -> str:
        verdict = "OK" if self.passed else "MISMATCH"
        return (
            f"{self.municipality}/{self.document_type}: {verdict} expected {self.expected}, actual {self.actual}, "
            f"rejected {self.rejected}, missing {self.missing}, extra {self.extra}"
        )


def verify_counts(client: CivicBandClient, store: MeetingStore, municipality: str, document_type: str) -> Verification:
    """Exact counts: one upstream request, whatever the partition's size."""
    return Verification(
        municipality,
        document_type,
        expected=client.count(municipality, document_type),
        actual=store.count_pages(municipality, document_type),
        rejected=len(store.rejected_ids(municipality, document_type)),
    )


def verify_ids(
    client: CivicBandClient, store: MeetingStore, municipality: str, document_type: str, counted: Verification | None = None,
) -> Verification:
    """Compare upstream and local pages by id (streamed, both in id order), with the image, entities and
    votes that the id does not stand for, and say which documents differ. `counted`: the partition's
    verify_counts just now, if the caller has it (one upstream count request fewer)."""
    result = counted or verify_counts(client, store, municipality, document_type)
    result.deep = True
    rejected = store.rejected_ids(municipality, document_type)
    upstream = _upstream_ids(client, municipality, document_type, rejected, result)
    local = store.iter_page_ids(municipality, document_type)
    for side, (upstream_id, meeting, date, _) in _merge_diff(upstream, local):
        if side == "upstream" and storable_id(upstream_id) not in rejected:
            result.missing_pages[(meeting, str(date))] += 1
        elif side == "local":
            result.extra_pages[(meeting, str(date))] += 1
    return result


def _upstream_ids(client: CivicBandClient, municipality: str, document_type: str, rejected: set[str], result: Verification):
    """(id, meeting, date, stored values) of the upstream rows in id order. A row without an id is never
    a page, so it is counted here: as missing, unless its rejection accounts for it (once: two such rows
    at one place share a key)."""
    accounted = set()
    for page in client.iter_pages(municipality, document_type, 1000, columns=COMPARED_COLUMNS):
        for row in page.rows:
            if has_id(row):
                yield row["id"], row.get("meeting"), row.get("date"), _stored_values(row)
            elif (key := rejection_id(row)) in rejected and key not in accounted:
                accounted.add(key)
            else:
                result.missing_pages[(row.get("meeting"), str(row.get("date")))] += 1


def _stored_values(row: dict) -> tuple | None:
    """The row's image, entities and votes as the store would keep them; None if it would not be stored."""
    record = parse_row(row)  # the text is not fetched: the id stands for it
    return None if isinstance(record, Rejection) else (record.page_image, record.entities_json, record.votes_json)


def _merge_diff(upstream, local):
    """Yield ("upstream", item) / ("local", item) for ids present on one side only, and both for an id
    whose other values differ (a page changed under its id: its document is stale)."""
    sentinel = (None,)
    a, b = next(upstream, sentinel), next(local, sentinel)
    while a is not sentinel or b is not sentinel:
        if b is sentinel or (a is not sentinel and _order(a[0]) < _order(b[0])):
            yield "upstream", a
            a = next(upstream, sentinel)
        elif a is sentinel or _order(b[0]) < _order(a[0]):
            yield "local", b
            b = next(local, sentinel)
        else:
            if a[3] != b[3]:
                yield "upstream", a
                yield "local", b
            a, b = next(upstream, sentinel), next(local, sentinel)


def _order(upstream_id: str) -> bytes:
    return upstream_id.encode("utf-8", "surrogatepass")  # SQLite compares ids as UTF-8 bytes


def _document_name(document: tuple[str, str], result: Verification) -> str:
    meeting, date = document
    parts = [f"{n} missing" for n in [result.missing_pages.get(document)] if n]
    parts += [f"{n} extra" for n in [result.extra_pages.get(document)] if n]
    return f"{meeting} {date} ({', '.join(parts)})"
