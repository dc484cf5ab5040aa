"""Erlang/OTP ``one_for_one`` supervision on trio.

A :class:`Supervisor` owns a list of :class:`ChildSpec`. It starts the children **in order**
(each one must call ``task_status.started()`` before the next is launched, so a later child may
rely on an earlier one being up) and stops them in **reverse** order (the last started is
cancelled first, and the supervisor waits for it to finish before cancelling the previous one).

When a child ends, its :class:`Restart` type decides what happens, as in OTP:

* ``PERMANENT``: always restarted, whether it crashed or returned.
* ``TRANSIENT``: restarted only if it crashed; a normal return is fine and final.
* ``TEMPORARY``: never restarted (a crash is recorded in :meth:`Supervisor.statistics`).

A crash never disturbs the siblings (one_for_one). Restarts are delayed by a jittered
exponential :class:`Backoff`. More than ``intensity`` restarts within ``period`` seconds,
counted across the whole supervisor on a sliding window, *escalate*: the supervisor stops all
its children in reverse order and raises :class:`SupervisorEscalation` (chained to the child's
last error) to its parent. A :class:`~engine.errors.FatalError` (also inside an exception group)
is never retried, whatever the restart type: it escalates at once. All timing goes through
trio's clock, so tests can drive it with the autojump clock.

**Cold starts and fresh resources.** A restart calls the spec's ``run`` again; the child rebuilds
its state from scratch. ``run`` is called anew for every incarnation, so a child that needs
fresh clones of long-lived channel endpoints gets them by cloning inside a closure::

    def quote_stream_spec(quotes: trio.MemorySendChannel[Quote]) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            # the previous incarnation closed its clone when it crashed
            with quotes.clone() as outbox:
                await quote_stream.run(outbox=outbox, task_status=task_status)
        return ChildSpec("quote_stream", run)

**Nesting.** :meth:`Supervisor.run` has the actor signature, so a supervisor is a child of
another: ``ChildSpec("feeds", feeds.run)``. It reports started once all its children started.
When it escalates, its parent sees a crash and applies its own policy; an escalation caused by
a fatal error (``SupervisorEscalation.fatal``) is fatal for the parent too, so it travels to the
root at once. A supervisor may be run again after it ended (that is how a parent restarts it).

**At the root**, the composition root turns an escalation into a non-zero exit::

    try:
        await root.run()
    except SupervisorEscalation as exc:   # with trio.run(...) it arrives unwrapped
        log("engine.escalated", error=str(exc))
        raise SystemExit(1) from exc

Restarts and escalations are reported through the ``on_event(event, fields)`` hook (for example
a structured logger); the supervisor itself logs nothing.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from engine.errors import FatalError, SpreadwatchError

__all__ = [
    "Backoff",
    "ChildSpec",
    "ChildState",
    "ChildStatistics",
    "EventHook",
    "Restart",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorStatistics",
]

EventHook = Callable[[str, dict[str, object]], None]


class Restart(enum.StrEnum):
    """When a child that ended is started again (OTP's restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after a crash
    TEMPORARY = "temporary"  # never


class ChildState(enum.StrEnum):
    STARTING = "starting"  # launched, has not called task_status.started() yet
    RUNNING = "running"
    BACKING_OFF = "backing_off"  # ended, waiting out the delay before its restart
    STOPPED = "stopped"  # not launched yet, or stopped by the supervisor
    EXITED = "exited"  # ended and will not be restarted (or caused an escalation)


class SupervisorEscalation(SpreadwatchError):
    """A supervisor gave up: a child restarted too often, or failed with a fatal error.

    ``__cause__`` is the child's last error (``None`` if a permanent child kept returning).
    """

    def __init__(
        self,
        message: str,
        *,
        supervisor: str,
        child: str,
        last_error: BaseException | None,
        fatal: bool,
    ) -> None:
        super().__init__(message)
        self.supervisor = supervisor
        self.child = child
        self.last_error = last_error
        # True when a fatal error caused it: a parent supervisor must not retry either.
        self.fatal = fatal
        self.__cause__ = last_error


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential delay before a restart.

    The n-th consecutive restart of a child (n from 0) waits ``min(max, base * factor**n)``,
    reduced by a random fraction of at most ``jitter``, so the delay lies in
    ``[d * (1 - jitter), d]`` and never exceeds ``max``.
    """

    base: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.max < self.base:
            raise ValueError("Backoff needs 0 <= base <= max and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter is a fraction in [0, 1]")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of restart number ``attempt`` (0-based)."""
        try:
            return min(self.max, self.base * math.pow(self.factor, attempt))
        except OverflowError:
            return self.max

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.ceiling(attempt) * (1 - self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What to run and when to restart it.

    ``run`` is called as ``await run(task_status=status)`` for every incarnation and must call
    ``task_status.started()`` once it is ready (the actor signature). ``backoff`` overrides
    the supervisor's default for this child.
    """

    name: str
    run: Callable[..., Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    backoff: Backoff | None = None


@dataclass(frozen=True, slots=True)
class ChildStatistics:
    name: str
    state: ChildState
    restarts: int  # restarts in the current (or last) run of the supervisor
    last_error: str | None  # repr() of the last error, None if it never crashed


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    children: tuple[ChildStatistics, ...]  # in start order
    total_restarts: int

    def child(self, name: str) -> ChildStatistics:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)


@dataclass(eq=False)
class _Child:
    """One child's runtime record. Mutated only by the supervisor's own tasks."""

    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    restarts: int = 0
    last_error: str | None = None
    # Restarts in a row without a healthy stretch of ``period`` seconds: the backoff exponent.
    consecutive: int = 0
    started_at: float | None = None  # trio time of the current incarnation's started()
    launched: bool = False
    # Shielded so that only the supervisor stops a child: that is what keeps the reverse
    # stop order even when the supervisor itself is cancelled from outside.
    scope: trio.CancelScope = field(default_factory=lambda: trio.CancelScope(shield=True))
    ready: trio.Event = field(default_factory=trio.Event)  # started, or gave up starting
    done: trio.Event = field(default_factory=trio.Event)  # its task has finished


class _ChildStatus:
    """The ``task_status`` handed to a child: ``started()`` lets the next sibling start."""

    def __init__(self, supervisor: Supervisor, child: _Child) -> None:
        self._supervisor = supervisor
        self._child = child
        self._called = False

    def started(self, value: object = None) -> None:
        if self._called:
            raise RuntimeError("called 'started' twice on the same task status")
        self._called = True
        child = self._child
        child.state = ChildState.RUNNING
        child.started_at = trio.current_time()
        child.ready.set()
        self._supervisor._emit("supervisor.child_started", child, restarts=child.restarts)


def _is_fatal_leaf(error: BaseException) -> bool:
    if isinstance(error, SupervisorEscalation):
        return error.fatal
    return isinstance(error, FatalError)


def _is_fatal(error: BaseException) -> bool:
    """Fatal errors are found inside exception groups too (a child's own nursery wraps them)."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(_is_fatal_leaf) is not None
    return _is_fatal_leaf(error)


def _restart_wanted(restart: Restart, crashed: bool) -> bool:
    match restart:
        case Restart.PERMANENT:
            return True
        case Restart.TRANSIENT:
            return crashed
        case Restart.TEMPORARY:
            return False


class Supervisor:
    """A one_for_one supervisor; see the module docstring.

    Invariants: ``_children`` keeps the spec order; a child is launched only after every
    earlier child reported started; ``_restart_times`` holds the times of the restarts within
    the last ``period`` seconds, across all children; ``_escalation`` is set at most once per
    run, by the first child that exceeds the intensity or fails fatally.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        name: str = "supervisor",
        intensity: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        if intensity < 0 or period <= 0:
            raise ValueError("intensity must be >= 0 and period > 0")
        self.name = name
        self.intensity = intensity
        self.period = period
        self._specs = tuple(children)
        self._backoff = backoff if backoff is not None else Backoff()
        self._rng = rng if rng is not None else random.Random()
        self._on_event = on_event
        self._stop_requested = False
        self._running = False
        self._reset()

    def _reset(self) -> None:
        # CancelScopes and Events are single-use: each run gets fresh ones.
        self._children = [_Child(spec) for spec in self._specs]
        self._restart_times: deque[float] = deque()
        self._total_restarts = 0
        self._escalation: SupervisorEscalation | None = None
        self._run_scope = trio.CancelScope()

    # ---- public API -------------------------------------------------------------------

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            children=tuple(
                ChildStatistics(c.spec.name, c.state, c.restarts, c.last_error)
                for c in self._children
            ),
            total_restarts=self._total_restarts,
        )

    def stop(self) -> None:
        """Stop all children in reverse order; ``run`` then returns normally.

        Sticky: a supervisor asked to stop before or while it runs stays stopped.
        """
        self._stop_requested = True
        self._run_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, supervise them until stopped, cancelled or escalated.

        Reports started once every child has reported started. Raises
        :class:`SupervisorEscalation` after all children were stopped in reverse order.
        """
        if self._running:
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        if self._stop_requested:
            task_status.started()
            return
        self._running = True
        self._reset()
        reported = False
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with self._run_scope:
                        await self._start_children(nursery)
                        task_status.started()
                        reported = True
                        await trio.sleep_forever()
                finally:
                    # Shielded: even when cancelled from outside, stop in reverse order.
                    with trio.CancelScope(shield=True):
                        await self._stop_children()
        finally:
            self._running = False
        if self._escalation is not None:
            raise self._escalation
        if not reported:
            # stop() during startup: honour nursery.start()'s contract, then end normally.
            task_status.started()

    # ---- internals --------------------------------------------------------------------

    async def _start_children(self, nursery: trio.Nursery) -> None:
        for child in self._children:
            child.launched = True
            nursery.start_soon(self._supervise, child, name=f"{self.name}/{child.spec.name}")
            await child.ready.wait()
            # An escalation cancels _run_scope, so we only get here without one; but a
            # temporary child may have ended before it started: that is fine, go on.

    async def _stop_children(self) -> None:
        for child in reversed(self._children):
            if child.launched:
                child.scope.cancel()
                await child.done.wait()

    async def _supervise(self, child: _Child) -> None:
        """Run one child, restarting it per its spec, until it ends for good or is stopped."""
        try:
            with child.scope:
                while await self._run_incarnation(child):
                    pass
        finally:
            if child.state is not ChildState.EXITED:
                child.state = ChildState.STOPPED
                self._emit("supervisor.child_stopped", child)
            child.ready.set()
            child.done.set()

    async def _run_incarnation(self, child: _Child) -> bool:
        """Run the child once; return True if it is to be run again (after its backoff)."""
        child.state = ChildState.STARTING
        child.started_at = None
        error: Exception | None = None
        try:
            await child.spec.run(task_status=_ChildStatus(self, child))
        except Exception as exc:  # any crash is the supervisor's to judge; Cancelled passes
            error = exc
        if error is not None:
            child.last_error = repr(error)
        if child.scope.cancel_called:
            # Ending while being stopped: nothing to restart. An error raised while stopping
            # is recorded (statistics and event) rather than restarted.
            if error is not None:
                self._emit("supervisor.child_crashed", child, error=repr(error), stopping=True)
            return False
        if error is not None:
            self._emit("supervisor.child_crashed", child, error=repr(error))
            if _is_fatal(error):
                self._escalate(child, error, fatal=True)
                return False
        if not _restart_wanted(child.spec.restart, crashed=error is not None):
            child.state = ChildState.EXITED
            self._emit("supervisor.child_exited", child, crashed=error is not None)
            return False
        if not self._count_restart():
            self._escalate(child, error, fatal=False)
            return False
        await self._back_off(child)
        return True

    def _count_restart(self) -> bool:
        """Record a restart on the sliding window; False if it exceeds the intensity."""
        now = trio.current_time()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] <= now - self.period:
            self._restart_times.popleft()
        return len(self._restart_times) <= self.intensity

    async def _back_off(self, child: _Child) -> None:
        now = trio.current_time()
        if child.started_at is not None and now - child.started_at >= self.period:
            child.consecutive = 0  # it was healthy for a whole period: start the backoff over
        backoff = child.spec.backoff if child.spec.backoff is not None else self._backoff
        delay = backoff.delay(child.consecutive, self._rng)
        child.consecutive += 1
        child.restarts += 1
        self._total_restarts += 1
        child.state = ChildState.BACKING_OFF
        self._emit("supervisor.child_restarting", child, delay=delay, restarts=child.restarts)
        await trio.sleep(delay)

    def _escalate(self, child: _Child, error: Exception | None, *, fatal: bool) -> None:
        child.state = ChildState.EXITED
        if self._escalation is not None:
            return  # a sibling escalated first; its reason is the one reported
        if fatal:
            why = "failed with a fatal error"
        else:
            why = f"restarted more than {self.intensity} times in {self.period}s"
        message = (
            f"supervisor {self.name!r}: child {child.spec.name!r} {why}; last error: {error!r}"
        )
        self._escalation = SupervisorEscalation(
            message, supervisor=self.name, child=child.spec.name, last_error=error, fatal=fatal
        )
        self._emit("supervisor.escalated", child, error=repr(error), fatal=fatal)
        self._run_scope.cancel()

    def _emit(self, event: str, child: _Child, **fields: object) -> None:
        if self._on_event is not None:
            self._on_event(event, {"supervisor": self.name, "child": child.spec.name, **fields})
