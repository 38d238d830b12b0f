"""A shard process's loop: receive a command, apply it to the partition, reply.

Every request is one msgpack array ``[op, arg, ...]``; every reply ``[true, result]`` or
``[false, error type, message]``. Bulk arguments arrive still encoded and are decoded here,
so the coordinator never touches each item. The loop ends on ``exit`` or when the pipe reports
end-of-file (the coordinator is gone), so no worker outlives its DataBase.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
from collections.abc import Callable
from itertools import compress, groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from pydbms_shard import protocol, snapshot
from pydbms_shard.codec import (
    Raw,
    decode_any,
    decode_bytes,
    decode_bytes_list,
    decode_parts,
    decode_records,
    decode_str,
    decode_str_list,
    encode,
    gc_paused,
    pack_rows,
    records_msgpack,
    unpack_columns,
    unpack_id_rows,
)
from pydbms_shard.errors import LogError
from pydbms_shard.routing import shards_of_joined
from pydbms_shard.shard_file_v2 import concat_columns, iter_any_columns, read_shard_columns

from . import log as wal
from .columnar import Columns, empty_columns, slice_rows, take_rows
from .columns import ColumnPartition
from .id_index import as_rows

_PARENT_POLL_SECONDS = 0.5
_TRIM_AFTER_BYTES = 1 << 20  # a write message this big (~30,000 users) is followed by a malloc_trim (2-4 ms)


class _Poisoned(Exception):
    """A logged write failed half-way: this process's memory can no longer be trusted, so it
    replies and exits, and the coordinator rebuilds the shard from its snapshot and log."""


class ShardWorker:
    """The state of one shard process and a handler per command."""

    def __init__(self, shard: int, shards: int, events: Any = None) -> None:
        self.shard, self.shards = shard, shards
        self.events = events  # where the snapshot writer reports: [file path, ok, entry or error]
        self.partition = ColumnPartition()
        self.scans: dict[int, tuple[Columns, int]] = {}
        self.writer: threading.Thread | None = None
        self.staged: ColumnPartition | None = None
        self.stopping = False
        self.log: wal.SegmentWriter | None = None
        self.apply_faults = 0  # test hook (op_inject_fault "apply")
        self.trim_due = False  # a big write's temporaries are freed: return them once replied
        self.placement: dict[str, Any] = {}  # where it runs, when elsewhere (a Ray actor: node, node_ip, host)
        self.claim: int | None = None  # the shared lock on the path's owner file (see snapshot.hold_as_worker)
        # the last write call, until the next one: (seq, log offset or None, how to revert it)
        self.undo: tuple[int, int | None, Callable[[], object]] | None = None
        # command -> (its handler, which arguments stay encoded), from the protocol's table
        self.handlers: dict[str, tuple[Callable[..., Any], tuple[bool, ...]]] = {
            name: (getattr(self, f"op_{name}"), protocol.raw_flags(name)) for name in protocol.COMMANDS
        }

    # ------------------------------------------------------------ writes

    def op_write(self, seq: int, nonce: int, touched: list[Any], message: Raw) -> Any:
        """One write call: log the message as it came (one record, durable as ``log_fsync``
        says), apply it, and keep how to undo it until the coordinator moves on, so a call
        that failed on another shard is rolled back here too."""
        self.undo = None
        parts = decode_parts(message)
        op = decode_str(parts[0])
        if op not in protocol.WRITES:
            raise ValueError(f"not a write command: {op!r}")
        offset = self.log.append(seq, nonce, touched, memoryview(message)) if self.log is not None else None
        self.trim_due = self.trim_due or len(message) >= _TRIM_AFTER_BYTES
        try:
            result, revert = self._apply(self.partition, op, parts[1:])
        except BaseException as exc:
            raise _Poisoned(f"{type(exc).__name__}: {exc}") from exc
        self.undo = (seq, offset, revert)
        return result

    def _apply(
        self, partition: ColumnPartition, op: str, args: list[Any], mine: Callable[[list[Any]], list[Any]] | None = None
    ) -> tuple[Any, Callable[[], object]]:
        """Apply one write message's arguments; returns the reply and a function that undoes it.
        ``mine`` keeps only this shard's records (replaying a log written by another layout)."""
        if self.apply_faults and partition is self.partition:
            self.apply_faults -= 1
            if op == "add_columns":
                partition.add_columns(take_rows(unpack_columns(decode_bytes(args[0])), np.arange(1)))
            else:
                partition.add_ids(decode_records(args[0])[:1] if op in ("add", "upsert") else [])
            raise MemoryError("injected: out of memory while applying a write")
        if op == "add_columns":
            cols = unpack_columns(decode_bytes(args[0]))
            if mine:
                cols = take_rows(cols, shards_of_joined(cols.ids.tobytes(), self.shards) == self.shard)
            rows = partition.add_columns(cols)
            return len(rows), lambda: partition.remove(_id_list(cols.ids[rows]), [])
        if op == "add":
            with gc_paused():
                records = decode_records(args[0])
                added = partition.add_ids(mine(records) if mine else records)
            return len(added), lambda: partition.remove(added, [])
        if op == "upsert":
            with gc_paused():
                records = decode_records(args[0])
                inserted, replaced = partition.upsert_undoable(mine(records) if mine else records)
            return [len(inserted), [old.id for old in replaced]], lambda: partition.undo_upsert(inserted, replaced)
        if op == "remove":
            removed = partition.remove_columns(decode_bytes_list(args[0]), decode_str_list(args[1]))
            return _ids_msgpack(removed.ids), lambda: partition.add_columns(removed)
        if op == "clear":
            before = partition.state()
            partition.clear()
            return None, lambda: partition.restore(before)
        raise ValueError(f"not a write command: {op!r}")

    def op_undo(self, seq: int) -> bool:
        """Roll back write call ``seq`` (the last one here): memory first, then the log."""
        if self.undo is None or self.undo[0] != seq:
            return False
        _, offset, revert = self.undo
        self.undo = None
        try:
            revert()
        except BaseException as exc:
            raise _Poisoned(f"undo failed: {type(exc).__name__}: {exc}") from exc
        if offset is not None and self.log is not None:
            self.log.undo(offset)
        return True

    # ------------------------------------------------------------ reads

    def op_get(self, ids: Raw) -> list[Any]:
        return self.partition.get(decode_bytes_list(ids))

    def op_contains(self, ids: Raw) -> bytes:
        return self.partition.contains_rows(as_rows(unpack_id_rows(ids))).tobytes()

    def op_has(self, ids: Raw, names: Raw) -> list[Any]:
        """[all IDs present here, one byte per name: 1 when some user here has it]."""
        present = self.partition.contains_rows(as_rows(unpack_id_rows(ids)))
        return [bool(present.all()), self.partition.names_present(decode_str_list(names))]

    def op_find(self, ids: Raw, names: Raw) -> list[Any]:
        hits, found = self.partition.find_columns(decode_bytes_list(ids), decode_str_list(names))
        return [hits, records_msgpack(found)]

    def op_query(
        self,
        name: str | None,
        prefix: str | None,
        age_min: int,
        age_max: int,
        order_by: str | None = None,
        limit: int | None = None,
        count: bool = False,
    ) -> Any:
        """Users by exact name, name prefix and age range (nil: no such filter); with ``count``
        only how many, else their records sorted by ``order_by`` and cut to ``limit``."""
        if count:
            return self.partition.query_count(name, prefix, age_min, age_max)
        return records_msgpack(self.partition.query_columns(name, prefix, age_min, age_max, order_by, limit))

    def op_count(self) -> int:
        return len(self.partition)

    def op_stats(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "users": len(self.partition),
            "names": self.partition.name_count(),
            "pid": os.getpid(),
            **self.placement,
            "rss_bytes": _rss_bytes(),
            "open_scans": len(self.scans),
            "log": None
            if self.log is None
            else {"file": self.log.path.name, "bytes": self.log.size, "fsyncs": self.log.fsyncs, "failed": self.log.failed},
        }

    # ------------------------------------------------------------ iteration

    def op_scan_open(self, token: int) -> int:
        cut = self.partition.columns()  # a copy of the columns: later writes do not show in it
        self.scans[token] = (cut, 0)
        return cut.rows

    def op_scan_next(self, token: int, count: int) -> Raw:
        """The next ``count`` users of the cut, as records (the reply carries them one by one)."""
        cut, pos = self.scans.get(token, (empty_columns(), 0))
        chunk = records_msgpack(slice_rows(cut, pos, pos + count))
        if pos + count >= cut.rows:
            self.scans.pop(token, None)
        else:
            self.scans[token] = (cut, pos + count)
        return chunk

    def op_scan_close(self, token: int) -> None:
        self.scans.pop(token, None)

    # ------------------------------------------------------------ snapshots

    def op_snap_begin(self, path: str, level: int, mode: int, rotate: list[Any] | None = None, staged: bool = False) -> int:
        """Take the cut now and write it in a thread, so calls keep flowing meanwhile. With
        ``rotate`` the log moves on to a new segment at the cut: the snapshot covers the old
        ones. With ``staged`` the cut is of the staged partition (a load being checkpointed)."""
        if self.writer is not None and self.writer.is_alive():
            raise RuntimeError("a snapshot of this shard is already being written")
        source = self.staged if staged else self.partition
        if source is None:
            raise RuntimeError("nothing staged to write")
        if rotate is not None:
            self._open_log(*rotate)
        cut = source.columns()
        self.writer = threading.Thread(
            target=self._write, args=(Path(path), cut, level, mode), name=f"snapshot-writer-{self.shard}", daemon=True
        )
        self.writer.start()
        return cut.rows

    def _report(self, tag: str, done: int) -> None:
        """An event ``[tag, nil, users done]``: a save's or a load's progress."""
        if self.events is not None:
            try:
                self.events.send_bytes(encode([tag, None, done]))
            except OSError:
                pass  # the coordinator is gone

    def _write(self, path: Path, cut: Columns, level: int, mode: int) -> None:

        def progress(done: int) -> None:  # per block: the coordinator's liveness check and progress bar
            self._report(str(path), done)

        try:
            result = [str(path), True, snapshot.write_shard_file(path, cut, self.shard, self.shards, level, mode, progress)]
        except OSError as exc:
            result = [str(path), False, f"{path}: cannot write ({snapshot.describe_os_error(exc)})"]
        except Exception as exc:
            result = [str(path), False, f"{path}: {type(exc).__name__}: {exc}"]
        del cut
        _return_freed_memory()
        if self.events is not None:
            try:
                self.events.send_bytes(encode(result))
            except OSError:
                pass  # the coordinator is gone

    def op_load_stage(self, files: list[Any], reroute: bool, report: str | None = None) -> int:
        """Read and verify files into a staging partition; nothing changes until commit.
        With ``reroute`` (another shard count wrote them) every worker reads every file block
        by block and keeps only the users that route to it."""
        self.staged = None
        parts: list[Columns] = []
        read = 0
        for path, entry in files:
            expect = snapshot.ManifestFile(**entry)
            if not reroute and report is None:
                parts.append(read_shard_columns(Path(path), expect))
                continue
            for block in iter_any_columns(Path(path), expect):
                read += block.rows
                if reroute:
                    block = take_rows(block, shards_of_joined(block.ids.tobytes(), self.shards) == self.shard)
                parts.append(block)
                if report is not None:
                    self._report(report, read)
        self.staged = ColumnPartition.from_columns(concat_columns(parts))
        return len(self.staged)

    def op_replay(self, paths: list[Any], filters: list[Any], extents: list[Any]) -> int:
        """Replay logged write calls onto the staged partition, in sequence order.
        ``extents`` are ``[path index, start, end]``; a path whose ``filters`` entry is true was
        written by another shard layout, so only this shard's users are kept from it. Runs of
        one file are read a batch at a time and applied as they come (bounded memory)."""
        if self.staged is None:
            self.staged = ColumnPartition()
        staged, mine = self.staged, self._mine
        for k, run in groupby(extents, key=itemgetter(0)):
            spans = [(start, end) for _, start, end in run]
            keep = mine if filters[k] else None
            for _seq, payload in wal.read_records(Path(paths[k]), spans):
                parts = decode_parts(payload)
                self._apply(staged, decode_str(parts[0]), parts[1:], keep)
        return len(staged)

    def _mine(self, records: list[Any]) -> list[Any]:
        if not records:
            return records
        keep = shards_of_joined(b"".join([r.id for r in records]), self.shards) == self.shard
        return list(compress(records, keep.tolist()))

    def op_load_commit(self, log: list[Any] | None = None) -> int:
        """Swap the staged partition in; with ``log``, append to the given log from now on."""
        if self.staged is None:
            raise RuntimeError("nothing staged to commit")
        self.partition, self.staged = self.staged, None  # open scans keep their own cut
        _return_freed_memory()  # the old partition and the load's temporaries
        self.undo = None
        if log is not None:
            self._open_log(*log)
        return len(self.partition)

    def _open_log(
        self, directory: str, manifest: str, chain: str, base: int, fsync: wal.FsyncPolicy, mode: int, append: list[Any] | None = None
    ) -> None:
        """Start appending to a new segment at ``base`` (or to ``append`` = [file, offset]).
        The old writer is closed only once the new one exists: a failure keeps the old one."""
        if self.claim is None:
            self.claim = snapshot.hold_as_worker(Path(directory) / manifest)
        current = self.log
        if append is None and current is not None and current.failed is None and current.chain == chain and current.base == base:
            return  # nothing was logged since the last rotation: the current segment serves
        if append is not None:
            path = Path(directory) / append[0]
            new = wal.SegmentWriter(
                path, chain=chain, base=base, shard=self.shard, shards=self.shards, fsync=fsync, mode=mode, append_at=append[1]
            )
        else:
            path = Path(directory) / wal.segment_name(manifest, chain, base, self.shard, self.shards)
            if current is not None and current.failed is not None and current.path == path:
                current.close(sync=False)  # it holds at most the record of the call that failed
                path.unlink()
                current = None
            new = wal.SegmentWriter(path, chain=chain, base=base, shard=self.shard, shards=self.shards, fsync=fsync, mode=mode)
        self.log = new
        if current is not None:
            try:
                current.close(sync=current.failed is None)
            except LogError:
                pass  # its records up to the cut are in the snapshot being written

    def op_inject_fault(self, call: str, error: int, after: int = 0, times: int = 1) -> None:
        """Test hook: make the log's ``call`` (write, fsync, ftruncate) fail with errno ``error``
        ``times`` times after ``after`` more successful calls (a disk that fills up, then is
        freed). Only for fault-injection tests: refused unless PYDBMS_FAULT_INJECTION=1 was
        set when the worker started."""
        if os.environ.get("PYDBMS_FAULT_INJECTION") != "1":
            raise PermissionError("fault injection is a test hook: set PYDBMS_FAULT_INJECTION=1 before the DataBase starts")
        if call == "apply":  # the next ``times`` writes run out of memory half-way through
            self.apply_faults = times
            return
        original = getattr(wal, f"_{call}")
        state = {"left": after, "fail": times}

        def failing(*args: Any) -> Any:
            if state["left"] > 0 or state["fail"] <= 0:
                state["left"] -= 1
                return original(*args)
            state["fail"] -= 1
            raise OSError(error, os.strerror(error))

        setattr(wal, f"_{call}", failing)

    def op_load_abort(self) -> None:
        self.staged = None

    def op_ping(self) -> int:
        return os.getpid()

    def op_exit(self) -> None:
        if self.writer is not None:
            self.writer.join()
        if self.log is not None:
            try:
                self.log.close(sync=self.log.failed is None)
            except LogError:
                pass
        self.stopping = True

    # ------------------------------------------------------------ dispatch

    def handle(self, message: bytes) -> bytes:
        try:
            parts = decode_parts(message)
            op = decode_str(parts[0])
            if op not in self.handlers:
                raise ValueError(f"unknown command {op!r}")
            handler, raw = self.handlers[op]
            args = [part if keep else decode_any(part) for part, keep in zip(parts[1:], raw)]
            return encode([True, handler(*args)])
        except _Poisoned as exc:
            self.stopping = True  # reply, then exit: the coordinator rebuilds this shard
            return encode([False, "ShardPoisoned", str(exc), True])
        except Exception as exc:
            return encode([False, type(exc).__name__, str(exc)])


def _ids_msgpack(ids: np.ndarray) -> Raw:
    """``(n, 16)`` ID bytes as a msgpack array of 16-byte bins, written in one go."""
    rows = np.empty((len(ids), 18), dtype=np.uint8)
    rows[:, 0], rows[:, 1], rows[:, 2:] = 0xC4, 16, ids
    return pack_rows(rows)


def _id_list(ids: np.ndarray) -> list[bytes]:
    """``(n, 16)`` ID bytes as a list of 16-byte strings (undoing a batch added as columns)."""
    joined = np.ascontiguousarray(ids).tobytes()
    return [joined[i : i + 16] for i in range(0, len(joined), 16)]


def _libc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_TRIM = _libc_trim()


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system after a load, swap or save: glibc keeps
    big freed blocks (the load's temporary columns) otherwise, about 70 bytes a user at 1M."""
    if _TRIM is not None:
        _TRIM(0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def main(conn: Any, events: Any, shard: int, shards: int, watch_parent: int) -> None:
    """Entry point of a shard process. ``watch_parent`` is the coordinator's pid under ``fork``
    (a forked child inherits other pipe ends, so end-of-file alone would not tell it), else 0."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    worker = ShardWorker(shard, shards, events)
    while True:
        if watch_parent:
            while not conn.poll(_PARENT_POLL_SECONDS):
                if os.getppid() != watch_parent:
                    return
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        reply = worker.handle(message)
        try:
            conn.send_bytes(reply)
        except OSError:
            return
        if worker.stopping:
            return
        if worker.trim_due:  # after the reply: the caller does not wait for it
            worker.trim_due = False
            _return_freed_memory()
