"""The whole contract between the coordinator and a shard worker, on one screen.

A request is one msgpack array ``[command, argument, ...]``; the reply is ``[true, result]``
or ``[false, error type, message]`` (plus ``true`` when the worker exits after it: its memory
can no longer be trusted). Arguments named in ``raw`` travel as msgpack bytes the worker
decodes itself (the bulk of a batch is never decoded and re-encoded on the way), the rest
are plain msgpack values. Writes are not commands of their own: the coordinator wraps a
write message (``WRITES``) in ``write`` with the call's number, nonce and touched shards,
and the worker logs the message's bytes as they came before applying them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .codec import Raw, encode


class Command(NamedTuple):
    args: tuple[str, ...]
    raw: frozenset[str]  # arguments that stay encoded
    reply: str


def _c(args: str = "", raw: str = "", reply: str = "nil") -> Command:
    return Command(tuple(args.split()), frozenset(raw.split()), reply)


COMMANDS: dict[str, Command] = {
    # writes: one logged call, kept undoable until the next write
    "write": _c("seq nonce touched message", "message", "the write message's reply"),
    "undo": _c("seq", "", "true when call seq was the last write here and is now undone (memory and log)"),
    # reads
    "get": _c("ids", "ids", "a record or nil per ID"),
    "contains": _c("ids", "ids", "one byte per ID: 1 when stored"),
    "has": _c("ids names", "ids names", "[every ID stored here, one byte per name: 1 when some user here has it]"),
    "find": _c("ids names", "ids names", "[query numbers (IDs first, then names), their records]"),
    "count": _c(reply="how many users"),
    "query": _c(
        "name prefix age_min age_max order_by limit count",
        "",
        "with count, how many users match; else their records (sorted by order_by, at most limit)",
    ),
    "stats": _c(reply="{shard, users, names, pid, rss_bytes, open_scans, log}"),
    "scan_open": _c("token", "", "how many users the iteration's cut holds"),
    "scan_next": _c("token count", "", "the next records of the cut"),
    "scan_close": _c("token"),
    # snapshots, loading and recovery
    "snap_begin": _c("path level mode rotate staged", "", "users in the cut; the writer reports on the events pipe"),
    "load_stage": _c(
        "files reroute report", "", "users staged from snapshot files; with report, [report, nil, users read] per block on the events pipe"
    ),
    "replay": _c("paths filters extents", "", "users staged after replaying log records"),
    "load_commit": _c("log", "", "users now live; with log, where the log goes on"),
    "load_abort": _c(),
    # life
    "ping": _c(reply="the worker's pid"),
    "exit": _c(),
    "inject_fault": _c("call error after times", "", "nil (a test hook, answered only under PYDBMS_FAULT_INJECTION=1)"),
}

WRITES: dict[str, Command] = {
    "add": _c("records", "records", "how many were added"),
    "add_columns": _c("columns", "", "how many were added (columns: a binary block, see codec.pack_columns)"),
    "upsert": _c("records", "records", "[how many were new, the IDs replaced]"),
    "remove": _c("ids names", "ids names", "the IDs removed"),
    "clear": _c(),
}


def request(command: str, *args: Any) -> bytes:
    """One request, checked against the table (a typo is a bug here, not a worker error)."""
    spec = COMMANDS[command]
    if len(args) > len(spec.args):
        raise TypeError(f"{command} takes {len(spec.args)} arguments, got {len(args)}")
    return encode([command, *args])


def write_message(command: str, *args: Any) -> bytes:
    """The message a write call logs and applies on one shard."""
    spec = WRITES[command]
    if len(args) != len(spec.args):
        raise TypeError(f"{command} takes {len(spec.args)} arguments, got {len(args)}")
    return encode([command, *args])


def write_request(seq: int, nonce: int, touched: list[int], message: bytes) -> bytes:
    return request("write", seq, nonce, touched, Raw(message))


def raw_flags(command: str, table: dict[str, Command] = COMMANDS) -> tuple[bool, ...]:
    """For each argument of ``command``, whether it stays encoded."""
    spec = table[command]
    return tuple(arg in spec.raw for arg in spec.args)
