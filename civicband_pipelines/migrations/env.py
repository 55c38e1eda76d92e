"""Alembic environment: runs on the connection that `civicband_pipelines.migrations.upgrade` passes in.

That connection is already inside a transaction (holding the migration lock), so Alembic neither
begins nor commits one of its own: all pending revisions commit together, or none does.
"""

from alembic import context

from civicband_pipelines.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through civicband_pipelines.migrations.upgrade(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # ALTERs become copy-and-move batches on SQLite
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
