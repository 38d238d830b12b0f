"""What durability costs: our engine with its write-ahead log against the same engine purely in
memory, each measured in the same run so that only the ratio matters.

Three measurements, each ``rounds`` times (the two sides alternate which goes first, and the
ratio divides the medians):

1. *Logged batch add*: ``batch_calls`` calls of ``add_users`` with ``batch_users`` fresh users
   each, into an empty DataBase with a snapshot path and ``log_fsync: always``, against the
   same calls on a DataBase without a snapshot path (no log). Target: at most 1.3x.
2. *Single add*: ``single_calls`` calls of ``add(user)``, one user each, with
   ``log_fsync: everysec`` against in memory (target: at most 1.5x); throughput with
   ``log_fsync: always`` is reported too, without a target.
3. *Recovery from the log alone*: ``recovery_users`` users added through the log (an empty
   snapshot path opened, the users added in batches of ``batch_users``, closed without a save,
   so the snapshot on disk is the empty one the first open wrote and every user lives only in
   the log), then the time to reopen that path (the open replays the log), against the time to
   open a path holding a snapshot of the same users and no log to replay. Both times run from
   the ``DataBase(...)`` call, worker processes starting included, to the return of the first
   call (``len(db)``). Target: at most 2x. The time to open an empty, in-memory DataBase the
   same way is reported as the fixed part both sides share.

Nothing here asserts a time: the targets are evaluated and reported as PASS or MISS.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..coordinator import DataBase
from ..generate import generate_users
from ..snapshot import read_manifest
from ..user import User
from ..workers import log as wal

BATCH_USERS, BATCH_CALLS = 100_000, 3
SINGLE_CALLS, QUICK_SINGLE_CALLS = 2000, 500
RECOVERY_USERS = 1_000_000
BATCH_ADD_LIMIT, SINGLE_ADD_LIMIT, RECOVERY_LIMIT = 1.3, 1.5, 2.0
SINGLE_MODES = ("memory", "everysec", "always")
# no automatic checkpoint while the log is built: it would move users into a snapshot
NO_CHECKPOINT_BYTES = 1 << 50
# settings every DataBase opened here gets besides its own (the tests start workers by fork)
OPEN_OPTIONS: dict[str, Any] = {}

Progress = Callable[[str], None]


def _silent(message: str) -> None:
    pass


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


class _Dirs:
    """Fresh directories under one root, one per DataBase that keeps a log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def path(self, label: str) -> Path:
        self.count += 1
        folder = self.root / f"{self.count:03d}-{label}"
        folder.mkdir(parents=True)
        return folder / "db.json"


def _open(shards: int, mode: str, dirs: _Dirs) -> DataBase:
    """``memory``: no snapshot path, no log; otherwise a log with that fsync policy."""
    if mode == "memory":
        return DataBase(shards=shards, **OPEN_OPTIONS)
    return DataBase(
        shards=shards,
        snapshot_path=str(dirs.path(mode)),
        log_fsync=mode,
        log_checkpoint_bytes=NO_CHECKPOINT_BYTES,
        **OPEN_OPTIONS,
    )


def _remove_files(db: DataBase) -> None:
    path = db.config.snapshot_path
    if path:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


# ---------------------------------------------------------------- 1. batch add


def time_batch_add(shards: int, mode: str, batches: list[list[User]], dirs: _Dirs) -> float:
    """Seconds of every ``add_users`` call (set-up and close untimed) into an empty DataBase."""
    db = _open(shards, mode, dirs)
    try:
        total = 0.0
        for batch in batches:
            gc.collect()
            started = time.perf_counter()
            added = db.add_users(batch)
            total += time.perf_counter() - started
            if added != len(batch):
                raise RuntimeError(f"logged batch add ({mode}): {added} of {len(batch)} users were added")
    finally:
        db.close()
        _remove_files(db)
    return total


# ---------------------------------------------------------------- 2. single add


def time_single_adds(shards: int, mode: str, users: list[User], dirs: _Dirs) -> dict[str, float]:
    """Seconds of ``len(users)`` calls of ``add(user)``, and the median and p99 microseconds of one."""
    db = _open(shards, mode, dirs)
    clock = time.perf_counter_ns
    calls: list[int] = []
    try:
        gc.collect()
        started = time.perf_counter()
        for user in users:
            before = clock()
            db.add(user)
            calls.append(clock() - before)
        total = time.perf_counter() - started
        if len(db) != len(users):
            raise RuntimeError(f"single add ({mode}): {len(db)} of {len(users)} users were added")
    finally:
        db.close()
        _remove_files(db)
    calls.sort()
    return {
        "seconds": total,
        "median_us": statistics.median(calls) / 1000,
        "p99_us": calls[min(len(calls) - 1, int(len(calls) * 0.99))] / 1000,
    }


# ---------------------------------------------------------------- 3. recovery


def build_logged(shards: int, path: Path, users: list[User], batch: int) -> int:
    """Every user added through the log of an empty snapshot path, closed without a save.
    Returns the bytes of the log; raises when any user reached a snapshot."""
    with DataBase(
        shards=shards, snapshot_path=str(path), log_fsync="always", log_checkpoint_bytes=NO_CHECKPOINT_BYTES, **OPEN_OPTIONS
    ) as db:
        for start in range(0, len(users), batch):
            db.add_users(users[start : start + batch])
        if len(db) != len(users):
            raise RuntimeError(f"recovery set-up: {len(db)} of {len(users)} users stored")
    saved = read_manifest(path).users
    segments = [p for p, _ in wal.list_segments(path)]
    if saved or not segments:
        raise RuntimeError(
            f"recovery set-up: the snapshot holds {saved} users and there are {len(segments)} log segments; "
            "the users must live only in the log"
        )
    return sum(p.stat().st_size for p in segments)


def build_snapshot(shards: int, path: Path, users: list[User]) -> int:
    """The same users saved to ``path`` by a fresh in-memory DataBase. Returns the snapshot's bytes."""
    with DataBase(shards=shards, **OPEN_OPTIONS) as db:
        db.add_users(users)
        manifest = db.save(path)
    return path.stat().st_size + sum(f.bytes for f in manifest.files)


def time_open(shards: int, path: Path | None, expected: int) -> float:
    """Seconds from ``DataBase(...)`` to the return of the first call (``len``); close untimed."""
    gc.collect()
    started = time.perf_counter()
    if path is None:
        db = DataBase(shards=shards, **OPEN_OPTIONS)
    else:
        db = DataBase(shards=shards, snapshot_path=str(path), **OPEN_OPTIONS)
    try:
        found = len(db)
        elapsed = time.perf_counter() - started
    finally:
        db.close()
    if found != expected:
        raise RuntimeError(f"opening {path or 'an empty DataBase'} gave {found} users, expected {expected}")
    return elapsed


# ---------------------------------------------------------------- all three


def _target(name: str, measured: float | None, limit: float) -> dict[str, Any]:
    return {"target": name, "measured": measured, "limit": limit, "unit": "x", "met": None if measured is None else measured <= limit}


def run_durability(
    workdir: str | os.PathLike[str],
    shards: int,
    *,
    batch_users: int = BATCH_USERS,
    batch_calls: int = BATCH_CALLS,
    single_calls: int = SINGLE_CALLS,
    recovery_users: int = RECOVERY_USERS,
    rounds: int = 3,
    seed: int = 20_240_501,
    progress: Progress = _silent,
) -> dict[str, Any]:
    """Every durability measurement, ``rounds`` times; JSON-ready results with ``targets``."""
    if min(batch_users, batch_calls, single_calls, recovery_users, rounds) < 1:
        raise ValueError("every size and the round count must be at least 1")
    root = Path(workdir) / "durability"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    dirs = _Dirs(root)
    needed = max(batch_users * batch_calls, single_calls, recovery_users)
    progress(f"durability: generating {needed:,} users")
    users = generate_users(needed, seed + 1)
    try:
        # 1. batch add
        batches = [users[k * batch_users : (k + 1) * batch_users] for k in range(batch_calls)]
        batch_times: dict[str, list[float]] = {"memory": [], "always": []}
        for r in range(rounds):
            progress(f"durability: batch add, round {r + 1}/{rounds}")
            for mode in ("memory", "always") if r % 2 == 0 else ("always", "memory"):
                batch_times[mode].append(time_batch_add(shards, mode, batches, dirs))
        del batches
        batch: dict[str, Any] = {
            "users_per_call": batch_users,
            "calls": batch_calls,
            "memory_seconds": batch_times["memory"],
            "always_seconds": batch_times["always"],
            "memory_median": _median(batch_times["memory"]),
            "always_median": _median(batch_times["always"]),
        }
        batch["ratio"] = _ratio(batch["always_median"], batch["memory_median"])

        # 2. single add
        singles: dict[str, list[dict[str, float]]] = {mode: [] for mode in SINGLE_MODES}
        for r in range(rounds):
            progress(f"durability: {single_calls:,} single adds per mode, round {r + 1}/{rounds}")
            order = SINGLE_MODES if r % 2 == 0 else SINGLE_MODES[::-1]
            for mode in order:
                singles[mode].append(time_single_adds(shards, mode, users[:single_calls], dirs))
        single: dict[str, Any] = {"calls": single_calls}
        for mode in SINGLE_MODES:
            seconds = [s["seconds"] for s in singles[mode]]
            median = _median(seconds)
            single[mode] = {
                "seconds": seconds,
                "median_seconds": median,
                "calls_per_second": single_calls / median if median > 0 else None,
                "call_median_us": _median([s["median_us"] for s in singles[mode]]),
                "call_p99_us": _median([s["p99_us"] for s in singles[mode]]),
            }
        single["ratio"] = _ratio(single["everysec"]["median_seconds"], single["memory"]["median_seconds"])

        # 3. recovery from the log alone
        progress(f"durability: {recovery_users:,} users through the log, without a save")
        population = users[:recovery_users]
        logged = dirs.path("log")
        log_bytes = build_logged(shards, logged, population, batch_users)
        progress(f"durability: a snapshot of the same {recovery_users:,} users")
        saved = dirs.path("snapshot")
        snapshot_bytes = build_snapshot(shards, saved, population)
        del population
        opens: dict[str, list[float]] = {"log": [], "snapshot": [], "empty": []}
        for r in range(rounds):
            progress(f"durability: reopening after the log and after the snapshot, round {r + 1}/{rounds}")
            recovery_order = [("log", logged), ("snapshot", saved)]
            for name, path in recovery_order if r % 2 == 0 else recovery_order[::-1]:
                opens[name].append(time_open(shards, path, recovery_users))
            opens["empty"].append(time_open(shards, None, 0))
        recovery: dict[str, Any] = {
            "users": recovery_users,
            "log_bytes": log_bytes,
            "snapshot_bytes": snapshot_bytes,
            "from_log_seconds": opens["log"],
            "from_snapshot_seconds": opens["snapshot"],
            "empty_open_seconds": opens["empty"],
            "from_log_median": _median(opens["log"]),
            "from_snapshot_median": _median(opens["snapshot"]),
            "empty_open_median": _median(opens["empty"]),
        }
        recovery["ratio"] = _ratio(recovery["from_log_median"], recovery["from_snapshot_median"])
    finally:
        del users
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)

    return {
        "shards": shards,
        "rounds": rounds,
        "batch_add": batch,
        "single_add": single,
        "recovery": recovery,
        "targets": [
            _target(f"logged batch add (fsync always) <= {BATCH_ADD_LIMIT}x in memory", batch["ratio"], BATCH_ADD_LIMIT),
            _target(f"single add (fsync everysec) <= {SINGLE_ADD_LIMIT}x in memory", single["ratio"], SINGLE_ADD_LIMIT),
            _target(f"recovery from the log <= {RECOVERY_LIMIT}x opening a snapshot", recovery["ratio"], RECOVERY_LIMIT),
        ],
    }


# ---------------------------------------------------------------- printing


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_durability(result: dict[str, Any]) -> str:
    """The Durability table: each measurement against its in-memory (or snapshot) reference."""
    b, s, r = result["batch_add"], result["single_add"], result["recovery"]
    state = {True: "PASS", False: "MISS", None: "n/a"}
    batch_t, single_t, recovery_t = result["targets"]
    rows = [
        (f"batch add {b['calls']} x {b['users_per_call']:,} (always, s)", b["always_median"], b["memory_median"], b["ratio"], batch_t),
        (f"{s['calls']:,} single adds (everysec, s)", s["everysec"]["median_seconds"], s["memory"]["median_seconds"], s["ratio"], single_t),
        (f"open {r['users']:,} users: log replay vs snapshot (s)", r["from_log_median"], r["from_snapshot_median"], r["ratio"], recovery_t),
    ]
    lines = [
        f"Durability ({result['shards']} shards; medians of {result['rounds']} round(s); ratio = logged / reference)",
        f"{'Measurement':<48}{'Logged':>10}{'Reference':>11}{'Ratio':>9}{'Target':>9}   Result",
        "_" * 96,
    ]
    for label, logged, reference, ratio, target in rows:
        lines.append(f"{label:<48}{logged:>10.4f}{reference:>11.4f}{_x(ratio):>9}{_x(target['limit']):>9}   {state[target['met']]}")
    lines += [
        "",
        f"{'Single add throughput':<44}{'calls/s':>12}{'median (us)':>14}{'p99 (us)':>12}",
        "_" * 82,
    ]
    for mode, label in (("memory", "in memory (no log)"), ("everysec", "log, fsync everysec"), ("always", "log, fsync always")):
        m = s[mode]
        rate = "-" if m["calls_per_second"] is None else f"{m['calls_per_second']:,.0f}"
        lines.append(f"{label:<44}{rate:>12}{m['call_median_us']:>14.1f}{m['call_p99_us']:>12.1f}")
    lines += [
        "",
        (
            f"opening: from the DataBase() call, worker start included, to the first call's return; an empty "
            f"in-memory open takes {r['empty_open_median']:.4f} s of that"
        ),
        f"on disk: log {r['log_bytes']:,} bytes, snapshot {r['snapshot_bytes']:,} bytes for {r['users']:,} users",
    ]
    return "\n".join(lines)
