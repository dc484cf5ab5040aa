"""The one_for_one supervisor, driven by the autojump clock."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import trio
import trio.testing

from engine.errors import AuthFailed, ConfigError
from engine.supervisor import (
    Backoff,
    ChildSpec,
    ChildState,
    Restart,
    Supervisor,
    SupervisorEscalation,
)

BUDGET = 600  # seconds of (autojumped) trio time a test may take before it counts as a hang
QUICK = Backoff(base=0.1, factor=2.0, max=1.0, jitter=0.0)


class Child:
    """A scripted child that records what happens to it in a shared log.

    Each incarnation takes the next entry of ``outcomes``: an exception is raised and ``None``
    returns normally, after ``run_for`` seconds of running. Once the script is used up, the
    incarnation runs until cancelled and sets ``steady``.
    """

    def __init__(
        self,
        name: str,
        log: list[tuple[str, str, float]],
        *outcomes: BaseException | None,
        start_delay: float = 0.0,
        run_for: float = 0.0,
        stop_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.log = log
        self.outcomes = list(outcomes)
        self.start_delay = start_delay
        self.run_for = run_for
        self.stop_delay = stop_delay
        self.launches: list[float] = []
        self.steady = trio.Event()

    def spec(self, restart: Restart = Restart.PERMANENT, **kw: Any) -> ChildSpec:
        return ChildSpec(self.name, self.run, restart, **kw)

    def _note(self, what: str) -> None:
        self.log.append((what, self.name, trio.current_time()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.launches.append(trio.current_time())
        self._note("launch")
        try:
            await trio.sleep(self.start_delay)
            task_status.started()
            self._note("started")
            if self.outcomes:
                outcome = self.outcomes.pop(0)
                await trio.sleep(self.run_for)
                if outcome is not None:
                    raise outcome
                return
            self.steady.set()
            await trio.sleep_forever()
        except trio.Cancelled:
            self._note("stop_begin")
            with trio.CancelScope(shield=True):
                await trio.sleep(self.stop_delay)
            self._note("stop_end")
            raise


def events(log: list[tuple[str, str, float]], what: str) -> list[str]:
    return [name for kind, name, _ in log if kind == what]


# ---- start and stop order ----------------------------------------------------------------


async def test_children_start_in_order_each_after_the_previous_started(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    seen_when_launched: dict[str, list[ChildState]] = {}
    children = [Child(name, log, start_delay=1.0) for name in ("a", "b", "c")]

    def spying(child: Child) -> ChildSpec:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            seen_when_launched[child.name] = [s.state for s in sup.statistics().children]
            await child.run(task_status=task_status)

        return ChildSpec(child.name, run)

    sup = Supervisor([spying(c) for c in children])
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert trio.current_time() == pytest.approx(3.0)  # three 1 s starts, one at a time
            assert [s.state for s in sup.statistics().children] == [ChildState.RUNNING] * 3
            sup.stop()
    assert [(kind, name) for kind, name, _ in log[:6]] == [
        ("launch", "a"), ("started", "a"),
        ("launch", "b"), ("started", "b"),
        ("launch", "c"), ("started", "c"),
    ]  # fmt: skip
    assert seen_when_launched == {
        "a": [ChildState.STARTING, ChildState.STOPPED, ChildState.STOPPED],
        "b": [ChildState.RUNNING, ChildState.STARTING, ChildState.STOPPED],
        "c": [ChildState.RUNNING, ChildState.RUNNING, ChildState.STARTING],
    }


async def test_stop_cancels_in_reverse_order_waiting_for_each(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    children = [Child(name, log, stop_delay=1.0) for name in ("a", "b", "c")]
    sup = Supervisor([c.spec() for c in children])
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            t0 = trio.current_time()
            sup.stop()
        # run() returned normally (no exception) after the children stopped one by one
    stops = [(kind, name, t - t0) for kind, name, t in log if kind.startswith("stop")]
    assert stops == [
        ("stop_begin", "c", 0.0), ("stop_end", "c", 1.0),
        ("stop_begin", "b", 1.0), ("stop_end", "b", 2.0),
        ("stop_begin", "a", 2.0), ("stop_end", "a", 3.0),
    ]  # fmt: skip
    assert all(s.state is ChildState.STOPPED for s in sup.statistics().children)
    assert all(s.last_error is None for s in sup.statistics().children)  # a stop is no crash


async def test_stop_before_run_starts_nothing() -> None:
    log: list[tuple[str, str, float]] = []
    sup = Supervisor([Child("a", log).spec()])
    sup.stop()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
    assert log == []


# ---- restarts ----------------------------------------------------------------------------


async def test_crashed_permanent_child_is_restarted_and_sibling_untouched(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    seen: list[tuple[str, dict[str, object]]] = []
    steady = Child("steady", log)
    crasher = Child("crasher", log, ValueError("boom 1"), ValueError("boom 2"), run_for=1.0)
    sup = Supervisor(
        [steady.spec(), crasher.spec()],
        intensity=10,
        backoff=QUICK,
        on_event=lambda event, fields: seen.append((event, fields)),
    )
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await crasher.steady.wait()
            stats = sup.statistics()
            assert len(steady.launches) == 1
            assert "stop_begin" not in {kind for kind, _, _ in log}  # nobody was cancelled
            assert stats.child("steady") == dataclasses.replace(
                stats.child("steady"), state=ChildState.RUNNING, restarts=0, last_error=None
            )
            assert stats.child("crasher").state is ChildState.RUNNING
            assert stats.child("crasher").restarts == 2
            assert stats.child("crasher").last_error == "ValueError('boom 2')"
            assert stats.total_restarts == 2
            sup.stop()
    assert len(crasher.launches) == 3
    restarting = [f for e, f in seen if e == "supervisor.child_restarting"]
    assert [(f["child"], f["restarts"]) for f in restarting] == [("crasher", 1), ("crasher", 2)]


async def test_backoff_grows_exponentially_with_bounded_jitter(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    backoff = Backoff(base=1.0, factor=2.0, max=10.0, jitter=0.5)
    crasher = Child("crasher", log, *[ValueError(str(i)) for i in range(6)])
    sup = Supervisor(
        [crasher.spec(backoff=backoff)], intensity=100, period=1000.0, rng=random.Random(42)
    )
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await crasher.steady.wait()
            sup.stop()
    delays = [
        later - earlier
        for earlier, later in zip(crasher.launches, crasher.launches[1:], strict=False)
    ]
    ceilings = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert len(delays) == len(ceilings)
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    replay = random.Random(42)
    assert delays == pytest.approx([c * (1 - 0.5 * replay.random()) for c in ceilings])
    assert delays != pytest.approx(ceilings)  # the jitter did move them


async def test_backoff_starts_over_after_a_healthy_period(autojump_clock: trio.abc.Clock) -> None:
    launches: list[float] = []
    run_for = [0.0, 0.0, 10.0, 0.0]  # two quick crashes, one after 10 s of health, one quick
    steady = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        launches.append(trio.current_time())
        task_status.started()
        if len(launches) > len(run_for):
            steady.set()
            await trio.sleep_forever()
        await trio.sleep(run_for[len(launches) - 1])
        raise ValueError("crash")

    backoff = Backoff(base=1.0, factor=2.0, max=100.0, jitter=0.0)
    sup = Supervisor([ChildSpec("c", run, backoff=backoff)], intensity=10, period=5.0)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await steady.wait()
            sup.stop()
    delays = [b - a - r for a, b, r in zip(launches, launches[1:], run_for, strict=False)]
    assert delays == pytest.approx([1.0, 2.0, 1.0, 2.0])  # not 4.0, 8.0: health reset it


def test_backoff_ceiling_and_validation() -> None:
    backoff = Backoff(base=0.5, factor=3.0, max=5.0, jitter=0.0)
    assert [backoff.ceiling(n) for n in range(4)] == [0.5, 1.5, 4.5, 5.0]
    assert backoff.ceiling(10_000) == 5.0  # no overflow on a long crash loop
    assert backoff.delay(1, random.Random(1)) == 1.5  # no jitter: exactly the ceiling
    for bad in (dict(jitter=1.5), dict(factor=0.5), dict(base=2.0, max=1.0)):
        with pytest.raises(ValueError):
            Backoff(**bad)  # type: ignore[arg-type]


# ---- intensity and escalation ------------------------------------------------------------


async def test_crash_loop_escalates_cancels_siblings_in_reverse_and_raises(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    seen: list[str] = []
    before, after = Child("before", log), Child("after", log)
    crasher = Child("crasher", log, *[ValueError(f"boom {i}") for i in range(10)])
    sup = Supervisor(
        [before.spec(), crasher.spec(), after.spec()],
        name="root",
        intensity=3,
        period=5.0,
        backoff=QUICK,
        on_event=lambda event, fields: seen.append(event),
    )
    with trio.fail_after(BUDGET), pytest.raises(SupervisorEscalation) as caught:
        await sup.run()
    escalation = caught.value
    assert escalation.child == "crasher" and escalation.supervisor == "root"
    assert escalation.fatal is False
    assert isinstance(escalation.__cause__, ValueError)
    assert str(escalation.__cause__) == "boom 3"  # the 4th crash is the one too many
    assert "crasher" in str(escalation) and "boom 3" in str(escalation)
    assert events(log, "stop_begin") == ["after", "before"]  # siblings cancelled, reverse order
    stats = sup.statistics()
    assert stats.child("crasher").restarts == 3
    assert stats.child("crasher").state is ChildState.EXITED
    assert stats.child("before").state is ChildState.STOPPED
    assert stats.child("after").state is ChildState.STOPPED
    assert "supervisor.escalated" in seen


@pytest.mark.parametrize(("period", "escalates"), [(10.0, False), (20.0, True)])
async def test_intensity_window_slides(
    autojump_clock: trio.abc.Clock, period: float, escalates: bool
) -> None:
    # A crash every ~6 s: at most 2 restarts fit in any 10 s window, but 3 fit in 20 s.
    log: list[tuple[str, str, float]] = []
    crasher = Child("crasher", log, *[ValueError(str(i)) for i in range(8)], run_for=6.0)
    sup = Supervisor(
        [crasher.spec()],
        intensity=2,
        period=period,
        backoff=Backoff(base=0.1, factor=1.0, max=0.1, jitter=0.0),
    )
    with trio.fail_after(BUDGET):
        if escalates:
            with pytest.raises(SupervisorEscalation):
                await sup.run()
            assert sup.statistics().child("crasher").restarts == 2
            assert len(crasher.launches) == 3
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await crasher.steady.wait()
            assert sup.statistics().child("crasher").restarts == 8
            sup.stop()


async def test_fatal_error_escalates_at_once_without_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    steady = Child("steady", log)
    doomed = Child("doomed", log, AuthFailed("401"), run_for=1.0)
    sup = Supervisor([steady.spec(), doomed.spec()], intensity=100, backoff=QUICK)
    with trio.fail_after(BUDGET), pytest.raises(SupervisorEscalation) as caught:
        await sup.run()
    assert caught.value.fatal is True
    assert isinstance(caught.value.__cause__, AuthFailed)
    assert len(doomed.launches) == 1
    assert sup.statistics().total_restarts == 0
    assert events(log, "stop_begin") == ["steady"]


@pytest.mark.parametrize("restart", list(Restart))
async def test_fatal_error_inside_a_group_escalates_whatever_the_restart_type(
    autojump_clock: trio.abc.Clock, restart: Restart
) -> None:
    async def with_own_nursery(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep(1.0)
            raise ConfigError("bad key")  # wrapped in an ExceptionGroup by the nursery

    sup = Supervisor([ChildSpec("grouped", with_own_nursery, restart)], intensity=100)
    with trio.fail_after(BUDGET), pytest.raises(SupervisorEscalation) as caught:
        await sup.run()
    assert caught.value.fatal is True
    assert isinstance(caught.value.__cause__, ExceptionGroup)
    assert sup.statistics().total_restarts == 0


# ---- restart types -----------------------------------------------------------------------


async def test_transient_child_normal_exit_is_final_crash_is_restarted(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    steady = Child("steady", log)
    done = Child("done", log, None)  # returns normally once
    flaky = Child("flaky", log, ValueError("oops"))  # crashes once, then runs
    sup = Supervisor(
        [done.spec(Restart.TRANSIENT), flaky.spec(Restart.TRANSIENT), steady.spec()],
        backoff=QUICK,
    )
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await flaky.steady.wait()
            await trio.sleep(60)  # ample time for a wrongful restart of "done" to show
            stats = sup.statistics()
            assert len(done.launches) == 1
            assert stats.child("done").state is ChildState.EXITED
            assert stats.child("done").restarts == 0
            assert stats.child("done").last_error is None
            assert len(flaky.launches) == 2
            assert stats.child("flaky").restarts == 1
            assert stats.child("flaky").state is ChildState.RUNNING
            assert stats.child("steady").state is ChildState.RUNNING
            sup.stop()


async def test_temporary_child_is_never_restarted(autojump_clock: trio.abc.Clock) -> None:
    log: list[tuple[str, str, float]] = []
    steady = Child("steady", log)
    crashes = Child("crashes", log, ValueError("once"), ValueError("twice"))
    returns = Child("returns", log, None, None)
    sup = Supervisor(
        [crashes.spec(Restart.TEMPORARY), returns.spec(Restart.TEMPORARY), steady.spec()],
        backoff=QUICK,
    )
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep(60)
            stats = sup.statistics()
            assert (len(crashes.launches), len(returns.launches)) == (1, 1)
            assert stats.child("crashes").state is ChildState.EXITED
            assert stats.child("crashes").last_error == "ValueError('once')"
            assert stats.child("returns").state is ChildState.EXITED
            assert stats.total_restarts == 0
            assert stats.child("steady").state is ChildState.RUNNING
            sup.stop()


# ---- statistics --------------------------------------------------------------------------


async def test_statistics_report_restarts_per_child_and_last_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    one = Child("one", log, KeyError("k"))
    three = Child("three", log, ValueError("a"), ValueError("b"), RuntimeError("c"))
    sup = Supervisor([one.spec(), three.spec()], intensity=10, backoff=QUICK)
    before = sup.statistics()
    assert [c.state for c in before.children] == [ChildState.STOPPED] * 2
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await one.steady.wait()
            await three.steady.wait()
            stats = sup.statistics()
            sup.stop()
    assert [(c.name, c.restarts, c.last_error) for c in stats.children] == [
        ("one", 1, "KeyError('k')"),
        ("three", 3, "RuntimeError('c')"),
    ]
    assert stats.total_restarts == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.total_restarts = 0  # type: ignore[misc]
    assert sup.statistics().child("three").state is ChildState.STOPPED
    assert stats.child("three").state is ChildState.RUNNING  # a snapshot, not a live view


async def test_statistics_show_backing_off(autojump_clock: trio.abc.Clock) -> None:
    log: list[tuple[str, str, float]] = []
    crasher = Child("crasher", log, ValueError("x"))
    slow = Backoff(base=30.0, factor=1.0, max=30.0, jitter=0.0)
    sup = Supervisor([crasher.spec(backoff=slow)])
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.testing.wait_all_tasks_blocked()
            assert sup.statistics().child("crasher").state is ChildState.BACKING_OFF
            await crasher.steady.wait()
            assert crasher.launches[1] - crasher.launches[0] == pytest.approx(30.0)
            sup.stop()


# ---- cancellation ------------------------------------------------------------------------


async def test_cancelling_the_parent_stops_everything_promptly_in_reverse(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    a, b = Child("a", log), Child("b", log)
    crasher = Child("backing_off", log, ValueError("x"))
    slow = Backoff(base=100.0, factor=1.0, max=100.0, jitter=0.0)
    sup = Supervisor([a.spec(), b.spec(), crasher.spec(backoff=slow)])
    with trio.fail_after(BUDGET):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                await trio.testing.wait_all_tasks_blocked()
                assert sup.statistics().child("backing_off").state is ChildState.BACKING_OFF
                t0 = trio.current_time()
                scope.cancel()
        assert scope.cancelled_caught  # the Cancelled reached the scope: it was not swallowed
    assert trio.current_time() == t0  # no clock time passed: nothing waited on a backoff
    assert events(log, "stop_begin") == ["b", "a"]
    assert len(crasher.launches) == 1
    assert all(s.state is ChildState.STOPPED for s in sup.statistics().children)


async def test_cancelled_during_startup_is_not_swallowed(autojump_clock: trio.abc.Clock) -> None:
    log: list[tuple[str, str, float]] = []
    a, slow_starter = Child("a", log), Child("slow", log, start_delay=1000.0)
    sup = Supervisor([a.spec(), slow_starter.spec()])
    with trio.move_on_after(5.0) as scope:
        await sup.run()
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(5.0)
    assert events(log, "stop_begin") == ["slow", "a"]


# ---- nesting -----------------------------------------------------------------------------


async def test_nested_supervisor_starts_stops_in_order_and_is_restarted_on_escalation(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    before, after = Child("before", log), Child("after", log)
    inner_a = Child("inner_a", log)
    # Crashes 4 times in a row: the inner supervisor (intensity 2) gives up, the outer restarts
    # it, and the rest of the script (then steady running) plays in the new incarnation.
    inner_b = Child("inner_b", log, *[ValueError(f"b{i}") for i in range(4)])
    inner = Supervisor([inner_a.spec(), inner_b.spec()], name="inner", intensity=2, backoff=QUICK)
    outer = Supervisor(
        [before.spec(), ChildSpec("inner", inner.run), after.spec()],
        name="outer",
        intensity=5,
        backoff=QUICK,
    )
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            await nursery.start(outer.run)
            await inner_b.steady.wait()
            await trio.testing.wait_all_tasks_blocked()
            outer_stats, inner_stats = outer.statistics(), inner.statistics()
            outer.stop()
    started = events(log, "started")
    assert started[:4] == ["before", "inner_a", "inner_b", "after"]
    assert outer_stats.child("inner").restarts == 1
    assert "SupervisorEscalation" in (outer_stats.child("inner").last_error or "")
    assert outer_stats.child("after").restarts == 0 and len(after.launches) == 1
    assert len(inner_a.launches) == 2  # the inner tree was cold-started again
    assert inner_stats.child("inner_b").restarts == 1  # counted afresh in the new run
    # the last shutdown: after, then the inner tree (inner_b, inner_a), then before
    assert events(log, "stop_begin")[-4:] == ["after", "inner_b", "inner_a", "before"]


async def test_nested_fatal_escalation_reaches_the_root_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    sibling = Child("sibling", log)
    doomed = Child("doomed", log, ConfigError("bad"), run_for=1.0)
    inner = Supervisor([doomed.spec()], name="inner", intensity=100)
    outer = Supervisor([sibling.spec(), ChildSpec("inner", inner.run)], name="outer", intensity=100)
    with trio.fail_after(BUDGET), pytest.raises(SupervisorEscalation) as caught:
        await outer.run()
    assert caught.value.supervisor == "outer" and caught.value.fatal
    inner_escalation = caught.value.__cause__
    assert isinstance(inner_escalation, SupervisorEscalation)
    assert isinstance(inner_escalation.__cause__, ConfigError)
    assert outer.statistics().total_restarts == 0 and len(doomed.launches) == 1
    assert events(log, "stop_begin") == ["sibling"]


async def test_escalation_reaches_a_parent_nursery_as_an_exception_group(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[tuple[str, str, float]] = []
    crasher = Child("crasher", log, *[ValueError("x")] * 5, run_for=0.5)
    sup = Supervisor([crasher.spec()], intensity=1, backoff=QUICK)
    with trio.fail_after(BUDGET), pytest.RaisesGroup(SupervisorEscalation):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)  # startup succeeds; the escalation comes later
            await trio.sleep_forever()
