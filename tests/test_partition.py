"""workers/partition.py: one shard's users and indexes, driven directly (no processes)."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydbms_shard.codec import Record
from pydbms_shard.workers.partition import Partition

TUPLE_MAX = 8  # widest tuple group before a name widens to a set


def rid(k: int) -> bytes:
    return uuid.UUID(int=k + 1).bytes


def rec(k: int, name: str, age: int = 30, extras=None) -> Record:
    return Record(name, age, rid(k), extras)


def group_ids(group) -> list[bytes]:
    return [group] if type(group) is bytes else list(group)


def check_invariants(p: Partition) -> None:
    """The name index is exactly the by-ID contents, in its compact form."""
    expected: dict[str, Counter] = {}
    for id_, record in p.by_id.items():
        assert record.id == id_
        expected.setdefault(record.name, Counter())[id_] += 1
    assert set(p.by_name) == set(expected), "a name indexed with no user (or a user's name missing)"
    for name, group in p.by_name.items():
        ids = group_ids(group)
        assert Counter(ids) == expected[name], f"index of {name!r} is {group!r}"
        if len(ids) == 1:
            assert type(group) is bytes, f"a single ID must be stored as bytes, got {type(group).__name__}"
        else:
            assert type(group) in (tuple, set)
        if type(group) is tuple:
            assert 2 <= len(group) <= TUPLE_MAX
    assert len(p) == len(p.by_id)


def names_of(records) -> list[str]:
    return [r.name for r in records]


# ------------------------------------------------------------------ add


def test_add_counts_and_skips_existing_ids():
    p = Partition()
    assert p.add([rec(1, "a"), rec(2, "b")]) == 2
    assert p.add([rec(1, "changed", 99), rec(3, "c")]) == 1
    assert p.by_id[rid(1)] == rec(1, "a")  # the stored one is kept
    assert "changed" not in p.by_name
    assert len(p) == 3
    check_invariants(p)


def test_add_same_id_twice_in_one_batch_keeps_the_first():
    p = Partition()
    assert p.add([rec(1, "first"), rec(1, "second")]) == 1
    assert p.get([rid(1)]) == [rec(1, "first")]
    assert set(p.by_name) == {"first"}
    check_invariants(p)


def test_add_empty_batch():
    p = Partition()
    assert p.add([]) == 0
    assert len(p) == 0 and p.by_name == {}


# ------------------------------------------------------------------ upsert


def test_upsert_inserts_and_counts_only_new():
    p = Partition([rec(1, "a")])
    assert p.upsert([rec(1, "a", 40), rec(2, "b")]) == 1
    assert p.get([rid(1), rid(2)]) == [rec(1, "a", 40), rec(2, "b")]
    check_invariants(p)


def test_upsert_with_a_new_name_leaves_no_trace_of_the_old_one():
    p = Partition([rec(1, "old")])
    assert p.upsert([rec(1, "new", 31, {"k": 1})]) == 0
    assert "old" not in p.by_name
    assert p.find([], ["old"]) == ([], [])
    assert p.find([], ["new"]) == ([0], [rec(1, "new", 31, {"k": 1})])
    assert p.names_present(["old", "new"]) == b"\x00\x01"
    assert p.remove([], ["old"]) == []
    assert len(p) == 1
    check_invariants(p)


@pytest.mark.parametrize("group_size", [2, 3, TUPLE_MAX, TUPLE_MAX + 1, TUPLE_MAX + 3])
def test_upsert_moving_one_user_out_of_a_shared_name(group_size):
    p = Partition([rec(k, "shared") for k in range(group_size)])
    p.upsert([rec(0, "moved")])
    assert sorted(group_ids(p.by_name["shared"])) == sorted(rid(k) for k in range(1, group_size))
    assert p.by_name["moved"] == rid(0)
    hits, records = p.find([], ["shared"])
    assert rid(0) not in [r.id for r in records] and len(records) == group_size - 1
    check_invariants(p)


def test_upsert_with_same_name_replaces_record_and_keeps_index():
    p = Partition([rec(1, "a"), rec(2, "a")])
    p.upsert([rec(1, "a", 77, {"x": [1]})])
    assert p.get([rid(1)]) == [rec(1, "a", 77, {"x": [1]})]
    assert sorted(group_ids(p.by_name["a"])) == sorted([rid(1), rid(2)])
    check_invariants(p)


def test_upsert_same_id_twice_in_one_batch_keeps_the_last():
    p = Partition([rec(1, "a")])
    assert p.upsert([rec(1, "b"), rec(1, "c", 5), rec(2, "x"), rec(2, "y")]) == 1
    assert p.get([rid(1), rid(2)]) == [rec(1, "c", 5), rec(2, "y")]
    assert set(p.by_name) == {"c", "y"}
    check_invariants(p)


# ------------------------------------------------------------------ remove


def test_remove_by_id_returns_removed_ids_and_ignores_missing():
    p = Partition([rec(1, "a"), rec(2, "b"), rec(3, "a")])
    assert p.remove([rid(1), rid(9), rid(1)], []) == [rid(1)]
    assert p.get([rid(1)]) == [None]
    assert p.by_name["a"] == rid(3)
    check_invariants(p)


def test_remove_by_name_removes_every_user_with_it():
    p = Partition([rec(1, "a"), rec(2, "b"), rec(3, "a"), rec(4, "a")])
    removed = p.remove([], ["a", "missing", "a"])
    assert sorted(removed) == sorted([rid(1), rid(3), rid(4)])
    assert len(p) == 1 and p.get([rid(2)]) == [rec(2, "b")]
    assert "a" not in p.by_name
    check_invariants(p)


def test_remove_by_id_and_name_of_the_same_user_counts_once():
    p = Partition([rec(1, "a"), rec(2, "a"), rec(3, "b")])
    removed = p.remove([rid(1), rid(3)], ["a", "b"])
    assert sorted(removed) == sorted([rid(1), rid(2), rid(3)])
    assert len(removed) == 3
    assert len(p) == 0 and p.by_name == {}


def test_remove_nothing():
    p = Partition([rec(1, "a")])
    assert p.remove([], []) == []
    assert p.remove([rid(5)], ["zz"]) == []
    assert len(p) == 1
    check_invariants(p)


# ------------------------------------------------------------------ widening and narrowing


def test_repeated_names_widen_bytes_tuple_set_and_narrow_back():
    p = Partition()
    n = TUPLE_MAX + 4
    for k in range(n):
        p.add([rec(k, "same")])
        group = p.by_name["same"]
        if k == 0:
            assert type(group) is bytes
        elif k + 1 <= TUPLE_MAX:
            assert type(group) is tuple and len(group) == k + 1
        else:
            assert type(group) is set and len(group) == k + 1
        check_invariants(p)
    for k in range(n - 1):
        assert p.remove([rid(k)], []) == [rid(k)]
        check_invariants(p)
        hits, records = p.find([], ["same"])
        assert sorted(r.id for r in records) == sorted(rid(j) for j in range(k + 1, n))
    assert p.by_name["same"] == rid(n - 1)
    assert p.remove([rid(n - 1)], []) == [rid(n - 1)]
    assert p.by_name == {} and len(p) == 0


def test_bulk_build_indexes_repeated_names():
    records = [rec(k, f"n{k % 3}") for k in range(30)] + [rec(100, "solo")]
    p = Partition(records)
    assert len(p) == 31
    check_invariants(p)
    assert p.by_name["solo"] == rid(100)
    for j in range(3):
        assert sorted(group_ids(p.by_name[f"n{j}"])) == sorted(rid(k) for k in range(j, 30, 3))


def test_bulk_build_with_duplicate_ids_keeps_one():
    p = Partition([rec(1, "a"), rec(1, "b"), rec(2, "c")])
    assert len(p) == 2
    check_invariants(p)


# ------------------------------------------------------------------ reads


def test_find_ids_then_names_with_increasing_query_numbers():
    p = Partition([rec(1, "a"), rec(2, "b"), rec(3, "a"), rec(4, "c")])
    hits, records = p.find([rid(2), rid(9), rid(1), rid(2)], ["zz", "a", "c", "a"])
    # query numbers: IDs 0..3, then names 4..7
    assert hits == sorted(hits)
    pairs = list(zip(hits, [r.id for r in records]))
    assert pairs[:3] == [(0, rid(2)), (2, rid(1)), (3, rid(2))]
    assert Counter(pairs[3:]) == Counter([(5, rid(1)), (5, rid(3)), (6, rid(4)), (7, rid(1)), (7, rid(3))])


def test_find_nothing():
    p = Partition([rec(1, "a")])
    assert p.find([], []) == ([], [])
    assert p.find([rid(5)], ["b"]) == ([], [])


def test_get_contains_names_present_values_clear():
    p = Partition([rec(1, "a"), rec(2, "b")])
    assert p.get([rid(2), rid(3), rid(1)]) == [rec(2, "b"), None, rec(1, "a")]
    assert p.contains([rid(1), rid(3), rid(2)]) == b"\x01\x00\x01"
    assert p.names_present(["b", "x", "a"]) == b"\x01\x00\x01"
    assert sorted(p.values(), key=lambda r: r.id) == [rec(1, "a"), rec(2, "b")]
    cut = p.values()
    p.add([rec(3, "c")])
    assert len(cut) == 2  # a cut does not see later changes
    p.clear()
    assert len(p) == 0 and p.by_name == {} and p.get([rid(1)]) == [None]
    assert p.contains([]) == b"" and p.names_present([]) == b""


# ------------------------------------------------------------------ random sequences against a model

NAMES = ["a", "b", "c"]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 14), st.sampled_from(NAMES)), max_size=6)),
        st.tuples(st.just("upsert"), st.lists(st.tuples(st.integers(0, 14), st.sampled_from(NAMES)), max_size=6)),
        st.tuples(
            st.just("remove"),
            st.tuples(st.lists(st.integers(0, 14), max_size=4), st.lists(st.sampled_from(NAMES + ["z"]), max_size=2)),
        ),
        st.tuples(st.just("clear"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_random_sequences_match_a_dict_model(sequence):
    p, model = Partition(), {}
    for step, (op, arg) in enumerate(sequence):
        if op == "add":
            records = [rec(k, name, step) for k, name in arg]
            new = {k for k, _ in arg if k not in model}
            assert p.add(records) == len(new)
            for k, name in arg:
                model.setdefault(k, rec(k, name, step))
        elif op == "upsert":
            records = [rec(k, name, step) for k, name in arg]
            new = {k for k, _ in arg if k not in model}
            assert p.upsert(records) == len(new)
            for k, name in arg:
                model[k] = rec(k, name, step)
        elif op == "remove":
            ids, names = arg
            gone = {k for k in ids if k in model} | {k for k, r in model.items() if r.name in names}
            removed = p.remove([rid(k) for k in ids], names)
            assert sorted(removed) == sorted(rid(k) for k in gone)
            for k in gone:
                del model[k]
        else:
            p.clear()
            model.clear()
        check_invariants(p)
        assert {r.id: r for r in p.values()} == {rid(k): r for k, r in model.items()}
        for name in NAMES:
            _, found = p.find([], [name])
            assert Counter(r.id for r in found) == Counter(rid(k) for k, r in model.items() if r.name == name)
