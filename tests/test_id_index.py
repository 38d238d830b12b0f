"""The workers' numpy membership index against a plain set, and the packed-ID parser."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydbms_shard.codec import encode, unpack_id_rows
from pydbms_shard.workers.id_index import IdIndex, as_rows

# few distinct keys, so adds, removes and lookups keep colliding; some share a hi or lo half
halves = st.sampled_from([0, 1, 2**63, 2**64 - 1, 12345])
keys = st.tuples(halves, halves).map(lambda t: t[0].to_bytes(8, "big") + t[1].to_bytes(8, "big")) | st.binary(min_size=16, max_size=16)
ops = st.lists(st.tuples(st.sampled_from(["add", "discard", "check"]), st.lists(keys, max_size=40)), max_size=40)


def rows(items: list[bytes]) -> np.ndarray:
    return as_rows(b"".join(items))


@settings(max_examples=200, deadline=None)
@given(ops)
def test_index_matches_a_set(steps):
    index, model = IdIndex(), set()
    for op, items in steps:
        if op == "add":
            new = list(dict.fromkeys(k for k in items if k not in model))
            index.add_new(rows(new))
            model.update(new)
        elif op == "discard":
            index.discard(rows(items))
            model.difference_update(items)
        assert index.contains(rows(items)).tolist() == [k in model for k in items]
        assert len(index) == len(model)


def test_growth_keeps_every_key_and_drops_tombstones():
    index = IdIndex()
    first = [uuid.uuid4().bytes for _ in range(5000)]
    index.add_new(rows(first))
    index.discard(rows(first[:4000]))
    more = [uuid.uuid4().bytes for _ in range(20000)]  # forces rebuilds
    index.add_new(rows(more))
    assert index.contains(rows(first[4000:] + more)).all()
    assert not index.contains(rows(first[:4000])).any()
    assert len(index) == 21000 and index.used * 5 <= len(index.state) * 3


@pytest.mark.parametrize("n", [0, 1, 15, 16, 70000])
def test_unpack_id_rows_reads_every_msgpack_array_header(n):
    ids = [uuid.uuid4() for _ in range(n)]
    got = unpack_id_rows(encode(ids))
    assert [bytes(r) for r in got] == [u.bytes for u in ids]


@pytest.mark.parametrize("bad", [encode(["a"]), encode([b"short"]), encode({"a": 1}), b"", encode([uuid.uuid4()])[:-1]])
def test_unpack_id_rows_rejects_anything_else(bad):
    with pytest.raises(ValueError):
        unpack_id_rows(bad)
