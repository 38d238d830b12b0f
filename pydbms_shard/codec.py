"""Records and batches to bytes and back: the one encoder every message and file uses.

On the wire and on disk a user is the msgpack array ``[name, age, id, extras]`` with the ID
as 16 raw bytes. The coordinator decodes it as a :class:`~pydbms_shard.user.User` (ID as a
``uuid.UUID``); workers decode the very same bytes as a :class:`Record` (ID as ``bytes``),
which is cheaper to build and to hash.

A list of IDs encodes as an array of 18-byte items (``c4 10`` + 16 bytes), so a batch can be
viewed as an ``(n, 18)`` numpy array and split by shard without touching each item in Python.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import numpy as np

from .user import User


class Record(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A user as a worker keeps it: same wire layout as ``User``, ID as 16 raw bytes."""

    name: str
    age: int
    id: bytes
    extras: dict[str, Any] | None = None


Raw = msgspec.Raw
encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
encode = encoder.encode

decode_parts = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
decode_users = msgspec.msgpack.Decoder(list[User]).decode
decode_records = msgspec.msgpack.Decoder(list[Record]).decode
decode_optional_users = msgspec.msgpack.Decoder(list[User | None]).decode
decode_find_reply = msgspec.msgpack.Decoder(tuple[list[int], list[User]]).decode
decode_bytes_list = msgspec.msgpack.Decoder(list[bytes]).decode
decode_str_list = msgspec.msgpack.Decoder(list[str]).decode
decode_str = msgspec.msgpack.Decoder(str).decode
decode_any = msgspec.msgpack.Decoder().decode

_ID_ITEM = 18  # c4 10 + 16 bytes


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_ids(ids: list[Any]) -> np.ndarray | None:
    """Encode IDs once; the ``(n, 18)`` rows are each a complete msgpack bin item.

    None when some item did not encode as 16 bytes (it is not a UUID nor 16 raw bytes): the
    check costs nothing per item in Python, so a batch of UUIDs needs no type scan.
    """
    n = len(ids)
    header = len(array_header(n))
    try:
        buf = encode(ids)
    except (TypeError, ValueError, OverflowError):
        return None
    if len(buf) != header + n * _ID_ITEM:
        return None
    rows = np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(n, _ID_ITEM)
    if n and not ((rows[:, 0] == 0xC4).all() and (rows[:, 1] == 16).all()):
        return None
    return rows


def unpack_id_rows(packed: bytes | memoryview | Raw) -> np.ndarray:
    """The ``(n, 16)`` raw IDs of a msgpack array of 16-byte bins, without a Python object
    per ID; ValueError when it is anything else."""
    data = memoryview(packed).cast("B")
    if not data:
        raise ValueError("empty message part")
    first = data[0]
    if 0x90 <= first <= 0x9F:
        n, header = first & 0x0F, 1
    elif first == 0xDC:
        n, header = int.from_bytes(data[1:3], "big"), 3
    elif first == 0xDD:
        n, header = int.from_bytes(data[1:5], "big"), 5
    else:
        raise ValueError("expected a msgpack array of IDs")
    if len(data) != header + n * _ID_ITEM:
        raise ValueError("expected a msgpack array of 16-byte IDs")
    rows = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(n, _ID_ITEM)
    if n and not ((rows[:, 0] == 0xC4).all() and (rows[:, 1] == 16).all()):
        raise ValueError("expected a msgpack array of 16-byte IDs")
    return rows[:, 2:]


def pack_rows(rows: np.ndarray) -> Raw:
    """A msgpack array of the given encoded-ID rows, ready to embed in a message."""
    return Raw(array_header(len(rows)) + rows.tobytes())


def id_bytes_of_rows(rows: np.ndarray) -> np.ndarray:
    """The ``(n, 16)`` raw ID bytes inside encoded-ID rows."""
    return rows[:, 2:]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many objects at once (about 1.7x faster here)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
