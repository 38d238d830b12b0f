"""A shard's membership index of IDs: an open-addressing hash table in numpy arrays.

``has_user`` and ``contains_many`` ask whether IDs are stored. A dict answers one ID at a time
and pays three cache misses per ID (index, entry, key object); this table answers a whole
batch at once with one vectorised probe per round, never building a Python object per ID.
The partition keeps it in step with its dict on every add, upsert, remove, clear and load.

IDs are the 16 raw bytes viewed as two big-endian u64 (``hi``, ``lo``). Linear probing;
removal leaves a tombstone; when used slots would pass 60% of the table, it is rebuilt without
tombstones at four times the live count (so rebuilds are rare: 17-70 bytes per user).
"""

from __future__ import annotations

import numpy as np

EMPTY, FULL, GONE = 0, 1, 2
_MIN_CAPACITY = 1024
_K1 = np.uint64(0xD6E8FEB86659FD93)
_K2 = np.uint64(0xA0761D6478BD642F)


def as_rows(ids: bytes | memoryview | np.ndarray) -> np.ndarray:
    """IDs as an ``(n, 2)`` array of big-endian u64 (hi, lo), from raw 16-byte IDs."""
    if isinstance(ids, np.ndarray):
        return np.ascontiguousarray(ids).view(">u8").reshape(-1, 2).astype(np.uint64)
    return np.frombuffer(ids, dtype=">u8").reshape(-1, 2).astype(np.uint64)


class IdIndex:
    """A set of 16-byte IDs answering batch membership with numpy."""

    __slots__ = ("hi", "live", "lo", "mask", "state", "used")

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        size = _MIN_CAPACITY
        while size < capacity:
            size *= 2
        self.hi = np.zeros(size, dtype=np.uint64)
        self.lo = np.zeros(size, dtype=np.uint64)
        self.state = np.zeros(size, dtype=np.uint8)
        self.mask = np.uint64(size - 1)
        self.used = 0  # FULL + GONE slots
        self.live = 0  # FULL slots

    def __len__(self) -> int:
        return self.live

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            x = (keys[:, 0] * _K1) ^ keys[:, 1]
            x *= _K2
            x ^= x >> np.uint64(32)
        home: np.ndarray = x & self.mask
        return home

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """The slot holding each key, or -1."""
        n = len(keys)
        found = np.full(n, -1, dtype=np.int64)
        pending = np.arange(n)
        slots = self._home(keys)
        while len(pending):
            s = slots[pending]
            st = self.state[s]
            k = keys[pending]
            match = (st == FULL) & (self.hi[s] == k[:, 0]) & (self.lo[s] == k[:, 1])
            found[pending[match]] = s[match].astype(np.int64)
            go_on = ~match & (st != EMPTY)
            pending = pending[go_on]
            slots[pending] = (s[go_on] + np.uint64(1)) & self.mask
        return found

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """A bool for each key (an ``(n, 2)`` u64 array from :func:`as_rows`)."""
        if self.live == 0 or len(keys) == 0:
            return np.zeros(len(keys), dtype=bool)
        return self._find(keys) >= 0

    def add_new(self, keys: np.ndarray) -> None:
        """Insert keys known to be absent and distinct (the partition checked them)."""
        if len(keys) == 0:
            return
        if (self.used + len(keys)) * 5 > len(self.state) * 3:  # keep 40% of the slots empty
            self._rebuild(self.live + len(keys))
        pending = np.arange(len(keys))
        slots = self._home(keys)
        owner = np.empty(len(self.state), dtype=np.int64)  # scratch: who claims each slot
        while len(pending):
            s = slots[pending]
            free = self.state[s] != FULL
            claim, at = pending[free], s[free]
            owner[at] = claim  # of several keys claiming one slot, one write survives
            won = owner[at] == claim
            winners, taken = claim[won], at[won]
            self.used += int((self.state[taken] == EMPTY).sum())
            self.hi[taken] = keys[winners, 0]
            self.lo[taken] = keys[winners, 1]
            self.state[taken] = FULL
            self.live += len(taken)
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            slots[pending] = (slots[pending] + np.uint64(1)) & self.mask

    def discard(self, keys: np.ndarray) -> None:
        if len(keys) == 0 or self.live == 0:
            return
        slots = self._find(keys)
        slots = np.unique(slots[slots >= 0])
        self.state[slots] = GONE
        self.live -= len(slots)

    def _rebuild(self, need: int) -> None:
        keep = np.column_stack([self.hi[self.state == FULL], self.lo[self.state == FULL]])
        size = _MIN_CAPACITY
        while size < 4 * max(need, 1):  # room to grow and to collect tombstones between rebuilds
            size *= 2
        IdIndex.__init__(self, size)
        self.add_new(keep)
