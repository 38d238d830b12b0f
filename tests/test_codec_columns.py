"""Batches of new users travel as one binary block of columns: every user comes out as it went in,
and a block whose sizes do not add up is refused."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydbms_shard import User
from pydbms_shard.codec import Record, decode_records, encode, encode_ids, pack_columns, records_msgpack, unpack_columns, users_to_columns
from pydbms_shard.shard_file_v2 import columns_to_records, records_to_columns
from pydbms_shard.workers.columnar import take_rows

extras = st.none() | st.dictionaries(st.text(max_size=5), st.integers(-5, 5) | st.text(max_size=5) | st.none(), max_size=3)
users = st.lists(
    st.builds(User, st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20), st.integers(0, 150), st.uuids(), extras),
    max_size=40,
)


def _records(batch: list[User]) -> list[Record]:
    return [Record(u.name, u.age, u.ID.bytes, None if u._extras is None else dict(u.extras)) for u in batch]


@settings(max_examples=200, deadline=None)
@given(users, st.data())
def test_users_survive_columns_packing_and_a_subset(batch, data):
    rows = encode_ids([u.ID for u in batch]) if batch else None
    cols = users_to_columns(batch, rows) if rows is not None else None
    if cols is None:
        return
    back = columns_to_records(unpack_columns(pack_columns(cols)))
    assert back == _records(batch)
    keep = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
    subset = take_rows(cols, np.array(keep, dtype=bool))
    assert columns_to_records(unpack_columns(pack_columns(subset))) == [r for r, k in zip(_records(batch), keep) if k]


def test_a_block_whose_sizes_do_not_add_up_is_refused():
    batch = [User("Ada", 36, uuid.uuid4(), {"k": 1}), User("Zoë", 2)]
    block = pack_columns(users_to_columns(batch, encode_ids([u.ID for u in batch])))
    for bad in (block[:-1], block + b"x", block[:3], b"", b"\xff\xff\xff\xff" + block[4:]):
        with pytest.raises(ValueError):
            unpack_columns(bad)


records = st.lists(
    st.builds(
        Record,
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300),  # fixstr, str8 and str16 names
        st.integers(0, 150),  # fixint and uint8 ages
        st.binary(min_size=16, max_size=16),
        extras,
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(records)
def test_records_written_with_numpy_decode_as_msgspec_writes_them(batch):
    raw = bytes(records_msgpack(records_to_columns(batch)))
    assert decode_records(raw) == batch
    assert decode_records(raw) == decode_records(encode(batch))
