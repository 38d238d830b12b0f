"""The crash test's deterministic workload and its plain-dict model (not a test module).

``calls(seed)`` yields an endless sequence of write calls. It depends on the seed alone, never
on what a database holds, so the killed child (``crash_child.py``) and the test process
regenerate exactly the same calls: the first ``n`` calls of a seed are always the same.
Everything that decides a call comes from one ``random.Random`` seeded with a string (no
``hash()``, no set iteration order), so it is the same in every process.

``Model`` applies the same calls to a dict ``ID bytes -> (name, age, extras)`` with the
DataBase's documented semantics, and keeps an order-independent fingerprint of its state
(a sum of 64-bit hashes of the users, mod 2**64) that is updated incrementally, so the
fingerprint after every prefix of the calls costs O(size of the call).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydbms_shard import User

MASK = (1 << 64) - 1
SHARED_NAMES = [f"shared-{k:02d}" for k in range(40)]  # names held by several users at once


@dataclass(frozen=True)
class Call:
    """One write call: ``op`` is the DataBase method (``save`` is a checkpoint: no change)."""

    number: int  # 1-based position in the sequence
    op: str  # add_users | upsert_users | remove_users | add | remove | clear_database | save
    arg: Any = None

    def describe(self) -> str:
        if isinstance(self.arg, list):
            return f"#{self.number} {self.op}({len(self.arg)} items)"
        return f"#{self.number} {self.op}()"


def round_settings(seed: int) -> dict[str, Any]:
    """The child's DataBase settings besides the path, shards and log_fsync, chosen from SEED:
    a fast autosave in some rounds, a small checkpoint threshold in others, both in a few."""
    rng = random.Random(f"settings-{seed}")
    settings: dict[str, Any] = {}
    if rng.random() < 0.35:
        settings["autosave_interval"] = 0.3
    if rng.random() < 0.35:
        settings["log_checkpoint_bytes"] = 1 << 20
    return settings


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"calls-{seed}")
        self.pool: list[User] = []  # the newest version generated of every ID, in creation order
        self.where: dict[bytes, int] = {}  # ID bytes -> index in pool

    def _name(self) -> str:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.choice(SHARED_NAMES)
        return "u-" + "".join(rng.choices(string.ascii_letters, k=10))

    def _extras(self) -> dict | None:
        rng = self.rng
        if rng.random() < 0.05:
            return {
                "n": rng.randint(-5, 5000),
                "tags": [rng.choice("abc") for _ in range(rng.randint(0, 3))],
                "nested": {"ok": rng.random() < 0.5},
            }
        return None

    def _remember(self, user: User) -> User:
        key = user.ID.bytes
        if key in self.where:
            self.pool[self.where[key]] = user
        else:
            self.where[key] = len(self.pool)
            self.pool.append(user)
        return user

    def new_user(self) -> User:
        uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        return self._remember(User(self._name(), self.rng.randint(0, 150), ID=uid, extras=self._extras()))

    def changed(self, old: User) -> User:
        """A new version of a known ID: another name and/or age."""
        rng = self.rng
        name = self._name() if rng.random() < 0.6 else old.name
        age = rng.randint(0, 150)
        return self._remember(User(name, age, ID=old.ID, extras=self._extras()))

    def known(self) -> User | None:
        return self.rng.choice(self.pool) if self.pool else None

    def batch_size(self) -> int:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.randint(1, 10)
        if r < 0.85:
            return self.rng.randint(10, 100)
        return self.rng.randint(100, 300)

    def filled(self, users: list[User], k: int, seen: dict[bytes, None]) -> list[User]:
        """``users`` topped up with new users to ``k``, shuffled."""
        while len(users) < k:
            user = self.new_user()
            seen[user.ID.bytes] = None
            users.append(user)
        self.rng.shuffle(users)
        return users

    def distinct_known(self, k: int, exclude: dict[bytes, None]) -> list[User]:
        out = []
        for _ in range(k):
            user = self.known()
            if user is not None and user.ID.bytes not in exclude:
                exclude[user.ID.bytes] = None
                out.append(user)
        return out

    def call(self, number: int) -> Call:
        rng = self.rng
        r = rng.random()
        if r < 0.008:
            return Call(number, "clear_database")
        if r < 0.04:
            return Call(number, "save")
        if r < 0.09:  # one user: usually new, sometimes a known ID (then False if still stored)
            user = self.known() if rng.random() < 0.3 and self.pool else self.new_user()
            return Call(number, "add", user)
        if r < 0.14:
            user = self.known()
            target = user.ID if user is not None and rng.random() < 0.8 else uuid.UUID(int=rng.getrandbits(128), version=4)
            return Call(number, "remove", target)
        if r < 0.55:  # new users, plus a few known ones (skipped when stored, added when not)
            k = self.batch_size()
            seen: dict[bytes, None] = {}
            users = self.distinct_known(rng.randint(0, max(0, k // 10)), seen) if rng.random() < 0.4 else []
            return Call(number, "add_users", self.filled(users, k, seen))
        if r < 0.78:  # new versions of known IDs (changed names and ages), plus new users
            k = self.batch_size()
            seen = {}
            users = [self.changed(u) for u in self.distinct_known(rng.randint(1, k), seen)]
            return Call(number, "upsert_users", self.filled(users, k, seen))
        # remove_users: by UUID, by User, by shared name (several users), by a known user's name, by nothing
        items: list[Any] = []
        for user in self.distinct_known(rng.randint(0, 20), {}):
            items.append(user if rng.random() < 0.3 else user.ID)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            items.append(rng.choice(SHARED_NAMES))
        for _ in range(rng.randint(0, 3)):
            user = self.known()
            if user is not None:
                items.append(user.name)
        if rng.random() < 0.2:
            items.append("nobody-" + "".join(rng.choices(string.ascii_letters, k=6)))
            items.append(uuid.UUID(int=rng.getrandbits(128), version=4))
        if not items:
            items.append(rng.choice(SHARED_NAMES))
        rng.shuffle(items)
        return Call(number, "remove_users", items)


def calls(seed: int) -> Iterator[Call]:
    """The endless call sequence of SEED, numbered from 1."""
    gen = _Gen(seed)
    number = 0
    while True:
        number += 1
        yield gen.call(number)


def apply_to_db(db: Any, call: Call) -> Any:
    """Make the call on a DataBase."""
    if call.op in ("clear_database", "save"):
        return getattr(db, call.op)()
    return getattr(db, call.op)(call.arg)


def extras_key(extras: Any) -> str:
    return json.dumps(extras, sort_keys=True, separators=(",", ":")) if extras else ""


def user_hash(id_bytes: bytes, name: str, age: int, extras: str) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(id_bytes)
    h.update(name.encode("utf-8", "surrogatepass"))
    h.update(b"\0%d\0" % age)
    h.update(extras.encode())
    return int.from_bytes(h.digest(), "little")


def record_of(user: User) -> tuple[str, int, str]:
    return (user.name, user.age, extras_key(user.to_dict()["extras"]))


def fingerprint_users(users: Any) -> tuple[int, int]:
    """(fingerprint, count) of an iterable of Users, e.g. ``iter(db)``."""
    fp = count = 0
    for user in users:
        fp = (fp + user_hash(user.ID.bytes, *record_of(user))) & MASK
        count += 1
    return fp, count


def state_of(users: Any) -> dict[bytes, tuple[str, int, str]]:
    return {user.ID.bytes: record_of(user) for user in users}


class Model:
    """A plain dict ``ID bytes -> (name, age, extras as canonical JSON)`` with the DataBase's
    semantics: add skips stored IDs; upsert inserts or replaces; remove by ID, then by name
    (every user with it) within one call; clear empties."""

    def __init__(self) -> None:
        self.users: dict[bytes, tuple[str, int, str]] = {}
        self.by_name: dict[str, dict[bytes, None]] = {}
        self.fp = 0

    def _insert(self, key: bytes, record: tuple[str, int, str]) -> None:
        self.users[key] = record
        self.by_name.setdefault(record[0], {})[key] = None
        self.fp = (self.fp + user_hash(key, *record)) & MASK

    def _delete(self, key: bytes) -> bool:
        record = self.users.pop(key, None)
        if record is None:
            return False
        ids = self.by_name[record[0]]
        del ids[key]
        if not ids:
            del self.by_name[record[0]]
        self.fp = (self.fp - user_hash(key, *record)) & MASK
        return True

    def apply(self, call: Call) -> None:
        op, arg = call.op, call.arg
        if op == "save":
            return
        if op == "clear_database":
            self.users.clear()
            self.by_name.clear()
            self.fp = 0
        elif op in ("add_users", "add"):
            for user in arg if op == "add_users" else [arg]:
                if user.ID.bytes not in self.users:
                    self._insert(user.ID.bytes, record_of(user))
        elif op == "upsert_users":
            for user in arg:
                self._delete(user.ID.bytes)
                self._insert(user.ID.bytes, record_of(user))
        elif op == "remove":
            self._delete(arg.bytes)
        elif op == "remove_users":
            names = [item for item in arg if isinstance(item, str)]
            for item in arg:
                if isinstance(item, User):
                    self._delete(item.ID.bytes)
                elif isinstance(item, uuid.UUID):
                    self._delete(item.bytes)
            for name in names:
                for key in list(self.by_name.get(name, ())):
                    self._delete(key)
        else:
            raise ValueError(f"unknown op {op!r}")


def prefix_fingerprints(seed: int, upto: int) -> list[tuple[int, int]]:
    """(fingerprint, user count) after each prefix 0..upto of SEED's calls."""
    model = Model()
    out = [(model.fp, 0)]
    for call in calls(seed):
        if call.number > upto:
            break
        model.apply(call)
        out.append((model.fp, len(model.users)))
    return out


def model_after(seed: int, length: int) -> Model:
    model = Model()
    for call in calls(seed):
        if call.number > length:
            break
        model.apply(call)
    return model
