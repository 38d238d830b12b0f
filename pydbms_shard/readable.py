"""Snapshots to readable lines and readable lines to users: the two conversions people need.

Conversion streams a snapshot block by block to JSON lines or the original's text lines, so
it never holds all users at once. Reading JSON lines (ours, or an original pyDBMS save file)
checks every line before it returns anything: the caller adds all of them or none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal

import msgspec

from . import snapshot
from .codec import decode_users
from .errors import ImportFileError, PydbmsError, PydbmsValueError, SnapshotError
from .user import User

Progress = Callable[[int], None]  # called with how many more users were handled


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    """One imported line: the original's save-file keys."""

    name: Any
    age: Any
    ID: Any = None
    extras: Any = None


_decode_line = msgspec.json.Decoder(_Line).decode


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    format: Literal["jsonl", "text"] = "jsonl",
    progress: Progress | None = None,
    mode: int = 0o600,
) -> int:
    """Write the snapshot at ``src`` as readable lines to ``dst`` (created with ``mode``: it
    holds the same personal data); returns the user count."""
    if format not in ("jsonl", "text"):
        raise PydbmsValueError(f"format must be 'jsonl' or 'text', got {format!r}")
    src, dst = snapshot.manifest_location(src), Path(dst)
    manifest = snapshot.read_manifest(src)
    files = snapshot.manifest_files(src, manifest)
    if dst.resolve() in {src.resolve(), *(p.resolve() for p, _ in files)}:
        raise SnapshotError(f"{dst}: the readable copy must not overwrite the snapshot it reads")
    if not dst.parent.is_dir():
        raise SnapshotError(f"{dst}: the directory {dst.parent} does not exist")
    tmp = dst.with_name(f".{dst.name}.{snapshot.new_token()}.tmp")
    written = 0
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
            for file_path, entry in files:
                for users in snapshot.iter_shard_file(file_path, entry, decode=decode_users):
                    out.write(_render(users, format))
                    written += len(users)
                    if progress:
                        progress(len(users))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        raise SnapshotError(f"{dst}: cannot write ({snapshot.describe_os_error(exc)})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return written


def _render(users: list[User], format: str) -> bytes:
    if format == "jsonl":
        encode = msgspec.json.encode
        return b"".join([encode(u.to_dict()) + b"\n" for u in users])
    return "".join([f'User "{u.name}" is {u.age} years old (ID: {u.ID})\n' for u in users]).encode()


def read_user_lines(src: str | os.PathLike[str], progress: Progress | None = None) -> list[User]:
    """Every user of a JSON-lines file, or ImportFileError naming the first bad line."""
    src = Path(src)
    users: list[User] = []
    try:
        f = open(src, "rb")
    except OSError as exc:
        raise ImportFileError(f"{src}: cannot read ({snapshot.describe_os_error(exc)})") from None
    with f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = _decode_line(line)
                user = User(row.name, row.age, row.ID, row.extras)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ImportFileError(f"{src}:{number}: not a user record ({exc})") from None
            except PydbmsError as exc:
                raise ImportFileError(f"{src}:{number}: {exc}") from None
            users.append(user)
            if progress and len(users) % 10_000 == 0:
                progress(10_000)
    if progress:
        progress(len(users) % 10_000)
    return users
