"""Command line for the local civic.band replica.

  python -m civicband_pipelines.replica build --dir D --demo
  python -m civicband_pipelines.replica build --dir D --subdomain X --documents N --pages LO HI \
      [--odd-rows] [--seed S]
  python -m civicband_pipelines.replica serve --dir D [--host H] [--port P] [--proxy-port Q] \
      [--service-secret S] [--ready-file F]

Port 0 picks a free port; `--ready-file` gets the URLs as JSON once both servers listen.
The project's client uses the base URL template `http://HOST:PORT/{subdomain}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
from pathlib import Path

import uvicorn

from .faults import serve_proxy
from .generate import TABLES, build_demo, build_municipality
from .server import describe, make_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m civicband_pipelines.replica")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="generate municipality databases")
    build.add_argument("--dir", type=Path, required=True)
    build.add_argument("--demo", action="store_true", help="build the demo municipalities")
    build.add_argument("--subdomain")
    build.add_argument("--documents", type=int, default=40, help="documents per type")
    build.add_argument("--pages", type=int, nargs=2, default=(3, 12), metavar=("LO", "HI"))
    build.add_argument("--odd-rows", action="store_true")
    build.add_argument("--seed", type=int, default=0)
    serve = sub.add_parser("serve", help="serve the replica (and optionally the fault proxy)")
    serve.add_argument("--dir", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001, help="0 = any free port")
    serve.add_argument("--proxy-port", type=int, help="also run the fault proxy (0 = free port)")
    serve.add_argument("--service-secret", help="cap _size at 100 without this X-Service-Secret")
    serve.add_argument("--sql-time-limit-ms", type=int, help="stop queries after this (default 3000, civic.band's)")
    serve.add_argument("--ready-file", type=Path, help="write the URLs here as JSON when ready")
    serve.add_argument("--access-log", action="store_true")
    return parser


def _build(args) -> None:
    if args.demo:
        paths = build_demo(args.dir)
    elif args.subdomain:
        paths = [build_municipality(args.dir, args.subdomain, args.documents, tuple(args.pages),
                                    seed=args.seed, odd_rows=args.odd_rows)]
    else:
        raise SystemExit("build needs --demo or --subdomain")
    for path in paths:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in TABLES.values()}
        print(f"{path}: {counts}")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # We install our own handlers, so that a signal also stops the proxy and we exit 0.
        yield


async def _serve(args) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    config = uvicorn.Config(make_app(args.dir, args.service_secret, args.sql_time_limit_ms), log_level="warning",
                            access_log=args.access_log, lifespan="on")
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    proxy = proxy_url = None
    if args.proxy_port is not None:
        proxy = await serve_proxy(url, args.host, args.proxy_port)
        proxy_url = f"http://{args.host}:{proxy.server.sockets[0].getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if not server.started:
        await task  # raises whatever stopped uvicorn from starting
        raise SystemExit("replica server did not start")
    info = {"url": url, "base_url_template": url + "/{subdomain}", "proxy_url": proxy_url,
            "control_url": proxy_url and proxy_url + "/__faults__", "pid": os.getpid()}
    print(f"replica serving {args.dir} at {url}/{{subdomain}} {describe(args.dir)}", flush=True)
    if proxy_url:
        print(f"fault proxy at {proxy_url}/{{subdomain}} (control {proxy_url}/__faults__)",
              flush=True)
    if args.ready_file:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(args.ready_file)  # readers never see a half-written file
    try:
        await task
    finally:
        if proxy:
            await proxy.close()
    print("replica stopped", flush=True)


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "build":
        _build(args)
    else:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
