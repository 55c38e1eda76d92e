"""The coverage report: one row per partition, as a pandas table, UI metadata and a CSV file."""

from collections.abc import Iterable

import dagster as dg
import pandas as pd

from .naming import DOCUMENT_TYPES
from .store import MeetingStore

COLUMNS = ["municipality", "document_type", "status", "expected", "actual", "missing", "check_passed", "last_sync",
           "last_verified"]


def coverage_frame(store: MeetingStore, partitions: Iterable[str] = ()) -> pd.DataFrame:
    """Every registered partition, synced or not: municipalities in the store and the `partitions`
    (Dagster's, which the UI adds to without the store); `missing` is upstream minus local (rejected
    rows aside), `check_passed` the last check's verdict (it also counts extra and changed pages)."""
    jobs = pd.DataFrame(store.jobs(), columns=[
        "municipality", "document_type", "status", "expected_count", "actual_count", "verified_ok", "finished_at",
        "verified_at",
    ])
    rejected = pd.DataFrame(
        [(m, d, n) for (m, d), n in store.rejected_counts().items()], columns=["municipality", "document_type", "rejected"]
    )
    partitions = pd.DataFrame(
        [(m, d) for m in sorted({*store.municipality_subdomains(), *partitions}) for d in DOCUMENT_TYPES],
        columns=["municipality", "document_type"],
    )
    frame = partitions.merge(jobs, how="outer", on=["municipality", "document_type"])
    frame = frame.merge(rejected, how="left", on=["municipality", "document_type"])
    # No job row, or one that holds only a verification (`pending`): no sync began.
    frame["status"] = frame["status"].fillna("never synced").replace("pending", "never synced")
    frame["missing"] = (frame["expected_count"] - frame["rejected"].fillna(0) - frame["actual_count"]).astype("Int64")
    frame = frame.rename(columns={
        "expected_count": "expected", "actual_count": "actual", "verified_ok": "check_passed", "finished_at": "last_sync",
        "verified_at": "last_verified",
    })
    frame["check_passed"] = frame["check_passed"].astype("boolean")
    for column in ("expected", "actual"):
        frame[column] = frame[column].astype("Int64")
    for column in ("last_sync", "last_verified"):  # to the minute, UTC: readable in a narrow table
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.strftime("%Y-%m-%d %H:%M")
    return frame[COLUMNS].sort_values(["municipality", "document_type"]).reset_index(drop=True)


def coverage_summary(frame: pd.DataFrame) -> dict:
    verified = frame["missing"].notna()
    expected = frame["actual"] + frame["missing"]  # upstream rows less rejected ones, as last verified
    return {
        "partitions": len(frame),
        "partitions_completed": int((frame["status"] == "completed").sum()),
        "partitions_verified_exact": int(frame["check_passed"].fillna(False).sum()),
        "partitions_with_missing_pages": int((frame["missing"].fillna(0) > 0).sum()),
        "pages_local": int(frame["actual"].fillna(0).sum()),
        "pages_expected": int(expected.fillna(0).sum()),
        # expected pages held locally, over verified partitions: extra pages cover nothing
        "coverage_percent": round(100 * _ratio(frame["actual"][verified], expected[verified]), 2) if verified.any() else 0.0,
    }


def _ratio(actual: pd.Series, expected: pd.Series) -> float:
    return float(actual.clip(upper=expected).sum() / expected.sum()) if expected.sum() else 1.0


def coverage_table(frame: pd.DataFrame) -> dg.TableMetadataValue:
    records = [dg.TableRecord({k: _plain(v) for k, v in row.items()}) for row in frame.astype(object).to_dict("records")]
    types = {"expected": "int", "actual": "int", "missing": "int", "check_passed": "bool"}
    schema = dg.TableSchema(columns=[dg.TableColumn(c, types.get(c, "string")) for c in frame.columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def _plain(value):
    if pd.isna(value):
        return None
    return value if isinstance(value, (int, float, str)) else str(value)
