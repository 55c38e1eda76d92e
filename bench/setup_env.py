"""The benchmark's world: a replica of civic.band on disk, served over loopback, and fresh stores."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (puts the repo on sys.path)

from civicband_pipelines.client import CivicBandClient
from civicband_pipelines.config import ClientSettings
from civicband_pipelines.replica import build_municipality
from civicband_pipelines_tests import pg_server

PAGES_PER_DOCUMENT = 20  # fixed, so documents x pages hits the requested count exactly
MINUTES_KEPT = 200  # the minutes table of the big municipalities is trimmed to this: only agendas are measured
FLEET_DOCUMENTS, FLEET_PAGES = 5, 10  # a fleet municipality: 5 documents x 10 pages per document type


@dataclass(frozen=True)
class Municipality:
    subdomain: str
    agenda_pages: int


def build_measured(root: Path, subdomain: str, pages: int, seed: int) -> Municipality:
    """A municipality whose `agendas` table holds exactly `pages` pages of ~2 KB text."""
    documents = math.ceil(pages / PAGES_PER_DOCUMENT)
    start = dt.date.today() - dt.timedelta(days=40 * 365)  # room for many (meeting, date) documents
    path = build_municipality(root, subdomain, documents, (PAGES_PER_DOCUMENT, PAGES_PER_DOCUMENT),
                              seed=seed, start_date=start, text_chars=2000)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DELETE FROM minutes WHERE rowid > ?", (MINUTES_KEPT,))
        count = conn.execute("SELECT count(*) FROM agendas").fetchone()[0]
    return Municipality(subdomain, count)


def build_fleet(root: Path, n_municipalities: int) -> list[str]:
    names = [f"fleet-{i:03d}.bench" for i in range(n_municipalities)]
    for i, name in enumerate(names):
        build_municipality(root, name, FLEET_DOCUMENTS, (FLEET_PAGES, FLEET_PAGES), seed=i, text_chars=2000)
    return names


def warm_page_cache(root: Path) -> None:
    """Read the replica files once, so no measurement pays for cold disk reads."""
    for path in root.glob("*/meetings.db"):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def warm_up(base_url: str, subdomains: list[str]) -> None:
    """The replica opens a municipality's Datasette on its first request: not part of any measurement."""
    with CivicBandClient(ClientSettings(base_url=base_url)) as client:
        for subdomain in subdomains:
            client.count(subdomain, "agenda")
            client.fetch_page(subdomain, "agenda", 1000, None)


class Stores:
    """Fresh, empty store URLs: a new SQLite file or a new PostgreSQL database each time."""

    def __init__(self, directory: Path, postgres_url: str):
        self.directory, self.postgres_url = directory, postgres_url

    def fresh(self, kind: str, label: str) -> str:
        name = f"{label}_{uuid.uuid4().hex[:8]}"
        if kind == "sqlite":
            return f"sqlite:///{self.directory / (name + '.db')}"
        return pg_server.create_database(self.postgres_url, name)

    def drop(self, url: str) -> None:
        if url.startswith("sqlite"):
            path = Path(url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        else:
            pg_server.drop_database(url)
