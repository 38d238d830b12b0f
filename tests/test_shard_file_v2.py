"""Shard file format v2 (columns): round trips, every kind of damage raising SnapshotError
naming the file, v1 <-> v2 interop through the old readers, verify, and a real load."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import msgspec
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydbms_shard import DataBase, SnapshotError
from pydbms_shard import snapshot as snap
from pydbms_shard.codec import Record
from pydbms_shard.shard_file_v2 import (
    BLOCK_CHECK,
    BLOCK_HEAD,
    BLOCK_MAGIC,
    SEGMENT,
    STORED,
    ZSTD,
    columns_to_records,
    concat_columns,
    iter_columns_file,
    read_columns_file,
    read_shard_columns,
    records_to_columns,
    write_columns_file,
)
from pydbms_shard.workers.columnar import Columns, empty_columns

NAMES = ["Zoë", "李小龙", "👩‍👩‍👧‍👦", "🏳️‍🌈 flag", "ǅemal", "a\tb", "", "x" * 1000, "e\u0301", "User1"]


def assert_same(a: Columns, b: Columns) -> None:
    assert a.rows == b.rows
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            assert np.array_equal(np.asarray(x, dtype=y.dtype).reshape(y.shape), y)
        else:
            assert bytes(x) == bytes(y)


def sample_records(n: int, seed: int = 1) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        extras = {"k": i, "tags": ["a", "🎉"], "nested": {"x": None}} if i % 7 == 0 else ({} if i % 11 == 0 else None)
        out.append(Record(NAMES[i % len(NAMES)] + str(i), int(rng.integers(0, 151)), rng.bytes(16), extras))
    return out


# ---------------------------------------------------------------- round trips

chars = st.characters(exclude_categories=["Cs"])  # UTF-8 has no lone surrogates
texts = st.text(alphabet=st.one_of(chars, st.sampled_from(["\u200d", "👩", "🏽", "é", "\u0301", "ß"])), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(chars, max_size=5) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(chars, max_size=4), inner, max_size=3),
    max_leaves=6,
)
records_st = st.lists(
    st.builds(
        Record,
        texts,
        st.integers(0, 150),
        st.binary(min_size=16, max_size=16),
        st.none() | st.none() | st.dictionaries(st.text(chars, max_size=6), json_values, max_size=3),
    ),
    max_size=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_st, block_rows=st.integers(1, 5), level=st.sampled_from([1, 3]))
def test_round_trip(records: list[Record], block_rows: int, level: int) -> None:
    cols = records_to_columns(records)
    assert columns_to_records(cols) == records
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.pdbs"
        reported: list[int] = []
        entry = write_columns_file(path, cols, 1, 3, level, 0o600, reported.append, block_rows=block_rows)
        assert entry.users == len(records) and entry.bytes == path.stat().st_size and entry.shard == 1
        assert reported == (list(range(block_rows, len(records), block_rows)) + [len(records)] if records else [0])
        assert_same(read_columns_file(path, entry), cols)
        assert_same(read_shard_columns(path, entry), cols)
        blocks = list(iter_columns_file(path, entry))
        assert [b.rows for b in blocks] == [min(block_rows, len(records) - s) for s in range(0, len(records), block_rows)]
        assert_same(concat_columns(blocks), cols)
        assert snap.read_shard_file(path, entry) == records  # older call sites still read v2
        assert [r for b in snap.iter_shard_file(path, entry) for r in b] == records


def test_columns_records_round_trip_with_the_record_model() -> None:
    records = sample_records(500)
    cols = records_to_columns(records)
    assert cols.ids.shape == (500, 16) and cols.ages.dtype == np.uint8 and cols.name_ends.dtype == np.uint64
    assert columns_to_records(cols) == records
    assert columns_to_records(empty_columns()) == [] and records_to_columns([]).rows == 0
    # an empty span is "no extras", {} is one byte: both survive
    assert [r.extras for r in columns_to_records(records_to_columns([Record("a", 1, bytes(16), {}), Record("b", 2, bytes(16))]))] == [
        {},
        None,
    ]
    with pytest.raises(ValueError):
        records_to_columns([Record("a", 1, bytes(15))])


def test_writer_refuses_inconsistent_columns_and_leaves_no_file(tmp_path: Path) -> None:
    good = records_to_columns(sample_records(5))
    bad = [
        good._replace(ages=np.array([1, 2, 3, 4, 151], dtype=np.uint8)),
        good._replace(name_ends=good.name_ends[::-1].copy()),
        good._replace(name_arena=good.name_arena + b"x"),
        good._replace(ids=good.ids[:4]),
    ]
    for i, cols in enumerate(bad):
        with pytest.raises(ValueError):
            write_columns_file(tmp_path / f"{i}.pdbs", cols, 0, 1, 1, 0o600)
        assert not (tmp_path / f"{i}.pdbs").exists()


def test_file_mode_and_incompressible_ids_stored_raw(tmp_path: Path) -> None:
    cols = records_to_columns(sample_records(20_000))
    entry = write_columns_file(tmp_path / "a.pdbs", cols, 0, 1, 1, 0o640)
    assert (tmp_path / "a.pdbs").stat().st_mode & 0o777 == 0o640
    data = (tmp_path / "a.pdbs").read_bytes()
    codecs = [SEGMENT.unpack_from(data, snap.HEADER.size + BLOCK_HEAD.size + i * SEGMENT.size)[1] for i in range(6)]
    assert codecs == [STORED, ZSTD, ZSTD, ZSTD, ZSTD, ZSTD]
    assert_same(read_columns_file(tmp_path / "a.pdbs", entry), cols)


# ---------------------------------------------------------------- damage


def readers(path: Path, entry: snap.ManifestFile | None) -> list[Callable[[], Any]]:
    return [
        lambda: read_columns_file(path, entry),
        lambda: list(iter_columns_file(path, entry)),
        lambda: read_shard_columns(path, entry),
        lambda: snap.read_shard_file(path, entry),
        lambda: list(snap.iter_shard_file(path, entry)),
    ]


def assert_refused(path: Path, entry: snap.ManifestFile | None, calls: list[Callable[[], Any]] | None = None) -> None:
    for call in calls or readers(path, entry):
        with pytest.raises(SnapshotError) as exc:
            call()
        assert str(path) in str(exc.value)


@pytest.fixture
def v2_file(tmp_path: Path) -> tuple[Path, snap.ManifestFile, bytes]:
    path = tmp_path / "a.pdbs"
    entry = write_columns_file(path, records_to_columns(sample_records(40)), 0, 1, 1, 0o600, block_rows=16)
    return path, entry, path.read_bytes()


def fix_crc(data: bytearray) -> bytes:
    """Make the whole-file checksum agree again, so only the inner checks can notice."""
    body_end = len(data) - snap.TRAILER.size
    data[body_end + 16 : body_end + 20] = zlib.crc32(bytes(data[:body_end])).to_bytes(4, "little")
    return bytes(data)


def test_truncation_anywhere(v2_file: tuple[Path, snap.ManifestFile, bytes]) -> None:
    path, entry, data = v2_file
    for keep in range(0, len(data), 3):
        path.write_bytes(data[:keep])
        assert_refused(path, entry)
        assert_refused(path, None, readers(path, None)[:3])


def test_flipped_byte_anywhere(v2_file: tuple[Path, snap.ManifestFile, bytes]) -> None:
    path, entry, data = v2_file
    for pos in range(len(data) - 4):  # the trailer's last 4 bytes are reserved and unread
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        path.write_bytes(bytes(damaged))
        assert_refused(path, None, readers(path, None)[:3])


@pytest.mark.slow
def test_flipped_byte_in_any_segment_with_the_file_checksum_recomputed(v2_file: tuple[Path, snap.ManifestFile, bytes]) -> None:
    """Block heads, descriptors and every segment (stored and zstd) have their own checks."""
    path, _entry, data = v2_file
    for pos in range(snap.HEADER.size, len(data) - snap.TRAILER.size):
        damaged = bytearray(data)
        damaged[pos] ^= 0x80 if pos % 2 else 0x01
        path.write_bytes(fix_crc(damaged))
        assert_refused(path, None)


def test_zero_length_missing_and_not_a_shard_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdbs"
    path.write_bytes(b"")
    assert_refused(path, None)
    assert_refused(tmp_path / "missing.pdbs", None)
    (tmp_path / "text.pdbs").write_bytes(b"hello there, not a snapshot at all " * 5)
    assert_refused(tmp_path / "text.pdbs", None)


def test_wrong_manifest_expectations(v2_file: tuple[Path, snap.ManifestFile, bytes]) -> None:
    path, entry, _data = v2_file
    for wrong in (
        msgspec.structs.replace(entry, bytes=entry.bytes + 1),
        msgspec.structs.replace(entry, crc32=f"{(int(entry.crc32, 16) + 1) & 0xFFFFFFFF:08x}"),
        msgspec.structs.replace(entry, users=entry.users + 1),
        msgspec.structs.replace(entry, users=entry.users - 1),
        msgspec.structs.replace(entry, shard=1),
    ):
        assert_refused(path, wrong)


def test_a_v1_file_reads_as_columns(tmp_path: Path) -> None:
    records = sample_records(300)
    entry = snap.write_shard_file(tmp_path / "v1.pdbs", records, 0, 1, 1, 0o600)
    cols = read_shard_columns(tmp_path / "v1.pdbs", entry)
    assert columns_to_records(cols) == records
    with pytest.raises(SnapshotError, match="version 1"):
        read_columns_file(tmp_path / "v1.pdbs", entry)
    v1_fixture = next((Path(__file__).parent / "fixtures" / "v1").glob("db.snap.*.s000.pdbs"))
    assert columns_to_records(read_shard_columns(v1_fixture)) == snap.read_shard_file(v1_fixture)


# ---------------------------------------------------------------- forged files (every checksum valid)


def segments_of(cols: Columns) -> list[bytes]:
    lens = [np.diff(e, prepend=np.uint64(0)).astype("<u4").tobytes() for e in (cols.name_ends, cols.extra_ends)]
    return [cols.ids.tobytes(), cols.ages.tobytes(), lens[0], cols.name_arena, lens[1], cols.extra_arena]


def block(
    raws: list[bytes], rows: int | None = None, *, stored: dict[int, bytes] | None = None, desc: dict[int, tuple[int, ...]] | None = None
) -> bytes:
    """A block with valid CRCs; ``stored`` replaces a segment's bytes (codec zstd), ``desc`` a
    whole descriptor."""
    rows = len(raws[1]) if rows is None else rows
    parts, descriptors = [], []
    for i, raw in enumerate(raws):
        body = (stored or {}).get(i, raw)
        codec = ZSTD if i in (stored or {}) else STORED
        default = (i, codec, 0, crc32c.crc32c(raw), crc32c.crc32c(body), 0, len(body), len(raw))
        descriptors.append(SEGMENT.pack(*(desc or {}).get(i, default)))
        parts.append(body)
    head = BLOCK_HEAD.pack(BLOCK_MAGIC, rows, 6) + b"".join(descriptors)
    return head + BLOCK_CHECK.pack(crc32c.crc32c(head), 0) + b"".join(parts)


def forge(path: Path, blocks: list[bytes], users: int) -> None:
    header = snap.HEADER.pack(snap.FILE_MAGIC, 2, snap.FLAG_ZSTD, 0, 1, 0, users)
    body = b"".join(blocks)
    path.write_bytes(header + body + snap.TRAILER.pack(snap.TRAILER_MAGIC, len(body), zlib.crc32(header + body)))


def test_forged_files_are_refused(tmp_path: Path) -> None:
    cols = records_to_columns(sample_records(8))
    raws = segments_of(cols)
    path = tmp_path / "forged.pdbs"
    forge(path, [block(raws)], 8)
    assert_same(read_columns_file(path), cols)  # the builder itself is right
    z = zstandard.ZstdCompressor()

    def with_raw(i: int, raw: bytes) -> list[bytes]:
        return [raw if j == i else r for j, r in enumerate(raws)]

    split = [bytes(32), bytes([1, 1]), np.array([1, 1], dtype="<u4").tobytes(), "é".encode(), bytes(8), b""]
    cases: dict[str, tuple[list[bytes], int]] = {
        "age 151": ([block(with_raw(1, bytes([151]) + raws[1][1:]))], 8),
        "bad utf-8": ([block(with_raw(3, b"\xff" + raws[3][1:]))], 8),
        "name starts mid-character": ([block(split)], 2),
        "extras not a map": ([block(with_raw(5, b"\x01" + raws[5][1:]))], 8),
        "name lengths do not add up": ([block(with_raw(3, raws[3] + b"x"))], 8),
        "more rows than users": ([block(raws)], 7),
        "fewer users than the header": ([block(raws)], 9),
        "no block at all": ([], 8),
        "zero rows": ([block(raws, rows=0)], 8),
        "ids too short": ([block(with_raw(0, raws[0][:-16]))], 8),
        "bytes after the last block": ([block(raws) + b"\0"], 8),
        "garbage zstd": ([block(raws, stored={3: b"\x28\xb5\x2f\xfd garbage"})], 8),
        "zstd of the wrong size": ([block(raws, stored={3: z.compress(raws[3] + b"!")})], 8),
        "bad codec": ([block(raws, desc={2: (2, 7, 0, crc32c.crc32c(raws[2]), crc32c.crc32c(raws[2]), 0, len(raws[2]), len(raws[2]))})], 8),
        "wrong column order": (
            [block(raws, desc={2: (4, 0, 0, crc32c.crc32c(raws[2]), crc32c.crc32c(raws[2]), 0, len(raws[2]), len(raws[2]))})],
            8,
        ),
        "stored beyond the file": (
            [block(raws, desc={5: (5, 0, 0, crc32c.crc32c(raws[5]), crc32c.crc32c(raws[5]), 0, 1 << 40, 1 << 40)})],
            8,
        ),
        "bad block magic": ([b"XXXX" + block(raws)[4:]], 8),
    }
    # a "bomb" claim: 2 rows of 4 GiB names each, a tiny frame; the reader streams, never allocates 8 GiB
    huge = np.array([0xFFFFFFFF, 0xFFFFFFFF], dtype="<u4").tobytes()
    two = segments_of(records_to_columns([Record("a", 1, bytes(16)), Record("b", 1, bytes(16))]))
    tiny = z.compress(b"ab")
    bomb_desc = (3, ZSTD, 0, 0, crc32c.crc32c(tiny), 0, len(tiny), 2 * 0xFFFFFFFF)
    cases["bomb"] = ([block([two[0], two[1], huge, two[3], two[4], two[5]], stored={3: z.compress(b"ab")}, desc={3: bomb_desc})], 2)
    for what, (blocks, users) in cases.items():
        forge(path, blocks, users)
        for call in readers(path, None):
            with pytest.raises(SnapshotError) as exc:
                call()
            assert str(path) in str(exc.value), what
    # extras that start like a map but are not one: columns take them (checked lazily), records refuse
    forge(path, [block(with_raw(5, b"\x81\xa1k" + raws[5][3:]))], 8)
    read_columns_file(path)
    assert_refused(path, None, readers(path, None)[3:])


# ---------------------------------------------------------------- whole snapshots


def v2_snapshot(folder: Path, records: list[Record], shards: int) -> Path:
    """A committed snapshot of v2 files, split as the routing would."""
    from pydbms_shard.routing import shard_of

    manifest_path = folder / "db.snap"
    generation, token = 1, snap.new_token()
    per_shard: list[list[Record]] = [[] for _ in range(shards)]
    for r in records:
        per_shard[shard_of(r.id, shards)].append(r)
    files = [
        write_columns_file(
            folder / snap.shard_file_name(manifest_path.name, generation, token, i), records_to_columns(rs), i, shards, 1, 0o600
        )
        for i, rs in enumerate(per_shard)
    ]
    snap.commit_manifest(manifest_path, snap.build_manifest(generation, shards, files), token, 0o600, 2)
    return manifest_path


def test_verify_and_pydbms_verify_on_v2(tmp_path: Path) -> None:
    path = v2_snapshot(tmp_path, sample_records(1000), 2)
    assert snap.verify_snapshot(path).users == 1000
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "pydbms_shard", "verify", str(path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    victim = tmp_path / snap.read_manifest(path).files[1].name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=victim.name):
        snap.verify_snapshot(path)
    result = subprocess.run(
        [sys.executable, "-m", "pydbms_shard", "verify", str(path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode != 0 and victim.name in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("shards", [2, 3])
def test_a_database_loads_a_v2_snapshot(tmp_path: Path, shards: int) -> None:
    """Workers still read records: same shard count (read_shard_file) and another (iter_shard_file)."""
    records = sample_records(600)
    path = v2_snapshot(tmp_path, records, 2)
    with DataBase(shards=shards, log=False) as db:
        db.load(path)
        got = sorted((u.ID.bytes, u.name, u.age, msgspec.json.encode(u.to_dict()["extras"])) for u in db)
    assert got == sorted((r.id, r.name, r.age, msgspec.json.encode(r.extras or {})) for r in records)


@pytest.mark.timeout(30)
def test_a_pipe_or_directory_in_place_of_a_shard_file_is_refused_without_blocking(tmp_path):
    for make in (os.mkfifo, os.mkdir):
        path = tmp_path / f"odd-{make.__name__}"
        make(path)
        for reader in (
            read_shard_columns,
            lambda p: list(iter_columns_file(p)),
            snap.read_shard_file,
            lambda p: list(snap.iter_shard_file(p)),
        ):
            with pytest.raises(SnapshotError):
                reader(path)
