"""One sync per municipality at a time, whoever starts it (CLI, UI run, sensor run).

The Dagster run queue already keeps queued runs of one municipality apart; this guard also covers
paths that bypass the queue (the CLI, in-process runs). A holder keeps a lease row fresh with a
heartbeat; on PostgreSQL it also holds a session advisory lock on a connection of its own, which the
server drops the moment the holder dies. On SQLite a lease whose heartbeat is older than
`stale_after` belonged to a dead process and is taken over.
"""

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from .config import seconds_from_env
from .schema import sync_leases, sync_waits
from .store import LeaseLost, MeetingStore, as_utc, utcnow

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER = 90.0  # seconds without a heartbeat before a lease is presumed dead
WAIT_POLL_SECONDS = 1.0  # how often a sync waiting for a busy municipality tries again
WAIT_FOREVER = 7 * 24 * 3600.0  # a lease wait for "until it is free"


class MunicipalityBusy(Exception):
    """Another sync of this municipality is in progress."""


@dataclass(frozen=True)
class SyncOwner:
    """Who asks for the lease, for the refusal message others get."""

    document_type: str
    mode: str = "full"
    trigger: str = "cli"
    run_id: str | None = None


def stale_after_from_env() -> float:
    return seconds_from_env("CIVICBAND_LEASE_STALE_SECONDS", DEFAULT_STALE_AFTER, above_zero=True)


class MunicipalityLease:
    """Context manager holding the municipality's lease, heartbeating in the background."""

    def __init__(
        self, store: MeetingStore, municipality: str, owner: SyncOwner, *, wait: float = 0.0, stale_after: float | None = None,
        log: logging.Logger | logging.LoggerAdapter = log,
    ):
        self.store, self.municipality, self.owner, self.wait, self.log = store, municipality, owner, wait, log
        self.stale_after = stale_after or stale_after_from_env()
        self.holder = uuid.uuid4().hex
        self._lock_connection: sa.Connection | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._wait_recorded = False  # a row in sync_waits says this sync waits

    def __enter__(self) -> "MunicipalityLease":
        """Take the lease, waiting up to `wait` seconds for another sync of the municipality to end."""
        deadline = time.monotonic() + self.wait
        try:
            self._acquire()
        except MunicipalityBusy as busy:
            if time.monotonic() >= deadline:
                raise
            self._log(logging.INFO, "%s Waiting for it to end (at most %s).", busy, dt.timedelta(seconds=round(self.wait)))
            self._wait_for_lease(deadline)
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{self.municipality}", daemon=True)
        self._heartbeat.start()
        return self

    def _wait_for_lease(self, deadline: float) -> None:
        """Try again until the lease is ours or the deadline has passed. Meanwhile the wait heartbeats in
        sync_waits: should this process die waiting, settle_dead_waits finds out."""
        last_beat = -math.inf
        try:
            while True:
                if time.monotonic() - last_beat >= self.stale_after / 4:
                    self._beat_wait()
                    last_beat = time.monotonic()
                time.sleep(min(WAIT_POLL_SECONDS, self.stale_after / 4, max(0.0, deadline - time.monotonic())))
                try:
                    self._acquire()
                    return
                except MunicipalityBusy:
                    if time.monotonic() >= deadline:
                        raise
        finally:
            self._end_wait()

    def _acquire(self) -> None:
        if self.store.engine.dialect.name == "postgresql":
            self._take_advisory_lock()
        try:
            self._claim_row()
        except BaseException:
            self._release_advisory_lock()
            raise

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._heartbeat:
            self._heartbeat.join(timeout=10)
        try:
            self._remove_row()
        finally:  # else the pooled session would hold the municipality for the rest of the process
            self._release_advisory_lock()

    def _remove_row(self) -> None:
        """Remove the lease row. Should that fail (the database busy past its timeout, or away), the
        sync's outcome stands: its work is committed, and raising here would fail a finished sync or
        hide the error that ended it. The row left behind stops beating and is taken over once stale
        (on PostgreSQL at once: without the advisory lock it holds nobody back)."""
        try:
            with self.store.writer.begin() as conn:
                conn.execute(sa.delete(sync_leases).where(self._mine()))
        except sa.exc.SQLAlchemyError as error:
            self._log(logging.WARNING, "%s: could not release the lease (%s: %s); the next sync of the municipality "
                      "takes it over once it is stale (%s s without a heartbeat)", self.municipality,
                      type(error).__name__, error, f"{self.stale_after:g}")

    def _log(self, level: int, message: str, *args) -> None:
        """To the sync's log (the run's, in Dagster); should that fail (the instance's database away),
        to this module's: a heartbeat must never die of a log line."""
        try:
            self.log.log(level, message, *args)
        except Exception:
            with contextlib.suppress(Exception):
                log.log(level, message, *args)

    # -- the wait row ------------------------------------------------------------------------------

    def _beat_wait(self) -> None:
        """Record this wait, or refresh it. A failed beat (the database busy) is tried again at the next."""
        try:
            with self.store.writer.begin() as conn:
                if self._wait_recorded:
                    if conn.execute(sa.update(sync_waits).where(sync_waits.c.holder == self.holder)
                                    .values(heartbeat_at=_clock(conn))).rowcount == 0:
                        raise LeaseLost(self._wait_settled())
                else:
                    conn.execute(sync_waits.insert().values(
                        holder=self.holder, municipality=self.municipality, document_type=self.owner.document_type,
                        run_id=self.owner.run_id, host=socket.gethostname(), pid=os.getpid(),
                        heartbeat_at=_clock(conn),
                    ))
            self._wait_recorded = True
        except sa.exc.IntegrityError:  # an insert that failed to report but landed: the row is there
            self._wait_recorded = True
        except sa.exc.SQLAlchemyError as error:
            self._log(logging.WARNING, "%s: heartbeat of this sync's wait failed (%s: %s)", self.municipality, type(error).__name__, error)

    def _end_wait(self) -> None:
        """Remove the wait row if it is still there (given up, Ctrl-C); _claim_row removes it with the claim."""
        if not self._wait_recorded:
            return
        try:
            with self.store.writer.begin() as conn:
                conn.execute(sa.delete(sync_waits).where(sync_waits.c.holder == self.holder))
        except sa.exc.SQLAlchemyError as error:
            self._log(logging.WARNING, "%s: could not remove this sync's wait (%s: %s)", self.municipality, type(error).__name__, error)

    def _wait_settled(self) -> str:
        return (f"{self.municipality}: this sync's wait for the municipality was taken for dead (its heartbeat went "
                "stale) and its run reported failed, which a daemon's run retries; it stops rather than sync beside that")

    # -- PostgreSQL: the lock dies with its connection ----------------------------------------------

    def _take_advisory_lock(self) -> None:
        connection = _try_advisory_lock(self.store, self.municipality)
        if connection is None:
            raise MunicipalityBusy(refusal(self.municipality, self.store.lease(self.municipality)))
        self._lock_connection = connection

    def _release_advisory_lock(self) -> None:
        if self._lock_connection is not None:
            # Unlocked first: the server lets go of a closed session's locks only once its backend has
            # noticed, so the next sync of the municipality, started right after, could be turned away.
            with contextlib.suppress(Exception):  # a session that is gone holds no lock
                self._lock_connection.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            self._lock_connection.invalidate()  # closing the session releases the lock for sure
            self._lock_connection = None

    # -- the lease row ----------------------------------------------------------------------------

    def _claim_row(self) -> None:
        now = utcnow()
        with self.store.writer.begin() as conn:
            current = conn.execute(sa.select(sync_leases).where(sync_leases.c.municipality == self.municipality)).first()
            # Under the advisory lock a leftover row can only belong to a dead holder.
            if current and self._lock_connection is None and not is_stale(current.heartbeat_at, self.stale_after, now):
                raise MunicipalityBusy(refusal(self.municipality, dict(current._mapping), now))
            if current:
                conn.execute(sa.delete(sync_leases).where(sync_leases.c.municipality == self.municipality))
            conn.execute(sync_leases.insert().values(
                municipality=self.municipality, holder=self.holder, document_type=self.owner.document_type,
                mode=self.owner.mode, trigger=self.owner.trigger, run_id=self.owner.run_id,
                host=socket.gethostname(), pid=os.getpid(), started_at=now, heartbeat_at=now,
            ))
            # The wait ends with the claim, in one transaction: a wait row never outlives its wait.
            waited = conn.execute(sa.delete(sync_waits).where(sync_waits.c.holder == self.holder)).rowcount
            if self._wait_recorded and not waited:  # settle_dead_waits removed it: rolls the claim back
                raise LeaseLost(self._wait_settled())
        self._wait_recorded = False

    def _beat(self) -> None:
        # A failed beat (say, the database busy) is retried at the next one rather than ending the
        # heartbeat. Should the lease go stale and be taken over all the same, the sync's next write
        # finds out (store.LeaseLost) and stops.
        while not self._stop.wait(self.stale_after / 4):
            try:
                with self.store.writer.begin() as conn:
                    beat = conn.execute(sa.update(sync_leases).where(self._mine()).values(heartbeat_at=utcnow()))
            except Exception as error:
                self._log(logging.WARNING, "%s: lease heartbeat failed (%s: %s); retrying", self.municipality, type(error).__name__, error)
                continue
            if beat.rowcount == 0:
                self._log(logging.ERROR, "%s: another sync took over this sync's lease; its next write stops it", self.municipality)
                return

    def _mine(self):
        return sa.and_(sync_leases.c.municipality == self.municipality, sync_leases.c.holder == self.holder)


def active_lease(store: MeetingStore, municipality: str, stale_after: float | None = None) -> dict | None:
    """The lease of a sync of this municipality that is alive right now, or None."""
    if store.engine.dialect.name == "postgresql":
        return (store.lease(municipality) or {}) if _advisory_lock_held(store, municipality) else None
    lease = store.lease(municipality)
    return lease if lease and not is_stale(lease["heartbeat_at"], stale_after or stale_after_from_env()) else None


def _try_advisory_lock(store: MeetingStore, municipality: str) -> sa.Connection | None:
    """A connection holding the municipality's session advisory lock, or None if another session has it."""
    connection = store.engine.connect()
    if not connection.execute(sa.text("select pg_try_advisory_lock(:key)"), {"key": _lock_key(municipality)}).scalar():
        connection.close()
        return None
    connection.commit()  # end the implicit transaction; the session lock stays
    return connection


def _advisory_lock_held(store: MeetingStore, municipality: str) -> bool:
    """Some session holds the municipality's advisory lock. Read from pg_locks: a probe that took the
    lock itself, however briefly, would turn away a sync starting at that moment."""
    key = _lock_key(municipality) % 2**64  # pg_locks shows a bigint key as two unsigned halves
    query = sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid::bigint = :high AND objid::bigint = :low)"
    )
    with store.engine.connect() as conn:
        return conn.execute(query, {"high": key >> 32, "low": key % 2**32}).scalar()


def _lock_key(municipality: str) -> int:
    return int.from_bytes(hashlib.sha256(municipality.encode()).digest()[:8], "big", signed=True)


def is_stale(heartbeat_at: dt.datetime, stale_after: float, now: dt.datetime | None = None) -> bool:
    return ((now or utcnow()) - as_utc(heartbeat_at)).total_seconds() > stale_after


def refusal(municipality: str, lease: dict | None, now: dt.datetime | None = None) -> str:
    """The message the original system promised, with who holds the municipality."""
    if not lease:
        return f"Backfill already in progress for {municipality}. Check the UI or wait."
    minutes = int(((now or utcnow()) - as_utc(lease["started_at"])).total_seconds() // 60)
    ago = "just now" if minutes < 1 else f"{minutes} minute{'s' if minutes != 1 else ''} ago"
    run = f"run {lease['run_id']}" if lease.get("run_id") else f"pid {lease['pid']} on {lease['host']}"
    return (
        f"Backfill already in progress for {municipality} (started: {ago}). "
        f"Active: {lease['trigger']} {run}, {lease['document_type']} {lease['mode']} mode. Check the UI or wait."
    )


def settle_dead_syncs(store: MeetingStore, stale_after: float | None = None, report=None) -> list[dict]:
    """Mark `running` jobs whose municipality has no live lease as failed: their process died.

    A sync takes its lease before it updates its job, so a job still as it was read before its lease
    was found dead is dead; one that started meanwhile is left alone. The saved cursor stays, so the
    next run resumes. Each dead job is first given to `report(job)`; one whose report fails is logged
    and left `running`, to be found again next time. Returns the settled jobs.
    """
    running = store.running_jobs()
    live = {m for m in {job["municipality"] for job in running} if active_lease(store, m, stale_after) is not None}
    settled = []
    for job in running:
        if job["municipality"] not in live and _reported(report, job):
            settled += store.fail_jobs_as_read(
                [job], error="the sync stopped without reporting (process killed?); the next run resumes at its cursor",
            )
    return settled


def waiting_syncs(store: MeetingStore) -> list[dict]:
    """The syncs waiting for a busy municipality, live or dead."""
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(sync_waits))]


def settle_dead_waits(store: MeetingStore, stale_after: float | None = None, report=None) -> list[dict]:
    """Remove and return the waits whose heartbeat is stale: their process died waiting, and such a run
    holds no lease for settle_dead_syncs to find. Each is removed as read, so a wait that beats
    meanwhile is left alone, and two settlers at once report it once. Each removed wait is then given
    to `report(wait)`; one whose report fails is logged and put back as it was, to be found again."""
    stale_after = stale_after or stale_after_from_env()
    with store.engine.connect() as conn:
        now = _clock(conn)
    stale = [wait for wait in waiting_syncs(store) if is_stale(wait["heartbeat_at"], stale_after, now)]
    dead = []
    for wait in stale:
        with store.writer.begin() as conn:
            settled = conn.execute(sa.delete(sync_waits).where(
                sync_waits.c.holder == wait["holder"], sync_waits.c.heartbeat_at == wait["heartbeat_at"]))
        if not settled.rowcount:
            continue
        try:
            reported = _reported(report, wait)
        except BaseException:  # Ctrl-C, shutdown: not reported either
            _put_back(store, wait)
            raise
        if reported:
            dead.append(wait)
        else:
            _put_back(store, wait)
    return dead


def _put_back(store: MeetingStore, wait: dict) -> None:
    """Restore a removed wait whose run was not reported, for the next settler. A row left unused (its
    sync stopped meanwhile, on finding the row gone) is harmless: reporting a run that already shows
    failed is a no-op, and the row goes."""
    try:
        with store.writer.begin() as conn:
            conn.execute(sync_waits.insert().values(**wait))
    except sa.exc.IntegrityError:
        pass  # the waiter recorded itself again meanwhile: the row is there
    except sa.exc.SQLAlchemyError as error:
        log.warning("%s: could not put back the wait of run %s (%s: %s): it will not be reported again",
                    wait["municipality"], wait["run_id"], type(error).__name__, error)


def _reported(report, dead: dict) -> bool:
    """Whether `report(dead)` (if any) succeeded; a failure is logged: the next settler tries again."""
    try:
        if report:
            report(dead)
        return True
    except Exception as error:
        log.warning("%s/%s: could not report the dead run %s (%s: %s); trying again next time", dead["municipality"],
                    dead["document_type"], dead["run_id"], type(error).__name__, error)
        return False


def _clock(conn: sa.Connection) -> dt.datetime:
    """The time waits are stamped and judged by: on PostgreSQL the server's, since waits are judged on
    other hosts (the sensor's) than they beat on; on SQLite (one machine) this host's."""
    return conn.execute(sa.select(sa.func.now())).scalar_one() if conn.dialect.name == "postgresql" else utcnow()
