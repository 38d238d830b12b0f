"""The ``pydbms`` command: snapshots from the shell. Thin: every step is a library call.

Exit codes: 0 success; 1 ``verify`` found damage, or ``get``/``find`` found nothing for some
item; 2 bad command line or argument; 3 bad config; 4 snapshot or its log missing, damaged,
in use or unwritable; 5 a bad
line in an imported file; 6 any other pydbms error (e.g. a shard worker died); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import recovery, snapshot
from .config import Config, load_config
from .coordinator import DataBase
from .errors import ConfigError, ImportFileError, LogError, PydbmsError, SnapshotError, ValidationError
from .generate import generate_users
from .readable import convert_file, read_user_lines
from .workers import log as wal

EXIT_OK, EXIT_FOUND_PROBLEM, EXIT_USAGE, EXIT_CONFIG, EXIT_SNAPSHOT, EXIT_IMPORT, EXIT_OTHER = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
PROGRESS_THRESHOLD = 100_000
_ADD_CHUNK = 100_000


class CommandError(Exception):
    """A problem to report in one line with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandError(f"{self.prog}: {message} (see --help)", EXIT_USAGE)


# ---------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar on a terminal for work of PROGRESS_THRESHOLD users or more; nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and sys.stderr.isatty()

    @contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Callable[[int], None]]:
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


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number (``1_000_000`` allowed) of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


_positive = whole_number(0)
_shard_count = whole_number(1)


def _save_with_progress(db: DataBase, path: Path, users: int, progress: _Progress) -> None:
    with progress.bar(users, "saving") as advance:
        db.save(path)
        advance(users)


def _add_with_progress(db: DataBase, users: list, progress: _Progress, desc: str) -> int:
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
    if m.log_chain:
        log_bytes = sum(p.stat().st_size for p, _ in segments)
        rows.append(("log", f"chain {m.log_chain}: {len(segments)} segment(s), {log_bytes:,} bytes; the snapshot holds calls up to {m.log_seq:,}"))
    for key, value in rows:
        print(f"{key:<12}{value}")
    print()
    print(f"{'shard':>5}  {'users':>12}  {'bytes':>14}  {'crc32':<8}  file")
    for f in sorted(m.files, key=lambda f: f.shard):
        print(f"{f.shard:>5}  {f.users:>12,}  {f.bytes:>14,}  {f.crc32:<8}  {f.name}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, progress: _Progress) -> int:
    path = snapshot.manifest_location(args.path)
    try:
        m = snapshot.read_manifest(path)
        with progress.bar(m.users, "verifying") as advance:
            for file_path, entry in snapshot.manifest_files(path, m):
                for block in snapshot.iter_shard_file(file_path, entry):
                    advance(len(block))
        records = 0
        for segment, name in wal.list_segments(path):
            if name.chain == m.log_chain:
                records += len(wal.scan_segment(segment).records)  # damage raises; a torn tail is fine
    except (SnapshotError, LogError) as exc:
        print(f"pydbms verify: DAMAGED: {exc}", file=sys.stderr)
        return EXIT_FOUND_PROBLEM
    logged = f", {records:,} log records checked" if m.log_chain else ""
    print(f"{path}: sound ({m.users:,} users in {m.shards} files, every checksum and count verified{logged})")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace, progress: _Progress) -> int:
    users = snapshot.read_manifest(Path(args.src)).users
    with progress.bar(users, "converting") as advance:
        written = convert_file(args.src, args.dst, format=args.format, progress=advance)
    print(f"{written:,} users written to {args.dst} ({args.format})")
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
    print(f"{added:,} users imported from {src} ({len(users) - added:,} already present); {total:,} in {path}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace, progress: _Progress) -> int:
    with _open(args, Path(args.path), reader=True) as db:
        found = db.get_many(args.ids)
    missing = [i for i, user in zip(args.ids, found) if user is None]
    for user in found:
        if user is not None:
            sys.stdout.write(user.to_json().decode() + "\n")
    for item in missing:
        print(f"pydbms get: not found: {item}", file=sys.stderr)
    return EXIT_FOUND_PROBLEM if missing else EXIT_OK


def cmd_find(args: argparse.Namespace, progress: _Progress) -> int:
    with _open(args, Path(args.path), reader=True) as db:
        missing = []
        for name in args.names:
            users = db.find_by_name(name)
            for user in users:
                sys.stdout.write(user.to_json().decode() + "\n")
            if not users:
                missing.append(name)
    for name in missing:
        print(f"pydbms find: no user named {name!r}", file=sys.stderr)
    return EXIT_FOUND_PROBLEM if missing else EXIT_OK


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


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pydbms",
        description="pydbms-shard from the shell: make, inspect, verify, convert and query snapshots.",
        epilog="Exit codes: 0 ok; 1 verify found damage or get/find found nothing for an item; 2 bad command "
        "line or argument; 3 bad config; 4 snapshot missing/damaged/unwritable; 5 bad line in an imported file; "
        "6 other error; 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    def command(name: str, help: str, engine: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        if engine:
            p.add_argument("--config", metavar="FILE", help="YAML settings (see config/default.yaml)")
            p.add_argument("--shards", type=_shard_count, metavar="N", help="number of shard processes")
        return p

    p = command("generate", "N random users saved as a snapshot at PATH (the manifest)", engine=True)
    p.add_argument("n", type=_positive, metavar="N", help="how many users")
    p.add_argument("path", metavar="PATH", help="manifest path, e.g. users_db.json")
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same users")
    p.set_defaults(run=cmd_generate)

    p = command("info", "the manifest as a readable table")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_info)

    p = command("verify", "read every file, check every checksum and count (exit 1 when damaged)")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_verify)

    p = command("convert", "write a snapshot as readable JSON lines or the original's text lines")
    p.add_argument("src", metavar="SRC", help="snapshot manifest")
    p.add_argument("dst", metavar="DST", help="readable file to write")
    p.add_argument("--format", choices=["jsonl", "text"], default="jsonl")
    p.set_defaults(run=cmd_convert)

    p = command("import", "JSON lines or an original pyDBMS save file into the snapshot at PATH (added to it if it exists)", engine=True)
    p.add_argument("src", metavar="SRC")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_import)

    p = command("get", "open PATH (snapshot and log) and print the users with these IDs as JSON lines", engine=True)
    p.add_argument("path", metavar="PATH")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(run=cmd_get)

    p = command("find", "open PATH (snapshot and log) and print the users with these names as JSON lines", engine=True)
    p.add_argument("path", metavar="PATH")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(run=cmd_find)

    p = command(
        "repair",
        "cut damaged write-ahead log segments of the snapshot at PATH at their last good record (a copy of each is kept)",
    )
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=cmd_repair)

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
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        return args.run(args, _Progress(args.quiet))
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
