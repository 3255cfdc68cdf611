"""The local control endpoint (``python -m ray_hyparview.agent status``) and the optional
Prometheus ``/metrics`` page.

Both are tiny asyncio stream servers: the control endpoint, on loopback or a Unix socket,
answers one JSON line per connection; the metrics page, on loopback unless ``[agent]
metrics_host`` says otherwise, one HTTP response rendered by ``prometheus_client``. Neither
accepts input beyond a short request line, so neither can be used to steer the agent.

The request line is bounded (:data:`MAX_REQUEST_LINE` bytes, the stream reader's own limit):
a longer line, or one that never ends, gets one JSON error line back (``{"error": ...}``) and
is counted as ``control.rejected.<cause>``; nothing is logged and no traceback escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from ray_hyparview.agent.metrics import registry
from ray_hyparview.transport.endpoints import EndpointError, format_host, parse_endpoint

__all__ = [
    "DEFAULT_METRICS_HOST",
    "MAX_REQUEST_LINE",
    "control_server",
    "metrics_server",
    "prometheus_text",
    "query_status",
]

_MAX_REQUEST = 1024
DEFAULT_METRICS_HOST: Final = "127.0.0.1"
"""Where ``/metrics`` listens unless told otherwise ([agent] metrics_host): loopback only."""
MAX_REQUEST_LINE: Final = 1024
"""Longest request line the control endpoint reads, newline included."""
_DRAIN_LIMIT = 1 << 20
"""Bytes of an over-long request read and discarded after the error reply: closing a socket
with unread input resets it, and the reset can overtake the reply."""
StatsSource = Callable[[], Mapping[str, Any]]


def _parse(endpoint: str) -> tuple[str, str, int]:
    """``tcp://host:port`` -> ("tcp", host, port); ``ipc:///path`` -> ("ipc", path, 0)."""
    try:
        parsed = parse_endpoint(endpoint)
    except EndpointError:
        parsed = None
    if parsed is not None and parsed.scheme == "ipc" and parsed.path is not None:
        return "ipc", parsed.path, 0
    if parsed is None or parsed.host is None or parsed.port is None:
        raise ValueError(
            f"control endpoint must be tcp://host:port or ipc://path, got {endpoint!r}"
        )
    return "tcp", parsed.host, parsed.port


async def _serve(
    endpoint: str,
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    *,
    limit: int,
) -> tuple[asyncio.Server, str]:
    kind, where, port = _parse(endpoint)
    if kind == "ipc":
        server = await asyncio.start_unix_server(handle, path=where, limit=limit)
        return server, endpoint
    server = await asyncio.start_server(handle, host=where, port=port, limit=limit)
    bound_port = server.sockets[0].getsockname()[1]
    return server, f"tcp://{format_host(where)}:{bound_port}"


@contextlib.asynccontextmanager
async def control_server(
    endpoint: str | None, stats: StatsSource, *, counters: Counter[str] | None = None
) -> AsyncIterator[str | None]:
    """Serve ``stats()`` as one JSON line to every connection on ``endpoint``; yields the bound
    endpoint (port 0 resolved), or None when ``endpoint`` is None. Refused requests are counted
    in ``counters`` (a private counter when None) as ``control.rejected.<cause>``."""
    if endpoint is None:
        yield None
        return
    counted: Counter[str] = counters if counters is not None else Counter()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(2.0):
                try:
                    await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    await _refuse(reader, writer, counted, "too_long")
                    return
                except asyncio.IncompleteReadError:
                    pass  # a short request ended by EOF instead of a newline: answer it
                writer.write(json.dumps(stats(), sort_keys=True).encode() + b"\n")
                await writer.drain()
        except TimeoutError:
            counted["control.rejected.timeout"] += 1
        except ConnectionError:
            counted["control.rejected.connection"] += 1
        finally:
            writer.close()

    server, bound = await _serve(endpoint, handle, limit=MAX_REQUEST_LINE)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counted: Counter[str], cause: str
) -> None:  # one cause today; named so that others count apart
    """Answer a bad request with one JSON error line, then read (and drop) what the client still
    sends, up to a bound, so that closing does not reset the connection under the reply."""
    counted[f"control.rejected.{cause}"] += 1
    message = f"request line longer than {MAX_REQUEST_LINE} bytes"
    writer.write(json.dumps({"error": message}).encode() + b"\n")
    await writer.drain()
    writer.write_eof()
    drained = 0
    while drained < _DRAIN_LIMIT:
        chunk = await reader.read(65536)
        if not chunk:
            break
        drained += len(chunk)


async def query_status(endpoint: str, *, deadline: float = 3.0) -> dict[str, Any]:
    """Ask a running agent's control endpoint for its status."""
    kind, where, port = _parse(endpoint)
    async with asyncio.timeout(deadline):
        if kind == "ipc":
            reader, writer = await asyncio.open_unix_connection(where)
        else:
            reader, writer = await asyncio.open_connection(where, port)
        try:
            writer.write(b"status\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    result = json.loads(line)
    if not isinstance(result, dict):
        raise ValueError("the control endpoint answered something other than a JSON object")
    return result


def prometheus_text(stats: Mapping[str, Any]) -> str:
    """Render an agent's ``stats()`` in the Prometheus text exposition format, as the
    ``/metrics`` page does (see :mod:`ray_hyparview.agent.metrics` for the names and labels)."""
    from prometheus_client import generate_latest

    return generate_latest(registry(lambda: stats)).decode()


@contextlib.asynccontextmanager
async def metrics_server(
    port: int | None, stats: StatsSource, *, host: str = DEFAULT_METRICS_HOST
) -> AsyncIterator[int | None]:
    """Serve ``GET /metrics`` on ``host:port`` through ``prometheus_client``'s exposition of
    one collector over ``stats()``; yields the bound port (None when off).

    ``host`` defaults to loopback; ``0.0.0.0`` (or a pod's address) lets a Prometheus on
    another host scrape it. Raises :class:`~ray_hyparview.agent.metrics.MetricsUnavailable` before
    binding anything when ``prometheus_client`` is not installed. The page is served from the
    agent's own event loop (no thread reads the agent's state), and only ``GET /metrics`` with
    a short request is answered."""
    if port is None:
        yield None
        return
    scraped = registry(stats)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(2.0):
                request = await reader.readuntil(b"\r\n\r\n")
                if len(request) > _MAX_REQUEST or not re.match(rb"GET /metrics[ ?]", request):
                    writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                else:
                    body = generate_latest(scraped)
                    writer.write(
                        b"HTTP/1.0 200 OK\r\n"
                        + f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode()
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host=host or None, port=port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
