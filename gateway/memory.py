"""What a process does about its memory when messages are large.

`MemoryBudget`: the bytes of large messages one process works on in memory at the same time
(policy scan, spool write, delivery). Ten clients sending 25 MB each must not mean ten 25 MB
messages, and their copies, in memory at once: beyond the budget a message waits its turn on
disk (in a spill file or the spool), which costs its sender a little time, not the gateway its
memory. A message larger than the whole budget still goes, alone.

`tune_allocator` and `release_freed`: glibc's malloc serves a large request from its own mapping
only while the request is above a threshold that it raises to the size of every such block freed
(up to 32 MB); after one 25 MB message, later ones come from the heap and their freed pages stay
with the process. A fixed threshold keeps large buffers in their own mappings, returned to the
system the moment they are freed, and `release_freed` (malloc_trim) gives back what the heap
holds free after a large message.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

LARGE = 1 << 20  # a message above this counts against the budget; below it is ordinary mail
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 1 << 20


class MemoryBudget:
    """What large messages hold now, shared by the holders of one process; the limit is the
    config's (`limits.message_memory`), given at each hold, so a reload applies at once."""

    def __init__(self) -> None:
        self.used = 0
        self._changed: asyncio.Condition | None = None
        self._queue: deque[object] = deque()  # waiting holders, first come first served

    @asynccontextmanager
    async def hold(self, size: int, limit: int) -> AsyncIterator[None]:
        """Wait until `size` fits within `limit` (or nothing else is held), hold it for the
        block. Holders go in arrival order, so a message larger than the rest is not passed
        over for ever."""
        if size <= LARGE:
            yield
            return
        if self._changed is None:
            self._changed = asyncio.Condition()
        turn = object()
        async with self._changed:
            self._queue.append(turn)
            try:
                await self._changed.wait_for(lambda: self._queue[0] is turn and (
                    self.used == 0 or self.used + size <= limit))
            finally:
                self._queue.remove(turn)
                self._changed.notify_all()  # the next in line may fit beside us
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()
            release_freed()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def tune_allocator() -> None:
    """Large buffers in their own mappings (see the module docstring), and two malloc arenas:
    glibc gives each thread that allocates an arena of its own, up to eight per core, whose
    pages each keep what they once held; Python threads take turns under the GIL and gain
    nothing from them (the spool's I/O threads cost the delivery process 7 MB of its peak under
    relay load). No-op without glibc; called before the process starts threads."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, 2)


def release_freed() -> None:
    """Give the heap's free pages back to the system (after a large message)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def settle_heap() -> None:
    """After start-up or a reload: collect once, then leave every object that survived out of
    later collections (`gc.freeze`). The detectors' vocabulary, the config and the modules are
    hundreds of thousands of objects that live as long as the process; a full collection walked
    them all, a 28 ms stop of the event loop under ingest load (the p99 of time-to-250). A reload
    first thaws them, so what the old configuration held in cycles is collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
