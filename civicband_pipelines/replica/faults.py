"""A real HTTP/1.1 proxy that misbehaves on purpose, in front of the replica.

Normal requests are forwarded upstream with httpx; with probability `rate` a request instead gets
one of FAULT_KINDS. Control over HTTP on the proxy itself:
  POST /__faults__ {"rate": 0.2, "kinds": [...], "seed": 1, ...}  set the plan (rate 0 = transparent)
  GET /__faults__                                                  plan and stats
  DELETE /__faults__/stats                                         reset the stats
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus

import httpx

# The last four answer 200 with the replica's body broken: no `next`, rows as arrays, a `next` that
# repeats the request's cursor ("" on the first page), or a body that claims gzip and is not.
BROKEN_BODIES = ("no_next", "array_rows", "stuck_next", "bad_gzip")
FAULT_KINDS = ("error_500", "error_503", "rate_429", "rate_402", "slow", "drop", "truncate",
               "invalid_body", *BROKEN_BODIES)
CONTROL = "/__faults__"
TABLE_PAGE = re.compile(r"^/(?P<subdomain>[^/]+)/meetings/(?P<table>[A-Za-z0-9_]+)\.json$")
# Not forwarded either way (Host is kept, so upstream absolute URLs name the proxy).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
              "te", "trailer", "upgrade", "proxy-connection", "accept-encoding"}
HTML_500 = b"<!DOCTYPE html><html><body><h1>500 Internal Server Error</h1></body></html>"
HTML_503 = b"<!DOCTYPE html><html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
HTML_429 = b"<!DOCTYPE html><html><body><h1>429 Too Many Requests</h1></body></html>"
HTML_200 = b"<!DOCTYPE html><html><body><h1>Please wait while we check your browser</h1></body></html>"
BODY_402 = json.dumps({"error": "rate_limit_exceeded", "ok": False,
                       "message": "More than 15 requests per minute"}).encode()


@dataclass
class FaultPlan:
    rate: float = 0.0  # probability that a request gets a fault
    kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    seed: int = 0
    slow_seconds: float = 2.0  # how long a "slow" answer waits before answering normally
    retry_after: int | str = 1  # Retry-After of "rate_429": seconds or an HTTP date
    retry_after_503: int | str | None = None  # Retry-After of "error_503", if any
    path_contains: str | None = None  # only paths containing this get faults
    max_faults: int | None = None  # stop injecting after this many (None = no limit)

    @classmethod
    def from_json(cls, data: dict) -> FaultPlan:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown plan fields: {sorted(unknown)}")
        plan = cls(**data)
        bad = set(plan.kinds) - set(FAULT_KINDS)
        if bad or not plan.kinds or not 0 <= plan.rate <= 1:
            raise ValueError(f"bad plan: kinds must be from {FAULT_KINDS}, 0 <= rate <= 1")
        return plan


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def keep_alive(self) -> bool:
        conn = (self.header("connection") or "").lower()
        return conn != "close" if self.version == "HTTP/1.1" else conn == "keep-alive"


class _Stats:
    def __init__(self):
        self.requests = 0
        self.forwarded = 0
        self.faults: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.table_pages: list[dict] = []

    def as_json(self) -> dict:
        return {
            "requests": self.requests, "forwarded": self.forwarded,
            "faults": dict(self.faults), "faults_total": sum(self.faults.values()),
            "paths": dict(self.paths), "table_pages": len(self.table_pages),
            # answered 200 without any fault: pages a client certainly received
            "table_pages_ok": sum(1 for p in self.table_pages
                                  if p["status"] == 200 and p["fault"] is None),
            "table_page_requests": self.table_pages,
        }


class FaultProxy:
    def __init__(self, upstream_url: str, plan: FaultPlan | None = None):
        self.upstream = upstream_url.rstrip("/")
        self.set_plan(plan or FaultPlan())
        self.stats = _Stats()
        self.client = httpx.AsyncClient(timeout=60)
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan, self.rng, self.plan_faults = plan, random.Random(plan.seed), 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen (port 0 = any free port); returns the port."""
        self.server = await asyncio.start_server(self._connection, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.client.aclose()

    # ---- connection handling ----

    async def _connection(self, reader, writer) -> None:
        self.writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None or not await self._handle(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away (or sent garbage): nothing left to answer
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _handle(self, req: _Request, writer) -> bool:
        """Answer one request; returns whether the connection may be reused."""
        if req.path == CONTROL or req.path.startswith(CONTROL + "/"):
            status, body = self._control(req)
            await _write(writer, status, [("content-type", "application/json")], body, req)
            return req.keep_alive
        fault = self._pick_fault(req.path)
        counted = req.path != "/-/health"  # readiness polls are not traffic
        if counted:
            self.stats.requests += 1
            self.stats.paths[req.path] += 1
            if fault:
                self.stats.faults[fault] += 1
        page = self._record_page(req, fault) if counted else {}
        status = await self._answer(req, fault, writer)
        page["status"] = status
        return status is not None and req.keep_alive

    def _record_page(self, req: _Request, fault: str | None) -> dict:
        match = TABLE_PAGE.match(req.path)
        if not match:
            return {}
        page = {**match.groupdict(), "query": req.target.partition("?")[2], "fault": fault,
                "status": None, "received_at": time.monotonic()}  # lets tests measure retry waits
        self.stats.table_pages.append(page)
        return page

    def _pick_fault(self, path: str) -> str | None:
        plan = self.plan
        if path == "/-/health" or plan.rate <= 0 or (
                plan.path_contains and plan.path_contains not in path):
            return None
        if plan.max_faults is not None and self.plan_faults >= plan.max_faults:
            return None
        if self.rng.random() >= plan.rate:
            return None
        self.plan_faults += 1
        return self.rng.choice(plan.kinds)

    def _retry_after_503(self) -> list[tuple[str, str]]:
        return [] if self.plan.retry_after_503 is None else [("retry-after", str(self.plan.retry_after_503))]

    async def _answer(self, req: _Request, fault: str | None, writer) -> int | None:
        """Send the answer (or misbehave); returns the status sent, None if none completed."""
        html = [("content-type", "text/html; charset=utf-8")]
        canned = {
            "error_500": (500, html, HTML_500),
            "error_503": (503, [*html, *self._retry_after_503()], HTML_503),
            "rate_429": (429, [*html, ("retry-after", str(self.plan.retry_after))], HTML_429),
            "rate_402": (402, [("content-type", "application/json")], BODY_402),
            "invalid_body": (200, [("content-type", "application/json")], HTML_200),
        }
        if fault in canned:
            await _write(writer, *canned[fault], req)
            return canned[fault][0]
        if fault == "drop":
            return None  # close without a byte of response
        if fault == "slow":
            await asyncio.sleep(self.plan.slow_seconds)
        status, headers, body = await self._forward(req)
        if fault in BROKEN_BODIES:
            headers, body = _broken(fault, req, headers, body)
        if fault == "truncate":  # full Content-Length, half the body, then hang up
            await _write(writer, status, headers, body, req, send_bytes=len(body) // 2)
            return None
        await _write(writer, status, headers, body, req)
        return status

    async def _forward(self, req: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [(k, v) for k, v in req.headers if k.lower() not in HOP_BY_HOP]
        try:
            resp = await self.client.request(
                req.method, self.upstream + req.target, headers=headers, content=req.body)
        except httpx.HTTPError as exc:
            return 502, [("content-type", "text/plain")], f"upstream error: {exc!r}".encode()
        self.stats.forwarded += 1
        out = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        if req.method == "HEAD" and "content-length" in resp.headers:
            out.append(("content-length", resp.headers["content-length"]))
        return resp.status_code, out, resp.content

    def _control(self, req: _Request) -> tuple[int, bytes]:
        if req.method == "DELETE" and req.path == CONTROL + "/stats":
            self.stats = _Stats()
        elif req.method == "POST" and req.path == CONTROL:
            try:
                self.set_plan(FaultPlan.from_json(json.loads(req.body or b"{}")))
            except (ValueError, TypeError) as exc:
                return 400, json.dumps({"ok": False, "error": str(exc)}).encode()
        elif not (req.method == "GET" and req.path == CONTROL):
            return 404, b'{"ok": false, "error": "not found"}'
        body = {"ok": True, "plan": dataclasses.asdict(self.plan), **self.stats.as_json()}
        return 200, json.dumps(body).encode()


def _broken(fault: str, req: _Request, headers: list, body: bytes) -> tuple[list, bytes]:
    if fault == "bad_gzip":
        return [*headers, ("content-encoding", "gzip")], b"\x1f\x8b\x08\x00not gzip at all"
    try:
        data = json.loads(body)
    except ValueError:
        return headers, body
    if not isinstance(data, dict):
        return headers, body
    if fault == "no_next":
        data.pop("next", None)
    elif fault == "array_rows":
        data["rows"] = [list(row.values()) if isinstance(row, dict) else row for row in data.get("rows") or []]
    else:  # stuck_next
        data["next"] = urllib.parse.parse_qs(urllib.parse.urlsplit(req.target).query).get("_next", [""])[0]
    return headers, json.dumps(data).encode()


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # clean close between requests
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    req = _Request(method, target, version, headers)
    length = int(req.header("content-length") or 0)
    if length:
        req.body = await reader.readexactly(length)
    return req


async def _write(writer, status: int, headers, body: bytes, req: _Request,
                 send_bytes: int | None = None) -> None:
    """Write a response with a Content-Length; `send_bytes` sends only that much of the body."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    has_length = any(k.lower() == "content-length" for k, _ in headers)
    lines += [f"{k}: {v}" for k, v in headers]
    if not has_length:
        lines.append(f"content-length: {len(body)}")
    lines.append(f"connection: {'keep-alive' if req.keep_alive else 'close'}")
    payload = b"" if req.method == "HEAD" else body[:send_bytes]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()


async def serve_proxy(upstream_url: str, host: str = "127.0.0.1", port: int = 0,
                      plan: FaultPlan | None = None) -> FaultProxy:
    """Start a FaultProxy listening on host:port; `await proxy.close()` to stop it."""
    proxy = FaultProxy(upstream_url, plan)
    await proxy.start(host, port)
    return proxy
