"""backfill_jobs.started_after_event: the last webhook event stored when the sync began

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:20:00

A completed resumed sync, and webhook_sensor's missed-webhook rule, ask whether a changed webhook came
after a sync began. They compared the receiver's clock (received_at) with the worker's (started_at);
event ids commit in order and need no clock. Syncs begun before this revision get the last event
received by their start, as the clocks said.
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backfill_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('started_after_event', sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE backfill_jobs SET started_after_event = (SELECT coalesce(max(id), 0) FROM webhook_events"
        " WHERE webhook_events.received_at <= backfill_jobs.started_at) WHERE started_at IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table('backfill_jobs', schema=None) as batch_op:
        batch_op.drop_column('started_after_event')
