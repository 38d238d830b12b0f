"""A batch of users as columns: what a columnar partition holds and a v2 snapshot file stores.

Row ``i`` is one user. Names and extras live in arenas: row ``i``'s name is
``name_arena[name_ends[i-1]:name_ends[i]]`` (``0`` before the first row), UTF-8; its extras the
same span of ``extra_arena``, a msgpack map, and an empty span means the user has none.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Columns(NamedTuple):
    ids: np.ndarray  # (n, 16) uint8, C-contiguous: the raw ID bytes
    ages: np.ndarray  # (n,) uint8 (ages are 0-150)
    name_ends: np.ndarray  # (n,) uint64: end offset of each row's name in name_arena
    name_arena: bytes  # the names, UTF-8, back to back
    extra_ends: np.ndarray  # (n,) uint64: end offset of each row's extras in extra_arena
    extra_arena: bytes  # the extras as msgpack maps, back to back; most rows have an empty span

    @property
    def rows(self) -> int:
        return len(self.ages)


def empty_columns() -> Columns:
    return Columns(
        np.zeros((0, 16), dtype=np.uint8),
        np.zeros(0, dtype=np.uint8),
        np.zeros(0, dtype=np.uint64),
        b"",
        np.zeros(0, dtype=np.uint64),
        b"",
    )


def _spans(ends: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the given rows' spans."""
    stops = ends[rows]
    starts = np.where(rows > 0, ends[np.maximum(rows - 1, 0)], 0).astype(np.uint64)
    return starts, stops


def _gather(arena: bytes, starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, bytes]:
    """The spans cut out of ``arena`` back to back: new end offsets and the new arena."""
    lens = (stops - starts).astype(np.int64)
    new_ends = np.cumsum(lens, dtype=np.uint64)
    total = int(new_ends[-1]) if len(new_ends) else 0
    if total == 0:
        return new_ends, b""
    src = np.frombuffer(arena, dtype=np.uint8)
    # the byte positions of every kept span, without a Python loop: a ramp restarting at each span
    shift = np.repeat(starts.astype(np.int64) - (new_ends.astype(np.int64) - lens), lens)
    return new_ends, src[np.arange(total, dtype=np.int64) + shift].tobytes()


def take_rows(cols: Columns, keep: np.ndarray) -> Columns:
    """The rows where the bool mask ``keep`` is true (or the given row numbers), in order."""
    rows = np.flatnonzero(keep) if keep.dtype == np.bool_ else keep.astype(np.int64)
    if len(rows) == cols.rows and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == cols.rows - 1)):
        return cols
    name_ends, name_arena = _gather(cols.name_arena, *_spans(cols.name_ends, rows))
    extra_ends, extra_arena = _gather(cols.extra_arena, *_spans(cols.extra_ends, rows))
    return Columns(np.ascontiguousarray(cols.ids[rows]), cols.ages[rows], name_ends, name_arena, extra_ends, extra_arena)


def slice_rows(cols: Columns, start: int, stop: int) -> Columns:
    """Rows ``start`` to ``stop`` (a scan's next chunk)."""
    return take_rows(cols, np.arange(start, min(stop, cols.rows), dtype=np.int64))
