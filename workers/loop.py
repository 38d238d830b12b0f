"""A shard process's loop: receive a command, apply it to the partition, reply.

Every request is one msgpack array ``[op, arg, ...]``; every reply ``[true, result]`` or
``[false, error type, message]``. Bulk arguments arrive still encoded and are decoded here,
so the coordinator never touches each item. The loop ends on ``exit`` or when the pipe reports
end-of-file (the coordinator is gone), so no worker outlives its DataBase.
"""

from __future__ import annotations

import os
import signal
import threading
from itertools import compress
from pathlib import Path
from typing import Any, Callable


from pydbms_shard import snapshot
from pydbms_shard.codec import (
    Raw,
    decode_any,
    decode_bytes_list,
    decode_parts,
    decode_records,
    decode_str,
    decode_str_list,
    encode,
    gc_paused,
    unpack_id_rows,
)
from pydbms_shard.routing import shards_of_joined

from .id_index import as_rows
from .partition import Partition

_PARENT_POLL_SECONDS = 0.5


class ShardWorker:
    """The state of one shard process and a handler per command."""

    def __init__(self, shard: int, shards: int, events: Any = None) -> None:
        self.shard, self.shards = shard, shards
        self.events = events  # where the snapshot writer reports: [file path, ok, entry or error]
        self.partition = Partition()
        self.scans: dict[int, tuple[list, int]] = {}
        self.writer: threading.Thread | None = None
        self.staged: Partition | None = None
        self.stopping = False
        # op name -> (handler, which arguments stay encoded: those annotated ``Raw``)
        self.handlers: dict[str, tuple[Callable[..., Any], tuple[bool, ...]]] = {}
        for name in dir(self):
            if name.startswith("op_"):
                handler = getattr(self, name)
                params = [k for k in handler.__annotations__ if k != "return"]
                raw = tuple(handler.__annotations__[k] in ("Raw", Raw) for k in params)
                self.handlers[name[3:]] = (handler, raw)

    # ------------------------------------------------------------ writes

    def op_add(self, records: Raw) -> int:
        with gc_paused():
            return self.partition.add(decode_records(records))

    def op_upsert(self, records: Raw) -> list:
        """[how many were new, the IDs that were replaced]."""
        with gc_paused():
            inserted, replaced = self.partition.upsert_detailed(decode_records(records))
        return [inserted, replaced]

    def op_remove(self, ids: Raw, names: Raw) -> list[bytes]:
        return self.partition.remove(decode_bytes_list(ids), decode_str_list(names))

    def op_clear(self) -> None:
        self.partition.clear()

    # ------------------------------------------------------------ reads

    def op_get(self, ids: Raw) -> list:
        return self.partition.get(decode_bytes_list(ids))

    def op_contains(self, ids: Raw) -> bytes:
        return self.partition.contains_rows(as_rows(unpack_id_rows(ids))).tobytes()

    def op_has(self, ids: Raw, names: Raw) -> list:
        """[all IDs present here, one byte per name: 1 when some user here has it]."""
        present = self.partition.contains_rows(as_rows(unpack_id_rows(ids)))
        return [bool(present.all()), self.partition.names_present(decode_str_list(names))]

    def op_find(self, ids: Raw, names: Raw) -> list:
        hits, records = self.partition.find(decode_bytes_list(ids), decode_str_list(names))
        return [hits, records]

    def op_count(self) -> int:
        return len(self.partition)

    def op_stats(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "users": len(self.partition),
            "names": len(self.partition.by_name),
            "pid": os.getpid(),
            "rss_bytes": _rss_bytes(),
            "open_scans": len(self.scans),
        }

    # ------------------------------------------------------------ iteration

    def op_scan_open(self, token: int) -> int:
        cut = self.partition.values()
        self.scans[token] = (cut, 0)
        return len(cut)

    def op_scan_next(self, token: int, count: int) -> list:
        cut, pos = self.scans.get(token, ([], 0))
        chunk = cut[pos : pos + count]
        if pos + count >= len(cut):
            self.scans.pop(token, None)
        else:
            self.scans[token] = (cut, pos + count)
        return chunk

    def op_scan_close(self, token: int) -> None:
        self.scans.pop(token, None)

    # ------------------------------------------------------------ snapshots

    def op_snap_begin(self, path: str, level: int, mode: int) -> int:
        """Take the cut now and write it in a thread, so calls keep flowing meanwhile."""
        if self.writer is not None and self.writer.is_alive():
            raise RuntimeError("a snapshot of this shard is already being written")
        cut = self.partition.values()
        self.writer = threading.Thread(
            target=self._write, args=(Path(path), cut, level, mode), name=f"snapshot-writer-{self.shard}", daemon=True
        )
        self.writer.start()
        return len(cut)

    def _write(self, path: Path, cut: list, level: int, mode: int) -> None:
        try:
            result = [str(path), True, snapshot.write_shard_file(path, cut, self.shard, self.shards, level, mode)]
        except OSError as exc:
            result = [str(path), False, f"{path}: cannot write ({snapshot.describe_os_error(exc)})"]
        except Exception as exc:  # reported to the coordinator, which raises SnapshotError
            result = [str(path), False, f"{path}: {type(exc).__name__}: {exc}"]
        del cut
        if self.events is not None:
            try:
                self.events.send_bytes(encode(result))
            except OSError:
                pass  # the coordinator is gone

    def op_load_stage(self, files: list, reroute: bool) -> int:
        """Read and verify files into a staging partition; nothing changes until commit.
        With ``reroute`` (another shard count wrote them) every worker reads every file block
        by block and keeps only the users that route to it."""
        self.staged = None
        records: list = []
        with gc_paused():
            for path, entry in files:
                expect = snapshot.ManifestFile(**entry)
                if not reroute:
                    records.extend(snapshot.read_shard_file(Path(path), expect))
                    continue
                for block in snapshot.iter_shard_file(Path(path), expect):
                    if block:
                        mine = shards_of_joined(b"".join([r.id for r in block]), self.shards) == self.shard
                        records.extend(compress(block, mine.tolist()))
            self.staged = Partition(records)
        return len(self.staged)

    def op_load_commit(self) -> int:
        if self.staged is None:
            raise RuntimeError("nothing staged to commit")
        self.partition, self.staged = self.staged, None  # open scans keep their own cut
        return len(self.partition)

    def op_load_abort(self) -> None:
        self.staged = None

    def op_ping(self) -> int:
        return os.getpid()

    def op_exit(self) -> None:
        if self.writer is not None:
            self.writer.join()
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
        except Exception as exc:
            return encode([False, type(exc).__name__, str(exc)])


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
