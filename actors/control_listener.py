"""ControlListener: the operator's switches (``spreadwatch halt``/``resume``/``close``) into the
running engine, through the database.

The CLI writes the switch and notifies :data:`~storage.control.CONTROL_CHANNEL` in one
transaction (``storage/control.py``). This actor LISTENs on that channel and, on every
notification for its account and every ``poll_interval`` seconds (the fallback for a
notification that was lost or dropped), re-reads the state and sends on ``outbox``:

- ``Halt`` or ``Resume`` when the halt switch changed since it last said;
- ``CloseTradeNow`` for each pending close request, which it consumes.

A restart is a cold start (DESIGN section 3): the actor does not know what the engine last
heard, so it first says the current state, ``Halt`` or ``Resume``, whatever it is. A halted
engine that restarts is therefore still halted, and a listener restarted after missing a resume
does not leave the engine halted. It LISTENs before that first read, so a switch thrown while it
starts is seen either by the read or by a notification.

Close requests are taken (marked consumed) in a transaction that commits only after they were
handed to ``outbox``: a crash or cancellation before the hand-off leaves them pending for the next
start, and each is handed on once otherwise.

Errors: a lost listening connection or a database that does not answer within
``query_deadline`` raises ``DatabaseUnavailable``; the supervisor restarts the actor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Iterator

import trio

from engine.errors import DatabaseUnavailable
from engine.log import get_logger
from engine.messages import CloseTradeNow, ControlCommand, Halt, Resume
from storage.control import CONTROL_CHANNEL, HaltState, get_halted, take_close_requests
from storage.database import Database, Notifications

__all__ = ["halt_command", "run"]

_log = get_logger("control_listener")


def halt_command(announced: HaltState | None, current: HaltState) -> Halt | Resume | None:
    """What to tell the engine about the halt switch: the current state when nothing was said
    yet (``announced`` None, a cold start), otherwise only a change."""
    if announced is not None and announced.halted == current.halted:
        return None
    requested_at = current.changed_at or dt.datetime.now(dt.UTC)
    if current.halted:
        return Halt(reason=current.reason or "halted", requested_at=requested_at)
    return Resume(reason=current.reason or "not halted", requested_at=requested_at)


async def run(
    *,
    db: Database,
    account_id: str,
    outbox: trio.MemorySendChannel[ControlCommand],
    poll_interval: float = 5.0,
    query_deadline: float = 10.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``account_id``'s switches until cancelled. Started (``task_status``) once it is
    listening and has read the state, before it says that state."""
    with outbox:
        async with db.listen(CONTROL_CHANNEL) as notifications:
            with _deadline(query_deadline, "reading the halt switch"):
                state = await get_halted(db, account_id)
            _log.info("control_listener.listening", account_id=account_id, halted=state.halted)
            task_status.started()
            announced = await _announce(outbox, None, state)
            while True:
                await _serve_close_requests(db, account_id, outbox, query_deadline)
                with trio.move_on_after(poll_interval):
                    await _next_notification(notifications, account_id)
                with _deadline(query_deadline, "reading the halt switch"):
                    state = await get_halted(db, account_id)
                announced = await _announce(outbox, announced, state)


async def _announce(
    outbox: trio.MemorySendChannel[ControlCommand],
    announced: HaltState | None,
    state: HaltState,
) -> HaltState:
    """Send the halt command ``state`` calls for, if any; return what the engine now knows."""
    command = halt_command(announced, state)
    if command is None:
        return announced if announced is not None else state
    await outbox.send(command)
    _log.info(
        "control_listener.halted" if state.halted else "control_listener.resumed",
        reason=command.reason,
        changed_by=state.changed_by,
        changed_at=None if state.changed_at is None else state.changed_at.isoformat(),
        at_start=announced is None,
    )
    return state


async def _next_notification(notifications: Notifications, account_id: str) -> None:
    """Wait for a notification about ``account_id`` (others' are for other engines)."""
    while True:
        payload = await notifications.receive()
        if payload in (account_id, ""):
            return


async def _serve_close_requests(
    db: Database,
    account_id: str,
    outbox: trio.MemorySendChannel[ControlCommand],
    query_deadline: float,
) -> None:
    with _deadline(query_deadline, "taking close requests") as scope:
        async with db.transaction() as conn:
            requests = await take_close_requests(conn, account_id)
            # Handing on may wait for a busy consumer: only the query is bounded. The commit
            # that follows has a deadline of its own (storage.database).
            scope.deadline = math.inf
            for request in requests:
                await outbox.send(
                    CloseTradeNow(
                        trade_id=request.trade_id,
                        reason=request.reason,
                        requested_at=request.requested_at,
                    )
                )
                _log.info(
                    "control_listener.close_requested",
                    trade_id=request.trade_id,
                    request_id=request.request_id,
                    reason=request.reason,
                    requested_by=request.requested_by,
                )


@contextlib.contextmanager
def _deadline(seconds: float, doing: str) -> Iterator[trio.CancelScope]:
    """``fail_after`` whose timeout is reported as the database being unavailable."""
    try:
        with trio.fail_after(seconds) as scope:
            yield scope
    except trio.TooSlowError as exc:
        raise DatabaseUnavailable(
            f"no answer from the database within {seconds:g} s while {doing}"
        ) from exc
