"""Settings read from the environment, with the documented defaults."""

import math
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_URL = "https://{subdomain}.civic.band"


def civicband_home() -> Path:
    """Where the embedded default keeps its files (CIVICBAND_HOME, default ~/.civicband)."""
    return Path(os.environ.get("CIVICBAND_HOME") or Path.home() / ".civicband").expanduser()


def default_database_url() -> str:
    return f"sqlite:///{civicband_home() / 'meetings.db'}"


@dataclass(frozen=True)
class ClientSettings:
    base_url: str = DEFAULT_BASE_URL
    service_secret: str | None = None
    timeout: float = 120.0
    retries: int = 3  # retries after the first attempt: waits of 1 s, 2 s, 4 s
    backoff: float = 1.0  # first wait in seconds; doubles per retry
    # civic.band's 402 (over 15 requests a minute) names no wait: retrying sooner than its one-minute
    # window is over only burns the retries.
    rate_limit_wait: float = 60.0
    # Rows a filtered request may make civic.band scan (client.id_ranges_for): well within its 3 s
    # time limit (a scan of 550,000 pages takes ~10 s on a 2-core machine).
    max_scan_rows: int = 25_000

    @classmethod
    def from_env(cls) -> "ClientSettings":
        env = os.environ
        return cls(
            base_url=env.get("CIVICBAND_BASE_URL") or DEFAULT_BASE_URL,
            service_secret=env.get("CIVICBAND_SERVICE_SECRET") or None,
            timeout=float(env.get("CIVICBAND_HTTP_TIMEOUT") or 120),
            retries=int(env.get("CIVICBAND_HTTP_RETRIES") or 3),
            backoff=float(env.get("CIVICBAND_HTTP_BACKOFF") or 1.0),
            rate_limit_wait=_seconds("CIVICBAND_HTTP_RATE_LIMIT_WAIT", 60.0),
            max_scan_rows=_positive_int("CIVICBAND_MAX_SCAN_ROWS", 25_000),
        )


def _seconds(name: str, default: float) -> float:
    """A duration from the environment; anything but a finite number of seconds >= 0 is refused."""
    value = os.environ.get(name) or default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:  # NaN too
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return seconds


def _positive_int(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


def database_url_from_env() -> str:
    return os.environ.get("CIVICBAND_DATABASE_URL") or default_database_url()
