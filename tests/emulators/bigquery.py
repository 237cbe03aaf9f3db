"""A local BigQuery (``bqemulator``) that the real ``google-cloud-bigquery`` client talks to.

bqemulator (PyPI ``bqemulator``) is a REST + gRPC BigQuery emulator on top of DuckDB.  It
pins duckdb/sqlglot versions that clash with the project's virtualenv, so it lives in a
virtualenv of its own, built from ``bqemulator-requirements.txt`` next to this file:

* :func:`ensure_bqemulator_venv` creates it (``python3 -m venv`` + pip) at
  ``$ETL_BQEMU_VENV`` or ``<repo>/.venv-bqemu``, skips the work when the stamp file
  matches the requirements hash, and installs DuckDB's spatial extension where DuckDB
  looks for it (``~/.duckdb/extensions/v<duckdb>/<platform>/``) - bqemulator refuses to
  start without it and cannot download it offline.
* :class:`BigQueryEmulator` starts ``bqemulator start`` (ephemeral, in-memory DuckDB) on
  free ports, waits until ``/readyz`` answers, and gives you the endpoint and a ready
  ``bigquery.Client``; on exit it stops the process group it started.

Usage::

    with BigQueryEmulator(project="local") as bq:
        bq.client.create_dataset("ds")
        print(bq.endpoint)            # http://127.0.0.1:<port>
    # or: with BigQueryEmulator() as (endpoint, client): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PROJECT",
    "REQUIREMENTS_FILE",
    "VENV_ENV_VAR",
    "BigQueryEmulator",
    "BigQueryEmulatorError",
    "default_venv_path",
    "ensure_bqemulator_venv",
    "install_spatial_extension",
    "make_client",
]

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().with_name("bqemulator-requirements.txt")
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_ENV_VAR = "ETL_BQEMU_VENV"
STAMP_NAME = ".etl-bqemu-stamp"
DEFAULT_PROJECT = "local"


class BigQueryEmulatorError(RuntimeError):
    """The emulator (or its virtualenv) could not be set up; the message says why."""


def _tail(text: str | bytes, limit: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[-limit:]


def default_venv_path() -> Path:
    """``$ETL_BQEMU_VENV`` if set, else ``<repo>/.venv-bqemu``."""
    override = os.environ.get(VENV_ENV_VAR)
    return Path(override).expanduser().resolve() if override else REPO_ROOT / ".venv-bqemu"


def _venv_bin(venv: Path, name: str) -> Path:
    return venv / "bin" / name


def _run(
    cmd: list[str], *, what: str, timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise BigQueryEmulatorError(
            f"{what} timed out after {timeout:.0f}s: {' '.join(cmd)}\n{_tail(exc.output or b'')}"
        ) from exc
    except OSError as exc:
        raise BigQueryEmulatorError(f"{what} could not run {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        raise BigQueryEmulatorError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- output tail ---\n{_tail(proc.stdout)}"
        )
    return proc


def _requirements_digest(requirements: Path, python: str) -> str:
    version = _run(
        [python, "-c", "import sys; print(sys.version)"], what="probing the base python", timeout=60
    )
    h = hashlib.sha256()
    h.update(requirements.read_bytes())
    h.update(b"\0" + version.stdout.strip())
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # pytest-xdist workers / parallel runs build it once
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_bqemulator_venv(
    path: str | os.PathLike[str] | None = None,
    *,
    requirements: str | os.PathLike[str] = REQUIREMENTS_FILE,
    python: str | None = None,
    timeout: float = 1200.0,
) -> Path:
    """Create (or reuse) the bqemulator virtualenv and install the spatial extension.

    Idempotent: the venv is rebuilt from scratch only when its stamp file does not match
    the hash of ``requirements`` (plus the base interpreter's version).  Returns the venv
    path; its ``bin/bqemulator`` is the emulator's entry point.
    """
    venv = Path(path).expanduser().resolve() if path else default_venv_path()
    # The real interpreter behind the running one, not `python3` from PATH: a
    # version-manager shim resolves differently with the cwd and environment,
    # which changed the digest mid-run and rebuilt (then failed to build) the venv.
    python = python or os.path.realpath(sys.executable)
    req = Path(requirements).resolve()
    if not req.is_file():
        raise BigQueryEmulatorError(f"requirements file not found: {req}")

    # the lock lives outside the repo (and outside the venv, which a rebuild deletes)
    lock = (
        Path(tempfile.gettempdir())
        / f"etl-bqemu-{hashlib.sha256(str(venv).encode()).hexdigest()[:16]}.lock"
    )
    with _file_lock(lock):
        digest = _requirements_digest(req, python)
        stamp = venv / STAMP_NAME
        if (
            stamp.is_file()
            and stamp.read_text().strip() == digest
            and _venv_bin(venv, "bqemulator").exists()
            and _venv_bin(venv, "python").exists()
        ):
            install_spatial_extension(venv)
            return venv

        started = time.monotonic()
        if venv.exists() and not any(venv.iterdir()):
            venv.rmdir()  # left empty by an interrupted build
        if venv.exists():
            if not (venv / "pyvenv.cfg").is_file():
                raise BigQueryEmulatorError(
                    f"{venv} exists but is not a virtualenv; refusing to replace it"
                )
            log.info("rebuilding %s: requirements changed", venv)
            shutil.rmtree(venv)
        _run(
            [python, "-m", "venv", str(venv)],
            what=f"creating the bqemulator venv at {venv}",
            timeout=300,
        )
        vpy = str(_venv_bin(venv, "python"))
        _run(
            [
                vpy,
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
                str(req),
            ],
            what=f"installing {req.name} into {venv}",
            timeout=timeout,
        )
        if not _venv_bin(venv, "bqemulator").exists():
            raise BigQueryEmulatorError(f"{venv}/bin/bqemulator missing after installing {req}")
        install_spatial_extension(venv)
        stamp.write_text(digest + "\n")
        log.info("built %s in %.1fs", venv, time.monotonic() - started)
        return venv


_SPATIAL_PROBE = r"""
import json, pathlib, duckdb, duckdb_extension_spatial as pkg
con = duckdb.connect()
platform = con.execute("PRAGMA platform").fetchone()[0]
version = "v" + duckdb.__version__
root = pathlib.Path(pkg.__file__).parent / "extensions"
exact = root / version / "spatial.duckdb_extension"
found = [exact] if exact.is_file() else sorted(root.glob("v*/spatial.duckdb_extension"))
print(json.dumps({"platform": platform, "version": version, "files": [str(p) for p in found]}))
"""


def install_spatial_extension(venv: str | os.PathLike[str]) -> Path:
    """Copy the spatial extension shipped in ``duckdb-extension-spatial`` into DuckDB's
    per-user extension directory (``~/.duckdb/extensions/<version>/<platform>/``).

    Returns the installed file.  A no-op when an identical-size file is already there.
    """
    venv = Path(venv)
    out = _run(
        [str(_venv_bin(venv, "python")), "-c", _SPATIAL_PROBE],
        what="locating the spatial extension",
        timeout=120,
    )
    info = json.loads(out.stdout.decode().strip().splitlines()[-1])
    if not info["files"]:
        raise BigQueryEmulatorError(
            f"duckdb-extension-spatial in {venv} has no spatial.duckdb_extension for duckdb "
            f"{info['version']}"
        )
    src = Path(info["files"][0])
    if info["version"] not in src.parts:
        raise BigQueryEmulatorError(
            f"spatial extension {src} does not match duckdb {info['version']}"
        )
    dest = (
        Path.home()
        / ".duckdb"
        / "extensions"
        / info["version"]
        / info["platform"]
        / "spatial.duckdb_extension"
    )
    if dest.is_file() and dest.stat().st_size == src.stat().st_size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)  # atomic: a concurrently starting emulator never sees half a file
    return dest


def make_client(endpoint: str, project: str = DEFAULT_PROJECT) -> Any:
    """A real ``google.cloud.bigquery.Client`` with anonymous credentials for ``endpoint``."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def _free_port(host: str) -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BigQueryEmulator:
    """``bqemulator start`` as a context manager.

    After ``__enter__``: ``endpoint`` (``http://host:port``), ``client`` (a ready
    ``bigquery.Client`` for ``project``), ``rest_port``, ``grpc_port``, ``log_path``,
    ``venv``, ``process``.  Iterating it yields ``(endpoint, client)``.

    Ports default to 0: the emulator binds free ports itself and reports them in its
    JSON log (``rest.listen`` / ``grpc.listen``), which avoids a pick-then-bind race.
    Data is ephemeral (in-memory DuckDB); uploads are staged in a private temp dir.
    """

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        *,
        venv: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        rest_port: int = 0,
        grpc_port: int = 0,
        startup_timeout: float = 60.0,
        log_level: str = "info",
        extra_env: Mapping[str, str] | None = None,
        build_venv: bool = True,
        keep_logs: bool = False,
    ) -> None:
        self.project = project
        self.venv = Path(venv).expanduser().resolve() if venv else None
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        self.build_venv = build_venv
        self.keep_logs = keep_logs
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.endpoint: str | None = None
        self.client: Any = None

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> BigQueryEmulator:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[Any]:
        yield self.endpoint
        yield self.client

    def start(self) -> BigQueryEmulator:
        if self.process is not None:
            return self
        if self.build_venv:
            self.venv = ensure_bqemulator_venv(self.venv)
        else:
            self.venv = self.venv or default_venv_path()
            install_spatial_extension(self.venv)
        exe = _venv_bin(self.venv, "bqemulator")
        if not exe.exists():
            raise BigQueryEmulatorError(
                f"{exe} not found; run ensure_bqemulator_venv({str(self.venv)!r}) first"
            )

        self.workdir = Path(tempfile.mkdtemp(prefix="bqemulator-"))
        self.log_path = self.workdir / "bqemulator.log"
        (self.workdir / "uploads").mkdir()

        # rest.listen is logged at info; at quieter levels pick the ports up front instead
        if self.log_level not in ("trace", "debug", "info"):
            self.rest_port = self.rest_port or _free_port(self.host)
            self.grpc_port = self.grpc_port or _free_port(self.host)

        env = {k: v for k, v in os.environ.items() if not k.startswith("BQEMU_")}
        env.update(
            {
                # avro is optional and would try extensions.duckdb.org at every start
                "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",
                "BQEMU_UPLOAD_STAGING_DIR": str(self.workdir / "uploads"),
            }
        )
        env.update(self.extra_env)
        cmd = [
            str(exe), "start",
            "--rest-host", self.host, "--rest-port", str(self.rest_port),
            "--grpc-host", self.host, "--grpc-port", str(self.grpc_port),
            "--project", self.project,
            "--ephemeral",
            "--log-format", "json", "--log-level", self.log_level,
        ]  # fmt: skip
        with open(self.log_path, "wb") as logfh:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logfh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,  # so no stray .bqemu.toml is picked up
                env=env,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        self._wait_ready()
        self.endpoint = f"http://{self.host}:{self.rest_port}"
        self.client = make_client(self.endpoint, self.project)
        return self

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace") if self.log_path else ""
        except OSError:
            return ""

    def _fail(self, reason: str) -> BigQueryEmulatorError:
        return BigQueryEmulatorError(
            f"bqemulator did not start: {reason}\n"
            f"--- tail of {self.log_path} ---\n{_tail(self._log_text())}"
        )

    def _ports_from_log(self) -> None:
        for line in self._log_text().splitlines():
            if not line.startswith("{") or ".listen" not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "rest.listen" and not self.rest_port:
                self.rest_port = int(record["port"])
            elif record.get("event") == "grpc.listen" and not self.grpc_port:
                self.grpc_port = int(record["port"])

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise self._fail(f"process exited with code {code}")
            if not self.rest_port:
                self._ports_from_log()
            if self.rest_port:
                try:
                    with urllib.request.urlopen(
                        f"http://{self.host}:{self.rest_port}/readyz", timeout=2
                    ) as resp:
                        body = json.loads(resp.read() or b"{}")
                    if body.get("status") == "ok":
                        return
                    last = f"/readyz answered {body}"
                except urllib.error.HTTPError as exc:  # 503 while DuckDB/catalog are not ready
                    last = f"/readyz HTTP {exc.code}"
                except (OSError, ValueError) as exc:
                    last = f"/readyz: {exc}"
            time.sleep(0.1)
        raise self._fail(f"not ready within {self.startup_timeout:.0f}s ({last})")

    def stop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                # SIGTERM triggers bqemulator's graceful stop; escalate if it hangs
                for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)  # the group led by our child only
                    try:
                        proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            else:
                proc.wait()
        if self.workdir is not None and not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- helpers -------------------------------------------------------------------

    def make_client(self, project: str | None = None) -> Any:
        """Another ``bigquery.Client`` for this emulator."""
        if self.endpoint is None:
            raise RuntimeError("emulator is not running")
        return make_client(self.endpoint, project or self.project)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
