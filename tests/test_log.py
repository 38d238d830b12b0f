"""The write-ahead log segments, driven directly (no worker processes).

Segments are built both by SegmentWriter and by hand from the documented struct layout, so a
format drift on either side fails. A torn tail must be dropped quietly; a bad record followed by
a valid one must raise LogDamagedError at the right byte and leave the file untouched; every
I/O error must fail the writer for good without retrying a failed fsync.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import tempfile
import time
from pathlib import Path

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydbms_shard.errors import LogDamagedError, LogError, LogWriteError
from workers import log
from workers.log import (
    SegmentName,
    SegmentWriter,
    list_segments,
    parse_segment_name,
    read_records,
    scan_segment,
    segment_name,
    truncate_segment,
)

CHAIN = "0123abcd"
MANIFEST = "users_db.json"


# ---------------------------------------------------------------- helpers


def raw_header(chain: str = CHAIN, base: int = 1, shard: int = 0, shards: int = 2, magic: bytes = b"PDBSLOG\0") -> bytes:
    head = struct.pack("<8sHHIIQ8s", magic, 1, 0, shard, shards, base, chain.encode())
    return head + struct.pack("<I", crc32c.crc32c(head))


def raw_record(seq: int, nonce: int = 7, touched: tuple[int, ...] = (0,), payload: bytes = b"x") -> bytes:
    body = struct.pack(f"<QIH{len(touched)}H", seq, nonce, len(touched), *touched) + payload
    return struct.pack("<II", len(body), crc32c.crc32c(body)) + body


def new_writer(directory: Path, fsync: str = "no", base: int = 1, **kw) -> SegmentWriter:
    path = directory / segment_name(MANIFEST, CHAIN, base, 0, 2)
    return SegmentWriter(path, chain=CHAIN, base=base, shard=0, shards=2, fsync=fsync, **kw)


def read_back(path: Path) -> list[tuple[int, int, tuple[int, ...], bytes]]:
    scan = scan_segment(path)
    assert not scan.torn
    payloads = list(read_records(path, [(r.start, r.end) for r in scan.records]))
    assert [seq for seq, _ in payloads] == [r.seq for r in scan.records]
    return [(r.seq, r.nonce, r.touched, p) for r, (_, p) in zip(scan.records, payloads)]


def write_file(tmp_path: Path, records: list[bytes], base: int = 1) -> tuple[Path, list[int]]:
    """A hand-built segment; returns the path and each record's start offset."""
    path = tmp_path / segment_name(MANIFEST, CHAIN, base, 0, 2)
    starts, pos = [], 40
    for rec in records:
        starts.append(pos)
        pos += len(rec)
    path.write_bytes(raw_header(base=base) + b"".join(records))
    return path, starts


def five_records(last_payload: bytes = b"last record payload") -> list[bytes]:
    return [
        raw_record(1, 11, (0,), b"alpha"),
        raw_record(2, 12, (0, 1), b""),
        raw_record(5, 13, (), b"gamma" * 7),
        raw_record(6, 14, (1, 0, 1), bytes(range(40))),
        raw_record(9, 15, (0,), last_payload),
    ]


# ---------------------------------------------------------------- format and round trip


def test_writer_bytes_match_the_documented_format(tmp_path):
    with new_writer(tmp_path, base=3) as w:
        assert w.append(3, 99, [0, 1], b"hello") == 40
        assert w.append(10, 5, [], memoryview(b"")) == 40 + len(raw_record(3, 99, (0, 1), b"hello"))
        path = w.path
    assert path.read_bytes() == raw_header(base=3) + raw_record(3, 99, (0, 1), b"hello") + raw_record(10, 5, (), b"")
    scan = scan_segment(path)
    assert (scan.shard, scan.shards, scan.base, scan.chain) == (0, 2, 3, CHAIN)
    assert (scan.good_end, scan.size, scan.torn) == (path.stat().st_size, path.stat().st_size, False)


def test_hand_built_segment_reads_back(tmp_path):
    path, starts = write_file(tmp_path, five_records())
    scan = scan_segment(path)
    assert [r.start for r in scan.records] == starts
    assert [r.seq for r in scan.records] == [1, 2, 5, 6, 9]
    assert scan.records[3].touched == (1, 0, 1)
    assert [p for _, p in read_records(path, [(r.start, r.end) for r in scan.records])][3] == bytes(range(40))


def test_writer_refuses_misuse_before_writing(tmp_path):
    with new_writer(tmp_path, base=5) as w:
        with pytest.raises(ValueError):
            w.append(4, 0, [], b"")  # below base
        w.append(5, 0, [], b"")
        with pytest.raises(ValueError):
            w.append(5, 0, [], b"")  # not increasing
        with pytest.raises(ValueError):
            w.append(6, 0, [70000], b"")  # not a u16
        assert w.failed is None and w.size == 40 + 22
    with pytest.raises(ValueError):
        new_writer(tmp_path / "x", fsync="sometimes")


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.integers(1, 2**20),  # gap to the previous seq
            st.integers(0, 2**32 - 1),
            st.lists(st.integers(0, 65535), max_size=5),
            st.binary(max_size=300),
        ),
        st.just(("undo",)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, base=st.integers(0, 2**40))
def test_random_appends_and_undos_match_a_model(ops, base):
    with tempfile.TemporaryDirectory() as tmp:
        model: list[tuple[int, tuple[int, int, tuple[int, ...], bytes]]] = []
        w = new_writer(Path(tmp), base=base)
        seq = base - 1
        for op in ops:
            if op[0] == "undo":
                if model:
                    offset, _ = model.pop()
                    w.undo(offset)
                continue
            _, gap, nonce, touched, payload = op
            seq += gap
            offset = w.append(seq, nonce, touched, payload)
            model.append((offset, (seq, nonce, tuple(touched), payload)))
            assert w.size == os.path.getsize(w.path)
        w.close()
        assert read_back(w.path) == [rec for _, rec in model]
        assert [r.start for r in scan_segment(w.path).records] == [off for off, _ in model]


# ---------------------------------------------------------------- torn tails


def test_every_cut_inside_the_last_record_is_a_torn_tail(tmp_path):
    records = five_records()
    path, starts = write_file(tmp_path, records)
    full = path.read_bytes()
    for cut in range(starts[-1] + 1, len(full)):
        path.write_bytes(full[:cut])
        scan = scan_segment(path)
        assert [r.seq for r in scan.records] == [1, 2, 5, 6], cut
        assert (scan.torn, scan.good_end, scan.size) == (True, starts[-1], cut)
    path.write_bytes(full[: starts[-1]])
    scan = scan_segment(path)
    assert (len(scan.records), scan.torn, scan.good_end) == (4, False, starts[-1])


@pytest.mark.parametrize("tail", ["zeros", "garbage", "bad-crc-last"])
def test_junk_after_the_last_good_record_is_torn(tmp_path, tail):
    rng = random.Random(1)
    path, starts = write_file(tmp_path, five_records())
    good = path.read_bytes()
    for size in (1, 7, 8, 21, 100, 4096, 65536):
        if tail == "zeros":
            data = good + bytes(size)
        elif tail == "garbage":
            data = good + rng.randbytes(size)
        else:  # the last record complete but its last byte wrong: torn too
            data = good[:-1] + bytes([good[-1] ^ 0xFF]) + bytes(size)
        path.write_bytes(data)
        scan = scan_segment(path)
        expect = 4 if tail == "bad-crc-last" else 5
        assert len(scan.records) == expect and scan.torn
        assert scan.good_end == (starts[-1] if expect == 4 else len(good))
        assert path.read_bytes() == data


def test_sequence_not_increasing_at_the_tail_is_torn_but_in_the_middle_is_damage(tmp_path):
    path, starts = write_file(tmp_path, [raw_record(1), raw_record(2), raw_record(2)])
    scan = scan_segment(path)
    assert [r.seq for r in scan.records] == [1, 2] and scan.torn
    path, starts = write_file(tmp_path, [raw_record(1), raw_record(2), raw_record(2), raw_record(3)])
    with pytest.raises(LogDamagedError) as info:
        scan_segment(path)
    assert info.value.offset == starts[2]
    path, starts = write_file(tmp_path, [raw_record(4), raw_record(5)], base=5)
    with pytest.raises(LogDamagedError) as info:  # below base, then a valid one
        scan_segment(path)
    assert info.value.offset == 40


def test_touched_count_past_the_body_is_a_bad_record(tmp_path):
    body = struct.pack("<QIH", 3, 0, 5) + b"\0\0"  # claims 5 shards, holds 1
    bad = struct.pack("<II", len(body), crc32c.crc32c(body)) + body
    path, starts = write_file(tmp_path, [raw_record(1), bad])
    assert [r.seq for r in scan_segment(path).records] == [1]
    path, starts = write_file(tmp_path, [raw_record(1), bad, raw_record(4)])
    with pytest.raises(LogDamagedError) as info:
        scan_segment(path)
    assert info.value.offset == starts[1]


# ---------------------------------------------------------------- damage


@pytest.mark.parametrize("pad", range(8))  # vary where the next record falls mod 8
@pytest.mark.parametrize("where", ["payload", "len0", "len1", "len2", "len3", "crc", "seq", "zeroed"])
def test_damage_in_a_middle_record_is_refused_and_file_untouched(tmp_path, where, pad):
    records = five_records()
    records[2] = raw_record(5, 13, (), b"g" * (30 + pad))
    path, starts = write_file(tmp_path, records)
    data = bytearray(path.read_bytes())
    o = starts[2]
    if where == "zeroed":
        data[o : starts[3]] = bytes(starts[3] - o)
    else:
        i = {"payload": o + 8 + 14 + 3, "crc": o + 5, "seq": o + 8}.get(where) or o + int(where[-1])
        data[i] ^= 0x80 if where == "len3" else 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LogDamagedError) as info:
        scan_segment(path)
    assert info.value.offset == o
    assert info.value.path == str(path) and "repair" in str(info.value)
    assert path.read_bytes() == bytes(data)


def test_damage_far_from_the_next_record_is_still_found(tmp_path):
    # the bad record's length points past EOF, the next valid one is many KiB away
    records = [raw_record(1), raw_record(2, payload=os.urandom(50_000)), raw_record(3)]
    path, starts = write_file(tmp_path, records)
    data = bytearray(path.read_bytes())
    data[starts[1] + 3] = 0x7F
    path.write_bytes(bytes(data))
    with pytest.raises(LogDamagedError) as info:
        scan_segment(path)
    assert info.value.offset == starts[1]


def test_read_records_rechecks_the_crc(tmp_path):
    path, starts = write_file(tmp_path, five_records())
    scan = scan_segment(path)
    data = bytearray(path.read_bytes())
    data[starts[3] + 30] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LogDamagedError) as info:
        list(read_records(path, [(r.start, r.end) for r in scan.records]))
    assert info.value.offset == starts[3]


# ---------------------------------------------------------------- header


def test_torn_header_at_creation_is_empty(tmp_path):
    header = raw_header()
    path = tmp_path / segment_name(MANIFEST, CHAIN, 1, 0, 2)
    for n in range(40):
        for content in (header[:n], bytes(n)):
            path.write_bytes(content)
            scan = scan_segment(path)
            assert (scan.records, scan.good_end, scan.size, scan.torn) == ([], 0, n, n > 0)
            assert (scan.chain, scan.base, scan.shard, scan.shards) == (CHAIN, 1, 0, 2)  # from the name
    path.write_bytes(bytes(40 + 100))
    scan = scan_segment(path)
    assert (scan.records, scan.good_end, scan.torn) == ([], 0, True)


def test_bad_header_is_damage(tmp_path):
    path = tmp_path / "seg"
    for data in (
        raw_header(magic=b"PDBSHARD"),
        raw_header()[:-1] + bytes([raw_header()[-1] ^ 1]),  # CRC
        raw_header()[:20] + b"\x02" + raw_header()[21:],  # base, under the CRC
        bytes(40) + raw_record(1),  # zeroed header with records after it
    ):
        path.write_bytes(data)
        with pytest.raises(LogDamagedError) as info:
            scan_segment(path)
        assert info.value.offset == 0 and path.read_bytes() == data
    path.write_bytes(raw_header())
    scan = scan_segment(path)
    assert (scan.records, scan.good_end, scan.torn) == ([], 40, False)


def test_non_regular_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(LogError, match="not a regular file"):
        scan_segment(fifo)  # and does not hang
    with pytest.raises(LogError, match="not a regular file"):
        scan_segment(tmp_path)


# ---------------------------------------------------------------- writer lifecycle


def test_create_is_exclusive_and_sets_the_mode(tmp_path):
    old = os.umask(0o077)
    try:
        w = new_writer(tmp_path, mode=0o640)
    finally:
        os.umask(old)
    assert (w.path.stat().st_mode & 0o777) == 0o640
    w.append(1, 0, [0], b"keep")
    w.close()
    before = w.path.read_bytes()
    with pytest.raises(LogWriteError):
        new_writer(tmp_path)
    assert w.path.read_bytes() == before


def test_reopen_truncates_the_torn_tail_and_appends(tmp_path):
    with new_writer(tmp_path) as w:
        for seq in (1, 2, 3):
            w.append(seq, seq, [0], b"r%d" % seq)
    with open(w.path, "ab") as f:
        f.write(raw_record(4)[:-3])
    scan = scan_segment(w.path)
    assert scan.torn
    with pytest.raises(LogError, match="header"):
        SegmentWriter(w.path, chain=CHAIN, base=1, shard=1, shards=2, fsync="no", append_at=scan.good_end)
    assert scan_segment(w.path).size == scan.size  # refused before touching it
    with SegmentWriter(w.path, chain=CHAIN, base=1, shard=0, shards=2, fsync="always", append_at=scan.good_end) as w2:
        assert w2.size == scan.good_end
        assert w2.append(4, 4, [1], b"r4") == scan.good_end
    assert [(s, p) for s, _, _, p in read_back(w.path)] == [(1, b"r1"), (2, b"r2"), (3, b"r3"), (4, b"r4")]


def test_truncate_segment(tmp_path):
    path, starts = write_file(tmp_path, five_records())
    truncate_segment(path, starts[3])
    scan = scan_segment(path)
    assert (len(scan.records), scan.torn, scan.size) == (3, False, starts[3])


# ---------------------------------------------------------------- fault injection


class Faults:
    """Counts calls to the real syscalls and fails the ones a test picks."""

    def __init__(self, monkeypatch):
        self.writes = self.fsyncs = 0
        self.fail_write: int | None = None  # errno for every write while set
        self.fail_fsync: int | None = None
        self.short = False
        monkeypatch.setattr(log, "_write", self.write)
        monkeypatch.setattr(log, "_fsync", self.fsync)

    def write(self, fd, data):
        self.writes += 1
        if self.fail_write is not None:
            raise OSError(self.fail_write, os.strerror(self.fail_write))
        if self.short and len(data) > 1:
            return os.write(fd, data[: len(data) // 2])
        return os.write(fd, data)

    def fsync(self, fd):
        self.fsyncs += 1
        if self.fail_fsync is not None:
            raise OSError(self.fail_fsync, os.strerror(self.fail_fsync))
        os.fsync(fd)


def test_enospc_fails_the_writer_and_keeps_acknowledged_records(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path, fsync="always")
    w.append(1, 1, [0], b"one")
    w.append(2, 2, [0], b"two")
    faults.fail_write = errno.ENOSPC
    with pytest.raises(LogWriteError, match="disk is full") as info:
        w.append(3, 3, [0], b"three")
    assert str(w.path) in str(info.value) and "disk is full" in w.failed
    faults.fail_write = None
    writes = faults.writes
    with pytest.raises(LogWriteError, match="failed earlier"):
        w.append(4, 4, [0], b"four")
    with pytest.raises(LogWriteError, match="failed earlier"):
        w.sync()
    assert faults.writes == writes
    w.close()
    assert [s for s, *_ in read_back(w.path)] == [1, 2]


def test_enospc_after_a_partial_write_is_truncated_back(tmp_path, monkeypatch):
    Faults(monkeypatch)  # the real fsync and ftruncate, counted
    w = new_writer(tmp_path)
    w.append(1, 1, [0], b"one")
    calls = []

    def half_then_full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log, "_write", half_then_full_disk)
    with pytest.raises(LogWriteError):
        w.append(2, 2, [0], b"x" * 100)
    assert len(calls) == 2
    w.close()
    scan = scan_segment(w.path)
    assert [r.seq for r in scan.records] == [1] and not scan.torn  # the 10 bytes are gone


def test_failed_truncate_back_leaves_a_torn_tail_that_scans_cleanly(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path)
    w.append(1, 1, [0], b"one")
    faults.short = True
    faults.fail_fsync = None

    def short_then_eio(fd, data):
        if len(data) > 20:
            return os.write(fd, data[:20])
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(log, "_write", short_then_eio)
    monkeypatch.setattr(log, "_ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "no")))
    with pytest.raises(LogWriteError, match="I/O error"):
        w.append(2, 2, [0], b"y" * 50)
    w.close()
    scan = scan_segment(w.path)
    assert [r.seq for r in scan.records] == [1] and scan.torn


def test_short_writes_still_make_whole_records(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    faults.short = True
    with new_writer(tmp_path, fsync="always") as w:
        for seq in range(1, 6):
            w.append(seq, seq, [seq % 2], bytes([seq]) * 37 * seq)
    assert faults.writes > 2 * 5  # really was split
    assert [(s, p) for s, _, _, p in read_back(w.path)] == [(s, bytes([s]) * 37 * s) for s in range(1, 6)]


def test_fsync_eio_under_always_is_not_retried(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path, fsync="always")
    w.append(1, 1, [0], b"one")
    faults.fail_fsync = errno.EIO
    before = faults.fsyncs
    with pytest.raises(LogWriteError, match="I/O error"):
        w.append(2, 2, [0], b"two")
    assert faults.fsyncs == before + 1
    for call in (lambda: w.append(3, 3, [], b""), w.sync, lambda: w.undo(40)):
        with pytest.raises(LogWriteError, match="failed earlier"):
            call()
    w.close()
    assert faults.fsyncs == before + 1  # close does not fsync a failed writer
    assert [s for s, *_ in read_back(w.path)] == [1]  # the unacknowledged record was cut off


def test_everysec_fsync_failure_fails_the_next_append_and_is_not_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(log, "_FLUSH_INTERVAL", 0.02)
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path, fsync="everysec")
    faults.fail_fsync = errno.EIO
    before = faults.fsyncs
    w.append(1, 1, [0], b"acknowledged")
    deadline = time.monotonic() + 5
    while w.failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.failed is not None and "I/O error" in w.failed
    time.sleep(0.1)  # several more intervals: the thread must have stopped
    assert faults.fsyncs == before + 1
    with pytest.raises(LogWriteError, match="failed earlier"):
        w.append(2, 2, [0], b"refused")
    w.close()
    assert faults.fsyncs == before + 1
    assert [s for s, *_ in read_back(w.path)] == [1]


def test_undo_on_a_read_only_file_system_fails_the_writer(tmp_path, monkeypatch):
    w = new_writer(tmp_path)
    start = w.append(1, 1, [0], b"one")
    monkeypatch.setattr(log, "_ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
    with pytest.raises(LogWriteError, match="read-only file system"):
        w.undo(start)
    assert w.failed is not None
    w.close()


# ---------------------------------------------------------------- fsync policies


def test_always_fsyncs_once_per_append(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path, fsync="always")
    before = faults.fsyncs
    for seq in range(1, 21):
        w.append(seq, 0, [], b"p")
    assert faults.fsyncs - before == 20 and w.fsyncs == 20
    w.undo(40)
    assert w.fsyncs == 21  # undo is durable whatever the policy
    w.close()
    assert faults.fsyncs - before == 21  # nothing dirty left


def test_no_policy_never_fsyncs_appends(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path, fsync="no")
    before = faults.fsyncs
    for seq in range(1, 51):
        w.append(seq, 0, [], b"p")
    time.sleep(0.05)
    assert faults.fsyncs == before and w.fsyncs == 0
    w.close(sync=False)
    assert faults.fsyncs == before


def test_everysec_batches_fsyncs(tmp_path, monkeypatch):
    faults = Faults(monkeypatch)
    w = new_writer(tmp_path, fsync="everysec")
    before = faults.fsyncs
    for seq in range(1, 101):
        w.append(seq, 0, [], b"p")
    w.close()
    assert 1 <= w.fsyncs <= 3 and faults.fsyncs - before == w.fsyncs  # close syncs what is dirty


def test_everysec_thread_fsyncs_only_when_dirty(tmp_path, monkeypatch):
    monkeypatch.setattr(log, "_FLUSH_INTERVAL", 0.02)
    w = new_writer(tmp_path, fsync="everysec")
    w.append(1, 0, [], b"p")
    deadline = time.monotonic() + 5
    while w.fsyncs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.fsyncs == 1  # by the thread: nobody called sync()
    time.sleep(0.1)
    assert w.fsyncs == 1  # not dirty: no more fsyncs
    w.close()
    assert w.fsyncs == 1


# ---------------------------------------------------------------- names


def test_segment_name_round_trip():
    for name in (SegmentName(CHAIN, 0, 0, 1), SegmentName("ffffffff", 123456789012345, 7, 1234)):
        file_name = segment_name(MANIFEST, *name)
        assert parse_segment_name(MANIFEST, file_name) == name
    assert segment_name(MANIFEST, CHAIN, 42, 1, 3) == "users_db.json.log-0123abcd-000000000042-s001of003"
    for other in (
        "users_db.json.log-0123abcd-000000000042-s1of003",
        "users_db.json.log-0123abcd-42-s001of003",
        "users_db.json.log-0123ABCD-000000000042-s001of003",
        "users_db.json.log-0123abcd-000000000042-s001of003.tmp",
        "usersXdb.json.log-0123abcd-000000000042-s001of003",
        "users_db.json.g00000001-0123abcd.s000.pdbs",
    ):
        assert parse_segment_name(MANIFEST, other) is None, other


def test_list_segments_sorts_and_ignores_other_files(tmp_path):
    names = [
        segment_name(MANIFEST, "bbbbbbbb", 1, 0, 2),
        segment_name(MANIFEST, "aaaaaaaa", 10, 1, 2),
        segment_name(MANIFEST, "aaaaaaaa", 10, 0, 2),
        segment_name(MANIFEST, "aaaaaaaa", 2, 1, 2),
    ]
    for name in names + [
        segment_name("other.json", "aaaaaaaa", 1, 0, 2),
        "users_db.json",
        "users_db.json.g00000001-aaaaaaaa.s000.pdbs",
        "notes.txt",
    ]:
        (tmp_path / name).write_bytes(b"")
    found = list_segments(tmp_path / MANIFEST)
    assert [p.name for p, _ in found] == [names[3], names[2], names[1], names[0]]
    assert found[0][1] == SegmentName("aaaaaaaa", 2, 1, 2)
    assert list_segments(tmp_path / "missing" / MANIFEST) == []
