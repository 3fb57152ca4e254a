"""A scriptable HTTP/2 cleartext server for tests of upstream HTTP/2 (the `h2` package on asyncio, prior knowledge).

Every request is answered 200 with `x-backend` (the server's name), `x-connection` (which of its connections,
counted from 1) and `x-stream` (the stream id), and a body echoing the request body (or "name:path" when empty).
Knobs a test sets while it runs:
    max_streams      SETTINGS_MAX_CONCURRENT_STREAMS of new connections (None: not sent, unlimited)
    delay            seconds each answer waits
    goaway_after     after this many requests on a connection, send GOAWAY with the last stream id processed
                     (the requests after it on that connection are left unanswered: the peer must retry them)
    refuse           stream ids answered with RST_STREAM REFUSED_STREAM instead (per connection), e.g. {1}
    status           the status of every answer (default 200)
    streamed         answer without content-length (the body's length is known only at its end)
    trailers         trailer fields ending every answer, e.g. [(b"x-sum", b"42")] (empty: none)
    head_fields      further fields of every answer's head, e.g. [(b"content-type", b"application/grpc")]
    max_header_list  SETTINGS_MAX_HEADER_LIST_SIZE of new connections (None: not sent, unlimited)
    frozen           read and drop everything, answer nothing (PINGs included): a server gone silent, its
                     connections open (a hung process, a peer behind a NAT that dropped them)
It keeps every request's header list (`heads`) and trailer fields (`request_trailers`, one list per request that
had them) and counts requests (`requests`), connections (`connections`)
and the most streams open at once on one connection (`max_open`).
"""
from __future__ import annotations

import asyncio
import ssl as ssl_module
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame


@dataclass
class _Conn:
    number: int
    conn: h2.connection.H2Connection
    writer: asyncio.StreamWriter
    bodies: dict[int, bytearray] = field(default_factory=dict)
    paths: dict[int, bytes] = field(default_factory=dict)
    requests: int = 0
    open: int = 0
    last_processed: int = 0
    gone_away: bool = False


class H2Backend:
    def __init__(self, name: str = "h2", ssl: ssl_module.SSLContext | None = None) -> None:
        self.name = name
        self.ssl = ssl                       # serve over TLS (the context should offer ALPN h2)
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.max_streams: int | None = None
        self.delay = 0.0
        self.goaway_after: int | None = None
        self.refuse: set[int] = set()
        self.status = 200
        self.streamed = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.head_fields: list[tuple[bytes, bytes]] = []
        self.max_header_list: int | None = None
        self.frozen = False
        self.request_trailers: list[list[tuple[bytes, bytes]]] = []
        self.requests = 0
        self.heads: list[list[tuple[bytes, bytes]]] = []
        self.connections = 0
        self.closed = 0                      # connections ended (by either side)
        self.max_open = 0
        self.refused = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> H2Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self._writers:
                w.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        initial = {}
        if self.max_streams is not None:
            initial[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self.max_streams
        if self.max_header_list is not None:
            initial[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] = self.max_header_list
        if initial:
            # In the first SETTINGS frame, as servers do (a later lowering is legal but races the client).
            conn.local_settings = h2.settings.Settings(client=False, initial_values=initial)
        conn.initiate_connection()
        c = _Conn(self.connections, conn, writer)
        writer.write(conn.data_to_send())
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.frozen:
                    continue
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        c.paths[event.stream_id] = dict(event.headers).get(b":path", b"")
                        self.heads.append(list(event.headers))
                        c.bodies[event.stream_id] = bytearray()
                        c.open += 1
                        self.max_open = max(self.max_open, c.open)
                    elif isinstance(event, h2.events.DataReceived):
                        c.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        self.request_trailers.append(list(event.headers))
                    elif isinstance(event, h2.events.StreamEnded):
                        task = asyncio.create_task(self._answer(c, event.stream_id))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(event, h2.events.StreamReset):
                        c.open -= 1
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.transport.abort()
            self.closed += 1

    async def _answer(self, c: _Conn, stream: int) -> None:
        conn = c.conn
        if stream in self.refuse:
            self.refused += 1
            c.open -= 1
            conn.reset_stream(stream, h2.errors.ErrorCodes.REFUSED_STREAM)
            c.writer.write(conn.data_to_send())
            return
        if c.gone_away or self.frozen:
            return                       # above the GOAWAY's last id: never processed (the client retries it)
        c.requests += 1
        self.requests += 1
        c.last_processed = max(c.last_processed, stream)
        if self.goaway_after is not None and c.requests == self.goaway_after:
            # A graceful GOAWAY written as a raw frame: the h2 state machine would refuse to answer the streams it
            # accepted after its own close_connection().
            c.gone_away = True
            c.writer.write(conn.data_to_send())
            c.writer.write(GoAwayFrame(0, last_stream_id=c.last_processed, error_code=0).serialize())
        if self.delay:
            await asyncio.sleep(self.delay)
        body = bytes(c.bodies.pop(stream, b"")) or self.name.encode() + b":" + c.paths.get(stream, b"")
        head = [(b":status", b"%d" % self.status), (b"x-backend", self.name.encode()),
                (b"x-connection", b"%d" % c.number), (b"x-stream", b"%d" % stream), *self.head_fields]
        if not self.streamed:
            head.append((b"content-length", b"%d" % len(body)))
        conn.send_headers(stream, head)
        await self._send(c, stream, body, not self.trailers)
        if self.trailers:
            conn.send_headers(stream, self.trailers, end_stream=True)
            c.writer.write(conn.data_to_send())
        c.open -= 1

    async def _send(self, c: _Conn, stream: int, body: bytes, end: bool = True) -> None:
        conn = c.conn
        if not body and end:
            conn.send_data(stream, b"", end_stream=True)
            c.writer.write(conn.data_to_send())
        while body:
            room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if room <= 0:
                c.writer.write(conn.data_to_send())
                await asyncio.sleep(0.005)
                continue
            chunk, body = body[:room], body[room:]
            conn.send_data(stream, chunk, end_stream=end and not body)
            c.writer.write(conn.data_to_send())
