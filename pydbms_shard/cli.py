"""The ``pydbms`` command: snapshots from the shell. Thin: every step is a library call.

Exit codes: 0 success; 1 ``verify`` found damage, or ``get``/``find`` found nothing for some
item; 2 bad command line or argument; 3 bad config; 4 snapshot or its log missing, damaged,
in use or unwritable; 5 a bad line in an imported file; 6 any other pydbms error (e.g. a shard
worker died); 130 interrupted. ``shell`` fed by a pipe exits with the code of its first failed
command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from . import recovery, snapshot
from .args import (  # re-exported: the exit codes and error type are part of this module's face
    EXIT_CONFIG,
    EXIT_FOUND_PROBLEM,
    EXIT_IMPORT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_SNAPSHOT,
    EXIT_USAGE,
    CommandError,
    OneLineParser,
    whole_number,
)
from .config import Config, load_config
from .coordinator import DataBase
from .errors import ConfigError, ImportFileError, LogError, PydbmsError, SnapshotError, ValidationError
from .generate import generate_users
from .readable import convert_file, read_user_lines, write_readable
from .shell import add_query_options, attach_orders, query_options
from .workers import log as wal

PROGRESS_THRESHOLD = 100_000
_ADD_CHUNK = 100_000


# ---------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar on a terminal for work of PROGRESS_THRESHOLD users or more; nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()

    @contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Callable[[int], object]]:
        if not self.enabled or total < PROGRESS_THRESHOLD:
            yield lambda n: None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=" users", unit_scale=True, file=sys.stderr, leave=False) as bar:
            yield bar.update


# ---------------------------------------------------------------- helpers


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if getattr(args, "shards", None) is not None:
        overrides["shards"] = args.shards
    return load_config(args.config, overrides)


_positive = whole_number(0)
_shard_count = whole_number(1)


def _emit_json(facts: dict[str, Any]) -> None:
    """``--json``: one object on stdout, so a script reads the facts instead of parsing prose."""
    sys.stdout.write(json.dumps(facts) + "\n")


def _items(values: list[str], what: str) -> list[str]:
    """The items given, with ``-`` replaced by stdin's lines (one item a line, blank lines
    skipped): lists too long for a command line come through a pipe."""
    items: list[str] = []
    for value in values:
        if value != "-":
            items.append(value)
            continue
        for line in sys.stdin:
            line = line.rstrip("\r\n")
            if line.strip():
                items.append(line.strip() if what == "ID" else line)
    return items


def _version() -> str:
    try:
        return metadata.version("pydbms-shard")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _save_with_progress(db: DataBase, path: Path, users: int, progress: _Progress) -> None:
    with progress.bar(users, "saving") as advance:
        written = [0]

        def step(done: int, total: int) -> None:  # a save reports users written so far
            advance(done - written[0])
            written[0] = done

        db.save(path, progress=step)


def _add_with_progress(db: DataBase, users: list[Any], progress: _Progress, desc: str) -> int:
    added = 0
    with progress.bar(len(users), desc) as advance:
        if len(users) < PROGRESS_THRESHOLD or not progress.enabled:
            return db.add_users(users)
        for start in range(0, len(users), _ADD_CHUNK):
            chunk = users[start : start + _ADD_CHUNK]
            added += db.add_users(chunk)
            advance(len(chunk))
    return added


# ---------------------------------------------------------------- subcommands


def cmd_generate(args: argparse.Namespace, progress: _Progress) -> int:
    path = Path(args.path)
    users = generate_users(args.n, seed=args.seed)
    with DataBase(_config(args)) as db:
        _add_with_progress(db, users, progress, "adding")
        _save_with_progress(db, path, len(users), progress)
    if args.json:
        _emit_json({"path": str(path), "users": args.n, "seed": args.seed})
    else:
        print(f"{args.n:,} users saved to {path}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace, progress: _Progress) -> int:
    path = Path(args.path)
    m = snapshot.read_manifest(path)
    total_bytes = sum(f.bytes for f in m.files)
    rows = [
        ("snapshot", str(path)),
        ("format", f"{m.format} version {m.version}"),
        ("generation", str(m.generation)),
        ("created", m.created),
        ("shards", f"{m.shards} (hash {m.hash})"),
        ("users", f"{m.users:,}"),
        ("bytes", f"{total_bytes:,}"),
    ]
    segments = [(p, name) for p, name in wal.list_segments(snapshot.manifest_location(path)) if name.chain == m.log_chain]
    log_bytes = sum(p.stat().st_size for p, _ in segments)
    if args.json:
        facts = {"snapshot": str(path), **msgspec.to_builtins(m), "bytes": total_bytes}
        facts["files"] = sorted(facts["files"], key=lambda f: f["shard"])
        facts["log"] = {"chain": m.log_chain, "segments": len(segments), "bytes": log_bytes, "seq": m.log_seq} if m.log_chain else None
        _emit_json(facts)
        return EXIT_OK
    if m.log_chain:
        rows.append(
            ("log", f"chain {m.log_chain}: {len(segments)} segment(s), {log_bytes:,} bytes; the snapshot holds calls up to {m.log_seq:,}")
        )
    for key, value in rows:
        print(f"{key:<12}{value}")
    print()
    print(f"{'shard':>5}  {'users':>12}  {'bytes':>14}  {'crc32':<8}  file")
    for f in sorted(m.files, key=lambda f: f.shard):
        print(f"{f.shard:>5}  {f.users:>12,}  {f.bytes:>14,}  {f.crc32:<8}  {f.name}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, progress: _Progress) -> int:
    path = snapshot.manifest_location(args.path)
    facts: dict[str, Any] = {"path": str(path), "sound": False, "users": None, "shards": None, "log_records": None, "error": None}
    try:
        m = snapshot.read_manifest(path)
        facts.update(users=m.users, shards=m.shards)
        with progress.bar(m.users, "verifying") as advance:
            for file_path, entry in snapshot.manifest_files(path, m):
                for block in snapshot.iter_shard_file(file_path, entry):
                    advance(len(block))
        records = 0
        for segment, name in wal.list_segments(path):
            if name.chain == m.log_chain:
                records += len(wal.scan_segment(segment).records)  # damage raises; a torn tail is fine
    except (SnapshotError, LogError) as exc:
        if args.json:
            _emit_json({**facts, "error": " ".join(str(exc).split())})
        print(f"pydbms verify: DAMAGED: {exc}", file=sys.stderr)
        return EXIT_FOUND_PROBLEM
    if args.json:
        _emit_json({**facts, "sound": True, "log_records": records})
        return EXIT_OK
    logged = f", {records:,} log records checked" if m.log_chain else ""
    print(f"{path}: sound ({m.users:,} users in {m.shards} files, every checksum and count verified{logged})")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace, progress: _Progress) -> int:
    users = snapshot.read_manifest(Path(args.src)).users
    with progress.bar(users, "converting") as advance:
        if args.dst == "-":
            try:
                written = write_readable(args.src, sys.stdout.buffer, format=args.format, progress=advance)
            except BrokenPipeError:  # `| head` stopped reading: what it wanted, it has
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error as Python exits
                return EXIT_OK
        else:
            written = convert_file(args.src, args.dst, format=args.format, progress=advance)
    summary = f"{written:,} users written to {'stdout' if args.dst == '-' else args.dst} ({args.format})"
    if args.dst != "-" and Path(args.dst).is_file():
        print(summary)
    elif not args.quiet and sys.stderr.isatty():  # the lines went to stdout, a pipe or a device: keep them clean
        print(summary, file=sys.stderr)
    return EXIT_OK


def _open(args: argparse.Namespace, path: Path, reader: bool = False) -> DataBase:
    """A DataBase on the snapshot at ``path``, recovered by itself: the newest snapshot and
    every logged call after it. A ``reader`` changes no file (no log, torn tails left for the
    owner to cut) and runs as many shards as wrote the snapshot unless told otherwise."""
    overrides: dict[str, Any] = {"snapshot_path": str(path)}
    if reader:
        manifest = snapshot.read_manifest(snapshot.manifest_location(path))  # a clear error when there is none
        overrides["log"] = False
        if getattr(args, "shards", None) is None:
            overrides["shards"] = manifest.shards
    return DataBase(_config(args), **overrides)


def cmd_import(args: argparse.Namespace, progress: _Progress) -> int:
    path = Path(args.path)
    src = Path(args.src)
    size = src.stat().st_size if src.exists() else 0
    with progress.bar(size // 80, "reading") as advance:  # ~80 bytes a line: a rough total
        users = read_user_lines(src, progress=advance)
    with _open(args, path) as db:
        added = _add_with_progress(db, users, progress, "adding")
        total = len(db)
        _save_with_progress(db, path, total, progress)
    if args.json:
        _emit_json({"path": str(path), "src": str(src), "imported": added, "already_present": len(users) - added, "users": total})
    else:
        print(f"{added:,} users imported from {src} ({len(users) - added:,} already present); {total:,} in {path}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace, progress: _Progress) -> int:
    ids: list[Any] = _items(args.ids, "ID")
    with _open(args, Path(args.path), reader=True) as db:
        found = db.get_many(ids)
    missing = [i for i, user in zip(ids, found) if user is None]
    for user in found:
        if user is not None:
            sys.stdout.write(user.to_json().decode() + "\n")
    for item in missing:
        print(f"pydbms get: not found: {item}", file=sys.stderr)
    return EXIT_FOUND_PROBLEM if missing else EXIT_OK


def cmd_find(args: argparse.Namespace, progress: _Progress) -> int:
    with _open(args, Path(args.path), reader=True) as db:
        missing = []
        for name in _items(args.names, "NAME"):
            users = db.find_by_name(name)
            for user in users:
                sys.stdout.write(user.to_json().decode() + "\n")
            if not users:
                missing.append(name)
    for name in missing:
        print(f"pydbms find: no user named {name!r}", file=sys.stderr)
    return EXIT_FOUND_PROBLEM if missing else EXIT_OK


def cmd_query(args: argparse.Namespace, progress: _Progress) -> int:
    with _open(args, Path(args.path), reader=True) as db:
        if args.count:
            if args.order_by is not None or args.limit is not None:
                raise CommandError("pydbms query: --count takes no --order-by or --limit (see --help)", EXIT_USAGE)
            count = db.count(**query_options(args, counting=True))
            if args.json:
                _emit_json({"count": count})
            else:
                print(count)
            return EXIT_OK
        users = db.query(**query_options(args))
    lines = [user.to_json().decode() for user in users]
    if args.json:
        sys.stdout.write(f'{{"count": {len(lines)}, "users": [{", ".join(lines)}]}}\n')
    elif lines:
        sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def cmd_repair(args: argparse.Namespace, progress: _Progress) -> int:
    path = snapshot.manifest_location(args.path)
    fd = snapshot.owner_lock(path)  # never under a DataBase that has the path open
    assert fd is not None
    try:
        done = recovery.repair(path)
    finally:
        snapshot.release_owner_lock(path, fd)
    for line in done:
        print(line)
    if not done:
        print(f"{path}: every log segment is sound; nothing to repair")
    return EXIT_OK


def cmd_shell(args: argparse.Namespace, progress: _Progress) -> int:
    from .shell import run_shell

    overrides: dict[str, Any] = {"snapshot_path": args.path} if args.path else {}
    with DataBase(_config(args), **overrides) as db:
        return run_shell(db, sys.stdin, sys.stdout, sys.stderr, progress.bar)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pydbms",
        description="pydbms-shard from the shell: make, inspect, verify, convert and query snapshots.",
        epilog="Exit codes: 0 ok; 1 verify found damage or get/find found nothing for an item; 2 bad command "
        "line or argument; 3 bad config; 4 snapshot missing/damaged/unwritable; 5 bad line in an imported file; "
        "6 other error; 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"pydbms {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    def command(name: str, help: str, engine: bool = False, json: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        if json:
            p.add_argument("--json", action="store_true", help="print one JSON object with the facts instead of prose")
        if engine:
            p.add_argument("--config", metavar="FILE", help="YAML settings (see config/default.yaml)")
            p.add_argument("--shards", type=_shard_count, metavar="N", help="number of shard processes")
        return p

    p = command("generate", "N random users saved as a snapshot at PATH (the manifest)", engine=True, json=True)
    p.add_argument("n", type=_positive, metavar="N", help="how many users")
    p.add_argument("path", metavar="PATH", help="manifest path, e.g. users_db.json")
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same users")
    p.set_defaults(run=cmd_generate)

    p = command("info", "the manifest as a readable table", json=True)
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_info)

    p = command("verify", "read every file, check every checksum and count (exit 1 when damaged)", json=True)
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_verify)

    p = command("convert", "write a snapshot as readable JSON lines or the original's text lines")
    p.add_argument("src", metavar="SRC", help="snapshot manifest")
    p.add_argument("dst", metavar="DST", help="readable file to write; - for stdout")
    p.add_argument("--format", choices=["jsonl", "text"], default="jsonl")
    p.set_defaults(run=cmd_convert)

    p = command(
        "import", "JSON lines or an original pyDBMS save file into the snapshot at PATH (added to it if it exists)", engine=True, json=True
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_import)

    p = command("get", "open PATH (snapshot and log) and print the users with these IDs as JSON lines", engine=True)
    p.add_argument("path", metavar="PATH")
    p.add_argument("ids", nargs="+", metavar="ID", help="a user ID; - reads one ID a line from stdin")
    p.set_defaults(run=cmd_get)

    p = command("find", "open PATH (snapshot and log) and print the users with these names as JSON lines", engine=True)
    p.add_argument("path", metavar="PATH")
    p.add_argument("names", nargs="+", metavar="NAME", help="a name; - reads one name a line from stdin")
    p.set_defaults(run=cmd_find)

    p = command(
        "query",
        "open PATH (snapshot and log) and print the users matching every filter given as JSON lines (or how many, with --count)",
        engine=True,
        json=True,
    )
    p.add_argument("path", metavar="PATH")
    add_query_options(p)
    p.add_argument("--count", action="store_true", help="print how many users match, not the users")
    p.set_defaults(run=cmd_query)

    p = command(
        "repair",
        "cut damaged write-ahead log segments of the snapshot at PATH at their last good record (a copy of each is kept)",
    )
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_repair)

    p = command(
        "shell",
        "an interactive shell on the snapshot at PATH (recovered, and logged as it changes) or, without PATH, on an in-memory database; fed by a pipe, it runs the commands and exits with the code of the first that failed",
        engine=True,
    )
    p.add_argument("path", nargs="?", metavar="PATH")
    p.set_defaults(run=cmd_shell)

    p = sub.add_parser("bench", help="the reference-workload benchmark (same as scripts/bench; see `pydbms bench --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            from .bench.run import main as bench_main

            return bench_main(argv[1:], prog="pydbms bench")
        args = build_parser().parse_args(attach_orders(argv) if argv[:1] == ["query"] else argv)
        if args.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        code: int = args.run(args, _Progress(args.quiet))
        return code
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except ConfigError as exc:
        return _fail(f"bad config: {exc}", EXIT_CONFIG)
    except (SnapshotError, LogError) as exc:
        return _fail(str(exc), EXIT_SNAPSHOT)
    except ImportFileError as exc:
        return _fail(str(exc), EXIT_IMPORT)
    except ValidationError as exc:
        return _fail(f"bad argument: {exc}", EXIT_USAGE)
    except PydbmsError as exc:
        return _fail(str(exc), EXIT_OTHER)
    except FileNotFoundError as exc:
        return _fail(f"{exc.filename}: no such file", EXIT_SNAPSHOT)
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_SNAPSHOT)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    message = " ".join(str(message).split())  # one line, whatever the message held
    print(message if message.startswith("pydbms") else f"pydbms: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
