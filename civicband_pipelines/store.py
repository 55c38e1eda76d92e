"""The meetings store (SQLAlchemy Core: one code path for SQLite and PostgreSQL).

Every batch is written in one transaction together with the cursor that follows it, so a saved
cursor is never ahead of durable rows.
"""

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .engines import create_store_engine
from .migrations import upgrade
from .page_writes import write_pages
from .rows import NO_ID, PageRecord, Rejection, duplicate_rejection
from .schema import (
    RESUMED_STATUSES, backfill_jobs, meeting_pages, municipalities, rejected_rows, sync_leases, webhook_events,
)

@dataclass(frozen=True)
class SyncStart:
    generation: int
    cursor: str | None
    resumed: bool
    mode: str = "full"  # full / incremental
    window: tuple[dt.date, dt.date] | None = None  # meeting dates an incremental sync covers
    # The partition held no page when this sync generation began (a first backfill, saved in
    # backfill_jobs.started_empty): its pages are new, and none can be stale when it completes.
    fresh: bool = False
    # The municipality lease this sync holds (leases.py): its writes check it is still theirs.
    holder: str | None = None
    # The run of a sync that died while `running` (its lease is ours now): nobody else will say so.
    dead_run_id: str | None = None

    @property
    def filters(self) -> dict[str, str]:
        """Datasette filters selecting the rows this sync covers."""
        return {} if self.window is None else {"date__gte": self.window[0].isoformat(), "date__lte": self.window[1].isoformat()}


@dataclass(frozen=True)
class BatchCounts:
    created: int
    updated: int
    unchanged: int
    rejected: int
    deleted: int = 0  # stale pages removed when the batch completed the sync


class LeaseLost(RuntimeError):
    """Another sync took over this sync's municipality lease: it must not write any more."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(moment: dt.datetime) -> dt.datetime:
    """A stored time, aware: SQLite returns naive UTC."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


# Rows a sync commits at a time unless told otherwise, as measured best (bench/README.md). SQLite:
# a commit writes every index page the batch's keys landed on, and they land at random, so fewer,
# larger commits write each such page once for several keys; but the last batch is written after
# the last fetch, so larger ones slow small partitions. PostgreSQL: civic.band's page, since its
# commits are cheap and larger batches measured slower.
DEFAULT_BATCH_SIZES = {"sqlite": 4000, "postgresql": 1000}


class MeetingStore:
    def __init__(self, url: str):
        self.url = url
        self.engine = create_store_engine(url)
        self.writer = self.engine.execution_options(writer=True)
        self._merging: set[tuple[str, str, int]] = set()  # first backfills that met an existing page
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def batch_size(self) -> int:
        """Rows a sync commits at a time unless told otherwise (DEFAULT_BATCH_SIZES)."""
        return DEFAULT_BATCH_SIZES["postgresql" if self.engine.dialect.name == "postgresql" else "sqlite"]

    # -- municipalities -------------------------------------------------------------------------

    def upsert_municipality(self, subdomain: str, fields: dict) -> tuple[dict, bool]:
        """Insert or update a municipality's fields; returns (stored row, created)."""
        with self.writer.begin() as conn:
            return self._upsert_municipality(conn, subdomain, fields)

    def _upsert_municipality(self, conn: sa.Connection, subdomain: str, fields: dict) -> tuple[dict, bool]:
        query = sa.select(municipalities).where(municipalities.c.subdomain == subdomain)
        created = conn.execute(query).first() is None
        values = {k: v for k, v in fields.items() if k in municipalities.c and k != "subdomain"}
        if created:
            conn.execute(municipalities.insert().values(subdomain=subdomain, **values))
        elif values:
            conn.execute(
                municipalities.update().where(municipalities.c.subdomain == subdomain).values(**values, updated_at=utcnow())
            )
        return dict(conn.execute(query).one()._mapping), created

    def record_webhook(self, subdomain: str, fields: dict) -> tuple[dict, bool, int]:
        """Store a webhook's municipality fields and its event in one transaction.

        Returns (stored municipality, created, event id). The event is `changed` when the
        municipality is new or its page count or last_updated differ from before.
        """
        with self.writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Ids come from a sequence at INSERT, not at commit. Serializing event writers until
                # commit (SELECTs are not blocked) makes ids commit in order, so the sensor's cursor
                # can never pass an event still being committed. (SQLite writers are serial anyway.)
                conn.exec_driver_sql("LOCK TABLE webhook_events IN SHARE ROW EXCLUSIVE MODE")
            before = conn.execute(sa.select(municipalities).where(municipalities.c.subdomain == subdomain)).first()
            stored, created = self._upsert_municipality(conn, subdomain, fields)
            changed = created or any(getattr(before, k) != stored[k] for k in ("pages", "last_updated"))
            event_id = conn.execute(
                webhook_events.insert().values(
                    subdomain=subdomain, action="created" if created else "updated", changed=changed,
                    payload=json.dumps(fields), received_at=utcnow(),
                )
            ).inserted_primary_key[0]
            return stored, created, event_id

    def webhook_events_after(self, event_id: int, limit: int = 1000) -> list[dict]:
        """Events after `event_id` in id order. A cursor past the last event was kept from a replaced
        store (a new file; SQLite to PostgreSQL): all of this one's events are new to it."""
        events = webhook_events.c
        with self.engine.connect() as conn:
            if event_id > (conn.execute(sa.select(sa.func.max(events.id))).scalar() or 0):
                event_id = 0
            query = sa.select(webhook_events).where(events.id > event_id).order_by(events.id).limit(limit)
            return [dict(r._mapping) for r in conn.execute(query)]

    def changed_since(self, subdomain: str, event_id: int) -> bool:
        """A webhook stored after event `event_id` said upstream has something new for `subdomain`."""
        events = webhook_events.c
        query = sa.select(events.id).where(events.subdomain == subdomain, events.changed, events.id > event_id)
        with self.engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def latest_changes(self) -> dict[str, tuple[int, dt.datetime]]:
        """Per municipality, its latest webhook that said upstream has something new: (event id, received_at)."""
        events = webhook_events.c
        # The latest ids from the index alone (ix_webhook_events_changes), then one row per municipality.
        latest = sa.select(sa.func.max(events.id).label("id")).where(events.changed).group_by(events.subdomain).subquery()
        query = sa.select(events.subdomain, events.id, events.received_at).join(latest, events.id == latest.c.id)
        with self.engine.connect() as conn:
            return {subdomain: (event_id, at) for subdomain, event_id, at in conn.execute(query)}

    def municipality_subdomains(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(municipalities.c.subdomain).order_by(municipalities.c.subdomain)).scalars())

    # -- sync lifecycle -------------------------------------------------------------------------

    def start_sync(
        self,
        municipality: str,
        document_type: str,
        *,
        restart: bool,
        run_id: str | None,
        mode: str = "full",
        window: tuple[dt.date, dt.date] | None = None,
        holder: str | None = None,
        retry_of: str | None = None,
    ) -> SyncStart:
        """Resume the partition's unfinished sync (in its own mode) at its saved cursor, or begin a new one.

        `restart` begins a new one, unless the unfinished sync is that of run `retry_of` (the run this
        one retries, with the same config): a retry of a crashed restart resumes what the restart began.
        An incremental sync of a partition that never completed a full sync becomes a full sync.
        """
        with self.writer.begin() as conn:
            # A sync that froze between taking its lease and here may have been taken over meanwhile:
            # it must not start a generation or claim the job under the sync that goes on.
            _check_lease(conn, municipality, document_type, holder)
            job = self._job_row(conn, municipality, document_type)
            if job is None:
                self._insert_job(conn, municipality, document_type)
                job = self._job_row(conn, municipality, document_type)
            values = {"status": "running", "run_id": run_id, "last_error": None, "updated_at": utcnow()}
            own = retry_of is not None and job.run_id == retry_of
            if job.status in RESUMED_STATUSES and job.sync_generation > 0 and (own or not restart):
                saved_window = (job.window_start, job.window_end) if job.mode == "incremental" else None
                start = SyncStart(job.sync_generation, job.last_cursor, job.last_cursor is not None, job.mode, saved_window,
                                  fresh=bool(job.started_empty), holder=holder)
                if job.last_cursor is None:  # none of it committed: it begins now, after the webhooks stored so far
                    values["started_after_event"] = conn.execute(_LAST_EVENT).scalar_one()
            else:
                if mode == "incremental" and job.full_synced_at is None:
                    mode, window = "full", None
                empty = not self._has_pages(conn, municipality, document_type)
                start = SyncStart(job.sync_generation + 1, None, False, mode, window if mode == "incremental" else None,
                                  fresh=empty, holder=holder)
                values |= _fresh_sync_values(start, conn.execute(_LAST_EVENT).scalar_one())
            conn.execute(_job_update(municipality, document_type).values(**values))
            if job.status == "running" and job.run_id not in (None, run_id):
                start = dataclasses.replace(start, dead_run_id=job.run_id)
            return start

    def write_batch(
        self,
        municipality: str,
        document_type: str,
        sync: SyncStart,
        records: list[PageRecord],
        rejections: list[Rejection],
        next_cursor: str | None,
    ) -> BatchCounts:
        """Upsert one batch, record its rejections and save `next_cursor`, atomically.

        `next_cursor` None means this was the last page: the sync completes in the same
        transaction, removing the pages this sync never saw upstream.
        """
        records, duplicates = _dedupe_by_key(records)
        rejections = rejections + duplicates if duplicates else rejections
        partition = {"municipality": municipality, "document_type": document_type, "sync_generation": sync.generation}
        with self.writer.begin() as conn:
            _check_lease(conn, municipality, document_type, sync.holder)
            created = updated = unchanged = 0
            if records:
                created, updated, unchanged = self._write_pages(conn, municipality, document_type, sync, records)
            if rejections:
                unique = {r.upstream_id: r for r in rejections}.values()  # one statement touches a row once
                conn.execute(self._upsert_rejections(), [_rejection_values(partition, r) for r in unique])
            counts = BatchCounts(created, updated, unchanged, len(rejections))
            if next_cursor is None:
                counts = dataclasses.replace(counts, deleted=self._finish(conn, municipality, document_type, sync, created))
            conn.execute(
                _job_update(municipality, document_type).values(
                    last_cursor=next_cursor,
                    pages_fetched=backfill_jobs.c.pages_fetched + len(records) + len(rejections),
                    pages_created=backfill_jobs.c.pages_created + counts.created,
                    pages_updated=backfill_jobs.c.pages_updated + counts.updated,
                    pages_unchanged=backfill_jobs.c.pages_unchanged + counts.unchanged,
                    pages_deleted=backfill_jobs.c.pages_deleted + counts.deleted,
                    rejected_count=backfill_jobs.c.rejected_count + counts.rejected,
                    updated_at=utcnow(),
                )
            )
            return counts

    def _write_pages(self, conn, municipality: str, document_type: str, sync: SyncStart, records) -> tuple[int, int, int]:
        # A first backfill goes straight into the table until a page turns out to exist already
        # (upstream rebuilt behind the cursor, or repeats a page key); from then on it merges.
        partition = (municipality, document_type, sync.generation)
        direct = sync.fresh and partition not in self._merging
        written = write_pages(conn, municipality, document_type, sync.generation, records, direct=direct, now=utcnow())
        if written.merged:
            self._merging.add(partition)
        return written.created, written.updated, written.unchanged

    def stop_sync(self, municipality: str, document_type: str, sync: SyncStart, status: str, error: str | None) -> None:
        """Mark an interrupted sync `failed` or `paused`; its cursor stays for the next run. (One that lost
        its lease leaves the job to the sync that took over.)"""
        with self.writer.begin() as conn:
            if not _holds_lease(conn, municipality, sync.holder):
                return
            conn.execute(
                _job_update(municipality, document_type)
                .where(backfill_jobs.c.status == "running")
                .values(status=status, last_error=error, finished_at=utcnow(), updated_at=utcnow())
            )

    def running_jobs(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(backfill_jobs).where(backfill_jobs.c.status == "running"))]

    def fail_jobs_as_read(self, jobs: list[dict], error: str) -> list[dict]:
        """Mark these running jobs failed, each only if unchanged since read (same `updated_at`): a
        sync that started meanwhile updated its job. Returns the jobs failed, as they were read."""
        failed = []
        with self.writer.begin() as conn:
            for job in jobs:
                as_read = _job_update(job["municipality"], job["document_type"]).where(
                    backfill_jobs.c.status == "running", backfill_jobs.c.updated_at == job["updated_at"]
                )
                if conn.execute(as_read.values(status="failed", last_error=error, updated_at=utcnow())).rowcount:
                    failed.append(job)
        return failed

    def _finish(self, conn: sa.Connection, municipality: str, document_type: str, sync: SyncStart, created: int) -> int:
        """Complete the sync: remove the pages (and rejections) it covered but never saw upstream.

        `created`: the pages this last batch created, not yet in the job's counters.
        """
        if not sync.window:
            conn.execute(_stale(rejected_rows, municipality, document_type, sync.generation))
        else:
            _delete_stale_rejections_in_window(conn, municipality, document_type, sync)
        if sync.fresh:  # began empty, under the lease: nothing is stale, and it holds what it created
            deleted, actual = 0, backfill_jobs.c.pages_created + created  # no scan of the partition
        else:
            stale_pages = _stale(meeting_pages, municipality, document_type, sync.generation)
            if sync.window:
                stale_pages = stale_pages.where(meeting_pages.c.meeting_date.between(*sync.window))
            deleted, actual = conn.execute(stale_pages).rowcount, self._count(conn, municipality, document_type)
        done = {"status": "completed", "last_cursor": None, "finished_at": utcnow()}
        if sync.mode == "full":
            done["full_synced_at"] = done["finished_at"]
        conn.execute(_job_update(municipality, document_type).values(actual_count=actual, **done))
        return deleted

    # -- reads ----------------------------------------------------------------------------------

    def job(self, municipality: str, document_type: str) -> dict | None:
        with self.engine.connect() as conn:
            row = self._job_row(conn, municipality, document_type)
            return dict(row._mapping) if row else None

    def jobs(self) -> list[dict]:
        query = sa.select(backfill_jobs).order_by(backfill_jobs.c.municipality, backfill_jobs.c.document_type)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count_pages(self, municipality: str, document_type: str) -> int:
        with self.engine.connect() as conn:
            return self._count(conn, municipality, document_type)

    def iter_pages(self, municipality: str, document_type: str) -> Iterator[dict]:
        """All local pages of a partition, streamed in upstream-id order."""
        partition = _in_partition(meeting_pages, municipality, document_type)
        query = sa.select(meeting_pages).where(*partition).order_by(meeting_pages.c.upstream_id)
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query):
                yield dict(row._mapping)

    def lease(self, municipality: str) -> dict | None:
        """The sync lease row of a municipality, if any (see leases.py)."""
        query = sa.select(sync_leases).where(sync_leases.c.municipality == municipality)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            return dict(row._mapping) if row else None

    def iter_page_ids(self, municipality: str, document_type: str, chunk_rows: int = 5000) -> Iterator[tuple]:
        """(upstream_id, meeting_name, meeting_date, (page_image, entities_json, votes_json)) of every local
        page in upstream's id order, for verification; read in chunks, each a short read: a deep check can
        take hours (without the service secret), and one long read holds off SQLite's WAL reset and vacuum."""
        pages = meeting_pages.c
        query = (sa.select(pages.upstream_id, pages.meeting_name, pages.meeting_date, pages.page_image,
                           pages.entities_json, pages.votes_json, pages.id)
                 .where(*_in_partition(meeting_pages, municipality, document_type))
                 .order_by(pages.upstream_id, pages.id).limit(chunk_rows))  # byte order (schema.py); ids repeat
        after = ()
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(query.where(*after)).all()
            yield from ((upstream_id, meeting, date, tuple(compared)) for upstream_id, meeting, date, *compared, _ in rows)
            if len(rows) < chunk_rows:
                return
            after = (sa.tuple_(pages.upstream_id, pages.id) > (rows[-1].upstream_id, rows[-1].id),)  # the next chunk

    def rejected_ids(self, municipality: str, document_type: str) -> set[str]:
        query = sa.select(rejected_rows.c.upstream_id).where(*_in_partition(rejected_rows, municipality, document_type))
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def record_verification(
        self, municipality: str, document_type: str, expected: int, actual: int, passed: bool, at: dt.datetime
    ) -> None:
        """Store a verification result; the job's status is left alone so nothing is ever blocked."""
        values = {"expected_count": expected, "actual_count": actual, "verified_ok": passed, "verified_at": at}
        if passed:
            values["repair_attempts"] = 0
        with self.writer.begin() as conn:
            if conn.execute(_job_update(municipality, document_type).values(**values, updated_at=utcnow())).rowcount == 0:
                self._insert_job(conn, municipality, document_type, **values)

    def count_repair(self, municipality: str, document_type: str) -> None:
        with self.writer.begin() as conn:
            conn.execute(_job_update(municipality, document_type).values(repair_attempts=backfill_jobs.c.repair_attempts + 1))

    def rejected_counts(self) -> dict[tuple[str, str], int]:
        """(municipality, document_type) -> rows currently rejected."""
        partition = (rejected_rows.c.municipality, rejected_rows.c.document_type)
        query = sa.select(*partition, sa.func.count()).group_by(*partition)
        with self.engine.connect() as conn:
            return {(m, d): n for m, d, n in conn.execute(query)}

    def rejections(self, municipality: str, document_type: str) -> list[dict]:
        query = sa.select(rejected_rows).where(*_in_partition(rejected_rows, municipality, document_type))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(rejected_rows.c.upstream_id))]

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _job_row(conn: sa.Connection, municipality: str, document_type: str):
        query = sa.select(backfill_jobs).where(*_in_partition(backfill_jobs, municipality, document_type))
        return conn.execute(query).first()

    @staticmethod
    def _insert_job(conn: sa.Connection, municipality: str, document_type: str, **values) -> None:
        """A partition's job row. Its generations continue above any pages or rejections left from a
        job row now gone: a reused generation would let those stale rows pass as seen."""
        generation = max(
            conn.execute(
                sa.select(sa.func.max(table.c.sync_generation)).where(*_in_partition(table, municipality, document_type))
            ).scalar_one() or 0
            for table in (meeting_pages, rejected_rows)
        )
        conn.execute(backfill_jobs.insert().values(municipality=municipality, document_type=document_type,
                                                   sync_generation=generation, **values))

    @staticmethod
    def _has_pages(conn: sa.Connection, municipality: str, document_type: str) -> bool:
        page = sa.select(meeting_pages.c.id).where(*_in_partition(meeting_pages, municipality, document_type))
        return conn.execute(sa.select(page.exists())).scalar_one()

    @staticmethod
    def _count(conn: sa.Connection, municipality: str, document_type: str) -> int:
        query = sa.select(sa.func.count()).select_from(meeting_pages).where(*_in_partition(meeting_pages, municipality, document_type))
        return conn.execute(query).scalar_one()

    def _upsert_rejections(self):
        insert = self._insert(rejected_rows)
        updated = {name: insert.excluded[name] for name in ("reason", "raw", "sync_generation", "rejected_at")}
        return insert.on_conflict_do_update(index_elements=["municipality", "document_type", "upstream_id"], set_=updated)

    def _insert(self, table: sa.Table):
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)


def _in_partition(table: sa.Table, municipality: str, document_type: str) -> tuple:
    return (table.c.municipality == municipality, table.c.document_type == document_type)


def _partition_update(table: sa.Table, municipality: str, document_type: str):
    return sa.update(table).where(*_in_partition(table, municipality, document_type))


def _stale(table: sa.Table, municipality: str, document_type: str, generation: int):
    return sa.delete(table).where(*_in_partition(table, municipality, document_type), table.c.sync_generation != generation)


def _delete_stale_rejections_in_window(conn: sa.Connection, municipality: str, document_type: str, sync: SyncStart) -> None:
    """An incremental sync saw every upstream row whose date is within its window, compared as text
    as civic.band compares it: an older rejection dated there was fixed or removed upstream. Rows
    without an id are left to full syncs: one paging through ranges of ids never sees them (NULL is in
    no range)."""
    start, end = (day.isoformat() for day in sync.window)
    older = sa.select(rejected_rows.c.id, rejected_rows.c.raw).where(
        *_in_partition(rejected_rows, municipality, document_type), rejected_rows.c.sync_generation != sync.generation,
        rejected_rows.c.upstream_id.not_like(f"{NO_ID}%"),
    )
    stale = [row_id for row_id, raw in conn.execute(older) if start <= _raw_date(raw) <= end]
    for chunk in range(0, len(stale), 900):  # within SQLite's limit on bound parameters (999 before 3.32)
        conn.execute(sa.delete(rejected_rows).where(rejected_rows.c.id.in_(stale[chunk:chunk + 900])))


def _raw_date(raw: str) -> str:
    """The date of a rejected row as upstream has it; "" (before any window) if it has no text date."""
    try:
        row = json.loads(raw)
    except ValueError:
        return ""
    date = row.get("date") if isinstance(row, dict) else None
    return date if isinstance(date, str) else ""


def _job_update(municipality: str, document_type: str):
    return _partition_update(backfill_jobs, municipality, document_type)


def _holds_lease(conn: sa.Connection, municipality: str, holder: str | None) -> bool:
    """`holder` still holds the municipality's lease, read in the writer's transaction so that a
    takeover (leases.py replaces the row) cannot slip in before it commits: SQLite has one writer at a
    time, and on PostgreSQL the row stays share-locked (FOR SHARE) until commit."""
    if holder is None:  # a caller without a lease (tests of the store itself)
        return True
    query = sa.select(sync_leases.c.holder).where(sync_leases.c.municipality == municipality)
    return conn.execute(query.with_for_update(read=True)).scalar() == holder


def _check_lease(conn: sa.Connection, municipality: str, document_type: str, holder: str | None) -> None:
    if not _holds_lease(conn, municipality, holder):
        raise LeaseLost(
            f"{municipality}/{document_type}: another sync took over the municipality's lease (this one "
            "stopped heartbeating: suspended, or stalled?); stopping without writing, the other sync goes on"
        )


# Webhook events commit in id order (record_webhook), so every event after this one is stored later.
_LAST_EVENT = sa.select(sa.func.coalesce(sa.func.max(webhook_events.c.id), 0))


def _fresh_sync_values(start: SyncStart, last_event: int) -> dict:
    counters = ("pages_fetched", "pages_created", "pages_updated", "pages_unchanged", "pages_deleted", "rejected_count")
    window_start, window_end = start.window or (None, None)
    return {
        "sync_generation": start.generation, "mode": start.mode, "window_start": window_start, "window_end": window_end,
        "started_empty": start.fresh, "last_cursor": None, "started_at": utcnow(), "started_after_event": last_event,
        "finished_at": None,
    } | dict.fromkeys(counters, 0)


def _dedupe_by_key(records: list[PageRecord]) -> tuple[list[PageRecord], list[Rejection]]:
    """One row per page key (one statement may not touch a row twice: PostgreSQL ON CONFLICT). The
    later row wins, as it would from a later batch; an earlier one with another id becomes a rejection,
    so that it is kept and counted (the check adds rejections to the pages)."""
    unique = {(r.meeting_name, r.meeting_date, r.page_number): r for r in records}
    if len(unique) == len(records):  # nearly always
        return records, []
    duplicates = []
    for record in records:
        kept = unique[(record.meeting_name, record.meeting_date, record.page_number)]
        if record is not kept and record.upstream_id != kept.upstream_id:
            duplicates.append(duplicate_rejection(record, kept))
    return list(unique.values()), duplicates


def _rejection_values(partition: dict, rejection: Rejection) -> dict:
    return partition | {"upstream_id": rejection.upstream_id, "reason": rejection.reason, "raw": rejection.raw, "rejected_at": utcnow()}
