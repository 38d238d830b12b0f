"""The project's main job (``scripts/demo``): the reference workload through the public API,
printed as the original's table, then autosave and readable conversion; the snapshot, the
backup and the readable files stay in a folder it names."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bench.workload import ROWS, OursEngine, Workload, run_engine, summarize
from .config import Config
from .coordinator import DataBase
from .generate import generate_users
from .readable import convert_file


def _say(quiet: bool) -> Callable[[str], None]:
    def progress(message: str) -> None:
        if not quiet:
            print(f"  .. {message}", file=sys.stderr, flush=True)

    return progress


def table(result_rows: dict[str, Any]) -> str:
    lines = [
        f"{'Operation':<26}{'Count(Users)':>14}{'Avg(s)':>10}{'Min(s)':>10}{'Max(s)':>10}{'StdDev':>10}",
        "_" * 80,
    ]
    for row in ROWS:
        s = result_rows[row]
        lines.append(f"{row:<26}{s['count']:>14,}{s['avg']:>10.4f}{s['min']:>10.4f}{s['max']:>10.4f}{s['stdev']:>10.4f}")
    lines.append("(scripts/bench runs the same rows on the original's design and on SQLite, in the same run, for ratios)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000, help="users in the database (default 1,000,000)")
    parser.add_argument("--iterations", type=int, default=3, help="times each row runs (default 3)")
    parser.add_argument("--shards", type=int, default=None, help="shard processes (default: the number of CPUs)")
    parser.add_argument("--output", default="demo-output", help="folder for the snapshot, backup and readable files")
    parser.add_argument("--autosave-seconds", type=float, default=3.0, help="how long to show autosave (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    if args.users < 10 or args.iterations < 1 or (args.shards is not None and args.shards < 1):
        parser.error("--users must be at least 10, --iterations and --shards at least 1")
    say = _say(args.quiet)
    out = Path(args.output).absolute()
    marker = out / ".pydbms-demo"
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            parser.error(f"{out} is not empty and was not made by the demo: choose another --output")
        shutil.rmtree(out)  # the demo's own folder from an earlier run
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    shards = Config(shards=args.shards).shard_count

    print(
        f"pydbms-shard demo: {args.users:,} users, {shards} shard processes, {args.iterations} iterations "
        f"({os.cpu_count()} CPUs here); files go to {out}",
        flush=True,
    )
    started = time.perf_counter()
    say(f"generating {args.users:,} users")
    workload = Workload(args.users)
    engine = OursEngine(shards, default=args.shards is None)
    result = run_engine(engine, workload, args.iterations, out, say, measure_memory=False, time_gets=True)
    rows = {row: {"count": result.counts[row], **summarize(result.times[row])} for row in ROWS}
    snap = out / engine.key / engine.snapshot_name
    backup = out / engine.key / ("backup-" + engine.snapshot_name)
    print()
    print(table(rows))
    print()
    print(f"snapshot  {snap}  ({result.snapshot_bytes:,} bytes, {result.snapshot_bytes / args.users:.1f} bytes per user)")
    print(f"backup    {backup}")
    gets = result.get_us or {}
    if gets:
        print(f"get(id)   {gets['cached_median']:.2f} us cached, {gets['uncached_median']:.2f} us uncached (medians)")

    say("autosave with writes going on")
    autosave = out / "autosave.json"
    with DataBase(shards=shards) as db:
        db.load(snap)
        db.start_autosave(interval=1.0, path=autosave)
        extra = generate_users(max(1, int(args.autosave_seconds * 5)) * 1000, seed=1)
        deadline = time.monotonic() + args.autosave_seconds
        batch = 0
        while time.monotonic() < deadline:
            db.add_users(extra[batch * 1000 : (batch + 1) * 1000])
            batch += 1
            time.sleep(0.2)
        db.stop_autosave()
        auto = db.stats()["autosave"]
        stats = db.stats()
    print(
        f"autosave  {auto['saves']} saves in {args.autosave_seconds:.0f} s at a 1 s interval while adding "
        f"{batch * 1000:,} users; {auto['failures']} failures -> {autosave}"
    )
    per_shard = ", ".join(f"shard {s['shard']}: {s['users']:,} users (pid {s['pid']})" for s in stats["shards"])
    print(f"shards    {per_shard}")

    say("converting the snapshot to readable files")
    t = time.perf_counter()
    readable = out / "readable.jsonl"
    count = convert_file(snap, readable)
    text = out / "readable.txt"
    convert_file(snap, text, format="text")
    print(f"readable  {readable} and {text}: {count:,} users each, in {time.perf_counter() - t:.1f} s")
    with open(text, encoding="utf-8") as f:
        print(f"          e.g. {f.readline().strip()}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s; everything is in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
