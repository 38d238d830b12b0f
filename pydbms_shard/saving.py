"""One save, from the cut to the commit, and the progress reports of saves and loads.

A save names its files (one generation, one token), asks every shard to cut its partition and
write it in a thread, waits for the writers' reports on the events pipes, then commits the
manifest; on any failure it removes what it wrote, never what the live manifest names. The
coordinator holds its lock only around :meth:`SaveSession.cut`: calls go on while shards write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from . import snapshot
from .codec import decode_any
from .errors import SnapshotError
from .protocol import request
from .shards import ShardHandle, exchange, wait_for_events

Progress = Callable[[int, int], object]
"""``progress(users done, users in all)``: called as each block of a save or load is done."""


class SaveSession:
    """One snapshot being written at ``path`` by the shards ``handles`` (see the module doc)."""

    def __init__(
        self,
        path: Path,
        handles: Sequence[ShardHandle],
        *,
        level: int,
        mode: int,
        keep: int,
        timeout: Callable[[], float],
        closing: Callable[[], bool],
        progress: Progress | None = None,
    ) -> None:
        self.path, self.handles = path, list(handles)
        self.level, self.mode, self.keep, self.timeout = level, mode, keep, timeout
        self.closing, self.progress = closing, progress
        self.generation, self.token = snapshot.next_generation(path), snapshot.new_token()
        self.names = [path.parent / snapshot.shard_file_name(path.name, self.generation, self.token, s) for s in range(len(handles))]
        self.failures: list[str] = []
        self.writing: dict[int, ShardHandle] = {}
        self.total = 0

    def cut(self, rotate: list[Any] | None, staged: bool, describe: Callable[[Exception], object] = str) -> None:
        """Every shard takes its cut now (the caller holds the lock that orders calls) and
        starts writing it; with ``rotate`` its log moves on to a new segment at the cut."""
        begun = exchange(
            self.handles,
            [request("snap_begin", str(self.names[s]), self.level, self.mode, rotate, staged) for s in range(len(self.handles))],
            return_exceptions=True,
            timeout=self.timeout(),
        )
        self.failures += [str(describe(r)) for r in begun if isinstance(r, Exception)]
        self.writing = {s: self.handles[s] for s in range(len(self.handles)) if not isinstance(begun[s], Exception)}
        self.total = sum(decode_any(r) for r in begun if not isinstance(r, Exception))

    def commit(self, log_chain: str | None, log_seq: int) -> snapshot.Manifest:
        """Wait for every writer, then commit the manifest naming their files."""
        entries = self._wait_for_writers()
        manifest = snapshot.build_manifest(self.generation, len(self.handles), entries, log_chain, log_seq)
        snapshot.commit_manifest(self.path, manifest, self.token, self.mode, self.keep)
        return manifest

    def abort(self) -> None:
        """Remove what this save wrote (never a file the live manifest names)."""
        snapshot.cleanup_failed_save(self.path, self.generation, self.token)

    def _wait_for_writers(self) -> list[snapshot.ManifestFile]:
        """Wait, without the DataBase lock, until every shard's writer has reported (also after
        one failed, so none still creates files at clean-up). A writer silent for longer than
        ``timeout()`` seconds is stopped (its worker is killed and rebuilt by the next call)."""
        entries, pending, failures = [], dict(self.writing), self.failures
        last_heard = dict.fromkeys(pending, time.monotonic())
        done = dict.fromkeys(pending, 0)
        while pending:
            if self.closing():
                failures.append("the DataBase was closed during the save")
                break
            now, timeout = time.monotonic(), self.timeout()  # closing the DataBase shortens it
            for s in [s for s in pending if now - last_heard[s] > timeout]:
                pending.pop(s).kill("its snapshot writer did not report within the call_timeout and was killed")
                failures.append(f"shard {s}: its snapshot writer made no progress for {timeout:g} s")
            # the handles of the cut: a worker rebuilt meanwhile has no writer of this save
            for handle, event in wait_for_events(list(pending.values()), 1.0):
                if isinstance(event, Exception):
                    failures.append(str(event))
                    pending.pop(handle.index, None)
                    continue
                file_name, ok, detail = event
                if file_name != str(self.names[handle.index]):
                    continue  # a report from an earlier save that gave up waiting
                last_heard[handle.index] = time.monotonic()
                if ok is None:  # a block is written: the writer is alive and writing
                    done[handle.index] = int(detail)
                    self._report(sum(done.values()))
                    continue
                pending.pop(handle.index, None)
                if ok:
                    entry = msgspec.convert(detail, snapshot.ManifestFile)
                    entries.append(entry)
                    done[handle.index] = entry.users
                    self._report(sum(done.values()))
                else:
                    failures.append(f"shard {handle.index}: {detail}")
        if failures:
            raise SnapshotError(f"{self.path}: save failed: " + "; ".join(failures))
        return entries

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(min(done, self.total), self.total)


class LoadProgress:
    """Forwards the per-block reports of workers staging a load to ``progress``, from a thread
    that reads the events pipes while the coordinator waits for the replies."""

    TAG = "load-progress"

    def __init__(self, handles: Sequence[ShardHandle], total: int, progress: Progress) -> None:
        self.handles, self.total, self.progress = list(handles), total, progress
        self.done = dict.fromkeys(range(len(self.handles)), 0)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pydbms-load-progress", daemon=True)

    def __enter__(self) -> LoadProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        while self._drain(0.0):  # reports sent just before the replies
            pass

    def _run(self) -> None:
        while not self.stopped.is_set():
            self._drain(0.2)

    def _drain(self, timeout: float) -> int:
        """Handle the reports that arrive within ``timeout``; returns how many events came."""
        live = [h for h in self.handles if not h.events.closed and h.alive]
        if not live:
            self.stopped.wait(timeout)
            return 0
        events = wait_for_events(live, timeout)
        for handle, event in events:
            if isinstance(event, Exception) or not isinstance(event, list) or event[:2] != [self.TAG, None]:
                continue  # a death is the reply's to report; other events are a save's
            self.done[handle.index] = int(event[2])
            self.progress(min(sum(self.done.values()), self.total), self.total)
        return len(events)
