"""The `meeting_pages` asset: a thin Dagster wrapper around sync.sync_partition."""

from typing import Literal

import dagster as dg
import pydantic

from .client import UnknownMunicipality, UpstreamError
from .config import MAX_SECONDS, civicband_home, seconds_from_env
from .partitions import MUNICIPALITY, meeting_page_partitions, split_partition_key
from .leases import MunicipalityBusy
from .naming import TABLES, InvalidSubdomain
from .resources import CivicBandResource, MeetingStoreResource
from .store import LeaseLost
from .sync import BATCH_SIZE_HELP, DEFAULT_WINDOW_DAYS, MAX_BATCH_SIZE, SyncResult, sync_partition

# Runs are queued one per municipality, so the lease is only ever busy because of a sync outside the
# queue (the CLI): wait for it rather than fail.
DEFAULT_LEASE_WAIT = 30 * 60.0
TRIGGER_TAG = "civicband/trigger"  # cli / webhook / repair / continuation; UI launches have none
PROCESS_TAG = "civicband/process"  # host:pid of the `civicband` command that runs a CLI run


class SyncConfig(dg.Config):
    batch_size: int | None = pydantic.Field(None, ge=1, le=MAX_BATCH_SIZE, description=BATCH_SIZE_HELP)
    restart: bool = pydantic.Field(False, description="Ignore the saved cursor and start a new sync (a retry of this run resumes the sync it began).")
    mode: Literal["full", "incremental"] = pydantic.Field(
        "full", description="full: the whole table; incremental: meeting dates within window_days of today."
    )
    window_days: int = pydantic.Field(DEFAULT_WINDOW_DAYS, ge=1)
    # Bounded like the settings: an infinite or huge wait would overflow the sleeps it ends up in.
    time_budget_seconds: float | None = pydantic.Field(
        None, gt=0, le=MAX_SECONDS, description="Stop at a checkpoint after this long; a sensor chains a continuation run."
    )
    lease_wait_seconds: float = pydantic.Field(
        DEFAULT_LEASE_WAIT, ge=0, le=MAX_SECONDS,
        description="How long to wait while another sync (say, the CLI) holds the municipality.",
    )


@dg.asset(
    partitions_def=meeting_page_partitions,
    group_name="civicband",
    kinds={"sql"},
    owners=["team:civicband-data"],
    tags={"source": "civic.band"},
    description=(
        "Pages of civic.band meeting agendas and minutes, one partition per municipality and document "
        "type, kept equal to upstream. Each batch is committed with its cursor, so an interrupted run "
        "resumes where it stopped."
    ),
)
def meeting_pages(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    civicband: CivicBandResource,
    meeting_store: MeetingStoreResource,
) -> dg.MaterializeResult:
    municipality, document_type = split_partition_key(context.partition_key)
    trigger = context.run.tags.get(TRIGGER_TAG, "ui")
    with civicband.client() as client:
        try:
            def sync(mode: str) -> SyncResult:
                return sync_partition(
                    client,
                    meeting_store.store(),
                    municipality,
                    document_type,
                    batch_size=config.batch_size,
                    restart=config.restart,
                    mode=mode,
                    window_days=config.window_days,
                    # The budget frees run workers; the CLI syncs in the foreground until it is done.
                    time_budget=config.time_budget_seconds or (None if trigger == "cli" else default_time_budget()),
                    trigger=trigger,
                    lease_wait=config.lease_wait_seconds,
                    run_id=context.run_id,
                    retry_of=context.run.parent_run_id,  # a run retry (or re-execution) of a restart resumes it
                    on_dead_run=lambda dead: report_dead_run(context.instance, dead, context.partition_key, resumed_by=context.run_id),
                    log=context.log,
                )

            result = resumed = sync(config.mode)
            if resumed.resumed and resumed.status == "completed" and _changed_since_it_began(meeting_store.store(), municipality, document_type):
                # It went on from a cursor it had before a webhook: what the deploy changed behind it is not in it yet.
                context.log.info("%s: the resumed sync is done; now an incremental sync for the webhook received since it began", context.partition_key)
                result = sync("incremental")
        except (UpstreamError, MunicipalityBusy, InvalidSubdomain, LeaseLost) as error:  # a clear message, not a traceback
            hint = " (municipalities added in the UI or by a webhook are not checked against civic.band; `civicband municipalities add` checks)"
            raise dg.Failure(f"{error}{hint if isinstance(error, (UnknownMunicipality, InvalidSubdomain)) else ''}", allow_retries=False) from error
    source = f"{client.site_url(municipality)}/meetings/{TABLES[document_type]}"
    local_pages = meeting_store.store().count_pages(municipality, document_type)
    followed = {"resumed_sync": resumed.summary()} if result is not resumed else {}
    return dg.MaterializeResult(metadata=sync_metadata(result, source) | followed | {"dagster/row_count": local_pages})


def _changed_since_it_began(store, municipality: str, document_type: str) -> bool:
    """A webhook said upstream changed after the partition's (just completed) sync began, whatever run
    finished it (the webhook's, a continuation, the UI, the CLI). Not so when the sync was the webhook's
    own (a run retry after kill -9 resumes it), whose event was stored before the sync began."""
    return store.changed_since(municipality, store.job(municipality, document_type)["started_after_event"] or 0)


def report_dead_run(instance: dg.DagsterInstance, run_id: str, partition: str, resumed_by: str | None = None) -> None:
    """A run whose process died unreported (the code server that launched it died too, or the sync that
    takes over its partition finds it first) still shows as started, holding its municipality's slot in
    the run queue. Reported failed, it gets a run retry that resumes its sync; if run `resumed_by` has
    taken it over already, it is reported canceled instead, so that no retry does the work twice."""
    run = instance.get_run_by_id(run_id)
    if not run or run.status not in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
        return
    if resumed_by:
        instance.report_run_canceled(run, f"{partition}: the run's process died; run {resumed_by} took over its sync")
    else:
        instance.report_run_failed(run, f"{partition}: the run's process died (its heartbeat in the meetings store went stale)")


def default_time_budget() -> float | None:
    """CIVICBAND_TIME_BUDGET_SECONDS: how long one run may sync before it checkpoints and chains a continuation."""
    return seconds_from_env("CIVICBAND_TIME_BUDGET_SECONDS", None, above_zero=True)


def sync_metadata(result: SyncResult, source_url: str) -> dict:
    resumed = {"resumed_from_cursor": result.resumed_from} if result.resumed else {}
    return resumed | {
        "status": result.status,
        "mode": result.mode,
        "pages_fetched": result.fetched,
        "pages_created": result.created,
        "pages_updated": result.updated,
        "pages_unchanged": result.unchanged,
        "pages_rejected": result.rejected,
        "pages_deleted": result.deleted,
        "batches": result.batches,
        "elapsed_seconds": dg.MetadataValue.float(round(result.elapsed, 3)),
        "rows_per_second": dg.MetadataValue.float(round(result.rows_per_second, 1)),
        "resumed": result.resumed,
        "sync_generation": result.generation,
        "source": dg.MetadataValue.url(source_url),
    }


@dg.asset(
    deps=[meeting_pages],
    group_name="civicband",
    kinds={"pandas", "csv"},
    owners=["team:civicband-data"],
    description="One row per partition: status, expected and actual pages, missing, last sync and last "
    "verification. Also written as CSV (CIVICBAND_HOME/coverage.csv by default).",
)
def coverage_report(context: dg.AssetExecutionContext, meeting_store: MeetingStoreResource) -> dg.MaterializeResult:
    # Imported here: pandas costs every run worker ~0.2 s of start-up, and only this asset needs it.
    from .coverage import coverage_frame, coverage_summary, coverage_table

    frame = coverage_frame(meeting_store.store(), context.instance.get_dynamic_partitions(MUNICIPALITY))
    path = civicband_home() / "coverage.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    summary = coverage_summary(frame)
    context.log.info("coverage: %s", summary)
    return dg.MaterializeResult(
        metadata={
            **summary,  # numbers: the UI plots them across materializations
            "coverage": coverage_table(frame),
            "csv": dg.MetadataValue.path(str(path)),
        }
    )
