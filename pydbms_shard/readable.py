"""Snapshots to readable lines and readable lines to users: the two conversions people need.

Conversion streams a snapshot block by block to JSON lines or the original's text lines, so
it never holds all users at once. Reading JSON lines (ours, or an original pyDBMS save file)
checks every line before it returns anything: the caller adds all of them or none.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec

from . import snapshot
from .codec import decode_users
from .errors import ImportFileError, PydbmsError, PydbmsValueError, SnapshotError
from .user import User

Progress = Callable[[int], object]  # called with how many more users were handled


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
    holds the same personal data); returns the user count.

    A regular file is replaced atomically (a temporary file renamed over it), so a reader never
    sees half a copy. Nothing but a regular file is ever renamed over: a symlink is followed and
    its target replaced (the link stays), and a device or FIFO (``/dev/stdout``, a pipe) is
    written through directly. A directory is an error.
    """
    if format not in ("jsonl", "text"):
        raise PydbmsValueError(f"format must be 'jsonl' or 'text', got {format!r}")
    src, dst = snapshot.manifest_location(src), Path(dst)
    manifest = snapshot.read_manifest(src)
    files = snapshot.manifest_files(src, manifest)
    if dst.resolve() in {src.resolve(), *(p.resolve() for p, _ in files)}:
        raise SnapshotError(f"{dst}: the readable copy must not overwrite the snapshot it reads")
    try:
        st = os.stat(dst)  # through any symlink: what a write would reach
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise SnapshotError(f"{dst}: cannot write ({snapshot.describe_os_error(exc)})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise SnapshotError(f"{dst}: is a directory; name a file to write")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:  # a device, FIFO or the like: no temporary file can stand in for it
            with open(dst, "wb") as out:  # the path itself: /dev/stdout's link is only good opened
                return write_readable(src, out, format, progress, manifest)
        except OSError as exc:
            raise SnapshotError(f"{dst}: cannot write ({snapshot.describe_os_error(exc)})") from None
    target = Path(os.path.realpath(dst)) if dst.is_symlink() else dst  # replace what the link points to
    if not target.parent.is_dir():
        raise SnapshotError(f"{dst}: the directory {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.{snapshot.new_token()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
            written = write_readable(src, out, format, progress, manifest)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise SnapshotError(f"{dst}: cannot write ({snapshot.describe_os_error(exc)})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return written


def write_readable(
    src: str | os.PathLike[str],
    out: BinaryIO,
    format: Literal["jsonl", "text"] = "jsonl",
    progress: Progress | None = None,
    manifest: snapshot.Manifest | None = None,
) -> int:
    """Stream the snapshot at ``src`` as readable lines into an open binary file (stdout, a
    pipe); returns the user count. The caller owns ``out``: it is neither synced nor closed."""
    if format not in ("jsonl", "text"):
        raise PydbmsValueError(f"format must be 'jsonl' or 'text', got {format!r}")
    src = snapshot.manifest_location(src)
    if manifest is None:
        manifest = snapshot.read_manifest(src)
    written = 0
    for file_path, entry in snapshot.manifest_files(src, manifest):
        for users in snapshot.iter_shard_file(file_path, entry, decode=decode_users):
            out.write(_render(users, format))
            written += len(users)
            if progress:
                progress(len(users))
    out.flush()
    return written


# A name holding one of these is written as a JSON string literal in text lines: a quote could
# end the quoted name early and a line break (or other control character) could start a forged
# line. A backslash is here too, so a plain quoted name never holds one and a reader can tell
# the two forms apart.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_JSON_LEFT_RAW = re.compile(r"[\x7f-\x9f\u2028\u2029]")  # json.dumps(ensure_ascii=False) keeps these


def _quote(name: str) -> str:
    """``"name"``, or the name as a JSON string literal when it holds a quote, a backslash or a
    control or line-separator character."""
    if not _NEEDS_ESCAPE.search(name):
        return f'"{name}"'
    return _JSON_LEFT_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(name, ensure_ascii=False))


def _render(users: list[User], format: str) -> bytes:
    if format == "jsonl":
        encode = msgspec.json.encode
        return b"".join([encode(u.to_dict()) + b"\n" for u in users])
    return "".join([f"User {_quote(u.name)} is {u.age} years old (ID: {u.ID})\n" for u in users]).encode()


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
