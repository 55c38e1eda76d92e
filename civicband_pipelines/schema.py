"""The meetings store's schema: a public interface, documented in README.md ("Store schema")."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

# SQLite autoincrements only INTEGER PRIMARY KEY; PostgreSQL gets BIGINT for 100M+ pages.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Byte order on PostgreSQL too (SQLite's BINARY is already): verification reads a partition's pages in
# upstream's id order, chunk after chunk along the (municipality, document_type, upstream_id) index.
_UpstreamId = sa.String(255).with_variant(postgresql.VARCHAR(255, collation="C"), "postgresql")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


municipalities = sa.Table(
    "municipalities",
    metadata,
    sa.Column("subdomain", sa.String(200), primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("state", sa.Text),
    sa.Column("country", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("pages", sa.BigInteger),
    sa.Column("last_updated", sa.Text),
    sa.Column("latitude", sa.Float),
    sa.Column("longitude", sa.Float),
    sa.Column("popup_data", sa.Text),  # JSON text
    *_timestamps(),
)

meeting_pages = sa.Table(
    "meeting_pages",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("municipality", sa.String(200), nullable=False),
    sa.Column("document_type", sa.String(16), nullable=False),
    sa.Column("meeting_name", sa.Text, nullable=False),
    sa.Column("meeting_date", sa.Date, nullable=False),
    sa.Column("page_number", sa.Integer, nullable=False),
    sa.Column("upstream_id", _UpstreamId, nullable=False),
    sa.Column("text", sa.Text),
    sa.Column("page_image", sa.Text),
    sa.Column("entities_json", sa.Text),
    sa.Column("votes_json", sa.Text),
    # The full sync that last saw this page upstream; pages a completed full sync did not see are stale.
    sa.Column("sync_generation", sa.Integer, nullable=False),
    *_timestamps(),
    sa.UniqueConstraint(
        "municipality", "document_type", "meeting_name", "meeting_date", "page_number", name="uq_meeting_page"
    ),
    sa.Index("ix_meeting_pages_upstream_id", "municipality", "document_type", "upstream_id"),
)

JOB_STATUSES = ("pending", "running", "completed", "failed", "paused")
# A sync of a job in one of these (and with a generation) is resumed at its cursor, not begun anew.
RESUMED_STATUSES = ("running", "failed", "paused")

backfill_jobs = sa.Table(
    "backfill_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("municipality", sa.String(200), nullable=False),
    sa.Column("document_type", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False, server_default="full"),  # full / incremental
    # An incremental sync covers meeting dates in [window_start, window_end] only.
    sa.Column("window_start", sa.Date),
    sa.Column("window_end", sa.Date),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("sync_generation", sa.Integer, nullable=False, server_default="0"),
    # The partition held no page when this sync generation began: a first backfill (page_writes.py).
    sa.Column("started_empty", sa.Boolean),
    sa.Column("last_cursor", sa.Text),  # the `next` token after the last committed batch
    sa.Column("pages_fetched", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pages_created", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pages_updated", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pages_unchanged", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pages_deleted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rejected_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expected_count", sa.BigInteger),
    sa.Column("actual_count", sa.BigInteger),
    sa.Column("verified_at", sa.DateTime(timezone=True)),
    sa.Column("verified_ok", sa.Boolean),  # the last verification matched upstream exactly
    sa.Column("last_error", sa.Text),
    sa.Column("full_synced_at", sa.DateTime(timezone=True)),  # last completed full sync
    sa.Column("repair_attempts", sa.Integer, nullable=False, server_default="0"),  # resyncs since a check passed
    sa.Column("run_id", sa.String(64)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    # The last webhook event stored when the sync began: changed events after it are news to the sync
    # (ids, not received_at: the receiver's and the worker's clocks may differ).
    sa.Column("started_after_event", sa.BigInteger),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    *_timestamps(),
    sa.UniqueConstraint("municipality", "document_type", name="uq_backfill_job_partition"),
)

rejected_rows = sa.Table(
    "rejected_rows",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("municipality", sa.String(200), nullable=False),
    sa.Column("document_type", sa.String(16), nullable=False),
    sa.Column("upstream_id", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("sync_generation", sa.Integer, nullable=False),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("municipality", "document_type", "upstream_id", name="uq_rejected_row"),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),  # the sensor's cursor
    sa.Column("subdomain", sa.String(200), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # created / updated
    # pages or last_updated differ from what was stored before: upstream has something new
    sa.Column("changed", sa.Boolean, nullable=False),
    # The accepted fields as JSON: the body less extras named like a municipalities column, popup_data as text.
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # A municipality's changed events, newest last (store.changed_since, store.latest_changes): the
    # table is never pruned, and webhook_sensor looks every tick.
    sa.Index("ix_webhook_events_changes", "subdomain", "changed", "id"),
)

# Who syncs a municipality right now (issue: never two syncs of one municipality at once).
# A holder heartbeats; a lease whose heartbeat is stale belonged to a process that died.
sync_leases = sa.Table(
    "sync_leases",
    metadata,
    sa.Column("municipality", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("document_type", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

# Syncs waiting for a busy municipality (leases.py). A waiting run holds no lease, so should its process
# die, this heartbeat going stale is how sync_followup_sensor learns of it and reports the run dead:
# else it would show as started for ever, holding its municipality's slot in the run queue.
sync_waits = sa.Table(
    "sync_waits",
    metadata,
    sa.Column("holder", sa.String(64), primary_key=True),
    sa.Column("municipality", sa.String(200), nullable=False),
    sa.Column("document_type", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)
