"""sync_waits: syncs waiting for a busy municipality, with a heartbeat

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:40:00.000000

A run waiting for another sync's lease holds none; should it die while it waits, its stale heartbeat
here lets sync_followup_sensor report it dead.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sync_waits',
    sa.Column('holder', sa.String(length=64), nullable=False),
    sa.Column('municipality', sa.String(length=200), nullable=False),
    sa.Column('document_type', sa.String(length=16), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('host', sa.Text(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('holder')
    )


def downgrade() -> None:
    op.drop_table('sync_waits')
