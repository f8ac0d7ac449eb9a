"""The memory budget for large messages: what does not fit waits, in arrival order, and one
larger than the whole budget goes alone."""

from __future__ import annotations

import asyncio

from gateway.memory import LARGE, MemoryBudget
from tests.polling import eventually


class Holders:
    """Tasks that hold a share of one budget until the test releases them; `order` says when
    each got in and out."""

    def __init__(self, limit: int) -> None:
        self.budget = MemoryBudget()
        self.limit = limit
        self.order: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Future[None]] = []

    def start(self, name: str, size: int) -> None:
        self.release[name] = asyncio.Event()
        self.tasks.append(asyncio.ensure_future(self._hold(name, size)))

    async def _hold(self, name: str, size: int) -> None:
        async with self.budget.hold(size, self.limit):
            self.order.append(f"{name} in ({self.budget.used // LARGE} MB held)")
            await self.release[name].wait()
        self.order.append(f"{name} out")


async def test_large_messages_beyond_the_budget_wait_their_turn() -> None:
    holders = Holders(4 * LARGE)
    holders.start("a", 3 * LARGE)
    await eventually(lambda: holders.budget.used == 3 * LARGE)
    holders.start("b", 3 * LARGE)  # does not fit beside a
    await eventually(lambda: len(holders.budget._queue) == 1)
    async with holders.budget.hold(LARGE, holders.limit):  # ordinary mail never waits
        holders.order.append("small")
    holders.release["a"].set()
    await eventually(lambda: "b in (3 MB held)" in holders.order)
    holders.start("c", 10 * LARGE)  # larger than the whole budget
    holders.release["b"].set()
    await eventually(lambda: "c in (10 MB held)" in holders.order)  # alone, once b is out
    holders.release["c"].set()
    await asyncio.gather(*holders.tasks)
    assert holders.order == ["a in (3 MB held)", "small", "a out", "b in (3 MB held)", "b out",
                             "c in (10 MB held)", "c out"]
    assert holders.budget.used == 0


async def test_a_large_message_is_not_passed_over_by_smaller_ones_behind_it() -> None:
    holders = Holders(5 * LARGE)
    holders.start("a", 3 * LARGE)
    await eventually(lambda: holders.order == ["a in (3 MB held)"])
    holders.start("b", 4 * LARGE)  # does not fit beside a: waits
    await eventually(lambda: len(holders.budget._queue) == 1)
    holders.start("c", 2 * LARGE)  # would fit beside a, but b came first
    await eventually(lambda: len(holders.budget._queue) == 2)
    holders.release["a"].set()
    await eventually(lambda: "b in (4 MB held)" in holders.order)
    assert holders.budget._queue  # c still waits: 4 + 2 MB do not fit in 5
    holders.release["b"].set()
    await eventually(lambda: "c in (2 MB held)" in holders.order)
    holders.release["c"].set()
    await asyncio.gather(*holders.tasks)
    assert holders.order == ["a in (3 MB held)", "a out", "b in (4 MB held)", "b out",
                             "c in (2 MB held)", "c out"]
    assert holders.budget.used == 0


def test_settling_the_heap_leaves_long_lived_objects_out_of_collections() -> None:
    """What lives as long as the process is frozen out of the collector's walks; settling again
    (a reload) first collects what the old objects left in cycles."""
    import gc
    import weakref

    from gateway.memory import settle_heap

    class Node:
        pass

    try:
        node = Node()
        node.itself = node  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        gone = weakref.ref(node)
        settle_heap()
        assert gc.get_freeze_count() > 1000 and gone() is not None
        del node
        gc.collect()
        assert gone() is not None, "frozen: not collected"
        settle_heap()
        assert gone() is None, "thawed and collected"
    finally:
        gc.unfreeze()
