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
