"""Dagster resources: thin wrappers that build the client and the store from the environment."""

import dataclasses
from functools import cache

import dagster as dg

from .client import CivicBandClient
from .config import ClientSettings, database_url_from_env
from .store import MeetingStore


class CivicBandResource(dg.ConfigurableResource):
    """civic.band's API. Unset fields come from CIVICBAND_BASE_URL / CIVICBAND_HTTP_TIMEOUT; the service
    secret only ever comes from CIVICBAND_SERVICE_SECRET, so it never shows in the UI."""

    base_url: str | None = None
    timeout: float | None = None

    def client(self) -> CivicBandClient:
        settings = ClientSettings.from_env()
        overrides = {"base_url": self.base_url, "timeout": self.timeout}
        return CivicBandClient(dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None}))


class MeetingStoreResource(dg.ConfigurableResource):
    """The meetings store. Unset `database_url` means CIVICBAND_DATABASE_URL or the SQLite default."""

    database_url: str | None = None

    def store(self) -> MeetingStore:
        return open_store(self.database_url or database_url_from_env())


@cache
def open_store(url: str) -> MeetingStore:
    """One store (engine and connection pool) per process and URL."""
    return MeetingStore(url)
