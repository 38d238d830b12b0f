"""Shard workers as Ray actors (``backend: ray``): the same protocol, anywhere in a Ray cluster.

Each shard is one :class:`ShardActor` holding a ``ShardWorker`` (``workers/loop.py``) and
answering the same protocol messages as bytes. The actor has three concurrency groups: the
default one (one thread: calls run one at a time, in order), ``events`` (the coordinator's
long poll for the snapshot writer's reports, answered while calls go on) and ``watch`` (a call
that never returns: its result turns into an error the moment the actor dies, which is how
:class:`RayWatcher` tells dead shards without asking them).

Ray's own restarts are off (``max_restarts=0``): a dead actor surfaces as ``ShardError`` and
the coordinator heals the shard as for a dead process, through ``start_shard``: a new actor
(placed by Ray wherever the shard's resources fit) rebuilt from the snapshot and log beside
``snapshot_path``, which must therefore be on a file system every node reaches.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .codec import decode_any, encode
from .errors import ConfigError, ShardError
from .protocol import request
from .shards import ShardHandle, Watcher

try:
    import ray
    import ray.exceptions
    import ray.util.scheduling_strategies
except ImportError:  # pragma: no cover - the config refuses backend: ray without Ray
    raise ConfigError("backend 'ray' needs Ray, which is not installed: pip install pydbms-shard[ray]") from None

if TYPE_CHECKING:
    from .config import Config

_EVENT_POLL_SECONDS = 10.0  # how long one long poll for events waits in the actor
_GET_SLICE_SECONDS = 1.0  # a wait for a reply is sliced so that Ctrl-C gets through
_JOIN_SECONDS = 5.0
_OWED_SECONDS = 5.0  # how long a look for events waits for those sent before a reply already read
_INFO_SECONDS = 30.0

_connect_lock = threading.Lock()
_events_lock = threading.Lock()  # one taker per events reply, when threads wait on the same shards


def connect(config: Config) -> None:
    """Join the configured Ray (``ray_address``), unless this program already did: null starts
    a local Ray (or uses the one ``RAY_ADDRESS`` names, as ``ray.init()`` does)."""
    with _connect_lock:
        if ray.is_initialized():
            return
        try:
            ray.init(address=config.ray_address, log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = config.ray_address or "a local Ray"
            raise ConfigError(f"key 'ray_address': cannot connect to {where}: {exc}") from None


def _node_ip() -> str:
    get: Any = ray.util.get_node_ip_address  # untyped
    return str(get())


def _here(info: dict[str, Any]) -> bool:
    """Whether the actor runs on this program's own Ray node (its pid is a process here)."""
    if not isinstance(info.get("pid"), int) or info.get("host") != socket.gethostname():
        return False
    try:
        return bool(info.get("node") == ray.get_runtime_context().get_node_id())
    except Exception:  # a Ray Client program has no node of its own
        return False


class _EventQueue:
    """What the worker's snapshot writer sends its reports to (it needs only ``send_bytes``):
    a thread-safe queue the coordinator's long poll (``ShardActor.next_events``) drains."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.sent = 0  # every reply carries this: the events sent before it are owed to the coordinator
        self.lock = threading.Lock()

    def send_bytes(self, data: bytes) -> None:
        with self.lock:
            self.queue.put(bytes(data))
            self.sent += 1

    def take(self, timeout: float) -> list[bytes]:
        try:
            out = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out


class ShardActor:
    """One shard in a Ray worker process (decorated with ``ray.remote`` below)."""

    def __init__(self, shard: int, shards: int) -> None:
        from .workers.loop import ShardWorker

        self.events = _EventQueue()
        self.worker = ShardWorker(shard, shards, self.events)
        context = ray.get_runtime_context()
        self.where = {"node": context.get_node_id(), "node_ip": _node_ip(), "host": socket.gethostname()}
        self.worker.placement = dict(self.where)
        self.ended = threading.Event()

    def info(self) -> dict[str, Any]:
        """The actor's OS pid and where it runs."""
        return {"pid": os.getpid(), **self.where}

    def handle(self, message: bytes) -> tuple[bytes, int]:
        """The reply, and how many events were sent before it (see ``RayShard.wait_events``)."""
        if self.worker.stopping:  # it exits (the coordinator kills it after the reply that said so)
            return encode([False, "ShardError", "this shard worker has stopped"]), self.events.sent
        reply = self.worker.handle(message)
        return reply, self.events.sent

    @ray.method(concurrency_group="events")
    def next_events(self, timeout: float) -> list[bytes]:
        """The writer's reports, waiting up to ``timeout`` seconds for the first one."""
        return self.events.take(timeout)

    @ray.method(concurrency_group="watch")
    def watch(self) -> None:
        """Never returns while the actor lives: the caller's reference fails when it dies."""
        self.ended.wait()


_remote: Any = ray.remote  # its overloads do not name the options of an actor class
_RemoteShardActor: Any = _remote(concurrency_groups={"events": 1, "watch": 1})(ShardActor)


class _Events:
    """The handle's side of the events channel: only ``closed`` is looked at from outside."""

    def __init__(self) -> None:
        self.closed = False
        self.pending: Any = None  # the long poll in flight (an ObjectRef), kept until it is read
        self.owed = 0  # events the worker sent before its last reply read here
        self.received = 0

    @property
    def behind(self) -> bool:
        """Events sent before a reply the coordinator has read are still on their way: a look
        for events waits for them, so that (as with a pipe) they are seen once the reply is."""
        return self.received < self.owed


class RayShard(ShardHandle):
    """One shard as a Ray actor and the coordinator's pending calls to it."""

    backend = "ray"

    def __init__(self, index: int, shards: int, config: Config) -> None:
        super().__init__(index)
        connect(config)
        options: dict[str, Any] = {
            "max_restarts": 0,  # the coordinator rebuilds a dead shard from its snapshot and log
            "max_task_retries": 0,
            "num_cpus": config.ray_num_cpus_per_shard,
            "resources": dict(config.ray_resources_per_shard or {}),
        }
        if config.ray_placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        self._needs = {"num_cpus": config.ray_num_cpus_per_shard, "resources": options["resources"]}
        self._start_timeout = config.ray_start_timeout
        self.actor: Any = _RemoteShardActor.options(**options).remote(index, shards)
        self._info_ref: Any = self.actor.info.remote()
        self._info: dict[str, Any] | None = None
        self._watch: Any = self.actor.watch.remote()
        self._pending: list[Any] = []
        self.events = _Events()

    # ------------------------------------------------ where it runs

    def info(self, timeout: float = _INFO_SECONDS) -> dict[str, Any]:
        """``{pid, node, node_ip, host}`` of the actor ({} when it never started)."""
        if self._info is None:
            if self._info_ref is None:
                return {}
            try:
                self._info = dict(ray.get(self._info_ref, timeout=timeout))
            except ray.exceptions.RayError:
                return {}
        return self._info

    @property
    def pid(self) -> int | None:
        pid = self.info().get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def node(self) -> str | None:
        node = self.info(0.0 if self.dead else _INFO_SECONDS).get("node")
        return node if isinstance(node, str) else None

    def _name(self) -> str:
        info = self.info(0.0 if self.dead else _INFO_SECONDS)
        if not info:
            return "shard actor (not started)"
        return f"shard actor (pid {info['pid']} on node {info['node_ip']} {info['node'][:12]})"

    def death_reason(self) -> str:
        return f"{self._name()} died"

    def _died(self, how: str, exc: BaseException | None = None) -> ShardError:
        cause = f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" if exc is not None else ""
        self.dead = f"{self._name()} {how}{cause}"
        self._kill_actor()  # not restartable anyway; make sure nothing of it runs on
        return ShardError(self.index, self.dead)

    # ------------------------------------------------ calls

    def _send_bytes(self, message: bytes) -> None:
        try:
            self._pending.append(self.actor.handle.remote(message))
        except ray.exceptions.RayError as exc:
            raise self._died("is gone", exc) from None

    def _started(self) -> float:
        """Wait until the actor runs (Ray places it and starts its process: seconds, or longer
        while a cluster adds a node); returns how long that took, which a call's deadline does
        not count. An actor that does not start within ``ray_start_timeout`` is given up."""
        if self._info is not None:
            return 0.0
        began = time.monotonic()
        try:
            self._info = dict(ray.get(self._info_ref, timeout=self._start_timeout))
        except ray.exceptions.GetTimeoutError:
            self.timed_out = True
            self.kill(f"shard actor did not start within {self._start_timeout:g} s")
            raise ShardError(
                self.index,
                f"timed out: its Ray actor did not start within ray_start_timeout ({self._start_timeout:g} s); "
                f"does a live node offer what it needs (num_cpus {self._needs['num_cpus']:g}, resources {self._needs['resources']})?",
            ) from None
        except ray.exceptions.RayError as exc:
            raise self._died("died while starting", exc) from None
        return time.monotonic() - began

    def _recv_bytes(self, deadline: float | None) -> bytes:
        ref = self._pending[0]
        waited = self._started()
        if deadline is not None:
            deadline += waited
        while True:
            wait = _GET_SLICE_SECONDS if deadline is None else max(0.0, min(_GET_SLICE_SECONDS, deadline - time.monotonic()))
            try:
                data = ray.get(ref, timeout=wait)
                break
            except ray.exceptions.GetTimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    self.timed_out = True
                    self.kill(f"{self._name()} did not answer in time and was killed")
                    raise ShardError(
                        self.index, f"timed out: {self._name()} did not answer within the call_timeout, so it was killed"
                    ) from None
            except ray.exceptions.RayError as exc:  # the actor died (killed, its node lost, ...)
                raise self._died("died", exc) from None
        self._pending.pop(0)
        if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], bytes)):
            raise self._died("answered something that is not a reply")
        self.events.owed = max(self.events.owed, int(data[1]))
        reply: bytes = data[0]
        return reply

    @property
    def alive(self) -> bool:
        if self.dead:
            return False
        ready, _ = ray.wait([self._watch], timeout=0)
        return not ready

    # ------------------------------------------------ ending

    def _kill_actor(self) -> None:
        if not ray.is_initialized() or self.actor is None:
            return
        try:
            ray.kill(self.actor, no_restart=True)
        except (ray.exceptions.RayError, ValueError):
            pass

    def _wait_gone(self, patience: float) -> None:
        """Until Ray reports the actor dead and, when it ran on this machine, its process is gone
        (so no write of it can still reach the log when the shard is rebuilt)."""
        deadline = time.monotonic() + patience
        if not ray.is_initialized() or self._watch is None:
            return
        ray.wait([self._watch], timeout=max(0.0, patience))
        info = self.info(0.0)
        if not _here(info):
            return
        while time.monotonic() < deadline:
            try:
                os.kill(info["pid"], 0)
            except ProcessLookupError:
                return
            except OSError:
                return
            time.sleep(0.01)

    def kill(self, why: str) -> None:
        self._kill_actor()
        info = self.info(0.0)
        if _here(info):
            try:  # on this machine: at once, as for a worker process (Ray asks a stopped process in vain)
                os.kill(info["pid"], signal.SIGKILL)
            except OSError:
                pass
        self._wait_gone(_JOIN_SECONDS)
        self.dead = why

    def stop(self, patience: float = _JOIN_SECONDS) -> None:
        deadline = time.monotonic() + patience
        if not ray.is_initialized():  # Ray was shut down first (at exit): its actors went with it
            self.events.closed = True
            self.dead = self.dead or "closed"
            self._release()
            return
        if not self.dead:
            try:
                while self.unanswered:
                    self.recv(deadline)
                ref = self.actor.handle.remote(request("exit"))  # closes its log (the reply is not looked at)
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (ray.exceptions.RayError, ShardError):
                pass
        self._kill_actor()
        self._wait_gone(max(0.0, deadline - time.monotonic()))
        self.events.closed = True
        self.dead = self.dead or "closed"
        self._release()

    def _release(self) -> None:
        """Drop every Ray reference of a stopped shard now: one dropped later (by the garbage
        collector) would count against a new Ray session's actor or object of the same ID."""
        self.info(0.0)
        self.actor = self._watch = self._info_ref = self.events.pending = None
        self._pending.clear()

    # ------------------------------------------------ for all the Ray handles

    @classmethod
    def watcher(cls) -> Watcher:
        return RayWatcher()

    @classmethod
    def wait_events(cls, handles: Sequence[ShardHandle], timeout: float) -> list[tuple[ShardHandle, Any]]:
        mine = [h for h in handles if isinstance(h, RayShard)]
        out: list[tuple[ShardHandle, Any]] = [
            (h, ShardError(h.index, h.dead or "its worker was stopped during the save")) for h in mine if h.events.closed
        ]
        if out or not mine:
            return out
        by_ref: dict[Any, RayShard] = {}
        with _events_lock:
            for h in mine:
                if h.events.pending is None:
                    h.events.pending = h.actor.next_events.remote(min(_EVENT_POLL_SECONDS, max(timeout, 0.1)))
                by_ref[h.events.pending] = h
        refs = list(by_ref)
        if any(h.events.behind for h in mine):
            timeout = max(timeout, _OWED_SECONDS)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        with _events_lock:
            for ref in ready:
                h = by_ref[ref]
                if h.events.pending is not ref:
                    continue  # another thread took this reply
                h.events.pending = None
                try:
                    batch = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    out.append((h, h._died("died", exc)))
                    continue
                h.events.received += len(batch)
                out += [(h, decode_any(item)) for item in batch]
        return out


class RayWatcher:
    """Dead actors in one ``ray.wait``: each shard's ``watch`` call resolves only when it dies."""

    def dead(self, handles: Sequence[ShardHandle]) -> list[ShardHandle]:
        known = [h for h in handles if h.dead]
        live = {h._watch: h for h in handles if isinstance(h, RayShard) and not h.dead}
        if live:
            ready, _ = ray.wait(list(live), num_returns=len(live), timeout=0)
            for ref in ready:
                h = live[ref]
                try:
                    ray.get(ref, timeout=0)
                    h.dead = f"{h._name()} ended"
                except ray.exceptions.RayError as exc:
                    h._died("died", exc)
                known.append(h)
        return known
