"""Sensors that turn stored facts into runs: webhook events, paused syncs, failed verifications."""

import hashlib
import os
import socket

import dagster as dg

from .assets import PROCESS_TAG, TRIGGER_TAG, report_dead_run
from .config import whole_number_from_env
from .leases import WAIT_FOREVER, settle_dead_syncs, settle_dead_waits
from .naming import DOCUMENT_TYPES
from .partitions import MUNICIPALITY, municipality_partitions, partition_key, partition_tags
from .resources import MeetingStoreResource
from .schema import RESUMED_STATUSES
from .store import MeetingStore, as_utc
from .sync import BUDGET_PAUSE

MAX_REPAIRS = whole_number_from_env("CIVICBAND_MAX_REPAIRS", 2, minimum=0)  # full resyncs per failing partition
# How often the daemon evaluates the sensors (tests lower it).
INTERVAL = whole_number_from_env("CIVICBAND_SENSOR_INTERVAL_SECONDS", 15)
# Events one webhook_sensor tick reads: each partition costs it a few queries, and a tick that runs
# past Dagster's sensor timeout (60 s) never advances its cursor. A fleet-wide deploy takes a few ticks.
EVENTS_PER_TICK = 200
EVENT_TAG = "civicband/event"  # the webhook event a webhook run answers
_PENDING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
_UNFINISHED = [*_PENDING, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


@dg.sensor(
    job_name="meeting_pages_job",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL,
    description="Turns civic.band update webhooks into runs: new municipalities become partitions and get a "
    "full backfill; changed ones get an incremental sync. A burst of events makes one run per partition. "
    "A changed webhook whose run gave up before its sync began gets another.",
)
def webhook_sensor(context: dg.SensorEvaluationContext, meeting_store: MeetingStoreResource) -> dg.SensorResult:
    store = meeting_store.store()
    cursor = int(context.cursor or 0)
    events = store.webhook_events_after(cursor, limit=EVENTS_PER_TICK)
    replaced = bool(events) and events[0]["id"] <= cursor
    if replaced:
        context.log.warning("the cursor (event %d) is past the meetings store's last event: a new store, whose events "
                            "are read from its first", cursor)
    missed = [] if replaced else _missed_webhook_runs(context.instance, store, handled=cursor)
    for request in missed:
        context.log.info("%s: the run for changed webhook %s gave up before its sync began; another incremental run",
                         request.partition_key, request.tags[EVENT_TAG])
    if not events:
        return dg.SensorResult(run_requests=missed) if missed else dg.SensorResult(skip_reason="no new webhook events")
    known = set(context.instance.get_dynamic_partitions(MUNICIPALITY))
    new = sorted({e["subdomain"] for e in events} - known)
    changed = sorted({e["subdomain"] for e in events if e["changed"]} | set(new))
    last_event = events[-1]["id"]
    # Unique across stores: a replaced store gives out its ids again, and the daemon drops a used key.
    key = f"webhook-{last_event}-{events[-1]['received_at']:%Y%m%dT%H%M%S%f}"
    requests = [
        _webhook_run(context.instance, store, m, d, key, last_event)
        for m in changed
        for d in DOCUMENT_TYPES
        if not _queued_sync_stands_in(context.instance, store, m, d)
    ]
    context.log.info("events up to %d: %d new municipalities, %d runs", last_event, len(new), len(requests))
    return dg.SensorResult(
        run_requests=requests + [r for r in missed if r.partition_key not in {q.partition_key for q in requests}],
        cursor=str(last_event),
        dynamic_partitions_requests=[municipality_partitions.build_add_request(new)] if new else [],
    )


def _queued_sync_stands_in(instance: dg.DagsterInstance, store: MeetingStore, municipality: str, document_type: str) -> bool:
    """A queued sync of the partition will see the latest upstream, so a webhook run would repeat it: unless
    it goes on with an unfinished sync from its cursor (a continuation, or a UI run while the job is
    unfinished), which misses what changed behind the cursor. A queued webhook run syncs again after
    such a sync (assets); a repair starts a new one."""
    runs = _pending_syncs(instance, municipality, document_type, _PENDING)
    if not runs:
        return False
    job = store.job(municipality, document_type)
    resumes = job is not None and job["status"] in RESUMED_STATUSES
    return any(not resumes or run.tags.get(TRIGGER_TAG) in ("webhook", "repair") for run in runs)


def _webhook_run(instance: dg.DagsterInstance, store: MeetingStore, municipality: str, document_type: str, key: str,
                 event_id: int) -> dg.RunRequest:
    """A full backfill only if no sync of the partition has begun: one under way (the first backfill,
    say) completes before this run starts, which then needs only the incremental pass (an incremental
    sync of a partition never fully synced becomes a full one: store.start_sync)."""
    job = store.job(municipality, document_type)
    begun = (job is not None and job["sync_generation"] > 0) or _pending_syncs(instance, municipality, document_type, _UNFINISHED)
    mode = "incremental" if begun else "full"
    return _sync_request(municipality, document_type, key, "webhook", mode=mode, event=str(event_id))


@dg.sensor(
    job_name="meeting_pages_job",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=2 * INTERVAL,
    description="Keeps job and run status true (dead syncs and their runs become failed, so run retries "
    "resume them), continues syncs paused by their time budget, "
    f"and resyncs a completed partition that fails verification (at most {MAX_REPAIRS} times in a row).",
)
def sync_followup_sensor(context: dg.SensorEvaluationContext, meeting_store: MeetingStoreResource) -> dg.SensorResult:
    store = meeting_store.store()
    settle_dead_runs(context.instance, store)
    requests = []
    for job in store.jobs():
        request = _followup(job)
        # Not while a run of the partition is unfinished: it may be the follow-up itself, whose check
        # has not run yet (a repair counted twice would shorten the repair budget).
        if (
            request
            and not _pending_syncs(context.instance, job["municipality"], job["document_type"], _UNFINISHED)
            and not _run_key_used(context.instance, request.run_key, sync_followup_sensor.name)
        ):
            if request.tags[TRIGGER_TAG] == "repair":
                store.count_repair(job["municipality"], job["document_type"])
            requests.append(request)
    return dg.SensorResult(run_requests=requests) if requests else dg.SensorResult(skip_reason="nothing to follow up")


def settle_dead_runs(instance: dg.DagsterInstance, store: MeetingStore) -> list[dict]:
    """Report the runs of dead syncs failed (assets.report_dead_run), so that Dagster's run retries
    resume them: syncs that died without a word (leases.settle_dead_syncs) and syncs that died waiting
    for a busy municipality (leases.settle_dead_waits). A report that fails (the instance's database
    away) leaves its sync to be found again next time, unless the run shows failed all the same.
    Returns the settled jobs (not the waits)."""

    def report(dead: dict) -> None:
        if not dead["run_id"]:
            return
        try:
            report_dead_run(instance, dead["run_id"], partition_key(dead["municipality"], dead["document_type"]))
        except Exception as error:
            # A report can fail after it landed: then it counts (a wait put back would let its sync go on).
            try:
                run = instance.get_run_by_id(dead["run_id"])
            except Exception:
                raise error from None  # the report's error says what went wrong
            if run is None or run.status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
                raise

    settled = settle_dead_syncs(store, report=report)
    settle_dead_waits(store, report=report)
    settle_dead_cli_runs(instance)
    return settled


def settle_dead_cli_runs(instance: dg.DagsterInstance) -> None:
    """Report failed the started CLI runs whose `civicband` command, on this host, is gone. One killed
    outside a sync (in its check step, or `civicband verify`) leaves no lease or wait to go stale, and
    would hold its municipality's run-queue slot for ever. (Another host's processes can't be seen.)"""
    runs_filter = dg.RunsFilter(tags={TRIGGER_TAG: "cli"}, statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    for record in instance.get_run_records(filters=runs_filter):
        run = record.dagster_run
        host, _, pid = run.tags.get(PROCESS_TAG, "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _is_alive(int(pid)):
            instance.report_run_failed(run, f"the civicband command that ran it (process {pid} on {host}) is gone")


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def _followup(job: dict) -> dg.RunRequest | None:
    municipality, document_type = job["municipality"], job["document_type"]
    if _paused_by_budget(job):
        # Keyed by where it resumes: batches of an incremental sync (ranges of ids) can be empty.
        at = hashlib.sha256((job["last_cursor"] or "").encode()).hexdigest()[:12]
        key = f"continue-{job['sync_generation']}-{job['pages_fetched']}-{at}"
        return _sync_request(municipality, document_type, key, "continuation", mode=job["mode"])
    if job["status"] == "completed" and job["verified_ok"] is False and job["repair_attempts"] < MAX_REPAIRS:
        key = f"repair-{job['verified_at'].isoformat()}"
        return _sync_request(municipality, document_type, key, "repair", mode="full", restart=True)
    return None


def _paused_by_budget(job: dict) -> bool:
    return job["status"] == "paused" and (job["last_error"] or "").startswith(BUDGET_PAUSE)


def _missed_webhook_runs(instance: dg.DagsterInstance, store: MeetingStore, handled: int) -> list[dg.RunRequest]:
    """Incremental runs for the changed webhooks this sensor has handled (ids up to `handled`: their runs
    were requested, or left to a queued stand-in, in an earlier tick) after which no sync of the partition
    began, with none of its runs unfinished: the run that was to sync it gave up first (the stand-in
    was canceled, the webhook's own run failed waiting for the municipality). Once per event: its run key."""
    changes = store.latest_changes()
    requests = []
    for job in store.jobs():
        municipality, document_type = job["municipality"], job["document_type"]
        event_id, received_at = changes.get(municipality, (None, None))
        if event_id is None or event_id > handled or not _missed(job, event_id):
            continue
        key = f"missed-webhook-{event_id}-{as_utc(received_at):%Y%m%dT%H%M%S%f}"
        request = _sync_request(municipality, document_type, key, "webhook", mode="incremental", event=str(event_id))
        if _pending_syncs(instance, municipality, document_type, _UNFINISHED) or _run_key_used(instance, request.run_key, webhook_sensor.name):
            continue
        # Read again after the runs: one may have synced the partition and finished since store.jobs().
        if _missed(store.job(municipality, document_type), event_id):
            requests.append(request)
    return requests


def _missed(job: dict, event_id: int) -> bool:
    """No sync of the partition is under way or began after changed webhook `event_id`, though one did before."""
    # A sync paused by its budget is continued (sync_followup_sensor), and the run that completes it
    # syncs what changed since it began (assets).
    if job["status"] == "running" or _paused_by_budget(job):
        return False
    # Set when a sync begins: None for a row no sync began (a verification's), whose canceled first
    # backfill is left alone.
    return job["started_after_event"] is not None and event_id > job["started_after_event"]


def _sync_request(municipality: str, document_type: str, key: str, trigger: str, *, mode: str, restart: bool = False, event: str | None = None) -> dg.RunRequest:
    tags = {TRIGGER_TAG: trigger, "civicband/mode": mode} | ({EVENT_TAG: event} if event else {})
    # A sensor run that finds its municipality held (by the CLI: the run queue keeps runs apart) waits
    # until it is free: given up, its run key would never be requested again.
    config = {"mode": mode, "restart": restart, "lease_wait_seconds": WAIT_FOREVER}
    return dg.RunRequest(
        run_key=f"{key}-{municipality}-{document_type}",
        partition_key=partition_key(municipality, document_type),
        run_config={"ops": {"meeting_pages": {"config": config}}},
        tags=tags,
    )


def _pending_syncs(instance: dg.DagsterInstance, municipality: str, document_type: str, statuses) -> list[dg.DagsterRun]:
    """The partition's sync runs that wait to start (with _PENDING) or have not finished (_UNFINISHED)."""
    runs_filter = dg.RunsFilter(tags=partition_tags(municipality, document_type), statuses=statuses)
    return [record.dagster_run for record in instance.get_run_records(filters=runs_filter) if _syncs(record.dagster_run)]


def _run_key_used(instance: dg.DagsterInstance, run_key: str, sensor_name: str) -> bool:
    """A run of this key exists, so the daemon would drop the request: e.g. a repair whose check could not
    run (upstream down) left verified_at as it was. Counted again, it would use up the repair budget."""
    tags = {"dagster/run_key": run_key, "dagster/sensor_name": sensor_name}  # as the daemon matches
    return bool(instance.get_run_records(dg.RunsFilter(tags=tags), limit=1))


def _syncs(run: dg.DagsterRun) -> bool:
    """meeting_pages_job, or a UI run that materializes meeting_pages (not verify_job, not a check alone)."""
    return run.job_name == "meeting_pages_job" or dg.AssetKey("meeting_pages") in (run.asset_selection or ())
