"""Run fakesnow in *server mode* so the real ``snowflake-connector-python`` talks to it over HTTP.

fakesnow (https://github.com/tekumara/fakesnow) translates Snowflake SQL to DuckDB.  In
server mode it speaks the connector's REST protocol (login, query-request, PUT via a
GCS-style presigned URL), so the code under test uses the real
``snowflake.connector.connect`` with no monkeypatching.

Server mode needs the ``server`` extra: ``pip install 'fakesnow[server]==0.12.1'``
(starlette + uvicorn).

Two ways to run it:

``mode="process"`` (default)
    ``python -m fakesnow --server --port P`` in a child process of its own session.
    Every server gets its own empty DuckDB catalog and stage bucket, and it is stopped
    with SIGINT (then SIGTERM/SIGKILL of its process group) on exit.

``mode="thread"``
    ``fakesnow.server()`` in a daemon thread of this process (fakesnow's own helper).
    Cheaper, but fakesnow keeps the catalog in a *module global*: every thread-mode
    server in one Python process shares the same databases (and the same catalog as
    any other in-process ``fakesnow.server()``).

Usage::

    with FakeSnowflakeServer() as sf:
        conn = sf.connect(database="ANALYTICS", schema="EVENTS")
        conn.cursor().execute("select 1")

    # or, to just get the kwargs for snowflake.connector.connect():
    with fakesnow_server() as kwargs:
        snowflake.connector.connect(**kwargs, database="DB", schema="S")
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "FakeSnowflakeServer",
    "FakeSnowflakeStartError",
    "connection_kwargs",
    "fakesnow_server",
    "free_port",
]

Mode = Literal["process", "thread"]

# What fakesnow.server() yields: the connector must use plain http to 127.0.0.1, any
# user/password is accepted, out-of-band telemetry is disabled so nothing tries to
# reach snowflakecomputing.com, and a tiny network_timeout stops the connector from
# retrying a failed request for minutes (a statement taking longer still completes).
_FAKE_USER = "fake"
_FAKE_PASSWORD = "snow"
_FAKE_ACCOUNT = "fakesnow"


class FakeSnowflakeStartError(RuntimeError):
    """The fakesnow server did not start; the message carries the reason and log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connection_kwargs(
    host: str,
    port: int,
    session_parameters: dict[str, Any] | None = None,
    network_timeout: int = 1,
) -> dict[str, Any]:
    """Keyword arguments for ``snowflake.connector.connect`` pointing at a fakesnow server."""
    return {
        "user": _FAKE_USER,
        "password": _FAKE_PASSWORD,
        "account": _FAKE_ACCOUNT,
        "host": host,
        "port": port,
        "protocol": "http",
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False}
        | (session_parameters or {}),
        "network_timeout": network_timeout,
    }


def _check_server_extra() -> None:
    missing = []
    for mod in ("fakesnow", "uvicorn", "starlette"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise FakeSnowflakeStartError(
            f"fakesnow server mode needs {', '.join(missing)}: "
            "pip install 'fakesnow[server]==0.12.1' into this interpreter "
            f"({sys.executable})"
        )


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<no log: {exc}>"
    return data[-limit:].decode("utf-8", "replace")


class FakeSnowflakeServer:
    """A running fakesnow server (context manager).

    Attributes after ``__enter__``: ``host``, ``port``, ``mode``, ``kwargs`` (a fresh copy
    is returned by :meth:`connection_kwargs`), ``log_path`` (process mode only).
    """

    def __init__(
        self,
        mode: Mode = "process",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        session_parameters: dict[str, Any] | None = None,
        network_timeout: int = 1,
        startup_timeout: float = 30.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread', not {mode!r}")
        self.mode: Mode = mode
        self.host = host
        self.port = port or 0
        self.session_parameters = dict(session_parameters or {})
        self.network_timeout = network_timeout
        self.startup_timeout = startup_timeout
        self._log_dir = Path(log_dir) if log_dir else None
        self.log_path: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._thread_cm: contextlib.AbstractContextManager[dict[str, Any]] | None = None
        self._kwargs: dict[str, Any] | None = None
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> FakeSnowflakeServer:
        if self._kwargs is not None:
            return self
        _check_server_extra()
        if self.mode == "thread":
            self._start_thread()
        else:
            self._start_process()
        return self

    def _start_thread(self) -> None:
        import fakesnow

        cm = fakesnow.server(
            port=self.port or None, host=self.host, session_parameters=self.session_parameters
        )
        try:
            kwargs = cm.__enter__()
        except Exception as exc:  # uvicorn logs the cause (eg: port in use) to stderr
            raise FakeSnowflakeStartError(
                f"fakesnow.server() failed to start on {self.host}:{self.port}: {exc}"
            ) from exc
        self._thread_cm = cm
        self.port = int(kwargs["port"])
        kwargs["network_timeout"] = self.network_timeout
        self._kwargs = kwargs

    def _start_process(self) -> None:
        if self._log_dir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fakesnow-server-")
            log_dir = Path(self._tmpdir.name)
        else:
            log_dir = self._log_dir
            log_dir.mkdir(parents=True, exist_ok=True)

        attempts = 1 if self.port else 3  # a port we picked may be taken before the child binds it
        last_error = ""
        for attempt in range(attempts):
            port = self.port or free_port(self.host)
            self.log_path = log_dir / f"fakesnow-{port}.log"
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fakesnow",
                        "--server",
                        "--host",
                        self.host,
                        "--port",
                        str(port),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=log_dir,
                    start_new_session=True,  # own process group, so stop() can signal all of it
                )
            if self._wait_until_listening(port):
                self.port = port
                self._kwargs = connection_kwargs(
                    self.host, port, self.session_parameters, self.network_timeout
                )
                return
            last_error = (
                f"fakesnow server (pid {self.process.pid}, attempt {attempt + 1}/{attempts}) "
                f"did not listen on {self.host}:{port} within {self.startup_timeout:.0f}s; "
                f"exit code {self.process.poll()}.\n"
                f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}"
            )
            self._stop_process()
        raise FakeSnowflakeStartError(last_error)

    def _wait_until_listening(self, port: int) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        for conn in self._connections:
            with contextlib.suppress(Exception):
                conn.close()
        self._connections.clear()
        if self._thread_cm is not None:
            cm, self._thread_cm = self._thread_cm, None
            cm.__exit__(None, None, None)  # sets should_exit and joins the server thread
        self._stop_process()
        self._kwargs = None
        if self._tmpdir is not None:
            with contextlib.suppress(OSError):
                self._tmpdir.cleanup()
            self._tmpdir = None

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            # fakesnow's CLI exits cleanly on SIGINT (uvicorn graceful shutdown)
            for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)  # the group led by our child only
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            proc.wait()

    def __enter__(self) -> FakeSnowflakeServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client side ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        if self._kwargs is None:
            return False
        return self.mode == "thread" or (self.process is not None and self.process.poll() is None)

    def connection_kwargs(self) -> dict[str, Any]:
        """A fresh copy of the kwargs for ``snowflake.connector.connect`` (no database/schema)."""
        if self._kwargs is None:
            raise RuntimeError("fakesnow server is not running")
        return copy.deepcopy(self._kwargs)

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.connection_kwargs()

    def connect(
        self, database: str | None = None, schema: str | None = None, **overrides: Any
    ) -> Any:
        """A real ``SnowflakeConnection`` to this server; closed by :meth:`stop` if still open.

        fakesnow creates ``database`` and ``schema`` on login if they do not exist.
        Pass ``paramstyle="qmark"`` for server-side (array) bindings; the default is the
        connector's client-side ``pyformat``.
        """
        import snowflake.connector

        kwargs = self.connection_kwargs()
        if database is not None:
            kwargs["database"] = database
        if schema is not None:
            kwargs["schema"] = schema
        kwargs.update(overrides)
        conn = snowflake.connector.connect(**kwargs)
        with self._lock:
            self._connections.append(conn)
        return conn


@contextlib.contextmanager
def fakesnow_server(mode: Mode = "process", **options: Any) -> Iterator[dict[str, Any]]:
    """Start a fakesnow server and yield ``snowflake.connector.connect`` kwargs
    (no database/schema).
    """
    with FakeSnowflakeServer(mode, **options) as server:
        yield server.connection_kwargs()
