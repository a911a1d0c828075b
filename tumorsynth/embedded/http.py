"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn closes a connection that stays idle between requests (``timeout_keep_alive``), but once a client has sent
one byte it waits for the rest of the headers for ever, so silent or trickling clients can hold every socket. Here
each request's headers must be complete within ``header_timeout`` of the connection opening (or of the previous
response); otherwise the server answers 408 and closes. Bodies are the application's business (``BodyTimeout``).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def guarded_h11(header_timeout: float) -> type[H11Protocol]:
    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_after = None  # the cycle that came before the request whose headers are awaited

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_headers()

        def handle_events(self) -> None:
            super().handle_events()
            if self._header_timer is not None and self.cycle is not self._waiting_after:
                self._stop_waiting()  # a new request's headers are complete

        def on_response_complete(self) -> None:
            self._await_headers()  # before uvicorn handles a pipelined request, which then stops the timer
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            self._stop_waiting()
            self._waiting_after = self.cycle
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _stop_waiting(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.debug("closing %s: request headers not complete within %.0f s", self.client, header_timeout)
                self.transport.write(TIMEOUT_408)
                self.transport.close()

    return GuardedH11Protocol
