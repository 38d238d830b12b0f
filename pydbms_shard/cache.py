"""The coordinator's read cache: a bounded LRU of users by ID, so a hot ``get`` never crosses
a pipe. The DataBase updates it under the same lock as every write, so it is never stale."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from .user import User


class ReadCache:
    """Users by ``UUID.int``; ``capacity`` 0 turns the cache off."""

    __slots__ = ("capacity", "_users", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._users: OrderedDict[int, User] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._users)

    def get(self, key: int) -> User | None:
        user = self._users.get(key)
        if user is None:
            self.misses += 1
        else:
            self.hits += 1
            self._users.move_to_end(key)
        return user

    def put(self, user: User) -> None:
        if self.capacity:
            self._users[user.ID.int] = user
            self._users.move_to_end(user.ID.int)
            if len(self._users) > self.capacity:
                self._users.popitem(last=False)

    def discard_ints(self, keys: Iterable[int]) -> None:
        if self._users:
            pop = self._users.pop
            for key in keys:
                pop(key, None)

    def discard_id_bytes(self, ids: Iterable[bytes]) -> None:
        if self._users:
            self.discard_ints(int.from_bytes(b, "big") for b in ids)

    def clear(self) -> None:
        self._users.clear()

    def stats(self) -> dict[str, int]:
        return {"size": len(self._users), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
