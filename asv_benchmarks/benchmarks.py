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

from pydbms_shard import DataBase, User, generate_users

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


def _peak_rss_rise(pids: list[int], call) -> tuple[int, float]:
    """Run ``call()`` while a thread samples the summed RSS of ``pids`` every 10 ms: the peak
    minus the RSS just before, and the call's seconds."""
    import threading

    import psutil

    processes = [psutil.Process(pid) for pid in pids]
    before = sum(p.memory_info().rss for p in processes)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in processes))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        call()
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join()
    return max(peak[0], sum(p.memory_info().rss for p in processes)) - before, elapsed


def _disk_floor(directory: str, sizes: list[int]) -> float:
    """Seconds to write and fsync ``sizes[i]`` bytes into a new file each, in parallel threads
    (as the workers write their shard files), then fsync the directory."""
    from concurrent.futures import ThreadPoolExecutor

    block = memoryview(os.urandom(1 << 20))
    paths = [os.path.join(directory, f"floor-{i}.bin") for i in range(len(sizes))]

    def write(path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while size:
                size -= os.write(fd, block[: min(size, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=len(sizes)) as pool:
        started = time.perf_counter()
        for future in [pool.submit(write, p, n) for p, n in zip(paths, sizes)]:
            future.result()
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - started
    for path in paths:
        os.unlink(path)
    return elapsed


class ColumnarMemory(_Suite):
    """The columnar shards' memory at the default 2 shards and 1M users (the times of save and
    load are SaveDatabase and LoadDatabase): the peak RSS rise of the coordinator and every
    worker during a save and during a load, the save against the disk floor (writing and
    fsyncing the same bytes), and bytes per user with every tenth user carrying small extras."""

    params = [[2], [1_000_000]]
    repeat = (1, 3, 60.0)

    def setup(self, cache: dict, shards: int, users: int) -> None:
        self.tmp = tempfile.mkdtemp(prefix="memory-", dir=os.getcwd())
        gc.collect()

    def _pids(self) -> list[int]:
        return [os.getpid()] + [int(s["pid"]) for s in self.db.stats()["shards"]]

    def track_peak_save_bytes(self, cache: dict, shards: int, users: int) -> int:
        """Peak RSS rise over all processes while 1M users are saved."""
        self._open(cache, shards, users)
        return _peak_rss_rise(self._pids(), lambda: self.db.save(os.path.join(self.tmp, "users_db.json")))[0]

    track_peak_save_bytes.unit = "bytes"

    def track_peak_load_bytes(self, cache: dict, shards: int, users: int) -> int:
        """Peak RSS rise over all processes while 1M users are loaded into an empty DataBase."""
        self._open(cache, shards, users, load=False)
        return _peak_rss_rise(self._pids(), lambda: self.db.load(cache["snapshots"][_key(shards, users)]))[0]

    track_peak_load_bytes.unit = "bytes"

    def track_save_over_disk_floor(self, cache: dict, shards: int, users: int) -> float:
        """Seconds of a save divided by the seconds to write and fsync as many bytes per shard file."""
        self._open(cache, shards, users)
        path = os.path.join(self.tmp, "users_db.json")
        seconds = _peak_rss_rise(self._pids(), lambda: self.db.save(path))[1]
        with open(path, encoding="utf-8") as f:
            sizes = [entry["bytes"] for entry in json.load(f)["files"]]
        return seconds / _disk_floor(self.tmp, sizes)

    track_save_over_disk_floor.unit = "ratio"

    def track_bytes_per_user_extras(self, cache: dict, shards: int, users: int) -> float:
        """RSS of the coordinator and every worker after adding the users (every tenth with an
        email and a tag), minus the same empty, per user; added in chunks of 100k."""
        self._open(cache, shards, users, load=False)
        pids = self._pids()
        gc.collect()
        empty = _rss(pids)
        for k, start in enumerate(range(0, users, 100_000)):
            chunk = generate_users(min(100_000, users - start), SEED + k)
            for i in range(0, len(chunk), 10):
                u = chunk[i]
                chunk[i] = User(u.name, u.age, u.ID, extras={"email": f"{u.name.lower()}@example.com", "tag": f"t{i % 8}"})
            self.db.add_users(chunk)
        del chunk
        gc.collect()
        return (_rss(pids) - empty) / users

    track_bytes_per_user_extras.unit = "bytes"


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
