"""An asyncio fan-out: fetch many URLs concurrently, retry the flaky ones, combine the answers.

    python examples/http_fanout.py
    dispatcher run examples/http_fanout.py:fanout

The example starts its own small HTTP server on 127.0.0.1 (an ephemeral port, loopback only)
that answers each request after a short delay and, here, fails the first request for a few
items with 503. ``fetch`` is a coroutine function: the ``async`` executor awaits all the fetches
at once on one event loop, so twenty slow requests take about as long as one; ``retry_on``
re-runs a fetch that met a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from dispatcher import DispatchNode, arun, hookimpl, op

ITEMS = 20
DELAY = 0.2  # seconds the server takes to answer each request
FLAKY = frozenset({3, 11})  # items whose first request fails with 503


class Unavailable(Exception):
    """The server answered 503: worth trying again."""


# -- the server ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """``GET /item/N`` answers ``{"id": N, "value": N*N}`` after DELAY seconds."""

    flaky: frozenset[int] = frozenset()
    seen: set[int] = set()
    lock = threading.Lock()

    def do_GET(self) -> None:
        try:
            item = int(self.path.removeprefix("/item/"))
        except ValueError:
            self.send_error(404)
            return
        time.sleep(DELAY)
        with self.lock:
            first = item not in self.seen
            self.seen.add(item)
        if item in self.flaky and first:
            self.send_error(503, "busy, try again")
            return
        body = json.dumps({"id": item, "value": item * item}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the example's output to its results


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # every fetch connects at once: a short backlog would drop some


def start_server(flaky: frozenset[int] = frozenset()) -> tuple[ThreadingHTTPServer, str]:
    """A server on 127.0.0.1 (never another interface), answering from a daemon thread.

    The first request for each item in ``flaky`` gets a 503.
    """
    state = {"flaky": flaky, "seen": set(), "lock": threading.Lock()}
    server = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), state))
    threading.Thread(target=server.serve_forever, name="example-http", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host!s}:{port}"


@contextlib.contextmanager
def serving(flaky: frozenset[int] = frozenset()) -> Iterator[str]:
    """The server's base URL, for the duration of the ``with`` block."""
    server, url = start_server(flaky)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


# -- the graph -------------------------------------------------------------------------------


@op(timeout=10)
async def fetch(url: str) -> dict[str, int]:
    """GET ``url`` with asyncio streams and decode its JSON body."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if status == 503:
        raise Unavailable(url)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status}")
    data: dict[str, int] = json.loads(body)
    return data


@op
def combine(answers: list[dict[str, int]]) -> dict[str, int]:
    """One summary of every answer."""
    return {"items": len(answers), "sum of values": sum(a["value"] for a in answers)}


def build(base_url: str, items: int = ITEMS) -> DispatchNode:
    """``items`` fetches in parallel, then one node that combines them."""
    return combine([fetch(f"{base_url}/item/{i}") for i in range(items)])


def fanout() -> DispatchNode:
    """The graph against a server that lives as long as this process, for the command line
    (which has no ``retry_on`` option: this server is never busy)."""
    _, url = start_server()
    return build(url)


# -- running it ------------------------------------------------------------------------------


class RetryLog:
    """An observer plugin: notes the path of each fetch that is run again."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    @hookimpl
    def dispatcher_task_retried(self, error: BaseException) -> None:
        self.paths.append(urlsplit(str(error)).path)


async def main() -> None:
    with serving(FLAKY) as url:
        start = time.perf_counter()
        # Inside a running asyncio program: ``arun`` runs the coroutine nodes on this loop.
        retries = RetryLog()
        summary = await arun(build(url), executor="async", retry_on=Unavailable, plugins=[retries])
        elapsed = time.perf_counter() - start
    print(f"fetched {summary['items']} items from {url} in {elapsed:.2f} s")
    print(f"  each answer takes {DELAY:.2f} s; the requests ran concurrently")
    retried = sorted(retries.paths, key=lambda path: (len(path), path))  # /item/3 before /11
    print(f"  retried after a 503: {', '.join(retried) or 'none'}")
    print(f"  sum of values: {summary['sum of values']}")


if __name__ == "__main__":
    asyncio.run(main())
