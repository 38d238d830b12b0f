"""The stable ID -> shard hash, and splitting a batch of IDs by shard.

The hash mixes both 64-bit halves of the 16 ID bytes (uuid1 IDs from one machine share
their low half, uuid7 IDs their high half), then applies the splitmix64 finaliser. It is
defined on the bytes alone, so every process, run and platform agrees. The scheme's name
is written into every manifest; a snapshot made with another scheme or shard count is
re-routed on load.
"""

from __future__ import annotations

import numpy as np

HASH_SCHEME = "mx64-v1"

_M64 = (1 << 64) - 1
_K1 = 0x9E3779B97F4A7C15
_K2 = 0xBF58476D1CE4E5B9
_K3 = 0x94D049BB133111EB


def shard_of(id_bytes: bytes, shards: int) -> int:
    """The shard of one 16-byte ID (the scalar twin of ``shards_of``)."""
    hi = int.from_bytes(id_bytes[:8], "big")
    lo = int.from_bytes(id_bytes[8:16], "big")
    x = ((hi * _K1) & _M64) ^ lo
    x = (x * _K2) & _M64
    x ^= x >> 31
    x = (x * _K3) & _M64
    x ^= x >> 29
    return x % shards


def shards_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each row of an ``(n, 16)`` uint8 array of IDs."""
    halves = np.ascontiguousarray(ids).view(">u8").astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (halves[:, 0] * np.uint64(_K1)) ^ halves[:, 1]
        x *= np.uint64(_K2)
        x ^= x >> np.uint64(31)
        x *= np.uint64(_K3)
        x ^= x >> np.uint64(29)
    return (x % np.uint64(shards)).astype(np.intp)


def shards_of_joined(joined: bytes, shards: int) -> np.ndarray:
    """The shard of each ID in the concatenation of 16-byte IDs ``joined``."""
    return shards_of(np.frombuffer(joined, dtype=np.uint8).reshape(-1, 16), shards)


def split_positions(shard_of_item: np.ndarray, shards: int) -> list[np.ndarray]:
    """For each shard, the positions (in batch order) of the items routed to it."""
    if shards == 1:
        return [np.arange(len(shard_of_item), dtype=np.intp)]
    order = np.argsort(shard_of_item, kind="stable")
    bounds = np.searchsorted(shard_of_item[order], np.arange(shards + 1))
    return [order[bounds[s] : bounds[s + 1]] for s in range(shards)]
