"""Routing: the stable ID -> shard hash, its numpy twin, and balance over realistic ID kinds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydbms_shard.routing import HASH_SCHEME, shard_of, shards_of, shards_of_joined, split_positions

N = 1_000_000
SHARD_COUNTS = [2, 3, 4, 5, 7, 8, 16, 32]
TOLERANCE = 0.03

# Pinned values: if the hash changes, every snapshot's routing changes with it, so this must
# break (and HASH_SCHEME must get a new name).
KNOWN = {
    "00000000-0000-0000-0000-000000000000": [0, 0, 0, 0, 0, 0],
    "ffffffff-ffff-ffff-ffff-ffffffffffff": [0, 2, 0, 5, 8, 88],
    "12345678-1234-5678-1234-567812345678": [1, 1, 1, 1, 13, 109],
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8": [1, 0, 1, 3, 1, 17],
    "2f1c8e4a-9b3d-4c5e-8f7a-1b2c3d4e5f60": [0, 2, 2, 3, 10, 170],
}
KNOWN_COUNTS = (2, 3, 4, 7, 16, 256)


def _as_array(id_bytes: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(id_bytes), dtype=np.uint8).reshape(-1, 16)


def _assert_balanced(ids: np.ndarray, label: str) -> None:
    assert ids.shape == (N, 16) and ids.dtype == np.uint8
    assert len(np.unique(ids.view("V16"))) == N, "the generated IDs must be distinct"
    for shards in SHARD_COUNTS:
        counts = np.bincount(shards_of(ids, shards), minlength=shards)
        assert counts.sum() == N
        expected = N / shards
        worst = np.abs(counts - expected).max() / expected
        assert worst <= TOLERANCE, f"{label}, {shards} shards: off by {worst:.2%} ({counts.tolist()})"


# ------------------------------------------------------------------ stable values


@pytest.mark.parametrize("text", sorted(KNOWN))
def test_known_values_are_stable(text):
    raw = uuid.UUID(text).bytes
    assert [shard_of(raw, n) for n in KNOWN_COUNTS] == KNOWN[text]
    for n, want in zip(KNOWN_COUNTS, KNOWN[text]):
        assert shards_of(_as_array([raw]), n).tolist() == [want]


def test_scheme_name_is_pinned_with_the_values():
    assert HASH_SCHEME == "mx64-v1"


def test_one_shard_is_always_zero():
    ids = _as_array([uuid.uuid4().bytes for _ in range(200)])
    assert shards_of(ids, 1).tolist() == [0] * 200
    assert {shard_of(bytes(row), 1) for row in ids} == {0}


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_same_in_another_process_with_another_hash_seed(hash_seed):
    code = (
        "import json, uuid, sys\n"
        "from pydbms_shard.routing import shard_of\n"
        f"ids = {sorted(KNOWN)!r}\n"
        f"print(json.dumps({{t: [shard_of(uuid.UUID(t).bytes, n) for n in {KNOWN_COUNTS!r}] for t in ids}}))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == KNOWN


# ------------------------------------------------------------------ scalar == vector


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=50), st.integers(min_value=1, max_value=300))
def test_scalar_equals_numpy(id_bytes, shards):
    vector = shards_of(_as_array(id_bytes), shards)
    assert vector.tolist() == [shard_of(raw, shards) for raw in id_bytes]
    assert all(0 <= s < shards for s in vector.tolist())
    assert shards_of_joined(b"".join(id_bytes), shards).tolist() == vector.tolist()


def test_scalar_equals_numpy_for_many_random_uuids():
    ids = [uuid.uuid4().bytes for _ in range(3000)]
    array = _as_array(ids)
    for shards in (2, 3, 5, 8, 13, 64, 256):
        assert shards_of(array, shards).tolist() == [shard_of(raw, shards) for raw in ids]


def test_numpy_accepts_a_strided_view():
    """The coordinator routes views into encoded rows (``rows[:, 2:]``), which are not contiguous."""
    ids = [uuid.uuid4().bytes for _ in range(500)]
    rows = np.zeros((500, 18), dtype=np.uint8)
    rows[:, 0], rows[:, 1] = 0xC4, 0x10
    rows[:, 2:] = _as_array(ids)
    view = rows[:, 2:]
    assert not view.flags["C_CONTIGUOUS"]
    assert shards_of(view, 7).tolist() == [shard_of(raw, 7) for raw in ids]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), max_size=60), st.integers(min_value=1, max_value=6))
def test_split_positions_partitions_the_batch_in_order(raw_shards, shards):
    shard_of_item = np.array([s % shards for s in raw_shards], dtype=np.intp)
    parts = split_positions(shard_of_item, shards)
    assert len(parts) == shards
    seen = []
    for s, positions in enumerate(parts):
        positions = positions.tolist()
        assert positions == sorted(positions)
        assert all(shard_of_item[p] == s for p in positions)
        seen.extend(positions)
    assert sorted(seen) == list(range(len(raw_shards)))


# ------------------------------------------------------------------ balance over 1M IDs


def test_balanced_for_uuid4():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 256, (N, 16), dtype=np.uint8)
    ids[:, 6] = (ids[:, 6] & 0x0F) | 0x40
    ids[:, 8] = (ids[:, 8] & 0x3F) | 0x80
    check = uuid.UUID(bytes=bytes(ids[0]))
    assert check.version == 4 and check.variant == uuid.RFC_4122
    _assert_balanced(ids, "uuid4")


def _uuid1_array(timestamps: np.ndarray, clock_seq: int, node: int) -> np.ndarray:
    """uuid1 bytes for 60-bit timestamps, all with one clock sequence and one node."""
    ts = timestamps.astype(np.uint64)
    ids = np.empty((len(ts), 16), dtype=np.uint8)
    time_low = (ts & np.uint64(0xFFFFFFFF)).astype(">u4")
    time_mid = ((ts >> np.uint64(32)) & np.uint64(0xFFFF)).astype(">u2")
    time_hi = (((ts >> np.uint64(48)) & np.uint64(0x0FFF)) | np.uint64(0x1000)).astype(">u2")
    ids[:, 0:4] = time_low.view(np.uint8).reshape(-1, 4)
    ids[:, 4:6] = time_mid.view(np.uint8).reshape(-1, 2)
    ids[:, 6:8] = time_hi.view(np.uint8).reshape(-1, 2)
    ids[:, 8] = 0x80 | ((clock_seq >> 8) & 0x3F)
    ids[:, 9] = clock_seq & 0xFF
    ids[:, 10:16] = np.frombuffer(node.to_bytes(6, "big"), dtype=np.uint8)
    return ids


@pytest.mark.parametrize("step", [1, 10, 9973], ids=["consecutive-100ns", "every-1us", "sparse"])
def test_balanced_for_uuid1_sharing_one_node(step):
    node, clock_seq = 0x0242AC110002, 0x1234
    base = uuid.uuid1(node=node, clock_seq=clock_seq).time
    ids = _uuid1_array(base + np.arange(N, dtype=np.uint64) * np.uint64(step), clock_seq, node)
    for k in (0, 1, N - 1):  # the numpy layout is exactly the standard library's
        expected = uuid.UUID(
            fields=(
                (base + k * step) & 0xFFFFFFFF,
                ((base + k * step) >> 32) & 0xFFFF,
                (((base + k * step) >> 48) & 0x0FFF) | 0x1000,
                0x80 | (clock_seq >> 8),
                clock_seq & 0xFF,
                node,
            )
        )
        assert bytes(ids[k]) == expected.bytes and expected.version == 1
    _assert_balanced(ids, f"uuid1 step {step}")


def test_balanced_for_real_uuid1_from_one_node():
    n = 200_000
    ids = _as_array([uuid.uuid1(node=0x0242AC110002, clock_seq=77).bytes for _ in range(n)])
    for shards in (2, 3, 4, 8):
        counts = np.bincount(shards_of(ids, shards), minlength=shards)
        assert np.abs(counts - n / shards).max() <= TOLERANCE * n / shards, counts.tolist()


def _uuid7_array(ms: np.ndarray, rng: np.random.Generator, counter: bool) -> np.ndarray:
    """uuid7 bytes: 48-bit ms timestamp, version 7, 12 bits of rand_a (or a per-ms counter), variant, 62 random bits."""
    n = len(ms)
    ids = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    ts = ms.astype(">u8").view(np.uint8).reshape(n, 8)
    ids[:, 0:6] = ts[:, 2:8]
    if counter:
        # monotonic counter within each millisecond in rand_a (RFC 9562, method 1)
        starts = np.r_[0, np.flatnonzero(np.diff(ms)) + 1]
        seq = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        ids[:, 6] = 0x70 | ((seq >> 8) & 0x0F)
        ids[:, 7] = seq & 0xFF
    else:
        ids[:, 6] = (ids[:, 6] & 0x0F) | 0x70
    ids[:, 8] = (ids[:, 8] & 0x3F) | 0x80
    return ids


@pytest.mark.parametrize("per_ms, counter", [(1, False), (1000, False), (1000, True)], ids=["one-per-ms", "1000-per-ms", "counter"])
def test_balanced_for_uuid7(per_ms, counter):
    rng = np.random.default_rng(7)
    base_ms = 1_700_000_000_000
    ms = base_ms + np.arange(N, dtype=np.uint64) // np.uint64(per_ms)
    ids = _uuid7_array(ms, rng, counter)
    first = uuid.UUID(bytes=bytes(ids[0]))
    assert first.version == 7 and first.variant == uuid.RFC_4122
    assert int.from_bytes(bytes(ids[0][:6]), "big") == base_ms
    assert int.from_bytes(bytes(ids[-1][:6]), "big") == base_ms + (N - 1) // per_ms
    _assert_balanced(ids, f"uuid7 {per_ms}/ms counter={counter}")
