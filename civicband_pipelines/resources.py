"""Dagster resources: thin wrappers that build the client and the store from the environment."""

import dataclasses
from functools import cache

import dagster as dg
import sqlalchemy as sa

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


POSTGRES_EXAMPLE = "postgresql+psycopg2://user:password@host/db"


class StoreUnavailable(RuntimeError):
    """The meetings store's database could not be reached (or its URL is wrong); the message says which."""


@cache
def open_store(url: str) -> MeetingStore:
    """One store (engine and connection pool) per process and URL."""
    try:
        return MeetingStore(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as error:
        raise StoreUnavailable(f"the meetings store URL is not one this project can open (such as "
                               f"sqlite:///path/meetings.db or {POSTGRES_EXAMPLE}): {error}") from None
    except ModuleNotFoundError as error:  # SQLAlchemy 2.1's postgresql:// means psycopg 3, not installed
        raise StoreUnavailable(f"the meetings store URL needs the missing Python module {error.name!r}; "
                               f"for PostgreSQL use {POSTGRES_EXAMPLE}") from None
    except sa.exc.OperationalError as error:
        where = sa.engine.make_url(url).render_as_string(hide_password=True)
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise StoreUnavailable(f"the meetings store {where} cannot be opened: {reason}") from None
