"""One shard's users as numpy columns: a drop-in for :class:`~.partition.Partition` at ~73 bytes a user.

``Partition`` keeps a ``Record`` object per user in dicts (~300 bytes a user with its Records,
by tracemalloc). Here a user is a row: 16 ID bytes, an age byte, a live byte, the end of its UTF-8
name in one arena (u32, u64 past 4 GiB), a 64-bit hash of that name and two int32 links; extras
(rare) are msgpack bytes in a dict keyed by row. A removed row is a tombstone until dead rows
pass a quarter of the rows, then everything is compacted (rows keep their order). Batches are
numpy operations; Python touches each user only to read Records in or build Records out.

Two open-addressing tables (linear probing, rebuilt at load 0.5 when they would pass 0.7) index
the rows, both probed a whole batch at a time:

* IDs: ``_slots`` holds row numbers (``-1`` empty, ``-2`` a removed entry); candidates are
  compared against the ID column itself, so the table costs 4 bytes a slot and nothing else.
* names: one slot per distinct name: ``_nheads`` the newest row with that name and ``_ncount``
  how many live rows have it; each row links to the previous row of its name (``_next``), so
  dead rows stay in a chain until compaction and a walk stops after ``_ncount`` live rows.
  Candidates are compared by hash, then byte for byte against the arena (collisions are fine).

Order: ``values()`` and the users of one name in ``find`` come in row order. A row is appended
when an ID is added, or upserted with another name than the stored one (its old row dies); an
upsert that keeps the name replaces age and extras in place. Rows appended by one batch follow
the first occurrence of their ID in it. This matches ``Partition`` (insertion order of a name's
users) except when one upsert batch names the same ID more than once, and for names held by more
than 8 users, where ``Partition`` uses a set. ``remove_records`` lists users removed by ID in
the order asked, then each name's users in row order.

Names must encode as UTF-8 (no lone surrogates: msgpack never yields them); ages must fit a byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress, repeat
from operator import attrgetter
from typing import Any, ClassVar

import msgspec
import numpy as np

from pydbms_shard.codec import Record

from .columnar import Columns

_ids = attrgetter("id")
_names = attrgetter("name")
_ages = attrgetter("age")
_extras_of = attrgetter("extras")

_EMPTY, _GONE = -1, -2
_MIN_ROWS = 1024
_MIN_TABLE = 1024
_MAX_LOAD = 0.7  # a table is rebuilt (at load <= 0.5) when used slots would pass this
_CHUNK_BYTES = 1 << 18  # per-byte temporaries (hashing, gathering) are built this many name bytes at a time
_U32_LIMIT = (1 << 32) - 1
# _WORD_MASKS[k]: the first k bytes of a big-endian u64 word (a name's 8-byte sort key)
_WORD_MASKS = np.array([((1 << (8 * k)) - 1) << (8 * (8 - k)) for k in range(9)], dtype=np.uint64)

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)
_P = np.uint64((0x100000001B3 * 0x9E3779B1 | 1) & 0xFFFFFFFFFFFFFFFF)  # odd multiplier of the polynomial name hash

_encode_extras = msgspec.msgpack.Encoder().encode
_decode_extras = msgspec.msgpack.Decoder(dict[str, Any]).decode

_powers = np.ones(1, dtype=np.uint64)


def _power_table(n: int) -> np.ndarray:
    """``_P ** i`` for ``i < n`` (mod 2**64), grown on demand."""
    global _powers
    if len(_powers) < n:
        size = max(n, 2 * len(_powers))
        table = np.full(size, _P, dtype=np.uint64)
        table[0] = 1
        _powers = np.cumprod(table, dtype=np.uint64)
    return _powers


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finalizer (splitmix64): every input bit reaches the low bits a mask keeps."""
    x = x ^ (x >> np.uint64(30))
    x *= _K2
    x ^= x >> np.uint64(27)
    x *= _K3
    x ^= x >> np.uint64(31)
    return x


def _chunks(ends: np.ndarray, budget: int = _CHUNK_BYTES) -> list[tuple[int, int]]:
    """Row ranges of contiguous spans (``ends`` from 0) holding about ``budget`` bytes each."""
    k = len(ends)
    total = int(ends[-1]) if k else 0
    if total <= budget:
        return [(0, k)]
    cuts = np.searchsorted(ends, np.arange(budget, total, budget), side="right")
    bounds = np.unique(np.concatenate(([0], cuts, [k]))).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def hash_spans(buf: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A u64 hash of each contiguous span ``buf[ends[i-1]:ends[i]]`` (from 0), without a Python
    object per span: a polynomial ``sum(b[j] * P**j)`` by ``np.add.reduceat``, mixed with the
    length. Process-independent, so a name hashes the same from a ``str`` and from an arena."""
    k = len(ends)
    sums = np.zeros(k, dtype=np.uint64)
    if k == 0:
        return sums
    ends = ends.astype(np.int64, copy=False)
    starts = np.empty(k, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1]
    lens = ends - starts
    powers = _power_table(int(lens.max()) + 1)
    for a, b in _chunks(ends):
        b0, b1 = int(starts[a]), int(ends[b - 1])
        if b1 == b0:
            continue
        seg = buf[b0:b1].astype(np.uint64)
        local, width = starts[a:b] - b0, lens[a:b]
        seg *= powers[np.arange(b1 - b0) - np.repeat(local, width)]
        nonempty = width > 0
        part = sums[a:b]
        part[nonempty] = np.add.reduceat(seg, local[nonempty])
    return _mix(sums ^ _mix(lens.astype(np.uint64) + _K1))


def _gather(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The spans ``buf[starts[i]:starts[i]+lens[i]]`` back to back."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint8)
    out_starts = np.cumsum(lens) - lens
    gathered: np.ndarray = buf[np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lens)]
    return gathered


def _spans_equal(a: np.ndarray, a_starts: np.ndarray, b: np.ndarray, b_starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """For span pairs of equal length ``lens``: are their bytes equal?"""
    k = len(lens)
    total = int(lens.sum())
    if total == 0:
        return np.ones(k, dtype=bool)
    owner = np.repeat(np.arange(k), lens)
    offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    differ = a[a_starts[owner] + offset] != b[b_starts[owner] + offset]
    equal: np.ndarray = np.bincount(owner[differ], minlength=k) == 0
    return equal


def encode_names(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Names as (UTF-8 bytes back to back, end offsets), without a loop in Python."""
    joined = "".join(names)
    if joined.isascii():
        data = joined.encode("ascii")
        lens = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
    else:
        encoded = list(map(str.encode, names))
        data = b"".join(encoded)
        lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(names))
    return np.frombuffer(data, dtype=np.uint8), np.cumsum(lens)


def _argsort_stable_ties(keys: np.ndarray) -> np.ndarray:
    """``argsort(keys, kind="stable")``, faster: numpy's default (SIMD) sort, then only the runs
    of equal keys (repeated names or IDs, few in practice) put back in position order."""
    order = np.argsort(keys)
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    if same.any():
        in_run = np.zeros(len(keys), dtype=bool)
        in_run[1:] |= same
        in_run[:-1] |= same
        at = np.flatnonzero(in_run)
        sub = order[at]
        order[at] = sub[np.lexsort((sub, keys[sub]))]
    return order


def _first_occurrence(words: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each ``(n, 2)`` u64 key. Sorts one mixed u64 per key (a
    stable sort, so a key's first occurrence leads its run); only if two different keys mix to
    the same value (never seen in practice) does it sort the two words themselves."""
    n = len(words)
    first = np.ones(n, dtype=bool)
    if n < 2:
        return first
    mixed = _mix((words[:, 0] * _K1) ^ words[:, 1])
    order = _argsort_stable_ties(mixed)
    sm = mixed[order]
    tie = np.flatnonzero(sm[1:] == sm[:-1])
    if len(tie) == 0:
        return first
    a, b = words[order[tie]], words[order[tie + 1]]
    if (a == b).all():
        first[order[tie + 1]] = False
        return first
    order = np.lexsort((words[:, 1], words[:, 0]))
    sw = words[order]
    first[order[1:]] = (sw[1:] != sw[:-1]).any(axis=1)
    return first


def _lengths(ends: np.ndarray) -> np.ndarray:
    """Span lengths from end offsets (the first span starts at 0), as int64."""
    lens = ends.astype(np.int64)
    lens[1:] -= ends[:-1].astype(np.int64)
    return lens


def _pow2_at_least(n: int, floor: int) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


def _id_words(joined: bytes, n: int) -> np.ndarray:
    if len(joined) != 16 * n:
        raise ValueError("every user ID must be 16 bytes")
    return np.frombuffer(joined, dtype=np.uint64).reshape(n, 2)


def _take(cols: Columns, keep: np.ndarray) -> Columns:
    """The rows of ``cols`` where the bool mask ``keep`` is true."""
    name_lens = _lengths(cols.name_ends)
    extra_lens = _lengths(cols.extra_ends)
    return Columns(
        np.ascontiguousarray(cols.ids[keep]),
        cols.ages[keep],
        np.cumsum(name_lens[keep]).astype(np.uint64),
        np.frombuffer(cols.name_arena, dtype=np.uint8)[: int(name_lens.sum())][np.repeat(keep, name_lens)].tobytes(),
        np.cumsum(extra_lens[keep]).astype(np.uint64),
        np.frombuffer(cols.extra_arena, dtype=np.uint8)[: int(extra_lens.sum())][np.repeat(keep, extra_lens)].tobytes(),
    )


class ColumnPartition:
    """A shard's users in columns; the same batch methods and results as ``Partition``."""

    # small in tests, to exercise compaction: it runs when dead rows pass this fraction of the
    # rows and number at least _COMPACT_MIN
    _COMPACT_FRACTION: ClassVar[float] = 0.25
    _COMPACT_MIN: ClassVar[int] = 4096
    # tests narrow the name hash to force collisions
    _HASH_MASK: ClassVar[int] = (1 << 32) - 1  # 32 bits a name: collisions are settled against the arena anyway

    __slots__ = (
        "_ages",
        "_alen",
        "_alive",
        "_arena",
        "_ends",
        "_extras",
        "_ids",
        "_live",
        "_mask",
        "_n",
        "_ncount",
        "_ndistinct",
        "_next",
        "_nhash",
        "_nheads",
        "_nmask",
        "_nslot",
        "_nused",
        "_slots",
        "_used",
        "_words",
    )

    def __init__(self, records: list[Record] | None = None) -> None:
        self._reset()
        if records:
            self.upsert(records)  # like Partition(records): a repeated ID keeps its last record

    def _reset(self) -> None:
        self._n = 0  # rows used, live or dead
        self._live = 0
        self._alloc_rows(0)
        self._arena = np.zeros(0, dtype=np.uint8)
        self._alen = 0
        self._extras: dict[int, bytes] = {}  # row -> msgpack map, for the few users with extras
        self._slots = np.full(_MIN_TABLE, _EMPTY, dtype=np.int32)
        self._mask = _MIN_TABLE - 1
        self._used = 0  # ID slots not empty (rows and removed entries)
        self._nheads = np.full(_MIN_TABLE, _EMPTY, dtype=np.int32)
        self._ncount = np.zeros(_MIN_TABLE, dtype=np.int32)
        self._nmask = _MIN_TABLE - 1
        self._nused = 0  # name slots taken (a name with no live user keeps its slot until a rebuild)
        self._ndistinct = 0  # name slots with live users

    def _alloc_rows(self, cap: int) -> None:
        self._ids = np.zeros((cap, 16), dtype=np.uint8)
        self._words = self._ids.view(np.uint64)  # (cap, 2): the same bytes, compared as two words
        self._ages = np.zeros(cap, dtype=np.uint8)
        self._alive = np.zeros(cap, dtype=bool)
        self._ends = np.zeros(cap, dtype=np.uint32)
        self._nhash = np.zeros(cap, dtype=np.uint32)
        self._nslot = np.zeros(cap, dtype=np.int32)
        self._next = np.zeros(cap, dtype=np.int32)

    def __len__(self) -> int:
        return self._live

    def name_count(self) -> int:
        """How many distinct names live users have (the shard's stats)."""
        return self._ndistinct

    def state(self) -> tuple[Any, ...]:
        """The whole internal state, to put back with ``restore`` (undoing ``clear``): ``clear``
        allocates new arrays, so the old ones stay as they were."""
        return tuple(getattr(self, name) for name in self.__slots__)

    def restore(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state):
            setattr(self, name, value)

    # ---------------------------------------------------------- storage

    def _reserve(self, rows: int, name_bytes: int) -> None:
        """Room for more rows and name bytes, doubling (rows) or growing by half (arena)."""
        need = self._n + rows
        cap = len(self._ages)
        if need > cap:
            new_cap = max(need, 2 * cap, _MIN_ROWS)
            old: tuple[np.ndarray, ...] = (self._ids, self._ages, self._alive, self._ends, self._nhash, self._nslot, self._next)
            ends_dtype = self._ends.dtype
            self._alloc_rows(new_cap)
            if ends_dtype != self._ends.dtype:
                self._ends = self._ends.astype(ends_dtype)
            n = self._n
            fresh: tuple[np.ndarray, ...] = (self._ids, self._ages, self._alive, self._ends, self._nhash, self._nslot, self._next)
            for new, prev in zip(fresh, old):
                new[:n] = prev[:n]
        need_bytes = self._alen + name_bytes
        if need_bytes > len(self._arena):
            arena = np.zeros(max(need_bytes, len(self._arena) * 3 // 2, 4096), dtype=np.uint8)
            arena[: self._alen] = self._arena[: self._alen]
            self._arena = arena
        if need_bytes > _U32_LIMIT and self._ends.dtype != np.int64:
            self._ends = self._ends.astype(np.int64)

    def _starts(self, rows: np.ndarray) -> np.ndarray:
        """Where each row's name begins in the arena."""
        starts: np.ndarray = np.where(rows > 0, self._ends[rows - 1], 0).astype(np.int64)
        return starts

    def _spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = self._starts(rows)
        return starts, self._ends[rows].astype(np.int64) - starts

    def _hash(self, buf: np.ndarray, ends: np.ndarray) -> np.ndarray:
        hashed: np.ndarray = hash_spans(buf, ends) & np.uint64(self._HASH_MASK)
        return hashed

    def _append(self, ids: np.ndarray, ages: np.ndarray, names: np.ndarray, name_ends: np.ndarray, extras: dict[int, bytes]) -> np.ndarray:
        """Append rows (IDs known absent and distinct) and index them; returns their row numbers.
        ``name_ends`` are the ends of the names in ``names`` (from 0); ``extras`` by batch index."""
        k = len(ages)
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        nbytes = int(name_ends[-1])
        hashes = self._hash(names, name_ends)
        self._reserve(k, nbytes)
        n, alen = self._n, self._alen
        rows = np.arange(n, n + k, dtype=np.int64)
        self._ids[n : n + k] = ids
        self._ages[n : n + k] = ages
        self._alive[n : n + k] = True
        self._arena[alen : alen + nbytes] = names[:nbytes]
        self._ends[n : n + k] = name_ends + alen
        self._nhash[n : n + k] = hashes
        for i, packed in extras.items():
            self._extras[n + i] = packed
        self._n, self._alen, self._live = n + k, alen + nbytes, self._live + k
        self._id_insert(self._words[n : n + k], rows)
        self._name_link(rows)
        return rows

    def _kill(self, rows: np.ndarray) -> None:
        """Tombstone live rows (distinct) and take them out of both indexes."""
        if len(rows) == 0:
            return
        slots, _ = self._id_probe(self._words[rows])
        self._slots[slots] = _GONE
        self._alive[rows] = False
        self._live -= len(rows)
        names, counts = np.unique(self._nslot[rows], return_counts=True)
        left = self._ncount[names] - counts.astype(np.int32)
        self._ncount[names] = left
        self._ndistinct -= int((left == 0).sum())
        # a dead row's extras stay (row numbers are not reused) until compaction: the records
        # removed are built after this

    def _maybe_compact(self) -> None:
        dead = self._n - self._live
        if dead >= self._COMPACT_MIN and dead > self._COMPACT_FRACTION * self._n:
            self.compact()

    def compact(self) -> None:
        """Drop dead rows (keeping the order of the live ones) and rebuild both indexes."""
        n = self._n
        alive = self._alive[:n]
        keep = np.flatnonzero(alive)
        lens = _lengths(self._ends[:n])
        names = self._arena[: self._alen][np.repeat(alive, lens)]
        old = (self._ids[keep], self._ages[keep], self._nhash[keep])
        extras = self._extras
        k = len(keep)
        self._alloc_rows(max(k + k // 4, _MIN_ROWS))
        self._ids[:k], self._ages[:k], self._nhash[:k] = old
        self._alive[:k] = True
        self._arena = np.zeros(max(len(names) + len(names) // 4, 4096), dtype=np.uint8)
        self._arena[: len(names)] = names
        self._alen = len(names)
        if self._alen > _U32_LIMIT:
            self._ends = self._ends.astype(np.int64)
        self._ends[:k] = np.cumsum(lens[keep])
        self._extras = {}
        if extras:
            rows = np.fromiter(extras, dtype=np.int64, count=len(extras))
            live = alive[rows]
            renumber = np.cumsum(alive) - 1
            self._extras = dict(zip(renumber[rows[live]].tolist(), compress(extras.values(), live.tolist())))
        self._n = self._live = k
        self._rebuild_ids()
        self._rebuild_names()

    # ---------------------------------------------------------- ID table

    def _id_home(self, words: np.ndarray) -> np.ndarray:
        x = _mix((words[:, 0] * _K1) ^ words[:, 1])
        home: np.ndarray = (x & np.uint64(self._mask)).astype(np.int64)
        return home

    def _id_probe(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each ``(k, 2)`` key: (its slot, its row), both -1 when absent."""
        k = len(words)
        slots = np.full(k, -1, dtype=np.int64)
        rows = np.full(k, -1, dtype=np.int64)
        if k == 0 or self._live == 0:
            return slots, rows
        table, ids, mask = self._slots, self._words, self._mask
        pending = np.arange(k)
        pos = self._id_home(words)
        while len(pending):
            r = table[pos].astype(np.int64)
            match = r >= 0
            cand = np.flatnonzero(match)
            if len(cand):
                rc, q = r[cand], words[pending[cand]]
                match[cand] = (ids[rc, 0] == q[:, 0]) & (ids[rc, 1] == q[:, 1])
            done = pending[match]
            slots[done], rows[done] = pos[match], r[match]
            go_on = ~match & (r != _EMPTY)
            pending, pos = pending[go_on], (pos[go_on] + 1) & mask
        return slots, rows

    def _id_insert(self, words: np.ndarray, rows: np.ndarray) -> None:
        """Index rows whose IDs are absent and distinct."""
        k = len(rows)
        if self._used + k > _MAX_LOAD * len(self._slots):
            self._rebuild_ids()  # the live rows include these ones
            return
        self._place(self._slots, self._mask, self._id_home(words), rows, count_used=True)

    def _place(self, table: np.ndarray, mask: int, home: np.ndarray, values: np.ndarray, count_used: bool) -> np.ndarray:
        """Put each value in the first free slot from its home (keys distinct, known absent);
        returns the slots. Of several values claiming one slot one wins, the rest probe on."""
        k = len(values)
        placed = np.empty(k, dtype=np.int64)
        owner = np.empty(len(table), dtype=np.int64)  # scratch, untouched pages cost nothing
        pending, pos = np.arange(k), home.astype(np.int64)
        while len(pending):
            state = table[pos]
            free = np.flatnonzero(state < 0)
            if len(free):
                at = pos[free]
                owner[at] = free  # of several claims on one slot, one write survives
                won = owner[at] == free
                winners, taken = free[won], at[won]
                if count_used:
                    self._used += int((state[winners] == _EMPTY).sum())
                table[taken] = values[pending[winners]]
                placed[pending[winners]] = taken
                lost = np.ones(len(pending), dtype=bool)
                lost[winners] = False
                pending, pos = pending[lost], pos[lost]
            pos = (pos + 1) & mask
        return placed

    @staticmethod
    def _place_fresh(table: np.ndarray, mask: int, home: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``_place`` into an empty table, without probing rounds: with the keys sorted by home,
        linear probing puts key ``i`` at ``i + max(home[j] - j for j <= i)``. Keys pushed past
        the end wrap around to the first free slots from 0 (every slot from their home to the
        end is taken, so a lookup finds them there)."""
        k = len(values)
        placed = np.empty(k, dtype=np.int64)
        if k == 0:
            return placed
        order = np.argsort(home)
        index = np.arange(k, dtype=np.int64)
        pos = index + np.maximum.accumulate(home[order].astype(np.int64) - index)
        inside = pos <= mask
        table[pos[inside]] = values[order[inside]]
        placed[order[inside]] = pos[inside]
        wrapped = order[~inside]
        if len(wrapped):
            free = np.flatnonzero(table[: len(wrapped) + int(inside.sum())] < 0)[: len(wrapped)]
            table[free] = values[wrapped]
            placed[wrapped] = free
        return placed

    def _rebuild_ids(self) -> None:
        rows = np.flatnonzero(self._alive[: self._n])
        size = _pow2_at_least(2 * len(rows), _MIN_TABLE)
        self._slots = np.full(size, _EMPTY, dtype=np.int32)
        self._mask = size - 1
        self._used = len(rows)
        self._place_fresh(self._slots, self._mask, self._id_home(self._words[rows]), rows)

    # ---------------------------------------------------------- name table

    def _name_lookup(self, hashes: np.ndarray, buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """The slot of each queried name (spans of ``buf``), or -1."""
        k = len(hashes)
        found = np.full(k, -1, dtype=np.int64)
        if k == 0 or self._nused == 0:
            return found
        heads, nhash, mask = self._nheads, self._nhash, self._nmask
        pending = np.arange(k)
        pos = (hashes & np.uint64(mask)).astype(np.int64)
        while len(pending):
            head = heads[pos].astype(np.int64)
            match = head >= 0
            cand = np.flatnonzero(match)
            if len(cand):
                q = pending[cand]
                same = nhash[head[cand]] == hashes[q]
                row_starts, row_lens = self._spans(head[cand])
                same &= row_lens == lens[q]
                check = np.flatnonzero(same)
                if len(check):
                    same[check] = _spans_equal(buf, starts[q[check]], self._arena, row_starts[check], lens[q[check]])
                match[cand] = same
            found[pending[match]] = pos[match]
            go_on = ~match & (head != _EMPTY)
            pending, pos = pending[go_on], (pos[go_on] + 1) & mask
        return found

    def _group_names(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Group rows (ascending) by name: (group number of each row, first row of each group, an
        order of the rows that keeps each group together and in row order). Rows are
        sorted by hash and neighbours compared; a run of equal hashes with different names (a
        collision) is split in Python, by bytes."""
        k = len(rows)
        hashes = self._nhash[rows]
        order = _argsort_stable_ties(hashes)
        sorted_hashes = hashes[order]
        same = sorted_hashes[1:] == sorted_hashes[:-1]
        pairs = np.flatnonzero(same)
        new_group = np.ones(k, dtype=bool)
        new_group[1:] = ~same
        if len(pairs):
            a_starts, a_lens = self._spans(rows[order[pairs]])
            b_starts, b_lens = self._spans(rows[order[pairs + 1]])
            equal = a_lens == b_lens
            check = np.flatnonzero(equal)
            equal[check] = _spans_equal(self._arena, a_starts[check], self._arena, b_starts[check], a_lens[check])
            if not equal.all():
                self._split_collisions(rows, order, new_group, pairs[~equal] + 1)
        group_sorted = np.cumsum(new_group) - 1
        groups = np.empty(k, dtype=np.int64)
        groups[order] = group_sorted
        firsts = np.full(int(group_sorted[-1]) + 1 if k else 0, k, dtype=np.int64)
        np.minimum.at(firsts, groups, np.arange(k))
        return groups, rows[firsts], order

    def _split_collisions(self, rows: np.ndarray, order: np.ndarray, new_group: np.ndarray, mismatches: np.ndarray) -> None:
        """Within each hash run (of ``rows[order]``) holding a mismatch, regroup by the name bytes
        (rare: slow is fine). The run's part of ``order`` is permuted so that rows of one name are
        adjacent, and ``new_group`` marks where each name begins."""
        run_starts = np.flatnonzero(new_group)
        bounds = np.append(run_starts, len(order))
        for run in np.unique(np.searchsorted(run_starts, mismatches, side="right") - 1).tolist():
            a, b = int(bounds[run]), int(bounds[run + 1])
            starts, lens = self._spans(rows[order[a:b]])
            by_name: dict[bytes, list[int]] = {}
            for index, s, n in zip(order[a:b].tolist(), starts.tolist(), lens.tolist()):
                by_name.setdefault(self._arena[s : s + n].tobytes(), []).append(index)
            regrouped = list(by_name.values())
            order[a:b] = [index for group in regrouped for index in group]
            new_group[a:b] = False
            at = a
            for group in regrouped:
                new_group[at] = True
                at += len(group)

    def _name_link(self, rows: np.ndarray) -> None:
        """Index new rows (ascending) by name: each becomes the head of its name's chain."""
        starts, lens = self._spans(rows)
        slots = self._name_lookup(self._nhash[rows], self._arena, starts, lens)
        fresh = slots < 0
        if fresh.any():
            unplaced = int(fresh.sum())
            if self._nused + unplaced > _MAX_LOAD * len(self._nheads) and 2 * unplaced >= self._live:
                self._rebuild_names()  # may be too big: a rebuild costs about what grouping them would
                return
            groups, firsts, _ = self._group_names(rows[fresh])
            if self._nused + len(firsts) > _MAX_LOAD * len(self._nheads):
                self._rebuild_names()  # the live rows include these ones
                return
            home = (self._nhash[firsts] & np.uint64(self._nmask)).astype(np.int64)
            new_slots = self._place(self._nheads, self._nmask, home, firsts, count_used=False)
            self._nused += len(firsts)
            slots[fresh] = new_slots[groups]
        self._chain(rows, slots, fresh)

    def _chain(self, rows: np.ndarray, slots: np.ndarray, fresh: np.ndarray, order: np.ndarray | None = None) -> None:
        """Link rows (ascending) into their slots' chains; ``fresh`` slots start empty. ``order``
        when the caller has one that keeps each slot's rows together and ascending."""
        if order is None:
            order = _argsort_stable_ties(slots)
        rs, ss = rows[order], slots[order]
        starts_group = np.ones(len(rs), dtype=bool)
        starts_group[1:] = ss[1:] != ss[:-1]
        ends_group = np.ones(len(rs), dtype=bool)
        ends_group[:-1] = starts_group[1:]
        prev = np.empty(len(rs), dtype=np.int64)
        prev[1:] = rs[:-1]
        first_slots = ss[starts_group]
        prev[starts_group] = np.where(fresh[order][starts_group], _EMPTY, self._nheads[first_slots])
        self._next[rs] = prev
        self._nslot[rs] = ss
        self._nheads[ss[ends_group]] = rs[ends_group]
        sizes = np.diff(np.append(np.flatnonzero(starts_group), len(rs)))
        before = self._ncount[first_slots]
        self._ncount[first_slots] = before + sizes.astype(np.int32)
        self._ndistinct += int((before == 0).sum())

    def _rebuild_names(self) -> None:
        rows = np.flatnonzero(self._alive[: self._n])
        groups, firsts, order = self._group_names(rows)
        size = _pow2_at_least(2 * len(firsts), _MIN_TABLE)
        self._nheads = np.full(size, _EMPTY, dtype=np.int32)
        self._ncount = np.zeros(size, dtype=np.int32)
        self._nmask = size - 1
        self._nused = self._ndistinct = 0
        if len(rows) == 0:
            return
        home = (self._nhash[firsts] & np.uint64(self._nmask)).astype(np.int64)
        group_slots = self._place_fresh(self._nheads, self._nmask, home, firsts)
        self._nused = len(firsts)
        self._chain(rows, group_slots[groups], np.ones(len(rows), dtype=bool), order)

    def _query_slots(self, names: list[str]) -> np.ndarray:
        """The slot of each name that some live user has, else -1."""
        buf, ends = encode_names(names)
        starts = ends - _lengths(ends)
        slots = self._name_lookup(self._hash(buf, ends), buf, starts, ends - starts)
        known = np.flatnonzero(slots >= 0)
        slots[known[self._ncount[slots[known]] == 0]] = -1
        return slots

    def _walk(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The live rows of each queried slot (all ``>= 0``), as (query index, row), sorted by
        query then row. Chains are walked a step per round for all queries at once; the last few
        long chains (a name many users share) step on in Python instead of a round each."""
        queries = np.arange(len(slots))
        heads = self._nheads[slots].astype(np.int64)
        left = self._ncount[slots].astype(np.int64)
        alive, nxt = self._alive, self._next
        out_q: list[np.ndarray] = []
        out_r: list[np.ndarray] = []
        rounds = 0
        while len(heads):
            live = alive[heads]
            out_q.append(queries[live])
            out_r.append(heads[live])
            left -= live
            heads = nxt[heads].astype(np.int64)
            go_on = (left > 0) & (heads >= 0)
            queries, heads, left = queries[go_on], heads[go_on], left[go_on]
            rounds += 1
            if rounds >= 16 and 0 < len(heads) <= 64:  # a numpy round costs ~64 Python steps
                q_tail, r_tail = self._walk_slowly(queries.tolist(), heads.tolist(), left.tolist())
                out_q.append(q_tail)
                out_r.append(r_tail)
                break
        q = np.concatenate(out_q) if out_q else np.zeros(0, dtype=np.int64)
        r = np.concatenate(out_r) if out_r else np.zeros(0, dtype=np.int64)
        order = np.lexsort((r, q))
        return q[order], r[order]

    def _walk_slowly(self, queries: list[int], heads: list[int], left: list[int]) -> tuple[np.ndarray, np.ndarray]:
        alive, nxt = self._alive.item, self._next.item
        out_q: list[int] = []
        out_r: list[int] = []
        for query, row, count in zip(queries, heads, left):
            while count and row >= 0:
                if alive(row):
                    out_q.append(query)
                    out_r.append(row)
                    count -= 1
                row = nxt(row)
        return np.array(out_q, dtype=np.int64), np.array(out_r, dtype=np.int64)

    # ---------------------------------------------------------- rows to Records

    def _names_of(self, rows: np.ndarray) -> list[str]:
        out: list[str] = []
        all_starts, all_lens = self._spans(rows)
        local_ends = np.cumsum(all_lens)
        for a, b in _chunks(local_ends):
            lens = all_lens[a:b]
            data = _gather(self._arena, all_starts[a:b], lens).tobytes()
            ends = np.cumsum(lens)
            slices = map(slice, (ends - lens).tolist(), ends.tolist())
            if data.isascii():
                out.extend(map(data.decode("ascii").__getitem__, slices))
            else:
                out.extend(map(bytes.decode, map(data.__getitem__, slices)))
        return out

    def _records(self, rows: np.ndarray) -> list[Record]:
        if len(rows) == 0:
            return []
        names = self._names_of(rows)
        ids = self._ids[rows].view("V16").ravel().tolist()
        extras: Iterable[dict[str, Any] | None]
        if self._extras:
            get = self._extras.get
            extras = [None if packed is None else _decode_extras(packed) for packed in map(get, rows.tolist())]
        else:
            extras = repeat(None)
        return list(map(Record, names, self._ages[rows].tolist(), ids, extras))

    @staticmethod
    def _batch(
        records: list[Record], ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, bytes]]:
        """Records as columns: (IDs, ages, name bytes, name ends, extras by index); ``ids`` when
        the caller has their ``(n, 16)`` bytes already."""
        n = len(records)
        if ids is None:
            ids = np.frombuffer(b"".join(map(_ids, records)), dtype=np.uint8).reshape(n, 16)
        ages = np.fromiter(map(_ages, records), dtype=np.int64, count=n)
        if n and (ages.min() < 0 or ages.max() > 255):
            raise ValueError("an age does not fit the age column (0-255)")
        names, ends = encode_names(list(map(_names, records)))
        extras = list(map(_extras_of, records))
        packed = {i: _encode_extras(e) for i, e in enumerate(extras) if e is not None} if extras.count(None) != n else {}
        return ids, ages.astype(np.uint8), names, ends, packed

    # ---------------------------------------------------------- writes

    def add(self, records: list[Record]) -> int:
        """Insert each record whose ID is new; an ID already stored is skipped."""
        return len(self.add_ids(records))

    def add_ids(self, records: list[Record]) -> list[bytes]:
        """As ``add``; returns the IDs added (what undoing the batch must remove)."""
        if not records:
            return []
        joined = b"".join(map(_ids, records))
        words = _id_words(joined, len(records))
        keep = (self._id_probe(words)[1] < 0) & _first_occurrence(words)
        ids = np.frombuffer(joined, dtype=np.uint8).reshape(-1, 16)
        if keep.all():
            kept = records
        else:
            kept, ids = list(compress(records, keep.tolist())), ids[keep]
        self._append(*self._batch(kept, ids))
        return list(map(_ids, kept))

    def add_columns(self, cols: Columns) -> np.ndarray:
        """As ``add`` for a batch as columns; returns the row numbers (in ``cols``) added."""
        n = cols.rows
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        ids = np.ascontiguousarray(cols.ids, dtype=np.uint8).reshape(n, 16)
        words = ids.view(np.uint64)
        keep = (self._id_probe(words)[1] < 0) & _first_occurrence(words)
        sel = np.flatnonzero(keep)
        name_lens = _lengths(cols.name_ends)
        names = np.frombuffer(cols.name_arena, dtype=np.uint8)[: int(name_lens.sum())][np.repeat(keep, name_lens)]
        extras: dict[int, bytes] = {}
        if len(cols.extra_arena):
            extra_ends = cols.extra_ends.astype(np.int64)
            extra_starts = extra_ends - _lengths(extra_ends)
            has = np.flatnonzero(extra_ends[sel] > extra_starts[sel])
            arena = cols.extra_arena
            extras = {i: arena[s:e] for i, s, e in zip(has.tolist(), extra_starts[sel[has]].tolist(), extra_ends[sel[has]].tolist())}
        self._append(ids[sel], cols.ages[sel], names, np.cumsum(name_lens[sel]), extras)
        return sel

    def upsert(self, records: list[Record]) -> int:
        """Insert or replace; returns how many were new. A replaced record leaves no trace."""
        return self.upsert_detailed(records)[0]

    def upsert_detailed(self, records: list[Record]) -> tuple[int, list[bytes]]:
        """Insert or replace; returns how many were new and the IDs that were replaced."""
        inserted, replaced = self.upsert_undoable(records)
        return len(inserted), [old.id for old in replaced]

    def upsert_undoable(self, records: list[Record]) -> tuple[list[bytes], list[Record]]:
        """Insert or replace; returns the IDs inserted and the records replaced, in order
        (what undoing the batch must remove and put back). Within the batch the last record of
        an ID wins; a later one replaces an earlier one (which then counts as replaced)."""
        n = len(records)
        if n == 0:
            return [], []
        words = _id_words(b"".join(map(_ids, records)), n)
        stored = self._id_probe(words)[1]
        first = np.ones(n, dtype=bool)  # first occurrence of its ID in the batch
        last = np.ones(n, dtype=bool)
        prev = np.full(n, -1, dtype=np.int64)  # the previous occurrence
        first_of = np.arange(n)  # the first occurrence
        if n > 1:
            order = np.lexsort((words[:, 1], words[:, 0]))
            sw = words[order]
            repeat_ = (sw[1:] == sw[:-1]).all(axis=1)
            if repeat_.any():
                first[order[1:][repeat_]] = False
                last[order[:-1][repeat_]] = False
                prev[order[1:][repeat_]] = order[:-1][repeat_]
                run = np.cumsum(np.concatenate(([True], ~repeat_))) - 1
                first_of[order] = order[np.flatnonzero(np.concatenate(([True], ~repeat_)))][run]
        inserted_at = np.flatnonzero(first & (stored < 0))
        replaced = self._replaced(records, stored, first, prev)
        winners = np.flatnonzero(last)
        old = stored[winners]
        moved = np.zeros(len(winners), dtype=bool)
        existing = np.flatnonzero(old >= 0)
        if len(existing):
            at = winners[existing]
            new_names = [records[i].name for i in at.tolist()]
            same = np.fromiter(map(str.__eq__, self._names_of(old[existing]), new_names), dtype=bool, count=len(at))
            moved[existing[~same]] = True
        appended = winners[moved | (old < 0)]
        appended = appended[np.argsort(first_of[appended], kind="stable")]
        batch = self._batch([records[i] for i in appended.tolist()])  # checked before anything changes
        in_place = winners[(old >= 0) & ~moved]
        self._replace_in_place(records, in_place, stored[in_place])
        self._kill(old[moved])
        self._append(*batch)
        self._maybe_compact()
        return [records[i].id for i in inserted_at.tolist()], replaced

    def _replaced(self, records: list[Record], stored: np.ndarray, first: np.ndarray, prev: np.ndarray) -> list[Record]:
        """In batch order: the stored record an ID's first occurrence replaces, and the batch's own
        earlier record each later occurrence replaces."""
        from_store = np.flatnonzero(first & (stored >= 0))
        old = self._records(stored[from_store])
        from_batch = np.flatnonzero(~first)
        if len(from_batch) == 0:
            return old
        merged = old + [records[i] for i in prev[from_batch].tolist()]
        order = np.argsort(np.concatenate((from_store, from_batch)), kind="stable")
        return list(map(merged.__getitem__, order.tolist()))

    def _replace_in_place(self, records: list[Record], at: np.ndarray, rows: np.ndarray) -> None:
        """Age and extras of rows whose upsert keeps the name."""
        if len(at) == 0:
            return
        chosen = [records[i] for i in at.tolist()]
        ages = np.fromiter(map(_ages, chosen), dtype=np.int64, count=len(chosen))
        if ages.min() < 0 or ages.max() > 255:
            raise ValueError("an age does not fit the age column (0-255)")
        self._ages[rows] = ages
        extras = self._extras
        if extras or list(map(_extras_of, chosen)).count(None) != len(chosen):  # {} is extras too
            for row, record in zip(rows.tolist(), chosen):
                if record.extras is None:
                    extras.pop(row, None)
                else:
                    extras[row] = _encode_extras(record.extras)

    def undo_upsert(self, inserted: list[bytes], replaced: list[Record]) -> None:
        """Put back the state before ``upsert_undoable`` returned (inserted, replaced)."""
        before: dict[bytes, Record | None] = dict.fromkeys(inserted)
        for old in replaced:
            before.setdefault(old.id, old)  # the first record replaced is the one from before
        self.remove(list(before), [])
        self.add([old for old in before.values() if old is not None])

    def remove(self, ids: list[bytes], names: list[str]) -> list[bytes]:
        """Remove by ID, then every user with each name; returns the IDs removed."""
        rows = self._remove_rows(ids, names)
        removed: list[bytes] = self._ids[rows].view("V16").ravel().tolist()
        self._maybe_compact()
        return removed

    def remove_records(self, ids: list[bytes], names: list[str]) -> list[Record]:
        """As ``remove``; returns the records removed (what undoing the batch must put back)."""
        rows = self._remove_rows(ids, names)
        removed = self._records(rows)
        self._maybe_compact()
        return removed

    def _remove_rows(self, ids: list[bytes], names: list[str]) -> np.ndarray:
        """Tombstone the users removed, in the order ``Partition`` reports them: IDs as given,
        then each name's users in row order. The rows stay readable until compaction."""
        rows = self._id_rows(ids)
        rows = rows[rows >= 0]
        if len(rows) > 1:  # an ID asked twice is removed the first time
            rows = rows[np.sort(np.unique(rows, return_index=True)[1])]
        self._kill(rows)
        if not names or self._live == 0:
            return rows
        slots = self._query_slots(names)
        asked = np.flatnonzero(slots >= 0)
        if len(asked) > 1:  # a name asked twice is removed the first time
            asked = asked[np.sort(np.unique(slots[asked], return_index=True)[1])]
        _, by_name = self._walk(slots[asked])
        self._kill(by_name)
        return np.concatenate((rows, by_name))

    def clear(self) -> None:
        self._reset()

    # ---------------------------------------------------------- reads

    def _id_rows(self, ids: list[bytes]) -> np.ndarray:
        """The row of each ID, or -1 (also for an ID that is not 16 bytes)."""
        joined = b"".join(ids)
        if len(joined) == 16 * len(ids):
            return self._id_probe(np.frombuffer(joined, dtype=np.uint64).reshape(-1, 2))[1]
        valid = np.fromiter((len(i) == 16 for i in ids), dtype=bool, count=len(ids))
        rows = np.full(len(ids), -1, dtype=np.int64)
        rows[valid] = self._id_rows(list(compress(ids, valid.tolist())))
        return rows

    def get(self, ids: list[bytes]) -> list[Record | None]:
        rows = self._id_rows(ids)
        found = np.flatnonzero(rows >= 0)
        records = self._records(rows[found])
        if len(found) == len(ids):
            return list(records)
        out: list[Record | None] = [None] * len(ids)
        for i, record in zip(found.tolist(), records):
            out[i] = record
        return out

    def contains(self, ids: list[bytes]) -> bytes:
        """One byte per ID: 1 when stored."""
        return (self._id_rows(ids) >= 0).astype(np.uint8).tobytes()

    def contains_rows(self, keys: np.ndarray) -> np.ndarray:
        """A bool per ID, for IDs as ``(n, 2)`` u64 rows (see ``id_index.as_rows``)."""
        words = np.ascontiguousarray(keys, dtype=np.uint64).astype(">u8").view(np.uint64).reshape(-1, 2)
        found: np.ndarray = self._id_probe(words)[1] >= 0
        return found

    def names_present(self, names: list[str]) -> bytes:
        if not names:
            return b""
        return (self._query_slots(names) >= 0).astype(np.uint8).tobytes()

    def find(self, ids: list[bytes], names: list[str]) -> tuple[list[int], list[Record]]:
        """Matches for ID queries then name queries, as (query number, record) pairs.

        Query numbers count the IDs first, then the names; they come out in increasing order,
        and the users of one name in row order (see the module's docstring).
        """
        hits, rows = self._find_rows(ids, names)
        return hits, self._records(rows)

    def _find_rows(self, ids: list[bytes], names: list[str]) -> tuple[list[int], np.ndarray]:
        id_rows = self._id_rows(ids) if ids else np.zeros(0, dtype=np.int64)
        hits = np.flatnonzero(id_rows >= 0)
        rows = id_rows[hits]
        if names and self._live:
            slots = self._query_slots(names)
            asked = np.flatnonzero(slots >= 0)
            queries, name_rows = self._walk(slots[asked])
            hits = np.concatenate((hits, asked[queries] + len(ids)))
            rows = np.concatenate((rows, name_rows))
        return hits.tolist(), rows

    def values(self) -> list[Record]:
        """Every live user, in row order (a list of new objects: a consistent cut)."""
        return self._records(np.flatnonzero(self._alive[: self._n]))

    # ---------------------------------------------------------- columns

    @classmethod
    def from_columns(cls, cols: Columns, *, distinct: bool = False) -> ColumnPartition:
        """A partition holding these rows, built without a Python loop per row except for the
        rows that have extras. A repeated ID keeps its last row, as ``Partition(records)`` keeps
        the last record; ``distinct=True`` skips that check (~0.1 s a million rows) when the
        caller knows the IDs are distinct (a snapshot file's)."""
        p = cls()
        n = cols.rows
        if n == 0:
            return p
        if not distinct:
            ids = np.ascontiguousarray(cols.ids, dtype=np.uint8).reshape(n, 16)
            last = _first_occurrence(ids.view(np.uint64)[::-1])[::-1]
            if not last.all():
                cols = _take(cols, last)
                n = cols.rows
        ends = cols.name_ends.astype(np.int64)
        nbytes = int(ends[-1])
        names = np.frombuffer(cols.name_arena, dtype=np.uint8)[:nbytes]
        p._alloc_rows(max(n, _MIN_ROWS))
        p._arena = np.zeros(max(nbytes, 4096), dtype=np.uint8)
        p._arena[:nbytes] = names
        p._alen = nbytes
        if nbytes > _U32_LIMIT:
            p._ends = p._ends.astype(np.int64)
        p._ids[:n] = np.asarray(cols.ids, dtype=np.uint8).reshape(n, 16)
        p._ages[:n] = cols.ages
        p._alive[:n] = True
        p._ends[:n] = ends
        p._nhash[:n] = p._hash(names, ends)
        if len(cols.extra_arena):
            extra_ends = cols.extra_ends.astype(np.int64)
            extra_starts = extra_ends - _lengths(extra_ends)
            has = np.flatnonzero(extra_ends > extra_starts)
            arena = cols.extra_arena
            p._extras = {r: arena[s:e] for r, s, e in zip(has.tolist(), extra_starts[has].tolist(), extra_ends[has].tolist())}
        p._n = p._live = n
        p._rebuild_ids()
        p._rebuild_names()
        return p

    def columns(self) -> Columns:
        """The live rows as new arrays, in row order: a consistent cut later writes do not touch
        (for a snapshot writer thread)."""
        n = self._n
        alive = self._alive[:n]
        keep = np.flatnonzero(alive)
        lens = _lengths(self._ends[:n])
        if len(keep) == n:
            name_arena = self._arena[: self._alen].tobytes()
        else:
            name_arena = self._arena[: self._alen][np.repeat(alive, lens)].tobytes()
        extra_lens = np.zeros(len(keep), dtype=np.int64)
        extra_arena = b""
        if self._extras:
            rows = [row for row in sorted(self._extras) if alive[row]]
            packed = [self._extras[row] for row in rows]
            extra_lens[np.searchsorted(keep, rows)] = np.fromiter(map(len, packed), dtype=np.int64, count=len(rows))
            extra_arena = b"".join(packed)
        return Columns(
            self._ids[keep],
            self._ages[keep],
            np.cumsum(lens[keep]).astype(np.uint64),
            name_arena,
            np.cumsum(extra_lens).astype(np.uint64),
            extra_arena,
        )

    def rows_as_columns(self, rows: np.ndarray) -> Columns:
        """The given rows (live or just removed) as new Columns, in that order: what a reply or
        an undo carries, without an object per user."""
        starts, lens = self._spans(rows)
        name_arena = _gather(self._arena, starts, lens).tobytes() if len(rows) else b""
        extra_lens = np.zeros(len(rows), dtype=np.int64)
        extra_arena = b""
        if self._extras and len(rows):
            get = self._extras.get
            packed = list(map(get, rows.tolist()))
            has = [p is not None for p in packed]
            if any(has):
                present = [p for p in packed if p is not None]
                extra_lens[np.flatnonzero(has)] = np.fromiter(map(len, present), dtype=np.int64, count=len(present))
                extra_arena = b"".join(present)
        return Columns(
            self._ids[rows],
            self._ages[rows],
            np.cumsum(lens).astype(np.uint64),
            name_arena,
            np.cumsum(extra_lens).astype(np.uint64),
            extra_arena,
        )

    def remove_columns(self, ids: list[bytes], names: list[str]) -> Columns:
        """As ``remove_records``, the users removed as Columns (their IDs are the reply, and
        ``add_columns`` of them undoes the batch)."""
        rows = self._remove_rows(ids, names)
        removed = self.rows_as_columns(rows)
        self._maybe_compact()
        return removed

    def find_columns(self, ids: list[bytes], names: list[str]) -> tuple[list[int], Columns]:
        """As ``find``, the matches as Columns (encoded for the reply without a Record each)."""
        hits, rows = self._find_rows(ids, names)
        return hits, self.rows_as_columns(rows)

    def nbytes(self) -> int:
        """Bytes held by the columns, arena, tables and extras (not counting Python headers)."""
        arrays = (self._ids, self._ages, self._alive, self._ends, self._nhash, self._nslot, self._next, self._arena)
        tables = (self._slots, self._nheads, self._ncount)
        return sum(a.nbytes for a in arrays + tables) + sum(len(v) + 100 for v in self._extras.values())

    # ---------------------------------------------------------- queries

    def query_rows(
        self,
        name: str | None = None,
        prefix: str | None = None,
        age_min: int = 0,
        age_max: int = 255,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> np.ndarray:
        """The live rows matching every filter given (exact name, name prefix, ages between
        ``age_min`` and ``age_max`` inclusive): ordered by ``order_by`` ("age", "-age", "name",
        "-name"; ties by ascending ID bytes) and cut to ``limit``, or in row order. All numpy:
        the name index for an exact name, a byte-column compare per prefix byte, ``lexsort``."""
        rows = self._match_rows(name, prefix, age_min, age_max)
        if order_by is None:
            return rows if limit is None else rows[:limit]
        if limit is not None and limit < len(rows):
            rows = rows[self._candidates(rows, order_by, limit)]
        order = self._order(rows, order_by)
        picked: np.ndarray = rows[order] if limit is None else rows[order[:limit]]
        return picked

    def query_count(self, name: str | None = None, prefix: str | None = None, age_min: int = 0, age_max: int = 255) -> int:
        """How many live users match (see ``query_rows``)."""
        if name is None and prefix is None and age_min <= 0 and age_max >= 255:
            return self._live
        return len(self._match_rows(name, prefix, age_min, age_max))

    def query_columns(
        self,
        name: str | None = None,
        prefix: str | None = None,
        age_min: int = 0,
        age_max: int = 255,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> Columns:
        """``query_rows`` as Columns, in that order (encoded for the reply without an object a user)."""
        return self.rows_as_columns(self.query_rows(name, prefix, age_min, age_max, order_by, limit))

    def _match_rows(self, name: str | None, prefix: str | None, age_min: int, age_max: int) -> np.ndarray:
        """The live rows matching the filters, in row order: an exact name through the name
        index; otherwise masks over the whole columns (ages, then a name's first byte), and only
        the rows left are gathered from for the prefix's further bytes."""
        n = self._n
        lo, hi = max(age_min, 0), min(age_max, 255)
        if lo > hi or self._live == 0:
            return np.zeros(0, dtype=np.int64)
        wanted = prefix.encode() if prefix else b""
        if name is not None:
            slots = self._query_slots([name])
            if slots[0] < 0:
                return np.zeros(0, dtype=np.int64)
            rows = np.sort(self._walk(slots)[1])
            if lo > 0 or hi < 255:
                ages = self._ages[rows]
                rows = rows[(ages >= lo) & (ages <= hi)]
            if not wanted:
                return rows
            starts, lens = self._spans(rows)
            keep = lens >= len(wanted)
            return self._narrow(rows[keep], starts[keep], wanted, 0)
        keep = self._alive[:n].copy()
        if lo > 0:
            keep &= self._ages[:n] >= lo
        if hi < 255:
            keep &= self._ages[:n] <= hi
        if not wanted:
            return np.flatnonzero(keep)
        ends = self._ends[:n].astype(np.int64)
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1]
        keep &= ends - starts >= len(wanted)
        keep &= self._arena[np.minimum(starts, len(self._arena) - 1)] == wanted[0]
        rows = np.flatnonzero(keep)
        return self._narrow(rows, starts[rows], wanted, 1)

    def _narrow(self, rows: np.ndarray, starts: np.ndarray, prefix: bytes, done: int) -> np.ndarray:
        """The rows (names long enough) whose name's bytes from ``done`` on match the prefix's:
        a gather and compare a byte, each on the rows still in (the first leaves a few percent)."""
        arena = self._arena
        for j in range(done, len(prefix)):
            if len(rows) == 0:
                break
            keep = arena[starts + j] == prefix[j]
            rows, starts = rows[keep], starts[keep]
        return rows

    def _id_keys(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ID as two u64 words whose order is the IDs' byte order (``uuid.UUID``'s)."""
        words = self._ids[rows].view(">u8").astype(np.uint64)
        return words[:, 0], words[:, 1]

    def _word(self, starts: np.ndarray, lens: np.ndarray, at: int) -> np.ndarray:
        """Bytes ``at..at+8`` of each name as a big-endian u64, zero past the name's end: zero is
        the smallest byte, so these words in sequence, then the length, order names as bytes.
        One gather of 8 bytes a row, through an overlapping view of the arena (a u64 at every
        byte offset); the few rows within 8 bytes of the arena's end are read byte by byte."""
        arena = self._arena
        pos = starts + at
        k = len(pos)
        word = np.zeros(k, dtype=np.uint64)
        room = len(arena) - 8
        near_end = pos > room
        if room >= 0:
            every = np.ndarray((room + 1,), dtype=np.uint64, buffer=arena, strides=(1,))  # native order: swapped below
            if near_end.any():
                word[~near_end] = every[pos[~near_end]]
            else:
                word = every[pos]
            if word.dtype.byteorder != ">" and np.little_endian:
                word.byteswap(inplace=True)
        if near_end.any():
            tail = np.flatnonzero(near_end)
            offsets = pos[tail, None] + np.arange(8)
            block = np.where(offsets < len(arena), arena[np.minimum(offsets, len(arena) - 1)], 0).astype(np.uint8)
            word[tail] = block.view(">u8").ravel()
        short = np.flatnonzero(lens - at < 8)
        word[short] &= _WORD_MASKS[np.maximum(lens[short] - at, 0)]
        return word

    def _candidates(self, rows: np.ndarray, order_by: str, limit: int) -> np.ndarray:
        """Positions in ``rows`` holding the first ``limit`` in that order (and the rows tied with
        the last of them on the leading key): a partition, so the sort that follows is small."""
        k = len(rows)
        if limit == 0:
            return np.zeros(0, dtype=np.int64)
        key: np.ndarray
        if order_by in ("age", "-age"):  # a byte: the cut comes from a histogram, not a partition
            key = self._ages[rows]
            counts = np.bincount(key, minlength=256)
            if order_by == "-age":
                return np.flatnonzero(key >= 255 - int(np.searchsorted(np.cumsum(counts[::-1]), limit)))
            return np.flatnonzero(key <= int(np.searchsorted(np.cumsum(counts), limit)))
        else:
            starts, lens = self._spans(rows)
            key = self._word(starts, lens, 0)
        if order_by[0] == "-":
            cut = np.partition(key, k - limit)[k - limit]
            return np.flatnonzero(key >= cut)
        cut = np.partition(key, limit - 1)[limit - 1]
        return np.flatnonzero(key <= cut)

    def _order(self, rows: np.ndarray, order_by: str) -> np.ndarray:
        """The permutation of ``rows`` in ``order_by`` order, ties by ascending ID."""
        hi, lo = self._id_keys(rows)
        if order_by in ("age", "-age"):
            ages = self._ages[rows].astype(np.int16)
            return np.lexsort((lo, hi, -ages if order_by == "-age" else ages))
        starts, lens = self._spans(rows)
        rank = self._name_rank(starts, lens)
        if order_by == "-name":
            return np.lexsort((lo, hi, -lens, -rank))
        return np.lexsort((lo, hi, lens, rank))

    def _name_rank(self, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """A rank per name such that (rank, length) orders names as bytes and is equal exactly
        for equal names. A rank is the position where its group starts in sorted order; groups
        that still tie (same bytes so far, some longer) are refined 8 bytes a round, only
        those rows: names of random letters are settled after one or two words."""
        k = len(starts)
        rank = np.zeros(k, dtype=np.int64)
        active = np.arange(k)
        at = 0
        while len(active) > 1:
            r = rank[active]
            w = self._word(starts[active], lens[active], at)
            order = np.lexsort((w, r))
            active, r, w = active[order], r[order], w[order]
            pos = np.arange(len(active))
            group_start = np.ones(len(active), dtype=bool)
            group_start[1:] = r[1:] != r[:-1]
            run_start = group_start.copy()
            run_start[1:] |= w[1:] != w[:-1]
            first_of_group = np.maximum.accumulate(np.where(group_start, pos, 0))
            first_of_run = np.maximum.accumulate(np.where(run_start, pos, 0))
            r = r + (first_of_run - first_of_group)
            rank[active] = r
            at += 8
            # still tied: rows of a run of two or more where some name goes on past these bytes
            run_id = np.cumsum(run_start) - 1
            size = np.bincount(run_id)
            longer = np.bincount(run_id, weights=lens[active] > at) > 0
            unsettled = (size > 1) & longer
            active = active[unsettled[run_id]]
        return rank
