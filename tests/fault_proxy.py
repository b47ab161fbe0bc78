"""A TCP proxy on 127.0.0.1 in front of the test S3 server that answers a share of new connections with
a fault, as a loaded or flaky object store does: ``503 SlowDown``, a connection reset, or a response
cut part-way. Own code (a few lines of asyncio) because the faults must be at the connection level,
under the AWS SDK that pyarrow uses, where no Python-level mock reaches."""
from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter

FAULTS = ("slowdown", "reset", "cut")
SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n"
            b"\r\n%s")
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    """``with FaultProxy(port, share=0.1) as proxy:`` then point clients at ``proxy.endpoint``.

    ``faults`` narrows the faults drawn from; ``share`` may change while the proxy runs (new connections follow it).
    """

    def __init__(self, target_port: int, share: float = 0.1, seed: int = 0, faults: tuple[str, ...] = FAULTS) -> None:
        self.target_port = target_port
        self.share = share
        self.faults = faults
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        fault = self.rng.choice(self.faults) if self.rng.random() < self.share else None
        self.counts[fault or "passed"] += 1
        try:
            if fault == "reset":
                await client_r.read(1)
                _reset(client_w)
                return
            if fault == "slowdown":
                await client_r.readuntil(b"\r\n\r\n")
                client_w.write(SLOWDOWN % (len(SLOWDOWN_BODY), SLOWDOWN_BODY))
                await client_w.drain()
                client_w.close()
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            limit = self.rng.randint(20, 4000) if fault == "cut" else None
            upstream = asyncio.ensure_future(_pump(client_r, up_w))
            await _pump(up_r, client_w, limit)
            upstream.cancel()
            up_w.close()
            if fault == "cut":
                _reset(client_w)
            else:
                client_w.close()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            client_w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None = None) -> None:
    """Copy until EOF, or until ``limit`` bytes have passed (a response cut part-way)."""
    sent = 0
    try:
        while limit is None or sent < limit:
            data = await reader.read(65536 if limit is None else min(65536, limit - sent))
            if not data:
                break
            writer.write(data)
            await writer.drain()
            sent += len(data)
    except (ConnectionError, OSError):
        pass
    if limit is None:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN (what a dying load balancer does)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
