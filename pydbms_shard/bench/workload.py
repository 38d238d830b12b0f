"""The reference workload (the rows of the original pyDBMS benchmark), run the same way on every engine.

An *engine* is our DataBase at a given shard count, reference (a) (the original's design, in
:mod:`.original`) or reference (b) (SQLite, in :mod:`.sqlite_ref`). :func:`run_engine` builds
the engine's database outside the timed region, then times every row of the original's table
``iterations`` times with the same seeded users and the same seeded picks for every engine:

1. a database holding ``n - batch`` users; time adding the last ``batch`` users (Add Users);
2. time a search of ``batch`` names picked from the ``n`` stored users, with replacement;
3. time a check of ``batch`` distinct stored IDs;
4. time removing ``batch`` IDs picked with replacement, then ``batch`` names picked with
   replacement from the names generated at the start (some are gone already);
5. (untimed) add every user again, so exactly ``n`` are stored; time a save, a backup of that
   save, and a load of it into an empty database of the same kind (afterwards size and a
   lookup are checked, untimed); (untimed) remove the last ``batch`` users for the next round.

The cyclic GC stays on, as in real use, but a collection runs before each timed call so that
garbage from set-up is not charged to the row. Memory per user is measured in a fresh child
process per engine (so nothing else in the benchmark's heap is counted): the RSS of all of the
engine's processes with the ``n`` users loaded from its own save file, minus the same with the
engine empty.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..coordinator import DataBase
from ..generate import generate_users
from ..snapshot import read_manifest
from ..user import User
from .original import OriginalDataBase, OriginalUser
from .sqlite_ref import SQLiteDataBase

ROWS = (
    "Add Users",
    "Search Users by Name",
    "Check Users by ID",
    "Remove Users by ID",
    "Remove Users by Name",
    "Save Database",
    "Backup Database",
    "Load Database",
)
BATCH_ROWS = ROWS[:5]
FILE_ROWS = ROWS[5:]
DEFAULT_SEED = 20_240_501

Progress = Callable[[str], None]


def _silent(message: str) -> None:
    pass


# ---------------------------------------------------------------- users and picks


@dataclass
class Picks:
    """One iteration's seeded queries (the same for every engine)."""

    search_names: list[str]
    check_ids: list[uuid.UUID]
    remove_ids: list[uuid.UUID]
    remove_names: list[str]


@dataclass
class Workload:
    """``n`` seeded users, split into the stored base and the ``batch`` users that get added."""

    n: int
    seed: int = DEFAULT_SEED
    users: list[User] = field(init=False, repr=False)
    batch: int = field(init=False)

    def __post_init__(self) -> None:
        if self.n < 10:
            raise ValueError(f"the workload needs at least 10 users, got {self.n}")
        self.batch = self.n // 10
        self.users = generate_users(self.n, self.seed)
        self._names = [u.name for u in self.users]
        self._ids = [u.ID for u in self.users]

    @property
    def base_count(self) -> int:
        return self.n - self.batch

    @property
    def extra_ids(self) -> list[uuid.UUID]:
        return self._ids[self.base_count :]

    def picks(self, iteration: int) -> Picks:
        rng = np.random.default_rng([self.seed, iteration])
        names, ids, n, b = self._names, self._ids, self.n, self.batch
        return Picks(
            search_names=[names[i] for i in rng.integers(0, n, b).tolist()],
            check_ids=[ids[i] for i in rng.choice(n, b, replace=False).tolist()],
            remove_ids=[ids[i] for i in rng.integers(0, n, b).tolist()],
            remove_names=[names[i] for i in rng.integers(0, n, b).tolist()],
        )


# ---------------------------------------------------------------- engines


class Engine:
    """One database design under test, behind the calls the workload makes."""

    key = ""
    label = ""
    kind = ""
    shards: int | None = None
    snapshot_name = ""

    def prepare(self, users: list[User]) -> list[Any]:
        """The engine's own user objects for ``users`` (done once, untimed)."""
        return users

    def open(self) -> Any:
        raise NotImplementedError

    def close(self, db: Any) -> None:
        pass

    def add(self, db: Any, users: list[Any]) -> int:
        result: int = db.add_users(users)
        return result

    def search(self, db: Any, names: list[str]) -> list[Any]:
        result: list[Any] = db.search_users(names)
        return result

    def check(self, db: Any, ids: list[uuid.UUID]) -> bool:
        result: bool = db.has_user(ids)
        return result

    def remove(self, db: Any, items: list[Any]) -> int:
        result: int = db.remove_users(items)
        return result

    def save(self, db: Any, path: Path) -> None:
        raise NotImplementedError

    def backup(self, db: Any, path: Path, dst: Path) -> None:
        raise NotImplementedError

    def load(self, db: Any, path: Path) -> None:
        raise NotImplementedError

    def size(self, db: Any) -> int:
        result: int = db.size
        return result

    def lookup(self, db: Any, uid: uuid.UUID) -> Any:
        """The stored user with this ID (None when missing): checks a load worked."""
        found = db.search_users([uid])
        return found[0] if found else None

    def snapshot_bytes(self, path: Path) -> int:
        return path.stat().st_size

    def pids(self, db: Any) -> list[int]:
        return [os.getpid()]

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "kind": self.kind, "shards": self.shards}


class OursEngine(Engine):
    kind = "ours"
    snapshot_name = "users_db.json"

    def __init__(self, shards: int, default: bool = False, backend: str = "local") -> None:
        self.shards = shards
        self.backend = backend
        self.default = default and backend == "local"
        self.key = f"ours-{shards}" if backend == "local" else f"ours-{backend}-{shards}"
        plural = "shard" if shards == 1 else "shards"
        where = "" if backend == "local" else f" on {backend.capitalize()}"
        self.label = f"pydbms-shard{where}, {shards} {plural}" + (" (default)" if self.default else "")

    def open(self) -> DataBase:
        return DataBase(shards=self.shards, backend=self.backend)

    def close(self, db: DataBase) -> None:
        db.close()

    def save(self, db: DataBase, path: Path) -> None:
        db.save(path)

    def backup(self, db: DataBase, path: Path, dst: Path) -> None:
        db.backup(dst, source=path)

    def load(self, db: DataBase, path: Path) -> None:
        db.load(path)

    def size(self, db: DataBase) -> int:
        return len(db)

    def lookup(self, db: DataBase, uid: uuid.UUID) -> Any:
        return db.get(uid)

    def snapshot_bytes(self, path: Path) -> int:
        manifest = read_manifest(path)
        return path.stat().st_size + sum(f.bytes for f in manifest.files)

    def pids(self, db: DataBase) -> list[int]:
        return [os.getpid()] + [int(s["pid"]) for s in db.stats()["shards"]]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "default": self.default, "backend": self.backend}


class OriginalEngine(Engine):
    key = "original"
    label = "reference (a): original design"
    kind = "original"
    snapshot_name = "users_db.json"

    def prepare(self, users: list[User]) -> list[OriginalUser]:
        return [OriginalUser(u.name, u.age, u.ID, dict(u.extras) if u.extras else None) for u in users]

    def open(self) -> OriginalDataBase:
        return OriginalDataBase()

    def save(self, db: OriginalDataBase, path: Path) -> None:
        db.save(str(path))

    def backup(self, db: OriginalDataBase, path: Path, dst: Path) -> None:
        db.backup(str(path), str(dst))

    def load(self, db: OriginalDataBase, path: Path) -> None:
        db.load(str(path))


class SQLiteEngine(Engine):
    key = "sqlite"
    label = "reference (b): SQLite"
    kind = "sqlite"
    snapshot_name = "users.sqlite3"

    def open(self) -> SQLiteDataBase:
        return SQLiteDataBase()

    def close(self, db: SQLiteDataBase) -> None:
        db.close()

    def save(self, db: SQLiteDataBase, path: Path) -> None:
        db.save(path)

    def backup(self, db: SQLiteDataBase, path: Path, dst: Path) -> None:
        db.backup(path, dst)

    def load(self, db: SQLiteDataBase, path: Path) -> None:
        db.load(path)


def make_engine(kind: str, shards: int | None = None, default: bool = False, backend: str = "local") -> Engine:
    if kind == "ours":
        if shards is None:
            raise ValueError("our engine needs a shard count")
        return OursEngine(shards, default, backend)
    if kind == "original":
        return OriginalEngine()
    if kind == "sqlite":
        return SQLiteEngine()
    raise ValueError(f"unknown engine kind {kind!r} (ours, original, sqlite)")


# ---------------------------------------------------------------- results


def summarize(times: list[float]) -> dict[str, float]:
    """Avg, Min, Max, StdDev (sample; 0 for one value) and the median, in seconds."""
    return {
        "avg": statistics.fmean(times),
        "min": min(times),
        "max": max(times),
        "stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "median": statistics.median(times),
    }


@dataclass
class EngineResult:
    engine: dict[str, Any]
    counts: dict[str, int]
    times: dict[str, list[float]]
    answers: list[dict[str, Any]]
    snapshot_bytes: int | None = None
    memory: dict[str, Any] | None = None
    get_us: dict[str, Any] | None = None

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row: {"count": self.counts[row], "times": self.times[row], **summarize(self.times[row])} for row in ROWS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "rows": self.rows(),
            "answers": self.answers,
            "snapshot_bytes": self.snapshot_bytes,
            "memory": self.memory,
            "get_us": self.get_us,
        }


def _timed(call: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    gc.collect()
    started = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - started, result


def _digest(users: list[Any]) -> str:
    """The same for the same multiset of found users, whatever order an engine returns them in."""
    return hashlib.sha1(b"".join(sorted(u.ID.bytes for u in users))).hexdigest()


# ---------------------------------------------------------------- the workload on one engine


def run_engine(
    engine: Engine,
    workload: Workload,
    iterations: int,
    workdir: str | os.PathLike[str],
    progress: Progress = _silent,
    measure_memory: bool = True,
    time_gets: bool = True,
) -> EngineResult:
    """Every row ``iterations`` times on ``engine``; set-up is outside every timed region."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    workdir = Path(workdir) / engine.key
    workdir.mkdir(parents=True, exist_ok=True)
    snap = workdir / engine.snapshot_name
    backup = workdir / ("backup-" + engine.snapshot_name)
    n, b = workload.n, workload.batch
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    counts = {row: (b if row in BATCH_ROWS else n) for row in ROWS}
    answers: list[dict[str, Any]] = []

    progress(f"{engine.label}: setting up {workload.base_count:,} users")
    native = engine.prepare(workload.users)
    base, extra = native[: workload.base_count], native[workload.base_count :]
    db = engine.open()
    get_us = None
    try:
        engine.add(db, base)
        for it in range(iterations):
            progress(f"{engine.label}: iteration {it + 1}/{iterations}")
            picks = workload.picks(it)
            answer: dict[str, Any] = {}
            t, answer["added"] = _timed(engine.add, db, extra)
            times["Add Users"].append(t)
            t, found = _timed(engine.search, db, picks.search_names)
            times["Search Users by Name"].append(t)
            answer["found"], answer["found_digest"] = len(found), _digest(found)
            del found
            t, answer["check"] = _timed(engine.check, db, picks.check_ids)
            times["Check Users by ID"].append(t)
            t, answer["removed_by_id"] = _timed(engine.remove, db, picks.remove_ids)
            times["Remove Users by ID"].append(t)
            t, answer["removed_by_name"] = _timed(engine.remove, db, picks.remove_names)
            times["Remove Users by Name"].append(t)

            engine.add(db, native)  # exactly n users again, untimed
            if engine.size(db) != n:
                raise RuntimeError(f"{engine.label}: expected {n} users before the save, found {engine.size(db)}")
            t, _ = _timed(engine.save, db, snap)
            times["Save Database"].append(t)
            t, _ = _timed(engine.backup, db, snap, backup)
            times["Backup Database"].append(t)
            target = engine.open()
            try:
                t, _ = _timed(engine.load, target, snap)
                times["Load Database"].append(t)
                answer["loaded"] = engine.size(target)
                probe = workload.users[it % n]
                stored = engine.lookup(target, probe.ID)
                if answer["loaded"] != n or stored is None or stored.name != probe.name:
                    raise RuntimeError(f"{engine.label}: the load gave {answer['loaded']} users, lookup {stored!r}")
            finally:
                engine.close(target)
                del target
            answers.append(answer)
            if it + 1 < iterations:
                engine.remove(db, workload.extra_ids)  # back to the base for the next round, untimed
        if time_gets and isinstance(engine, OursEngine):
            progress(f"{engine.label}: single gets")
            get_us = time_single_gets(db, workload)
    finally:
        engine.close(db)
        del db, native, base, extra
        gc.collect()

    result = EngineResult(engine.describe(), counts, times, answers, get_us=get_us)
    result.snapshot_bytes = engine.snapshot_bytes(snap)
    if measure_memory:
        progress(f"{engine.label}: memory with {n:,} users loaded")
        result.memory = memory_in_child(engine, snap)
    return result


def time_single_gets(db: DataBase, workload: Workload, samples: int = 2000) -> dict[str, Any]:
    """Median microseconds of one ``get``: IDs never fetched before (uncached), then the same
    IDs again (cached). Each call is timed on its own."""
    rng = np.random.default_rng([workload.seed, 99])
    count = min(samples, workload.n)
    ids = [workload.users[i].ID for i in rng.choice(workload.n, count, replace=False).tolist()]
    clock = time.perf_counter_ns
    before = db.stats()["cache"]
    uncached = []
    for uid in ids:
        started = clock()
        db.get(uid)
        uncached.append(clock() - started)
    cached = []
    for _ in range(3):
        for uid in ids:
            started = clock()
            db.get(uid)
            cached.append(clock() - started)
    after = db.stats()["cache"]
    return {
        "cached_median": statistics.median(cached) / 1000,
        "uncached_median": statistics.median(uncached) / 1000,
        "cached_samples": len(cached),
        "uncached_samples": len(uncached),
        "cache_hits": after["hits"] - before["hits"],
        "cache_misses": after["misses"] - before["misses"],
        "cache_capacity": after["capacity"],
    }


# ---------------------------------------------------------------- memory, in a child process


def rss_of(pids: list[int]) -> int:
    import psutil

    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def measure_memory(engine: Engine, path: Path) -> dict[str, Any]:
    """RSS of all the engine's processes, empty and with the save at ``path`` loaded."""
    db = engine.open()
    try:
        gc.collect()
        empty = rss_of(engine.pids(db))
        engine.load(db, path)
        gc.collect()
        loaded = rss_of(engine.pids(db))
        users = engine.size(db)
        processes = len(engine.pids(db))
    finally:
        engine.close(db)
    return {
        "empty_rss": empty,
        "loaded_rss": loaded,
        "users": users,
        "processes": processes,
        "bytes_per_user": (loaded - empty) / users if users else None,
    }


def memory_in_child(engine: Engine, path: Path) -> dict[str, Any]:
    """:func:`measure_memory` in a fresh interpreter, so only the engine's own memory counts."""
    backend = getattr(engine, "backend", "local")
    args = [sys.executable, "-m", "pydbms_shard.bench.workload", "memory", engine.kind, str(engine.shards or 0), str(path), backend]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {engine.label} failed: {done.stderr.strip()[-2000:]}")
    memory: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return memory


def _main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[0] != "memory":
        print("usage: python -m pydbms_shard.bench.workload memory KIND SHARDS PATH BACKEND", file=sys.stderr)
        return 2
    _, kind, shards, path, backend = argv
    engine = make_engine(kind, int(shards) or None, backend=backend)
    print(json.dumps(measure_memory(engine, Path(path))))
    return 0


# ---------------------------------------------------------------- every engine


def run_all(
    engines: list[Engine],
    n: int,
    iterations: int,
    workdir: str | os.PathLike[str] | None = None,
    seed: int = DEFAULT_SEED,
    progress: Progress = _silent,
    measure_memory: bool = True,
) -> tuple[Workload, list[EngineResult]]:
    """The workload on each engine in turn, one engine's database alive at a time."""
    progress(f"generating {n:,} users (seed {seed})")
    workload = Workload(n, seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="pydbms-bench-", dir=workdir) as tmp:
        for engine in engines:
            results.append(run_engine(engine, workload, iterations, tmp, progress, measure_memory))
            gc.collect()
    return workload, results


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
