"""The coordinator's handles on its shard workers: start, talk, notice death, stop.

:class:`ShardHandle` is the interface the coordinator sees, whatever runs the worker (the
``backend`` setting): :class:`ProcessShard` is a worker process started with ``multiprocess``
on this machine (``local``), ``ray_shards.RayShard`` a Ray actor anywhere in a Ray cluster
(``ray``). :func:`start_shard` starts one for a config. ``exchange`` is the one way messages
travel: send every shard its message first, then collect every reply, so the shards work at
the same time. A dead worker surfaces as ``ShardError`` naming the shard, at once (end-of-file
on its pipe, the actor's death), never as a hang. ``wait_for_events`` (the snapshot writers'
reports) and :class:`Liveness` (which workers ended) ask the backend of the handles.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import multiprocess
import multiprocess.connection
import multiprocess.spawn

from .codec import decode_any, decode_parts
from .errors import ShardError
from .protocol import request

if TYPE_CHECKING:
    from .config import Config

_LIVENESS_POLL_SECONDS = 0.25
_JOIN_SECONDS = 5.0


_starting = threading.local()
_original_preparation_data = multiprocess.spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    """What a spawned or forkserver child prepares itself with, minus the user's ``__main__``
    when a shard starts: a worker needs only this package, and re-running the user's script
    in the child would start databases inside it (the original's examples have no main guard)."""
    data: dict[str, Any] = _original_preparation_data(name)  # multiprocess is untyped
    if getattr(_starting, "shard", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


multiprocess.spawn.get_preparation_data = _preparation_data


_preloaded = False


def _context(start_method: str) -> Any:
    """The process context; the forkserver imports the worker's modules once, so a worker
    forked from it starts without importing numpy, msgspec and this package again."""
    global _preloaded
    context = multiprocess.get_context(start_method)
    if start_method == "forkserver" and not _preloaded:
        context.set_forkserver_preload(["pydbms_shard.workers.loop"])
        _preloaded = True
    return context


class Watcher(Protocol):
    """A backend's way of telling which of its workers have ended, without asking them."""

    def dead(self, handles: Sequence[ShardHandle]) -> list[ShardHandle]: ...


class ShardHandle:
    """One shard worker as the coordinator sees it, whatever runs it (see the module doc).

    The bookkeeping is shared: ``dead`` (why it can no longer be used, or None), ``timed_out``
    and ``unanswered`` (requests sent whose replies are not read yet: a call interrupted
    half-way leaves replies that the next send reads and drops). A backend supplies the rest:
    ``_send_bytes``/``_recv_bytes`` (raising ShardError when the worker is gone, killing it past
    a deadline), ``alive``, ``pid``, ``kill``, ``stop``, ``events`` (``.closed`` once stopped),
    ``death_reason`` and, for the handles of its kind, ``wait_events`` and ``watcher``."""

    backend: ClassVar[str] = "?"
    events: Any  # where the worker's snapshot writer reports; ``events.closed`` once stopped

    def __init__(self, index: int) -> None:
        self.index = index
        self.dead: str | None = None
        self.timed_out = False
        self.unanswered = 0  # requests sent whose replies are not read yet

    # ------------------------------------------------ the backend's part

    @property
    def pid(self) -> int | None:
        """The worker's OS process id (on its own node for a remote backend)."""
        raise NotImplementedError

    @property
    def node(self) -> str | None:
        """Where the worker runs, for a backend that runs workers elsewhere (None: here)."""
        return None

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def death_reason(self) -> str:
        """Why the worker ended, as far as the backend knows (for a worker found dead)."""
        return f"worker process {self.pid} died"

    def _send_bytes(self, message: bytes) -> None:
        raise NotImplementedError

    def _recv_bytes(self, deadline: float | None) -> bytes:
        raise NotImplementedError

    def kill(self, why: str) -> None:
        """Kill the worker at once (a stuck or stopped one too) and mark the handle dead."""
        raise NotImplementedError

    def stop(self, patience: float = _JOIN_SECONDS) -> None:
        """Ask the worker to exit, then make sure it has within about ``patience`` seconds:
        a stopped or stuck worker is killed, so closing never hangs."""
        raise NotImplementedError

    @classmethod
    def wait_events(cls, handles: Sequence[ShardHandle], timeout: float) -> list[tuple[ShardHandle, Any]]:
        """``wait_for_events`` for handles of this backend."""
        raise NotImplementedError

    @classmethod
    def watcher(cls) -> Watcher:
        """A :class:`Watcher` for handles of this backend."""
        raise NotImplementedError

    # ------------------------------------------------ shared

    def _out_of_step(self) -> None:
        self.dead = "a call was interrupted half-way through a message; the pipe is out of step (close and reopen)"

    def send(self, message: bytes) -> None:
        if self.dead:
            raise ShardError(self.index, self.dead)
        while self.unanswered:  # replies of a call that was interrupted: read and drop them
            self.recv()
        try:
            self._send_bytes(message)
        except ShardError:
            raise
        except BaseException:
            self._out_of_step()
            raise
        self.unanswered += 1

    def recv(self, deadline: float | None = None) -> list[Any]:
        """The decoded reply parts ``[ok, ...]``. Past ``deadline`` (a ``time.monotonic()``
        value) the worker is killed and ShardError says it timed out."""
        data = self._recv_bytes(deadline)
        self.unanswered -= 1
        return decode_parts(data)

    def ensure_gone(self) -> None:
        """Kill and reap the worker if it still runs, keeping what was said about its death."""
        why = self.dead
        self.kill(why or "stopped after a failed call")


def start_shard(index: int, shards: int, config: Config) -> ShardHandle:
    """Start worker ``index`` of ``shards`` on the configured backend (it answers once started)."""
    if config.backend == "ray":
        from .ray_shards import RayShard

        return RayShard(index, shards, config)
    return ProcessShard(index, shards, config.start_method)


class Liveness:
    """Which workers have ended, asked of each backend's watcher (kept per backend: a local
    one keeps its poll set between calls)."""

    def __init__(self) -> None:
        self._watchers: dict[type[ShardHandle], Watcher] = {}

    def dead(self, handles: Sequence[ShardHandle]) -> list[ShardHandle]:
        known: list[ShardHandle] = []
        for kind, group in _by_backend(handles).items():
            watcher = self._watchers.get(kind)
            if watcher is None:
                watcher = self._watchers[kind] = kind.watcher()
            known += watcher.dead(group)
        return known


def _by_backend(handles: Sequence[ShardHandle]) -> dict[type[ShardHandle], list[ShardHandle]]:
    groups: dict[type[ShardHandle], list[ShardHandle]] = {}
    for h in handles:
        groups.setdefault(type(h), []).append(h)
    return groups


class _SentinelLiveness:
    """Which worker processes have ended, in one system call: a process's sentinel becomes
    readable when it ends. The poll set is built once per set of handles (a rebuilt shard renews it)."""

    def __init__(self) -> None:
        self._handles: tuple[ShardHandle, ...] = ()
        self._poller = select.poll()  # not select(): descriptors above 1023 are fine
        self._by_fd: dict[int, ShardHandle] = {}

    def dead(self, handles: Sequence[ShardHandle]) -> list[ShardHandle]:
        if tuple(handles) != self._handles:
            self._handles = tuple(handles)
            self._poller = select.poll()
            self._by_fd = {}
            for h in handles:
                if not h.dead and isinstance(h, ProcessShard):
                    self._by_fd[h.process.sentinel] = h
                    self._poller.register(h.process.sentinel, select.POLLIN)
        known = [h for h in handles if h.dead]
        for fd, _ in self._poller.poll(0):
            found = self._by_fd.get(fd)
            if found is not None and found not in known:
                known.append(found)
        return known


class ProcessShard(ShardHandle):
    """One worker process on this machine (``multiprocess``) and the coordinator's end of its pipe."""

    backend = "local"

    def __init__(self, index: int, shards: int, start_method: str) -> None:
        from .workers.loop import main  # the worker's entry point, importable in the child

        super().__init__(index)
        context = _context(start_method)
        self.conn, child_conn = context.Pipe(duplex=True)
        # the worker's snapshot writer reports on its own pipe, so a save is awaited without
        # holding the DataBase lock or asking the worker anything
        self.events, child_events = context.Pipe(duplex=False)
        watch_parent = os.getpid() if start_method == "fork" else 0
        self.process = context.Process(
            target=main, args=(child_conn, child_events, index, shards, watch_parent), name=f"pydbms-shard-{index}", daemon=True
        )
        _starting.shard = True
        try:
            self.process.start()
        except BaseException:
            for end in (self.conn, child_conn, self.events, child_events):
                end.close()
            raise
        finally:
            _starting.shard = False
        child_conn.close()  # only the worker holds its ends now: its death means EOF here
        child_events.close()

    @property
    def pid(self) -> int | None:
        pid: int | None = self.process.pid  # multiprocess is untyped
        return pid

    def death_reason(self) -> str:
        return f"worker process {self.pid} died (exit code {self.process.exitcode})"

    def _died(self, how: str) -> ShardError:
        code = self.process.exitcode
        if code is None:
            self.process.join(0.2)
            code = self.process.exitcode
        self.dead = f"worker process {self.pid} {how} (exit code {code})"
        return ShardError(self.index, self.dead)

    def _send_bytes(self, message: bytes) -> None:
        try:
            self.conn.send_bytes(message)
        except (OSError, ValueError):
            raise self._died("is gone") from None

    def kill(self, why: str) -> None:
        """SIGKILL the worker (it works on a stopped process too) and mark the handle dead."""
        try:
            if self.process.pid is not None and self.process.is_alive():
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.join(_JOIN_SECONDS)
        except (OSError, ValueError, AssertionError):
            pass
        self.dead = why

    @property
    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()

    def _recv_bytes(self, deadline: float | None) -> bytes:
        try:
            while not self.conn.poll(
                _LIVENESS_POLL_SECONDS if deadline is None else max(0.0, min(_LIVENESS_POLL_SECONDS, deadline - time.monotonic()))
            ):
                if not self.process.is_alive():
                    raise self._died("died")
                if deadline is not None and time.monotonic() >= deadline:
                    self.timed_out = True
                    self.kill(f"worker process {self.pid} did not answer in time and was killed")
                    raise ShardError(
                        self.index, f"timed out: worker process {self.pid} did not answer within the call_timeout, so it was killed"
                    )
        except (EOFError, OSError):
            raise self._died("died") from None
        try:
            data: bytes = self.conn.recv_bytes()
        except (EOFError, OSError):
            raise self._died("died") from None
        except BaseException:
            self._out_of_step()
            raise
        return data

    def stop(self, patience: float = _JOIN_SECONDS) -> None:
        deadline = time.monotonic() + patience
        if not self.dead and self.process.is_alive():
            try:
                while self.unanswered:
                    self.recv(deadline)
                self.conn.send_bytes(request("exit"))
                self.conn.poll(max(0.0, deadline - time.monotonic())) and self.conn.recv_bytes()
            except (OSError, EOFError, ValueError, ShardError):
                pass
        try:
            self.conn.close()
            self.events.close()
        except OSError:
            pass
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.kill("closed")
        self.dead = self.dead or "closed"

    @classmethod
    def watcher(cls) -> Watcher:
        return _SentinelLiveness()

    @classmethod
    def wait_events(cls, handles: Sequence[ShardHandle], timeout: float) -> list[tuple[ShardHandle, Any]]:
        out: list[tuple[ShardHandle, Any]] = []
        mine = [h for h in handles if isinstance(h, ProcessShard)]
        for h in mine:
            if h.events.closed:  # stopped meanwhile (rebuilt by another call): its writer is gone
                out.append((h, ShardError(h.index, h.dead or "its worker was stopped during the save")))
        if out:
            return out
        by_conn = {h.events: h for h in mine}
        by_sentinel = {h.process.sentinel: h for h in mine}
        try:
            ready = multiprocess.connection.wait([*by_conn, *by_sentinel], timeout)
        except (OSError, ValueError):
            return []  # a handle was closed by another thread just now: the next look reports it
        for item in ready:
            if item in by_conn:
                handle = by_conn[item]
                try:
                    out.append((handle, decode_any(handle.events.recv_bytes())))
                except (EOFError, OSError):
                    out.append((handle, handle._died("died")))
        for item in ready:
            dead = by_sentinel.get(item)
            if dead is not None and not any(h is dead for h, _ in out):
                out.append((dead, dead._died("died")))
        return out


def wait_for_events(handles: Sequence[ShardHandle], timeout: float) -> list[tuple[ShardHandle, Any]]:
    """Event messages from the handles' workers (decoded), or ``(handle, ShardError)`` for a
    worker that died; empty after ``timeout`` seconds of silence. Each backend is asked for
    its own handles (the wait is shared between backends when they are mixed)."""
    groups = _by_backend(handles)
    if len(groups) <= 1:
        return next(iter(groups)).wait_events(handles, timeout) if groups else []
    out: list[tuple[ShardHandle, Any]] = []
    for kind, group in groups.items():
        out += kind.wait_events(group, 0.0 if out else timeout / len(groups))
    return out


class ShardFailure(ShardError):
    """A worker answered with an error (its type name and message). ``restart``: the worker
    is exiting because its memory can no longer be trusted."""

    def __init__(self, shard: int, kind: str, message: str, restart: bool = False) -> None:
        super().__init__(shard, f"{kind}: {message}")
        self.kind, self.message, self.restart = kind, message, restart


def exchange(
    handles: Sequence[ShardHandle], messages: Sequence[bytes | None], return_exceptions: bool = False, timeout: float | None = None
) -> list[Any]:
    """Send each handle its message (None: skip), then collect every reply's result part
    (still encoded). Raises the first ShardError or ShardFailure once all replies are in,
    or with ``return_exceptions`` puts each shard's exception in its place instead. A worker
    silent for ``timeout`` seconds is killed (ShardError)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    sent = []
    results: list[Any] = [None] * len(handles)
    for handle, message in zip(handles, messages):
        if message is None:
            continue
        try:
            handle.send(message)
            sent.append(handle)
        except ShardError as exc:
            results[handle.index] = exc
    for handle in sent:
        try:
            reply = handle.recv(deadline)
        except ShardError as exc:
            results[handle.index] = exc
            continue
        if decode_any(reply[0]) is True:
            results[handle.index] = reply[1]
        else:
            restart = len(reply) > 3 and decode_any(reply[3]) is True
            results[handle.index] = ShardFailure(handle.index, decode_any(reply[1]), decode_any(reply[2]), restart)
            if restart:
                handle.dead = f"worker process {handle.pid} exited after a failed write ({decode_any(reply[2])})"
    if not return_exceptions:
        for result in results:
            if isinstance(result, Exception):
                raise result
    return results
