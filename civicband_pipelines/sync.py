"""The sync engine: page through one partition upstream and land it in the store. No Dagster here."""

import contextlib
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .client import MAX_PAGE_SIZE, CivicBandClient, Page
from .leases import MunicipalityLease, SyncOwner
from .naming import validate_document_type, validate_subdomain
from .rows import PageRecord, Rejection, parse_rows
from .store import DEFAULT_BATCH_SIZES, BatchCounts, MeetingStore

# A batch (rows per commit, a checkpoint) is fetched in pages of at most MAX_PAGE_SIZE; by default
# it is the store's MeetingStore.batch_size.
MAX_BATCH_SIZE = 10_000  # the batch is held in memory until its commit
BATCH_SIZE_HELP = (
    f"Rows per commit (a checkpoint), fetched in pages of at most {MAX_PAGE_SIZE}: 1-{MAX_BATCH_SIZE}; default "
    f"{DEFAULT_BATCH_SIZES['sqlite']} on SQLite, {DEFAULT_BATCH_SIZES['postgresql']} on PostgreSQL "
    "(a tenth of the rows without the service secret: civic.band's pages then hold at most 100)."
)
DEFAULT_WINDOW_DAYS = 180  # incremental syncs cover meeting dates within this many days of today
MODES = ("full", "incremental")
BUDGET_PAUSE = "time budget"  # last_error prefix of a sync paused to be continued by a new run


@dataclass
class SyncResult:
    municipality: str
    document_type: str
    status: str = "running"
    mode: str = "full"
    generation: int = 0
    resumed_from: str | None = None  # the saved cursor this run started at, if it resumed
    batches: int = 0
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    deleted: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    @property
    def resumed(self) -> bool:
        return self.resumed_from is not None

    @property
    def rows_per_second(self) -> float:
        return self.fetched / self.elapsed if self.elapsed > 0 else 0.0

    def add(self, fetched: int, counts: BatchCounts) -> None:
        self.batches += 1
        self.fetched += fetched
        self.created += counts.created
        self.updated += counts.updated
        self.unchanged += counts.unchanged
        self.rejected += counts.rejected
        self.deleted += counts.deleted
        self.elapsed = time.monotonic() - self.started

    def summary(self) -> str:
        resumed = f", resumed at cursor {self.resumed_from!r}" if self.resumed else ""
        return (
            f"{self.municipality}/{self.document_type}: {self.mode} sync {self.status}; fetched {self.fetched}, created {self.created}, "
            f"updated {self.updated}, unchanged {self.unchanged}, rejected {self.rejected}, deleted {self.deleted} "
            f"in {self.elapsed:.1f} s ({self.rows_per_second:.0f} rows/s){resumed}"
        )


def sync_partition(
    client: CivicBandClient,
    store: MeetingStore,
    municipality: str,
    document_type: str,
    *,
    batch_size: int | None = None,
    restart: bool = False,
    mode: str = "full",
    window_days: int = DEFAULT_WINDOW_DAYS,
    time_budget: float | None = None,
    trigger: str = "cli",
    lease_wait: float = 0.0,
    run_id: str | None = None,
    retry_of: str | None = None,
    on_dead_run: Callable[[str], None] | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> SyncResult:
    """Sync one partition, resuming the saved cursor of an unfinished sync unless `restart`.

    `full` pages through the whole table; `incremental` only through meeting dates within
    `window_days` of today (a partition never fully synced gets a full sync instead). Pages that
    upstream changed replace the local ones; pages the completed sync covered but never saw upstream
    are removed, so the partition ends equal to upstream. Past `time_budget` seconds the sync stops
    at a checkpoint with status `paused` (a sensor chains a continuation run). Holds the
    municipality's lease throughout: waits up to `lease_wait` seconds while another sync has it, then
    raises MunicipalityBusy. Each batch of `batch_size` rows (default: the store's; fetched in pages
    of at most MAX_PAGE_SIZE) is committed with the cursor after it. Resuming a sync whose process
    died, it calls `on_dead_run` with that sync's run id. A retry of run `retry_of` resumes that
    run's sync, even with `restart`.
    """
    validate_subdomain(municipality)
    validate_document_type(document_type)
    batch_size = store.batch_size if batch_size is None else batch_size
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    if mode not in MODES:
        raise ValueError(f"invalid mode {mode!r}: expected one of {', '.join(MODES)}")
    log = log or logging.getLogger(__name__)
    owner = SyncOwner(document_type, mode, trigger, run_id)
    with MunicipalityLease(store, municipality, owner, wait=lease_wait, log=log) as lease:
        start = store.start_sync(
            municipality, document_type, restart=restart, run_id=run_id, mode=mode, window=_window(window_days),
            holder=lease.holder, retry_of=retry_of,
        )
        result = SyncResult(municipality, document_type, mode=start.mode, generation=start.generation)
        if start.dead_run_id and on_dead_run:
            try:
                on_dead_run(start.dead_run_id)
            except Exception as error:  # only bookkeeping about another run: the sync goes on
                log.warning("%s/%s: could not report dead run %s: %s", municipality, document_type, start.dead_run_id, error)
        if start.resumed:
            result.resumed_from = start.cursor
            log.info("%s/%s: resuming %s sync %d at cursor %r", municipality, document_type, start.mode, start.generation, start.cursor)
        elif start.mode != mode:
            log.info("%s/%s: never fully synced, so a full sync instead of an incremental one", municipality, document_type)
        _run(client, store, start, result, batch_size, time_budget, log)
    log.info("%s", result.summary())
    return result


def _run(client, store, start, result: SyncResult, batch_size: int, time_budget: float | None, log) -> None:
    municipality, document_type = result.municipality, result.document_type
    pages_per_batch = -(-batch_size // MAX_PAGE_SIZE)
    page_size = -(-batch_size // pages_per_batch)  # 4000 -> 4 pages of 1000, 1500 -> 2 of 750
    # A batch's worth of pages ahead: upstream keeps answering while the previous batch commits.
    depth = max(PREFETCH_PAGES, pages_per_batch)
    try:
        id_ranges = _id_ranges(client, store, start, municipality, document_type)  # may fail like a fetch
        pages = prefetched_pages(client, municipality, document_type, page_size, start.cursor, start.filters, depth, id_ranges)
        with contextlib.closing(pages):  # the prefetch thread stops however this ends
            out_of_time = _land(_batches(pages, pages_per_batch), store, start, result, time_budget, log)
    except Exception as error:
        result.status = "failed"
        store.stop_sync(municipality, document_type, start, "failed", f"{type(error).__name__}: {error}")
        raise
    except BaseException:  # KeyboardInterrupt, run termination: resumable, not broken
        result.status = "paused"
        store.stop_sync(municipality, document_type, start, "paused", "interrupted")
        raise
    if out_of_time:
        result.status = "paused"
        store.stop_sync(municipality, document_type, start, "paused", f"{BUDGET_PAUSE} of {time_budget:g} s reached")
    else:
        result.status = "completed"


def _id_ranges(client, store, start, municipality: str, document_type: str) -> int:
    """Upstream scans for a filter (a window): ranges of ids keep each request's scan short. Sized by
    upstream too, which can have grown far beyond the local copy (an archive loaded, out of the window)."""
    if not start.filters:
        return 1
    return client.id_ranges_for(max(store.count_pages(municipality, document_type), client.count(municipality, document_type)))


@dataclass
class Batch:
    """Consecutive upstream pages, parsed, to be committed together with the cursor after the last."""

    pages: int = 0
    records: list[PageRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    next_cursor: str | None = None

    @property
    def rows(self) -> int:  # each upstream row became a record or a rejection
        return len(self.records) + len(self.rejections)

    def add(self, page: Page) -> None:
        records, rejections = parse_rows(page.rows)  # while the prefetch thread waits for upstream
        self.pages += 1
        self.records += records
        self.rejections += rejections
        self.next_cursor = page.next_cursor


def _batches(pages: Iterator[Page], pages_per_batch: int) -> Iterator[Batch]:
    batch = Batch()
    try:
        for page in pages:
            batch.add(page)
            if batch.pages == pages_per_batch or page.next_cursor is None:
                yield batch
                batch = Batch()
    except Exception:
        if batch.pages:  # a fetch failed for good: what arrived before it is committed first
            yield batch
        raise


def _land(batches: Iterator[Batch], store: MeetingStore, start, result: SyncResult, time_budget: float | None, log) -> bool:
    """Write each batch with its cursor; True if the time budget ran out before the last page."""
    municipality, document_type = result.municipality, result.document_type
    for batch in batches:
        counts = store.write_batch(municipality, document_type, start, batch.records, batch.rejections, batch.next_cursor)
        result.add(batch.rows, counts)
        log.info(
            "%s/%s: batch %d: %d rows (%d created, %d updated, %d rejected); %d so far, %.0f rows/s",
            municipality, document_type, result.batches, batch.rows, counts.created, counts.updated,
            counts.rejected, result.fetched, result.rows_per_second,
        )
        if time_budget is not None and result.elapsed > time_budget and batch.next_cursor is not None:
            return True
    return False


def _window(days: int) -> tuple[dt.date, dt.date]:
    today = dt.date.today()
    return today - dt.timedelta(days=days), today + dt.timedelta(days=days)


PREFETCH_PAGES = 3  # default pages queued for the caller (~3 MB each); the thread holds one more while it waits


def prefetched_pages(
    client: CivicBandClient, municipality: str, document_type: str, size: int, cursor: str | None = None,
    filters: dict | None = None, depth: int = PREFETCH_PAGES, id_ranges: int = 1,
) -> Iterator[Page]:
    """The pages from `cursor` on, in order, fetched by a thread that asks for each page as soon as it
    has the cursor: upstream never waits for what the caller does with them, as long as the caller
    keeps up (the thread runs at most `depth` + 1 pages ahead of it). A fetch that fails is raised
    here after the pages before it. Closing the generator stops the thread once its current request
    is done, without retrying it (the client may be closed by then: a retry would only log errors).
    """
    fetched: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fetch_all(cursor: str | None) -> None:
        try:
            while not stop.is_set():
                page = client.fetch_page(municipality, document_type, size, cursor, filters=filters, id_ranges=id_ranges, cancel=stop)
                _hand_over(fetched, page, stop)
                if page.next_cursor is None:
                    return
                cursor = page.next_cursor
        except BaseException as error:  # raised in the consumer, which would otherwise wait forever
            _hand_over(fetched, error, stop)

    threading.Thread(target=fetch_all, args=(cursor,), name="civicband-prefetch", daemon=True).start()
    try:
        while True:
            page = fetched.get()
            if isinstance(page, BaseException):
                raise page
            yield page
            if page.next_cursor is None:
                return
    finally:
        stop.set()


def _hand_over(fetched: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():  # wait for room, unless the consumer is gone
        try:
            fetched.put(item, timeout=0.1)
            return
        except queue.Full:
            pass
