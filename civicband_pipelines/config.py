"""Settings read from the environment, with the documented defaults."""

import math
import os
import string
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_URL = "https://{subdomain}.civic.band"


def civicband_home() -> Path:
    """Where the embedded default keeps its files (CIVICBAND_HOME, default ~/.civicband)."""
    # Absolute: DAGSTER_HOME is made from it, and Dagster refuses a relative one.
    return Path(os.environ.get("CIVICBAND_HOME") or Path.home() / ".civicband").expanduser().absolute()


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

    def __post_init__(self):
        check_base_url(self.base_url)

    @classmethod
    def from_env(cls) -> "ClientSettings":
        env = os.environ
        return cls(
            base_url=env.get("CIVICBAND_BASE_URL") or DEFAULT_BASE_URL,
            service_secret=env.get("CIVICBAND_SERVICE_SECRET") or None,
            timeout=seconds_from_env("CIVICBAND_HTTP_TIMEOUT", 120.0, above_zero=True),
            retries=whole_number_from_env("CIVICBAND_HTTP_RETRIES", 3, minimum=0),
            backoff=seconds_from_env("CIVICBAND_HTTP_BACKOFF", 1.0),
            rate_limit_wait=seconds_from_env("CIVICBAND_HTTP_RATE_LIMIT_WAIT", 60.0),
            max_scan_rows=whole_number_from_env("CIVICBAND_MAX_SCAN_ROWS", 25_000),
        )


class ConfigError(ValueError):
    """An environment variable with a value it cannot have; the message names it."""


def check_base_url(template: str) -> None:
    """Every municipality's site is made from the template: without `{subdomain}` all would be one site
    (and any name would pass the check that it exists); another placeholder would fail every request."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:  # an unmatched brace
        fields = None
    if fields != {"subdomain"} or not template.startswith(("http://", "https://")):
        raise ConfigError(f"CIVICBAND_BASE_URL must be an http(s) URL with {{subdomain}} in it, such as "
                          f"{DEFAULT_BASE_URL}; got {template!r}")


MAX_SECONDS = 366 * 24 * 3600.0  # a year: more would overflow the waits it ends up in (time.sleep(1e20))


def seconds_from_env(name: str, default: float | None, *, above_zero: bool = False) -> float | None:
    """A duration from the environment: a number of seconds >= 0 (> 0 if `above_zero`), at most a year."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_SECONDS or (above_zero and seconds == 0):  # NaN too
        raise ConfigError(f"{name} must be a number of seconds {'>' if above_zero else '>='} 0 (at most a year), got {value!r}")
    return seconds


def whole_number_from_env(name: str, default: int, *, minimum: int = 1) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return number


def database_url_from_env() -> str:
    return os.environ.get("CIVICBAND_DATABASE_URL") or default_database_url()
