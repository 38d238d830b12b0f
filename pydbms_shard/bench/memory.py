"""Memory, save and load of our engine against the original's design (reference (a)), each
engine in its own child process (:mod:`.child`) so that only its own memory counts:

1. *Bytes per user over all processes*: the RSS (and the USS) of the coordinator and every
   worker after adding ``n`` users, minus the same measured just before, divided by ``n``;
   once with no extras and once with every tenth user carrying small extras (an email and a
   tag). Users are generated and added in chunks of 100,000, so the caller never holds more
   than one chunk: what is left is what the database keeps.
2. *Peak memory during save and during load*: a thread samples the summed RSS of those
   processes every 10 ms while the call runs; the peak minus the RSS just before.
3. *Save and load times* (medians of ``rounds``; a load goes into a fresh, empty database)
   and, beside each save of our engine, the *disk floor*: the time to write and fsync the same
   number of bytes as each shard file, one file per shard written in parallel threads (as the
   workers do), then fsync the directory, in the same directory.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..generate import generate_users
from ..snapshot import fsync_dir, read_manifest
from ..user import User
from .child import run_in_child
from .workload import DEFAULT_SEED, Engine, OursEngine, make_engine

CHUNK = 100_000
EXTRAS_SHARE = 0.1
SAMPLE_INTERVAL_S = 0.010
MB = 1_000_000

Progress = Callable[[str], None]


def _silent(message: str) -> None:
    pass


# ---------------------------------------------------------------- processes and users


def _processes(pids: list[int]) -> list[Any]:
    import psutil

    return [psutil.Process(pid) for pid in pids]


def rss(pids: list[int]) -> int:
    """Summed resident set size of ``pids``."""
    return sum(p.memory_info().rss for p in _processes(pids))


def uss(pids: list[int]) -> int:
    """Summed unique set size (pages no other process shares) of ``pids``."""
    return sum(p.memory_full_info().uss for p in _processes(pids))


class PeakSampler:
    """``with PeakSampler(pids) as s: call()``; then ``s.rise`` is the peak summed RSS seen while
    the block ran (sampled every ``interval`` seconds in a thread) minus the RSS just before."""

    def __init__(self, pids: list[int], interval: float = SAMPLE_INTERVAL_S) -> None:
        self.processes, self.interval = _processes(pids), interval
        self.before = self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pydbms-bench-rss", daemon=True)

    def _sample(self) -> None:
        total = 0
        for p in self.processes:
            try:
                total += p.memory_info().rss
            except Exception:  # a worker that just exited: it holds nothing any more
                pass
        self.peak, self.samples = max(self.peak, total), self.samples + 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._sample()
        self.before = self.peak
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def rise(self) -> int:
        return self.peak - self.before


def user_chunks(n: int, seed: int, extras_share: float = 0.0, size: int = CHUNK) -> Iterator[list[User]]:
    """``n`` seeded users in chunks of ``size`` (chunk ``k`` is ``generate_users(size, seed + k)``);
    every ``1 / extras_share``-th user carries small extras."""
    step = round(1 / extras_share) if extras_share > 0 else 0
    for k, start in enumerate(range(0, n, size)):
        users = generate_users(min(size, n - start), seed + k)
        for i in range(0, len(users), step) if step else ():
            u = users[i]
            users[i] = User(u.name, u.age, u.ID, extras={"email": f"{u.name.lower()}@example.com", "tag": f"t{(start + i) % 8}"})
        yield users


def disk_floor(directory: Path, sizes: list[int]) -> float:
    """Seconds to write ``sizes[i]`` bytes into a new file each, in parallel threads, fsync each
    file, then fsync the directory; the files are removed afterwards."""
    block = memoryview(os.urandom(1 << 20))
    paths = [directory / f"disk-floor-{i}.bin" for i in range(len(sizes))]

    def write(path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            left = size
            while left:
                left -= os.write(fd, block[: min(left, len(block))])
            os.fsync(fd)
        finally:
            os.close(fd)

    try:
        with ThreadPoolExecutor(max_workers=max(1, len(sizes))) as pool:
            started = time.perf_counter()
            for future in [pool.submit(write, p, s) for p, s in zip(paths, sizes, strict=True)]:
                future.result()
            fsync_dir(directory)
            return time.perf_counter() - started
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- one engine, in a child process


def measure_engine(
    kind: str, users: int, shards: int, extras_share: float, workdir: str, rounds: int, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """Bytes per user of one engine; with ``rounds`` > 0 also its saves and loads (see the module doc)."""
    engine = make_engine(kind, shards or None)
    db = engine.open()
    try:
        pids = engine.pids(db)
        gc.collect()
        base_rss, base_uss = rss(pids), uss(pids)
        for chunk in user_chunks(users, seed, extras_share):
            engine.add(db, engine.prepare(chunk))
        del chunk
        gc.collect()
        if engine.size(db) != users:
            raise RuntimeError(f"{engine.label}: {engine.size(db)} users stored, expected {users}")
        result: dict[str, Any] = {
            "engine": engine.describe(),
            "users": users,
            "extras_share": extras_share,
            "processes": len(pids),
            "rss_bytes_per_user": (rss(pids) - base_rss) / users,
            "uss_bytes_per_user": (uss(pids) - base_uss) / users,
        }
        if rounds:
            result.update(_files(engine, db, Path(workdir) / engine.key, rounds))
    finally:
        engine.close(db)
    return result


def _files(engine: Engine, db: Any, folder: Path, rounds: int) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    snap = folder / engine.snapshot_name
    n = engine.size(db)
    out: dict[str, list[float]] = {k: [] for k in ("save_seconds", "save_peak_bytes", "floor_seconds", "load_seconds", "load_peak_bytes")}
    for _ in range(rounds):
        gc.collect()
        with PeakSampler(engine.pids(db)) as sampler:
            started = time.perf_counter()
            engine.save(db, snap)
            out["save_seconds"].append(time.perf_counter() - started)
        out["save_peak_bytes"].append(sampler.rise)
        if isinstance(engine, OursEngine):
            out["floor_seconds"].append(disk_floor(folder, [f.bytes for f in read_manifest(snap).files]))
    for _ in range(rounds):
        target = engine.open()
        try:
            gc.collect()
            with PeakSampler(engine.pids(target)) as sampler:
                started = time.perf_counter()
                engine.load(target, snap)
                out["load_seconds"].append(time.perf_counter() - started)
            out["load_peak_bytes"].append(sampler.rise)
            if engine.size(target) != n:
                raise RuntimeError(f"{engine.label}: the load gave {engine.size(target)} users, expected {n}")
        finally:
            engine.close(target)
            del target
            gc.collect()
    return {
        **out,
        "snapshot_bytes": engine.snapshot_bytes(snap),
        "save_median": statistics.median(out["save_seconds"]),
        "load_median": statistics.median(out["load_seconds"]),
        "floor_median": statistics.median(out["floor_seconds"]) if out["floor_seconds"] else None,
        "save_peak_max": max(out["save_peak_bytes"]),
        "load_peak_max": max(out["load_peak_bytes"]),
    }


# ---------------------------------------------------------------- both engines


def _ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def run_memory(
    users: int, shards: int, rounds: int, workdir: str | os.PathLike[str], seed: int = DEFAULT_SEED, progress: Progress = _silent
) -> dict[str, Any]:
    """Our engine at ``shards`` and reference (a), each in a fresh child process per measurement."""
    runs: dict[str, dict[str, Any]] = {}
    for key, kind, share, files in (
        ("ours", "ours", 0.0, rounds),
        ("original", "original", 0.0, rounds),
        ("ours_extras", "ours", EXTRAS_SHARE, 0),
        ("original_extras", "original", EXTRAS_SHARE, 0),
    ):
        what = f"{users:,} users" + (f", {share:.0%} with extras" if share else f", {files} save(s) and load(s)")
        progress(f"memory: {kind}, {what}")
        runs[key] = run_in_child(
            "memory:measure_engine",
            kind=kind,
            users=users,
            shards=shards,
            extras_share=share,
            workdir=str(workdir),
            rounds=files,
            seed=seed,
        )
    ours, original = runs["ours"], runs["original"]
    return {
        "users": users,
        "shards": shards,
        "rounds": rounds,
        "extras_share": EXTRAS_SHARE,
        "measure": "RSS (and USS) of the coordinator and every worker after adding the users, minus the same just before",
        **runs,
        "ratios": {
            "rss_bytes_per_user": _ratio(ours["rss_bytes_per_user"], original["rss_bytes_per_user"]),
            "rss_bytes_per_user_extras": _ratio(runs["ours_extras"]["rss_bytes_per_user"], runs["original_extras"]["rss_bytes_per_user"]),
            "save": _ratio(ours.get("save_median"), original.get("save_median")),
            "load": _ratio(ours.get("load_median"), original.get("load_median")),
            "save_vs_floor": _ratio(ours.get("save_median"), ours.get("floor_median")),
        },
    }


# ---------------------------------------------------------------- printing


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_memory(m: dict[str, Any]) -> str:
    ours, original, r = m["ours"], m["original"], m["ratios"]
    oe, ae = m["ours_extras"], m["original_extras"]
    share = f"{m['extras_share']:.0%} with extras"
    rows: list[tuple[str, float | None, float | None, str]] = [
        ("bytes/user, RSS, no extras", ours["rss_bytes_per_user"], original["rss_bytes_per_user"], ",.1f"),
        ("bytes/user, USS, no extras", ours["uss_bytes_per_user"], original["uss_bytes_per_user"], ",.1f"),
        (f"bytes/user, RSS, {share}", oe["rss_bytes_per_user"], ae["rss_bytes_per_user"], ",.1f"),
        (f"bytes/user, USS, {share}", oe["uss_bytes_per_user"], ae["uss_bytes_per_user"], ",.1f"),
    ]
    if m["rounds"]:
        rows += [
            ("save (s, median)", ours["save_median"], original["save_median"], ".4f"),
            ("load (s, median)", ours["load_median"], original["load_median"], ".4f"),
            ("peak RSS rise during save (MB)", ours["save_peak_max"] / MB, original["save_peak_max"] / MB, ",.1f"),
            ("peak RSS rise during load (MB)", ours["load_peak_max"] / MB, original["load_peak_max"] / MB, ",.1f"),
            ("snapshot on disk (MB)", ours["snapshot_bytes"] / MB, original["snapshot_bytes"] / MB, ",.1f"),
        ]
    lines = [
        f"Memory ({m['users']:,} users, {m['shards']} shard(s); {m['measure']}; medians of {m['rounds']} round(s))",
        f"{'Measurement':<40}{'ours':>14}{'(a) original':>14}{'ours/(a)':>10}",
        "_" * 78,
    ]
    for label, a, b, spec in rows:
        ratio = _ratio(a, b)
        lines.append(f"{label:<40}{_f(a, spec):>14}{_f(b, spec):>14}{'-' if ratio is None else f'{ratio:.2f}x':>10}")
    if m["rounds"]:
        lines.append(
            f"disk floor (write + fsync the snapshot's bytes, one file per shard in parallel threads): "
            f"{_f(ours['floor_median'], '.4f')} s; save / floor {_f(r['save_vs_floor'], '.2f')}x"
        )
    return "\n".join(lines)
