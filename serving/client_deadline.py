"""Drop clients too slow to send their request, so idle sockets cannot pile up.

uvicorn (0.54, its httptools protocol) times out only a kept-alive connection that is idle after a
response. A client that opens a connection and sends half its headers, or trickles its body,
keeps a socket, a parser and (for a body) a request task for as long as it likes; 1,000 of them
stayed open for a whole 30 s test. This protocol gives each request `serving.client_timeout_s`,
from the moment the server waits for it (the connection opened, or the request's first byte on a
kept-alive connection) until its body is complete, then closes the connection. A request
pipelined behind a slow one counts that wait too: clients hardly pipeline, and an exemption
would let one dodge the limit.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import metrics


class ClientDeadlineProtocol(HttpToolsProtocol):
    timeout_s: float  # set by `client_deadline`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on this connection; the first one's runs since connecting
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            metrics.REJECTED.labels("client_timeout").inc()
            self.transport.close()  # a request task waiting on the body gets http.disconnect


def client_deadline(timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http=`, with `timeout_s` for each request."""
    return type("ClientDeadlineProtocol", (ClientDeadlineProtocol,), {"timeout_s": timeout_s})
