"""The Dagster code location: `dagster dev -m civicband_pipelines.definitions`."""

import dagster as dg

from .assets import coverage_report, meeting_pages
from .checks import matches_upstream
from .loggers import terminal_logger
from .partitions import meeting_page_partitions
from .resources import CivicBandResource, MeetingStoreResource
from .sensors import sync_followup_sensor, webhook_sensor

meeting_pages_job = dg.define_asset_job(
    "meeting_pages_job",
    selection=dg.AssetSelection.assets(meeting_pages),  # with its check
    partitions_def=meeting_page_partitions,
    description="Full sync of meeting_pages partitions (resumes a partition's unfinished sync), then verification.",
)

verify_job = dg.define_asset_job(
    "verify_job",
    selection=dg.AssetSelection.checks(matches_upstream),
    partitions_def=meeting_page_partitions,
    description="Only the exact verification of meeting_pages partitions: syncs nothing (ids are compared on a mismatch).",
)

defs = dg.Definitions(
    assets=[meeting_pages, coverage_report],
    asset_checks=[matches_upstream],
    jobs=[meeting_pages_job, verify_job],
    sensors=[webhook_sensor, sync_followup_sensor],
    resources={"civicband": CivicBandResource(), "meeting_store": MeetingStoreResource()},
    # Runs whose config names no logger (the UI's, the sensors') get Dagster's default console logger.
    loggers={"console": dg.colored_console_logger, "terminal": terminal_logger},
    # One step and its check per run: a process per step would only add seconds to every run.
    executor=dg.in_process_executor,
)
