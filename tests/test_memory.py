"""The memory budget for large messages: what does not fit waits, one larger than all goes alone."""

from __future__ import annotations

import asyncio

from gateway.memory import LARGE, MemoryBudget
from tests.polling import eventually


async def test_large_messages_beyond_the_budget_wait_their_turn() -> None:
    budget = MemoryBudget(4 * LARGE)
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("a", "b", "c")}

    async def work(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(f"{name} in (holding {budget.used // LARGE} MB)")
            await release[name].wait()
        order.append(f"{name} out")

    tasks = [asyncio.ensure_future(work("a", 3 * LARGE))]
    await eventually(lambda: budget.used == 3 * LARGE)
    tasks.append(asyncio.ensure_future(work("b", 3 * LARGE)))  # does not fit beside a
    async with budget.hold(LARGE):  # ordinary mail never waits
        order.append("small")
    release["a"].set()
    await eventually(lambda: budget.used == 3 * LARGE and "b in (holding 3 MB)" in order)
    tasks.append(asyncio.ensure_future(work("c", 10 * LARGE)))  # larger than the whole budget
    release["b"].set()
    await eventually(lambda: "c in (holding 10 MB)" in order)  # alone, once b is out
    release["c"].set()
    await asyncio.gather(*tasks)
    assert order == ["a in (holding 3 MB)", "small", "a out", "b in (holding 3 MB)", "b out",
                     "c in (holding 10 MB)", "c out"]
    assert budget.used == 0


async def test_a_large_message_is_not_passed_over_by_smaller_ones_behind_it() -> None:
    budget = MemoryBudget(5 * LARGE)
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("a", "b", "c")}

    async def work(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(f"{name} in")
            await release[name].wait()

    a = asyncio.ensure_future(work("a", 3 * LARGE))
    await eventually(lambda: order == ["a in"])
    b = asyncio.ensure_future(work("b", 4 * LARGE))  # does not fit beside a: waits
    await eventually(lambda: len(budget._queue) == 1)
    c = asyncio.ensure_future(work("c", 2 * LARGE))  # would fit beside a, but b came first
    await eventually(lambda: len(budget._queue) == 2)
    assert order == ["a in"]
    release["a"].set()
    await eventually(lambda: order == ["a in", "b in"])
    assert budget._queue  # c still waits: 4 + 2 MB do not fit in 5
    release["b"].set()
    await eventually(lambda: order == ["a in", "b in", "c in"])
    release["c"].set()
    await asyncio.gather(a, b, c)
    assert budget.used == 0
