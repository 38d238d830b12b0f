"""One shard's write-ahead log: append-only segment files, scanned back after a crash.

A segment ``users_db.json.log-<chain>-<base>-sNNNofNNN`` lives beside the manifest. Layout
(all integers little-endian)::

    header  40 bytes  magic "PDBSLOG\\0", u16 version, u16 flags, u32 shard, u32 shard count,
                      u64 base seq, 8 ASCII bytes chain token, u32 CRC-32C of the first 36 bytes
    record            u32 body length, u32 CRC-32C of the body, then the body:
                      u64 seq, u32 nonce, u16 n, n x u16 touched shards, payload (opaque)

A crash can only tear the end of a file, so a bad record with nothing valid after it is a torn
write and is dropped; a bad record followed by a valid one is damage and is refused.

Every syscall that changes the file goes through the module-level ``_write``, ``_fsync`` and
``_ftruncate`` so tests can inject ENOSPC, EIO, EROFS or short writes.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import crc32c
import numpy as np

from pydbms_shard.errors import LogDamagedError, LogError, LogWriteError, PydbmsValueError

_write = os.write
_fsync = os.fsync
_ftruncate = os.ftruncate

MAGIC = b"PDBSLOG\0"
VERSION = 1
HEADER = struct.Struct("<8sHHIIQ8sI")
HEADER_SIZE = HEADER.size  # 40
RECORD_HEAD = struct.Struct("<II")  # body length, CRC-32C of the body
BODY_HEAD = struct.Struct("<QIH")  # seq, nonce, touched count
MIN_BODY = BODY_HEAD.size  # 14
MAX_BODY = 1 << 30
_CHAIN = re.compile(r"[0-9a-f]{8}")
_SCAN_WORDS = 1 << 20  # numpy looks at 8 MiB of file per pass: bounded memory on huge files
_READ_BATCH = 8 << 20
_SEQ_WINDOW = 1 << 40
_FLUSH_INTERVAL = 1.0  # seconds between "everysec" fsyncs (tests shorten it)

FsyncPolicy = Literal["always", "everysec", "no"]


# ---------------------------------------------------------------- names


class SegmentName(NamedTuple):
    chain: str
    base: int
    shard: int
    shards: int


_NAME_TAIL = r"\.log-([0-9a-f]{8})-(\d{12,})-s(\d{3,})of(\d{3,})"


def segment_name(manifest_name: str, chain: str, base: int, shard: int, shards: int) -> str:
    return f"{manifest_name}.log-{chain}-{base:012d}-s{shard:03d}of{shards:03d}"


def _parse(pattern: str, file_name: str) -> SegmentName | None:
    match = re.fullmatch(pattern, file_name)
    if match is None:
        return None
    name = SegmentName(match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4)))
    # only the canonical spelling counts: "s0001of002" is some other file
    if not file_name.endswith(segment_name("", *name)):
        return None
    return name


def parse_segment_name(manifest_name: str, file_name: str) -> SegmentName | None:
    return _parse(re.escape(manifest_name) + _NAME_TAIL, file_name)


def list_segments(manifest_path: Path) -> list[tuple[Path, SegmentName]]:
    """The segments beside a manifest, oldest chain position first."""
    try:
        names = os.listdir(manifest_path.parent)
    except FileNotFoundError:
        return []
    found = []
    for file_name in names:
        parsed = parse_segment_name(manifest_path.name, file_name)
        if parsed is not None:
            found.append((manifest_path.parent / file_name, parsed))
    found.sort(key=lambda item: (item[1].chain, item[1].base, item[1].shards, item[1].shard))
    return found


# ---------------------------------------------------------------- errors


def describe_os_error(exc: OSError) -> str:
    known = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EIO: "I/O error",
        errno.EROFS: "read-only file system",
    }
    return known.get(exc.errno or 0) or exc.strerror or str(exc)


# ---------------------------------------------------------------- reading


class RecordInfo(NamedTuple):
    seq: int
    nonce: int
    touched: tuple[int, ...]
    start: int  # offset of the record's first byte
    end: int  # offset just past it


@dataclass(slots=True)
class SegmentScan:
    """What a segment holds. shard/shards/base/chain come from the header, or from the file
    name when the header itself is torn (None if the name does not say either)."""

    path: Path
    shard: int | None
    shards: int | None
    base: int | None
    chain: str | None
    records: list[RecordInfo] = field(default_factory=list)
    good_end: int = 0  # end of the last good record; 40 after a good header; 0 if it is torn
    size: int = 0
    torn: bool = False  # bytes after good_end are a torn write, dropped


def _open_regular(path: Path) -> int:
    """Open for reading without blocking on a FIFO, and refuse anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise LogError(f"{path}: cannot open the log segment ({describe_os_error(exc)})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LogError(f"{path}: the log segment is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(path: Path) -> bytearray:
    fd = _open_regular(path)
    try:
        buf = bytearray(os.fstat(fd).st_size)
        view, done = memoryview(buf), 0
        while done < len(buf):
            got = os.readv(fd, [view[done:]])
            if got == 0:  # shrank while we read: keep what is there
                break
            done += got
        view.release()
        del buf[done:]
        return buf
    except OSError as exc:
        raise LogError(f"{path}: cannot read the log segment ({describe_os_error(exc)})") from exc
    finally:
        os.close(fd)


def _check_record(data: memoryview, pos: int, last: int | None, base: int) -> RecordInfo | str:
    """The record at ``pos`` if it is valid and follows ``last`` (or base), else why not."""
    if len(data) - pos < RECORD_HEAD.size:
        return "a record header is cut short"
    length, crc = RECORD_HEAD.unpack_from(data, pos)
    if not MIN_BODY <= length <= MAX_BODY:
        return f"record length {length} is out of range"
    end = pos + RECORD_HEAD.size + length
    if end > len(data):
        return f"record length {length} runs past the end of the file"
    if crc32c.crc32c(data[pos + RECORD_HEAD.size : end]) != crc:
        return "record checksum mismatch"
    seq, nonce, n = BODY_HEAD.unpack_from(data, pos + RECORD_HEAD.size)
    if MIN_BODY + 2 * n > length:
        return f"record names {n} touched shards but its body is {length} bytes"
    if last is not None and seq <= last:
        return f"record sequence number {seq} does not follow {last}"
    if seq < base:
        return f"record sequence number {seq} is below the segment base {base}"
    touched = struct.unpack_from(f"<{n}H", data, pos + RECORD_HEAD.size + MIN_BODY)
    return RecordInfo(seq, nonce, touched, pos, end)


def _candidates(data: memoryview, start: int, floor: int) -> Iterator[int]:
    """Offsets >= start whose length field is sane and whose seq lies in (floor, floor + 2**40):
    the only places a valid record can start, found without a Python step per byte."""
    size = len(data)
    if floor + 1 >= 1 << 64:
        return
    lo = np.uint64(floor + 1)
    hi = np.uint64(min(floor + _SEQ_WINDOW, (1 << 64) - 1))
    for align in range(8):
        first = start + align
        words = (size - first) // 8 if size > first else 0
        for i0 in range(0, words - 1, _SCAN_WORDS):
            w = np.frombuffer(data, dtype="<u8", count=min(_SCAN_WORDS + 1, words - i0), offset=first + 8 * i0)
            length = w[:-1] & np.uint64(0xFFFFFFFF)
            seq = w[1:]
            hit = (length >= MIN_BODY) & (length <= MAX_BODY) & (seq >= lo) & (seq <= hi)
            for i in np.flatnonzero(hit).tolist():
                yield first + 8 * (i0 + i)


def _valid_after(data: memoryview, bad: int, last: int | None, base: int) -> int | None:
    """Where a valid record starts after the bad one at ``bad``, if anywhere."""

    def valid(p: int) -> bool:
        return isinstance(_check_record(data, p, last, base), RecordInfo)

    if len(data) - bad >= RECORD_HEAD.size:
        (length,) = struct.unpack_from("<I", data, bad)
        nxt: int = bad + RECORD_HEAD.size + length
        if MIN_BODY <= length <= MAX_BODY and nxt < len(data) and valid(nxt):
            return nxt
    floor = last if last is not None else base - 1
    return next((p for p in _candidates(data, bad + 1, floor) if valid(p)), None)


def _header_fields(path: Path, header: bytes) -> tuple[int, int, int, str]:
    magic, version, flags, shard, shards, base, chain, crc = HEADER.unpack(header)
    if magic != MAGIC:
        raise LogDamagedError(str(path), 0, "not a log segment header (bad magic)")
    if crc32c.crc32c(header[:36]) != crc:
        raise LogDamagedError(str(path), 0, "header checksum mismatch")
    if version != VERSION or flags != 0:
        raise LogError(f"{path}: log segment version {version} flags {flags} are not supported")
    token = chain.decode("ascii", "replace")
    if not _CHAIN.fullmatch(token):
        raise LogError(f"{path}: log segment chain token {chain!r} is not 8 hex digits")
    return shard, shards, base, token


def scan_segment(path: Path) -> SegmentScan:
    """Find every good record; drop a torn tail; refuse damage (LogDamagedError, file untouched)."""
    data = _read_all(path)
    size = len(data)
    if size < HEADER_SIZE or not any(data[:HEADER_SIZE]):
        # the header is fsynced before any record is written: data after a zeroed one is damage
        if data.count(0, HEADER_SIZE) != max(size - HEADER_SIZE, 0):
            raise LogDamagedError(str(path), 0, "zeroed header followed by data")
        named = _parse(r".*" + _NAME_TAIL, path.name)
        chain, base, shard, shards = named if named else (None, None, None, None)
        return SegmentScan(path, shard, shards, base, chain, [], 0, size, size > 0)
    shard, shards, base, chain = _header_fields(path, bytes(data[:HEADER_SIZE]))
    view = memoryview(data)
    records: list[RecordInfo] = []
    pos, last, torn = HEADER_SIZE, None, False
    while pos < size:
        rec = _check_record(view, pos, last, base)
        if isinstance(rec, str):
            later = _valid_after(view, pos, last, base)
            if later is not None:
                raise LogDamagedError(str(path), pos, f"{rec}; a valid record follows at byte {later}")
            torn = True
            break
        records.append(rec)
        pos, last = rec.end, rec.seq
    return SegmentScan(path, shard, shards, base, chain, records, pos, size, torn)


def _batches(extents: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """Contiguous runs of extents, ~8 MiB each, so a whole segment takes a few preads."""
    run: list[tuple[int, int]] = []
    for start, end in extents:
        if run and (start != run[-1][1] or end - run[0][0] > _READ_BATCH):
            yield run
            run = []
        run.append((start, end))
    if run:
        yield run


def read_records(path: Path, extents: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """(seq, payload) of each scanned record, re-checked: the file may have changed since."""
    fd = _open_regular(path)
    try:
        for run in _batches(extents):
            first, last = run[0][0], run[-1][1]
            try:
                buf = os.pread(fd, last - first, first)
            except OSError as exc:
                raise LogError(f"{path}: cannot read the log segment ({describe_os_error(exc)})") from exc
            if len(buf) != last - first:
                raise LogDamagedError(str(path), first + len(buf), "the file is shorter than when it was scanned")
            view = memoryview(buf)
            for start, end in run:
                rec = view[start - first : end - first]
                length, crc = RECORD_HEAD.unpack_from(rec) if len(rec) >= RECORD_HEAD.size + MIN_BODY else (-1, -1)
                if length != len(rec) - RECORD_HEAD.size or crc32c.crc32c(rec[RECORD_HEAD.size :]) != crc:
                    raise LogDamagedError(str(path), start, "record changed since the scan")
                seq, _nonce, n = BODY_HEAD.unpack_from(rec, RECORD_HEAD.size)
                yield seq, bytes(rec[RECORD_HEAD.size + MIN_BODY + 2 * n :])
    finally:
        os.close(fd)


def truncate_segment(path: Path, offset: int) -> None:
    """Cut a segment at ``offset`` durably (repair, or dropping a torn tail)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            _ftruncate(fd, offset)
            _fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LogWriteError(f"{path}: truncating the log segment failed ({describe_os_error(exc)})") from exc


# ---------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = _write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def encode_header(chain: str, base: int, shard: int, shards: int) -> bytes:
    head = HEADER.pack(MAGIC, VERSION, 0, shard, shards, base, chain.encode("ascii"), 0)[:36]
    return head + struct.pack("<I", crc32c.crc32c(head))


class SegmentWriter:
    """Appends records to one segment. After any I/O error the writer is failed for good:
    a failed fsync may have dropped pages, so it is never retried as if it had worked."""

    def __init__(
        self,
        path: Path,
        *,
        chain: str,
        base: int,
        shard: int,
        shards: int,
        fsync: FsyncPolicy,
        mode: int = 0o600,
        append_at: int | None = None,
    ) -> None:
        if fsync not in ("always", "everysec", "no"):
            raise PydbmsValueError(f"fsync policy must be 'always', 'everysec' or 'no', not {fsync!r}")
        if not _CHAIN.fullmatch(chain):
            raise PydbmsValueError(f"chain token must be 8 lowercase hex digits, not {chain!r}")
        self._path = Path(path)
        self._policy = fsync
        self._base = base
        self._chain = chain
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = False
        self._failed: str | None = None
        self._fsyncs = 0
        self._last_seq: int | None = None  # unknown after undo or reopen: then only base is checked
        header = encode_header(chain, base, shard, shards)
        if append_at is None:
            self._fd, self._size = self._create(header, mode), HEADER_SIZE
        else:
            self._fd, self._size = self._reopen(header, append_at), append_at

    def _create(self, header: bytes, mode: int) -> int:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise LogWriteError(f"{self._path}: creating the log segment failed ({describe_os_error(exc)})") from exc
        try:
            os.fchmod(fd, mode)  # the umask must not change what was configured
            _write_all(fd, header)
            _fsync(fd)
            _fsync_dir(self._path.parent)  # the file exists after a crash
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(self._path)
            except OSError:
                pass
            raise LogWriteError(f"{self._path}: creating the log segment failed ({describe_os_error(exc)})") from exc
        return fd

    def _reopen(self, header: bytes, append_at: int) -> int:
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise LogWriteError(f"{self._path}: opening the log segment failed ({describe_os_error(exc)})") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LogError(f"{self._path}: the log segment is not a regular file")
            if os.pread(fd, HEADER_SIZE, 0) != header:
                raise LogError(f"{self._path}: the segment header does not match the shard, base or chain expected")
            if not HEADER_SIZE <= append_at <= st.st_size:
                raise LogError(f"{self._path}: cannot append at byte {append_at} of a {st.st_size}-byte segment")
            _ftruncate(fd, append_at)  # drop a torn or rejected tail before writing after it
            _fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise LogWriteError(f"{self._path}: reopening the log segment failed ({describe_os_error(exc)})") from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ------------------------------------------------------------ state

    @property
    def path(self) -> Path:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    @property
    def chain(self) -> str:
        return self._chain

    @property
    def base(self) -> int:
        return self._base

    @property
    def failed(self) -> str | None:
        return self._failed

    @property
    def fsyncs(self) -> int:
        return self._fsyncs

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise LogWriteError(f"{self._path}: the log failed earlier ({self._failed}); no more writes are accepted")
        if self._fd < 0:
            raise LogError(f"{self._path}: the log segment is closed")

    def _fail(self, what: str, exc: OSError, truncate_to: int | None) -> LogWriteError:
        """Mark the writer failed (lock held) and build the error for the caller to raise."""
        self._failed = f"{what} failed: {describe_os_error(exc)}"
        if truncate_to is not None:
            try:  # best effort: the record was never acknowledged
                _ftruncate(self._fd, truncate_to)
            except OSError:
                pass
        return LogWriteError(f"{self._path}: {self._failed}")

    def _sync_locked(self) -> None:
        self._dirty = False
        _fsync(self._fd)
        self._fsyncs += 1

    # ------------------------------------------------------------ writes

    def append(self, seq: int, nonce: int, touched: Sequence[int], payload: bytes | memoryview) -> int:
        """Write one record (durably under "always"); return its start offset for undo()."""
        floor = self._last_seq if self._last_seq is not None else self._base - 1
        if seq <= floor:
            raise PydbmsValueError(f"{self._path}: log sequence number {seq} does not follow {floor}")
        n = len(touched)
        length = MIN_BODY + 2 * n + len(payload)
        if length > MAX_BODY:
            raise PydbmsValueError(f"{self._path}: a log record of {length} bytes is over the 1 GiB limit")
        try:
            body_head = struct.pack(f"<QIH{n}H", seq, nonce, n, *touched)
        except struct.error as exc:
            raise PydbmsValueError(f"{self._path}: bad log record fields ({exc})") from exc
        crc = crc32c.crc32c(payload, value=crc32c.crc32c(body_head))
        record = b"".join((RECORD_HEAD.pack(length, crc), body_head, payload))  # the one payload copy
        with self._lock:
            self._check_usable()
            start = self._size
            try:
                _write_all(self._fd, record)
                if self._policy == "always":
                    self._sync_locked()
                else:
                    self._dirty = True
            except OSError as exc:
                raise self._fail("appending to the log", exc, start) from exc
            self._size = start + len(record)
            self._last_seq = seq
        if self._policy == "everysec" and self._thread is None:
            self._start_flusher()
        return start

    def undo(self, offset: int) -> None:
        """Drop everything from ``offset`` on (a rolled-back call), durably whatever the policy."""
        with self._lock:
            self._check_usable()
            if not HEADER_SIZE <= offset <= self._size:
                raise PydbmsValueError(f"{self._path}: cannot undo to byte {offset} of {self._size}")
            try:
                _ftruncate(self._fd, offset)
                self._sync_locked()
            except OSError as exc:
                raise self._fail("undoing a log record", exc, None) from exc
            self._size = offset
            self._last_seq = None

    def sync(self) -> None:
        """fsync now if anything was written since the last one."""
        with self._lock:
            self._check_usable()
            if self._dirty:
                try:
                    self._sync_locked()
                except OSError as exc:
                    raise self._fail("fsync of the log", exc, None) from exc

    def close(self, sync: bool = True) -> None:
        """Stop the flusher, fsync if asked and dirty, close. A failed writer closes quietly."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._fd < 0:
                return
            try:
                if sync and self._dirty and self._failed is None:
                    try:
                        self._sync_locked()
                    except OSError as exc:
                        raise self._fail("fsync of the log", exc, None) from exc
                elif self._failed is not None:
                    try:  # best effort, and no fsync after a failed one: cut what a failed append left
                        _ftruncate(self._fd, self._size)
                    except OSError:
                        pass
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ everysec

    def _start_flusher(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._flush_loop, name=f"log-fsync {self._path.name}", daemon=True)
            self._thread.start()

    def _flush_loop(self) -> None:
        """Once a second, fsync if dirty. The first failure fails the writer and ends the thread."""
        while not self._stop.wait(_FLUSH_INTERVAL):
            with self._lock:
                if self._failed is not None or self._fd < 0:
                    return
                if not self._dirty:
                    continue
                try:
                    self._sync_locked()
                except OSError as exc:
                    self._fail("background fsync of the log", exc, None)
                    return
