"""A process saving in a loop is SIGKILLed at random moments; what it leaves always loads.

The child keeps adding a few users and saving to one path. Each run starts from what the
previous (killed) run left, so a half-done save from one run meets the next run's save. After
every kill the snapshot at the path must load completely: the old one or the new one, never a
mix, never an error. The killed child's shard workers must exit on their own (end-of-file).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pydbms_shard import DataBase
from pydbms_shard.snapshot import verify_snapshot

pytestmark = pytest.mark.crash

CHILD = r"""
import sys
from pathlib import Path
from pydbms_shard import DataBase, User

path = Path(sys.argv[1])
run = int(sys.argv[2])
with DataBase(shards=2, keep_generations=2) as db:
    if path.exists():
        db.load(path)
    else:
        db.add_users([User(f"seed-{i}", i % 100) for i in range(3000)])
    pids = [s["pid"] for s in db.stats()["shards"]]
    print("ready", len(db), *pids, flush=True)
    i = 0
    while True:
        db.add_users([User(f"r{run}-{i}-{k}", 20) for k in range(5)])
        manifest = db.save(path)
        print("saved", manifest.generation, manifest.users, flush=True)
        i += 1
"""

MARKER_VAR = "PYDBMS_CRASH_TEST_MARKER"
HANG = 30.0  # seconds: waits that only detect a hang; no test asserts that something is fast


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every process carrying this test's marker in its environment (the child and its
    descendants: forkserver, workers), and nothing else."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def wait_gone(marker: str, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in marked_processes(marker) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.split())
    lines.put(None)


def wait_for(lines: queue.Queue, word: str, child: subprocess.Popen, stderr_path: Path, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            parts = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"the child never said {word!r}; stderr:\n{stderr_path.read_text()}")
        if parts is None:
            pytest.fail(f"the child ended (code {child.poll()}) before saying {word!r}; stderr:\n{stderr_path.read_text()}")
        if parts and parts[0] == word:
            return parts


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_always_leaves_a_loadable_snapshot(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    snap_dir = tmp_path / "snap"
    snap_dir.mkdir()
    path = snap_dir / "users_db.json"
    marker = uuid.uuid4().hex
    env = dict(os.environ, **{MARKER_VAR: marker})
    rng = random.Random(20240603)
    previous_users = 0
    kinds = []
    try:
        for run in range(10):
            stderr_path = tmp_path / f"stderr-{run}.txt"
            with open(stderr_path, "w") as stderr:
                child = subprocess.Popen(
                    [sys.executable, str(script), str(path), str(run)],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    env=env,
                    cwd=tmp_path,
                )
            lines: queue.Queue = queue.Queue()
            stdout_reader = threading.Thread(target=reader, args=(child.stdout, lines), daemon=True)
            stdout_reader.start()
            worker_pids: list[int] = []
            if run == 0:  # make sure a first snapshot exists, then kill mid-loop
                worker_pids = [int(p) for p in wait_for(lines, "ready", child, stderr_path)[2:]]
                wait_for(lines, "saved", child, stderr_path)
                kind = "after-first-save"
                time.sleep(rng.uniform(0, 0.3))
            elif rng.random() < 0.3:  # anywhere: start-up, load, or the save loop
                kind = "early"
                time.sleep(rng.uniform(0.1, 1.0))
            else:  # during the save loop
                kind = "saving"
                worker_pids = [int(p) for p in wait_for(lines, "ready", child, stderr_path)[2:]]
                time.sleep(rng.uniform(0, 0.4))
            kinds.append(kind)
            assert child.poll() is None, f"run {run}: the child ended by itself:\n{stderr_path.read_text()}"
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=HANG)

            # the workers (and anything else the child started) notice and exit on their own
            survivors = wait_gone(marker, timeout=HANG)
            assert not survivors, f"run {run} ({kind}): processes outlived the killed child: " + ", ".join(
                f"{p.pid} {p.name()} {p.cmdline()[:3]}" for p in survivors
            )
            # every writer of the pipe is gone, so the reader sees end-of-file and ends; only
            # then is the pipe closed (closing it under the reader made the thread raise)
            stdout_reader.join(HANG)
            assert not stdout_reader.is_alive(), f"run {run}: the child's stdout never reached end-of-file"
            child.stdout.close()
            for pid in worker_pids:
                assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

            # whatever instant the kill hit, the path holds a complete snapshot
            manifest = verify_snapshot(path)
            on_disk = json.loads(path.read_bytes())
            with DataBase(shards=2) as fresh:
                loaded = fresh.load(path)
                assert loaded.generation == manifest.generation
                assert len(fresh) == on_disk["users"] == manifest.users
                assert fresh.stats()["users"] == manifest.users
            # runs only ever add: never an older state than what the previous run left
            assert manifest.users >= previous_users, f"run {run}: went back from {previous_users} to {manifest.users}"
            previous_users = manifest.users
            # leftovers of killed saves never pile up beyond one save's worth
            generations = {m.group(1) for m in (re.match(r"users_db\.json\.(g\d{8}-[0-9a-f]{8})\.", n) for n in os.listdir(snap_dir)) if m}
            assert len(generations) <= 2 + 2, sorted(os.listdir(snap_dir))
        assert previous_users > 3000, "no save after the first run ever committed"
        assert "saving" in kinds
    finally:
        for proc in marked_processes(marker):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
