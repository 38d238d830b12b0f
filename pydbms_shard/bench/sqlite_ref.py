"""Reference (b): SQLite from the standard library, used the plain way.

An in-memory table ``users(id BLOB PRIMARY KEY, name TEXT, age INTEGER, extras TEXT)`` with an
index on ``name``. Batches go through ``executemany`` where SQL allows it (insert, delete); the
lookups run one prepared statement per query and turn each row back into a :class:`User`, so
a search returns user records like the other engines do. Save and load use the ``sqlite3``
backup API to a file; a backup is a copy of that file.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from ..user import User

_SCHEMA = (
    "CREATE TABLE users (id BLOB PRIMARY KEY, name TEXT NOT NULL, age INTEGER NOT NULL, extras TEXT)",
    "CREATE INDEX users_name ON users (name)",
)
_SELECT_BY_NAME = "SELECT name, age, id, extras FROM users WHERE name = ?"
_SELECT_BY_ID = "SELECT name, age, id, extras FROM users WHERE id = ?"
_EXISTS_BY_ID = "SELECT 1 FROM users WHERE id = ?"
_new_user = msgspec.StructMeta.__call__  # builds a User from trusted stored fields, as a decoder would


def _user_of_row(row: tuple[str, int, bytes, str | None]) -> User:
    name, age, raw_id, extras = row
    user: User = _new_user(User, name, age, uuid.UUID(bytes=raw_id), None if extras is None else json.loads(extras))
    return user


def _id_bytes(item: Any) -> bytes:
    if isinstance(item, User):
        return item.ID.bytes
    if isinstance(item, uuid.UUID):
        return item.bytes
    raise TypeError(f"expected a User or a UUID, got {type(item).__name__}")


class SQLiteDataBase:
    """The same calls as the other engines, over one in-memory SQLite connection."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        for statement in _SCHEMA:
            self.conn.execute(statement)

    def close(self) -> None:
        self.conn.close()

    @property
    def size(self) -> int:
        count: int = self.conn.execute("SELECT count(*) FROM users").fetchone()[0]
        return count

    def _changes(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> int:
        before = self.conn.total_changes
        self.conn.execute("BEGIN")  # one transaction per batch
        try:
            self.conn.executemany(sql, rows)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return self.conn.total_changes - before

    def add_users(self, users: Iterable[User]) -> int:
        """Insert each user whose ID is not stored yet; returns how many were added."""
        dumps = json.dumps
        rows = ((u.ID.bytes, u.name, u.age, None if u._extras is None else dumps(u._extras)) for u in users)
        return self._changes("INSERT OR IGNORE INTO users VALUES (?, ?, ?, ?)", rows)

    def remove_users(self, items: Iterable[Any]) -> int:
        """Remove by User, UUID or name (every user with it); returns how many were removed."""
        items = list(items)
        names = [(item,) for item in items if isinstance(item, str)]
        ids = [(_id_bytes(item),) for item in items if not isinstance(item, str)]
        removed = 0
        if ids:
            removed += self._changes("DELETE FROM users WHERE id = ?", ids)
        if names:
            removed += self._changes("DELETE FROM users WHERE name = ?", names)
        return removed

    def search_users(self, queries: Iterable[Any]) -> list[User]:
        """The stored users matching each query (User, UUID or name), in query order."""
        execute = self.conn.execute
        found: list[User] = []
        for query in queries:
            if isinstance(query, str):
                rows = execute(_SELECT_BY_NAME, (query,)).fetchall()
            else:
                rows = execute(_SELECT_BY_ID, (_id_bytes(query),)).fetchall()
            found.extend(map(_user_of_row, rows))
        return found

    def has_user(self, items: Iterable[Any]) -> bool:
        """True when every User/UUID given is stored."""
        execute = self.conn.execute
        for item in items:
            if execute(_EXISTS_BY_ID, (_id_bytes(item),)).fetchone() is None:
                return False
        return True

    def clear_database(self) -> None:
        self.conn.execute("DELETE FROM users")

    # ---------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str]) -> None:
        """Copy the in-memory database to a file with the backup API (new file, then rename)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        target = sqlite3.connect(tmp)
        try:
            self.conn.backup(target)
        finally:
            target.close()
        os.replace(tmp, path)

    @staticmethod
    def backup(path: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        shutil.copyfile(path, dst)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace the contents with the database file at ``path`` (backup API, file to memory)."""
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        source = sqlite3.connect(os.fspath(path))
        try:
            source.backup(self.conn)
        finally:
            source.close()
