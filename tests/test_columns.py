"""workers/columns.py: the columnar partition, against a plain dict model and the old Partition."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pydbms_shard.codec import Record, encode
from pydbms_shard.workers.columnar import Columns, empty_columns
from pydbms_shard.workers.columns import ColumnPartition, encode_names, hash_spans
from pydbms_shard.workers.id_index import as_rows
from pydbms_shard.workers.partition import Partition


class Eager(ColumnPartition):
    """Compacts as soon as a quarter of the rows are dead."""

    _COMPACT_MIN = 1


class Colliding(ColumnPartition):
    """Every name hashes to one of four values: lookups and grouping must compare bytes."""

    _COMPACT_MIN = 3
    _HASH_MASK = 3


def rid(k: int) -> bytes:
    return uuid.UUID(int=k + 1).bytes


def rec(k: int, name: str, age: int = 30, extras: Any = None) -> Record:
    return Record(name, age, rid(k), extras)


def to_columns(records: list[Record]) -> Columns:
    """A batch as columns, the way a snapshot file would hold it."""
    if not records:
        return empty_columns()
    names, ends = encode_names([r.name for r in records])
    packed = [b"" if r.extras is None else encode(r.extras) for r in records]
    return Columns(
        np.frombuffer(b"".join(r.id for r in records), dtype=np.uint8).reshape(-1, 16).copy(),
        np.array([r.age for r in records], dtype=np.uint8),
        ends.astype(np.uint64),
        names.tobytes(),
        np.cumsum([len(b) for b in packed]).astype(np.uint64),
        b"".join(packed),
    )


def same_columns(a: Columns, b: Columns) -> bool:
    return all((x == y) if isinstance(x, bytes) else (x.shape == y.shape and bool(np.array_equal(x, y))) for x, y in zip(a, b, strict=True))


NAMES = ["a", "b", "Ann", "é", "👩\u200d👩\u200d👧", "x" * 1000, "a" * 999 + "é", " ", "", "\x00"]
names_st = st.one_of(st.sampled_from(NAMES), st.text(max_size=4))
extras_st = st.one_of(st.none(), st.none(), st.dictionaries(st.text(max_size=3), st.integers(-5, 5) | st.text(max_size=3), max_size=2))
records_st = st.lists(
    st.builds(rec, st.integers(0, 24), names_st, st.integers(0, 150), extras_st),
    max_size=12,
)
ids_st = st.lists(st.integers(0, 30).map(rid), max_size=6)
query_names_st = st.lists(names_st, max_size=5)


# ------------------------------------------------------------------ the model


class Model:
    """id -> (name, age, extras, seq); seq is the order ColumnPartition documents (row order)."""

    def __init__(self) -> None:
        self.users: dict[bytes, tuple[str, int, Any, int]] = {}
        self.seq = 0

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def record(self, id_: bytes) -> Record:
        name, age, extras, _ = self.users[id_]
        return Record(name, age, id_, extras)

    def ordered(self) -> list[bytes]:
        return sorted(self.users, key=lambda i: self.users[i][3])

    def add(self, records: list[Record]) -> list[bytes]:
        added = []
        for r in records:
            if r.id not in self.users:
                self.users[r.id] = (r.name, r.age, r.extras, self._next())
                added.append(r.id)
        return added

    def upsert(self, records: list[Record]) -> tuple[list[bytes], list[Record]]:
        inserted, replaced = [], []
        current = {r.id: self.record(r.id) for r in records if r.id in self.users}
        for r in records:
            if r.id in current:
                replaced.append(current[r.id])
            else:
                inserted.append(r.id)
            current[r.id] = r
        final = {r.id: r for r in records}
        for id_ in dict.fromkeys(r.id for r in records):  # first occurrences, in order
            r = final[id_]
            before = self.users.get(id_)
            seq = before[3] if before is not None and before[0] == r.name else self._next()
            self.users[id_] = (r.name, r.age, r.extras, seq)
        return inserted, replaced

    def remove(self, ids: list[bytes], names: list[str]) -> list[Record]:
        removed = []
        for id_ in ids:
            if id_ in self.users:
                removed.append(self.record(id_))
                del self.users[id_]
        for name in names:
            for id_ in self.ordered():
                if self.users[id_][0] == name:
                    removed.append(self.record(id_))
                    del self.users[id_]
        return removed

    def find(self, ids: list[bytes], names: list[str]) -> tuple[list[int], list[Record]]:
        hits, records = [], []
        for q, id_ in enumerate(ids):
            if id_ in self.users:
                hits.append(q)
                records.append(self.record(id_))
        for q, name in enumerate(names, len(ids)):
            for id_ in self.ordered():
                if self.users[id_][0] == name:
                    hits.append(q)
                    records.append(self.record(id_))
        return hits, records


def by_query(hits: list[int], records: list[Record]) -> dict[int, Counter[Any]]:
    out: dict[int, Counter[Any]] = {}
    for q, r in zip(hits, records, strict=True):
        out.setdefault(q, Counter())[(r.id, r.name, r.age, encode(r.extras))] += 1
    return out


def check_against(p: ColumnPartition, model: Model, old: Partition | None) -> None:
    assert len(p) == len(model.users)
    ordered = model.ordered()
    assert p.values() == [model.record(i) for i in ordered]
    names = {u[0] for u in model.users.values()}
    assert p.name_count() == len(names)
    probe_ids = list(model.users) + [rid(k) for k in (26, 40)] + [b"short"]
    expected = [model.record(i) if i in model.users else None for i in probe_ids]
    assert p.get(probe_ids) == expected
    assert p.contains(probe_ids) == bytes(i in model.users for i in probe_ids)
    full = probe_ids[:-1]
    assert p.contains_rows(as_rows(b"".join(full))).tolist() == [i in model.users for i in full]
    probe_names = sorted(names) + ["missing", "a", "é"]
    assert p.names_present(probe_names) == bytes(n in names for n in probe_names)
    assert p.find(probe_ids, probe_names) == model.find(probe_ids, probe_names)
    cols = p.columns()
    assert cols.rows == len(model.users)
    if old is not None:
        assert len(old) == len(p) and len(old.by_name) == p.name_count()
        assert old.get(probe_ids) == p.get(probe_ids)
        assert old.names_present(probe_names) == p.names_present(probe_names)
        assert by_query(*old.find(probe_ids, probe_names)) == by_query(*p.find(probe_ids, probe_names))


class ColumnMachine(RuleBasedStateMachine):
    """Random batches against the model and the old Partition; every read checked after each."""

    cls: type[ColumnPartition] = Eager

    def __init__(self) -> None:
        super().__init__()
        self.p = self.cls()
        self.model = Model()
        self.old = Partition()
        self.undo: tuple[list[bytes], list[Record]] | None = None
        self.cleared: tuple[Any, ...] | None = None

    @initialize(records=records_st)
    def build(self, records: list[Record]) -> None:
        self.p = self.cls(records)
        self.model.upsert(records)
        self.old = Partition(records)

    def _wrote(self) -> None:
        self.undo = None
        self.cleared = None

    @rule(records=records_st)
    def add(self, records: list[Record]) -> None:
        self._wrote()
        expected = self.model.add(records)
        assert self.p.add_ids(records) == expected
        assert self.old.add_ids(records) == expected

    @rule(records=records_st)
    def add_columns(self, records: list[Record]) -> None:
        self._wrote()
        cols = to_columns(records)
        before = set(self.model.users)
        added = self.p.add_columns(cols)
        expected = self.model.add(records)
        self.old.add(records)
        assert [records[i].id for i in added.tolist()] == expected
        assert all(records[i].id not in before for i in added.tolist())

    @rule(records=records_st)
    def upsert(self, records: list[Record]) -> None:
        self._wrote()
        expected = self.model.upsert(records)
        got = self.p.upsert_undoable(records)
        assert got == expected
        assert self.old.upsert_undoable(records) == expected
        self.undo = got

    @precondition(lambda self: self.undo is not None)
    @rule()
    def undo_upsert(self) -> None:
        assert self.undo is not None
        inserted, replaced = self.undo
        self.p.undo_upsert(inserted, replaced)
        self.old.undo_upsert(inserted, replaced)
        before: dict[bytes, Record | None] = dict.fromkeys(inserted)
        for r in replaced:
            before.setdefault(r.id, r)
        self.model.remove(list(before), [])
        self.model.add([r for r in before.values() if r is not None])
        self._wrote()

    @rule(ids=ids_st, names=query_names_st, records=st.booleans())
    def remove(self, ids: list[bytes], names: list[str], records: bool) -> None:
        self._wrote()
        expected = self.model.remove(ids, names)
        if records:
            assert self.p.remove_records(ids, names) == expected
        else:
            assert self.p.remove(ids, names) == [r.id for r in expected]
        assert Counter(self.old.remove(ids, names)) == Counter(r.id for r in expected)

    @rule(data=st.data())
    def remove_most(self, data: st.DataObject) -> None:
        """Many removes at once: past the compaction threshold."""
        self._wrote()
        ids = [i for i in self.model.users if data.draw(st.integers(0, 3)) > 0]
        expected = self.model.remove(ids, [])
        assert self.p.remove(ids, []) == [r.id for r in expected]
        self.old.remove(ids, [])

    @rule()
    def clear(self) -> None:
        self._wrote()
        self.cleared = self.p.state()
        self.saved = (dict(self.model.users), self.old.by_id, self.old.by_name, self.old.ids)
        self.p.clear()
        self.old.clear()
        self.model.users = {}

    @precondition(lambda self: self.cleared is not None)
    @rule()
    def undo_clear(self) -> None:
        assert self.cleared is not None
        self.p.restore(self.cleared)
        self.model.users, self.old.by_id, self.old.by_name, self.old.ids = self.saved
        self._wrote()

    @rule()
    def round_trip(self) -> None:
        self._wrote()
        cols = self.p.columns()
        self.p = self.cls.from_columns(cols)
        assert same_columns(self.p.columns(), cols)

    @rule()
    def compact(self) -> None:
        self._wrote()
        self.p.compact()

    @invariant()
    def agrees(self) -> None:
        check_against(self.p, self.model, self.old)


class CollidingMachine(ColumnMachine):
    cls = Colliding


TestColumnMachine = ColumnMachine.TestCase
TestColumnMachine.settings = settings(max_examples=80, stateful_step_count=25, deadline=None)
TestCollidingMachine = CollidingMachine.TestCase
TestCollidingMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestColumnMachine.pytestmark = [pytest.mark.slow]  # the longest model runs: in the full suite, not the fast loop


# ------------------------------------------------------------------ properties and cases


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records_st, records_st, ids_st, query_names_st)
def test_from_columns_of_columns_is_the_same_partition(first, second, ids, names):
    p = Eager(first)
    p.upsert(second)
    p.remove(ids, names)
    q = ColumnPartition.from_columns(p.columns())
    assert q.values() == p.values()
    assert same_columns(q.columns(), p.columns())
    assert q.name_count() == p.name_count() and len(q) == len(p)
    probe = [r.id for r in first + second] + ids
    query = [r.name for r in first + second] + names
    assert q.find(probe, query) == p.find(probe, query)
    assert q.names_present(query) == p.names_present(query)


@given(st.lists(st.text(max_size=6), max_size=20))
def test_name_hash_is_the_same_from_str_and_from_an_arena(names):
    buf, ends = encode_names(names)
    one_by_one = [hash_spans(*encode_names([n]))[0] for n in names]
    assert hash_spans(buf, ends).tolist() == one_by_one
    assert len(set(one_by_one)) == len(set(names))


def test_many_users_share_names_grow_remove_and_compact():
    """Past the minimum sizes: tables grow, long name chains, default compaction."""
    records = [rec(k, "Alice" if k % 3 == 0 else f"User{k}", k % 151) for k in range(12000)]
    records[8] = rec(8, "Bob", 3, {"nested": {"a": [1, 2.5, None, True]}})
    p, old = ColumnPartition(), Partition()
    for start in range(0, len(records), 2500):
        assert p.add_ids(records[start : start + 2500]) == old.add_ids(records[start : start + 2500])
    assert len(p) == 12000 and p.name_count() == len(old.by_name)
    hits, found = p.find([], ["Alice", "Bob"])
    assert [r.id for r in found] == [rid(k) for k in range(0, 12000, 3)] + [rid(8)]
    assert found[-1].extras == {"nested": {"a": [1, 2.5, None, True]}}
    removed = p.remove([rid(k) for k in range(1, 12000, 3)], [])
    assert Counter(removed) == Counter(old.remove([rid(k) for k in range(1, 12000, 3)], []))
    assert p.nbytes() < 200 * len(p) + 100_000  # compaction ran: dead rows went
    assert Counter(p.remove([], ["Alice"])) == Counter(old.remove([], ["Alice"]))
    assert p.values() == list(old.by_id.values())
    assert p.get([rid(8)]) == [records[8]]
    assert p.find([], ["Alice"]) == ([], [])
    assert p.upsert([rec(2, "Carol", 1), rec(5, "User5", 9)]) == 0
    assert p.get([rid(2), rid(5)]) == [rec(2, "Carol", 1), rec(5, "User5", 9)]


def test_state_restore_undoes_clear_even_after_later_writes_to_the_new_state():
    p = ColumnPartition([rec(1, "a"), rec(2, "b", 5, {"x": 1})])
    before = p.state()
    p.clear()
    p.add([rec(3, "c")])
    p.restore(before)
    assert p.values() == [rec(1, "a"), rec(2, "b", 5, {"x": 1})]
    assert p.find([rid(3)], ["c", "b"]) == ([2], [rec(2, "b", 5, {"x": 1})])


def test_columns_is_a_cut_later_writes_do_not_change():
    p = ColumnPartition([rec(k, f"n{k % 4}", k, {"k": k} if k % 5 == 0 else None) for k in range(40)])
    cut = p.columns()
    copy = Columns(*(x.copy() if isinstance(x, np.ndarray) else x for x in cut))
    p.upsert([rec(k, "changed", 1) for k in range(0, 40, 2)])
    p.remove([], ["n1"])
    p.compact()
    assert same_columns(cut, copy)
    assert ColumnPartition.from_columns(cut).values() == [rec(k, f"n{k % 4}", k, {"k": k} if k % 5 == 0 else None) for k in range(40)]


def test_add_columns_skips_stored_and_repeated_ids():
    p = ColumnPartition([rec(1, "a")])
    batch = [rec(1, "x"), rec(2, "é"), rec(2, "y"), rec(3, "z", 9, {"e": []})]
    assert p.add_columns(to_columns(batch)).tolist() == [1, 3]
    assert p.values() == [rec(1, "a"), rec(2, "é"), rec(3, "z", 9, {"e": []})]
    assert p.add_columns(empty_columns()).tolist() == []


def test_from_columns_keeps_the_last_row_of_a_repeated_id():
    batch = [rec(1, "a", 1, {"x": 1}), rec(2, "b"), rec(1, "c", 3), rec(3, "é", 4, {"y": "z"})]
    p = ColumnPartition.from_columns(to_columns(batch))
    assert p.values() == batch[1:] == Partition(batch).get([rid(2), rid(1), rid(3)])
    assert p.find([], ["a", "c"]) == ([1], [rec(1, "c", 3)])


def test_bad_input():
    p = ColumnPartition()
    for bad in ([Record("a", 1, b"short")], [Record("a", 300, rid(1))]):
        try:
            p.add(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted a record the columns cannot hold")
    assert len(p) == 0 and p.get([b"short"]) == [None] and p.contains([b""]) == b"\x00"
    assert p.find([], []) == ([], []) and p.names_present([]) == b"" and p.remove([], []) == []
