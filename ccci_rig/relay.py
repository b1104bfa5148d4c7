"""A TCP relay: ``127.0.0.1:<port>`` inside a node's namespace to ``127.0.0.1:<port>`` of the host.

A node's processes reach the shared services (Redis, the Keycloak stand-in, the forge...) at
the same ``127.0.0.1:<port>`` as the host's processes do, as they would through a tunnel or a
private link on a real second server. One process per node: it runs in the host's namespace,
binds its listeners inside the node's namespace (``setns`` for the bind only; a socket keeps
the namespace it was made in), and every connection it makes outward is the host's. No
address outside loopback is used, no interface is added.

``python -m ccci_rig.relay --netns NAME --port P [--port P ...] --ready FILE --pidfile FILE``
writes its pid, then the ready file (the ports, one a line) once every listener is bound, and
stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from ccci_rig import netns

LOOPBACK = "127.0.0.1"
CHUNK = 1 << 16
log = logging.getLogger("ccci_rig.relay")


def bind_inside(name: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1:<port> inside namespace ``name``."""
    socks: list[socket.socket] = []
    with netns.entered(name):
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"cannot listen on {LOOPBACK}:{port} inside "
                                         f"namespace {name}: {exc.strerror}") from exc
            sock.listen(128)
            sock.setblocking(False)
            socks.append(sock)
    return socks


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _handler(port: int) -> Handler:
    async def handle(inner_r: asyncio.StreamReader, inner_w: asyncio.StreamWriter) -> None:
        try:
            outer_r, outer_w = await asyncio.open_connection(LOOPBACK, port)
        except OSError as exc:
            log.warning("relay %d: the host's %s:%d refused: %s", port, LOOPBACK, port, exc)
            await _close(inner_w)
            return
        try:
            await asyncio.gather(_pump(inner_r, outer_w), _pump(outer_r, inner_w))
        finally:
            await _close(outer_w)
            await _close(inner_w)

    return handle


async def serve(socks: list[socket.socket], ready: Path | None) -> None:
    servers = [await asyncio.start_server(_handler(s.getsockname()[1]), sock=s) for s in socks]
    if ready is not None:
        tmp = ready.with_suffix(".tmp")
        tmp.write_text("".join(f"{s.getsockname()[1]}\n" for s in socks))
        os.replace(tmp, ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccci_rig.relay", description=__doc__)
    parser.add_argument("--netns", required=True, help="the node's namespace (ip netns list)")
    parser.add_argument("--port", type=int, action="append", required=True,
                        help="a port to relay (repeat for several)")
    parser.add_argument("--ready", type=Path, help="written once every listener is bound")
    parser.add_argument("--pidfile", type=Path, help="this process's pid is written here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.pidfile is not None:
        args.pidfile.write_text(f"{os.getpid()}\n")
    bad = [p for p in args.port if not 0 < p < 65536]
    if bad:
        parser.error(f"ports must be 1-65535, got {bad}")
    socks = bind_inside(args.netns, args.port)  # before any thread or loop exists
    log.info("relaying %s inside %s to the host's loopback", args.port, args.netns)
    asyncio.run(serve(socks, args.ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
