"""PostgreSQL: meeting_pages.upstream_id in byte order (COLLATE "C")

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:50:00

Verification reads a partition's local pages in upstream's id order (byte order, as civic.band's
SQLite sorts), 5000 at a time. Under the database's default collation the index
(municipality, document_type, upstream_id) could not give that order, so every read sorted the whole
partition. The column's collation changes; PostgreSQL rebuilds that index (not the table), holding
meeting_pages locked meanwhile. SQLite compares text as bytes already: nothing to do there.
"""

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE meeting_pages ALTER COLUMN upstream_id TYPE VARCHAR(255) COLLATE {collation}")


def upgrade() -> None:
    _collate('"C"')


def downgrade() -> None:
    _collate('"default"')
