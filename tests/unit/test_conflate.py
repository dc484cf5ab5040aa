from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.conflate import ConflatingMailbox


async def test_newest_value_per_key_survives_a_slow_consumer(
    autojump_clock: trio.abc.Clock,
) -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    batches: list[dict[str, int]] = []

    async def slow_consumer() -> None:
        while True:
            try:
                batch = await box.get_batch()
            except trio.EndOfChannel:
                return
            batches.append(batch)
            await trio.sleep(1)  # a watcher far slower than the feed

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_consumer)
        for i in range(1000):
            box.put("SPY", i)  # never blocks, whatever the consumer does
            box.put("QQQ", -i)
            if i % 100 == 0:
                await trio.sleep(0.3)
        box.close()

    # The very last value of each key was delivered.
    last_seen: dict[str, int] = {}
    for batch in batches:
        last_seen.update(batch)
    assert last_seen == {"SPY": 999, "QQQ": -999}
    stats = box.statistics()
    assert stats.put == 2000 and stats.conflated > 1500 and stats.pending == 0


async def test_consumer_is_woken_by_the_first_put() -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    got: list[dict[str, int]] = []

    async def consumer() -> None:
        got.append(await box.get_batch())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            box.put("X", 1)
    assert got == [{"X": 1}]


async def test_close_drains_then_ends() -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    box.put("X", 1)
    box.close()
    box.put("Y", 2)  # ignored after close
    assert await box.get_batch() == {"X": 1}
    with pytest.raises(trio.EndOfChannel):
        await box.get_batch()


async def test_get_batch_is_a_cancellation_point() -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    box.put("X", 1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await box.get_batch()
    assert scope.cancelled_caught
    assert box.statistics().pending == 1  # nothing was taken by the cancelled call


async def test_close_wakes_a_waiting_consumer() -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    ended = trio.Event()

    async def consumer() -> None:
        with pytest.raises(trio.EndOfChannel):
            await box.get_batch()
        ended.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            await trio.testing.wait_all_tasks_blocked()
            box.close()
    assert ended.is_set()


async def test_a_consumer_cancelled_while_waiting_can_wait_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    with trio.move_on_after(1) as waited:
        await box.get_batch()
    assert waited.cancelled_caught
    box.put("X", 1)
    assert await box.get_batch() == {"X": 1}
    with trio.move_on_after(1):
        await box.get_batch()
    box.put("Y", 2)  # a put after an abandoned wait wakes nobody and is kept
    assert await box.get_batch() == {"Y": 2}


async def test_a_second_consumer_is_refused() -> None:
    box: ConflatingMailbox[str, int] = ConflatingMailbox()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.get_batch)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await box.get_batch()
            box.put("X", 1)
