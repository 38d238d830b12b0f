"""The snapshot format on disk: shard files, the manifest, atomic commit, verify, backup.

A snapshot at ``users_db.json`` is the manifest ``users_db.json`` (JSON) plus one binary file
per shard beside it. Files are written under new names, fsynced, and only then named by a
manifest that replaces the old one with an fsynced rename; the directory is fsynced too. A
crash at any instant leaves the previous manifest and every file it names intact.

Shard file layout (all integers little-endian)::

    header  32 bytes  magic "PDBSHARD", u16 version, u16 flags (bit 0: zstd),
                      u32 shard index, u32 shard count, u32 reserved, u64 user count
    body    one zstd frame (with its own content checksum) holding blocks, each
            u32 byte length + a msgpack array of records [name, age, id (bin 16), extras|nil]
    trailer 24 bytes  magic "PDBSEND\\0", u64 body length, u32 CRC-32 of header+body, u32 reserved

Header version 2 (columnar, :mod:`pydbms_shard.shard_file_v2`) has the same header and trailer
and a body of column blocks; the readers here dispatch on the header's version.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, cast

import msgspec
import zstandard

from .codec import Record, decode_records, encode, gc_paused
from .errors import SnapshotError
from .routing import HASH_SCHEME
from .workers.columnar import Columns

log = logging.getLogger("pydbms_shard.snapshot")

FORMAT_NAME: Final = "pydbms-shard"
FORMAT_VERSION = 1  # of the manifest
FILE_VERSION_RECORDS = 1  # shard file versions: msgpack records (this module)
FILE_VERSION_COLUMNS = 2  # columns (shard_file_v2)
FILE_VERSION_MAX = FILE_VERSION_COLUMNS
FILE_MAGIC = b"PDBSHARD"
TRAILER_MAGIC = b"PDBSEND\0"
FLAG_ZSTD = 1
HEADER = struct.Struct("<8sHHIIIQ")
TRAILER = struct.Struct("<8sQI4x")
BLOCK_LEN = struct.Struct("<I")
BLOCK_RECORDS = 65_536  # users per v1 block
_READ_CHUNK = 1 << 20


class ManifestFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One shard file as the manifest names it."""

    name: str
    shard: int
    users: int
    bytes: int
    crc32: str


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    format: Literal["pydbms-shard"]
    version: int
    generation: int
    created: str
    shards: int
    hash: str
    users: int
    files: list[ManifestFile]
    log_chain: str | None = None  # the write-ahead log this snapshot is a checkpoint of
    log_seq: int = 0  # the snapshot holds the effect of every logged call up to this sequence number


# ---------------------------------------------------------------- file names


# Every file of the snapshot at ``<dir>/<name>`` is spelled here and nowhere else:
#   <name>.gNNNNNNNN-<token>.sSSS.pdbs    a shard file of generation N (token: the save's)
#   <name>.gNNNNNNNN-<token>.manifest     the numbered copy of that generation's manifest
#   .<name>.<token>.tmp                   a manifest being committed
#   .<name>.lock / .<name>.owner          the writers' lock and the open DataBase's claim
# (the write-ahead log's segments are named in workers/log.py)
_GENERATION = r"\.g(\d{8})-([0-9a-f]{8})\."
_NUMBERED = re.compile(r"^(.*)" + _GENERATION + r"manifest$")


def _file_pattern(manifest_name: str) -> re.Pattern[str]:
    """Matches the shard files and numbered manifests of ``manifest_name``: (generation, token, kind)."""
    return re.compile(re.escape(manifest_name) + _GENERATION + r"(s\d{3}\.pdbs|manifest)$")


def shard_file_name(manifest_name: str, generation: int, token: str, shard: int) -> str:
    return f"{manifest_name}.g{generation:08d}-{token}.s{shard:03d}.pdbs"


def numbered_manifest_name(manifest_name: str, generation: int, token: str) -> str:
    return f"{manifest_name}.g{generation:08d}-{token}.manifest"


def _temp_manifest_name(manifest_name: str, token: str) -> str:
    return f".{manifest_name}.{token}.tmp"


def _is_temp_manifest(manifest_name: str, file_name: str) -> bool:
    prefix, suffix = f".{manifest_name}.", ".tmp"  # _temp_manifest_name around a token
    token = file_name[len(prefix) : -len(suffix)]
    return file_name.startswith(prefix) and file_name.endswith(suffix) and re.fullmatch("[0-9a-f]{8}", token) is not None


def lock_file(manifest_path: Path, kind: Literal["lock", "owner"]) -> Path:
    """The writers' lock (``lock``) or the open DataBase's claim (``owner``) of a snapshot
    path; a numbered manifest shares its path's."""
    numbered = _NUMBERED.match(manifest_path.name)
    base = numbered.group(1) if numbered else manifest_path.name
    return manifest_path.parent / f".{base}.{kind}"


def numbered_manifests(manifest_path: Path) -> list[Path]:
    """The numbered manifests of every generation on disk, oldest first."""
    pattern = _file_pattern(manifest_path.name)
    try:
        names = os.listdir(manifest_path.parent)
    except OSError:
        return []
    found = [(m, name) for name in names if (m := pattern.match(name)) and m.group(3) == "manifest"]
    return [manifest_path.parent / name for m, name in sorted(found, key=lambda item: int(item[0].group(1)))]


def new_token() -> str:
    return secrets.token_hex(4)


def next_generation(manifest_path: Path) -> int:
    """One more than any generation present (committed or left over from a crash)."""
    highest = 0
    try:
        highest = read_manifest(manifest_path).generation
    except (SnapshotError, OSError):
        pass
    pattern = _file_pattern(manifest_path.name)
    try:
        names = os.listdir(manifest_path.parent)
    except OSError:
        names = []
    for name in names:
        match = pattern.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


# ---------------------------------------------------------------- low-level IO


def manifest_location(path: str | os.PathLike[str]) -> Path:
    """Where a snapshot really lives, spelled one way: a symlinked manifest means the files
    beside its target, and the folder is resolved (``a/../b``, symlinked folders), so two
    spellings of one path are the same snapshot."""
    path = Path(path).absolute()
    try:
        if path.is_symlink():
            return path.resolve(strict=False)
    except (RuntimeError, OSError) as exc:
        raise SnapshotError(f"{path}: the symlink cannot be followed ({exc})") from None
    return Path(os.path.realpath(path.parent)) / path.name


@contextmanager
def writer_lock(manifest_path: Path, shared: bool = False) -> Iterator[None]:
    """One writer per snapshot path, across threads and processes, so a save's clean-up never
    sees another save's files in flight; readers (``shared``) keep writers from rotating files
    away under them. An advisory flock on a hidden lock file beside the manifest."""
    lock_path = lock_file(manifest_path, "lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if shared and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOENT):
            yield  # a directory nobody can write to: no writer to keep out
            return
        raise SnapshotError(f"{manifest_path}: cannot create its lock file ({describe_os_error(exc)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_ORPHAN_PATIENCE = 3.0  # seconds an opener waits for the workers of an ended program to exit
_owned: set[Path] = set()  # snapshot paths an open DataBase of this process owns
_owned_lock = threading.Lock()


def owner_lock(manifest_path: Path, optional: bool = False) -> int | None:
    """Claim a snapshot path for one open DataBase (its log has one writer): a POSIX lock on
    ``.<name>.owner`` against other processes (not inherited by forked workers, released
    when the process dies) plus a registry against other DataBases of this process. Returns
    the lock file's descriptor; ``release_owner_lock`` gives the path back."""
    with _owned_lock:
        if manifest_path in _owned:
            raise SnapshotError(f"{manifest_path}: already open in another DataBase of this process; close it first")
        lock_path = lock_file(manifest_path, "owner")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if optional and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                return None  # a reader on a read-only medium: nobody can write a log there either
            raise SnapshotError(f"{manifest_path}: cannot create its lock file {lock_path.name} ({describe_os_error(exc)})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SnapshotError(f"{manifest_path}: already open in a DataBase of another process; close it first") from None
        # Workers hold a shared flock on the same file while they append to the log: one left
        # from a program that was killed may still write a message it had received.
        deadline = time.monotonic() + _ORPHAN_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)  # free again for this DataBase's own workers
                break
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise SnapshotError(
                        f"{manifest_path}: a worker process of a program that ended still writes its log; try again once it has exited"
                    ) from None
                time.sleep(0.05)
        _owned.add(manifest_path)
        return fd


def hold_as_worker(manifest_path: Path) -> int:
    """A worker's shared claim on its DataBase's path, held while the process lives: no new
    owner opens the path while a worker of the old one may still append to its log."""
    fd = os.open(lock_file(manifest_path, "owner"), os.O_RDWR | os.O_CLOEXEC)
    deadline = time.monotonic() + _ORPHAN_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise
            time.sleep(0.02)  # an opener is checking for leftover workers just now


def release_owner_lock(manifest_path: Path, fd: int) -> None:
    with _owned_lock:
        _owned.discard(manifest_path)
        os.close(fd)


def check_not_owned(manifest_path: Path) -> None:
    """Refuse to write a snapshot over the path of a DataBase that is open (its log would no
    longer lead from the manifest it finds there). A path this process owns is answered from
    the registry: opening and closing its lock file here would drop the process's lock."""
    with _owned_lock:
        if manifest_path in _owned:
            raise SnapshotError(f"{manifest_path}: already open in another DataBase of this process; close it first")
    if lock_file(manifest_path, "owner").exists():
        fd = owner_lock(manifest_path)
        assert fd is not None
        release_owner_lock(manifest_path, fd)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, mode: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what was configured
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def created_durably(path: Path, mode: int) -> Iterator[IO[bytes]]:
    """A new file (``mode``, never an existing one) to write; flushed and fsynced when the
    block ends, or closed and removed when it raises: no half-written file is left behind."""
    fd = _create(path, mode)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            yield out
            out.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _remove_quietly(path)
        raise
    os.close(fd)


def write_bytes_durably(path: Path, data: bytes, mode: int) -> None:
    """Write a new file and fsync it (no rename: the caller decides when it becomes visible)."""
    fd = _create(path, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    return exc.strerror or str(exc)


# ---------------------------------------------------------------- shard files


def write_shard_file(
    path: Path,
    records: list[Record] | Columns,
    shard: int,
    shards: int,
    level: int,
    mode: int,
    progress: Callable[[int], object] | None = None,
) -> ManifestFile:
    """Encode, compress and durably write one shard's users; remove the file on failure.
    Columns (what a worker's cut is) are written as format v2 (:mod:`.shard_file_v2`); a list
    of records as format v1, kept so tests can make the files older versions wrote.
    ``progress(users written)`` is called after each block (the save's liveness report)."""
    if not isinstance(records, list):
        from .shard_file_v2 import write_columns_file

        return write_columns_file(path, records, shard, shards, level, mode, progress)
    crc = 0
    body_len = 0
    with created_durably(path, mode) as out:
        header = HEADER.pack(FILE_MAGIC, FILE_VERSION_RECORDS, FLAG_ZSTD, shard, shards, 0, len(records))
        out.write(header)
        crc = zlib.crc32(header)
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
        for start in range(0, max(len(records), 1), BLOCK_RECORDS):
            block = encode(records[start : start + BLOCK_RECORDS])
            piece = compressor.compress(BLOCK_LEN.pack(len(block)) + block)
            if piece:
                out.write(piece)
                crc = zlib.crc32(piece, crc)
                body_len += len(piece)
            if progress is not None:
                progress(min(start + BLOCK_RECORDS, len(records)))
        piece = compressor.flush()
        out.write(piece)
        crc = zlib.crc32(piece, crc)
        body_len += len(piece)
        out.write(TRAILER.pack(TRAILER_MAGIC, body_len, crc))
    size = HEADER.size + body_len + TRAILER.size
    return ManifestFile(name=path.name, shard=shard, users=len(records), bytes=size, crc32=f"{crc:08x}")


class ShardHeader(NamedTuple):
    version: int
    shard: int
    shards: int
    users: int


def _check_header(path: Path, header: bytes, expect: ManifestFile | None) -> ShardHeader:
    """The one reader of a shard file's header (every version): checked on its own and against the manifest."""
    if len(header) < HEADER.size:
        raise SnapshotError(f"{path}: truncated (no complete header)")
    magic, version, flags, shard, shards, _reserved, users = HEADER.unpack(header[: HEADER.size])
    if magic != FILE_MAGIC:
        raise SnapshotError(f"{path}: not a pydbms-shard snapshot file (bad magic)")
    if version > FILE_VERSION_MAX:
        raise SnapshotError(f"{path}: format version {version} is newer than this library reads ({FILE_VERSION_MAX})")
    if version < 1 or flags != FLAG_ZSTD:
        raise SnapshotError(f"{path}: damaged header (version {version}, flags {flags})")
    if expect is not None and users != expect.users:
        raise SnapshotError(f"{path}: header says {users} users, the manifest says {expect.users}")
    if expect is not None and shard != expect.shard:
        raise SnapshotError(f"{path}: holds shard {shard}, the manifest says shard {expect.shard}")
    if shard >= shards:
        raise SnapshotError(f"{path}: damaged header (shard {shard} of {shards})")
    return ShardHeader(version, shard, shards, users)


def _check_trailer(path: Path, trailer: bytes, size: int, crc: int, expect: ManifestFile | None) -> None:
    magic, body_len, stored_crc = TRAILER.unpack(trailer)
    if magic != TRAILER_MAGIC or HEADER.size + body_len + TRAILER.size != size:
        raise SnapshotError(f"{path}: truncated or damaged (bad trailer)")
    if stored_crc != crc:
        raise SnapshotError(f"{path}: checksum mismatch (stored {stored_crc:08x}, computed {crc:08x}): the file is damaged")
    if expect is not None and expect.crc32 != f"{crc:08x}":
        raise SnapshotError(f"{path}: checksum {crc:08x} differs from the manifest's {expect.crc32}")


def _check_size(path: Path, size: int, expect: ManifestFile | None) -> None:
    if expect is not None and size != expect.bytes:
        raise SnapshotError(f"{path}: {size} bytes on disk, the manifest says {expect.bytes}: truncated or damaged")
    if size < HEADER.size + TRAILER.size:
        raise SnapshotError(f"{path}: truncated ({size} bytes)")


def _parse_blocks(path: Path, data: bytes | memoryview, decode: Callable[[Any], list[Any]]) -> Iterator[list[Any]]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if pos + BLOCK_LEN.size > len(view):
            raise SnapshotError(f"{path}: damaged body (block header cut short)")
        (length,) = BLOCK_LEN.unpack_from(view, pos)
        pos += BLOCK_LEN.size
        if pos + length > len(view):
            raise SnapshotError(f"{path}: damaged body (block cut short)")
        try:
            yield decode(view[pos : pos + length])
        except msgspec.DecodeError as exc:
            raise SnapshotError(f"{path}: damaged records ({exc})") from None
        pos += length


def _read_whole(path: Path) -> bytes:
    """A whole shard file; a pipe, a device or a directory in its place is refused unread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SnapshotError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb") as f:
            os.set_blocking(fd, True)
            return f.read()
    except FileNotFoundError:
        raise SnapshotError(f"{path}: missing") from None
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read ({describe_os_error(exc)})") from None


def _v2_records(path: Path, cols: Any) -> list[Record]:
    """A v2 file's users as records, for call sites that predate columns."""
    from .shard_file_v2 import columns_to_records

    try:
        return columns_to_records(cols)
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"{path}: damaged shard file (format version 2): extras that are not a map ({exc})") from None


def read_shard_file(path: Path, expect: ManifestFile | None = None) -> list[Record]:
    """Read, verify and decode a whole shard file (the fast path used by load); a v2 file's
    columns come back as records."""
    data = _read_whole(path)
    _check_size(path, len(data), expect)
    head = _check_header(path, data, expect)
    users = head.users
    if head.version == FILE_VERSION_COLUMNS:
        from .shard_file_v2 import columns_from_bytes

        return _v2_records(path, columns_from_bytes(path, data, head, expect))
    body_end = len(data) - TRAILER.size
    _check_trailer(path, data[body_end:], len(data), zlib.crc32(memoryview(data)[:body_end]), expect)
    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(memoryview(data)[HEADER.size : body_end])
    except zstandard.ZstdError as exc:
        raise SnapshotError(f"{path}: damaged compressed body ({exc})") from None
    del data
    records: list[Record] = []
    with gc_paused():
        for block in _parse_blocks(path, raw, decode_records):
            records.extend(block)
    if len(records) != users:
        raise SnapshotError(f"{path}: holds {len(records)} users, its header says {users}")
    return records


def check_whole_file(path: Path, f: IO[bytes], size: int, header: bytes, expect: ManifestFile | None) -> None:
    """The CRC-32 of an open shard file (positioned after its header) against its trailer,
    read in chunks; then back to the body's start. Nothing is parsed from damaged bytes."""
    crc = zlib.crc32(header)
    remaining = size - HEADER.size - TRAILER.size
    while remaining:
        chunk = f.read(min(_READ_CHUNK, remaining))
        if not chunk:
            raise SnapshotError(f"{path}: truncated while reading")
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    _check_trailer(path, f.read(TRAILER.size), size, crc, expect)
    f.seek(HEADER.size)


@contextmanager
def open_shard_file(path: Path, expect: ManifestFile | None = None) -> Iterator[tuple[IO[bytes], int, bytes, ShardHeader]]:
    """Open a shard file whose size and header check out (against ``expect``, the manifest's
    entry): the file positioned after its header, its size, the header bytes and fields. A
    pipe, a device or a directory in its place is refused before anything is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    except FileNotFoundError:
        raise SnapshotError(f"{path}: missing") from None
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read ({describe_os_error(exc)})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SnapshotError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        os.set_blocking(fd, True)
        _check_size(path, st.st_size, expect)
        header = f.read(HEADER.size)
        yield f, st.st_size, header, _check_header(path, header, expect)


def iter_shard_file(
    path: Path, expect: ManifestFile | None = None, decode: Callable[[Any], list[Any]] = decode_records
) -> Iterator[list[Any]]:
    """Verify a shard file, then stream its records block by block (bounded memory). A v2 file's
    blocks come as records too, through ``decode`` unless it is the default."""
    with open_shard_file(path, expect) as (f, size, header, file_head):
        users = file_head.users
        if file_head.version == FILE_VERSION_COLUMNS:
            from .shard_file_v2 import iter_open_columns

            for cols in iter_open_columns(path, f, size, header, file_head, expect):
                records = _v2_records(path, cols)
                yield records if decode is decode_records else _redecode(path, records, decode)
            return
        check_whole_file(path, f, size, header, expect)
        body = _Limited(f, size - HEADER.size - TRAILER.size)
        seen = 0
        try:
            # zstandard reads any object with read(); its stubs name only IO[bytes] and buffers
            reader = zstandard.ZstdDecompressor().stream_reader(cast("IO[bytes]", body), read_across_frames=False)
            while True:
                head = reader.read(BLOCK_LEN.size)
                if not head:
                    break
                if len(head) < BLOCK_LEN.size:
                    raise SnapshotError(f"{path}: damaged body (block header cut short)")
                (length,) = BLOCK_LEN.unpack(head)
                block = reader.read(length)
                while len(block) < length:
                    more = reader.read(length - len(block))
                    if not more:
                        raise SnapshotError(f"{path}: damaged body (block cut short)")
                    block += more
                try:
                    items = decode(block)
                except msgspec.DecodeError as exc:
                    raise SnapshotError(f"{path}: damaged records ({exc})") from None
                seen += len(items)
                yield items
        except zstandard.ZstdError as exc:
            raise SnapshotError(f"{path}: damaged compressed body ({exc})") from None
        if seen != users:
            raise SnapshotError(f"{path}: holds {seen} users, its header says {users}")


def _redecode(path: Path, records: list[Record], decode: Callable[[Any], list[Any]]) -> list[Any]:
    try:
        return decode(encode(records))
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"{path}: damaged records ({exc})") from None


class _Limited:
    """A read-only view of the next ``limit`` bytes of a file (the zstd body)."""

    def __init__(self, f: Any, limit: int) -> None:
        self._f, self._left = f, limit

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data: bytes = self._f.read(n)
        self._left -= len(data)
        return data


# ---------------------------------------------------------------- manifests


def _safe_file_name(manifest_path: Path, name: str) -> Path:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        raise SnapshotError(f"{manifest_path}: names a file outside its own directory: {name!r}")
    return manifest_path.parent / name


MAX_MANIFEST_BYTES = 16 << 20  # a manifest of 256 shards is a few tens of KiB


def read_regular_file(path: Path, cap: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes. A pipe, a device or a directory is
    refused before anything is read (opening never blocks: O_NONBLOCK), so ``/dev/zero`` or a
    named pipe cannot eat memory or hang the caller."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no snapshot there (the {what} is missing)") from None
    except IsADirectoryError:
        raise SnapshotError(f"{path}: is a directory, not a snapshot {what}") from None
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read the {what} ({describe_os_error(exc)})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SnapshotError(f"{path}: is a directory, not a snapshot {what}")
        if not stat.S_ISREG(info.st_mode):
            raise SnapshotError(f"{path}: is not a regular file (a pipe, socket or device), not a snapshot {what}")
        if info.st_size > cap:
            raise SnapshotError(f"{path}: {info.st_size:,} bytes is too large for a snapshot {what} (at most {cap:,})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise SnapshotError(f"{path}: too large for a snapshot {what} (more than {cap:,} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read the {what} ({describe_os_error(exc)})") from None
    finally:
        os.close(fd)


def read_manifest(path: Path) -> Manifest:
    """Read and check a manifest (not yet the files it names)."""
    raw = read_regular_file(Path(path), MAX_MANIFEST_BYTES, "manifest")
    try:
        loose = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"{path}: damaged manifest (not valid JSON: {exc})") from None
    if not isinstance(loose, dict) or loose.get("format") != FORMAT_NAME:
        raise SnapshotError(f"{path}: not a {FORMAT_NAME} manifest")
    version = loose.get("version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise SnapshotError(f"{path}: format version {version} is newer than this library reads ({FORMAT_VERSION})")
    try:
        manifest = msgspec.convert(loose, Manifest, strict=True)
    except msgspec.ValidationError as exc:
        raise SnapshotError(f"{path}: damaged manifest ({exc})") from None
    if manifest.version < 1:
        raise SnapshotError(f"{path}: damaged manifest (version {manifest.version})")
    if manifest.shards < 1 or len(manifest.files) != manifest.shards:
        raise SnapshotError(f"{path}: damaged manifest ({len(manifest.files)} files for {manifest.shards} shards)")
    if sorted(f.shard for f in manifest.files) != list(range(manifest.shards)):
        raise SnapshotError(f"{path}: damaged manifest (shard numbers are not 0..{manifest.shards - 1})")
    if sum(f.users for f in manifest.files) != manifest.users:
        raise SnapshotError(f"{path}: damaged manifest (file user counts do not add up to {manifest.users})")
    for entry in manifest.files:
        _safe_file_name(path, entry.name)
    return manifest


def manifest_files(path: Path, manifest: Manifest) -> list[tuple[Path, ManifestFile]]:
    """The files a manifest names, checked to exist with the recorded size."""
    out = []
    for entry in sorted(manifest.files, key=lambda f: f.shard):
        file_path = _safe_file_name(path, entry.name)
        try:
            size = file_path.stat().st_size
        except FileNotFoundError:
            raise SnapshotError(f"{file_path}: missing (named by {path})") from None
        except OSError as exc:
            raise SnapshotError(f"{file_path}: cannot read ({describe_os_error(exc)})") from None
        _check_size(file_path, size, entry)
        _check_layout(file_path, entry, manifest.shards)
        out.append((file_path, entry))
    return out


def _check_layout(path: Path, entry: ManifestFile, shards: int) -> None:
    """The header must say the shard and shard count the manifest says, or users would be
    loaded onto shards their IDs do not route to."""
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER.size)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read ({describe_os_error(exc)})") from None
    written_for = _check_header(path, header, entry).shards
    if written_for != shards:
        raise SnapshotError(f"{path}: written by a {written_for}-shard save, the manifest says {shards} shards")


def build_manifest(generation: int, shards: int, files: list[ManifestFile], log_chain: str | None = None, log_seq: int = 0) -> Manifest:
    now = time.time()
    created = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    files = sorted(files, key=lambda f: f.shard)
    return Manifest(
        format=FORMAT_NAME,
        version=FORMAT_VERSION,
        generation=generation,
        created=created,
        shards=shards,
        hash=HASH_SCHEME,
        users=sum(f.users for f in files),
        files=files,
        log_chain=log_chain,
        log_seq=log_seq,
    )


def commit_manifest(path: Path, manifest: Manifest, token: str, mode: int, keep: int) -> None:
    """Make ``manifest`` the snapshot at ``path`` atomically, then drop old generations."""
    directory = path.parent
    data = json.dumps(msgspec.to_builtins(manifest), indent=2).encode() + b"\n"
    numbered = directory / numbered_manifest_name(path.name, manifest.generation, token)
    tmp = directory / _temp_manifest_name(path.name, token)
    try:
        fsync_dir(directory)  # the shard files' names are durable before a manifest names them
        write_bytes_durably(numbered, data, mode)
        write_bytes_durably(tmp, data, mode)
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        _remove_quietly(numbered)
        raise SnapshotError(f"{path}: cannot write the manifest ({describe_os_error(exc)})") from None
    # Committed: from here on nothing undoes it (clean-up never deletes what the live manifest names).
    try:
        fsync_dir(directory)
    except OSError as exc:
        raise SnapshotError(
            f"{path}: the new snapshot is in place, but fsync of {directory} failed ({describe_os_error(exc)}): "
            "after a power loss the previous snapshot may come back"
        ) from None
    try:
        remove_old_generations(path, keep)
    except OSError as exc:
        log.warning("%s: committed, but removing old generations failed (%s)", path, describe_os_error(exc))


def remove_old_generations(path: Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` committed generations; remove older ones and crash leftovers."""
    pattern = _file_pattern(path.name)
    groups: dict[tuple[int, str], list[str]] = {}
    committed: set[tuple[int, str]] = set()
    for name in os.listdir(path.parent):
        match = pattern.match(name)
        if match:
            key = (int(match.group(1)), match.group(2))
            groups.setdefault(key, []).append(name)
            if match.group(3) == "manifest":
                committed.add(key)
    kept = set(sorted(committed, reverse=True)[:keep])
    try:  # whatever the live manifest names is never removed
        for entry in read_manifest(path).files:
            match = pattern.match(entry.name)
            if match:
                kept.add((int(match.group(1)), match.group(2)))
    except SnapshotError:
        pass
    removed = []
    for name in os.listdir(path.parent):
        if _is_temp_manifest(path.name, name):  # a manifest temp file of a save killed before its rename
            _remove_quietly(path.parent / name)
            removed.append(name)
    for key, names in groups.items():
        if key not in kept:
            for name in names:
                _remove_quietly(path.parent / name)
                removed.append(name)
    return removed


def cleanup_failed_save(path: Path, generation: int, token: str) -> None:
    """Remove whatever a failed save at ``generation``/``token`` left behind, except anything
    the live manifest names (a failure after the commit's rename must not break it)."""
    prefix = f"{path.name}.g{generation:08d}-{token}."
    try:
        live = {entry.name for entry in read_manifest(path).files}
    except SnapshotError:
        live = set()
    if any(name.startswith(prefix) for name in live):
        return
    for name in os.listdir(path.parent):
        if name.startswith(prefix):
            _remove_quietly(path.parent / name)


# ---------------------------------------------------------------- backup


def backup_snapshot(src: Path, dst: Path, mode: int, keep: int) -> Manifest:
    """An independent copy of the snapshot at ``src``: hard links where possible, copies elsewhere."""
    src, dst = manifest_location(src), manifest_location(dst)
    if not dst.parent.is_dir():
        raise SnapshotError(f"{dst}: the directory {dst.parent} does not exist")
    if dst.resolve() == src.resolve():
        raise SnapshotError(f"{dst}: a backup must not replace the snapshot it copies")
    first, second = sorted([src, dst], key=lambda p: str(p.resolve()))  # one lock order: no deadlock
    with writer_lock(first, shared=first == src), writer_lock(second, shared=second == src):
        manifest = read_manifest(src)
        files = manifest_files(src, manifest)
        return _backup_locked(manifest, files, dst, mode, keep)


def _backup_locked(manifest: Manifest, files: list[tuple[Path, ManifestFile]], dst: Path, mode: int, keep: int) -> Manifest:
    generation = next_generation(dst)
    token = new_token()
    new_files = []
    try:
        for file_path, entry in files:
            target = dst.parent / shard_file_name(dst.name, generation, token, entry.shard)
            try:
                os.link(file_path, target)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                _copy_durably(file_path, target, mode)
            new_files.append(msgspec.structs.replace(entry, name=target.name))
        fsync_dir(dst.parent)
    except OSError as exc:
        cleanup_failed_save(dst, generation, token)
        raise SnapshotError(f"{dst}: backup failed ({describe_os_error(exc)})") from None
    copy = msgspec.structs.replace(manifest, generation=generation, files=new_files)
    commit_manifest(dst, copy, token, mode, keep)
    return copy


def _copy_durably(src: Path, dst: Path, mode: int) -> None:
    with open(src, "rb") as f_in, created_durably(dst, mode) as f_out:
        shutil.copyfileobj(f_in, f_out, _READ_CHUNK)


def verify_snapshot(path: Path) -> Manifest:
    """Read every file the manifest names and check every checksum and count."""
    path = manifest_location(path)
    manifest = read_manifest(path)
    for file_path, entry in manifest_files(path, manifest):
        for _ in iter_shard_file(file_path, entry):
            pass
    return manifest
