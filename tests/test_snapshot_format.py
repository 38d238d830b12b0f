"""The snapshot format on disk, driven directly (no worker processes).

Shard file: a 32-byte header (magic, version, flags, shard, shards, reserved, user count), one
zstd body of length-prefixed msgpack blocks, a 24-byte trailer (magic, body length, CRC-32).
Manifest: JSON naming each file with its user count, byte size and checksum. Every kind of
damage must surface as SnapshotError naming the file, never as garbage users or a crash.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
import zlib
from pathlib import Path

import msgspec
import pytest
import zstandard

from pydbms_shard import SnapshotError
from pydbms_shard.codec import Record
from pydbms_shard.snapshot import (
    build_manifest,
    commit_manifest,
    iter_shard_file,
    new_token,
    read_manifest,
    read_shard_file,
    shard_file_name,
    verify_snapshot,
    write_shard_file,
)

HEADER_SIZE = 32
TRAILER_SIZE = 24


def make_records(n: int, start: int = 0, extras: bool = True) -> list[Record]:
    out = []
    for i in range(start, start + n):
        ex = {"i": i, "tags": ["a", "ü"], "nested": {"f": 1.5, "none": None, "ok": True}} if extras and i % 3 == 0 else None
        out.append(Record(f"user-{i}-Zoë🎉", i % 151, uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 1) % (1 << 128)).bytes, ex))
    return out


def write(path: Path, records: list[Record], shard: int = 0, shards: int = 1, mode: int = 0o600):
    return write_shard_file(path, records, shard, shards, 1, mode)


def make_snapshot(directory: Path, per_shard: list[int], name: str = "users_db.json") -> tuple[Path, list[Record]]:
    """A committed snapshot written with the format module alone."""
    manifest_path = directory / name
    token = new_token()
    entries, everything, start = [], [], 0
    for shard, n in enumerate(per_shard):
        records = make_records(n, start)
        start += n
        everything.extend(records)
        path = directory / shard_file_name(name, 1, token, shard)
        entries.append(write_shard_file(path, records, shard, len(per_shard), 1, 0o600))
    commit_manifest(manifest_path, build_manifest(1, len(per_shard), entries), token, 0o600, 2)
    return manifest_path, everything


def shard_paths(manifest_path: Path) -> list[Path]:
    data = json.loads(manifest_path.read_bytes())
    return [manifest_path.parent / f["name"] for f in sorted(data["files"], key=lambda f: f["shard"])]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def rewrite_manifest(manifest_path: Path, change) -> None:
    data = json.loads(manifest_path.read_bytes())
    change(data)
    manifest_path.write_text(json.dumps(data))


def assert_names(exc: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(exc.value), f"the error does not name {path}: {exc.value}"


# ---------------------------------------------------------------- layout


def test_header_trailer_and_checksum_are_as_documented(tmp_path):
    records = make_records(10)
    path = tmp_path / "one.pdbs"
    entry = write(path, records, shard=2, shards=5)
    data = path.read_bytes()

    magic, version, flags, shard, shards, _reserved, users = struct.unpack("<8sHHIIIQ", data[:HEADER_SIZE])
    assert magic == b"PDBSHARD"
    assert version == 1
    assert flags & 1  # zstd
    assert (shard, shards, users) == (2, 5, 10)

    t_magic, body_len, crc = struct.unpack("<8sQI4x", data[-TRAILER_SIZE:])
    assert t_magic == b"PDBSEND\0"
    assert body_len == len(data) - HEADER_SIZE - TRAILER_SIZE
    assert crc == zlib.crc32(data[:-TRAILER_SIZE])

    assert entry.name == "one.pdbs"
    assert entry.shard == 2 and entry.users == 10
    assert entry.bytes == len(data)
    assert entry.crc32 == f"{crc:08x}"


def test_body_is_zstd_msgpack_never_pickle(tmp_path):
    records = make_records(7)
    path = tmp_path / "one.pdbs"
    write(path, records)
    data = path.read_bytes()
    assert data.startswith(b"PDBSHARD")
    body = zstandard.ZstdDecompressor().decompressobj().decompress(data[HEADER_SIZE:-TRAILER_SIZE])
    assert b"\x80\x04\x95" not in body and b"\x80\x05\x95" not in body  # pickle protocol 4/5 frames
    decoded = []
    pos = 0
    while pos < len(body):
        (length,) = struct.unpack_from("<I", body, pos)
        pos += 4
        decoded.extend(msgspec.msgpack.decode(body[pos : pos + length]))  # plain msgpack, no types needed
        pos += length
    assert len(decoded) == 7
    for raw, rec in zip(decoded, records):
        name, age, id_bytes, extras = raw
        assert isinstance(id_bytes, bytes) and len(id_bytes) == 16  # IDs as 16 raw bytes
        assert (name, age, id_bytes, extras) == (rec.name, rec.age, rec.id, rec.extras)


def test_manifest_is_json_with_every_documented_field(tmp_path):
    manifest_path, everything = make_snapshot(tmp_path, [3, 0, 5])
    raw = manifest_path.read_bytes()
    assert not raw.startswith(b"PDBSHARD")
    data = json.loads(raw)
    assert data["format"] == "pydbms-shard"
    assert data["version"] == 1
    assert data["generation"] == 1
    assert isinstance(data["created"], str) and data["created"]
    assert data["shards"] == 3
    assert isinstance(data["hash"], str) and data["hash"]
    assert data["users"] == len(everything) == 8
    assert [f["users"] for f in data["files"]] == [3, 0, 5]
    for f in data["files"]:
        on_disk = (tmp_path / f["name"]).read_bytes()
        assert f["bytes"] == len(on_disk)
        assert int(f["crc32"], 16) == zlib.crc32(on_disk[:-TRAILER_SIZE])
    manifest = read_manifest(manifest_path)
    assert manifest.users == 8 and manifest.shards == 3


@pytest.mark.parametrize("n", [0, 1, 1000, 70_000], ids=lambda n: f"{n}records")
def test_round_trip_read_and_iter(tmp_path, n):
    records = make_records(n)
    path = tmp_path / "s.pdbs"
    entry = write(path, records)
    assert read_shard_file(path) == records
    assert read_shard_file(path, entry) == records
    blocks = list(iter_shard_file(path, entry))
    assert [r for block in blocks for r in block] == records
    if n > 65_536:
        assert len(blocks) >= 2  # several blocks, streamed one by one


def test_verify_snapshot_accepts_a_good_snapshot(tmp_path):
    manifest_path, everything = make_snapshot(tmp_path, [10, 20])
    manifest = verify_snapshot(manifest_path)
    assert manifest.users == 30
    got = [r for p in shard_paths(manifest_path) for r in read_shard_file(p)]
    assert sorted(got, key=lambda r: r.id) == sorted(everything, key=lambda r: r.id)


def test_written_files_get_the_requested_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write(tmp_path / "a.pdbs", make_records(3), mode=0o640)
        write(tmp_path / "b.pdbs", make_records(3), mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a.pdbs").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.pdbs").stat().st_mode & 0o777 == 0o600


def test_write_refuses_to_overwrite_an_existing_file(tmp_path):
    path = tmp_path / "s.pdbs"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write(path, make_records(2))
    assert path.read_bytes() == b"precious"


# ---------------------------------------------------------------- damage to a shard file

READERS = {
    "read": lambda p, e: read_shard_file(p, e),
    "read-unchecked": lambda p, e: read_shard_file(p),
    "iter": lambda p, e: [r for b in iter_shard_file(p, e) for r in b],
    "iter-unchecked": lambda p, e: [r for b in iter_shard_file(p) for r in b],
}


@pytest.fixture(params=list(READERS), ids=list(READERS))
def reader(request):
    return READERS[request.param]


@pytest.fixture
def shard_file(tmp_path):
    path = tmp_path / "users.json.g00000001-0badcafe.s000.pdbs"
    entry = write(path, make_records(500))
    return path, entry


@pytest.mark.parametrize("where", ["body-start", "body-middle", "body-end", "header-count", "trailer-crc", "trailer-length"])
def test_flipped_byte_is_detected(shard_file, reader, where):
    path, entry = shard_file
    size = path.stat().st_size
    offset = {
        "body-start": HEADER_SIZE,
        "body-middle": (HEADER_SIZE + size - TRAILER_SIZE) // 2,
        "body-end": size - TRAILER_SIZE - 1,
        "header-count": 24,
        "trailer-crc": size - 8,
        "trailer-length": size - 16,
    }[where]
    flip(path, offset)
    with pytest.raises(SnapshotError) as exc:
        reader(path, entry)
    assert_names(exc, path)


def test_damaged_body_with_recomputed_crc_is_still_caught(shard_file, reader):
    """Even if the trailer CRC is made to match, the zstd frame's own checksum (or the
    manifest's CRC) catches a changed body: no wrong users come back."""
    path, entry = shard_file
    data = bytearray(path.read_bytes())
    data[(HEADER_SIZE + len(data) - TRAILER_SIZE) // 2] ^= 0x01
    body_end = len(data) - TRAILER_SIZE
    struct.pack_into("<I", data, body_end + 16, zlib.crc32(bytes(data[:body_end])))
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as exc:
        reader(path, entry)
    assert_names(exc, path)


@pytest.mark.parametrize("keep", [0, 10, HEADER_SIZE, HEADER_SIZE + 5, -TRAILER_SIZE, -1], ids=lambda k: f"keep{k}")
def test_truncated_file_is_detected(shard_file, reader, keep):
    path, entry = shard_file
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(SnapshotError) as exc:
        reader(path, entry)
    assert_names(exc, path)


def test_appended_garbage_is_detected(shard_file, reader):
    path, entry = shard_file
    with open(path, "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(SnapshotError) as exc:
        reader(path, entry)
    assert_names(exc, path)


def test_missing_file(tmp_path, reader):
    path = tmp_path / "gone.pdbs"
    with pytest.raises(SnapshotError) as exc:
        reader(path, None)
    assert_names(exc, path)
    assert "missing" in str(exc.value)


def test_bad_magic(shard_file, reader):
    path, entry = shard_file
    data = bytearray(path.read_bytes())
    data[:8] = b"PK\x03\x04xxxx"
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as exc:
        reader(path, entry)
    assert_names(exc, path)
    assert "magic" in str(exc.value) or "not a" in str(exc.value)


def test_not_a_snapshot_at_all(tmp_path, reader):
    path = tmp_path / "notes.pdbs"
    path.write_bytes(b"hello, this is just some text that is long enough to have a header and a trailer\n" * 3)
    with pytest.raises(SnapshotError) as exc:
        reader(path, None)
    assert_names(exc, path)


def test_future_format_version_in_shard_header(shard_file, reader):
    path, entry = shard_file
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 8, 2)
    body_end = len(data) - TRAILER_SIZE
    struct.pack_into("<I", data, body_end + 16, zlib.crc32(bytes(data[:body_end])))  # otherwise intact
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as exc:
        reader(path, None)
    assert_names(exc, path)
    assert "version 2" in str(exc.value)


def test_count_mismatch_with_manifest_entry(shard_file):
    path, entry = shard_file
    wrong = msgspec.structs.replace(entry, users=entry.users + 1)
    for read in (lambda: read_shard_file(path, wrong), lambda: list(iter_shard_file(path, wrong))):
        with pytest.raises(SnapshotError) as exc:
            read()
        assert_names(exc, path)


def test_crc_mismatch_with_manifest_entry(shard_file):
    path, entry = shard_file
    wrong = msgspec.structs.replace(entry, crc32="%08x" % ((int(entry.crc32, 16) + 1) & 0xFFFFFFFF))
    for read in (lambda: read_shard_file(path, wrong), lambda: list(iter_shard_file(path, wrong))):
        with pytest.raises(SnapshotError) as exc:
            read()
        assert_names(exc, path)


def test_header_count_lying_about_the_records_is_detected(tmp_path, reader):
    """A file whose header claims a different number of users than its body holds."""
    path = tmp_path / "lie.pdbs"
    write(path, make_records(20))
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, 24, 21)
    body_end = len(data) - TRAILER_SIZE
    struct.pack_into("<I", data, body_end + 16, zlib.crc32(bytes(data[:body_end])))
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as exc:
        reader(path, None)
    assert_names(exc, path)


# ---------------------------------------------------------------- whole snapshots and manifests


def test_verify_detects_damage_in_any_file(tmp_path):
    manifest_path, _ = make_snapshot(tmp_path, [50, 50, 50])
    victim = shard_paths(manifest_path)[2]
    flip(victim, HEADER_SIZE + 3)
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert_names(exc, victim)


def test_verify_detects_a_missing_file(tmp_path):
    manifest_path, _ = make_snapshot(tmp_path, [5, 5])
    victim = shard_paths(manifest_path)[1]
    victim.unlink()
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert_names(exc, victim)


def test_verify_detects_a_truncated_file(tmp_path):
    manifest_path, _ = make_snapshot(tmp_path, [5, 5])
    victim = shard_paths(manifest_path)[0]
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert_names(exc, victim)


def test_verify_detects_swapped_shard_files(tmp_path):
    """The manifest says shard 0 is in file A but file A's header says it holds shard 1:
    loading it as shard 0 would put users where lookups never find them."""
    manifest_path, _ = make_snapshot(tmp_path, [5, 7])

    def swap(data):
        a, b = data["files"]
        a["shard"], b["shard"] = b["shard"], a["shard"]

    rewrite_manifest(manifest_path, swap)
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert any(str(p) in str(exc.value) for p in shard_paths(manifest_path)) or str(manifest_path) in str(exc.value)


def test_missing_manifest(tmp_path):
    path = tmp_path / "nothing.json"
    for call in (read_manifest, verify_snapshot):
        with pytest.raises(SnapshotError) as exc:
            call(path)
        assert_names(exc, path)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\x00\x01\x02garbage", b"PDBSHARD" + b"\0" * 40, b"[1, 2, 3]", b'"just a string"', b"null"],
    ids=["empty", "cut-json", "binary", "a-shard-file", "json-list", "json-string", "json-null"],
)
def test_manifest_not_json_or_not_a_manifest(tmp_path, content):
    path = tmp_path / "users_db.json"
    path.write_bytes(content)
    with pytest.raises(SnapshotError) as exc:
        read_manifest(path)
    assert_names(exc, path)


def test_truncated_manifest(tmp_path):
    manifest_path, _ = make_snapshot(tmp_path, [5, 5])
    raw = manifest_path.read_bytes()
    manifest_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert_names(exc, manifest_path)


def test_future_format_version_in_manifest(tmp_path):
    manifest_path, _ = make_snapshot(tmp_path, [5, 5])
    rewrite_manifest(manifest_path, lambda d: d.update(version=2))
    with pytest.raises(SnapshotError) as exc:
        read_manifest(manifest_path)
    assert_names(exc, manifest_path)
    assert "version 2" in str(exc.value)


@pytest.mark.parametrize(
    "evil",
    ["../x", "../../etc/passwd", "/etc/passwd", "/tmp/x.pdbs", "sub/x.pdbs", "..", ".", "", "a\\..\\b", "x\0y"],
    ids=["dotdot", "dotdot2", "abs-etc", "abs-tmp", "subdir", "parent", "self", "empty", "backslash", "nul"],
)
def test_manifest_naming_a_file_outside_its_directory(tmp_path, evil):
    inner = tmp_path / "snap"
    inner.mkdir()
    manifest_path, _ = make_snapshot(inner, [5, 5])
    if evil == "../x":  # make the target exist and look valid, so only the name is wrong
        good = shard_paths(manifest_path)[0]
        (tmp_path / "x").write_bytes(good.read_bytes())

    def point_outside(data):
        data["files"][0]["name"] = evil

    rewrite_manifest(manifest_path, point_outside)
    for call in (read_manifest, verify_snapshot):
        with pytest.raises(SnapshotError) as exc:
            call(manifest_path)
        assert_names(exc, manifest_path)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(users=d["users"] + 1),
        lambda d: d["files"][0].update(users=d["files"][0]["users"] + 1),
        lambda d: d.update(shards=3),
        lambda d: d["files"].pop(),
        lambda d: d["files"][1].update(shard=0),
        lambda d: d["files"][1].update(shard=5),
        lambda d: d.update(users="10"),
        lambda d: d.pop("files"),
        lambda d: d.update(format="something-else"),
        lambda d: d.update(extra_key=1),
        lambda d: d.update(version=0),
    ],
    ids=[
        "total-too-high",
        "file-count-too-high",
        "shards-more-than-files",
        "file-missing-from-list",
        "duplicate-shard",
        "shard-out-of-range",
        "users-not-int",
        "no-files-key",
        "wrong-format-name",
        "unknown-key",
        "version-zero",
    ],
)
def test_manifest_counts_and_fields_must_add_up(tmp_path, change):
    manifest_path, _ = make_snapshot(tmp_path, [4, 6])
    rewrite_manifest(manifest_path, change)
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert_names(exc, manifest_path)


def test_manifest_bytes_or_crc_disagreeing_with_file(tmp_path):
    manifest_path, _ = make_snapshot(tmp_path, [4, 6])
    victim = shard_paths(manifest_path)[1]
    rewrite_manifest(manifest_path, lambda d: d["files"][1].update(bytes=d["files"][1]["bytes"] + 1))
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path)
    assert_names(exc, victim)

    other = tmp_path / "b"
    other.mkdir()
    manifest_path2, _ = make_snapshot(other, [4, 6])
    victim2 = shard_paths(manifest_path2)[0]
    rewrite_manifest(manifest_path2, lambda d: d["files"][0].update(crc32="00000000"))
    with pytest.raises(SnapshotError) as exc:
        verify_snapshot(manifest_path2)
    assert_names(exc, victim2)


def test_manifest_pointing_at_another_files_content(tmp_path):
    """Both files exist and are intact, but the manifest names the wrong one for an entry."""
    manifest_path, _ = make_snapshot(tmp_path, [4, 4])
    names = [p.name for p in shard_paths(manifest_path)]

    def cross(data):
        data["files"][0]["name"] = names[1]

    rewrite_manifest(manifest_path, cross)
    with pytest.raises(SnapshotError):
        verify_snapshot(manifest_path)


def test_commit_replaces_manifest_atomically_and_keeps_generations(tmp_path):
    path = tmp_path / "db.json"
    for generation in range(1, 5):
        token = new_token()
        f = tmp_path / shard_file_name(path.name, generation, token, 0)
        entry = write(f, make_records(generation))
        commit_manifest(path, build_manifest(generation, 1, [entry]), token, 0o600, 2)
        assert read_manifest(path).generation == generation
    shard_files = sorted(p.name for p in tmp_path.glob("db.json.g*.pdbs"))
    assert [n.split(".")[2][:9] for n in shard_files] == ["g00000003", "g00000004"]
    assert not list(tmp_path.glob(".*tmp"))
    assert verify_snapshot(path).users == 4
