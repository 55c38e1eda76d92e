"""The update webhook receiver: civic.band's build pipeline calls it after each municipality deploy.

Keeps the contract of the app this project replaces (see /munis/api/update/<subdomain>/ in the API
notes) so the sender needs no change. Each accepted call stores the municipality fields and an event
row in one transaction; anything not stored answers 4xx/5xx so civic.band can retry.
"""

import asyncio
import datetime as dt
import hmac
import json
import logging
import math
import os
import re

import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import database_url_from_env
from .naming import InvalidSubdomain, validate_subdomain
from .resources import open_store
from .schema import municipalities
from .store import MeetingStore

log = logging.getLogger(__name__)

SECRET_ENV = "CIVICBAND_WEBHOOK_SECRET"
KNOWN_FIELDS = ("name", "state", "country", "kind", "pages", "last_updated", "latitude", "longitude", "popup_data")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_NESTING = 32  # arrays/objects deep in popup_data or an extra field: civic.band sends a flat object
_MAX_BIGINT = 2**63 - 1  # pages is BIGINT: larger values would fail in the store, forever retried


class Rejected(Exception):
    """A request answered with an error status before anything is stored."""

    def __init__(self, status: int, error: str, field: str | None = None):
        super().__init__(error)
        self.status, self.error, self.field = status, error, field

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error} | ({"field": self.field} if self.field else {}), self.status)


def make_app(store: MeetingStore, secret: str, max_body_bytes: int = 64 * 1024) -> Starlette:
    if not secret:
        raise ValueError(f"{SECRET_ENV} is not set: refusing to accept unauthenticated webhooks")
    secret_bytes = secret.encode()

    async def update(request: Request) -> JSONResponse:
        try:
            _authorize(request, secret_bytes)  # before touching the body: strangers cost nothing
            # `path` param: one route for both spellings (a slash redirect might not be followed) and
            # encoded slashes such as evil.com%2F..%2Fx get a 400 from validation, not a 404.
            subdomain = request.path_params["subdomain"].removesuffix("/")
            try:
                validate_subdomain(subdomain)
            except InvalidSubdomain as error:
                raise Rejected(400, str(error), "subdomain") from None
            body = _parse(await _read_body(request, max_body_bytes))
            fields = _validate(body)
        except Rejected as error:
            return error.response()
        try:
            stored, created, event_id = await run_in_threadpool(store.record_webhook, subdomain, fields)
        except Exception:
            log.exception("webhook for %s not stored", subdomain)
            return JSONResponse({"error": "store unavailable, retry later"}, 503)
        action = "created" if created else "updated"
        log.info("webhook accepted: subdomain=%s action=%s event_id=%s", subdomain, action, event_id)
        return JSONResponse(_reply(stored) | {"action": action}, 201 if created else 200)

    async def healthz(_request: Request) -> JSONResponse:
        try:
            await asyncio.wait_for(run_in_threadpool(_ping, store), timeout=5)
        except Exception:
            log.warning("health check failed", exc_info=True)
            return JSONResponse({"ok": False}, 503)
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/munis/api/update/{subdomain:path}", update, methods=["PUT", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def _authorize(request: Request, secret: bytes) -> None:
    header = request.headers.get("authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else header
    # Header values arrive latin-1 decoded; re-encoding gives back the exact bytes sent.
    if not token or not hmac.compare_digest(token.encode("latin-1"), secret):
        log.warning("webhook rejected: missing or wrong token from %s", request.client.host if request.client else "?")
        raise Rejected(401, "invalid webhook secret")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")  # the server rejects malformed values
    if length.isdigit() and int(length) > limit:
        raise Rejected(413, f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():  # a chunked body has no Content-Length: count it too
        body += chunk
        if len(body) > limit:
            raise Rejected(413, f"body larger than {limit} bytes")
    return bytes(body)


def _parse(body: bytes) -> dict:
    def no_constants(name: str):
        raise ValueError(f"{name} is not JSON")  # NaN/Infinity would poison the stored payload

    try:
        data = json.loads(body, parse_constant=no_constants)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise Rejected(400, "invalid JSON") from None
    if not isinstance(data, dict):
        raise Rejected(400, "body must be a JSON object")
    return data


def _validate(data: dict) -> dict:
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Rejected(400, "name field is required", "name")
    for field in ("name", "state", "country", "kind", "last_updated"):
        value = data.get(field)
        if value is not None and not _is_text(value):
            raise Rejected(400, f"{field} must be a string without NUL characters or lone surrogates", field)
    last_updated = data.get("last_updated")
    if last_updated is not None and not _is_date(last_updated):
        raise Rejected(400, "last_updated must be a YYYY-MM-DD date", "last_updated")
    pages = data.get("pages")
    if pages is not None and not (_is_int(pages) and 0 <= pages <= _MAX_BIGINT):
        raise Rejected(400, "pages must be a non-negative integer", "pages")
    for field, bound in (("latitude", 90), ("longitude", 180)):
        value = data.get(field)
        if value is not None and not (_is_number(value) and -bound <= value <= bound):
            raise Rejected(400, f"{field} must be a number between -{bound} and {bound}", field)
    if data.get("popup_data") is not None and not isinstance(data["popup_data"], dict):
        raise Rejected(400, "popup_data must be an object or null", "popup_data")
    fields = {k: data[k] for k in KNOWN_FIELDS if k in data}
    if "popup_data" in fields and fields["popup_data"] is not None:
        fields["popup_data"] = _strict_json("popup_data", fields["popup_data"])  # the column is text
    # Extras only reach the event payload: the store writes only municipality columns, and extras
    # named like a column (subdomain, created_at, ...) are dropped so they cannot overwrite one.
    extras = {k: v for k, v in data.items() if k not in KNOWN_FIELDS and k not in municipalities.c}
    for field, value in extras.items():
        if not _is_text(field):
            raise Rejected(400, "field names must be text without NUL or lone surrogates")
        _strict_json(field, value)
    return fields | extras


def _strict_json(field: str, value) -> str:
    """`value` as JSON text that the reply and later webhooks can encode again: json.loads accepts
    what no strict encoder does (1e400 is read as inf, lone surrogates, any depth), and such a value,
    once stored, would fail every later reply for its municipality."""
    if _nesting(value) > MAX_NESTING:
        raise Rejected(400, f"{field} is nested deeper than {MAX_NESTING} levels", field)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate only fails here: ensure_ascii=True would escape it
    except ValueError:  # UnicodeEncodeError is one
        raise Rejected(400, f"{field} holds a number out of range or a lone surrogate", field) from None
    return text


def _nesting(value) -> int:
    """How many arrays and objects deep `value` goes (0 for a scalar), without recursing."""
    depth, level = 0, [value]
    while containers := [node for node in level if isinstance(node, (dict, list))]:
        depth += 1
        level = [child for node in containers for child in (node.values() if isinstance(node, dict) else node)]
    return depth


def _is_text(value) -> bool:
    # NUL and lone surrogates are valid JSON but no database stores them: reject, don't retry forever.
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_date(value: str) -> bool:
    try:
        return bool(_DATE.match(value)) and dt.date.fromisoformat(value) is not None
    except ValueError:
        return False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite JSON number. An int is always finite (math.isfinite would overflow on 10**400)."""
    return _is_int(value) or isinstance(value, float) and math.isfinite(value)


def _reply(stored: dict) -> dict:
    reply = {k: v.isoformat() if isinstance(v, (dt.datetime, dt.date)) else v for k, v in stored.items()}
    if reply.get("popup_data") is not None:
        reply["popup_data"] = json.loads(reply["popup_data"])
    return reply


def _ping(store: MeetingStore) -> None:
    with store.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def serve(host: str, port: int) -> None:
    """Run the receiver (the `civicband webhooks serve` command)."""
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise SystemExit(f"{SECRET_ENV} is not set: refusing to accept unauthenticated webhooks")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(make_app(open_store(database_url_from_env()), secret), host=host, port=port)
