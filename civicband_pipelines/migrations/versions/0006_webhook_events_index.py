"""webhook_events: an index of each municipality's changed events

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:13:37.029109

webhook_sensor reads every municipality's latest changed event each tick (a webhook whose run gave up
before its sync began gets another), and the table is never pruned.
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_webhook_events_changes', 'webhook_events', ['subdomain', 'changed', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_webhook_events_changes', table_name='webhook_events')
