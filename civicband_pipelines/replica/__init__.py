"""A local civic.band replica for tests and the demo.

Real Datasette 1.0a19 over real HTTP (`server`), deterministic municipality databases and the
upstream mutations a sync must survive (`generate`), and a misbehaving HTTP proxy (`faults`).
Run it with `python -m civicband_pipelines.replica --help`.
"""

from .generate import (
    DEMO_MUNICIPALITIES,
    ODD_ROW_REASONS,
    TABLES,
    Change,
    OddRow,
    add_documents,
    build_demo,
    build_municipality,
    delete_documents,
    odd_rows_for,
    page_id,
    reocr_pages,
)

__all__ = [
    "DEMO_MUNICIPALITIES", "ODD_ROW_REASONS", "TABLES", "Change", "OddRow", "add_documents",
    "build_demo", "build_municipality", "delete_documents", "odd_rows_for", "page_id",
    "reocr_pages",
]
