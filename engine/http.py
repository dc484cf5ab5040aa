"""The engine's own HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

Configured by ``[http]`` (:class:`~engine.config.HttpConfig`): loopback by default, port 8787,
port 0 for any free port. The composition root binds the port **before** anything else starts
(:func:`bind_listener`), so a port already taken ends startup with one line saying what to set,
and logs ``http.listening`` with the real port. The server (hypercorn's trio worker and the tiny
ASGI app below) is a supervised child of the engine; each incarnation serves a duplicate of the
one listening socket, so a restart neither loses the port nor races anyone for it.

``GET /healthz``: the process answers and its root supervisor is alive: every child is running,
starting or backing off before a restart (200); a child that gave up, or a tree being stopped,
is 503. The body names each child's state.

``GET /readyz``: 200 when every check passes, else 503 naming the failing ones; the JSON body
has each check's verdict and why (:func:`assess`, a pure function):

- ``database``: the halt switch's row is read within ``database_timeout`` seconds;
- ``feed``: the market feed is connected (or polling) and, while symbols are subscribed, its
  newest quote is at most ``feed_max_age`` seconds old (what QuoteStream itself tolerates
  before it calls the feed stale);
- ``positions``: the portfolio mirror read the broker's positions successfully within
  ``positions_max_age`` seconds (three refresh periods);
- ``halted``: the account's halt switch is off (read in the same query as ``database``).

``GET /metrics``: Prometheus' text format (:mod:`engine.metrics`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from engine.config import HttpConfig, env_var_for
from engine.errors import ConfigError, DatabaseError
from engine.log import get_logger
from engine.messages import FeedState, FeedStatusChanged
from engine.metrics import EngineMetrics, FeedSource, newest_quote_age
from engine.supervisor import ChildState, SupervisorStatistics
from storage.control import get_halted
from storage.database import Executor

__all__ = [
    "Check",
    "DatabaseProbe",
    "Endpoint",
    "Readiness",
    "ReadinessLimits",
    "assess",
    "bind_listener",
    "listening",
    "liveness",
    "make_app",
    "probe_database",
    "serve",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = get_logger("http")

_JSON = b"application/json"
_ALIVE = frozenset({ChildState.RUNNING, ChildState.STARTING, ChildState.BACKING_OFF})
_FLOWING = frozenset({FeedState.CONNECTED, FeedState.POLLING})
_encode = msgspec.json.Encoder().encode


# --------------------------------------------------------------------------- the port


def bind_listener(config: HttpConfig) -> socket.socket:
    """A socket listening on ``config.host``/``config.port`` (0: any free port).

    A port in use, a host that is not this machine's, or any other refusal is a
    :class:`ConfigError` of one line naming the setting to change."""
    host, port = config.host, config.port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # SO_REUSEADDR (create_server's default): a restarted engine may take the port back
        # at once; a port another process listens on is still refused.
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"http: port {port} on {host} is in use: set {env_var_for('http.port')} to a "
                f"free port (0 picks one), or {env_var_for('http.enabled')}=false"
            ) from exc
        raise ConfigError(
            f"http: cannot listen on {host} port {port} ({exc.strerror or exc}): set "
            f"{env_var_for('http.host')} / {env_var_for('http.port')}"
        ) from exc


@contextlib.contextmanager
def listening(config: HttpConfig) -> Iterator[socket.socket | None]:
    """The endpoint's listening socket for the block, logged as ``http.listening`` with the
    real port; None when ``http.enabled`` is false. Raises :class:`ConfigError` as
    :func:`bind_listener` does."""
    if not config.enabled:
        yield None
        return
    with bind_listener(config) as listener:
        host, port = listener.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        _log.info("http.listening", host=host, port=port, url=f"http://{url_host}:{port}")
        yield listener


def _hypercorn_config() -> HypercornConfig:
    config = HypercornConfig()
    config.accesslog = None
    quiet = logging.getLogger("engine.hypercorn")
    quiet.setLevel(logging.WARNING)  # no "Running on ..." lines: http.listening says it
    config.errorlog = quiet
    return config


async def serve(
    listener: socket.socket,
    app: ASGIApp,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on a duplicate of ``listener`` until cancelled (the actor signature).
    The duplicate is closed when this returns; ``listener`` stays open for the next one."""
    sockets = Sockets(secure_sockets=[], insecure_sockets=[listener.dup()], quic_sockets=[])
    await worker_serve(
        # hypercorn types scopes and events as TypedDicts; this app reads them as plain dicts.
        wrap_app(cast(Any, app), 0, "asgi"),
        _hypercorn_config(),
        sockets=sockets,
        task_status=task_status,
    )


# --------------------------------------------------------------------------- the checks


class Check(msgspec.Struct, frozen=True):
    ok: bool
    detail: str


class Readiness(msgspec.Struct, frozen=True):
    ready: bool
    failing: list[str]
    checks: dict[str, Check]


class ReadinessLimits(msgspec.Struct, frozen=True, kw_only=True):
    positions_max_age: float  # seconds since the mirror's last successful positions read
    feed_max_age: float = 60.0  # QuoteStreamConfig.stale_after: the feed's own patience
    database_timeout: float = 2.0


class DatabaseProbe(msgspec.Struct, frozen=True, kw_only=True):
    """One read of the halt switch: the database's answer (or why there was none)."""

    error: str | None = None  # None: it answered
    seconds: float = 0.0
    halted: bool = False
    halt_reason: str | None = None


async def probe_database(db: Executor, account_id: str, *, within: float) -> DatabaseProbe:
    started = trio.current_time()
    with trio.move_on_after(within):
        try:
            halt = await get_halted(db, account_id)
        except DatabaseError as exc:
            return DatabaseProbe(error=str(exc) or type(exc).__name__)
        return DatabaseProbe(
            seconds=trio.current_time() - started, halted=halt.halted, halt_reason=halt.reason
        )
    return DatabaseProbe(error=f"no answer within {within:g} s")


def assess(
    *,
    database: DatabaseProbe,
    feed: FeedStatusChanged,
    subscribed: int,
    quote_age: float | None,
    positions_age: float | None,
    limits: ReadinessLimits,
    market_open: bool = True,
) -> Readiness:
    """Readiness from what was observed (see the module docstring). Outside the New York
    session (``market_open`` false) a quiet feed is expected: only its connection counts."""
    checks = {
        "database": _database_check(database),
        "feed": _feed_check(feed, subscribed, quote_age, limits.feed_max_age, market_open),
        "positions": _positions_check(positions_age, limits.positions_max_age),
        "halted": _halt_check(database),
    }
    failing = [name for name, check in checks.items() if not check.ok]
    return Readiness(ready=not failing, failing=failing, checks=checks)


def _database_check(probe: DatabaseProbe) -> Check:
    if probe.error is not None:
        return Check(False, f"unreachable: {probe.error}")
    return Check(True, f"answered in {probe.seconds * 1000:.1f} ms")


def _feed_check(
    feed: FeedStatusChanged,
    subscribed: int,
    quote_age: float | None,
    max_age: float,
    market_open: bool = True,
) -> Check:
    if feed.state not in _FLOWING:
        return Check(False, f"{feed.state.value}: {feed.reason}")
    if subscribed == 0:
        return Check(True, f"{feed.state.value}, no symbols subscribed")
    if not market_open:
        return Check(True, f"{feed.state.value}, market closed: no quotes expected")
    if quote_age is None:
        return Check(False, f"{feed.state.value}, no quote yet for {subscribed} symbols")
    if quote_age > max_age:
        return Check(
            False, f"{feed.state.value}, newest quote {quote_age:.1f} s old (limit {max_age:g} s)"
        )
    return Check(True, f"{feed.state.value}, newest quote {quote_age:.3f} s old")


def _positions_check(age: float | None, max_age: float) -> Check:
    if age is None:
        return Check(False, "the broker's positions have not been read yet")
    if age > max_age:
        return Check(False, f"last read {age:.1f} s ago (limit {max_age:g} s)")
    return Check(True, f"last read {age:.1f} s ago")


def _halt_check(probe: DatabaseProbe) -> Check:
    if probe.error is not None:
        return Check(False, "unknown: the database did not answer")
    if probe.halted:
        return Check(False, f"halted: {probe.halt_reason or 'no reason given'}")
    return Check(True, "not halted")


def liveness(stats: SupervisorStatistics) -> tuple[bool, dict[str, Any]]:
    """Whether the root supervisor is alive (every child running, starting or backing off),
    and a body naming each child's state."""
    alive = all(child.state in _ALIVE for child in stats.children)
    body = {
        "alive": alive,
        "children": {child.name: child.state.value for child in stats.children},
        "restarts": stats.total_restarts,
    }
    return alive, body


# --------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class Endpoint:
    """What the three routes read: the engine's live parts, handed over by the root."""

    db: Executor
    account_id: str
    feed: FeedSource
    supervisor: Callable[[], SupervisorStatistics]
    metrics: EngineMetrics
    limits: ReadinessLimits
    market_open: Callable[[], bool] = lambda: True  # the calendar's verdict for market time now

    def health(self) -> tuple[bool, dict[str, Any]]:
        return liveness(self.supervisor())

    async def readiness(self) -> Readiness:
        probe = await probe_database(self.db, self.account_id, within=self.limits.database_timeout)
        now = trio.current_time()
        read_at = self.metrics.positions_read_at
        return assess(
            database=probe,
            feed=self.feed.feed_status,
            subscribed=len(self.feed.symbols),
            quote_age=newest_quote_age(self.feed, now),
            positions_age=None if read_at is None else max(0.0, now - read_at),
            limits=self.limits,
            market_open=self.market_open(),
        )

    async def metrics_text(self) -> bytes:
        await self.metrics.sample_orders(
            self.db, self.account_id, within=self.limits.database_timeout
        )
        return self.metrics.render()


def make_app(endpoint: Endpoint) -> ASGIApp:
    """The ASGI application: GET (or HEAD) ``/healthz``, ``/readyz``, ``/metrics``."""

    async def route(method: str, path: str) -> tuple[int, bytes, bytes]:
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, b"text/plain", b"not found: try /healthz, /readyz or /metrics\n"
        if method not in ("GET", "HEAD"):
            return 405, b"text/plain", b"method not allowed: GET only\n"
        if path == "/healthz":
            alive, body = endpoint.health()
            return (200 if alive else 503), _JSON, _encode(body)
        if path == "/readyz":
            readiness = await endpoint.readiness()
            return (200 if readiness.ready else 503), _JSON, _encode(readiness)
        return 200, CONTENT_TYPE_PLAIN_0_0_4.encode(), await endpoint.metrics_text()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, content_type, body = await route(scope["method"], scope["path"])
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app
