"""Slow and surplus clients: each request must arrive in time, and open connections are capped.

aiohttp has neither a header read timeout nor a connection limit (its keep-alive timer, by version, does not
cover a connection that never completes a request), so every connection passes through a thin protocol here:

- From the moment a connection opens, and again after each answer, the next request's headers must arrive
  within the read timeout; otherwise the connection is closed. Trickling bytes does not extend it. The body has
  its own timeout of the same length, in the route (webhook_bridge/app.py), which answers 408.
- Beyond `max_connections` open at once, a new connection is answered 503 (Retry-After) and closed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from webhook_bridge.metrics import BridgeMetrics

# Written to a connection over the cap before closing it: Twilio retries a 5xx with connection overrides.
OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n"
    b"Retry-After: 2\r\nConnection: close\r\n\r\ntoo many conns\n"
)


class ConnectionGuard:
    """The protocol factory of the listening socket: counts connections and times requests."""

    def __init__(self, max_connections: int, read_timeout: float, metrics: BridgeMetrics) -> None:
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.metrics = metrics
        self.open = 0

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """What create_server calls per accepted connection: `make()`'s protocol, guarded, or a refusal."""

        def accept() -> asyncio.Protocol:
            # Counted here, not in connection_made: asyncio may accept a whole backlog before any of them is made.
            if self.open >= self.max_connections:
                self.metrics.connections_refused.inc()
                return _Refusal()
            self.open += 1
            return GuardedConnection(self, make())

        return accept

    def closed(self) -> None:
        self.open -= 1


class _Refusal(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(OVER_CAPACITY)
        transport.close()


class GuardedConnection(asyncio.Protocol):
    """Passes everything to aiohttp's protocol, and closes the connection when a request is late."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self.awaiting_request()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._transport = None
        self._guard.closed()
        self._inner.connection_lost(exc)

    def awaiting_request(self) -> None:
        """Starts the clock for the next request's headers (at connect, and after each answer)."""
        self._cancel()
        if self._transport is None:
            return
        self._timer = asyncio.get_running_loop().call_later(self._guard.read_timeout, self._late)

    def request_arrived(self) -> None:
        """Stops the clock: the headers are in, and the route times the body itself."""
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._guard.metrics.connections_timed_out.inc()
            self._transport.close()


@web.middleware
async def request_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the request's connection (when guarded) that its headers are in, and when it was answered."""
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    if not isinstance(connection, GuardedConnection):
        return await handler(request)
    connection.request_arrived()
    try:
        return await handler(request)
    finally:
        connection.awaiting_request()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a ConnectionGuard (aiohttp's TCPSite, guarded)."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog, reuse_address=True
        )
