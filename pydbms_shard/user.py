"""User: the immutable record, its validation and its plain-dict form.

``User`` is a ``msgspec.Struct`` so that whole batches encode and decode in C. Validation
lives in the metaclass's ``__call__``: it runs when *people* build a User, and is skipped
when msgspec decodes records our own workers sent back (they were validated on the way in).
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import PydbmsTypeError, PydbmsValueError

MAX_NAME_LENGTH = 1000
MIN_AGE, MAX_AGE = 0, 150
MAX_EXTRAS_DEPTH = 64
MAX_EXTRAS_BYTES = 64 * 1024  # one user's extras, msgpack-encoded: every call and log record carries them whole

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_text(text: str, field: str) -> str:
    """Reject strings that cannot be stored as UTF-8 (lone surrogates)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PydbmsValueError(f"{field} must be valid Unicode text (no lone surrogates), got {_short(text)}") from None
    return text


def check_name(name: Any) -> str:
    if type(name) is not str:
        if not isinstance(name, str):
            raise PydbmsTypeError(f"User.name must be a str, got {type(name).__name__}: {_short(name)}")
        name = str(name)
    checked: str = name
    if not name:
        raise PydbmsValueError(f"User.name must not be empty, got {name!r}")
    _check_text(name, "User.name")
    if len(name) > MAX_NAME_LENGTH:
        raise PydbmsValueError(f"User.name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}: {_short(name)}")
    return checked


def check_age(age: Any) -> int:
    if isinstance(age, bool) or not isinstance(age, int):
        raise PydbmsTypeError(f"User.age must be an int (not a bool), got {type(age).__name__}: {_short(age)}")
    if not MIN_AGE <= age <= MAX_AGE:
        raise PydbmsValueError(f"User.age must be between {MIN_AGE} and {MAX_AGE}, got {age}")
    return int(age)


def check_id(value: Any, field: str = "User.ID") -> uuid.UUID:
    """A UUID, its string form, or its 16 raw bytes."""
    if type(value) is uuid.UUID:
        return value
    if isinstance(value, uuid.UUID):
        return uuid.UUID(int=value.int)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) != 16:
            raise PydbmsValueError(f"{field} given as bytes must be 16 bytes long, got {len(value)}: {_short(value)}")
        return uuid.UUID(bytes=bytes(value))
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise PydbmsValueError(f"{field} must be a UUID or its string form, got {_short(value)}") from None
    raise PydbmsTypeError(f"{field} must be a uuid.UUID, its string form or its 16 bytes, got {type(value).__name__}: {_short(value)}")


def _copy_json(value: Any, path: str, depth: int) -> Any:
    """A private deep copy of a JSON-compatible value, rejecting anything else."""
    if depth > MAX_EXTRAS_DEPTH:
        raise PydbmsValueError(f"{path} is nested deeper than {MAX_EXTRAS_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _check_text(str(value), path)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise PydbmsValueError(f"{path} must fit in 64 bits, got {_short(value)}")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydbmsValueError(f"{path} must be a finite float, got {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PydbmsTypeError(f"{path} keys must be str, got {type(key).__name__}: {_short(key)}")
            _check_text(key, f"{path} key")
            out[str(key)] = _copy_json(item, f"{path}[{key!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_copy_json(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise PydbmsTypeError(
        f"{path} must hold only str, int, float, bool, None, lists and mappings; got {type(value).__name__}: {_short(value)}"
    )


def check_extras(extras: Any) -> dict[str, Any] | None:
    """A private deep copy of ``extras``; ``None`` for no extras (or an empty mapping)."""
    if extras is None:
        return None
    if not isinstance(extras, Mapping):
        raise PydbmsTypeError(f"User.extras must be a mapping or None, got {type(extras).__name__}: {_short(extras)}")
    copied = _copy_json(extras, "User.extras", 0)
    if copied and len(encoded := msgspec.msgpack.encode(copied)) > MAX_EXTRAS_BYTES:
        raise PydbmsValueError(f"User.extras must encode to at most {MAX_EXTRAS_BYTES} bytes (64 KiB) of msgpack, got {len(encoded)}")
    return copied or None


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thaw(item) for item in value]
    return value


class _UserMeta(msgspec.StructMeta):
    """Validates on construction by people; msgspec's decoder bypasses it."""

    def __call__(cls, name: str, age: int, ID: uuid.UUID | str | bytes | None = None, extras: Mapping[str, Any] | None = None) -> User:
        name = check_name(name)
        age = check_age(age)
        ID = uuid.uuid4() if ID is None else check_id(ID)
        user: User = super().__call__(name, age, ID, check_extras(extras))
        return user

    @property
    def __signature__(cls) -> inspect.Signature:
        """What people call (``extras``), not msgspec's field list (``_extras``): for ``help()``."""
        params = list(inspect.signature(_UserMeta.__call__, eval_str=True).parameters.values())[1:]
        return inspect.Signature(params)


class User(msgspec.Struct, metaclass=_UserMeta, frozen=True, gc=False, array_like=True, eq=False):
    """An immutable user. Equal and hashed by ``ID`` alone, like the original.

    ``User(name, age, ID=None, extras=None)``: ``name`` a non-empty str of at most 1,000
    characters; ``age`` an int from 0 to 150; ``ID`` a UUID, its string form or 16 bytes (a new
    uuid4 when omitted); ``extras`` a mapping of str keys to JSON values, nested at most 64
    levels and at most 64 KiB (``MAX_EXTRAS_BYTES``) once encoded as msgpack.
    """

    name: str
    age: int
    ID: uuid.UUID
    _extras: dict[str, Any] | None = None  # stored as given to msgspec; people see ``extras``

    if TYPE_CHECKING:  # what type checkers should offer: the metaclass validates, then builds

        def __init__(
            self, name: str, age: int, ID: uuid.UUID | str | bytes | None = None, extras: Mapping[str, Any] | None = None
        ) -> None: ...

    @property
    def extras(self) -> Mapping[str, Any]:
        """A read-only view; nested mappings are read-only too and nested lists are tuples."""
        return _EMPTY if self._extras is None else _freeze(self._extras)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, User):
            return self.ID == other.ID
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, User):
            return self.ID != other.ID
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.ID)

    def __str__(self) -> str:
        return f'User "{self.name}" is {self.age} years old'

    def __repr__(self) -> str:
        extras = "" if self._extras is None else f", extras={self._extras!r}"
        return f"User(name={self.name!r}, age={self.age!r}, ID={self.ID!r}{extras})"

    def __reduce__(self) -> tuple[type[User], tuple[Any, ...]]:
        return (User, (self.name, self.age, self.ID, self._extras))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form: the original's save-file keys, ID as its string form."""
        return {"name": self.name, "age": self.age, "ID": str(self.ID), "extras": _thaw(self._extras or {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> User:
        if not isinstance(data, Mapping):
            raise PydbmsTypeError(f"User.from_dict needs a mapping, got {type(data).__name__}: {_short(data)}")
        unknown = set(data) - {"name", "age", "ID", "extras"}
        if unknown:
            raise PydbmsValueError(f"User.from_dict got unknown keys: {sorted(map(str, unknown))}")
        for key in ("name", "age"):
            if key not in data:
                raise PydbmsValueError(f"User.from_dict is missing the key {key!r}")
        return cls(data["name"], data["age"], data.get("ID"), data.get("extras"))

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> User:
        try:
            decoded = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise PydbmsValueError(f"User.from_json got invalid JSON: {exc}") from None
        return cls.from_dict(decoded)
