"""Initial schema: municipalities, meeting_pages, backfill_jobs, rejected_rows.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Exactly what `schema.metadata.create_all` created before migrations existed; such databases are
stamped instead of migrated (see `_adopt_unversioned` in migrations/__init__.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of schema.py's helpers: a revision must not change when schema.py does.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def upgrade() -> None:
    op.create_table(
        "municipalities",
        sa.Column("subdomain", sa.String(200), primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("state", sa.Text),
        sa.Column("country", sa.Text),
        sa.Column("kind", sa.Text),
        sa.Column("pages", sa.BigInteger),
        sa.Column("last_updated", sa.Text),
        sa.Column("latitude", sa.Float),
        sa.Column("longitude", sa.Float),
        sa.Column("popup_data", sa.Text),
        *_timestamps(),
    )
    op.create_table(
        "meeting_pages",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("municipality", sa.String(200), nullable=False),
        sa.Column("document_type", sa.String(16), nullable=False),
        sa.Column("meeting_name", sa.Text, nullable=False),
        sa.Column("meeting_date", sa.Date, nullable=False),
        sa.Column("page_number", sa.Integer, nullable=False),
        sa.Column("upstream_id", sa.String(255), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("page_image", sa.Text),
        sa.Column("entities_json", sa.Text),
        sa.Column("votes_json", sa.Text),
        sa.Column("sync_generation", sa.Integer, nullable=False),
        *_timestamps(),
        sa.UniqueConstraint(
            "municipality", "document_type", "meeting_name", "meeting_date", "page_number", name="uq_meeting_page"
        ),
    )
    op.create_index("ix_meeting_pages_upstream_id", "meeting_pages", ["municipality", "document_type", "upstream_id"])
    op.create_table(
        "backfill_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("municipality", sa.String(200), nullable=False),
        sa.Column("document_type", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False, server_default="full"),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("sync_generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_cursor", sa.Text),
        sa.Column("pages_fetched", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pages_created", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pages_updated", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pages_unchanged", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pages_deleted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rejected_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("expected_count", sa.BigInteger),
        sa.Column("actual_count", sa.BigInteger),
        sa.Column("verified_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("run_id", sa.String(64)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        *_timestamps(),
        sa.UniqueConstraint("municipality", "document_type", name="uq_backfill_job_partition"),
    )
    op.create_table(
        "rejected_rows",
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


def downgrade() -> None:
    op.drop_table("rejected_rows")
    op.drop_table("backfill_jobs")
    op.drop_index("ix_meeting_pages_upstream_id", table_name="meeting_pages")
    op.drop_table("meeting_pages")
    op.drop_table("municipalities")
