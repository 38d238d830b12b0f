"""One shard's users and their indexes: plain Python, testable without any process.

``by_id`` maps the 16 ID bytes to the immutable :class:`Record`. ``by_name`` maps a name to
its one ID (``bytes``); only a name that repeats widens to a tuple of IDs, and past
``_TUPLE_MAX`` to a set. A set per name would cost ~250 bytes per user; this costs ~30.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress, repeat
from operator import attrgetter, is_not
from typing import cast

import numpy as np

from pydbms_shard.codec import Record

from .id_index import IdIndex, as_rows

_TUPLE_MAX = 8
_ids = attrgetter("id")
_names = attrgetter("name")

IdGroup = bytes | tuple[bytes, ...] | set[bytes]


def _group_ids(group: IdGroup) -> Iterable[bytes]:
    return (group,) if isinstance(group, bytes) else group


class Partition:
    """A shard's users: every method is one batch, applied item by item in order."""

    __slots__ = ("by_id", "by_name", "ids")

    def __init__(self, records: list[Record] | None = None) -> None:
        self.by_id: dict[bytes, Record] = {}
        self.by_name: dict[str, IdGroup] = {}
        self.ids = IdIndex()  # the same IDs as by_id, for batch membership without Python objects
        if records:
            self._build(records)

    def _build(self, records: list[Record]) -> None:
        by_id = dict(zip(map(_ids, records), records))
        values = list(by_id.values())
        by_name = dict(zip(map(_names, values), map(_ids, values)))
        if len(by_name) != len(by_id):  # some names repeat: index them one by one
            by_name = {}
            for record in values:
                self._index(by_name, record.name, record.id)
        self.by_id, self.by_name = by_id, by_name
        self.ids = IdIndex(2 * len(by_id))
        self.ids.add_new(as_rows(b"".join(by_id)))

    def __len__(self) -> int:
        return len(self.by_id)

    # ---------------------------------------------------------- name index

    @staticmethod
    def _index(by_name: dict[str, IdGroup], name: str, id_: bytes) -> None:
        group = by_name.get(name)
        if group is None:
            by_name[name] = id_
        elif isinstance(group, bytes):
            by_name[name] = (group, id_)
        elif isinstance(group, tuple):
            by_name[name] = group + (id_,) if len(group) < _TUPLE_MAX else {*group, id_}
        else:
            group.add(id_)

    def _unindex(self, name: str, id_: bytes) -> None:
        group = self.by_name.get(name)
        if group is None:
            return
        if isinstance(group, bytes):
            if group == id_:
                del self.by_name[name]
        elif isinstance(group, tuple):
            rest = tuple(x for x in group if x != id_)
            self.by_name[name] = rest[0] if len(rest) == 1 else rest
        else:
            group.discard(id_)
            if len(group) == 1:
                self.by_name[name] = next(iter(group))

    # ---------------------------------------------------------- writes

    def add(self, records: list[Record]) -> int:
        """Insert each record whose ID is new; an ID already stored is skipped."""
        return len(self.add_ids(records))

    def add_ids(self, records: list[Record]) -> list[bytes]:
        """As ``add``; returns the IDs added (what undoing the batch must remove)."""
        by_id, by_name, index = self.by_id, self.by_name, self._index
        added = []
        for record in records:
            id_ = record.id
            if id_ in by_id:
                continue
            by_id[id_] = record
            name = record.name
            if name in by_name:
                index(by_name, name, id_)
            else:
                by_name[name] = id_
            added.append(id_)
        self.ids.add_new(as_rows(b"".join(added)))
        return added

    def upsert(self, records: list[Record]) -> int:
        """Insert or replace; returns how many were new. A replaced record leaves no trace."""
        return self.upsert_detailed(records)[0]

    def upsert_detailed(self, records: list[Record]) -> tuple[int, list[bytes]]:
        """Insert or replace; returns how many were new and the IDs that were replaced."""
        inserted, replaced = self.upsert_undoable(records)
        return len(inserted), [old.id for old in replaced]

    def upsert_undoable(self, records: list[Record]) -> tuple[list[bytes], list[Record]]:
        """Insert or replace; returns the IDs inserted and the records replaced, in order
        (what undoing the batch must remove and put back)."""
        by_id, by_name, index = self.by_id, self.by_name, self._index
        inserted: list[bytes] = []
        replaced: list[Record] = []
        for record in records:
            id_ = record.id
            old = by_id.get(id_)
            by_id[id_] = record
            if old is None:
                inserted.append(id_)
            else:
                replaced.append(old)
                if old.name == record.name:
                    continue  # the name index already holds this ID under this name
                self._unindex(old.name, id_)
            index(by_name, record.name, id_)
        self.ids.add_new(as_rows(b"".join(inserted)))
        return inserted, replaced

    def undo_upsert(self, inserted: list[bytes], replaced: list[Record]) -> None:
        """Put back the state before ``upsert_undoable`` returned (inserted, replaced)."""
        before: dict[bytes, Record | None] = dict.fromkeys(inserted)
        for old in replaced:
            before.setdefault(old.id, old)  # the first record replaced is the one from before
        self.remove([id_ for id_ in before], [])
        self.add([old for old in before.values() if old is not None])

    def remove(self, ids: list[bytes], names: list[str]) -> list[bytes]:
        """Remove by ID, then every user with each name; returns the IDs removed."""
        return [record.id for record in self.remove_records(ids, names)]

    def remove_records(self, ids: list[bytes], names: list[str]) -> list[Record]:
        """As ``remove``; returns the records removed (what undoing the batch must put back)."""
        by_id, by_name, removed = self.by_id, self.by_name, []
        for record in map(by_id.pop, ids, repeat(None)):
            if record is not None:
                id_, name = record.id, record.name
                if by_name.get(name) is id_:  # the name's only user: the common case
                    del by_name[name]
                else:
                    self._unindex(name, id_)
                removed.append(record)
        for group in map(by_name.pop, names, repeat(None)):
            if group is not None:
                if isinstance(group, bytes):
                    removed.append(by_id.pop(group))
                else:
                    for id_ in group:
                        removed.append(by_id.pop(id_))
        self.ids.discard(as_rows(b"".join([record.id for record in removed])))
        return removed

    def clear(self) -> None:
        self.by_id = {}
        self.by_name = {}
        self.ids = IdIndex()

    # ---------------------------------------------------------- reads

    def get(self, ids: list[bytes]) -> list[Record | None]:
        return list(map(self.by_id.get, ids))

    def contains(self, ids: list[bytes]) -> bytes:
        """One byte per ID: 1 when stored."""
        return self.contains_rows(as_rows(b"".join(ids))).tobytes()

    def contains_rows(self, keys: np.ndarray) -> np.ndarray:
        """A bool per ID, for IDs as ``(n, 2)`` u64 rows (see ``id_index.as_rows``)."""
        return self.ids.contains(keys)

    def names_present(self, names: list[str]) -> bytes:
        return bytes(map(self.by_name.__contains__, names))

    def find(self, ids: list[bytes], names: list[str]) -> tuple[list[int], list[Record]]:
        """Matches for ID queries then name queries, as (query number, record) pairs.

        Query numbers count the IDs first, then the names; they come out in increasing order.
        """
        by_id = self.by_id
        found = list(map(by_id.get, ids))
        hits = list(compress(range(len(ids)), map(is_not, found, repeat(None))))
        # compress() keeps only the found ones (not None), which mypy cannot follow
        records = cast("list[Record]", list(compress(found, map(is_not, found, repeat(None)))))
        if not names:
            return hits, records
        maybe_groups = list(map(self.by_name.get, names))
        present = list(map(is_not, maybe_groups, repeat(None)))
        name_hits = list(compress(range(len(ids), len(ids) + len(names)), present))
        groups = cast("list[IdGroup]", list(compress(maybe_groups, present)))  # the names present, as above
        if all(map(bytes.__instancecheck__, groups)):  # every name held by one user
            hits.extend(name_hits)
            records.extend(map(by_id.__getitem__, cast("list[bytes]", groups)))
            return hits, records
        for query, group in zip(name_hits, groups):
            for id_ in _group_ids(group):
                hits.append(query)
                records.append(by_id[id_])
        return hits, records

    def values(self) -> list[Record]:
        """A cut: records are immutable, so a list of references is a consistent snapshot."""
        return list(self.by_id.values())
