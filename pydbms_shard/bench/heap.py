"""The five batch rows with the cyclic GC on while the caller holds a big heap: the workload's
users stay alive and the caller adds three small lists per user (3M at 1M users; lists, since
the GC stops tracking tuples of plain numbers). Each of ``rounds`` rounds builds a fresh
database per engine (the base users added untimed) and times the five rows on it with that
round's picks, our engine and reference (a) alternating which goes first; a ``gc.collect()``
runs before each timed call, as in the main table, and the automatic collections during the
call are counted. Ratios divide our median by reference (a)'s.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from .workload import BATCH_ROWS, Engine, Workload

OBJECTS_PER_USER = 3

Progress = Callable[[str], None]


def _silent(message: str) -> None:
    pass


def _timed(call: Callable[..., Any], *args: Any) -> tuple[float, int]:
    """Seconds of one call, and how many collections the GC ran by itself during it."""
    gc.collect()
    before = sum(s["collections"] for s in gc.get_stats())
    started = time.perf_counter()
    call(*args)
    elapsed = time.perf_counter() - started
    return elapsed, sum(s["collections"] for s in gc.get_stats()) - before


def _one_round(engine: Engine, workload: Workload, iteration: int) -> dict[str, tuple[float, int]]:
    native = engine.prepare(workload.users)
    base, extra = native[: workload.base_count], native[workload.base_count :]
    picks = workload.picks(iteration)
    db = engine.open()
    try:
        engine.add(db, base)
        return {
            "Add Users": _timed(engine.add, db, extra),
            "Search Users by Name": _timed(engine.search, db, picks.search_names),
            "Check Users by ID": _timed(engine.check, db, picks.check_ids),
            "Remove Users by ID": _timed(engine.remove, db, picks.remove_ids),
            "Remove Users by Name": _timed(engine.remove, db, picks.remove_names),
        }
    finally:
        engine.close(db)
        del db, native, base, extra
        gc.collect()


def run_heap_rows(ours: Engine, reference: Engine, workload: Workload, rounds: int = 3, progress: Progress = _silent) -> dict[str, Any]:
    """The five batch rows on ``ours`` and ``reference`` with a big live caller heap (see the module doc)."""
    if not gc.isenabled():
        raise RuntimeError("the cyclic GC must be enabled for this measurement")
    ballast = [[i] for i in range(OBJECTS_PER_USER * workload.n)]
    gc.collect()
    tracked = len(gc.get_objects())
    engines = [ours, reference]
    times: dict[str, dict[str, list[float]]] = {e.key: {row: [] for row in BATCH_ROWS} for e in engines}
    collections: dict[str, int] = {e.key: 0 for e in engines}
    try:
        for r in range(rounds):
            for engine in engines if r % 2 == 0 else engines[::-1]:
                progress(f"big caller heap: {engine.label}, round {r + 1}/{rounds}")
                for row, (seconds, gcs) in _one_round(engine, workload, r).items():
                    times[engine.key][row].append(seconds)
                    collections[engine.key] += gcs
    finally:
        del ballast
        gc.collect()
    medians = {key: {row: statistics.median(t) for row, t in rows.items()} for key, rows in times.items()}
    return {
        "users": workload.n,
        "batch": workload.batch,
        "rounds": rounds,
        "ballast_objects": OBJECTS_PER_USER * workload.n,
        "gc_tracked_objects": tracked,
        "engines": {e.key: e.label for e in engines},
        "ours": ours.key,
        "reference": reference.key,
        "seconds": times,
        "medians": medians,
        "automatic_collections": collections,
        "ratios": {row: medians[ours.key][row] / medians[reference.key][row] for row in BATCH_ROWS},
    }


def format_heap(h: dict[str, Any]) -> str:
    ours, ref = h["ours"], h["reference"]
    lines = [
        (
            f"Batch rows, GC on, big caller heap ({h['gc_tracked_objects']:,} GC-tracked objects alive; {h['users']:,} users, "
            f"batches of {h['batch']:,}; medians of {h['rounds']} round(s), engines alternating)"
        ),
        f"{'Operation':<26}{h['engines'][ours]:>34}{h['engines'][ref]:>34}{'ratio':>9}",
        "_" * 103,
    ]
    for row in BATCH_ROWS:
        lines.append(f"{row:<26}{h['medians'][ours][row]:>34.4f}{h['medians'][ref][row]:>34.4f}{h['ratios'][row]:>8.2f}x")
    lines.append(
        "automatic GC collections during the timed calls: "
        + ", ".join(f"{h['engines'][k]} {v}" for k, v in h["automatic_collections"].items())
    )
    return "\n".join(lines)
