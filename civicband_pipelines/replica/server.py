"""ASGI app serving `<root>/<subdomain>/meetings.db` at `/<subdomain>/...`, like `<subdomain>.civic.band`.

One real Datasette 1.0a19 instance per municipality, created on first request, so municipalities
built after start-up are served too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasette.handle_exception
from datasette.app import Datasette

# Datasette prints a rich traceback, with locals, for every 400 (e.g. `_size=1001`); too noisy.
datasette.handle_exception.rich = None

HOME = "https://civic.band/"
SUBDOMAIN = re.compile(r"^[a-z0-9][a-z0-9.-]*$")  # as civic.band spells them
PUBLIC_MAX_SIZE = 100  # what civic.band gives callers without the service secret
SETTINGS = {"default_page_size": 100, "sql_time_limit_ms": 3000, "max_returned_rows": 1000}
REDIRECT_BODY = (b'<!DOCTYPE html><html><head><title>civic.band</title></head>'
                 b'<body><a href="https://civic.band/">civic.band</a></body></html>')


@dataclass
class _Site:
    datasette: Datasette
    app: object  # the Datasette ASGI app
    file_key: tuple[int, int]  # (device, inode) of meetings.db when opened


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _file_key(path: Path) -> tuple[int, int] | None:
    # In-place writes are seen live; a replaced file (new inode) needs new connections.
    # An open connection pins the old inode, so its number cannot be reused meanwhile.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def cap_size(query: bytes, limit: int = PUBLIC_MAX_SIZE) -> bytes:
    """Silently cap `_size` like civic.band does for callers without the service secret."""
    parts = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"_size" and (value == b"max" or (value.isdigit() and int(value) > limit)):
            part = b"_size=%d" % limit
        parts.append(part)
    return b"&".join(parts)


def _fix_urls(send, prefix: str):
    """Datasette 1.0a19 gets base_url wrong in two headers: redirects lack it
    (`/meetings.json?sql=` -> `/meetings/-/query.json`, host-relative on civic.band, so here it
    needs the `/<subdomain>` prefix) and the `Link: rel="next"` URL has it twice."""
    pre = prefix.encode()

    def fix(name: bytes, value: bytes) -> bytes:
        if name == b"location" and value.startswith(b"/") and not value.startswith(pre + b"/"):
            return pre + value
        if name == b"link":
            return value.replace(pre + pre + b"/", pre + b"/")
        return value

    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = [(k, fix(k.lower(), v)) for k, v in message.get("headers", [])]
            message = dict(message, headers=headers)
        await send(message)
    return wrapped


class ReplicaRouter:
    """Routes `/<subdomain>/...` to that municipality's Datasette; anything else like civic.band."""

    def __init__(self, root: Path, service_secret: str | None = None, sql_time_limit_ms: int | None = None):
        self.root = Path(root)
        self.service_secret = service_secret
        self.settings = SETTINGS | {"sql_time_limit_ms": sql_time_limit_ms or SETTINGS["sql_time_limit_ms"]}
        self.sites: dict[str, _Site] = {}
        self.lock = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        path = scope.get("raw_path", b"").decode("ascii") or scope["path"]
        path = path.partition("?")[0]
        if path == "/-/health":
            return await _send(send, 200, b'{"ok": true}', [(b"content-type", b"application/json")])
        subdomain = path.split("/")[1]
        site = await self._site(subdomain)
        if site is None:  # civic.band sends unknown subdomains to its home page
            return await _send(send, 302, REDIRECT_BODY, [
                (b"location", HOME.encode()), (b"content-type", b"text/html; charset=utf-8")])
        if path == f"/{subdomain}":
            path += "/"
        scope = dict(scope, path=path, raw_path=path.encode("ascii"))
        if self.service_secret and self._secret_header(scope) != self.service_secret:
            scope["query_string"] = cap_size(scope.get("query_string", b""))
        await site.app(scope, receive, _fix_urls(send, f"/{subdomain}"))

    @staticmethod
    def _secret_header(scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name.lower() == b"x-service-secret":
                return value.decode("latin-1")
        return None

    async def _site(self, subdomain: str) -> _Site | None:
        if not SUBDOMAIN.match(subdomain):
            return None
        db_path = self.root / subdomain / "meetings.db"
        key = _file_key(db_path)
        site = self.sites.get(subdomain)
        if site and site.file_key == key:
            return site
        async with self.lock:
            site = self.sites.get(subdomain)
            key = _file_key(db_path)
            if site and site.file_key == key:
                return site
            if site:  # the file was rebuilt: connections would still read the old inode
                self.sites.pop(subdomain)
                asyncio.get_running_loop().create_task(_retire(site))
            if key is None:
                return None
            site = await _open_site(subdomain, db_path, key, self.settings)
            self.sites[subdomain] = site
            return site

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for site in self.sites.values():
                    await _retire(site, grace=0)
                self.sites.clear()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _open_site(subdomain: str, db_path: Path, key, settings: dict) -> _Site:
    ds = Datasette(files=[str(db_path)], settings=dict(settings, base_url=f"/{subdomain}/"))
    # Datasette starts itself on the first request, but lets concurrent first requests
    # through before startup has finished; start it here, under the lock, instead.
    await ds.invoke_startup()
    return _Site(ds, ds.app(), key)


async def _retire(site: _Site, grace: float = 5.0) -> None:
    """Close a replaced instance once requests already running on it have had time to finish."""
    await asyncio.sleep(grace)
    if site.datasette.executor is not None:
        await asyncio.to_thread(site.datasette.executor.shutdown, True)
    for db in site.datasette.databases.values():
        db.close()


def make_app(root: Path, service_secret: str | None = None, sql_time_limit_ms: int | None = None) -> ReplicaRouter:
    """The replica ASGI app. With `service_secret`, requests without a matching
    `X-Service-Secret` header get `_size` capped at 100, as on civic.band. Queries stop after
    `sql_time_limit_ms` (default civic.band's 3000)."""
    return ReplicaRouter(Path(root), service_secret, sql_time_limit_ms)


def describe(root: Path) -> str:
    """Subdomains currently servable under root (for logs)."""
    names = sorted(p.parent.name for p in Path(root).glob("*/meetings.db"))
    return json.dumps(names)
