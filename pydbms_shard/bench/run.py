"""The benchmark behind ``scripts/bench`` and ``pydbms bench``: the original's table for our
engine at each shard count and for both references, side by side, then what durability costs
(the write-ahead log against the same engine in memory, see :mod:`.durability`), plus results
as JSON and a PNG chart. Optional tables under "Memory and scale": bytes per user, peak memory,
save against the disk floor (``--memory``, :mod:`.memory`), scaling with the user count
(``--scale LIST``, :mod:`.scale`) and the batch rows under a big caller heap (``--heap``,
:mod:`.heap`); ``--memory-and-scale`` turns on all three.

    python -m pydbms_shard.bench.run --users 1000000 --iterations 5 --shards 1,2,default
    python -m pydbms_shard.bench.run --shards 2 --iterations 3 --memory-and-scale --scale 1000000,4000000,10000000
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..args import CommandError, OneLineParser, whole_number
from .durability import BATCH_USERS, QUICK_SINGLE_CALLS, SINGLE_CALLS, format_durability, run_durability
from .heap import format_heap, run_heap_rows
from .memory import format_memory, run_memory
from .scale import format_scale, run_scale
from .workload import (
    BATCH_ROWS,
    DEFAULT_SEED,
    ROWS,
    EngineResult,
    OursEngine,
    make_engine,
    run_all,
)

SCHEMA = "pydbms-bench/1"
QUICK_USERS, QUICK_ITERATIONS, QUICK_SHARDS = 200_000, 2, "default"
FULL_USERS, FULL_ITERATIONS, FULL_SHARDS = 1_000_000, 5, "1,2,default"
REFERENCE = "original"  # the ratio column divides by reference (a)
BACKUP_LIMIT_S = 0.050
CACHED_GET_LIMIT_US, UNCACHED_GET_LIMIT_US = 5.0, 100.0
EXTRA_ROUNDS = 3  # rounds of the Memory and scale measurements (fewer when --iterations is smaller)


_positive_int = whole_number(1)


def parse_shards(text: str) -> list[int]:
    """``"1,2,default"`` -> ``[1, 2, cpu_count]`` without repeats, in the order given."""
    out: list[int] = []
    for token in text.split(","):
        token = token.strip().lower()
        if not token:
            continue
        if token == "default":
            value = os.cpu_count() or 1
        else:
            try:
                value = int(token)
            except ValueError:
                raise argparse.ArgumentTypeError(f"shard counts are whole numbers or 'default', got {token!r}") from None
            if not 1 <= value <= 256:
                raise argparse.ArgumentTypeError(f"a shard count must be between 1 and 256, got {value}")
        if value not in out:
            out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("give at least one shard count")
    return out


def parse_sizes(text: str) -> list[int]:
    """``"1000000,4000000"`` -> ``[1000000, 4000000]`` (at least 10 each, without repeats, in order)."""
    out: list[int] = []
    for token in text.replace("_", "").split(","):
        token = token.strip()
        if not token:
            continue
        try:
            value = int(token)
        except ValueError:
            raise argparse.ArgumentTypeError(f"user counts are whole numbers, got {token!r}") from None
        if value < 10:
            raise argparse.ArgumentTypeError(f"a user count must be at least 10, got {value}")
        if value not in out:
            out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("give at least one user count")
    return out


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Run the reference workload (the original pyDBMS benchmark's rows) on pydbms-shard and on "
        "two references: (a) the original pyDBMS design and (b) SQLite. Prints the original's table with a ratio "
        "column against (a), then a Durability table (the write-ahead log against the same engine in memory), "
        "and writes the results as JSON and a PNG chart.",
    )
    parser.add_argument(
        "--users",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"users in the database (default {FULL_USERS:,}; {QUICK_USERS:,} with --quick); "
        "the batch rows use N/10; the durability recovery replays N users",
    )
    parser.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        metavar="K",
        help=f"times each row (and each durability measurement) runs (default {FULL_ITERATIONS}; {QUICK_ITERATIONS} with --quick)",
    )
    parser.add_argument(
        "--shards",
        type=parse_shards,
        default=None,
        metavar="LIST",
        help=f"our engine's shard counts, comma-separated; 'default' is the CPU count "
        f"(default {FULL_SHARDS!r}; {QUICK_SHARDS!r} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="about a minute in all: fewer users, iterations and shard counts unless given")
    parser.add_argument(
        "--backend",
        choices=("local", "ray", "both"),
        default="local",
        help="where our engine's shards run: worker processes (local, the default), Ray actors on a local Ray (ray), "
        "or both, with a table of Ray against local (needs the ray extra)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed of users and picks (default {DEFAULT_SEED})")
    parser.add_argument(
        "--output", type=Path, default=Path("bench-results"), metavar="DIR", help="where the JSON and the chart go (default bench-results/)"
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    extra = parser.add_argument_group("Memory and scale (optional; our engine at the default shard count against reference (a))")
    extra.add_argument(
        "--memory",
        action="store_true",
        help="bytes per user over all processes (no extras, and 10%% of users with small extras), peak memory "
        "during save and load, save and load against reference (a) and the disk floor, at N users",
    )
    extra.add_argument(
        "--scale",
        type=parse_sizes,
        default=None,
        metavar="LIST",
        help="user counts, comma-separated (e.g. 1000000,4000000,10000000): load, save, a batch add and a search of "
        "IDs at each, with ratios against the first",
    )
    extra.add_argument(
        "--heap", action="store_true", help="the five batch rows with the GC on and a big caller heap (3 live objects per user)"
    )
    extra.add_argument("--memory-and-scale", action="store_true", help="all three (--scale defaults to 1000000)")
    durability = parser.add_mutually_exclusive_group()
    durability.add_argument(
        "--durability-only", action="store_true", help="only the Durability measurements (log against memory; recovery of N users)"
    )
    durability.add_argument("--no-durability", action="store_true", help="skip the Durability measurements")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr (the results still print)")
    return parser


# ---------------------------------------------------------------- machine and results


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is a dev dependency
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    info["git_commit"] = _git_commit()
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], check=False, cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def engine_records(results: list[EngineResult]) -> list[dict[str, Any]]:
    """Each engine's results as JSON-ready dicts, every row with ``ratio`` (avg / reference (a)'s avg)."""
    reference = next((r for r in results if r.engine["key"] == REFERENCE), None)
    ref_rows = reference.rows() if reference else {}
    ref_mem = (reference.memory or {}).get("bytes_per_user") if reference else None
    records = []
    for result in results:
        record = result.to_dict()
        for row, stats in record["rows"].items():
            stats["ratio"] = _ratio(stats["avg"], ref_rows.get(row, {}).get("avg"))
            stats["median_ratio"] = _ratio(stats["median"], ref_rows.get(row, {}).get("median"))
        if result.memory:
            record["memory"]["ratio"] = _ratio(result.memory.get("bytes_per_user"), ref_mem)
        records.append(record)
    return records


def target_engine(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Our engine at the default shard count, else the largest shard count measured."""
    ours = [r for r in records if r["engine"]["kind"] == "ours"]
    ours = [r for r in ours if r["engine"].get("backend", "local") == "local"] or ours
    if not ours:
        return None
    defaults = [r for r in ours if r["engine"].get("default")]
    return defaults[0] if defaults else max(ours, key=lambda r: r["engine"]["shards"])


def evaluate_targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The speed and memory targets, on medians of the same run, for our engine at the default
    shard count."""
    ours = target_engine(records)
    by_key = {r["engine"]["key"]: r for r in records}
    original, sqlite = by_key.get("original"), by_key.get("sqlite")
    if ours is None:
        return []
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, limit: float | None, unit: str, strict: bool = False) -> None:
        if measured is None or limit is None:
            met = None
        else:
            met = measured < limit if strict else measured <= limit
        targets.append({"target": name, "engine": ours["engine"]["key"], "measured": measured, "limit": limit, "unit": unit, "met": met})

    def median(record: dict[str, Any] | None, row: str) -> float | None:
        return record["rows"][row]["median"] if record else None

    for row in BATCH_ROWS:
        add(f"{row} <= reference (a)", median(ours, row), median(original, row), "s")
        limit = median(sqlite, row)
        add(f"{row} <= 1/3 of SQLite", median(ours, row), None if limit is None else limit / 3, "s")
    limit = median(original, "Save Database")
    add("Save Database <= 1/8 of reference (a)", median(ours, "Save Database"), None if limit is None else limit / 8, "s")
    limit = median(original, "Load Database")
    add("Load Database <= 1/10 of reference (a)", median(ours, "Load Database"), None if limit is None else limit / 10, "s")
    add("Backup Database < 50 ms", median(ours, "Backup Database"), BACKUP_LIMIT_S, "s", strict=True)
    add(
        "memory per user <= reference (a)",
        (ours.get("memory") or {}).get("bytes_per_user"),
        ((original or {}).get("memory") or {}).get("bytes_per_user"),
        "bytes",
    )
    gets = ours.get("get_us") or {}
    add("cached get < 5 us (median)", gets.get("cached_median"), CACHED_GET_LIMIT_US, "us", strict=True)
    add("uncached get < 100 us (median)", gets.get("uncached_median"), UNCACHED_GET_LIMIT_US, "us", strict=True)
    return targets


# ---------------------------------------------------------------- printing


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(record: dict[str, Any]) -> str:
    """The original's table for one engine, with a ratio column against reference (a)."""
    lines = [
        f"{'Operation':<26}{'Count(Users)':>14}{'Avg(s)':>10}{'Min(s)':>10}{'Max(s)':>10}{'StdDev':>10}{'vs (a)':>10}",
        "_" * 90,
    ]
    for row in ROWS:
        s = record["rows"][row]
        ratio = "-" if s.get("ratio") is None else f"{s['ratio']:.2f}x"
        lines.append(f"{row:<26}{s['count']:>14,}{s['avg']:>10.4f}{s['min']:>10.4f}{s['max']:>10.4f}{s['stdev']:>10.4f}{ratio:>10}")
    return "\n".join(lines)


def format_report(doc: dict[str, Any]) -> str:
    settings, records = doc["settings"], doc["engines"]
    machine = doc["machine"]
    out = [
        (
            f"pydbms-shard benchmark: {settings['users']:,} users, batches of {settings['batch']:,}, "
            f"{settings['iterations']} iteration(s), seed {settings['seed']}"
        ),
        (
            f"machine: {machine['cpu_count']} CPUs ({machine.get('processor') or '?'}), {machine['platform']}, "
            f"Python {machine['python']}, {machine['date']}"
        ),
    ]
    if records:
        out += ["ratio column: engine Avg / reference (a) Avg (below 1.00x is faster than the original's design)", ""]
    else:
        out.append("")
    for record in records:
        out += [f"== {record['engine']['label']} ==", format_table(record), ""]

    if records:
        out += _format_footprint(doc)
        out += _format_backends(records)
    extra = doc.get("memory_and_scale") or {}
    tables = [(extra.get(k), f) for k, f in (("memory", format_memory), ("scale", format_scale), ("heap_rows", format_heap))]
    if any(section for section, _ in tables):
        out += ["== Memory and scale ==", ""]
        out += [line for section, fmt in tables if section for line in (fmt(section), "")]
    if doc.get("durability"):
        out += [format_durability(doc["durability"]), ""]
    return "\n".join(out)


def _format_backends(records: list[dict[str, Any]]) -> list[str]:
    """Ray against local, row by row at each shard count measured on both (averages), and the
    single-call latency of each: what moving the shards to Ray actors costs."""
    by_key = {(r["engine"].get("backend", "local"), r["engine"]["shards"]): r for r in records if r["engine"]["kind"] == "ours"}
    pairs = [(by_key[("local", n)], by_key[("ray", n)]) for b, n in by_key if b == "ray" and ("local", n) in by_key]
    out: list[str] = []
    for local, ray in pairs:
        out += [f"Ray against local, {ray['engine']['shards']} shard(s) (averages; the target is at most 2x on batch rows)"]
        out += [f"{'Operation':<26}{'local (s)':>12}{'Ray (s)':>12}{'Ray/local':>12}", "_" * 62]
        for row, stats in ray["rows"].items():
            base = local["rows"][row]["avg"]
            out.append(f"{row:<26}{base:>12.4f}{stats['avg']:>12.4f}{_fmt(_ratio(stats['avg'], base), '>11.2f')}x")
        lg, rg = local.get("get_us") or {}, ray.get("get_us") or {}
        if lg and rg:
            out.append(
                f"single get, median uncached: local {_fmt(lg.get('uncached_median'), '.1f')} us, "
                f"Ray {_fmt(rg.get('uncached_median'), '.1f')} us"
            )
        out.append("")
    return out


def _format_footprint(doc: dict[str, Any]) -> list[str]:
    """Bytes on disk and in memory per user, single gets, and the targets of the main run."""
    records, n = doc["engines"], doc["settings"]["users"]
    out = [
        f"{'Engine':<40}{'Snapshot bytes':>16}{'Bytes/user on disk':>20}{'Memory/user (B)':>17}{'vs (a)':>9}",
        "_" * 102,
    ]
    for record in records:
        memory = record.get("memory") or {}
        disk = record.get("snapshot_bytes")
        ratio = memory.get("ratio")
        out.append(
            f"{record['engine']['label']:<40}{_fmt(disk, ',d'):>16}{_fmt(None if disk is None else disk / n, ',.1f'):>20}"
            f"{_fmt(memory.get('bytes_per_user'), ',.1f'):>17}{'-' if ratio is None else f'{ratio:.2f}x':>9}"
        )
    out.append("memory/user: RSS of all the engine's processes with every user loaded, minus the same engine empty")
    out.append("")

    gets = [r for r in records if r.get("get_us")]
    if gets:
        out += [f"{'Single get (median)':<40}{'cached (us)':>14}{'uncached (us)':>16}", "_" * 70]
        for record in gets:
            g = record["get_us"]
            out.append(f"{record['engine']['label']:<40}{g['cached_median']:>14.2f}{g['uncached_median']:>16.2f}")
        out.append("")

    if doc.get("targets"):
        out += [f"Targets (medians; {doc['targets'][0]['engine']})", "_" * 90]
        for t in doc["targets"]:
            state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            if t["unit"] == "s":
                measured, limit = _fmt(t["measured"], ".4f"), _fmt(t["limit"], ".4f")
            else:
                measured, limit = _fmt(t["measured"], ",.2f"), _fmt(t["limit"], ",.2f")
            out.append(f"{t['target']:<42}{measured:>12} {t['unit']:<5} limit {limit:>12}  {state}")
        out.append("")
    return out


# ---------------------------------------------------------------- the chart


def draw_chart(doc: dict[str, Any], path: Path) -> None:
    """One bar group per row (average seconds, log scale, min-max whiskers), one bar per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = doc["engines"]
    x = np.arange(len(ROWS))
    width = 0.8 / max(len(records), 1)
    fig, ax = plt.subplots(figsize=(13, 6))
    for k, record in enumerate(records):
        rows = [record["rows"][row] for row in ROWS]
        avg = np.array([r["avg"] for r in rows])
        low = avg - np.array([r["min"] for r in rows])
        high = np.array([r["max"] for r in rows]) - avg
        ax.bar(x - 0.4 + width * (k + 0.5), avg, width, yerr=[low, high], capsize=2, label=record["engine"]["label"])
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{row}\n({record_count(records, row):,})" for row in ROWS], fontsize=8)
    ax.set_ylabel("seconds per batch call (average; whiskers min-max; log scale)")
    settings, machine = doc["settings"], doc["machine"]
    ax.set_title(
        f"pydbms-shard vs references: {settings['users']:,} users, {settings['iterations']} iteration(s), "
        f"{machine['cpu_count']} CPUs, Python {machine['python']}, {machine['date'][:10]}",
        fontsize=10,
    )
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_count(records: list[dict[str, Any]], row: str) -> int:
    return records[0]["rows"][row]["count"] if records else 0


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        users = args.users or (QUICK_USERS if args.quick else FULL_USERS)
        if users < 10:
            parser.error(f"--users must be at least 10, got {users}")
    except CommandError as exc:  # a bad command line: one line, exit 2
        print(exc, file=sys.stderr)
        return exc.code
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else FULL_ITERATIONS)
    shard_counts = args.shards or parse_shards(QUICK_SHARDS if args.quick else FULL_SHARDS)
    missing = [name for name in ("psutil", "matplotlib") if importlib.util.find_spec(name) is None]
    if args.durability_only:
        missing = []  # neither the memory measurement nor the chart
    if missing and not (args.no_chart and missing == ["matplotlib"]):
        print(f"pydbms bench: error: needs {' and '.join(missing)}: pip install 'pydbms-shard[bench]'", file=sys.stderr)
        return 2
    cpus = os.cpu_count() or 1

    started = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    if args.backend != "local" and importlib.util.find_spec("ray") is None:
        print("pydbms bench: error: --backend ray needs ray: pip install 'pydbms-shard[ray]'", file=sys.stderr)
        return 2
    engines = [make_engine("original"), make_engine("sqlite")]
    backends = {"local": ["local"], "ray": ["ray"], "both": ["local", "ray"]}[args.backend]
    engines += [OursEngine(n, default=(n == cpus), backend=b) for b in backends for n in shard_counts]
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    results: list[EngineResult] = []
    scale = args.scale or ([FULL_USERS] if args.memory_and_scale else None)
    extra: dict[str, Any] = {"memory": None, "scale": None, "heap_rows": None}
    if not args.durability_only:
        workload, results = run_all(engines, users, iterations, workdir=output, seed=args.seed, progress=progress)
        # our engine at the default shard count (else the largest measured), as the targets use
        target = cpus if cpus in shard_counts else max(shard_counts)
        rounds = min(iterations, EXTRA_ROUNDS)
        if args.heap or args.memory_and_scale:
            ours = next(e for e in engines if isinstance(e, OursEngine) and e.shards == target)
            extra["heap_rows"] = run_heap_rows(ours, make_engine("original"), workload, rounds, progress)
        del workload
        gc.collect()
        with tempfile.TemporaryDirectory(prefix="pydbms-bench-", dir=output) as tmp:
            if args.memory or args.memory_and_scale:
                extra["memory"] = run_memory(users, target, rounds, tmp, args.seed, progress)
            if scale:
                extra["scale"] = run_scale(scale, target, rounds, tmp, args.seed, progress)
    durability = None
    if not args.no_durability:
        gc.collect()
        with tempfile.TemporaryDirectory(prefix="pydbms-bench-", dir=output) as tmp:
            durability = run_durability(
                tmp,
                cpus,
                batch_users=min(BATCH_USERS, users),
                single_calls=min(QUICK_SINGLE_CALLS if args.quick else SINGLE_CALLS, max(10, users // 10)),
                recovery_users=users,
                rounds=iterations,
                seed=args.seed,
                progress=progress,
            )

    records = engine_records(results)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine,
        "settings": {
            "users": users,
            "batch": users // 10,
            "iterations": iterations,
            "seed": args.seed,
            "shards": shard_counts,
            "default_shards": cpus,
            "quick": args.quick,
            "durability": "only" if args.durability_only else ("skipped" if args.no_durability else "measured"),
            "memory": extra["memory"] is not None,
            "scale": None if extra["scale"] is None else [r["users"] for r in extra["scale"]["sizes"]],
            "heap": extra["heap_rows"] is not None,
        },
        "rows": list(ROWS),
        "engines": records,
        "targets": evaluate_targets(records),
        "memory_and_scale": extra,
        "durability": durability,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    json_path = output / f"bench-{stamp}.json"
    chart_path = None if args.no_chart or not records else output / f"bench-{stamp}.png"
    doc["files"] = {"json": str(json_path), "chart": None if chart_path is None else str(chart_path)}
    if chart_path is not None:
        progress("drawing the chart")
        draw_chart(doc, chart_path)
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    print(format_report(doc))
    print(f"results: {json_path}")
    if chart_path is not None:
        print(f"chart:   {chart_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
