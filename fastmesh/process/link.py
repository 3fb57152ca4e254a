"""The supervisor-worker control channel: one JSON object per SOCK_SEQPACKET packet, file descriptors alongside.

A socketpair per worker (the worker inherits its end as --control-fd). Packets keep message boundaries, and the
descriptors passed with a packet (SCM_RIGHTS: the memfds of a new config and of a stats block) arrive with
exactly that packet, which a byte stream does not promise. The supervisor sends requests {"id", "op", ...} and
the worker answers each with {"id", "ok", ...}; the worker never starts a conversation. A packet is limited by
the socket buffer (about 200 KB by default), so large payloads travel in a memfd instead.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger("fastmesh.control")

MAX_PACKET = 1 << 20        # bytes read per packet; a longer one arrives cut (MSG_TRUNC) and is refused
MAX_FDS = 4                 # descriptors accepted per packet


class LinkClosed(Exception):
    """The other end is gone (the worker exited, or the supervisor did)."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end); only the worker end is inheritable, for pass_fds."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


class Channel:
    """Packets in and out of one non-blocking SOCK_SEQPACKET socket on the running loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False

    async def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Send one message with fds (the caller keeps and closes its copies). LinkClosed if the peer is gone."""
        data = json.dumps(message, separators=(",", ":")).encode()
        loop = asyncio.get_running_loop()
        while True:
            if self.closed:
                raise LinkClosed("the control channel is closed")
            try:
                socket.send_fds(self.sock, [data], list(fds))
                return
            except BlockingIOError:
                await self._wait(loop.add_writer, loop.remove_writer)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise LinkClosed(str(exc)) from None

    async def recv(self) -> tuple[dict[str, Any], list[int]]:
        """The next message and the fds that came with it (now the caller's to close). LinkClosed at the end."""
        loop = asyncio.get_running_loop()
        while True:
            if self.closed:
                raise LinkClosed("the control channel is closed")
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, MAX_PACKET, MAX_FDS)
            except BlockingIOError:
                await self._wait(loop.add_reader, loop.remove_reader)
                continue
            except ConnectionResetError:
                raise LinkClosed("connection reset") from None
            if not data and not fds:
                raise LinkClosed("the other end closed the control channel")
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_all(fds)
                log.error("control message over %d bytes or %d fds: dropped", MAX_PACKET, MAX_FDS)
                continue
            try:
                message = json.loads(data)
            except ValueError:
                _close_all(fds)
                log.error("control message is not JSON: dropped")
                continue
            return message, fds

    async def _wait(self, add: Callable[..., None], remove: Callable[[int], Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not future.done():
                future.set_result(None)
        add(fd, ready)
        try:
            await future
        finally:
            remove(fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class WorkerLink:
    """The supervisor's end for one worker: call(op) sends a request and waits for its answer."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.channel = Channel(sock)
        self.name = name                        # "w0", for messages
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 1
        self.reader = asyncio.create_task(self._read())

    async def call(self, op: str, timeout: float, fds: Sequence[int] = (), **fields: Any) -> dict[str, Any]:
        """The worker's answer to {"op": op, **fields}; TimeoutError after timeout seconds, LinkClosed if it exits."""
        rid = self.next_id
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            await self.channel.send({"id": rid, "op": op, **fields}, fds)
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            self.pending.pop(rid, None)

    async def _read(self) -> None:
        try:
            while True:
                message, fds = await self.channel.recv()
                _close_all(fds)                 # workers send none; never leak one that arrives anyway
                future = self.pending.get(message.get("id", 0))
                if future is not None and not future.done():
                    future.set_result(message)
        except LinkClosed as exc:
            reason = exc
        except asyncio.CancelledError:
            reason = LinkClosed("closed")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(LinkClosed(f"{self.name} is gone ({reason})"))

    def close(self) -> None:
        self.reader.cancel()
        self.channel.close()


Handler = Callable[[dict[str, Any], list[int]], Awaitable[dict[str, Any]]]


async def serve(channel: Channel, handlers: dict[str, Handler]) -> None:
    """The worker's end: answer each request with its op's handler (which owns the fds) until the supervisor is
    gone. Requests run one after another, in the order they came."""
    while True:
        try:
            message, fds = await channel.recv()
        except LinkClosed:
            return
        handler = handlers.get(message.get("op", ""))
        if handler is None:
            _close_all(fds)
            answer: dict[str, Any] = {"ok": False, "error": f"unknown op {message.get('op')!r}"}
        else:
            try:
                answer = await handler(message, fds)
            except Exception as exc:        # a bug: answer so the supervisor does not wait for a timeout
                log.exception("control request %r failed", message.get("op"))
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            await channel.send({"id": message.get("id", 0), **answer})
        except LinkClosed:
            return


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def memfd_with(data: bytes, name: str) -> int:
    """A memfd holding data, positioned at its start (the receiver reads it with read_all)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_all(fd: int) -> bytes:
    """Everything in a passed memfd, from offset 0 (pread: the sender's file position is shared); closes fd."""
    try:
        chunks, offset = [], 0
        while chunk := os.pread(fd, 1 << 16, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
