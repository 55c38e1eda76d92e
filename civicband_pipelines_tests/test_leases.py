"""The municipality lease on SQLite and PostgreSQL: refusals, waiting, dead holders."""

import contextlib
import datetime as dt
import logging
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from civicband_pipelines import leases
from civicband_pipelines.leases import (
    MunicipalityBusy,
    MunicipalityLease,
    SyncOwner,
    active_lease,
    settle_dead_syncs,
    settle_dead_waits,
    waiting_syncs,
)
from civicband_pipelines.schema import sync_leases, sync_waits
from civicband_pipelines.store import LeaseLost

from .conftest import commit_held, record_dead_wait, wait_for_a_lock_wait, wait_until

OWNER = SyncOwner("agenda", "incremental", "webhook", "run-1")


def test_a_second_holder_is_refused_with_who_holds_it(store):
    with MunicipalityLease(store, "oakland.ca", OWNER):
        with pytest.raises(MunicipalityBusy) as refused:
            with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes")):
                pass
        assert str(refused.value) == (
            "Backfill already in progress for oakland.ca (started: just now). "
            "Active: webhook run run-1, agenda incremental mode. Check the UI or wait."
        )
        with MunicipalityLease(store, "alameda.ca", SyncOwner("agenda")):  # others go on in parallel
            assert active_lease(store, "alameda.ca") is not None
    assert active_lease(store, "oakland.ca") is None  # released


def test_a_waiting_holder_gives_up_after_its_wait(store):
    with MunicipalityLease(store, "oakland.ca", OWNER):
        started = time.monotonic()
        with pytest.raises(MunicipalityBusy):
            with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes"), wait=1.0):
                pass
        assert time.monotonic() - started >= 1.0


HOLD = """
import sys, time
from civicband_pipelines.leases import MunicipalityLease, SyncOwner
from civicband_pipelines.store import MeetingStore
with MunicipalityLease(MeetingStore(sys.argv[1]), "oakland.ca", SyncOwner("agenda"), stale_after=2):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_frees_its_municipality_without_cleanup(store, store_url):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, store_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MunicipalityBusy):
            with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes"), stale_after=2):
                pass
    finally:
        holder.kill()
        holder.wait()
    # PostgreSQL frees the advisory lock with the connection; on SQLite the lease goes stale (2 s here).
    with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes"), wait=30, stale_after=2):
        assert store.lease("oakland.ca")["document_type"] == "minutes"


WAIT = """
import sys, time
from civicband_pipelines.leases import MunicipalityLease, SyncOwner
from civicband_pipelines.store import MeetingStore
owner = SyncOwner("minutes", trigger="webhook", run_id=sys.argv[2])
with MunicipalityLease(MeetingStore(sys.argv[1]), "oakland.ca", owner, wait=600, stale_after=5):
    print("held", flush=True)
"""


def test_a_sync_that_dies_waiting_for_a_busy_municipality_is_found_by_its_stale_heartbeat(store, store_url):
    # A waiting run holds no lease: without its own heartbeat, nothing would ever learn that it died.
    with MunicipalityLease(store, "oakland.ca", OWNER, stale_after=5):
        waiters = [subprocess.Popen([sys.executable, "-c", WAIT, store_url, run], stdout=subprocess.PIPE, text=True)
                   for run in ("dies", "lives")]
        try:
            wait_until(lambda: len(waiting_syncs(store)) == 2, what="both syncs to wait")
            waiters[0].kill()
            waiters[0].wait()
            (dead,) = wait_until(lambda: settle_dead_waits(store, stale_after=5), timeout=30, what="the dead wait")
            assert (dead["run_id"], dead["municipality"], dead["document_type"]) == ("dies", "oakland.ca", "minutes")
            assert [w["run_id"] for w in waiting_syncs(store)] == ["lives"], "the live waiter heartbeats"
        except BaseException:
            for waiter in waiters:
                waiter.kill()
            raise
    assert waiters[1].stdout.readline().strip() == "held"  # it got the lease, and no longer waits
    waiters[1].wait(timeout=30)
    assert waiting_syncs(store) == []


def waiting_in_a_thread(store, stale_after: float):
    """A sync waiting for oakland.ca in a thread; returns (thread, outcome), outcome filled when it ends."""
    outcome: dict = {}

    def wait():
        try:
            with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes", run_id="waiter"), wait=60, stale_after=stale_after):
                outcome["held"] = True
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: waiting_syncs(store), what="the sync to wait")
    return thread, outcome


def test_a_wait_taken_for_dead_stops_instead_of_claiming_the_lease(store):
    # Its run has been reported failed and retried meanwhile: it must not sync beside the retry.
    with MunicipalityLease(store, "oakland.ca", OWNER):
        thread, outcome = waiting_in_a_thread(store, stale_after=60)  # next beat in 15 s: the claim finds out
        # as if it had stopped beating for a while
        (settled,) = wait_until(lambda: settle_dead_waits(store, stale_after=0.001), what="the wait settled")
        assert settled["run_id"] == "waiter" and waiting_syncs(store) == []
    thread.join(timeout=30)
    assert isinstance(outcome.get("error"), LeaseLost) and "taken for dead" in str(outcome["error"]), outcome
    assert store.lease("oakland.ca") is None, "the claim was rolled back"


def test_a_wait_taken_for_dead_stops_at_its_next_heartbeat(postgres_store):
    store = postgres_store  # the lease is an advisory lock here: the waiter's short stale_after cannot take it over
    with MunicipalityLease(store, "oakland.ca", OWNER):
        thread, outcome = waiting_in_a_thread(store, stale_after=0.4)
        wait_until(lambda: settle_dead_waits(store, stale_after=0.001), what="the wait settled")
        thread.join(timeout=30)
        assert isinstance(outcome.get("error"), LeaseLost) and "taken for dead" in str(outcome["error"]), outcome
        assert store.lease("oakland.ca")["run_id"] == "run-1"


def test_a_wait_that_beats_after_it_was_read_as_stale_is_left_alone(store, monkeypatch):
    with MunicipalityLease(store, "oakland.ca", OWNER):
        thread, outcome = waiting_in_a_thread(store, stale_after=60)
        (read,) = waiting_syncs(store)
        monkeypatch.setattr(leases, "waiting_syncs", lambda _store: [read])  # what a settler read, then:
        with store.writer.begin() as conn:  # the wait beats
            conn.execute(sa.update(sync_waits).values(heartbeat_at=read["heartbeat_at"] + dt.timedelta(seconds=1)))
        assert settle_dead_waits(store, stale_after=0.001) == []
        monkeypatch.undo()
        assert [w["holder"] for w in waiting_syncs(store)] == [read["holder"]]
    thread.join(timeout=30)
    assert outcome == {"held": True}


@pytest.mark.parametrize("skew_hours", [1, -1])
def test_postgresql_judges_waits_by_the_servers_clock(postgres_store, monkeypatch, skew_hours):
    # Waits beat in run pods and are judged in the daemon's: their clocks need not agree.
    store, real_utcnow = postgres_store, leases.utcnow
    monkeypatch.setattr(leases, "utcnow", lambda: real_utcnow() + dt.timedelta(hours=skew_hours))
    with MunicipalityLease(store, "oakland.ca", OWNER):
        thread, outcome = waiting_in_a_thread(store, stale_after=60)
        assert settle_dead_waits(store, stale_after=60) == [], "a fresh wait, by the server's clock"
    thread.join(timeout=30)
    assert outcome == {"held": True}


def test_a_wait_beats_often_enough_for_a_stale_after_below_the_poll_interval(postgres_store, monkeypatch):
    store = postgres_store  # an advisory lock: the waiter's short stale_after cannot take the lease over
    monkeypatch.setattr(leases, "WAIT_POLL_SECONDS", 2.5)
    with MunicipalityLease(store, "oakland.ca", OWNER):
        thread, outcome = waiting_in_a_thread(store, stale_after=2)  # beats every 0.5 s, not every 2.5 s poll
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert settle_dead_waits(store, stale_after=2) == []
            time.sleep(0.05)
    thread.join(timeout=30)
    assert outcome == {"held": True}


def test_a_wait_whose_report_is_interrupted_is_put_back(store):
    record_dead_wait(store, "dead-wait")

    def interrupted(_wait):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        settle_dead_waits(store, report=interrupted)
    assert [w["run_id"] for w in waiting_syncs(store)] == ["dead-wait"]


def test_running_jobs_without_a_live_lease_are_settled_as_failed(store):
    start = store.start_sync("oakland.ca", "agenda", restart=False, run_id="r1")
    assert start.generation == 1
    with MunicipalityLease(store, "oakland.ca", OWNER):
        assert settle_dead_syncs(store) == []  # alive: left alone
    old = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    with store.writer.begin() as conn:  # a lease row left behind by a process that died long ago
        conn.execute(sa.insert(sync_leases).values(
            municipality="oakland.ca", holder="gone", document_type="agenda", mode="full", trigger="cli",
            host="h", pid=1, started_at=old, heartbeat_at=old,
        ))
    if store.engine.dialect.name == "sqlite":
        assert active_lease(store, "oakland.ca") is None
    (settled,) = settle_dead_syncs(store)
    assert settled["run_id"] == "r1"
    job = store.job("oakland.ca", "agenda")
    assert job["status"] == "failed" and "process killed" in job["last_error"]


def test_a_sync_that_starts_while_dead_syncs_are_settled_is_left_alone(store):
    store.start_sync("oakland.ca", "agenda", restart=False, run_id="dead")  # their processes died: no lease
    store.start_sync("oakland.ca", "minutes", restart=False, run_id="dead too")
    running = store.running_jobs()  # what settle_dead_syncs read before it found no live lease
    with MunicipalityLease(store, "oakland.ca", OWNER) as lease:  # and right then a new sync of agenda starts
        store.start_sync("oakland.ca", "agenda", restart=False, run_id="alive", holder=lease.holder)
        settled = store.fail_jobs_as_read(running, error="dead")
        assert [job["run_id"] for job in settled] == ["dead too"]
        assert store.job("oakland.ca", "agenda")["status"] == "running"
        assert store.job("oakland.ca", "minutes")["status"] == "failed"


def test_a_sync_waiting_for_a_busy_municipality_says_so_once(store, caplog):
    with MunicipalityLease(store, "oakland.ca", OWNER):
        with caplog.at_level(logging.INFO, "civicband_pipelines.leases"), pytest.raises(MunicipalityBusy):
            with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes"), wait=2.5):
                pass
    waiting = [r.getMessage() for r in caplog.records if "Waiting for it to end (at most 0:00:02)" in r.getMessage()]
    assert len(waiting) == 1 and waiting[0].startswith("Backfill already in progress for oakland.ca"), caplog.text


@pytest.mark.parametrize("restart", [False, True])
def test_a_sync_taken_over_before_it_started_neither_starts_nor_claims_the_job(store, restart):
    """Frozen between taking its lease and starting (a laptop asleep): the sync that took over goes on.
    Else a restart would begin a new generation under it (whose completion removes the pages it wrote),
    and a resume would report it dead."""
    first = store.start_sync("oakland.ca", "agenda", restart=False, run_id="first")
    store.write_batch("oakland.ca", "agenda", first, [], [], "c1")
    before = store.job("oakland.ca", "agenda")
    with MunicipalityLease(store, "oakland.ca", OWNER) as frozen:
        with store.writer.begin() as conn:  # another sync's takeover
            conn.execute(sa.update(sync_leases).values(holder="another"))
        with pytest.raises(LeaseLost, match="another sync took over"):
            store.start_sync("oakland.ca", "agenda", restart=restart, run_id="frozen", holder=frozen.holder)
    assert store.job("oakland.ca", "agenda") == before


def test_the_heartbeat_reports_a_lost_lease_in_the_syncs_own_log(store):
    # The sync's log is the run's log in Dagster (context.log): where an operator reads about the run.
    records: list[logging.LogRecord] = []
    run_log = logging.Logger("run")
    run_log.addHandler(type("Collect", (logging.Handler,), {"emit": lambda self, record: records.append(record)})())
    with MunicipalityLease(store, "oakland.ca", OWNER, stale_after=0.4, log=run_log):
        with store.writer.begin() as conn:  # another sync's takeover
            conn.execute(sa.update(sync_leases).values(holder="another"))
        wait_until(lambda: records, what="the heartbeat to notice")
    assert [r.getMessage() for r in records] == ["oakland.ca: another sync took over this sync's lease; its next write stops it"]


def test_the_heartbeat_outlives_failed_beats_while_the_syncs_own_log_fails_too(store, caplog):
    # Dagster's run log writes to the instance's database, often on the same server as the store's:
    # both can fail at once. A log line that raises must not end the heartbeat.
    class Down(logging.Handler):
        def emit(self, record):
            raise OSError("the run's event log is down")

    run_log = logging.Logger("run")
    run_log.addHandler(Down())
    with caplog.at_level(logging.WARNING, "civicband_pipelines.leases"):
        with MunicipalityLease(store, "oakland.ca", OWNER, stale_after=0.4, log=run_log):
            with store.writer.begin() as conn:
                refuse_lease_updates(conn, True)
            wait_until(lambda: "lease heartbeat failed" in caplog.text, what="a failed beat, logged here instead")
            with store.writer.begin() as conn:
                refuse_lease_updates(conn, False)
            beat = store.lease("oakland.ca")["heartbeat_at"]
            wait_until(lambda: store.lease("oakland.ca")["heartbeat_at"] != beat, what="the heartbeat to beat again")


def refuse_lease_updates(conn: sa.Connection, refuse: bool, event: str = "UPDATE") -> None:
    """A trigger failing every update (or `event`) of sync_leases: the database refusing the heartbeat's writes."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"CREATE TRIGGER refuse BEFORE {event} ON sync_leases BEGIN SELECT RAISE(ABORT, 'refused'); END"
                             if refuse else "DROP TRIGGER refuse")
    elif refuse:
        conn.exec_driver_sql("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ "
                             "LANGUAGE plpgsql")
        conn.exec_driver_sql(f"CREATE TRIGGER refuse BEFORE {event} ON sync_leases FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        conn.exec_driver_sql("DROP TRIGGER refuse ON sync_leases")
        conn.exec_driver_sql("DROP FUNCTION refuse()")


@pytest.mark.parametrize("ending", ["finished", "failed"])
def test_a_lease_whose_row_cannot_be_removed_neither_fails_the_sync_nor_holds_the_municipality_for_good(store, caplog, ending):
    # The database refusing the release (busy past its timeout, away): the sync's own outcome stands,
    # and the row left behind holds the municipality only until it is stale (on PostgreSQL not at all).
    with caplog.at_level(logging.WARNING, "civicband_pipelines.leases"):
        with pytest.raises(RuntimeError, match="the sync's own error") if ending == "failed" else contextlib.nullcontext():
            with MunicipalityLease(store, "oakland.ca", OWNER, stale_after=2):
                with store.writer.begin() as conn:
                    refuse_lease_updates(conn, True, "DELETE")
                if ending == "failed":
                    raise RuntimeError("the sync's own error")
    assert "oakland.ca: could not release the lease (" in caplog.text
    assert "takes it over once it is stale (2 s without a heartbeat)" in caplog.text
    with store.writer.begin() as conn:
        refuse_lease_updates(conn, False, "DELETE")
    assert store.lease("oakland.ca")["run_id"] == "run-1"  # the row is left
    if store.engine.dialect.name == "sqlite":
        with pytest.raises(MunicipalityBusy):
            MunicipalityLease(store, "oakland.ca", OWNER, stale_after=2).__enter__()
    with MunicipalityLease(store, "oakland.ca", SyncOwner("minutes"), wait=30, stale_after=2):
        assert active_lease(store, "oakland.ca", stale_after=2)["document_type"] == "minutes"
    assert active_lease(store, "oakland.ca", stale_after=2) is None


def test_postgresql_looking_at_a_lease_never_turns_a_sync_away(postgres_store):
    """`civicband status` and the follow-up sensor ask whether a sync is alive (active_lease) at any time.
    Taking the advisory lock to find out, however briefly, refused a sync that started at that moment."""
    store, stop, seen = postgres_store, threading.Event(), []

    def look():
        while not stop.is_set():
            seen.append(active_lease(store, "oakland.ca"))

    looker = threading.Thread(target=look, name="looker")
    looker.start()
    try:
        wait_until(lambda: seen, what="the first look")
        for _ in range(100):
            with MunicipalityLease(store, "oakland.ca", OWNER):  # wait=0: refused at once if held
                assert active_lease(store, "oakland.ca")["run_id"] == "run-1"
    finally:
        stop.set()
        looker.join(30)
    assert active_lease(store, "oakland.ca") is None


def test_postgresql_fences_off_a_sync_that_lost_its_advisory_lock_even_mid_write(postgres_store):
    """The lock's session can die while its sync goes on (idle_session_timeout, a dropped connection);
    then another sync may take over. A batch being written holds the lease row until it commits, so the
    takeover waits for it; the sync's next batch finds the lease gone."""
    store = postgres_store
    with MunicipalityLease(store, "oakland.ca", OWNER) as first:
        start = store.start_sync("oakland.ca", "agenda", restart=False, run_id="first", holder=first.holder)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid, 30000) FROM pg_locks WHERE locktype = 'advisory'"
                                 " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        taken, done = threading.Event(), threading.Event()

        def take_over():
            with MunicipalityLease(store, "oakland.ca", SyncOwner("agenda"), stale_after=1):
                taken.set()
                assert done.wait(60)  # holds the lease to the end

        write = threading.Thread(target=store.write_batch, args=("oakland.ca", "agenda", start, [], [], "c1"), name="first-write")
        second = threading.Thread(target=take_over, name="second")
        with commit_held(store.engine, "first-write") as (held, release):
            try:
                write.start()
                assert held.wait(60), "the first sync's batch is written, not yet committed"
                second.start()
                wait_for_a_lock_wait(store.engine, taken.is_set, "the takeover to wait or finish")
                assert not taken.is_set(), "the takeover waits for the batch's commit"
                release.set()
                write.join(60)
                assert taken.wait(60)
                assert store.job("oakland.ca", "agenda")["last_cursor"] == "c1"  # committed before the takeover
                with pytest.raises(LeaseLost, match="another sync took over"):
                    store.write_batch("oakland.ca", "agenda", start, [], [], "c2")
                assert store.job("oakland.ca", "agenda")["last_cursor"] == "c1"
            finally:
                release.set()
                done.set()
                write.join(60)
                second.join(60)
