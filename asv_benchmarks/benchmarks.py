"""asv benchmarks: every row of the reference workload (the original pyDBMS benchmark's rows) for
our engine, over shard count (1, 2, 4) and user count (100k, 1M); batches are a tenth of the
users. Then what durability costs (the write-ahead log against the same engine in memory): a
logged batch add, single adds per fsync policy, and recovery from the log against a snapshot.

Only the public API is used (``DataBase``, ``generate_users``), so the suite also runs
against older commits. ``setup_cache`` (shared by every class: asv keys it by source line)
writes one snapshot per shard count and user count; each benchmark's ``setup`` starts its
DataBase processes and loads what it needs, and ``teardown`` closes them. asv re-runs setup
before every timed sample, so rows that change the database (add, remove, save) always start
from the same state. ``scripts/bench`` runs the same rows against the two references.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from pydbms_shard import DataBase, generate_users

SHARDS = [1, 2, 4]
USERS = [100_000, 1_000_000]
SEED = 20_240_501
GET_SAMPLES = 1000


def _close_and_clean(bench: object) -> None:
    """Close a benchmark's DataBase and remove its temporary folder, if it has them."""
    db = getattr(bench, "db", None)
    if db is not None:
        db.close()
        bench.db = None  # type: ignore[attr-defined]
    tmp = getattr(bench, "tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.tmp = None  # type: ignore[attr-defined]


def _key(shards: int, users: int) -> str:
    return f"{shards}-{users}"


def _rss(pids: list[int]) -> int:
    import psutil

    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


class _Suite:
    params = [SHARDS, USERS]
    param_names = ["shards", "users"]
    timeout = 600
    number = 1  # every timed call is one batch call on freshly set-up state
    repeat = (1, 5, 60.0)
    warmup_time = 0.0
    rounds = 1

    def setup_cache(self) -> dict:
        """One snapshot per (shards, users), written by a DataBase of that shard count."""
        root = os.path.abspath("snapshots")
        os.makedirs(root, exist_ok=True)
        snapshots = {}
        for users in USERS:
            population = generate_users(users, SEED)
            for shards in SHARDS:
                path = os.path.join(root, f"users-{users}-s{shards}.json")
                with DataBase(shards=shards) as db:
                    db.add_users(population)
                    db.save(path)
                snapshots[_key(shards, users)] = path
            del population
            gc.collect()
        return {"snapshots": snapshots}

    setup_cache.timeout = 1800

    def _open(self, cache: dict, shards: int, users: int, load: bool = True) -> None:
        self.db = DataBase(shards=shards)
        if load:
            self.db.load(cache["snapshots"][_key(shards, users)])

    def _population(self, users: int) -> None:
        self.population = generate_users(users, SEED)
        self.batch = users // 10
        self.rng = np.random.default_rng(SEED)

    def _pick(self, field: str, replace: bool = True) -> list:
        n = len(self.population)
        picked = self.rng.choice(n, self.batch, replace=replace).tolist()
        return [getattr(self.population[i], field) for i in picked]

    def teardown(self, cache: dict, shards: int, users: int) -> None:
        _close_and_clean(self)


class AddUsers(_Suite):
    """Add Users: a tenth of the users into a database holding the other nine tenths."""

    def setup(self, cache: dict, shards: int, users: int) -> None:
        self._open(cache, shards, users)
        self._population(users)
        self.extra = self.population[-self.batch :]
        self.db.remove_users([u.ID for u in self.extra])
        gc.collect()

    def time_add_users(self, cache: dict, shards: int, users: int) -> None:
        self.db.add_users(self.extra)


class Queries(_Suite):
    """Search by name, check by ID, remove by ID and by name (batches picked from the stored
    users; with replacement except the check), and single gets."""

    def setup(self, cache: dict, shards: int, users: int) -> None:
        self._open(cache, shards, users)
        self._population(users)
        self.search_names = self._pick("name")
        self.check_ids = self._pick("ID", replace=False)
        self.remove_ids = self._pick("ID")
        self.remove_names = self._pick("name")
        gc.collect()

    def time_search_users_by_name(self, cache: dict, shards: int, users: int) -> None:
        self.db.search_users(self.search_names)

    def time_check_users_by_id(self, cache: dict, shards: int, users: int) -> None:
        self.db.has_user(self.check_ids)

    def time_remove_users_by_id(self, cache: dict, shards: int, users: int) -> None:
        self.db.remove_users(self.remove_ids)

    def time_remove_users_by_name(self, cache: dict, shards: int, users: int) -> None:
        self.db.remove_users(self.remove_names)

    def _get_us(self, cached: bool) -> float:
        ids = self.check_ids[:GET_SAMPLES]
        if cached:
            for uid in ids:
                self.db.get(uid)
        clock = time.perf_counter_ns
        samples = []
        for uid in ids:
            started = clock()
            self.db.get(uid)
            samples.append(clock() - started)
        return statistics.median(samples) / 1000

    def track_get_cached_us(self, cache: dict, shards: int, users: int) -> float:
        """Median microseconds of one get() of an ID the read cache holds."""
        return self._get_us(cached=True)

    track_get_cached_us.unit = "microseconds"

    def track_get_uncached_us(self, cache: dict, shards: int, users: int) -> float:
        """Median microseconds of one get() of an ID not fetched before (crosses a pipe)."""
        return self._get_us(cached=False)

    track_get_uncached_us.unit = "microseconds"


class SaveDatabase(_Suite):
    def setup(self, cache: dict, shards: int, users: int) -> None:
        self._open(cache, shards, users)
        self.tmp = tempfile.mkdtemp(prefix="save-", dir=os.getcwd())
        gc.collect()

    def time_save_database(self, cache: dict, shards: int, users: int) -> None:
        self.db.save(os.path.join(self.tmp, "users_db.json"))


class BackupDatabase(_Suite):
    def setup(self, cache: dict, shards: int, users: int) -> None:
        self._open(cache, shards, users, load=False)
        self.tmp = tempfile.mkdtemp(prefix="backup-", dir=os.getcwd())

    def time_backup_database(self, cache: dict, shards: int, users: int) -> None:
        self.db.backup(os.path.join(self.tmp, "backup.json"), source=cache["snapshots"][_key(shards, users)])


class LoadDatabase(_Suite):
    """Load into an empty DataBase. peakmem is asv's own process (the coordinator) only; the
    workers' memory is in Footprint.track_bytes_per_user."""

    def setup(self, cache: dict, shards: int, users: int) -> None:
        self._open(cache, shards, users, load=False)
        gc.collect()

    def time_load_database(self, cache: dict, shards: int, users: int) -> None:
        self.db.load(cache["snapshots"][_key(shards, users)])

    def peakmem_load_database(self, cache: dict, shards: int, users: int) -> None:
        self.db.load(cache["snapshots"][_key(shards, users)])


class Footprint(_Suite):
    def track_snapshot_bytes(self, cache: dict, shards: int, users: int) -> int:
        """Bytes on disk of one snapshot: the manifest and every shard file it names."""
        path = cache["snapshots"][_key(shards, users)]
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        return os.path.getsize(path) + sum(entry["bytes"] for entry in manifest["files"])

    track_snapshot_bytes.unit = "bytes"

    def track_bytes_per_user(self, cache: dict, shards: int, users: int) -> float:
        """RSS of the coordinator and every worker with the users loaded, minus the same empty,
        per user."""
        with DataBase(shards=shards) as db:
            pids = [os.getpid()] + [int(s["pid"]) for s in db.stats()["shards"]]
            gc.collect()
            empty = _rss(pids)
            db.load(cache["snapshots"][_key(shards, users)])
            gc.collect()
            loaded = _rss(pids)
        return (loaded - empty) / users

    track_bytes_per_user.unit = "bytes"


# ---------------------------------------------------------------- durability
#
# The write-ahead log against the same engine in memory, 2 shards, 100k users. Compare the
# params of one benchmark with each other ("memory" is a DataBase without a snapshot path, so
# without a log); scripts/bench prints the same comparisons as ratios with their targets.

DURABLE_SHARDS = 2
DURABLE_USERS = 100_000
DURABLE_BATCHES = 3
SINGLE_ADDS = 1000
NO_CHECKPOINT_BYTES = 1 << 50  # no automatic checkpoint may move logged users into a snapshot


class _Durable:
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0.0
    rounds = 1
    timeout = 600

    def _open(self, mode: str) -> None:
        if mode == "memory":
            self.db = DataBase(shards=DURABLE_SHARDS)
        else:
            self.tmp = tempfile.mkdtemp(prefix="durable-", dir=os.getcwd())
            self.db = DataBase(
                shards=DURABLE_SHARDS,
                snapshot_path=os.path.join(self.tmp, "db.json"),
                log_fsync=mode,
                log_checkpoint_bytes=NO_CHECKPOINT_BYTES,
            )

    def teardown(self, *params) -> None:
        _close_and_clean(self)


class LoggedBatchAdd(_Durable):
    """Three add_users calls of 100k fresh users each into an empty DataBase: with the log and
    fsync "always" against in memory (the target is at most 1.3x)."""

    params = [["memory", "always"]]
    param_names = ["log_fsync"]

    def setup(self, mode: str) -> None:
        population = generate_users(DURABLE_USERS * DURABLE_BATCHES, SEED + 1)
        self.batches = [population[k * DURABLE_USERS : (k + 1) * DURABLE_USERS] for k in range(DURABLE_BATCHES)]
        del population
        self._open(mode)
        gc.collect()

    def time_add_batches(self, mode: str) -> None:
        for batch in self.batches:
            self.db.add_users(batch)


class SingleAdd(_Durable):
    """1000 calls of add(user), one user each, into an empty DataBase: in memory, with the log
    and fsync "everysec" (the target is at most 1.5x in memory) and with fsync "always"."""

    params = [["memory", "everysec", "always"]]
    param_names = ["log_fsync"]

    def setup(self, mode: str) -> None:
        self.users = generate_users(SINGLE_ADDS, SEED + 2)
        self._open(mode)
        gc.collect()

    def time_single_adds(self, mode: str) -> None:
        add = self.db.add
        for user in self.users:
            add(user)

    def track_single_adds_per_second(self, mode: str) -> float:
        """Calls of add(user) per second."""
        add = self.db.add
        started = time.perf_counter()
        for user in self.users:
            add(user)
        return len(self.users) / (time.perf_counter() - started)

    track_single_adds_per_second.unit = "calls/s"


class Recovery(_Durable):
    """Opening a snapshot path until the first call returns (worker start included): "log" holds
    100k users only in its log (added through it, never saved; the open replays them),
    "snapshot" holds the same users in a snapshot with nothing to replay, "empty" is an
    in-memory DataBase (the fixed cost of both). The target is log at most 2x snapshot."""

    params = [["log", "snapshot", "empty"]]
    param_names = ["source"]

    def setup_cache(self) -> dict:
        root = os.path.abspath("durable")
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.join(root, "log"))
        os.makedirs(os.path.join(root, "snapshot"))
        population = generate_users(DURABLE_USERS, SEED + 3)
        logged = os.path.join(root, "log", "db.json")
        with DataBase(shards=DURABLE_SHARDS, snapshot_path=logged, log_checkpoint_bytes=NO_CHECKPOINT_BYTES) as db:
            for start in range(0, DURABLE_USERS, DURABLE_USERS // 10):
                db.add_users(population[start : start + DURABLE_USERS // 10])
        saved = os.path.join(root, "snapshot", "db.json")
        with DataBase(shards=DURABLE_SHARDS) as db:
            db.add_users(population)
            db.save(saved)
        return {"log": logged, "snapshot": saved}

    setup_cache.timeout = 600

    def setup(self, cache: dict, source: str) -> None:
        gc.collect()

    def time_open_until_first_call(self, cache: dict, source: str) -> None:
        if source == "empty":
            self.db = DataBase(shards=DURABLE_SHARDS)
        else:
            self.db = DataBase(shards=DURABLE_SHARDS, snapshot_path=cache[source])
        len(self.db)

    def teardown(self, cache: dict, source: str) -> None:
        super().teardown()
