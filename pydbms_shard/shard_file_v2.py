"""Shard file format v2: a shard's users as columns, so a columnar partition saves and loads
without building a Python object per user.

Same header and trailer as v1 (see :mod:`pydbms_shard.snapshot`; the header says version 2), so
one header parser, the manifest, commit and backup code serve both. The body is a sequence of
blocks of at most ``BLOCK_ROWS`` users (a huge shard streams, and progress is reported per
block), each self-contained (integers little-endian)::

    block head   12 bytes  magic "BLK2", u32 rows (1..2^24), u32 segment count (6)
                 6 x 32    per segment: u8 column, u8 codec (0 stored, 1 zstd), u16 reserved (0),
                           u32 CRC-32C of the raw bytes, u32 CRC-32C of the stored bytes,
                           u32 reserved (0), u64 stored length, u64 raw length
                 8 bytes   u32 CRC-32C of the 204 bytes above, u32 reserved (0)
    segments               the stored bytes of each segment, in column order:
                 0 ids         rows x 16 bytes
                 1 ages        rows x u8 (0-150)
                 2 name_lens   rows x u32: UTF-8 byte length of each name
                 3 names       the names back to back (sum of name_lens bytes)
                 4 extra_lens  rows x u32: byte length of each user's extras (0: none)
                 5 extras      msgpack maps back to back (sum of extra_lens bytes)

Lengths rather than end offsets: relative to the block by construction, and zstd shrinks them
to almost nothing (1M ``User%d`` names: 400 bytes against 1.1 MB for u64 ends, 50x faster).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, Final

import crc32c
import msgspec
import numpy as np
import zstandard

from .codec import Record, build_columns, gc_paused
from .errors import SnapshotError
from .snapshot import (
    FILE_MAGIC,
    FILE_VERSION_COLUMNS,
    FLAG_ZSTD,
    HEADER,
    TRAILER,
    TRAILER_MAGIC,
    ManifestFile,
    ShardHeader,
    _check_header,
    _check_size,
    _check_trailer,
    _read_whole,
    check_whole_file,
    created_durably,
    iter_shard_file,
    open_shard_file,
    read_shard_file,
)
from .workers.columnar import Columns, empty_columns

BLOCK_ROWS: Final = 1 << 17  # users per block the writer puts: progress reports, and bounded buffers (tests pass smaller)
MAX_BLOCK_ROWS: Final = 1 << 24  # the most a reader accepts: bounds what one block may allocate
ZSTD_THREADS: Final = 0  # zstd worker threads per segment; 0 measured best (one worker process per shard already)
MAX_AGE: Final = 150

BLOCK_MAGIC: Final = b"BLK2"
BLOCK_HEAD = struct.Struct("<4sII")
SEGMENT = struct.Struct("<BBHIIIQQ")
BLOCK_CHECK = struct.Struct("<II")
IDS, AGES, NAME_LENS, NAMES, EXTRA_LENS, EXTRAS = range(6)
SEGMENTS: Final = 6
COLUMN_NAMES: Final = ("ids", "ages", "name_lens", "names", "extra_lens", "extras")
BLOCK_HEAD_SIZE: Final = BLOCK_HEAD.size + SEGMENTS * SEGMENT.size + BLOCK_CHECK.size  # 212
STORED, ZSTD = 0, 1
_LENS = np.dtype("<u4")
_SAMPLE = 128 << 10  # a segment larger than this is stored raw when a sample of it does not compress
_STREAM_CHUNK = 1 << 20
_MAP_MARKERS = np.zeros(256, dtype=bool)  # first byte of a msgpack map: fixmap, map16, map32
_MAP_MARKERS[0x80:0x90] = True
_MAP_MARKERS[[0xDE, 0xDF]] = True
_decode_extras = msgspec.msgpack.Decoder(dict[str, Any]).decode


# ---------------------------------------------------------------- writing


def _check_columns(cols: Columns) -> None:
    """Refuse to write what the reader would refuse to read (a bug upstream, not damage)."""
    n = len(cols.ages)
    if cols.ids.shape != (n, 16) or len(cols.name_ends) != n or len(cols.extra_ends) != n:
        raise ValueError(
            f"inconsistent Columns: ids {cols.ids.shape}, {n} ages, {len(cols.name_ends)} names, {len(cols.extra_ends)} extras"
        )
    if n and int(cols.ages.max()) > MAX_AGE:
        raise ValueError(f"an age above {MAX_AGE} in Columns")
    for ends, arena, what in ((cols.name_ends, cols.name_arena, "name"), (cols.extra_ends, cols.extra_arena, "extra")):
        if n and (int(ends[-1]) != len(arena) or bool((ends[1:] < ends[:-1]).any())):
            raise ValueError(f"{what}_ends of Columns are not increasing up to the arena's {len(arena)} bytes")
        if not n and arena:
            raise ValueError(f"a {what} arena without rows in Columns")


def _lengths(ends: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, int, int]:
    """Per-row byte lengths of rows ``start:stop`` (u32) and their span in the arena."""
    first = int(ends[start - 1]) if start else 0
    lens = np.diff(ends[start:stop].astype(np.uint64, copy=False), prepend=np.uint64(first))
    if len(lens) and int(lens.max()) > 0xFFFFFFFF:
        raise ValueError("a single name or extras of 4 GiB or more")
    return lens.astype(_LENS), first, int(ends[stop - 1])


def _segment(column: int, raw: Any, cctx: zstandard.ZstdCompressor) -> tuple[bytes, Any]:
    """(descriptor, stored bytes) of one column of one block: zstd unless it does not shrink."""
    raw = memoryview(raw).cast("B")
    crc = stored_crc = crc32c.crc32c(raw)
    stored, codec = raw, STORED
    if len(raw) <= _SAMPLE or len(cctx.compress(raw[:_SAMPLE])) < _SAMPLE * 0.9:  # random IDs: skip a futile pass
        packed = cctx.compress(raw)
        if len(packed) < len(raw):
            stored, codec, stored_crc = packed, ZSTD, crc32c.crc32c(packed)
    return SEGMENT.pack(column, codec, 0, crc, stored_crc, 0, len(stored), len(raw)), stored


def write_columns_file(
    path: Path,
    cols: Columns,
    shard: int,
    shards: int,
    level: int,
    mode: int,
    progress: Callable[[int], object] | None = None,
    *,
    block_rows: int = BLOCK_ROWS,
    threads: int = ZSTD_THREADS,
) -> ManifestFile:
    """Write one shard's columns durably as a v2 file (create with ``mode``, write, fsync; the
    file is removed on failure). ``progress(users written)`` is called after each block."""
    if not 1 <= block_rows <= MAX_BLOCK_ROWS:
        raise ValueError(f"block_rows must be 1..{MAX_BLOCK_ROWS}, got {block_rows}")
    _check_columns(cols)
    n = cols.rows
    ids = np.ascontiguousarray(cols.ids, dtype=np.uint8)
    ages = np.ascontiguousarray(cols.ages, dtype=np.uint8)
    names, extras = memoryview(cols.name_arena).cast("B"), memoryview(cols.extra_arena).cast("B")
    cctx = zstandard.ZstdCompressor(level=level, threads=threads)
    with created_durably(path, mode) as out:
        header = HEADER.pack(FILE_MAGIC, FILE_VERSION_COLUMNS, FLAG_ZSTD, shard, shards, 0, n)
        out.write(header)
        crc = zlib.crc32(header)
        body_len = 0
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            name_lens, n0, n1 = _lengths(cols.name_ends, start, stop)
            extra_lens, e0, e1 = _lengths(cols.extra_ends, start, stop)
            raws = (ids[start:stop], ages[start:stop], name_lens, names[n0:n1], extra_lens, extras[e0:e1])
            parts = [_segment(column, raw, cctx) for column, raw in enumerate(raws)]
            head = BLOCK_HEAD.pack(BLOCK_MAGIC, stop - start, SEGMENTS) + b"".join(d for d, _ in parts)
            pieces = [head + BLOCK_CHECK.pack(crc32c.crc32c(head), 0), *(s for _, s in parts)]
            for piece in pieces:
                out.write(piece)
                crc = zlib.crc32(piece, crc)
                body_len += len(piece)
            if progress is not None:
                progress(stop)
        if progress is not None and not n:
            progress(0)
        out.write(TRAILER.pack(TRAILER_MAGIC, body_len, crc))
    return ManifestFile(name=path.name, shard=shard, users=n, bytes=HEADER.size + body_len + TRAILER.size, crc32=f"{crc:08x}")


# ---------------------------------------------------------------- reading


class _Damaged(Exception):
    """What is wrong with a block; the caller names the file and the block."""


class _MemoryBody:
    """The body of a file read whole: blocks are slices of it (no copy)."""

    def __init__(self, data: memoryview) -> None:
        self._view, self.left = data, len(data)

    def take(self, n: int) -> memoryview:
        if n > self.left:
            raise _Damaged(f"cut short ({n:,} bytes needed, {self.left:,} left in the body)")
        start = len(self._view) - self.left
        self.left -= n
        return self._view[start : start + n]


class _FileBody:
    """The body of an open file, read a segment at a time; never reads past the body."""

    def __init__(self, f: IO[bytes], length: int) -> None:
        self._f, self.left = f, length

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise _Damaged(f"cut short ({n:,} bytes needed, {self.left:,} left in the body)")
        data = self._f.read(n)
        if len(data) != n:
            raise _Damaged("cut short while reading")
        self.left -= n
        return data


def _unpack(column: int, codec: int, stored: Any, raw_len: int, bound: int) -> Any:
    """The raw bytes of a segment. One-shot zstd only when the allocation is at most ``bound``
    (a small multiple of the file size); beyond, stream so memory follows real output."""
    if codec == STORED:
        if len(stored) != raw_len:
            raise _Damaged(f"{COLUMN_NAMES[column]}: stored {len(stored):,} bytes, raw length says {raw_len:,}")
        return stored
    try:
        dctx = zstandard.ZstdDecompressor()
        if raw_len <= bound:
            if zstandard.frame_content_size(stored) != raw_len:
                raise _Damaged(f"{COLUMN_NAMES[column]}: zstd frame size differs from the raw length {raw_len:,}")
            raw: Any = dctx.decompress(stored, max_output_size=raw_len)
        else:
            chunks, total = [], 0
            reader = dctx.stream_reader(stored, read_across_frames=False)
            while total <= raw_len and (chunk := reader.read(_STREAM_CHUNK)):
                chunks.append(chunk)
                total += len(chunk)
            raw = b"".join(chunks)
    except zstandard.ZstdError as exc:
        raise _Damaged(f"{COLUMN_NAMES[column]}: bad zstd data ({exc})") from None
    except MemoryError:
        raise _Damaged(f"{COLUMN_NAMES[column]}: {raw_len:,} bytes do not fit in memory") from None
    if len(raw) != raw_len:
        raise _Damaged(f"{COLUMN_NAMES[column]}: {len(raw):,} bytes once decompressed, the block head says {raw_len:,}")
    return raw


def _check_spans(lens: np.ndarray, arena: np.ndarray, bad_start: np.ndarray, what: str) -> np.ndarray:
    """Row ends from row lengths; no non-empty row may start on a byte ``bad_start`` marks."""
    ends = np.cumsum(lens, dtype=np.uint64)
    starts = (ends - lens)[lens > 0]
    if len(starts) and bool(bad_start[arena[starts]].any()):
        raise _Damaged(f"{what}: a row does not start on a boundary")
    return ends


_CONTINUATION = np.zeros(256, dtype=bool)  # a UTF-8 continuation byte: no name starts on one
_CONTINUATION[0x80:0xC0] = True


def _parse_block(body: _MemoryBody | _FileBody, users_left: int, bound: int) -> Columns:
    """One verified block as self-contained Columns (offsets from 0)."""
    head = body.take(BLOCK_HEAD_SIZE)
    stored_crc, reserved = BLOCK_CHECK.unpack_from(head, BLOCK_HEAD_SIZE - BLOCK_CHECK.size)
    if crc32c.crc32c(head[: BLOCK_HEAD_SIZE - BLOCK_CHECK.size]) != stored_crc or reserved:
        raise _Damaged("block head checksum mismatch")
    magic, rows, segments = BLOCK_HEAD.unpack_from(head)
    if magic != BLOCK_MAGIC or segments != SEGMENTS:
        raise _Damaged(f"bad block head (magic {bytes(magic)!r}, {segments} segments)")
    if not 1 <= rows <= min(users_left, MAX_BLOCK_ROWS):
        raise _Damaged(f"{rows:,} rows, but {users_left:,} users are left to read (at most {MAX_BLOCK_ROWS:,} a block)")
    fixed = {IDS: 16 * rows, AGES: rows, NAME_LENS: 4 * rows, EXTRA_LENS: 4 * rows}
    descriptors = [SEGMENT.unpack_from(head, BLOCK_HEAD.size + i * SEGMENT.size) for i in range(SEGMENTS)]
    for i, (column, codec, reserved, _crc, _stored_crc, reserved2, stored_len, raw_len) in enumerate(descriptors):
        if column != i or codec not in (STORED, ZSTD) or reserved or reserved2:
            raise _Damaged(f"bad segment descriptor {i} (column {column}, codec {codec})")
        if i in fixed and raw_len != fixed[i]:
            raise _Damaged(f"{COLUMN_NAMES[i]}: raw length {raw_len:,}, {rows:,} rows need {fixed[i]:,}")
        if stored_len > body.left:
            raise _Damaged(f"{COLUMN_NAMES[i]}: {stored_len:,} stored bytes, only {body.left:,} left in the body")
    raws: list[Any] = []
    for column, codec, _reserved, crc, stored_crc, _reserved2, stored_len, raw_len in descriptors:
        if column in (NAMES, EXTRAS):
            expected = int(np.frombuffer(raws[column - 1], dtype=_LENS).sum(dtype=np.uint64))
            if raw_len != expected:
                raise _Damaged(f"{COLUMN_NAMES[column]}: raw length {raw_len:,}, the row lengths add up to {expected:,}")
        stored = body.take(stored_len)
        if crc32c.crc32c(stored) != stored_crc:  # damage is found before anything is decompressed
            raise _Damaged(f"{COLUMN_NAMES[column]}: CRC-32C mismatch of the stored bytes")
        raw = _unpack(column, codec, stored, raw_len, bound)
        if (crc32c.crc32c(raw) if codec == ZSTD else stored_crc) != crc:
            raise _Damaged(f"{COLUMN_NAMES[column]}: CRC-32C mismatch of the raw bytes")
        raws.append(bytes(raw) if isinstance(raw, memoryview) else raw)  # never keep the whole file alive
    ages = np.frombuffer(raws[AGES], dtype=np.uint8)
    if int(ages.max()) > MAX_AGE:
        raise _Damaged(f"ages: {int(ages.max())} is above {MAX_AGE}")
    name_lens = np.frombuffer(raws[NAME_LENS], dtype=_LENS)
    names: bytes = raws[NAMES]
    try:
        names.decode("utf-8")  # the whole arena; with no row starting mid-character, every name is valid
    except UnicodeDecodeError as exc:
        raise _Damaged(f"names: not UTF-8 ({exc.reason} at byte {exc.start:,})") from None
    name_ends = _check_spans(name_lens, np.frombuffer(names, dtype=np.uint8), _CONTINUATION, "names")
    extra_lens = np.frombuffer(raws[EXTRA_LENS], dtype=_LENS)
    extra_ends = _check_spans(extra_lens, np.frombuffer(raws[EXTRAS], dtype=np.uint8), ~_MAP_MARKERS, "extras (not a msgpack map)")
    ids = np.frombuffer(raws[IDS], dtype=np.uint8).reshape(rows, 16)
    return Columns(ids, ages, name_ends, names, extra_ends, raws[EXTRAS])


def _blocks(path: Path, body: _MemoryBody | _FileBody, users: int, bound: int) -> Iterator[Columns]:
    """Every block of a body whose file checksum was verified; counts are checked as they come."""
    left, index = users, 0
    try:
        while left:
            block = _parse_block(body, left, bound)
            left -= block.rows
            yield block
            index += 1
        if body.left:
            raise _Damaged(f"{body.left:,} bytes after the last block")
    except _Damaged as exc:
        raise SnapshotError(f"{path}: damaged shard file (format version 2, block {index}): {exc}") from None


def _bound(size: int) -> int:
    return 8 * size + (1 << 20)


def columns_from_bytes(path: Path, data: bytes, head: ShardHeader, expect: ManifestFile | None) -> Columns:
    """The users of a whole v2 file in memory whose size and header were checked."""
    body_end = len(data) - TRAILER.size
    _check_trailer(path, data[body_end:], len(data), zlib.crc32(memoryview(data)[:body_end]), expect)
    body = _MemoryBody(memoryview(data)[HEADER.size : body_end])
    return concat_columns(list(_blocks(path, body, head.users, _bound(len(data)))))


def read_columns_file(path: Path, expect: ManifestFile | None = None) -> Columns:
    """Read and verify a whole v2 shard file: every checksum, length and count."""
    data = _read_whole(path)
    _check_size(path, len(data), expect)
    head = _check_header(path, data, expect)
    if head.version != FILE_VERSION_COLUMNS:
        raise SnapshotError(f"{path}: a format version {head.version} file, not a columnar (version 2) one; use read_shard_columns")
    return columns_from_bytes(path, data, head, expect)


def iter_open_columns(
    path: Path, f: IO[bytes], size: int, header: bytes, head: ShardHeader, expect: ManifestFile | None
) -> Iterator[Columns]:
    """Stream the blocks of an open v2 file, positioned after its checked header: the whole
    file's checksum first (nothing is parsed from damaged bytes), then block by block."""
    check_whole_file(path, f, size, header, expect)
    yield from _blocks(path, _FileBody(f, size - HEADER.size - TRAILER.size), head.users, _bound(size))


def iter_columns_file(path: Path, expect: ManifestFile | None = None) -> Iterator[Columns]:
    """Verify a v2 shard file, then yield its users block by block (bounded memory: a worker
    loading another shard count keeps only its rows of each)."""
    with open_shard_file(path, expect) as (f, size, header, head):
        if head.version != FILE_VERSION_COLUMNS:
            raise SnapshotError(f"{path}: a format version {head.version} file, not a columnar (version 2) one")
        yield from iter_open_columns(path, f, size, header, head, expect)


def iter_any_columns(path: Path, expect: ManifestFile | None = None) -> Iterator[Columns]:
    """The users of a shard file of either version, block by block, as Columns."""
    with open_shard_file(path, expect) as (f, size, header, head):
        if head.version == FILE_VERSION_COLUMNS:
            yield from iter_open_columns(path, f, size, header, head, expect)
            return
    for records in iter_shard_file(path, expect):
        try:
            yield records_to_columns(records)
        except (ValueError, OverflowError) as exc:
            raise SnapshotError(f"{path}: a user does not fit the columnar form ({exc})") from None


def read_shard_columns(path: Path, expect: ManifestFile | None = None) -> Columns:
    """The users of a shard file of either version as Columns (v1 through its records)."""
    data = _read_whole(path)
    _check_size(path, len(data), expect)
    head = _check_header(path, data, expect)
    if head.version == FILE_VERSION_COLUMNS:
        return columns_from_bytes(path, data, head, expect)
    del data
    records = read_shard_file(path, expect)
    try:
        return records_to_columns(records)
    except (ValueError, OverflowError) as exc:
        raise SnapshotError(f"{path}: a user does not fit the columnar form ({exc})") from None


# ---------------------------------------------------------------- columns and records


def concat_columns(blocks: list[Columns]) -> Columns:
    """One Columns of many blocks (each with offsets from 0), offsets shifted by the arenas before."""
    if not blocks:
        return empty_columns()
    if len(blocks) == 1:
        return blocks[0]
    name_base = np.cumsum([0] + [len(b.name_arena) for b in blocks[:-1]], dtype=np.uint64)
    extra_base = np.cumsum([0] + [len(b.extra_arena) for b in blocks[:-1]], dtype=np.uint64)
    return Columns(
        np.concatenate([b.ids for b in blocks]),
        np.concatenate([b.ages for b in blocks]),
        np.concatenate([b.name_ends + base for b, base in zip(blocks, name_base)]),
        b"".join(b.name_arena for b in blocks),
        np.concatenate([b.extra_ends + base for b, base in zip(blocks, extra_base)]),
        b"".join(b.extra_arena for b in blocks),
    )


def records_to_columns(records: list[Record]) -> Columns:
    """Records (a v1 file, the wire) as Columns. ValueError/OverflowError for a record that
    does not fit: an ID not of 16 bytes, an age outside 0-255 (above 150 is left to the writer)."""
    n = len(records)
    if not n:
        return empty_columns()
    ids = list(map(attrgetter("id"), records))
    joined_ids = b"".join(ids)
    if len(joined_ids) != 16 * n or any(len(i) != 16 for i in ids):
        raise ValueError("an ID that is not 16 bytes")
    ids_array = np.frombuffer(joined_ids, dtype=np.uint8).reshape(n, 16)
    return build_columns(
        ids_array, map(attrgetter("age"), records), list(map(attrgetter("name"), records)), list(map(attrgetter("extras"), records))
    )


def columns_to_records(cols: Columns) -> list[Record]:
    """Columns as Records (the v1 writer, older call sites). msgspec.DecodeError for extras
    that are not a msgpack map with string keys."""
    n = cols.rows
    if not n:
        return []
    with gc_paused():
        ids = np.ascontiguousarray(cols.ids, dtype=np.uint8).view("V16").ravel().tolist()
        ages = cols.ages.tolist()
        ends = cols.name_ends.tolist()
        starts = [0, *ends[:-1]]
        arena = cols.name_arena
        if arena.isascii():  # byte offsets are character offsets
            text = arena.decode("ascii")
            names = [text[a:b] for a, b in zip(starts, ends)]
        else:
            names = [arena[a:b].decode() for a, b in zip(starts, ends)]
        extras: list[Any] = [None] * n
        if cols.extra_arena:
            extra_ends = cols.extra_ends.astype(np.uint64, copy=False)
            extra_starts = np.concatenate([np.zeros(1, dtype=np.uint64), extra_ends[:-1]])
            view = memoryview(cols.extra_arena)
            rows = np.flatnonzero(extra_ends != extra_starts)
            for i, a, b in zip(rows.tolist(), extra_starts[rows].tolist(), extra_ends[rows].tolist()):
                extras[i] = _decode_extras(view[a:b])
        return list(map(Record, names, ages, ids, extras))
