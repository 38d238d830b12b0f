"""The crash test's harness (not a test module), shared by tests/test_crash_recovery.py and
scripts/crash-test: ``run_round`` runs ``crash_child.py`` in its own process group, SIGKILLs
the group at a random moment, reopens the directory here and checks the prefix property:

    the recovered state is exactly the state after some prefix 0..L of the calls, and
    with log_fsync "always":   acked <= L <= acked + 1
    with "everysec" and "no":      0 <= L <= acked + 1

(``acked``: the highest call number the child printed, i.e. that returned before the kill.)
It also checks that reopening again gives the same state (recovery is idempotent) and, when
asked, that the recovered database takes a write that survives a clean reopen. A round may
have several lives: the next child reopens the same directory and goes on from the
recovered prefix, so recovery meets a log that a recovery already cut.

Run as a script: ``python tests/crash_harness.py [ROUNDS] [--seed S] [--fsync F] ...``
(see ``scripts/crash-test --help``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crash_model import fingerprint_users, model_after, prefix_fingerprints, record_of, round_settings, state_of, user_hash

from pydbms_shard import DataBase, User

CHILD = Path(__file__).resolve().parent / "crash_child.py"
ROOT = Path(__file__).resolve().parent.parent
FSYNC_MODES = ("always", "everysec", "no")
READY_TIMEOUT = 60.0
# Reopens in this process fork their workers: 0.02 s instead of about a second with the
# default forkserver (this process runs no threads of its own). The child uses the default.
REOPEN = {"start_method": "fork"}
LOOKAHEAD = 20  # prefixes past acked + 1 that are computed too, to name an over-long recovery


def round_plan(seed: int) -> dict[str, Any]:
    """The options run_round takes from SEED when not given: lives, reshard, writable check."""
    rng = random.Random(f"plan-{seed}")
    return {
        "lives": 2 if rng.random() < 0.3 else 1,
        "reshard": rng.random() < 0.15,
        "check_writable": rng.random() < 0.4,
    }


def _group_alive(pgid: int) -> list[int]:
    """Processes of the group that are not yet zombies."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _group_alive(child.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of group {child.pid} still alive 10 s after SIGKILL: {_group_alive(child.pid)}")
        time.sleep(0.01)


def _read_acks(path: Path) -> tuple[bool, int | None, str]:
    """(ready, highest call number printed or None, the text) of the child's stdout."""
    text = path.read_text()
    lines = text.split("\n")
    ready = bool(lines) and lines[0] == "ready"
    numbers = [int(line) for line in lines[1:] if line.isdigit()]
    for a, b in zip(numbers, numbers[1:]):
        if b != a + 1:
            raise RuntimeError(f"child's acknowledgements are not consecutive: {a} then {b}")
    return ready, (numbers[-1] if numbers else None), text


def _tail(path: Path, n: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:]


def _diff(seed: int, state: dict, length: int) -> str:
    model = model_after(seed, length).users
    missing = [k for k in model if k not in state]
    extra = [k for k in state if k not in model]
    changed = [k for k in model if k in state and state[k] != model[k]]
    return f"vs prefix {length}: {len(missing)} missing, {len(extra)} extra, {len(changed)} changed (of {len(model)})"


def _check_state(db: DataBase) -> tuple[int, int, dict]:
    users = list(db)
    fp, count = fingerprint_users(users)
    if len(db) != count:
        raise AssertionError(f"len(db) is {len(db)} but iterating it gave {count} users")
    return fp, count, state_of(users)


def run_round(
    tmpdir: str | os.PathLike[str],
    seed: int,
    fsync: str,
    shards: int,
    *,
    lives: int | None = None,
    reshard: bool | None = None,
    check_writable: bool | None = None,
    kills: list[tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """One round in a fresh directory under TMPDIR; returns what happened. ``result["ok"]``
    is False when any check failed, and ``result["problems"]`` says which.

    ``kills``: per life, ``("early", t)``: SIGKILL t seconds after the child started, ready
    or not; ``("running", t)``: t seconds after the child printed ``ready`` (opened the
    database). By default from SEED, like ``lives``, ``reshard`` and ``check_writable``
    (``round_plan``)."""
    plan = round_plan(seed)
    lives = plan["lives"] if lives is None else lives
    reshard = plan["reshard"] if reshard is None else reshard
    check_writable = plan["check_writable"] if check_writable is None else check_writable
    rng = random.Random(f"times-{seed}")
    if kills is None:  # a fifth of the kills early: during start-up and recovery, before the first ack
        kills = [("early", rng.uniform(0.05, 1.5)) if rng.random() < 0.2 else ("running", rng.uniform(0.2, 1.5)) for _ in range(lives)]
    directory = Path(tmpdir) / f"round-{seed}-{fsync}-{shards}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    path = directory / "db.json"
    result: dict[str, Any] = {
        "seed": seed,
        "fsync": fsync,
        "shards": shards,
        "settings": round_settings(seed),
        "lives": [],
        "reshard": reshard,
        "check_writable": check_writable,
        "problems": [],
        "dir": str(directory),
    }
    started = time.monotonic()
    recovered = 0
    try:
        for life in range(lives):
            last_life = life == lives - 1
            open_shards = (3 if shards == 2 else 2) if reshard and last_life else shards
            kind, seconds = kills[life]
            info: dict[str, Any] = {"life": life, "start": recovered, "kill": f"{kind}+{seconds:.3f}s", "open_shards": open_shards}
            result["lives"].append(info)
            out_path, err_path = directory / f"stdout-{life}.txt", directory / f"stderr-{life}.txt"
            with open(out_path, "w") as out, open(err_path, "w") as err:
                child = subprocess.Popen(
                    [sys.executable, str(CHILD), str(directory), str(seed), fsync, str(shards), str(recovered)],
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=ROOT,
                )
            try:
                if kind == "running":  # wait for the child to have opened the database first
                    patience = time.monotonic() + READY_TIMEOUT
                    while child.poll() is None and not out_path.read_text().startswith("ready\n"):
                        if time.monotonic() > patience:
                            raise RuntimeError(f"the child did not open the database within {READY_TIMEOUT} s; stderr:\n{_tail(err_path)}")
                        time.sleep(0.01)
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and child.poll() is None:
                    time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
                died = child.poll()
            finally:
                _kill_group(child)
            ready, printed, _ = _read_acks(out_path)
            acked = recovered if printed is None else printed
            info.update(ready=ready, acked=acked, acked_here=acked - recovered)
            if died is not None:
                result["problems"].append(
                    f"life {life}: the child exited by itself (code {died}) before the kill; stderr:\n{_tail(err_path)}"
                )
                break
            lower = acked if fsync == "always" else 0
            upper = acked + 1
            prefixes = prefix_fingerprints(seed, upper + LOOKAHEAD)
            try:
                with DataBase(snapshot_path=str(path), shards=open_shards, **REOPEN) as db:
                    fp, count, state = _check_state(db)
            except Exception:
                result["problems"].append(f"life {life}: reopening after the kill failed:\n{traceback.format_exc()}")
                break
            matches = [n for n, (pfp, pcount) in enumerate(prefixes) if pfp == fp and pcount == count]
            good = [n for n in matches if lower <= n <= upper]
            info.update(users=count, matches=matches[:10], bounds=[lower, upper])
            if not good:
                if matches:
                    what = f"the state after prefix {matches} of the calls, outside the bounds [{lower}, {upper}]"
                else:
                    what = f"no prefix of the calls (0..{upper + LOOKAHEAD}); " + "; ".join(
                        _diff(seed, state, n) for n in sorted({max(0, acked - 1), acked, acked + 1})
                    )
                result["problems"].append(f"life {life}: acked {acked}, recovered {count} users: {what}")
                info["recovered"] = max(matches) if matches else None
                break
            recovered = max(good)
            info["recovered"] = recovered
            # idempotent: a second reopen (no writes in between) finds the same state
            try:
                with DataBase(snapshot_path=str(path), shards=open_shards, **REOPEN) as db:
                    fp2, count2, state2 = _check_state(db)
            except Exception:
                result["problems"].append(f"life {life}: the second reopen failed:\n{traceback.format_exc()}")
                break
            if (fp2, count2) != (fp, count):
                result["problems"].append(
                    f"life {life}: the second reopen differs from the first: {count2} users vs {count}; " + _diff(seed, state2, recovered)
                )
                break
            if last_life and check_writable:
                user = User("after-crash", 42, ID=uuid.UUID(int=random.Random(f"w-{seed}").getrandbits(128), version=4))
                try:
                    with DataBase(snapshot_path=str(path), shards=open_shards, **REOPEN) as db:
                        if not db.add(user):
                            raise AssertionError("add() of a new user after recovery returned False")
                    with DataBase(snapshot_path=str(path), shards=open_shards, **REOPEN) as db:
                        fp3, count3, _ = _check_state(db)
                        got = db.get(user.ID)
                except Exception:
                    result["problems"].append(f"life {life}: writing after recovery failed:\n{traceback.format_exc()}")
                    break
                want = ((fp + user_hash(user.ID.bytes, *record_of(user))) & ((1 << 64) - 1), count + 1)
                if (fp3, count3) != want or got is None or record_of(got) != record_of(user):
                    result["problems"].append(
                        f"life {life}: after adding one user and reopening: {count3} users (want {count + 1}), "
                        f"get() -> {got!r}, fingerprint {'ok' if fp3 == want[0] else 'differs'}"
                    )
                    break
                info["writable"] = True
    except Exception:
        result["problems"].append(f"harness error:\n{traceback.format_exc()}")
    result["elapsed"] = round(time.monotonic() - started, 2)
    result["ok"] = not result["problems"]
    return result


def describe(result: dict[str, Any]) -> str:
    lines = [
        f"seed={result['seed']} fsync={result['fsync']} shards={result['shards']} settings={result['settings']} "
        f"reshard={result['reshard']} check_writable={result['check_writable']} dir={result['dir']}"
    ]
    for info in result["lives"]:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in info.items()))
    lines.extend("  PROBLEM: " + p for p in result["problems"])
    return "\n".join(lines)


def rerun_command(result: dict[str, Any]) -> str:
    return f"scripts/crash-test 1 --seed {result['seed']} --fsync {result['fsync']} --shards {result['shards']}"


def summary(results: list[dict[str, Any]]) -> str:
    header = ("fsync", "rounds", "kills", "pre-ack", "acked", "recovered", "all-acked", "+in-flight", "lost-acked", "violations")
    rows = [header]
    for mode in FSYNC_MODES + ("total",):
        chosen = [r for r in results if mode == "total" or r["fsync"] == mode]
        if not chosen:
            continue
        lives = [i for r in chosen for i in r["lives"] if i.get("recovered") is not None and "acked" in i]
        rows.append(
            (
                mode,
                str(len(chosen)),
                str(sum(len(r["lives"]) for r in chosen)),
                str(sum(1 for r in chosen for i in r["lives"] if "acked" in i and i["acked_here"] == 0)),
                str(sum(i["acked_here"] for i in lives)),
                str(sum(i["recovered"] - i["start"] for i in lives)),
                str(sum(1 for i in lives if i["recovered"] >= i["acked"])),
                str(sum(1 for i in lives if i["recovered"] == i["acked"] + 1)),
                str(sum(1 for i in lives if i["recovered"] < i["acked"])),
                str(sum(1 for r in chosen if not r["ok"])),
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    text = "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)
    return text + (
        "\n\nkills: SIGKILLs of a child's process group; pre-ack: killed before any call of that life returned;"
        "\nacked / recovered: calls acknowledged before the kill / found after reopening (summed);"
        "\nall-acked: kills after which every acknowledged call was recovered; +in-flight: the call in flight was too;"
        "\nlost-acked: acknowledged calls lost (allowed with everysec and no only)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/crash-test",
        description="SIGKILL a process writing to a pydbms-shard DataBase at random moments and check that "
        "reopening recovers exactly a prefix of its write calls (every acknowledged one with log_fsync: always).",
    )
    parser.add_argument("rounds", nargs="?", type=int, default=50, help="how many rounds (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="the first round's seed (default: random); round k uses seed+k")
    parser.add_argument(
        "--fsync", choices=FSYNC_MODES, default=None, help="only this log_fsync mode (default: half always, a quarter each of the others)"
    )
    parser.add_argument("--shards", type=int, default=None, help="only this shard count (default: mostly 2, sometimes 3)")
    parser.add_argument("--keep", action="store_true", help="keep every round's directory (failed rounds' are always kept)")
    parser.add_argument("--workdir", default=None, help="where rounds run (default: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("rounds must be at least 1")
    base = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pydbms-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{args.rounds} round(s), seeds {base}..{base + args.rounds - 1}, in {workdir}", flush=True)
    results = []
    started = time.monotonic()
    for k in range(args.rounds):
        seed = base + k
        rng = random.Random(f"round-{seed}")
        fsync = args.fsync or ("always" if rng.random() < 0.5 else rng.choice(["everysec", "no"]))
        shards = args.shards or (3 if rng.random() < 0.25 else 2)
        result = run_round(workdir, seed, fsync, shards)
        results.append(result)
        last = result["lives"][-1] if result["lives"] else {}
        status = "ok" if result["ok"] else "VIOLATION"
        print(
            f"[{k + 1}/{args.rounds}] seed={seed} fsync={fsync} shards={shards} lives={len(result['lives'])} "
            f"acked={last.get('acked')} recovered={last.get('recovered')} {result['elapsed']}s {status}",
            flush=True,
        )
        if not result["ok"]:
            print(describe(result), flush=True)
        elif not args.keep:
            shutil.rmtree(result["dir"], ignore_errors=True)
    print(f"\n{summary(results)}\n\n{time.monotonic() - started:.1f} s")
    failed = [r for r in results if not r["ok"]]
    if failed:
        print(f"\n{len(failed)} round(s) violated the prefix property or failed a check (their directories are kept):")
        for r in failed:
            print(f"  seed={r['seed']} fsync={r['fsync']} shards={r['shards']}: {r['problems'][0].splitlines()[0]}")
            print(f"    re-run: {rerun_command(r)}")
        return 1
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
