"""uvicorn's httptools protocol with a bound on request headers.

httptools sets no limit of its own: a client could make the server buffer a 16 MiB header before the app sees a
byte of it. This protocol counts what arrives before a request's headers are complete and, past the bound, answers
431 problem+json and closes the connection without parsing more. The app itself (`GuardMiddleware`) applies the
contract's exact rule (16 KiB of header names and values); this bound is a little looser (the request line and
the header syntax count here too), so it only ever catches what the app would refuse anyway."""

from __future__ import annotations

import asyncio
import os

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from todo_api.bounds import MAX_HEADER_BYTES
from todo_api.errors import HeadersTooLarge, problem_body

# Well above the app's limit: heads between the two are refused by the app itself, with CORS headers and the
# client's request id; this only keeps a server from buffering megabytes of them.
RAW_HEADER_BYTES = 4 * MAX_HEADER_BYTES


# After refusing, what the client still sends is read and dropped for a while (a "lingering close", as Apache
# does): closing at once with its data unread would make the kernel reset the connection, and the client might
# never see the 431.
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0
    _in_head = True
    _dropped: int | None = None  # bytes dropped since the refusal; None: not refused

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes, self._in_head = 0, True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        # Counted only while a head is still incomplete after this read: bytes of a body that came in the same
        # read as the end of its head are not head bytes.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > RAW_HEADER_BYTES:
                self._refuse()

    def on_message_begin(self) -> None:
        self._in_head = True  # the next request's head starts here (its first byte is parsed)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def _refuse(self) -> None:
        body = orjson.dumps(
            problem_body(HeadersTooLarge(f"The request headers are larger than {MAX_HEADER_BYTES} bytes."))
        )
        head = [
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            b"content-type: application/problem+json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"x-request-id: " + os.urandom(16).hex().encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._dropped = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is complete: the client reads it, then end of stream
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)
