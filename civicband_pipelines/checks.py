"""Per-partition asset check on `meeting_pages`: the local copy must equal upstream exactly."""

import warnings

import dagster as dg
import pydantic

from .assets import meeting_pages
from .partitions import meeting_page_partitions, split_partition_key
from .resources import CivicBandResource, MeetingStoreResource
from .verify import MAX_NAMED_DOCUMENTS, Verification, verify_counts, verify_ids

# Partitioned asset checks are a preview feature in Dagster 1.13; we rely on them deliberately.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


class MatchesUpstreamConfig(dg.Config):
    compare_ids: bool = pydantic.Field(
        False,
        description="Compare every page with upstream (id, image, entities, votes) even when the counts match "
        "(a request per 1000 upstream rows, 100 without the service secret): finds pages that changed while "
        "the count did not, e.g. re-OCR'd behind a running sync.",
    )


@dg.asset_check(
    asset=meeting_pages,
    name="matches_upstream",
    partitions_def=meeting_page_partitions,
    description=(
        "Exact: upstream rows (SQL count, not the capped _extra=count) = local pages + rejected rows. "
        "On a mismatch (or with compare_ids), pages are compared by id to name the missing, stale and extra documents."
    ),
)
def matches_upstream(
    context: dg.AssetCheckExecutionContext, config: MatchesUpstreamConfig, civicband: CivicBandResource,
    meeting_store: MeetingStoreResource,
) -> dg.AssetCheckResult:
    municipality, document_type = split_partition_key(context.partition_key)
    store = meeting_store.store()
    job = store.job(municipality, document_type)
    unfinished = _unfinished_sync(job)
    if unfinished:
        context.log.info(unfinished)
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description=unfinished)
    with civicband.client() as client:
        result = None if config.compare_ids else verify_counts(client, store, municipality, document_type)
        partial = _partial_copy(job)
        if result is None or not (result.passed or partial):
            result = verify_ids(client, store, municipality, document_type, counted=result)
    store.record_verification(
        municipality, document_type, result.expected, result.actual, result.passed, result.verified_at
    )
    summary = result.summary() + (f"; {partial}" if partial and not (result.passed or result.deep) else "")
    context.log.info(summary)
    metadata = verification_metadata(result) | rejection_metadata(store.rejections(municipality, document_type))
    return dg.AssetCheckResult(passed=result.passed, metadata=metadata, description=summary)


def _unfinished_sync(job: dict | None) -> str | None:
    """Why a partition whose sync is paused or still running is not verified: its copy is partial by
    design, and comparing it page by page would cost a request per 1000 upstream rows at every pause."""
    if job is None or job["status"] not in ("paused", "running"):
        return None
    return (
        f"NOT VERIFIED: its {job['mode']} sync is {job['status']} ({job['pages_fetched']} pages fetched so far); "
        "it is verified once it completes"
    )


def _partial_copy(job: dict | None) -> str | None:
    """Why a mismatch is left at the counts: a partition never synced, or whose last sync failed, lacks
    pages by design, and naming them would page through all of upstream (hours without the secret)."""
    if job is None or job["sync_generation"] == 0:
        return "never synced, so its documents are not compared (compare_ids does)"
    if job["status"] != "completed":
        return f"its last sync is {job['status']}, so its documents are not compared (compare_ids does)"
    return None


def verification_metadata(result: Verification) -> dict:
    metadata = {
        "expected": result.expected,
        "actual": result.actual,
        "rejected": result.rejected,
        "missing": result.missing,
        "extra": result.extra,
        "verified_at": dg.MetadataValue.timestamp(result.verified_at),
    }
    if result.deep:
        metadata["compared_ids"] = True
    for kind, names in result.documents().items():
        if names:
            metadata[f"{kind}_documents"] = dg.MetadataValue.md(_bullets(names))
    return metadata


def rejection_metadata(rejections: list[dict]) -> dict:
    """The rejected upstream rows with their reasons, so "rejected 4" can be looked into from the UI."""
    if not rejections:
        return {}
    return {"rejected_rows": dg.MetadataValue.md(_bullets([f"`{r['upstream_id']}`: {r['reason']}" for r in rejections]))}


def _bullets(names: list[str]) -> str:
    shown = [f"- {name}" for name in names[:MAX_NAMED_DOCUMENTS]]
    if len(names) > MAX_NAMED_DOCUMENTS:
        shown.append(f"- ... and {len(names) - MAX_NAMED_DOCUMENTS} more")
    return "\n".join(shown)
