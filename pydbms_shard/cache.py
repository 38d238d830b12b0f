"""The coordinator's read cache: a bounded LRU of users by ID, so a hot ``get`` never crosses
a pipe. The DataBase updates it under the same lock as every write, so it is never stale."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from itertools import repeat

from .user import User


class ReadCache:
    """Users by the 16 bytes of their ID (what workers report back); ``capacity`` 0 turns it off."""

    __slots__ = ("_users", "capacity", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._users: OrderedDict[bytes, User] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._users)

    def get(self, key: bytes) -> User | None:
        user = self._users.get(key)
        if user is None:
            self.misses += 1
        else:
            self.hits += 1
            self._users.move_to_end(key)
        return user

    def put(self, key: bytes, user: User) -> None:
        if self.capacity:
            self._users[key] = user
            self._users.move_to_end(key)
            if len(self._users) > self.capacity:
                self._users.popitem(last=False)

    def discard(self, keys: Iterable[bytes]) -> None:
        """Forget these IDs (a C-level loop; nothing at all when the cache is empty)."""
        if self._users:
            deque(map(self._users.pop, keys, repeat(None)), maxlen=0)

    def clear(self) -> None:
        self._users.clear()

    def stats(self) -> dict[str, int]:
        return {"size": len(self._users), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
