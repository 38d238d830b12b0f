"""Reference (a): the original pyDBMS design, written plainly to be measured against.

One process, ``{ID: User}`` plus a name index ``{name: set of IDs}``, one JSON object per line
on disk with a ``.bak`` copy before each save, as the original project does.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any


class OriginalUser:
    """The original's User: validated, read-only properties, equal and hashed by ID."""

    __slots__ = ("_ID", "_age", "_extras", "_name")

    def __init__(self, name: str, age: int, ID: uuid.UUID | None = None, extras: dict[str, Any] | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        if not isinstance(age, int):
            raise TypeError("age must be an int")
        if ID is not None and not isinstance(ID, uuid.UUID):
            raise TypeError("ID must be a UUID")
        self._name, self._age = name, age
        self._ID = ID or uuid.uuid4()
        self._extras = dict(extras or {})

    name = property(lambda self: self._name)
    age = property(lambda self: self._age)
    ID = property(lambda self: self._ID)
    extras = property(lambda self: MappingProxyType(self._extras))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OriginalUser) and other._ID == self._ID

    def __hash__(self) -> int:
        return hash(self._ID)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self._name, "age": self._age, "ID": str(self._ID), "extras": self._extras}


class OriginalDataBase:
    """The original's in-memory design in one process."""

    def __init__(self) -> None:
        self.users: dict[uuid.UUID, OriginalUser] = {}
        self.names: dict[str, set[uuid.UUID]] = {}

    @property
    def size(self) -> int:
        return len(self.users)

    def add_users(self, users: Iterable[OriginalUser]) -> int:
        added = 0
        for user in users:
            if user.ID not in self.users:
                self.users[user.ID] = user
                self.names.setdefault(user.name, set()).add(user.ID)
                added += 1
        return added

    def _remove_id(self, uid: uuid.UUID) -> int:
        user = self.users.pop(uid, None)
        if user is None:
            return 0
        ids = self.names[user.name]
        ids.discard(uid)
        if not ids:
            del self.names[user.name]
        return 1

    def remove_users(self, items: Iterable[Any]) -> int:
        removed = 0
        for item in items:
            if isinstance(item, str):
                for uid in self.names.pop(item, ()):
                    del self.users[uid]
                    removed += 1
            else:
                removed += self._remove_id(item.ID if isinstance(item, OriginalUser) else item)
        return removed

    def search_users(self, queries: Iterable[Any]) -> list[OriginalUser]:
        found: list[OriginalUser] = []
        for query in queries:
            if isinstance(query, str):
                found.extend(self.users[uid] for uid in self.names.get(query, ()))
            else:
                user = self.users.get(query.ID if isinstance(query, OriginalUser) else query)
                if user is not None:
                    found.append(user)
        return found

    def has_user(self, items: Iterable[Any]) -> bool:
        return all((item.ID if isinstance(item, OriginalUser) else item) in self.users for item in items)

    def clear_database(self) -> None:
        self.users.clear()
        self.names.clear()

    # ---------------------------------------------------------------- files

    def save(self, path: str) -> None:
        if os.path.exists(path):
            shutil.copyfile(path, path + ".bak")
        with open(path, "w", encoding="utf-8") as f:
            for user in self.users.values():
                f.write(json.dumps(user.to_dict()) + "\n")

    @staticmethod
    def backup(path: str, dst: str) -> None:
        shutil.copyfile(path, dst)

    def load(self, path: str) -> None:
        self.clear_database()
        users = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                data = json.loads(line)
                users.append(OriginalUser(data["name"], data["age"], uuid.UUID(data["ID"]), data["extras"]))
        self.add_users(users)
