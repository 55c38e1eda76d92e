"""backfill_jobs.started_empty: the partition held no page when the sync generation began

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:34:47.711910

A first backfill writes straight into meeting_pages on PostgreSQL and skips the final scan for stale
pages; a resumed run reads this flag instead of scanning the partition. NULL for syncs begun before
this revision: treated as not empty (the general path).
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backfill_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('started_empty', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('backfill_jobs', schema=None) as batch_op:
        batch_op.drop_column('started_empty')
