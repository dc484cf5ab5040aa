"""PostgreSQL for trio code: asyncpg running on asyncio, bridged with trio-asyncio.

``open_database`` is the one entry point. Everything it returns is trio-facing; asyncio, the
trio-asyncio loop and asyncpg stay inside this package.

Rules the bridge follows (see DESIGN section 4):

- Every asyncpg call runs on the trio-asyncio loop that ``open_database`` found or opened; the
  loop is passed explicitly, so a ``Database`` can be used from any task, whatever asyncio loop
  (if any) that task's context names.
- No asyncpg timeout is used after connecting. Under trio-asyncio those timers run on trio's
  clock; callers bound their calls with trio (``fail_after``/``move_on_after``). Cancelling a
  call cancels the query on the server and leaves the connection usable.
- A transaction's exit (commit or rollback) and the return of a connection to the pool are
  shielded from cancellation, with a deadline of their own, so a cancelled task never leaves a
  transaction open on a pooled connection.
- asyncpg's exceptions are translated at this boundary (``storage.errors``).
- jsonb and json columns are Python values on our side, encoded and decoded with msgspec.
  ``Decimal`` is written as a JSON number (PostgreSQL keeps it exact), and JSON numbers with a
  fraction decode to ``Decimal``, never ``float``: money lives in those documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import asyncpg
import msgspec
import trio
import trio_asyncio

from engine.errors import ConfigError, DatabaseError, DatabaseUnavailable
from engine.log import get_logger
from storage import embedded
from storage.codecs import init_connection
from storage.errors import describe_reason, translate

_log = get_logger("storage")

__all__ = [
    "APP_DATABASE",
    "Connection",
    "Database",
    "Executor",
    "Notifications",
    "PoolStatistics",
    "Row",
    "describe_url",
    "open_database",
]

T = TypeVar("T")


class Row(Protocol):
    """A result row (asyncpg's Record): by column name (``row["trade_id"]``) or position.

    Not a ``Mapping``: iterating a row yields its values, as for a tuple. ``dict(row.items())``
    makes a dict.
    """

    def __getitem__(self, key: str | int, /) -> Any: ...

    def __len__(self) -> int: ...

    def get(self, key: str, default: Any = None, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...

    def values(self) -> Iterable[Any]: ...

    def items(self) -> Iterable[tuple[str, Any]]: ...


#: The database the embedded server creates and uses for the application.
APP_DATABASE = "spreadwatch"

# How long a transaction's commit/rollback or a connection's release may take once started.
# It runs shielded from cancellation, so it needs a deadline of its own: a server that vanished
# without closing the socket would otherwise hold the cancelled task forever.
_EXIT_DEADLINE = 30.0
# How long closing the pool may wait for connections still in use before terminating them.
_CLOSE_DEADLINE = 10.0


class Executor(Protocol):
    """What queries need: implemented by ``Database`` (pooled) and ``Connection`` (one session)."""

    async def execute(self, query: str, *args: object) -> str: ...

    async def fetch(self, query: str, *args: object) -> list[Row]: ...

    async def fetchrow(self, query: str, *args: object) -> Row | None: ...

    async def fetchval(self, query: str, *args: object, column: int = 0) -> Any: ...

    async def executemany(self, command: str, args: Iterable[Sequence[object]]) -> None: ...


class _Bridge:
    """Runs asyncpg coroutines on the loop and translates their errors. Shared by a database."""

    def __init__(self, *, loop: Any, target: str) -> None:
        self.loop = loop
        self.target = target

    async def call(
        self,
        operation: Callable[[], Coroutine[Any, Any, T]],
        *,
        session_lost: Callable[[BaseException], bool] = lambda exc: False,
    ) -> T:
        """Run ``operation()`` (which makes the asyncpg coroutine) on the loop.

        ``session_lost(exc)`` says, after a failure, whether the connection it ran on is gone:
        asyncpg reports a session the server ended under it in several ways (an internal
        protocol error, "released back to the pool"), all meaning the database went away.
        """
        try:
            # The coroutine is made inside the try: a pool proxy whose connection died raises
            # as soon as the method is called.
            result: T = await self.loop.run_aio_coroutine(operation())
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            OSError,
            TimeoutError,
        ) as exc:
            raise translate(exc, target=self.target, session_lost=session_lost(exc)) from exc
        return result


class _Statements:
    """The statement methods, trio-facing, shared by :class:`Connection` and :class:`Database`:
    ``_target`` is an asyncpg connection or pool (they have the same methods) and ``_call``
    runs one of its coroutines through the bridge, translating failures."""

    _target: Any

    async def _call(self, operation: Callable[[], Coroutine[Any, Any, T]]) -> T:
        raise NotImplementedError

    async def execute(self, query: str, *args: object) -> str:
        return await self._call(lambda: self._target.execute(query, *args))

    async def fetch(self, query: str, *args: object) -> list[Row]:
        return await self._call(lambda: self._target.fetch(query, *args))

    async def fetchrow(self, query: str, *args: object) -> Row | None:
        return await self._call(lambda: self._target.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: object, column: int = 0) -> Any:
        return await self._call(lambda: self._target.fetchval(query, *args, column=column))

    async def executemany(self, command: str, args: Iterable[Sequence[object]]) -> None:
        await self._call(lambda: self._target.executemany(command, args))

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Iterable[Sequence[object]],
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
    ) -> str:
        """Bulk insert with COPY: the fastest way to write a batch (the audit writer's)."""
        return await self._call(
            lambda: self._target.copy_records_to_table(
                table_name, records=records, columns=columns, schema_name=schema_name
            )
        )


class Connection(_Statements):
    """One database session (taken from the pool for the duration of an ``async with``)."""

    def __init__(self, raw: Any, bridge: _Bridge) -> None:
        self._target = raw  # asyncpg connection (a pool proxy)
        self._bridge = bridge
        self._released = False  # set when its acquire() block ends

    async def _call(self, operation: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return await self._bridge.call(operation, session_lost=self._session_lost)

    def _session_lost(self, _exc: BaseException) -> bool:
        if self._released:
            return False  # used after its block: a bug, not an outage
        try:
            return bool(self._target.is_closed())
        except asyncpg.InterfaceError:
            return True  # the pool detached it because the connection died

    def is_in_transaction(self) -> bool:
        try:
            return bool(self._target.is_in_transaction())
        except asyncpg.InterfaceError:
            return False  # the connection is gone, and its transaction with it

    def _terminate(self) -> None:
        with contextlib.suppress(asyncpg.InterfaceError):  # already detached: nothing to end
            self._target.terminate()

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False
    ) -> AsyncIterator[Connection]:
        """A transaction (a savepoint when nested): committed if the block ends normally,
        rolled back if it raises or is cancelled. Commit and rollback are shielded."""
        try:
            tx = self._target.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            )
        except asyncpg.InterfaceError as exc:  # a proxy whose connection died raises at once
            raise translate(
                exc, target=self._bridge.target, session_lost=self._session_lost(exc)
            ) from exc
        try:
            await self._call(tx.start)
        except BaseException:
            # Cancelled (or failed) while BEGIN was on its way: the session may have entered a
            # transaction nobody will end, and back in the pool it would sit "idle in
            # transaction" holding its snapshot (seen once at a benchmark's shutdown).
            # Terminating it makes the server roll back; the pool opens a fresh one.
            self._terminate()
            raise
        try:
            yield self
        except BaseException:
            await self._finish(tx.rollback, rolling_back=True)
            raise
        await self._finish(tx.commit, rolling_back=False)

    async def _finish(
        self, operation: Callable[[], Coroutine[Any, Any, None]], *, rolling_back: bool
    ) -> None:
        with trio.move_on_after(_EXIT_DEADLINE, shield=True) as scope:
            try:
                await self._call(operation)
            except DatabaseError as exc:
                # A session still in a transaction it could not end must not go back to the
                # pool: terminating it makes the server roll back whatever is left.
                if isinstance(exc, DatabaseUnavailable) or self.is_in_transaction():
                    self._terminate()
                if not rolling_back:
                    raise
                # The error that made us roll back is the one worth raising, not this one.
                return
        if scope.cancelled_caught:
            self._terminate()
            if not rolling_back:
                raise DatabaseUnavailable(
                    f"no answer from {self._bridge.target} to a commit within "
                    f"{_EXIT_DEADLINE:g} s; whether the transaction was committed is unknown"
                )


class Notifications:
    """The notifications of one LISTEN channel, as a trio receive side.

    A notification is a hint to re-read state from the database, not the state itself: when the
    consumer falls ``buffer`` notifications behind, later ones are dropped (``dropped`` counts
    them). When the listening connection is lost, receiving raises ``DatabaseUnavailable``.
    """

    def __init__(self, channel: str, receive: trio.MemoryReceiveChannel[str], target: str) -> None:
        self.channel = channel
        self.dropped = 0
        self.lost = False
        self._receive = receive
        self._target = target

    async def receive(self) -> str:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise DatabaseUnavailable(
                f"lost the connection to {self._target} while listening on {self.channel!r}"
            ) from None

    def __aiter__(self) -> Notifications:
        return self

    async def __anext__(self) -> str:
        return await self.receive()


class Database(_Statements):
    """A pool of connections to one PostgreSQL database. Methods are trio-facing.

    The query methods each take a connection from the pool for one statement; use
    ``transaction()`` for several statements that must succeed or fail together.
    """

    def __init__(self, *, pool: Any, bridge: _Bridge, embedded_server: bool) -> None:
        self._target = pool
        self._bridge = bridge
        self.embedded = embedded_server

    @property
    def target(self) -> str:
        """The server, as messages name it (no password)."""
        return self._bridge.target

    async def _call(self, operation: Callable[[], Coroutine[Any, Any, T]]) -> T:
        # The pool gives each call a connection of its own, so an internal protocol error
        # cannot be our concurrent use of one session: it is a session the server ended.
        return await self._bridge.call(operation, session_lost=_internal_error_in_flight)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """One connection from the pool for the block (returned to the pool, shielded)."""
        raw = await self._call(self._target.acquire)
        conn = Connection(raw, self._bridge)
        try:
            yield conn
        finally:
            conn._released = True
            with trio.move_on_after(_EXIT_DEADLINE, shield=True):
                # A connection that cannot be released cleanly is discarded by the pool; that
                # is not worth masking the block's own outcome for.
                with contextlib.suppress(DatabaseError):
                    await self._call(lambda: self._target.release(raw))

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False
    ) -> AsyncIterator[Connection]:
        """A connection in a transaction: committed when the block ends normally, rolled back
        when it raises or is cancelled (commit and rollback are shielded from cancellation)."""
        async with (
            self.acquire() as conn,
            conn.transaction(isolation=isolation, readonly=readonly, deferrable=deferrable),
        ):
            yield conn

    async def notify(self, channel: str, payload: str = "") -> None:
        """Send a notification to every session listening on ``channel``."""
        await self.execute("SELECT pg_notify($1, $2)", channel, payload)

    @contextlib.asynccontextmanager
    async def listen(self, channel: str, *, buffer: int = 64) -> AsyncIterator[Notifications]:
        """LISTEN on ``channel`` for the block, on a connection of its own from the pool."""
        # Bounded: notifications are hints (see Notifications); a stuck consumer must not grow
        # memory without limit.
        send, receive = trio.open_memory_channel[str](buffer)
        notifications = Notifications(channel, receive, self.target)

        # Both callbacks run in the asyncio loop, which runs inside trio's thread: the
        # non-blocking trio channel operations are safe there.
        def on_notification(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                send.send_nowait(payload)
            except trio.WouldBlock:
                notifications.dropped += 1
            except trio.ClosedResourceError:
                pass

        def on_termination(_conn: Any) -> None:
            notifications.lost = True
            send.close()

        async with self.acquire() as conn:
            raw = conn._target
            await conn._call(lambda: raw.add_listener(channel, on_notification))
            raw.add_termination_listener(on_termination)
            try:
                with receive:
                    yield notifications
            finally:
                send.close()
                if not notifications.lost:
                    # (A lost connection is detached from its proxy: nothing left to remove.)
                    raw.remove_termination_listener(on_termination)
                    with trio.move_on_after(_EXIT_DEADLINE, shield=True):
                        with contextlib.suppress(DatabaseError):
                            await conn._call(lambda: raw.remove_listener(channel, on_notification))

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            size=int(self._target.get_size()),
            idle=int(self._target.get_idle_size()),
            max_size=int(self._target.get_max_size()),
        )


class PoolStatistics(msgspec.Struct, frozen=True):
    size: int
    idle: int
    max_size: int


@contextlib.asynccontextmanager
async def open_database(
    url: str | None,
    *,
    data_dir: pathlib.Path,
    connect_timeout: float = 5.0,
    min_size: int = 1,
    max_size: int = 5,
) -> AsyncIterator[Database]:
    """Connect to PostgreSQL for the duration of the ``async with``.

    ``url`` None: start (or join) the embedded server whose data directory is ``data_dir``
    (created if missing), create the application database in it if missing, and stop the server
    on exit (unless another process still uses it). ``url`` given: connect to that server;
    ``data_dir`` is then unused.

    Opens a trio-asyncio loop if the calling task is not already inside one. Fails within about
    ``connect_timeout`` seconds (plus the embedded server's start-up) with ``DatabaseUnavailable``
    whose message is one line naming the server and the reason.
    """
    async with _asyncio_loop() as loop:
        if url is None:
            async with embedded.running_server(data_dir) as server:
                bridge = _Bridge(loop=loop, target=server.target)
                await _ensure_app_database(server, bridge, connect_timeout)
                dsn = server.dsn(APP_DATABASE)
                async with _pool(dsn, bridge, connect_timeout, min_size, max_size) as pool:
                    yield Database(pool=pool, bridge=bridge, embedded_server=True)
        else:
            bridge = _Bridge(loop=loop, target=describe_url(url))
            async with _pool(url, bridge, connect_timeout, min_size, max_size) as pool:
                yield Database(pool=pool, bridge=bridge, embedded_server=False)


# What asyncpg leaves behind when a connection dies mid-operation: a future holding the error,
# never retrieved because the operation that owned it has already failed (and been translated
# into DatabaseUnavailable for its caller), or a pool's background reconnect cut short.
_CONNECTION_LOSS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
    OSError,
    asyncio.CancelledError,
    TimeoutError,
)


def _handle_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """trio-asyncio's default handler re-raises every unretrieved asyncio error into the loop's
    nursery, which would take the whole database down over a connection already dead and
    already reported. Those are logged; anything else still goes to the default handler."""
    exception = context.get("exception")
    if isinstance(exception, _CONNECTION_LOSS):
        _log.warning(
            "storage.connection_loss_leftover",
            error=repr(exception),
            message=str(context.get("message", "")),
        )
        return
    loop.default_exception_handler(context)


@contextlib.asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[Any]:
    # Reuse the caller's trio-asyncio loop when there is one: asyncpg objects are bound to one
    # loop, and a second loop nested in the first gains nothing. Otherwise open our own, which
    # lives exactly as long as the database (closed after the pool, since it is the outer block).
    loop = trio_asyncio.current_loop.get()
    if loop is not None and not loop.is_closed():
        yield loop
        return
    raised: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with trio_asyncio.open_loop() as own_loop:
            own_loop.set_exception_handler(_handle_asyncio_error)
            try:
                yield own_loop
            except BaseException as exc:
                raised = exc
                raise
    except BaseExceptionGroup as group:
        # open_loop runs the block inside its nurseries, which wrap whatever the block raises
        # in exception groups. Callers of open_database know nothing of those nurseries: hand
        # back the block's own exception when the groups hold nothing else.
        if raised is None or not _wraps_only(group, raised):
            raise
        unwrapped = raised
    if unwrapped is not None:
        raise unwrapped


def _internal_error_in_flight(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.exceptions.InternalClientError)


def _wraps_only(group: BaseExceptionGroup[Any], target: BaseException) -> bool:
    """True when ``group`` is ``target`` wrapped in single-member groups, and nothing else."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
        if exc is target:
            return True
    return False


@contextlib.asynccontextmanager
async def _pool(
    dsn: str, bridge: _Bridge, connect_timeout: float, min_size: int, max_size: int
) -> AsyncIterator[Any]:
    async def create() -> Any:
        return await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            init=init_connection,
        )

    pool = await _connecting(bridge, connect_timeout, create())
    try:
        yield pool
    finally:
        closed = False
        with trio.move_on_after(_CLOSE_DEADLINE, shield=True):
            # asyncpg's graceful close can raise asyncio.CancelledError (not trio's) when a
            # connection was killed mid-operation; a pool that will not close gracefully is
            # terminated instead.
            with contextlib.suppress(DatabaseError, asyncio.CancelledError):
                await bridge.call(pool.close)
                closed = True
        if not closed:
            pool.terminate()


async def _connecting(bridge: _Bridge, connect_timeout: float, coro: Coroutine[Any, Any, T]) -> T:
    """Run a connection attempt with a hard deadline, failing with one line that names why.

    asyncpg's own ``timeout`` runs on trio's clock under trio-asyncio and does not cover every
    step; ``fail_after`` is the bound we rely on.
    """
    try:
        with trio.fail_after(connect_timeout):
            result: T = await bridge.loop.run_aio_coroutine(coro)
            return result
    except trio.TooSlowError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {bridge.target}: no answer within {connect_timeout:g} s"
        ) from exc
    except (asyncpg.ClientConfigurationError, ValueError) as exc:
        raise ConfigError(f"database URL is not valid: {describe_reason(exc)}") from exc
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
        OSError,
        TimeoutError,
    ) as exc:
        reason = describe_reason(exc)
        raise DatabaseUnavailable(f"cannot connect to {bridge.target}: {reason}") from exc


async def _ensure_app_database(
    server: embedded.EmbeddedServer, bridge: _Bridge, connect_timeout: float
) -> None:
    async def create_if_missing() -> None:
        conn = await asyncpg.connect(server.dsn("postgres"), timeout=connect_timeout)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", APP_DATABASE
            )
            if not exists:
                try:
                    await conn.execute(f'CREATE DATABASE "{APP_DATABASE}"')
                except asyncpg.exceptions.DuplicateDatabaseError:
                    pass  # another process created it between our check and our create
        finally:
            await conn.close()

    await _connecting(bridge, connect_timeout, create_if_missing())


def describe_url(url: str) -> str:
    """Name a server by its URL without the password: ``PostgreSQL at host:port (database d,
    user u)``, or the socket directory for a unix-socket URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or [""])[0] or "localhost"
        port = parts.port or int((query.get("port") or ["5432"])[0])
    except ValueError:
        return "PostgreSQL (unparseable URL)"
    where = f"socket {host}" if host.startswith("/") else f"{host}:{port}"
    details = []
    database = parts.path.lstrip("/")
    if database:
        details.append(f"database {database}")
    if parts.username:
        details.append(f"user {urllib.parse.unquote(parts.username)}")
    suffix = f" ({', '.join(details)})" if details else ""
    return f"PostgreSQL at {where}{suffix}"
