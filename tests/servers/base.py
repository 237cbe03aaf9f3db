"""Threaded local HTTP server with request recording and fault injection.

Vendor fakes (``PostHogServer``, ``RudderStackServer``) subclass
``RecordingHTTPServer`` and implement ``handle_request``. Everything here is
stdlib-only so the servers never depend on the SDKs they are testing.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "Fault",
    "FaultQueue",
    "RecordedRequest",
    "RecordingHTTPServer",
    "Response",
    "json_size",
]

PathSpec = str | Collection[str]

# Hard cap on bytes read from the socket, whatever the vendor limits are, so a
# runaway test cannot exhaust memory.
MAX_WIRE_BYTES = 256 * 1024 * 1024


def json_size(obj: Any) -> int:
    """Size in bytes of ``obj`` as compact UTF-8 JSON (how size limits are measured)."""
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _norm_path(path: str) -> str:
    # "/batch/" and "/batch" are the same endpoint for every vendor here.
    return path.rstrip("/") or "/"


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        merged = {"Content-Type": "application/json"}
        merged.update(headers or {})
        return cls(status, json.dumps(payload).encode("utf-8"), merged)

    @classmethod
    def text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
        merged = {"Content-Type": "text/plain; charset=utf-8"}
        merged.update(headers or {})
        return cls(status, text.encode("utf-8"), merged)


@dataclass
class RecordedRequest:
    """One request as the server saw it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes  # bytes on the wire
    body: bytes  # after Content-Encoding was undone
    json: Any = None  # parsed body, None when empty or not JSON
    received_at: float = 0.0  # server clock
    # Set when the body could not be decoded (bad gzip, unknown encoding).
    decode_error: str | None = None
    # True when the decoded body was cut at the server's decompression cap.
    body_truncated: bool = False
    status: int | None = None  # status sent; None if the connection was dropped
    fault: Fault | None = None  # the injected fault that answered, if any

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def dropped(self) -> bool:
        return self.status is None


@dataclass(eq=False)
class Fault:
    """A scripted answer for matching requests.

    ``status`` None means "answer normally" (useful with ``delay``). ``times``
    None means unlimited; ``until`` (server clock) bounds a time-window fault.
    Matching is on every given criterion: ``path`` (exact, trailing slash
    ignored), ``method``, ``contains_id`` (event uuid / messageId carried by
    the request) and an arbitrary ``match`` predicate.
    """

    status: int | None = None
    retry_after: float | int | str | None = None
    delay: float = 0.0
    drop: bool = False
    body: Any = None  # bytes/str/JSON-able; None = vendor-style error body
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = 1
    until: float | None = None
    path: PathSpec | None = None
    method: str | None = None
    contains_id: str | Collection[str] | None = None
    match: Callable[[RecordedRequest], bool] | None = None
    hits: int = 0  # how many requests this fault answered
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def _expired(self, now: float) -> bool:
        if self.cancelled:
            return True
        if self.until is not None and now >= self.until:
            return True
        return self.times is not None and self.hits >= self.times

    def _matches(self, req: RecordedRequest, ids: set[str]) -> bool:
        if self.method is not None and req.method.upper() != self.method.upper():
            return False
        if self.path is not None:
            paths = [self.path] if isinstance(self.path, str) else list(self.path)
            if _norm_path(req.path) not in {_norm_path(p) for p in paths}:
                return False
        if self.contains_id is not None:
            wanted = (
                {self.contains_id} if isinstance(self.contains_id, str) else set(self.contains_id)
            )
            if not wanted & ids:
                return False
        if self.match is not None and not self.match(req):
            return False
        return True


class FaultQueue:
    """Ordered faults; each request is answered by the first live one matching it."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def push(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Queue ``fault`` or ``Fault(**kwargs)``; returns it (``.hits``, ``.cancel()``)."""
        if fault is None:
            fault = Fault(**kwargs)
        elif kwargs:
            raise TypeError("pass a Fault or keyword arguments, not both")
        if fault.status is None and not fault.drop and fault.delay <= 0:
            raise ValueError("a fault needs a status, drop=True or a delay")
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, req: RecordedRequest, ids: set[str]) -> Fault | None:
        now = self._clock()
        with self._lock:
            self._faults = [f for f in self._faults if not f._expired(now)]
            for f in self._faults:
                if f._matches(req, ids):
                    f.hits += 1
                    return f
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        now = self._clock()
        with self._lock:
            return [f for f in self._faults if not f._expired(now)]

    def __len__(self) -> int:
        return len(self.pending)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive like the real vendors; SDK sessions pool connections.
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections are closed after this, so nothing hangs forever.
    timeout = 15
    server: _ThreadingServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle plus
        # the client's delayed ACK adds ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep pytest output clean

    def _dispatch(self) -> None:
        self.server.owner._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class _ThreadingServer(ThreadingHTTPServer):
    # Daemon so a forgotten server never blocks interpreter exit; stop() joins
    # the handler threads itself (socketserver only joins non-daemon ones).
    daemon_threads = True

    def __init__(self, address: Any, owner: RecordingHTTPServer):
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished (a SIGKILLed worker) is not a server bug; keep test output clean.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class RecordingHTTPServer:
    """Base fake server: ``start()``/``stop()``/context manager, ``.url``,
    ``.requests`` and ``.faults``. Subclasses implement ``handle_request``."""

    name = "recording-http"
    # Cap for decoded bodies; vendor servers set it to their body limit so an
    # oversized (or bomb) gzip body is flagged ``body_truncated`` without
    # inflating it entirely.
    max_decoded_bytes = 64 * 1024 * 1024

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.host = host
        self._requested_port = port
        self.clock = clock
        self.faults = FaultQueue(clock)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._generation = 0  # bumped on every recorded request
        self.errors: list[str] = []  # tracebacks of bugs in handle_request
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> RecordingHTTPServer:
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} server already started")
        self._stopping.clear()
        self._httpd = _ThreadingServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # stop accepting
        self._stopping.set()  # wake handlers sleeping in a delay fault
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            # Unblocks handler threads parked on idle keep-alive connections.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in conns.values():
            thread.join(timeout=5)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> RecordingHTTPServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} server is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- recording -----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, *paths: str) -> list[RecordedRequest]:
        wanted = {_norm_path(p) for p in paths}
        return [r for r in self.requests if _norm_path(r.path) in wanted]

    def clear(self) -> None:
        """Forget recorded requests (subclasses also forget events)."""
        with self._lock:
            self._requests.clear()

    def wait_for(
        self, predicate: Callable[[RecordingHTTPServer], bool], timeout: float = 5.0
    ) -> None:
        """Block until ``predicate(self)`` holds; re-checked after every request."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = self._generation
            if predicate(self):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: condition not met in {timeout}s")
            with self._changed:
                if self._generation == seen:  # nothing recorded since the check
                    self._changed.wait(remaining)

    # -- fault helpers -------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, **kwargs: Any) -> Fault:
        return self.faults.push(status=status, times=n, **kwargs)

    def fail_for(self, seconds: float, status: int = 503, **kwargs: Any) -> Fault:
        """Answer every matching request with ``status`` for ``seconds`` (server clock)."""
        return self.faults.push(status=status, times=None, until=self.clock() + seconds, **kwargs)

    def rate_limit_next(
        self, n: int = 1, retry_after: float | int | str = 1, **kwargs: Any
    ) -> Fault:
        return self.faults.push(status=429, retry_after=retry_after, times=n, **kwargs)

    def slow_next(self, seconds: float, n: int = 1, **kwargs: Any) -> Fault:
        """Delay the next ``n`` answers; pass ``status=`` to also fail them."""
        return self.faults.push(delay=seconds, times=n, **kwargs)

    def drop_next(self, n: int = 1, **kwargs: Any) -> Fault:
        """Close the connection without answering the next ``n`` matching requests."""
        return self.faults.push(drop=True, times=n, **kwargs)

    def reject_ids(self, ids: str | Collection[str], status: int = 400, **kwargs: Any) -> Fault:
        """Fail every request carrying one of ``ids`` until cancelled (bisection tests)."""
        return self.faults.push(status=status, contains_id=ids, times=None, **kwargs)

    # -- subclass hooks ------------------------------------------------------------

    def handle_request(self, req: RecordedRequest) -> Response:
        return self.error_response(404, "not found")

    def request_ids(self, req: RecordedRequest) -> set[str]:
        """Event ids carried by the request, for ``Fault.contains_id``."""
        return set()

    def error_response(self, status: int, message: str | None = None) -> Response:
        text = message or http.client.responses.get(status, "error")
        return Response.text(status, text)

    # -- plumbing ------------------------------------------------------------------

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                # Accepted while stop() ran: refuse it rather than leak a thread.
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self._conns[conn] = threading.current_thread()

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.pop(conn, None)

    def _record(self, req: RecordedRequest) -> None:
        with self._changed:
            self._requests.append(req)
            self._generation += 1
            self._changed.notify_all()

    def _fault_response(self, fault: Fault) -> Response:
        assert fault.status is not None
        if fault.body is None:
            resp = self.error_response(fault.status)
        elif isinstance(fault.body, bytes):
            resp = Response(fault.status, fault.body)
        elif isinstance(fault.body, str):
            resp = Response.text(fault.status, fault.body)
        else:
            resp = Response.json(fault.status, fault.body)
        resp.headers.update(fault.headers)
        if fault.retry_after is not None:
            resp.headers["Retry-After"] = str(fault.retry_after)
        return resp

    def _serve(self, handler: _Handler) -> None:
        try:
            req = self._read_request(handler)
        except (OSError, ValueError):
            handler.close_connection = True
            return

        fault = self.faults.take(req, self._safe_ids(req))
        req.fault = fault
        if fault is not None and fault.delay > 0:
            if self._stopping.wait(fault.delay):
                self._drop(handler, req)  # server stopping: give up
                return
        if fault is not None and fault.drop:
            self._drop(handler, req)
            return

        if fault is not None and fault.status is not None:
            resp = self._fault_response(fault)
        else:
            try:
                resp = self.handle_request(req)
            except Exception:  # a bug in the fake must not look like a vendor answer
                self.errors.append(traceback.format_exc())
                resp = Response.text(500, "fake server error, see server.errors")

        req.status = resp.status
        # Record before answering so a client that got a response sees it recorded.
        self._record(req)
        self._write(handler, resp)

    def _safe_ids(self, req: RecordedRequest) -> set[str]:
        try:
            return self.request_ids(req)
        except Exception:
            return set()

    def _drop(self, handler: _Handler, req: RecordedRequest) -> None:
        req.status = None
        self._record(req)
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self, handler: _Handler, resp: Response) -> None:
        try:
            handler.send_response(resp.status)
            headers = {"Content-Type": "application/octet-stream", **resp.headers}
            body = b"" if resp.status in (204, 304) else resp.body
            for name, value in headers.items():
                handler.send_header(name, value)
            if resp.status not in (204, 304):
                handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True

    def _read_request(self, handler: _Handler) -> RecordedRequest:
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        raw = self._read_body(handler, headers)
        req = RecordedRequest(
            method=handler.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            raw_body=raw,
            body=raw,
            received_at=self.clock(),
        )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if raw and encoding not in ("", "identity"):
            try:
                req.body, req.body_truncated = _decode(raw, encoding, self.max_decoded_bytes)
            except (OSError, EOFError, zlib.error, ValueError) as exc:
                req.body = b""
                req.decode_error = f"{encoding}: {exc}"
        if req.body and not req.body_truncated and req.decode_error is None:
            try:
                req.json = json.loads(req.body)
            except ValueError:
                req.json = None
        return req

    @staticmethod
    def _read_body(handler: _Handler, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size_line = handler.rfile.readline(1024)
                if not size_line:
                    raise ValueError("connection closed mid-body")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_WIRE_BYTES:
                    raise ValueError("body too large")
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline(1024)
        length = int(headers.get("content-length") or 0)
        if length > MAX_WIRE_BYTES:
            raise ValueError("body too large")
        data = handler.rfile.read(length) if length else b""
        if len(data) != length:
            raise ValueError("connection closed mid-body")
        return data


def _decode(raw: bytes, encoding: str, cap: int) -> tuple[bytes, bool]:
    """Undo Content-Encoding, inflating at most ``cap`` bytes."""
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS  # RFC 1950 zlib stream, as HTTP "deflate" means
    else:
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    out = bytearray()
    data = raw
    while data:
        d = zlib.decompressobj(wbits)
        out += d.decompress(data, cap + 1 - len(out))
        if len(out) > cap:
            return bytes(out[:cap]), True
        if not d.eof:
            raise ValueError("truncated compressed body")
        # gzip allows several concatenated members
        data = d.unused_data if wbits != zlib.MAX_WBITS else b""
    return bytes(out), False
