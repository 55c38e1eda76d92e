"""One measurement in a fresh process; prints one JSON line (timings and this process's peak RSS).

  child.py fetch  --base-url T --municipality M [--prefetch] [--parse]
  child.py sync   --base-url T --municipality M --store URL
  child.py naive  --base-url T --municipality M --store URL --rows N

Everything pages the `agenda` table in pages of 1000 rows; the sync commits batches of the asset's
default size (MeetingStore.batch_size: 4 such pages on SQLite, 1 on PostgreSQL). Only the measured loop is timed:
imports, store creation (migrations) and, for `naive`, fetching its input rows are not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import common  # noqa: F401  (puts the repo on sys.path)
from common import cpu_seconds, peak_rss_mb

from civicband_pipelines.client import MAX_PAGE_SIZE, CivicBandClient
from civicband_pipelines.config import ClientSettings
from civicband_pipelines.rows import PageRecord, parse_rows

DOCUMENT_TYPE = "agenda"
PAGE = MAX_PAGE_SIZE  # rows per request (civic.band's maximum)


class Timed:
    """Wall and CPU time of the measured loop only."""

    def __enter__(self) -> "Timed":
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu

    def result(self) -> dict:
        return {"seconds": self.wall, "cpu_seconds": self.cpu}


def client_for(base_url: str) -> CivicBandClient:
    return CivicBandClient(ClientSettings(base_url=base_url, retries=0))


def measure_fetch(args) -> dict:
    from civicband_pipelines.sync import prefetched_pages  # the sync's own fetch pipeline

    client = client_for(args.base_url)
    if args.prefetch:
        pages = prefetched_pages(client, args.municipality, DOCUMENT_TYPE, PAGE)
    else:
        pages = client.iter_pages(args.municipality, DOCUMENT_TYPE, PAGE)
    rows = rejected = 0
    with Timed() as timed:
        for page in pages:
            rows += len(page.rows)
            if args.parse:
                rejected += len(parse_rows(page.rows)[1])
    return {"rows": rows, "rejected": rejected, **timed.result()}


def measure_sync(args) -> dict:
    from civicband_pipelines.sync import sync_partition

    client, store = client_for(args.base_url), progress_store(args.store)
    before = peak_rss_mb()["vmrss_mb"]
    with Timed() as timed:
        store.started = time.perf_counter()
        result = sync_partition(client, store, args.municipality, DOCUMENT_TYPE, restart=True)  # the asset's batch size
    return {"rows": result.fetched, "created": result.created, "updated": result.updated, "unchanged": result.unchanged,
            "deleted": result.deleted, "status": result.status, "rss_before_sync_mb": before, **timed.result()}


def progress_store(url: str):
    """The real store, printing a progress line after each committed batch (read if the sync times out)."""
    from civicband_pipelines.store import MeetingStore

    class ProgressStore(MeetingStore):
        started, rows = time.perf_counter(), 0

        def write_batch(self, *args, **kwargs):
            counts = super().write_batch(*args, **kwargs)
            self.rows += sum(getattr(counts, name, 0) for name in ("created", "updated", "unchanged", "rejected"))
            print(json.dumps({"progress": self.rows, "t": time.perf_counter() - self.started, **peak_rss_mb()}), flush=True)
            return counts

    return ProgressStore(url)


def measure_naive(args) -> dict:
    """The replaced Django app's way: per row, SELECT by key, INSERT or UPDATE, commit."""
    from civicband_pipelines.store import MeetingStore

    records = first_records(client_for(args.base_url), args.municipality, args.rows)
    store = MeetingStore(args.store)
    with Timed() as timed:
        inserted = naive_upsert(store.engine, args.municipality, records)
    return {"rows": len(records), "inserted": inserted, **timed.result()}


def first_records(client: CivicBandClient, municipality: str, n: int) -> list[dict]:
    """The first n pages as the column values an ORM would be given (the date as a date)."""
    records: list[PageRecord] = []
    for page in client.iter_pages(municipality, DOCUMENT_TYPE, PAGE):
        records += parse_rows(page.rows)[0]
        if len(records) >= n:
            break
    return [r._asdict() | {"meeting_date": dt.date.fromisoformat(r.meeting_date)} for r in records[:n]]


def naive_upsert(engine, municipality: str, records: list[dict]) -> int:
    import sqlalchemy as sa

    from civicband_pipelines.schema import meeting_pages as t

    inserted = 0
    for record in records:
        with engine.begin() as conn:  # one transaction, so one commit, per row
            key = (t.c.municipality == municipality, t.c.document_type == DOCUMENT_TYPE,
                   t.c.meeting_name == record["meeting_name"], t.c.meeting_date == record["meeting_date"],
                   t.c.page_number == record["page_number"])
            found = conn.execute(sa.select(t.c.id).where(*key)).first()
            if found:
                conn.execute(sa.update(t).where(t.c.id == found.id).values(**record, sync_generation=1))
            else:
                conn.execute(sa.insert(t).values(**record, municipality=municipality,
                                                 document_type=DOCUMENT_TYPE, sync_generation=1))
                inserted += 1
    return inserted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("fetch", "sync", "naive"))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--municipality", required=True)
    parser.add_argument("--store")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--prefetch", action="store_true")
    parser.add_argument("--parse", action="store_true")
    args = parser.parse_args()
    measure = {"fetch": measure_fetch, "sync": measure_sync, "naive": measure_naive}[args.what]
    result = measure(args)
    result["rows_per_second"] = result["rows"] / result["seconds"] if result["seconds"] else 0.0
    print(json.dumps({**result, **peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
