"""How our engine scales with the number of users: for each ``n`` of ``--scale``, in a fresh child
process (:mod:`.child`), ``n`` users are added in chunks of 100,000 (the caller never holds
more), then ``rounds`` times each (medians): a save (and beside it the disk floor, as in
:mod:`.memory`), a load into a fresh empty database, a batch add of
``batch`` new users (removed again, untimed, after each), and a search of ``batch`` stored IDs
drawn without repeats from all ``n``. Ratios divide each row by the same row at the first ``n``
of the list (1M by default), so 1.00x means it does not grow with the database.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..coordinator import DataBase
from ..generate import generate_users
from ..snapshot import read_manifest
from ..user import User
from .child import run_in_child
from .memory import CHUNK, disk_floor, rss, user_chunks
from .workload import DEFAULT_SEED

BATCH = 100_000
ROWS = ("load", "save", "add", "search_ids")
LABELS = {"load": "load (s)", "save": "save (s)", "add": "add batch (s)", "search_ids": "search IDs (s)"}

Progress = Callable[[str], None]
Query = User | uuid.UUID | str


def _silent(message: str) -> None:
    pass


def _timed(call: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure_scale(users: int, shards: int, batch: int, rounds: int, workdir: str, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """One ``n`` of the scaling table (see the module doc); runs in its own process."""
    rng = np.random.default_rng([seed, users])
    picked = np.sort(rng.choice(users, batch, replace=False))
    snap = Path(workdir) / f"scale-{users}" / "users_db.json"
    snap.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    floors: list[float] = []
    with DataBase(shards=shards) as db:
        pids = [os.getpid()] + [int(s["pid"]) for s in db.stats()["shards"]]
        before = rss(pids)
        search_ids: list[Query] = []
        for k, chunk in enumerate(user_chunks(users, seed)):
            db.add_users(chunk)
            start = k * CHUNK
            mine = picked[(picked >= start) & (picked < start + len(chunk))] - start
            search_ids += [chunk[i].ID for i in mine.tolist()]
        del chunk
        gc.collect()
        rss_per_user = (rss(pids) - before) / users
        extra = generate_users(batch, seed + 1_000_003)
        extra_ids: list[Query] = [u.ID for u in extra]
        for _ in range(rounds):
            times["add"].append(_timed(lambda: db.add_users(extra)))
            db.remove_users(extra_ids)
            times["search_ids"].append(_timed(lambda: db.search_users(search_ids)))
            times["save"].append(_timed(lambda: db.save(snap)))
            floors.append(disk_floor(snap.parent, [f.bytes for f in read_manifest(snap).files]))
        if len(db) != users:
            raise RuntimeError(f"scale {users:,}: {len(db)} users stored")
    for _ in range(rounds):
        with DataBase(shards=shards) as target:
            times["load"].append(_timed(lambda: target.load(snap)))
            if len(target) != users:
                raise RuntimeError(f"scale {users:,}: the load gave {len(target)} users")
    manifest = read_manifest(snap)
    return {
        "users": users,
        "batch": batch,
        "rss_bytes_per_user": rss_per_user,
        "snapshot_bytes": snap.stat().st_size + sum(f.bytes for f in manifest.files),
        "seconds": times,
        "medians": {row: statistics.median(times[row]) for row in ROWS},
        "floor_seconds": floors,
        "floor_median": statistics.median(floors),
        "save_vs_floor": statistics.median(times["save"]) / statistics.median(floors),
    }


def run_scale(
    sizes: list[int], shards: int, rounds: int, workdir: str | os.PathLike[str], seed: int = DEFAULT_SEED, progress: Progress = _silent
) -> dict[str, Any]:
    """Every size of ``sizes`` in its own child process; ratios against the first."""
    batch = min(BATCH, max(1, min(sizes) // 10))
    results = []
    for n in sizes:
        progress(f"scale: {n:,} users, {rounds} round(s)")
        results.append(
            run_in_child("scale:measure_scale", users=n, shards=shards, batch=batch, rounds=rounds, workdir=str(workdir), seed=seed)
        )
    first = results[0]["medians"]
    for result in results:
        result["ratios"] = {row: result["medians"][row] / first[row] if first[row] else None for row in ROWS}
    return {"shards": shards, "rounds": rounds, "batch": batch, "reference_users": sizes[0], "sizes": results}


def format_scale(s: dict[str, Any]) -> str:
    lines = [
        (
            f"Scale ({s['shards']} shard(s); medians of {s['rounds']} round(s); batches of {s['batch']:,}; "
            f"ratio = row at N / row at {s['reference_users']:,})"
        ),
        f"{'Users':>12}{'B/user':>9}" + "".join(f"{LABELS[row]:>16}{'ratio':>8}" for row in ROWS) + f"{'save/floor':>12}",
        "_" * (33 + 24 * len(ROWS)),
    ]
    for r in s["sizes"]:
        cells = "".join(f"{r['medians'][row]:>16.4f}{_x(r['ratios'][row]):>8}" for row in ROWS)
        lines.append(f"{r['users']:>12,}{r['rss_bytes_per_user']:>9.1f}{cells}{_x(r['save_vs_floor']):>12}")
    lines.append("B/user: RSS of the coordinator and every worker after adding the users, minus before, per user")
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
