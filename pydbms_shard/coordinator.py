"""DataBase: the coordinator. It validates each batch whole, splits it by shard, sends one
message per shard, and merges the replies. Per-item work happens in the workers or in C
(msgspec, numpy); the coordinator does per-batch work."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from . import readable, snapshot
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
    pack_rows,
)
from .config import MAX_AUTOSAVE_INTERVAL, Config, load_config
from .errors import ClosedError, ConfigError, PydbmsTypeError, PydbmsValueError, ShardError, SnapshotError
from .routing import HASH_SCHEME, shard_of, shards_of, split_positions
from .shards import ShardFailure, ShardHandle, exchange, wait_for_events
from .user import User, check_id

_ID = attrgetter("ID")
_EMPTY_LIST = encode([])


class _Batch:
    """A validated batch of queries: IDs (encoded once, routed by shard) and names."""

    __slots__ = ("ids", "rows", "id_pos", "names", "name_pos", "per_shard", "encoded_names")

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


def _as_list(items: Any, call: str) -> list:
    if isinstance(items, list):
        return items
    if isinstance(items, (str, bytes, User, uuid.UUID, Mapping)) or not isinstance(items, Iterable):
        raise PydbmsTypeError(f"{call}() takes a list, got {type(items).__name__}: {items!r:.80}")
    return list(items)


def _subset(items: list, positions: np.ndarray) -> list:
    """``items`` at ascending, distinct ``positions`` (a shard's share of a batch)."""
    return items if len(positions) == len(items) else _take(items, positions)


def _take(items: list, positions: np.ndarray) -> list:
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

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise KeyboardInterrupt


_ctrl_c = _CtrlCDeferred()


def _locked(method):
    """Run the method as one call (see ``DataBase._call``)."""

    def wrapper(self: DataBase, *args: Any, **kwargs: Any) -> Any:
        with self._call():
            return method(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__, wrapper.__qualname__ = method.__name__, method.__doc__, method.__qualname__
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
        self._shards: list[ShardHandle] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._shards)
        try:
            for index in range(self.config.shard_count):
                self._shards.append(ShardHandle(index, self.config.shard_count, self.config.start_method))
            exchange(self._shards, [encode(["ping"])] * len(self._shards))
        except BaseException:
            self._finalizer()
            raise
        if self.config.autosave_interval:
            self.start_autosave()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> DataBase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop autosave, save a last time if ``save_on_close``, then stop every worker."""
        with self._lock:
            if self._closed:
                return
        try:
            self.stop_autosave()
            if self.config.save_on_close:
                self.save()
        finally:
            with self._lock:
                self._closed = True
                self._finalizer()

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
            if self._scans_to_close:
                self._release_closed_scans()
            yield

    def _all(self, *message: Any) -> list[Any]:
        return exchange(self._shards, [encode(message)] * len(self._shards))

    # ------------------------------------------------------------ validation

    def _users_batch(self, users: Any, call: str) -> list[User]:
        users = _as_list(users, call)
        if set(map(type, users)) - {User}:
            for k, user in enumerate(users):
                if not isinstance(user, User):
                    raise PydbmsTypeError(f"{call}(): item {k} must be a User, got {type(user).__name__}: {user!r:.80}")
        return users

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
        """Send a write to the shards and ``apply(reply)`` for every shard that did it, also
        when another shard failed (so the cache and change count never miss a change), then
        raise the first failure."""
        problem = None
        for reply in exchange(self._shards, messages, return_exceptions=True):
            if isinstance(reply, Exception):
                problem = problem or reply
            elif reply is not None:
                apply(decode_any(reply))
        if problem is not None:
            raise problem

    def _user_messages(self, op: str, users: list[User]) -> list[bytes | None]:
        batch = _Batch(list(map(_ID, users)), None, [], None, len(self._shards))
        return [encode([op, Raw(encode(_subset(users, pos)))]) if len(pos) else None for pos in batch.per_shard]

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

        self._write(self._user_messages("add", users), count)
        return added

    @_locked
    def upsert_users(self, users: list[User]) -> int:
        """Insert or replace each user; returns how many were new (the rest replaced)."""
        users = self._users_batch(users, "upsert_users")
        if not users:
            return 0
        inserted = 0

        def count(reply: list) -> None:
            nonlocal inserted
            new, replaced = reply
            inserted += new
            self._dirty += new + len(replaced)
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
            self._cache.discard(ids)

        self._write([encode(["remove", batch.ids_for(s), batch.encoded_names]) for s in range(len(self._shards))], count)
        return removed

    @_locked
    def clear_database(self) -> None:
        try:
            self._all("clear")
        finally:
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
        replies = exchange(
            self._shards, [encode(["find", batch.ids_for(s), batch.encoded_names]) for s in range(len(self._shards))]
        )
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
        replies = exchange(
            self._shards, [encode(["has", batch.ids_for(s), batch.encoded_names]) for s in range(len(self._shards))]
        )
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
        messages = [encode(["contains", batch.ids_for(s)]) if len(batch.per_shard[s]) else None for s in range(len(self._shards))]
        out = np.zeros(len(batch.ids), dtype=bool)
        for shard, reply in enumerate(exchange(self._shards, messages)):
            if reply is not None:
                out[batch.per_shard[shard]] = np.frombuffer(decode_any(reply), dtype=bool)
        return out.tolist()

    @_locked
    def get_many(self, ids: list[uuid.UUID | str | User]) -> list[User | None]:
        """The stored user for each ID, or None, in order."""
        batch = self._query_batch(ids, "get_many", names_allowed=False)
        if not batch.ids:
            return []
        messages = [encode(["get", batch.ids_for(s)]) if len(batch.per_shard[s]) else None for s in range(len(self._shards))]
        out: list[User | None] = [None] * len(batch.ids)
        with gc_paused():
            for shard, reply in enumerate(exchange(self._shards, messages)):
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
        message = encode(["get", Raw(array_header(1) + b"\xc4\x10" + raw)])
        messages: list[bytes | None] = [None] * len(self._shards)
        messages[shard] = message
        user = decode_optional_users(exchange(self._shards, messages)[shard])[0]
        if user is not None:
            self._cache.put(raw, user)
        return user

    def __contains__(self, id: object) -> bool:
        return self.get(id) is not None  # type: ignore[arg-type]

    def find_by_name(self, name: str) -> list[User]:
        """Every stored user with exactly this name."""
        if not isinstance(name, str):
            raise PydbmsTypeError(f"find_by_name() takes a str, got {type(name).__name__}: {name!r:.80}")
        return self.search_users([name])

    @_locked
    def __len__(self) -> int:
        return sum(decode_any(c) for c in self._all("count"))

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
                    messages[shard] = encode(["scan_next", token, chunk])
                    with self._call():
                        reply = exchange(self._shards, messages)[shard]
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
                self._all("scan_close", token)
            except (ShardError, ShardFailure):
                pass

    @_locked
    def stats(self) -> dict[str, Any]:
        """Users in all, per shard (users, pid, memory), the read cache and autosave."""
        shards = [decode_any(r) for r in self._all("stats")]
        return {
            "users": sum(s["users"] for s in shards),
            "shards": shards,
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

    def save(self, path: str | os.PathLike[str] | None = None) -> snapshot.Manifest:
        """Write a consistent snapshot: one file per shard, written by the shards in parallel,
        then a manifest committed atomically. Callers wait only while the cut is taken."""
        path = self._snapshot_path(path)
        if not path.parent.is_dir():
            raise SnapshotError(f"{path}: the directory {path.parent} does not exist")
        with self._save_lock, snapshot.writer_lock(path):
            generation, token = snapshot.next_generation(path), snapshot.new_token()
            n = len(self._shards)
            level, mode = self.config.compression_level, self.config.file_mode_bits
            names = [path.parent / snapshot.shard_file_name(path.name, generation, token, s) for s in range(n)]
            try:
                with self._call():
                    started = time.perf_counter()
                    begun = exchange(
                        self._shards, [encode(["snap_begin", str(names[s]), level, mode]) for s in range(n)], return_exceptions=True
                    )
                    changes_in_cut = self._dirty
                    self.last_save_hold_seconds = time.perf_counter() - started
                failures = [f"{exc}" for exc in begun if isinstance(exc, Exception)]
                writing = {s for s in range(n) if not isinstance(begun[s], Exception)}
                entries = self._wait_for_writers(path, names, writing, failures)
                manifest = snapshot.build_manifest(generation, n, entries)
                snapshot.commit_manifest(path, manifest, token, mode, self.config.keep_generations)
            except BaseException:
                snapshot.cleanup_failed_save(path, generation, token)  # never what the live manifest names
                raise
            with self._lock:
                target = self._autosave_target()
                if target is None or target == path:  # changes are counted against that file
                    self._dirty = max(0, self._dirty - changes_in_cut)
            return manifest

    def _wait_for_writers(self, path: Path, names: list[Path], pending: set[int], failures: list[str]) -> list[snapshot.ManifestFile]:
        """Wait, without the DataBase lock, until every shard's writer has reported (also after
        one failed, so none still creates files at clean-up)."""
        entries = []
        while pending:
            for handle, event in wait_for_events([self._shards[s] for s in pending], 1.0):
                if isinstance(event, Exception):
                    failures.append(str(event))
                    pending.discard(handle.index)
                    continue
                file_name, ok, detail = event
                if file_name != str(names[handle.index]):
                    continue  # a report from an earlier save that gave up waiting
                pending.discard(handle.index)
                if ok:
                    entries.append(msgspec.convert(detail, snapshot.ManifestFile))
                else:
                    failures.append(f"shard {handle.index}: {detail}")
        if failures:
            raise SnapshotError(f"{path}: save failed: " + "; ".join(failures))
        return entries

    def load(self, path: str | os.PathLike[str] | None = None) -> snapshot.Manifest:
        """Replace the contents with a verified snapshot, re-routing users when it was written
        with another shard count. On any error the database is left exactly as it was."""
        path = self._snapshot_path(path)
        # a reader's lock on the path: no save may rotate the files away while they are read
        with self._save_lock, snapshot.writer_lock(path, shared=True):
            manifest = snapshot.read_manifest(path)
            files = snapshot.manifest_files(path, manifest)
            n = len(self._shards)
            spec = [[str(p), msgspec.structs.asdict(e)] for p, e in files]
            if manifest.shards == n and manifest.hash == HASH_SCHEME:
                messages = [encode(["load_stage", [spec[s]], False]) for s in range(n)]
            else:
                messages = [encode(["load_stage", spec, True])] * n
            with self._call():
                try:
                    exchange(self._shards, messages)
                except (ShardError, ShardFailure) as exc:
                    try:
                        self._all("load_abort")
                    except (ShardError, ShardFailure):
                        pass
                    detail = exc.message if isinstance(exc, ShardFailure) else str(exc)
                    raise SnapshotError(f"load of {path} failed: {detail}") from None
                try:
                    self._all("load_commit")
                finally:
                    self._cache.clear()
                # unchanged only relative to this file: autosave to another path must still write
                self._dirty = 0 if path == self._autosave_target() else max(1, manifest.users)
        return manifest

    def _autosave_target(self) -> Path | None:
        if self._autosaver is not None:
            return self._autosaver.path
        return Path(self.config.snapshot_path).absolute() if self.config.snapshot_path else None

    def backup(self, path: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> snapshot.Manifest:
        """An independent copy of the last saved snapshot (``source``, default snapshot_path)."""
        return snapshot.backup_snapshot(
            self._snapshot_path(source), self._snapshot_path(path), self.config.file_mode_bits, self.config.keep_generations
        )

    def import_file(self, src: str | os.PathLike[str], progress: Any = None) -> int:
        """Add the users of a JSON-lines file (ours, or an original pyDBMS save file). Every
        line is checked first: a bad one raises ImportFileError naming it and nothing is added."""
        return self.add_users(readable.read_user_lines(src, progress))

    @staticmethod
    def convert_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str = "jsonl") -> int:
        """Write the snapshot at ``src`` as readable JSON lines (or ``format="text"``) to ``dst``."""
        return readable.convert_file(src, dst, format)  # type: ignore[arg-type]

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


def _stop_all(shards: list[ShardHandle]) -> None:
    for handle in shards:
        handle.stop()
