"""HTTP client for civic.band's Datasette API: keyset pages, exact counts, retries with backoff."""

import bisect
import datetime as dt
import email.utils
import json
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_when_event_set

from .config import ClientSettings
from .naming import TABLES, validate_subdomain

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000  # Datasette answers 400 above this
PUBLIC_PAGE_SIZE = 100  # what civic.band gives (silently) to callers without the service secret
MAX_RETRY_AFTER = 300.0
ID_SPACE = 16**12  # civic.band's ids: the first 12 hex digits of a sha256, so evenly spread


class UpstreamError(Exception):
    """civic.band refused the request for good (a 4xx other than 402/429), or answered what paging cannot
    go on from: retrying won't help."""


class UnknownMunicipality(UpstreamError):
    """civic.band has no site for this subdomain (it redirects to https://civic.band/)."""


class TransientError(Exception):
    """A failure worth retrying: 5xx, 429, 402 rate limit, or a broken body."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """civic.band's 402: over 15 requests a minute without the service secret."""


# DecodingError: a body that fails to decompress, broken like a truncated one.
RETRYABLE = (TransientError, httpx.TimeoutException, httpx.TransportError, httpx.DecodingError)


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    next_cursor: str | None


class CivicBandClient:
    def __init__(self, settings: ClientSettings | None = None):
        self.settings = settings or ClientSettings.from_env()
        headers = {"Accept": "application/json", "User-Agent": "civicband-pipelines"}
        if self.settings.service_secret:
            headers["X-Service-Secret"] = self.settings.service_secret
        # Redirects are never followed: the only one civic.band sends means "no such municipality".
        self._http = httpx.Client(timeout=self.settings.timeout, headers=headers, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "CivicBandClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def site_url(self, subdomain: str) -> str:
        return self.settings.base_url.format(subdomain=validate_subdomain(subdomain)).rstrip("/")

    def fetch_page(
        self,
        subdomain: str,
        document_type: str,
        size: int,
        cursor: str | None,
        *,
        columns: tuple[str, ...] = (),
        filters: dict[str, str] | None = None,
        id_ranges: int = 1,
        cancel: threading.Event | None = None,
    ) -> Page:
        """One keyset page of a table in primary-key order; `cursor` is the previous page's `next`.

        `columns` limits the columns (`_col`), `filters` are Datasette filters such as
        {"date__gte": "2025-01-01"}. `id_ranges` > 1 (see `id_ranges_for`) bounds the request to the
        range of ids its cursor is in; the page that ends a range has no rows of the next, and its
        `next` is the range's end. Once `cancel` is set, a failed request is not retried.
        """
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"batch size must be between 1 and {MAX_PAGE_SIZE}, got {size}")
        params = [("_size", str(size)), *(("_col", c) for c in columns), *(filters or {}).items()]
        if cursor is not None:
            params.append(("_next", cursor))
        range_end = _id_range_end(cursor, id_ranges)
        if range_end is not None:
            params.append(("id__lte", range_end))
        path = f"/meetings/{TABLES[document_type]}.json"
        rows, next_cursor = self._get_json(subdomain, path, params, lambda body: _page_parts(body, cursor), cancel)
        if _ends_where_paging_cannot_go_on(rows, size, next_cursor):
            raise UpstreamError(
                f"{subdomain}/{document_type}: a page of {len(rows)} rows ends in a row without an id, and paging cannot "
                "go on from it (Datasette's next would skip rows or end early): rows without an id must fit in one page "
                f"with a row after them. Pages hold up to {MAX_PAGE_SIZE} rows ({PUBLIC_PAGE_SIZE} without "
                "CIVICBAND_SERVICE_SECRET); a sync asks for pages of its batch size, up to that"
            )
        if next_cursor is None and range_end is not None:
            next_cursor = range_end  # hex, so its own tilde encoding: the next range begins after it
        return Page(rows=rows, next_cursor=next_cursor)

    def id_ranges_for(self, rows: int) -> int:
        """How many ranges of ids a filtered paging of a table of about `rows` rows needs.

        civic.band has no index for filters such as dates: a filtered page scans the table in id order
        until it has its rows, and Datasette stops a query after 3 s. A sparse filter (an incremental
        window of a large municipality) would scan the whole table in one request, on every retry.
        """
        return max(1, -(-rows // self.settings.max_scan_rows))

    def iter_pages(self, subdomain: str, document_type: str, size: int, cursor: str | None = None, **options) -> Iterator[Page]:
        while True:
            page = self.fetch_page(subdomain, document_type, size, cursor, **options)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def query(self, subdomain: str, sql: str) -> list[dict]:
        """Rows of a read-only SQL query (civic.band allows SQL; used for exact counts)."""
        return self._get_json(subdomain, "/meetings/-/query.json", [("sql", sql), ("_size", "max")], _query_rows)

    def count(self, subdomain: str, document_type: str) -> int:
        """Exact row count (`_extra=count` is capped at 10001, so SQL it is)."""
        rows = self.query(subdomain, f"select count(*) as n from {TABLES[document_type]}")
        try:
            return int(rows[0]["n"])
        except (IndexError, KeyError, TypeError, ValueError):
            raise TransientError(f"malformed count answer: {rows!r}") from None

    def _get_json(self, subdomain: str, path: str, params: list[tuple[str, str]], parts: Callable[[dict], object] | None = None,
                  cancel: threading.Event | None = None):
        """The answer's JSON body, or what `parts` takes from it: its TransientError (a broken body) is retried too.
        Once `cancel` is set, a failed attempt is not retried (nobody waits for the answer)."""
        url = self.site_url(subdomain) + path
        stop = stop_after_attempt(self.settings.retries + 1)
        for attempt in Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop if cancel is None else stop | stop_when_event_set(cancel),
            wait=self._wait,
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                body = self._get_once(subdomain, url, params)
                return parts(body) if parts else body
        raise AssertionError("unreachable")

    def _wait(self, state: RetryCallState) -> float:
        backoff = self.settings.backoff * 2 ** (state.attempt_number - 1)
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if isinstance(error, RateLimited) and retry_after is None:
            return max(backoff, self.settings.rate_limit_wait)  # no Retry-After: sit out the minute
        return max(backoff, min(retry_after, MAX_RETRY_AFTER)) if retry_after is not None else backoff

    def _get_once(self, subdomain: str, url: str, params: list[tuple[str, str]]) -> dict:
        # Streamed, so the body is ours alone: an httpx Response sits in a reference cycle until the
        # garbage collector runs, and would keep megabytes of page bodies alive until then.
        with self._http.stream("GET", url, params=params) as response:
            _raise_for_status(subdomain, url, response)
            content = b"".join(response.iter_bytes())
        status = response.status_code
        body = _parse_json(content, status, response.request.url)
        if status >= 400 or body.get("ok") is False:
            raise UpstreamError(f"civic.band refused {response.request.url}: HTTP {status}: {body.get('error', body)}")
        return body


def _query_rows(body: dict) -> list:
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise TransientError("malformed query answer: 'rows' is not a list")
    return rows


def _page_parts(body: dict, cursor: str | None) -> tuple[list, str | None]:
    """A page's rows and `next`, or TransientError for a broken page. Taken for a good one, a page
    without `next` (Datasette always sends it: null on the last page) would end the sync early, and
    the sync would then delete every page after it; so would rows that are not objects (each one
    rejected); a `next` that does not move on would fetch the same page for ever."""
    rows, next_cursor = body.get("rows"), body.get("next")
    if not isinstance(rows, list) or not all(type(row) is dict for row in rows):
        raise TransientError("malformed page: 'rows' is not a list of objects")
    if "next" not in body or not (next_cursor is None or isinstance(next_cursor, str)):
        raise TransientError("malformed page: 'next' is missing or not a string")
    if next_cursor is not None and next_cursor in ("", cursor):
        raise TransientError(f"malformed page: 'next' ({next_cursor!r}) does not move on from the cursor {cursor!r}")
    return rows, next_cursor


def _ends_where_paging_cannot_go_on(rows: list, size: int, next_cursor: str | None) -> bool:
    """Datasette pages on after the last row's id. After a NULL one its next is "None" (`id > 'None'`
    skips every id starting with a digit); after an empty one there is none, so a full page looks last
    (full at `size` rows, or at 100, civic.band's silent cap without the service secret; assumed with a
    secret too: a secret civic.band refuses is capped as silently, and a page taken as last loses rows)."""
    last_id = rows[-1].get("id") if rows else "-"
    full = len(rows) >= min(size, PUBLIC_PAGE_SIZE)
    return (last_id is None and next_cursor is not None) or (last_id == "" and next_cursor is None and full)


def _id_range_end(cursor: str | None, id_ranges: int) -> str | None:
    """The end (inclusive) of the id range that the ids after `cursor` begin in; None for the last range.

    Range k of n ends at k/n of the id space, written as 12 hex digits and a "g": right after that id,
    and never all digits (Datasette turns an all-digit filter value into a number, which loses its
    leading zeros). Odd ids (not 12 hex digits) still fall into exactly one range: ranges are compared
    as text, as SQLite compares ids.
    """
    if id_ranges <= 1:
        return None
    ends = [f"{ID_SPACE * k // id_ranges:012x}g" for k in range(1, id_ranges)]
    position = bisect.bisect_right(ends, _tilde_decode(cursor)) if cursor is not None else 0
    return ends[position] if position < len(ends) else None


def _tilde_decode(token: str) -> str:
    """A `next` token's key, as Datasette decodes `_next` (datasette.utils.tilde_decode)."""
    temp = secrets.token_hex(16)  # keeps a literal % from being decoded
    return urllib.parse.unquote_plus(token.replace("%", temp).replace("~", "%")).replace(temp, "%")


def _raise_for_status(subdomain: str, url: str, response: httpx.Response) -> None:
    """Redirects, rate limits and server errors; other 4xx are judged by their body."""
    status = response.status_code
    if 300 <= status < 400:
        raise UnknownMunicipality(
            f"no such municipality on civic.band: {subdomain!r} "
            f"(HTTP {status} redirect to {response.headers.get('location', '?')})"
        )
    if status == 429:
        raise TransientError("HTTP 429 Too Many Requests", _retry_after(response))
    if status == 402:
        raise RateLimited("HTTP 402 rate limit exceeded (set CIVICBAND_SERVICE_SECRET to lift it)", _retry_after(response))
    if status >= 500:  # a 503 may say when to come back
        raise TransientError(f"HTTP {status} from {url}{_error_detail(response)}", _retry_after(response))


def _error_detail(response: httpx.Response) -> str:
    """': <error>' from a JSON error body (Datasette's: a query stopped at its time limit says
    'QueryInterrupted'), else ''."""
    try:
        error = json.loads(response.read()).get("error")
    except (httpx.HTTPError, ValueError, UnicodeDecodeError, AttributeError):
        return ""
    return f": {str(error)[:200]}" if error else ""


def _parse_json(content: bytes, status: int, url: httpx.URL) -> dict:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        if 400 <= status < 500:
            raise UpstreamError(f"civic.band refused {url}: HTTP {status}") from None
        raise TransientError(f"invalid JSON from {url} ({len(content)} bytes)") from None
    if not isinstance(body, dict):
        raise TransientError(f"unexpected JSON from {url}: not an object")
    return body


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110 allows both)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # absent, neither form, or a year beyond datetime
        return None
    if when.tzinfo is None:  # "-0000": UTC by the RFC
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0
    if isinstance(error, RateLimited):
        log.warning("civic.band request failed (%s), waiting %.1f s for civic.band's rate limit, then retry %d",
                    error, wait, state.attempt_number)
    else:
        log.warning("civic.band request failed (%s), retry %d in %.1f s", error or "?", state.attempt_number, wait)
