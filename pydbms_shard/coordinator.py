"""DataBase: the coordinator. It validates each batch whole, splits it by shard, sends one
message per shard, and merges the replies. Per-item work happens in the workers or in C
(msgspec, numpy); the coordinator does per-batch work."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import signal
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import msgspec
import numpy as np

from . import readable, recovery, snapshot
from .autosave import AutoSaver, ScheduleEnded
from .cache import ReadCache
from .codec import (
    Raw,
    array_header,
    decode_any,
    decode_find_reply,
    decode_optional_users,
    decode_users,
    encode,
    encode_ids,
    gc_paused,
    id_bytes_of_rows,
    pack_columns,
    pack_rows,
    users_to_columns,
)
from .config import MAX_AUTOSAVE_INTERVAL, MIN_CHECKPOINT_BYTES, Config, load_config
from .errors import (
    ClosedError,
    ConfigError,
    LogWriteError,
    PydbmsError,
    PydbmsTypeError,
    PydbmsValueError,
    ReadOnlyError,
    ShardError,
    SnapshotError,
)
from .protocol import request, write_message, write_request
from .routing import HASH_SCHEME, shard_of, shards_of, split_positions
from .saving import LoadProgress, Progress, SaveSession
from .shards import Liveness, ShardFailure, ShardHandle, exchange, start_shard
from .user import User, _check_text, check_id
from .workers.columnar import take_rows

_ID = attrgetter("ID")
_EMPTY_LIST = encode([])
_CLOSE_PATIENCE = 2.0  # seconds close() waits for a call in flight before it stops the workers

log = logging.getLogger("pydbms_shard")


class _Batch:
    """A validated batch of queries: IDs (encoded once, routed by shard) and names."""

    __slots__ = ("encoded_names", "id_pos", "ids", "name_pos", "names", "per_shard", "rows")

    def __init__(
        self,
        ids: list[uuid.UUID],
        id_pos: np.ndarray | None,
        names: list[str],
        name_pos: np.ndarray | None,
        shards: int,
        rows: np.ndarray | None = None,
    ) -> None:
        self.ids, self.names = ids, names
        self.id_pos, self.name_pos = id_pos, name_pos  # None: positions 0..n-1
        if rows is None and ids:
            rows = encode_ids(ids)  # every item is a UUID here: it cannot fail
        self.rows = rows
        if self.rows is None:
            self.per_shard = [np.empty(0, dtype=np.intp)] * shards
        elif shards == 1:
            self.per_shard = [np.arange(len(ids), dtype=np.intp)]
        else:
            self.per_shard = split_positions(shards_of(id_bytes_of_rows(self.rows), shards), shards)
        try:
            self.encoded_names = Raw(encode(names)) if names else Raw(_EMPTY_LIST)
        except UnicodeEncodeError:
            for k, name in enumerate(names):
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    at = k if name_pos is None else int(name_pos[k])
                    raise PydbmsValueError(f"item {at} is not valid Unicode text (a lone surrogate): {name!r:.80}") from None
            raise

    def ids_for(self, shard: int) -> Raw:
        """The shard's IDs as one encoded msgpack array, cut out of the batch's encoding."""
        pos = self.per_shard[shard]
        if self.rows is None or len(pos) == 0:
            return Raw(_EMPTY_LIST)
        if len(pos) == len(self.rows):
            return pack_rows(self.rows)
        return pack_rows(self.rows[pos])

    def query_positions(self, shard: int) -> np.ndarray:
        """Batch positions of the shard's queries: its IDs, then every name."""
        pos = self.per_shard[shard]
        id_part = pos if self.id_pos is None else self.id_pos[pos]
        if not self.names:
            return id_part
        name_part = np.arange(len(self.names), dtype=np.intp) if self.name_pos is None else self.name_pos
        return np.concatenate([id_part, name_part])


def _as_list(items: Any, call: str) -> list[Any]:
    if isinstance(items, list):
        return items
    if isinstance(items, (str, bytes, User, uuid.UUID, Mapping)) or not isinstance(items, Iterable):
        raise PydbmsTypeError(f"{call}() takes a list, got {type(items).__name__}: {items!r:.80}")
    return list(items)


def _subset(items: list[Any], positions: np.ndarray) -> list[Any]:
    """``items`` at ascending, distinct ``positions`` (a shard's share of a batch)."""
    return items if len(positions) == len(items) else _take(items, positions)


def _take(items: list[Any], positions: np.ndarray) -> list[Any]:
    """``items`` at ``positions``, in that order."""
    if len(positions) == 0:
        return []
    if len(positions) == 1:
        return [items[int(positions[0])]]
    return list(itemgetter(*positions.tolist())(items))


class _CtrlCDeferred:
    """Holds Ctrl-C back until the outermost call on the main thread is done: a call
    interrupted between its messages and their replies would leave shards changed behind the
    coordinator's back. Python's default SIGINT handler is replaced, once, by one that acts
    exactly like it when no call is in flight; a handler of the user's own is left alone."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = True
        else:
            signal.default_int_handler(signum, frame)

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._on_sigint)
            self.depth += 1

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread() is threading.main_thread():
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise KeyboardInterrupt


_ctrl_c = _CtrlCDeferred()

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[DataBase, _P], _R]) -> Callable[Concatenate[DataBase, _P], _R]:
    """Run the method as one call (see ``DataBase._call``). ``functools.wraps`` keeps its
    name, docstring and signature for ``help()``, ``inspect`` and type checkers."""

    @functools.wraps(method)
    def wrapper(self: DataBase, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._call():
            return method(self, *args, **kwargs)

    return wrapper


class DataBase:
    """An in-memory user database partitioned over shard worker processes.

    ``DataBase(config=None, **overrides)``: ``config`` is a YAML path or a :class:`Config`;
    overrides are settings such as ``shards=4``. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, config: Config | str | os.PathLike[str] | None = None, **overrides: Any) -> None:
        self.config = load_config(config, overrides)
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._closed = False
        self._dirty = 0
        self._scan_tokens = itertools.count(1)
        self._scans_to_close: list[int] = []
        self._autosave_lock = threading.Lock()
        self._cache = ReadCache(self.config.cache_size)
        self._autosaver: AutoSaver | None = None
        self.last_save_hold_seconds: float | None = None
        self._users: int | None = 0  # as of the last call, for repr (None: unknown since a failure)
        self._shards: list[ShardHandle] = []
        self._liveness = Liveness()
        self._timeout = self.config.call_timeout
        self._closing = False
        # durability: the database's own snapshot path, the log chain it appends to, the
        # sequence number of the last write call that every shard applied
        self._path = snapshot.manifest_location(self.config.snapshot_path) if self.config.snapshot_path else None
        self._logging = self.config.logging_enabled
        self._chain: str | None = None
        self._seq = 0
        self._read_only: str | None = None
        self._read_only_since = 0  # counts the failures that made it read-only (a save clears only older ones)
        self._read_only_at_cut = 0
        self._no_more_checkpoints = False
        self._log_bytes = 0
        self._checkpoint_bytes = self.config.log_checkpoint_bytes or MIN_CHECKPOINT_BYTES
        self._checkpointer: threading.Thread | None = None
        self._restarts = [0] * self.config.shard_count
        self._restart_times: list[deque[float]] = [deque() for _ in range(self.config.shard_count)]
        self._lost: dict[int, str] = {}
        self._owner: list[tuple[Path, int]] = []  # the path's owner lock, while open
        self._finalizer = weakref.finalize(self, _stop_all, self._shards, self._owner)
        try:
            for index in range(self.config.shard_count):
                self._shards.append(start_shard(index, self.config.shard_count, self.config))
            exchange(self._shards, [request("ping")] * len(self._shards), timeout=self._timeout)
            if self._path is not None:
                self._open_path(self._path)
        except BaseException:
            self._finalizer()
            raise
        if self.config.autosave_interval:
            self.start_autosave()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> DataBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop autosave, save a last time if ``save_on_close``, then stop every worker. Never
        waits long for a stuck worker: a call still in flight after a moment is cut short."""
        if not self._lock.acquire(timeout=_CLOSE_PATIENCE):
            self._closing = True  # a call is waiting on a stuck worker: stop them, it fails at once
            for handle in list(self._shards):
                handle.kill("closed")
            self._lock.acquire()
        try:
            if self._closed:
                return
        finally:
            self._lock.release()
        try:
            with self._lock:
                self._no_more_checkpoints = True
                # from now on a worker that makes no progress for a moment is given up on
                self._timeout = min(self._timeout, _CLOSE_PATIENCE * 2)
            self.stop_autosave()
            checkpointer = self._checkpointer
            if checkpointer is not None:
                checkpointer.join()
            if self.config.save_on_close and not self._closing:
                self.save()
        finally:
            self._closing = True
            with self._lock:
                self._closed = True
                self._finalizer()

    def __repr__(self) -> str:
        """What it is, without a call: a stuck worker must not hang a debugger or a log line.
        So the user count is the one the last calls reported, left out when a failure made it unknown."""
        parts = [f"shards={self.config.shard_count}", "closed" if self._closed else "open"]
        if self._users is not None and not self._closed:
            parts.append(f"users={self._users}")
        if self._path is not None:
            parts.append(f"path={str(self._path)!r}")
            parts.append(f"log={self.config.log_fsync if self._logging else 'off'}")
        if self._read_only is not None and not self._closed:
            parts.append("read-only")
        return f"<DataBase {' '.join(parts)}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One atomic call: the DataBase's lock held, Ctrl-C held back until the end, on an
        open DataBase, with the cuts of dropped iterators released first."""
        with self._lock, _ctrl_c:
            if self._closed:
                raise ClosedError("this DataBase is closed")
            for handle in self._liveness.dead(self._shards):
                if handle.index not in self._lost:
                    try:
                        self._heal(handle.index)
                    except ShardError:
                        pass  # it stays failed: the calls that need it say so, the others go on
            if self._scans_to_close:
                self._release_closed_scans()
            yield

    def _all(self, command: str, *args: Any) -> list[Any]:
        return self._ask([request(command, *args)] * len(self._shards))

    def _ask(self, messages: list[bytes | None]) -> list[Any]:
        """A read: send, collect, and when a worker died on the way, rebuild it and ask once
        more (a read changes nothing, so asking again is safe)."""
        try:
            return exchange(self._shards, messages, timeout=self._timeout)
        except ShardError as exc:
            involved = [self._shards[s] for s, m in enumerate(messages) if m is not None]
            if self._closing or any(h.timed_out for h in involved) or all(h.alive for h in involved):
                raise  # a timeout is reported, not retried; the next call rebuilds the shard
            for s, m in enumerate(messages):
                if m is not None and not self._shards[s].alive:
                    if s in self._lost:
                        raise ShardError(s, self._lost[s]) from None
                    self._heal(s)
            log.info("retrying a read after rebuilding a shard (%s)", exc)
            return exchange(self._shards, messages, timeout=self._timeout)

    # ------------------------------------------------------------ validation

    def _users_batch(self, users: Any, call: str) -> list[User]:
        items = _as_list(users, call)
        if set(map(type, items)) - {User}:
            for k, user in enumerate(items):
                if not isinstance(user, User):
                    raise PydbmsTypeError(f"{call}(): item {k} must be a User, got {type(user).__name__}: {user!r:.80}")
        return items

    def _query_batch(self, items: Any, call: str, names_allowed: bool = True) -> _Batch:
        """Check a batch of queries whole and split it into IDs and names. The common batches
        (all UUIDs, all Users, all names) are checked in C; mixed ones item by item."""
        items = _as_list(items, call)
        n = len(self._shards)
        if not items:
            return _Batch([], None, [], None, n)
        first = type(items[0])
        if first is uuid.UUID:
            rows = encode_ids(items)  # None unless every item is a UUID (or its 16 bytes)
            if rows is not None:
                return _Batch(items, None, [], None, n, rows)
        elif first is User:
            if set(map(type, items)) == {User}:
                return _Batch(list(map(_ID, items)), None, [], None, n)
        elif first is str and names_allowed:
            try:
                return _Batch([], None, msgspec.convert(items, list[str]), None, n)
            except msgspec.ValidationError:
                pass  # a mixed batch: sorted out item by item below
        ids, id_pos, names, name_pos = [], [], [], []
        for k, item in enumerate(items):
            if isinstance(item, User):
                ids.append(item.ID)
                id_pos.append(k)
            elif isinstance(item, str) and names_allowed:
                names.append(str(item))
                name_pos.append(k)
            elif isinstance(item, (uuid.UUID, str, bytes, bytearray, memoryview)):
                ids.append(check_id(item, f"{call}(): item {k}"))
                id_pos.append(k)
            else:
                wanted = "a User, a UUID or a name (str)" if names_allowed else "a UUID (or its string form or 16 bytes) or a User"
                raise PydbmsTypeError(f"{call}(): item {k} must be {wanted}, got {type(item).__name__}: {item!r:.80}")
        return _Batch(ids, np.array(id_pos, dtype=np.intp), names, np.array(name_pos, dtype=np.intp), n)

    def _one_id(self, item: Any, call: str) -> uuid.UUID:
        if type(item) is uuid.UUID:
            return item
        if isinstance(item, User):
            return item.ID
        return check_id(item, f"{call}()")

    # ------------------------------------------------------------ writes

    def _write(self, messages: list[bytes | None], apply: Any) -> None:
        """One write call, atomic across shards: every touched shard logs and applies its part
        under one sequence number; if any part fails, the parts that succeeded are undone
        (memory and log), so the call changes nothing. Then ``apply(reply)`` per shard."""
        if self._read_only is not None:
            raise ReadOnlyError(
                f"this DataBase refuses writes since {self._read_only}; fix the cause, then save() to make it writable again"
            )
        seq, nonce = self._seq + 1, secrets.randbits(32)
        touched = [s for s, m in enumerate(messages) if m is not None]
        envelopes = [None if m is None else write_request(seq, nonce, touched, m) for m in messages]
        replies = exchange(self._shards, envelopes, return_exceptions=True, timeout=self._timeout)
        failed = {s: r for s, r in enumerate(replies) if isinstance(r, Exception)}
        if failed:
            undo = [request("undo", seq) if s in touched and s not in failed else None for s in range(len(messages))]
            for s, reply in enumerate(exchange(self._shards, undo, return_exceptions=True, timeout=self._timeout)):
                if isinstance(reply, Exception):
                    self._note_failure(s, reply)
            for s, problem in failed.items():
                self._note_failure(s, problem)
            self._users = None
            self._cut_dead_logs([s for s in touched if not self._shards[s].alive])
            raise self._public_error(next(iter(failed.values())))
        self._seq = seq
        for reply in replies:
            if reply is not None:
                apply(decode_any(reply))
        if self._logging:
            self._log_bytes += sum(len(e) for e in envelopes if e is not None)
            if self._log_bytes > self._checkpoint_bytes:
                self._start_checkpoint()

    def _cut_dead_logs(self, shards: list[int]) -> None:
        """A worker that died in a call that failed may have logged its part: make sure it is
        gone, then cut its log back to the last call every shard applied, so the failed call
        is not replayed by a reopen that comes before the shard is rebuilt."""
        if not shards or not self._logging or self._path is None or self._chain is None:
            return
        for s in shards:
            self._shards[s].ensure_gone()
        try:
            manifest = snapshot.read_manifest(self._path)
            plan = recovery.plan(self._path, self._chain, manifest.log_seq, len(self._shards), upto=self._seq)
            for s in shards:
                recovery.cut_lane(plan, s)
        except (PydbmsError, OSError) as exc:
            self._set_read_only(f"the log of shard(s) {shards} could not be cut back after a failed call ({exc})")

    def _note_failure(self, shard: int, problem: Exception) -> None:
        """A log that failed makes the database read-only; a dead worker is rebuilt by the next call."""
        if isinstance(problem, ShardFailure) and problem.kind in ("LogWriteError", "LogError"):
            self._set_read_only(f"shard {shard}'s log failed: {problem.message}")

    def _set_read_only(self, reason: str) -> None:
        with self._lock:
            self._read_only_since += 1
            if self._read_only is None:
                self._read_only = reason
                log.error("the DataBase is read-only: %s", reason)

    def _public_error(self, problem: Exception) -> Exception:
        if isinstance(problem, ShardFailure) and problem.kind in ("LogWriteError", "LogError"):
            return LogWriteError(
                f"shard {problem.shard}: {problem.message}; nothing was applied, and the DataBase is read-only until a save() succeeds"
            )
        if isinstance(problem, ShardError):
            return ShardError(problem.shard, f"{str(problem).partition(': ')[2]}; the call was rolled back on every shard")
        return problem

    def _start_checkpoint(self) -> None:
        """The log outgrew its threshold: save in the background (a save is a checkpoint)."""
        if self._no_more_checkpoints or (self._checkpointer is not None and self._checkpointer.is_alive()):
            return
        ref = weakref.ref(self)

        def run() -> None:
            db = ref()
            if db is None or db._closed or db._closing or db._log_bytes <= db._checkpoint_bytes:
                return  # closed, or a save meanwhile already checkpointed
            try:
                db.save()
            except Exception as exc:
                log.warning("automatic checkpoint of %s failed: %s", db._path, exc)

        self._checkpointer = threading.Thread(target=run, name="pydbms-checkpoint", daemon=True)
        self._checkpointer.start()

    def _user_messages(self, op: str, users: list[User]) -> list[bytes | None]:
        n = len(self._shards)
        if len(users) == 1:  # one user (add(), upsert of one): no batch machinery
            messages: list[bytes | None] = [None] * n
            messages[shard_of(users[0].ID.bytes, n) if n > 1 else 0] = write_message(op, Raw(encode(users)))
            return messages
        batch = _Batch(list(map(_ID, users)), None, [], None, len(self._shards))
        if op == "add":  # as columns: the workers apply them without an object per user
            assert batch.rows is not None
            cols = users_to_columns(users, batch.rows)
            return [write_message("add_columns", pack_columns(take_rows(cols, pos))) if len(pos) else None for pos in batch.per_shard]
        return [write_message(op, Raw(encode(_subset(users, pos)))) if len(pos) else None for pos in batch.per_shard]

    @_locked
    def add_users(self, users: list[User]) -> int:
        """Add each user whose ID is not stored yet; returns how many were added."""
        users = self._users_batch(users, "add_users")
        if not users:
            return 0
        added = 0

        def count(n: int) -> None:
            nonlocal added
            added += n
            self._dirty += n
            self._count(n)

        self._write(self._user_messages("add", users), count)
        return added

    @_locked
    def upsert_users(self, users: list[User]) -> int:
        """Insert or replace each user; returns how many were new (the rest replaced)."""
        users = self._users_batch(users, "upsert_users")
        if not users:
            return 0
        inserted = 0

        def count(reply: list[Any]) -> None:
            nonlocal inserted
            new, replaced = reply
            inserted += new
            self._dirty += new + len(replaced)
            self._count(new)
            self._cache.discard(replaced)

        self._write(self._user_messages("upsert", users), count)
        return inserted

    @_locked
    def remove_users(self, items: list[User | uuid.UUID | str]) -> int:
        """Remove by User, UUID, or name (every user with it); returns how many were removed."""
        batch = self._query_batch(items, "remove_users")
        if not batch.ids and not batch.names:
            return 0
        removed = 0

        def count(ids: list[bytes]) -> None:
            nonlocal removed
            removed += len(ids)
            self._dirty += len(ids)
            self._count(-len(ids))
            self._cache.discard(ids)

        self._write([write_message("remove", batch.ids_for(s), batch.encoded_names) for s in range(len(self._shards))], count)
        return removed

    @_locked
    def clear_database(self) -> None:
        """Remove every user."""
        self._write([write_message("clear")] * len(self._shards), lambda reply: None)
        self._users = 0
        self._cache.clear()
        self._dirty += 1

    def add(self, user: User) -> bool:
        """Add one user; False when its ID is already stored."""
        if not isinstance(user, User):
            raise PydbmsTypeError(f"add() takes a User, got {type(user).__name__}: {user!r:.80}")
        return self.add_users([user]) == 1

    def remove(self, id: uuid.UUID | str | User) -> bool:
        """Remove the user with this ID; False when none was stored."""
        return self.remove_users([self._one_id(id, "remove")]) == 1

    # ------------------------------------------------------------ reads

    @_locked
    def search_users(self, queries: list[User | uuid.UUID | str]) -> list[User]:
        """The stored users matching each query (User, UUID or name), grouped in query order."""
        batch = self._query_batch(queries, "search_users")
        if not batch.ids and not batch.names:
            return []
        replies = self._ask([request("find", batch.ids_for(s), batch.encoded_names) for s in range(len(self._shards))])
        positions, found = [], []
        with gc_paused():
            for shard, reply in enumerate(replies):
                hits, users = decode_find_reply(reply)
                if hits:
                    positions.append(batch.query_positions(shard)[np.asarray(hits, dtype=np.intp)])
                    found.extend(users)
        if not found:
            return []
        where = np.concatenate(positions)
        if len(positions) == 1 and batch.id_pos is None and batch.name_pos is None:
            return found  # one shard answered, already in query order
        return _take(found, np.argsort(where, kind="stable"))

    @_locked
    def has_user(self, items: list[User | uuid.UUID | str]) -> bool:
        """True when every User/UUID is stored and every name belongs to some stored user."""
        batch = self._query_batch(items, "has_user")
        if not batch.ids and not batch.names:
            return True
        replies = self._ask([request("has", batch.ids_for(s), batch.encoded_names) for s in range(len(self._shards))])
        names_seen = np.zeros(len(batch.names), dtype=bool)
        for reply in replies:
            all_ids, names = decode_any(reply)
            if not all_ids:
                return False
            names_seen |= np.frombuffer(names, dtype=bool)
        return bool(names_seen.all())

    @_locked
    def contains_many(self, ids: list[uuid.UUID | str | User]) -> list[bool]:
        """For each ID, whether it is stored."""
        batch = self._query_batch(ids, "contains_many", names_allowed=False)
        if not batch.ids:
            return []
        messages = [request("contains", batch.ids_for(s)) if len(batch.per_shard[s]) else None for s in range(len(self._shards))]
        out = np.zeros(len(batch.ids), dtype=bool)
        for shard, reply in enumerate(self._ask(messages)):
            if reply is not None:
                out[batch.per_shard[shard]] = np.frombuffer(decode_any(reply), dtype=bool)
        return out.tolist()

    @_locked
    def get_many(self, ids: list[uuid.UUID | str | User]) -> list[User | None]:
        """The stored user for each ID, or None, in order."""
        batch = self._query_batch(ids, "get_many", names_allowed=False)
        if not batch.ids:
            return []
        messages = [request("get", batch.ids_for(s)) if len(batch.per_shard[s]) else None for s in range(len(self._shards))]
        out: list[User | None] = [None] * len(batch.ids)
        with gc_paused():
            for shard, reply in enumerate(self._ask(messages)):
                if reply is not None:
                    for pos, user in zip(batch.per_shard[shard].tolist(), decode_optional_users(reply)):
                        out[pos] = user
        return out

    def get(self, id: uuid.UUID | str | User) -> User | None:
        """The user with this ID, or None. Served from the read cache when it can be."""
        raw = self._one_id(id, "get").bytes
        with self._lock:  # a hit crosses no pipe: just the lock and the cache
            if self._closed:
                raise ClosedError("this DataBase is closed")
            user = self._cache.get(raw)
        return user if user is not None else self._get_from_shard(raw)

    @_locked
    def _get_from_shard(self, raw: bytes) -> User | None:
        shard = shard_of(raw, len(self._shards)) if len(self._shards) > 1 else 0
        message = request("get", Raw(array_header(1) + b"\xc4\x10" + raw))
        messages: list[bytes | None] = [None] * len(self._shards)
        messages[shard] = message
        user = decode_optional_users(self._ask(messages)[shard])[0]
        if user is not None:
            self._cache.put(raw, user)
        return user

    def __contains__(self, id: object) -> bool:
        """``x in db``: False for anything that cannot be a stored ID (None, a name, an int),
        like ``in`` on a dict or set; ``get()`` still raises on those."""
        try:
            raw = self._one_id(id, "in")
        except (PydbmsTypeError, PydbmsValueError):
            return False
        return self.get(raw) is not None

    def find_by_name(self, name: str) -> list[User]:
        """Every stored user with exactly this name."""
        if not isinstance(name, str):
            raise PydbmsTypeError(f"find_by_name() takes a str, got {type(name).__name__}: {name!r:.80}")
        return self.search_users([name])

    @_locked
    def query(
        self,
        *,
        name: str | None = None,
        name_prefix: str | None = None,
        age_min: int | None = None,
        age_max: int | None = None,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[User]:
        """The users matching every filter given: exactly ``name``, a name starting with
        ``name_prefix``, an age between ``age_min`` and ``age_max`` (inclusive). ``order_by``:
        "age", "-age", "name" or "-name" (names in code point order), ties by ascending ID;
        ``limit``: at most this many (without ``order_by``, any that many of the matches)."""
        filters = _query_filters("query", name, name_prefix, age_min, age_max)
        if order_by is not None:
            if not isinstance(order_by, str):
                raise PydbmsTypeError(f"query(): order_by must be a str or None, got {type(order_by).__name__}: {order_by!r:.80}")
            if order_by not in _ORDERS:
                raise PydbmsValueError(f"query(): order_by must be one of {', '.join(map(repr, _ORDERS))}, got {order_by!r:.80}")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise PydbmsTypeError(f"query(): limit must be an int or None, got {type(limit).__name__}: {limit!r:.80}")
            if limit < 0:
                raise PydbmsValueError(f"query(): limit must not be negative, got {limit}")
        if filters is None or limit == 0:
            return []
        replies = self._all("query", *filters, order_by, limit, False)
        with gc_paused():
            parts = [decode_users(reply) for reply in replies]
        found = [user for part in parts for user in part] if len(parts) > 1 else parts[0]
        if order_by is not None and len(parts) > 1:
            found = _merge_sorted(found, order_by)  # sorted runs, one a shard: timsort merges them
        return found if limit is None else found[:limit]

    @_locked
    def count(
        self, *, name: str | None = None, name_prefix: str | None = None, age_min: int | None = None, age_max: int | None = None
    ) -> int:
        """How many users match every filter given (as ``query``): only numbers cross the pipes."""
        filters = _query_filters("count", name, name_prefix, age_min, age_max)
        if filters is None:
            return 0
        return sum(decode_any(reply) for reply in self._all("query", *filters, None, None, True))

    @_locked
    def __len__(self) -> int:
        self._users = sum(decode_any(c) for c in self._all("count"))
        return self._users

    @property
    def size(self) -> int:
        """How many users are stored (the original's property)."""
        return len(self)

    def __iter__(self) -> Iterator[User]:
        """Every user, streamed shard by shard in chunks, as of the first ``next()``."""
        token = next(self._scan_tokens)
        with self._call():
            counts = [decode_any(c) for c in self._all("scan_open", token)]
        chunk = self.config.iter_chunk_size
        try:
            for shard, count in enumerate(counts):
                for _ in range(0, count, chunk):
                    messages: list[bytes | None] = [None] * len(self._shards)
                    messages[shard] = request("scan_next", token, chunk)
                    with self._call():
                        reply = exchange(self._shards, messages, timeout=self._timeout)[shard]
                    with gc_paused():
                        users = decode_users(reply)
                    yield from users
        finally:
            # The iterator may be finalised anywhere, even by the GC in the middle of another
            # call on this thread: only note the token; the next call releases the cut.
            self._scans_to_close.append(token)

    def _release_closed_scans(self) -> None:
        """Runs at the start of every locked call."""
        while self._scans_to_close:
            token = self._scans_to_close.pop()
            try:
                exchange(self._shards, [request("scan_close", token)] * len(self._shards), timeout=self._timeout)
            except (ShardError, ShardFailure):
                pass

    @_locked
    def stats(self) -> dict[str, Any]:
        """Users in all, per shard (users, pid, memory), the read cache and autosave."""
        replies = exchange(self._shards, [request("stats")] * len(self._shards), return_exceptions=True, timeout=self._timeout)
        shards: list[dict[str, Any]] = [
            {"shard": s, "users": 0, "failed": str(r)} if isinstance(r, Exception) else decode_any(r) for s, r in enumerate(replies)
        ]
        for entry in shards:
            entry["restarts"] = self._restarts[entry["shard"]]
        return {
            "users": sum(s["users"] for s in shards),
            "shards": shards,
            "log": {
                "enabled": self._logging,
                "fsync": self.config.log_fsync,
                "last_call": self._seq,
                "bytes_since_checkpoint": self._log_bytes,
                "checkpoint_bytes": self._checkpoint_bytes,
            },
            "read_only": self._read_only,
            "cache": self._cache.stats(),
            "changes_since_save": self._dirty,
            "last_save_hold_seconds": self.last_save_hold_seconds,
            "autosave": self._autosaver.stats() if self._autosaver else None,
        }

    # ------------------------------------------------------------ persistence

    def _snapshot_path(self, path: str | os.PathLike[str] | None) -> Path:
        if path is None:
            path = self.config.snapshot_path
            if path is None:
                raise SnapshotError("no path given and no snapshot_path configured")
        if not isinstance(path, (str, os.PathLike)):
            raise PydbmsTypeError(f"a snapshot path must be a str or a path, got {type(path).__name__}: {path!r:.80}")
        return snapshot.manifest_location(path)

    def save(self, path: str | os.PathLike[str] | None = None, *, progress: Progress | None = None) -> snapshot.Manifest:
        """Write a consistent snapshot: one file per shard, written by the shards in parallel,
        then a manifest committed atomically. Callers wait only while the cut is taken. A save
        to the database's own path is a checkpoint: the log moves on to new segments at the
        cut, and the segments the snapshot covers are removed once it is committed.
        ``progress(users written, users in the cut)`` is called as each block is written."""
        path = self._snapshot_path(path)
        if not path.parent.is_dir():
            raise SnapshotError(f"{path}: the directory {path.parent} does not exist")
        checkpoint = self._logging and path == self._path
        if path != self._path:
            snapshot.check_not_owned(path)
        with self._save_lock, snapshot.writer_lock(path):
            manifest, changes_in_cut = self._write_snapshot(path, rotate=checkpoint, progress=progress)
            if checkpoint:
                with self._lock:  # every shard logs to a fresh segment since the cut
                    if self._read_only_since == self._read_only_at_cut:
                        self._read_only = None
                self._after_checkpoint(path, manifest)
        with self._lock:
            target = self._autosave_target()
            if target is None or target == path:  # changes are counted against that file
                self._dirty = max(0, self._dirty - changes_in_cut)
        return manifest

    def _write_snapshot(
        self, path: Path, rotate: bool = False, staged: bool = False, chain: str | None = None, progress: Progress | None = None
    ) -> tuple[snapshot.Manifest, int]:
        """Cut, write and commit one snapshot at ``path`` (the caller holds the path's writer
        lock and ``_save_lock``). ``rotate``: a checkpoint of the log in this chain. ``staged``:
        write the shards' staged partitions (a load or a recovery being checkpointed) under a
        new log ``chain``. Returns the manifest and the change count the cut covered."""
        session = SaveSession(
            path,
            self._shards,
            level=self.config.compression_level,
            mode=self.config.file_mode_bits,
            keep=self.config.keep_generations,
            timeout=lambda: self._timeout,
            closing=lambda: self._closing,
            progress=progress,
        )
        if chain is None:  # a checkpoint goes on in its chain; a copy elsewhere starts one with no log
            chain = self._chain if rotate and self._chain else snapshot.new_token()
        # a save of the own path without a log names no chain: no log leads on from it
        named_chain = None if path == self._path and not (rotate or staged) else chain
        try:
            with self._call():
                started = time.perf_counter()
                seq = self._seq
                session.cut(self._log_spec(chain, seq + 1) if rotate else None, staged, self._public_error)
                changes_in_cut, bytes_in_cut = self._dirty, self._log_bytes
                self._read_only_at_cut = self._read_only_since
                self.last_save_hold_seconds = time.perf_counter() - started
            manifest = session.commit(named_chain, seq)
        except BaseException:
            session.abort()
            raise
        if rotate:
            self._log_bytes = max(0, self._log_bytes - bytes_in_cut)
        return manifest, changes_in_cut

    def _append_spec(self, plan: recovery.Plan, shard: int) -> list[Any]:
        """Go on appending to the shard's newest segment, or start one after the plan's last call."""
        assert self._chain is not None
        where = plan.append.get(shard)
        if where is None:
            return self._log_spec(self._chain, plan.last + 1)
        name, offset, base = where
        return self._log_spec(self._chain, base, [name, offset])

    def _log_spec(self, chain: str, base: int, append: list[Any] | None = None) -> list[Any]:
        """Where a worker appends its log: a new segment at ``base`` or ``append`` = [file, offset]."""
        assert self._path is not None
        return [str(self._path.parent), self._path.name, chain, base, self.config.log_fsync, self.config.file_mode_bits, append]

    def _set_checkpoint_threshold(self, manifest: snapshot.Manifest) -> None:
        """Checkpoint once the log holds about as much as the snapshot (at least 64 MiB)."""
        self._checkpoint_bytes = self.config.log_checkpoint_bytes or max(MIN_CHECKPOINT_BYTES, sum(f.bytes for f in manifest.files))

    def _after_checkpoint(self, path: Path, manifest: snapshot.Manifest) -> None:
        self._set_checkpoint_threshold(manifest)
        try:
            recovery.remove_obsolete_segments(path)
        except OSError as exc:
            log.warning("%s: checkpoint committed, but removing old log segments failed (%s)", path, snapshot.describe_os_error(exc))

    def load(self, path: str | os.PathLike[str] | None = None, *, progress: Progress | None = None) -> snapshot.Manifest:
        """Replace the contents with a verified snapshot, re-routing users when it was written
        with another shard count. On any error the database is left exactly as it was. With a
        log, the loaded state is checkpointed onto the database's own path before any other
        call runs, so reopening gives exactly what was loaded. ``progress(users read, users in
        the snapshot)`` is called as each block is read."""
        path = self._snapshot_path(path)
        with self._save_lock, self._call():
            # a reader's lock on the path: no save may rotate the files away while they are read
            with snapshot.writer_lock(path, shared=True):
                manifest = snapshot.read_manifest(path)
                self._stage(path, manifest, progress=progress)
            self._commit_staged(lambda: None)
            self._cache.clear()
            # unchanged only relative to this file: autosave to another path must still write
            self._dirty = 0 if path == self._autosave_target() and (path == self._path or not self._logging) else max(1, manifest.users)
        return manifest

    def _stage(
        self, path: Path, manifest: snapshot.Manifest | None, plan: recovery.Plan | None = None, progress: Progress | None = None
    ) -> None:
        """Every worker reads its part of a snapshot (and replays the log after it) into
        staging; nothing is swapped in yet. On failure every stage is dropped."""
        n = len(self._shards)
        spec: list[Any] = []
        reroute = False
        if manifest is not None:
            files = snapshot.manifest_files(path, manifest)
            spec = [[str(p), msgspec.structs.asdict(e)] for p, e in files]
            reroute = manifest.shards != n or manifest.hash != HASH_SCHEME
        report = LoadProgress.TAG if progress is not None and manifest is not None else None
        messages = [request("load_stage", spec if reroute else spec[s : s + 1], reroute, report) for s in range(n)]
        try:
            if progress is not None and manifest is not None:
                # rerouting, every worker reads every file: each reports its share of the total
                with LoadProgress(self._shards, manifest.users * (n if reroute else 1), progress):
                    exchange(self._shards, messages)
            else:
                exchange(self._shards, messages)  # long: no call_timeout, but a dead worker is noticed
            if plan is not None and plan.extents:
                exchange(self._shards, [request("replay", *plan.replay_message(s, n)) for s in range(n)])
        except (ShardError, ShardFailure) as exc:
            try:
                exchange(self._shards, [request("load_abort")] * n, timeout=self._timeout)
            except (ShardError, ShardFailure):
                pass
            detail = exc.message if isinstance(exc, ShardFailure) else str(exc)
            raise SnapshotError(f"load of {path} failed: {detail}") from None

    def _commit_staged(self, before_swap: Any) -> None:
        """Swap every shard's staged partition in. With a log, the staged state is first
        written as a checkpoint under a new log chain (the old log does not lead to it), and
        each worker starts appending to that chain as it swaps."""
        n = len(self._shards)
        spec = None
        if self._logging:
            assert self._path is not None
            chain = snapshot.new_token()
            try:
                with snapshot.writer_lock(self._path):
                    manifest, _ = self._write_snapshot(self._path, staged=True, chain=chain)
            except BaseException as exc:
                committed = self._committed(chain)
                if committed is None:
                    try:
                        exchange(self._shards, [request("load_abort")] * n, timeout=self._timeout)
                    except ShardError:
                        pass
                    raise
                # committed, then something after the rename failed: the new state is the one on disk
                manifest = committed
                log.error("%s: the checkpoint is committed, but: %s", self._path, exc)
            spec = self._log_spec(chain, self._seq + 1)
            self._chain = chain
        before_swap()
        results = exchange(self._shards, [request("load_commit", spec)] * n, return_exceptions=True, timeout=self._timeout)
        self._commit_results(results)
        if self._logging:
            assert self._path is not None
            self._log_bytes = 0
            if not any(isinstance(r, Exception) for r in results):
                self._read_only = None  # every shard logs to a fresh segment of the new chain
            self._after_checkpoint(self._path, manifest)

    def _committed(self, chain: str) -> snapshot.Manifest | None:
        """The manifest at the own path if it is the checkpoint of ``chain``."""
        assert self._path is not None
        try:
            manifest = snapshot.read_manifest(self._path)
        except SnapshotError:
            return None
        return manifest if manifest.log_chain == chain else None

    def _count(self, delta: int) -> None:
        if self._users is not None:
            self._users += delta

    def _commit_results(self, results: list[Any]) -> None:
        """A shard that swapped its data in but could not open its log must not take writes."""
        counts = [r for r in results if not isinstance(r, Exception)]
        self._users = sum(map(decode_any, counts)) if len(counts) == len(results) else None
        for s, result in enumerate(results):
            if isinstance(result, ShardFailure) and not result.restart:
                self._set_read_only(f"shard {s} could not open its log ({result.message})")

    # ------------------------------------------------------------ recovery and healing

    def _open_path(self, path: Path) -> None:
        """Open the database's own snapshot path: claim it, load the newest committed snapshot
        and replay the log after it, so the first call sees every acknowledged write."""
        if not path.parent.is_dir():
            raise SnapshotError(f"{path}: the directory {path.parent} does not exist")
        fd = snapshot.owner_lock(path, optional=not self._logging)
        if fd is not None:
            self._owner.append((path, fd))
        manifest = snapshot.read_manifest(path) if os.path.lexists(path) else None
        n = len(self._shards)
        chain = manifest.log_chain if manifest is not None else None
        plan = recovery.plan(path, chain, manifest.log_seq if manifest is not None else 0, n)
        with self._save_lock, self._call():
            self._stage(path, manifest, plan)
            self._seq = plan.last
            fresh = (
                manifest is None
                or chain is None
                or manifest.shards != n
                or manifest.hash != HASH_SCHEME
                or plan.dropped > 0
                or any(layout != n for layout in plan.layouts)
                or any(base > plan.last + 1 for _, _, base in plan.append.values())
            )
            if not self._logging or fresh:
                self._commit_staged(lambda: recovery.drop_tails(plan) if self._logging else None)
            else:
                assert chain is not None and manifest is not None
                recovery.drop_tails(plan)
                self._chain = chain
                specs = [self._append_spec(plan, s) for s in range(n)]
                self._commit_results(
                    exchange(
                        self._shards, [request("load_commit", specs[s]) for s in range(n)], return_exceptions=True, timeout=self._timeout
                    )
                )
                self._set_checkpoint_threshold(manifest)
                self._log_bytes = plan.replayed_bytes  # the log already holds these
            self._dirty = 0
        if plan.last > (manifest.log_seq if manifest is not None else 0):
            log.info("%s: recovered %d logged call(s) after the snapshot", path, plan.last - (manifest.log_seq if manifest else 0))

    def _heal(self, index: int) -> None:
        """Replace a dead worker and rebuild its shard from the committed snapshot and its log
        up to the last call every shard applied. Restarts are capped; a shard that cannot be
        rebuilt (no log, too many restarts, damaged files) stays failed with a clear error."""
        old = self._shards[index]
        why = old.dead or old.death_reason()
        if self._closing:
            raise ClosedError("this DataBase is being closed")
        if not self._logging or self._chain is None:
            self._lost[index] = f"its worker died ({why}) and there is no write-ahead log to rebuild it from: its users are lost"
            self._mark_lost(index)
        times = self._restart_times[index]
        now = time.monotonic()
        while times and now - times[0] > self.config.restart_window:
            times.popleft()
        if len(times) >= self.config.max_restarts:
            self._lost[index] = (
                f"its worker died ({why}) after {len(times)} restarts within {self.config.restart_window:g} s; "
                "it stays failed (reopen the DataBase to recover it from its snapshot and log)"
            )
            self._mark_lost(index)
        times.append(now)
        self._restarts[index] += 1
        log.warning("shard %d: %s; restarting it and rebuilding it from its snapshot and log", index, why)
        old.stop(patience=0.5)
        n = len(self._shards)
        problem: Exception | None = None
        for _attempt in range(2):  # a save may rotate the files away while they are read: once more
            try:
                handle = start_shard(index, n, self.config)
            except Exception as exc:
                problem = exc
                continue
            self._shards[index] = handle
            try:
                self._rebuild(index)
                return
            except Exception as exc:
                problem = exc
                handle.stop(patience=0.5)
        self._lost[index] = f"its worker died ({why}) and it could not be rebuilt: {problem}"
        self._mark_lost(index)

    def _mark_lost(self, index: int) -> NoReturn:
        """The shard stays failed: every call that needs it says so. Its log is cut after the
        last call every shard applied, so a later call reusing a sequence number is never
        confused with a leftover of a call that failed."""
        self._users = None
        log.error("shard %d: %s", index, self._lost[index])
        self._shards[index].dead = self._lost[index]
        self._cut_dead_logs([index])
        raise ShardError(index, self._lost[index])

    def _rebuild(self, index: int) -> None:
        assert self._path is not None and self._chain is not None
        n = len(self._shards)
        only = [None] * n

        def ask(message: bytes, timeout: float | None = None) -> Any:
            messages: list[bytes | None] = list(only)
            messages[index] = message
            return exchange(self._shards, messages, timeout=timeout)[index]

        ask(request("ping"), self._timeout)
        manifest = snapshot.read_manifest(self._path)
        if manifest.log_chain != self._chain or manifest.shards != n:
            raise SnapshotError(f"{self._path}: the committed snapshot is not this DataBase's checkpoint")
        plan = recovery.plan(self._path, self._chain, manifest.log_seq, n, upto=self._seq)
        if plan.last != self._seq:
            raise SnapshotError(f"the log holds calls up to {plan.last} only, not every acknowledged call (up to {self._seq})")
        files = snapshot.manifest_files(self._path, manifest)
        path, entry = files[index]
        ask(request("load_stage", [[str(path), msgspec.structs.asdict(entry)]], False))
        if plan.extents.get(index):
            ask(request("replay", *plan.replay_message(index, n)))
        recovery.drop_torn_creations(plan)  # a segment whose creation the death cut short
        ask(request("load_commit", self._append_spec(plan, index)), self._timeout)

    def _autosave_target(self) -> Path | None:
        if self._autosaver is not None:
            return self._autosaver.path
        return Path(self.config.snapshot_path).absolute() if self.config.snapshot_path else None

    def backup(self, path: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> snapshot.Manifest:
        """An independent copy of the last saved snapshot (``source``, default snapshot_path);
        calls logged since that save are not in it: ``save()`` first for the latest state."""
        dst = self._snapshot_path(path)
        if dst == self._path and self._logging:
            raise SnapshotError(f"{dst}: a backup must not replace the snapshot this DataBase logs after; back up elsewhere")
        if dst != self._path:
            snapshot.check_not_owned(dst)
        return snapshot.backup_snapshot(self._snapshot_path(source), dst, self.config.file_mode_bits, self.config.keep_generations)

    def import_file(self, src: str | os.PathLike[str], progress: Any = None) -> int:
        """Add the users of a JSON-lines file (ours, or an original pyDBMS save file). Every
        line is checked first: a bad one raises ImportFileError naming it and nothing is added."""
        return self.add_users(readable.read_user_lines(src, progress))

    @staticmethod
    def convert_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str = "jsonl") -> int:
        """Write the snapshot at ``src`` as readable JSON lines (or ``format="text"``) to ``dst``."""
        return readable.convert_file(src, dst, format)  # type: ignore[arg-type]  # any str; convert_file rejects others at run time

    def start_autosave(self, interval: float | None = None, path: str | os.PathLike[str] | None = None) -> None:
        """Save every ``interval`` seconds, only when something changed since the last save."""
        interval = self.config.autosave_interval if interval is None else interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= MAX_AUTOSAVE_INTERVAL:
            raise ConfigError(
                f"key 'autosave_interval': must be a number of seconds above 0 and at most {MAX_AUTOSAVE_INTERVAL:,}, got {interval!r}"
            )
        target = self._snapshot_path(path)
        ref = weakref.ref(self)

        def save_if_changed() -> bool:
            db = ref()
            if db is None or db._closed:
                raise ScheduleEnded()
            if db._dirty == 0:
                return False
            db.save(target)
            return True

        with self._autosave_lock:
            if self._autosaver is not None:
                self._autosaver.stop()
            self._autosaver = AutoSaver(save_if_changed, float(interval), target)

    def stop_autosave(self) -> None:
        """Stop the schedule (waiting for a save in flight); the counters stay in stats()."""
        with self._autosave_lock:
            if self._autosaver is not None:
                self._autosaver.stop()

    @property
    def autosave_running(self) -> bool:
        return self._autosaver is not None and self._autosaver.running


_ORDERS = ("age", "-age", "name", "-name")
_AGE_LIMIT = 255  # the age column is a byte: bounds beyond it select the same users as it


def _query_filters(call: str, name: Any, prefix: Any, age_min: Any, age_max: Any) -> tuple[str | None, str | None, int, int] | None:
    """The filters checked, as the ``query`` command's (name, prefix, lowest age, highest age),
    or None when they can match nobody (``age_min > age_max``)."""
    for field, text in (("name", name), ("name_prefix", prefix)):
        if text is not None:
            if not isinstance(text, str):
                raise PydbmsTypeError(f"{call}(): {field} must be a str or None, got {type(text).__name__}: {text!r:.80}")
            _check_text(text, f"{call}(): {field}")
    bounds = []
    for field, age, default in (("age_min", age_min, 0), ("age_max", age_max, _AGE_LIMIT)):
        if age is None:
            bounds.append(default)
            continue
        if isinstance(age, bool) or not isinstance(age, int):
            raise PydbmsTypeError(f"{call}(): {field} must be an int or None (not a bool), got {type(age).__name__}: {age!r:.80}")
        bounds.append(min(max(int(age), -1), _AGE_LIMIT + 1))
    lo, hi = bounds
    if lo > hi or hi < 0 or lo > _AGE_LIMIT:
        return None
    return (None if name is None else str(name), None if prefix is None else str(prefix), max(lo, 0), min(hi, _AGE_LIMIT))


def _merge_sorted(users: list[User], order_by: str) -> list[User]:
    """Users in ``order_by`` order, ties by ascending ID (the shards' runs, concatenated)."""
    if order_by == "age":
        return sorted(users, key=lambda u: (u.age, u.ID))
    if order_by == "-age":
        return sorted(users, key=lambda u: (-u.age, u.ID))
    if order_by == "name":
        return sorted(users, key=lambda u: (u.name, u.ID))
    return sorted(users, key=lambda u: (u.name, -u.ID.int), reverse=True)


def _stop_all(shards: list[ShardHandle], owner: list[tuple[Path, int]]) -> None:
    for handle in shards:
        handle.stop(patience=_CLOSE_PATIENCE)
    while owner:
        snapshot.release_owner_lock(*owner.pop())  # the path is free for the next DataBase
