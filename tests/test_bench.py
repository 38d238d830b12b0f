"""The benchmark's plumbing on tiny workloads: the run writes its JSON and chart, the three
engines agree on every answer, SQLite behaves like the others, and the asv suite checks."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pydbms_shard import User
from pydbms_shard.bench import run, workload
from pydbms_shard.bench.sqlite_ref import SQLiteDataBase

ROOT = Path(__file__).resolve().parent.parent


def test_main_writes_json_and_chart(tmp_path, capsys):
    code = run.main(["--users", "2000", "--iterations", "1", "--shards", "1,2", "--output", str(tmp_path), "--quiet"])
    assert code == 0
    [json_path] = tmp_path.glob("bench-*.json")
    [png_path] = tmp_path.glob("bench-*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(json_path.read_text())
    assert {"schema", "machine", "settings", "rows", "engines", "targets", "files"} <= set(doc)
    assert {"cpu_count", "platform", "python", "date"} <= set(doc["machine"])
    assert doc["settings"]["users"] == 2000 and doc["settings"]["batch"] == 200
    assert doc["rows"] == list(workload.ROWS)
    keys = [e["engine"]["key"] for e in doc["engines"]]
    assert keys == ["original", "sqlite", "ours-1", "ours-2"]
    for engine in doc["engines"]:
        assert set(engine["rows"]) == set(workload.ROWS)
        for stats in engine["rows"].values():
            assert {"count", "times", "avg", "min", "max", "stdev", "median", "ratio"} <= set(stats)
            assert len(stats["times"]) == 1
        assert engine["snapshot_bytes"] > 0
        assert engine["memory"]["users"] == 2000
    assert all(e["rows"]["Add Users"]["ratio"] == 1.0 for e in doc["engines"][:1])
    assert all(e["get_us"]["uncached_median"] > 0 for e in doc["engines"] if e["engine"]["kind"] == "ours")
    printed = capsys.readouterr().out
    assert "Operation" in printed and "Count(Users)" in printed and "Load Database" in printed
    assert str(json_path) in printed


def test_references_answer_like_our_engine(tmp_path):
    wl = workload.Workload(1000, seed=7)
    engines = [workload.make_engine("original"), workload.make_engine("sqlite"), workload.make_engine("ours", 2)]
    answers = [
        workload.run_engine(e, wl, 2, tmp_path, measure_memory=False, time_gets=False).answers for e in engines
    ]
    assert answers[0] == answers[1] == answers[2]
    first = answers[0][0]
    assert first["added"] == 100 and first["check"] is True and first["loaded"] == 1000
    assert first["found"] >= 100 and first["removed_by_id"] > 0 and first["removed_by_name"] > 0


def test_sqlite_reference_api(tmp_path):
    db = SQLiteDataBase()
    alice, bob, alice2 = User("alice", 30), User("bob", 40, extras={"k": [1]}), User("alice", 31)
    assert db.add_users([alice, bob, alice2, alice]) == 3
    assert db.size == 3
    assert sorted(u.age for u in db.search_users(["alice"])) == [30, 31]
    [found] = db.search_users([bob.ID])
    assert found == bob and found.name == "bob" and dict(found.extras) == {"k": (1,)}
    assert db.has_user([alice.ID, bob]) and not db.has_user([uuid.uuid4()])
    db.save(tmp_path / "db.sqlite3")
    assert db.remove_users(["alice", bob.ID, uuid.uuid4()]) == 3 and db.size == 0
    db.backup(tmp_path / "db.sqlite3", tmp_path / "copy.sqlite3")
    db.load(tmp_path / "copy.sqlite3")
    assert db.size == 3 and db.search_users([alice2.ID]) == [alice2]
    db.close()


def test_parse_shards():
    assert run.parse_shards("1, 2,1") == [1, 2]
    assert run.parse_shards("default") == [run.os.cpu_count() or 1]
    with pytest.raises(run.argparse.ArgumentTypeError):
        run.parse_shards("zero")


@pytest.mark.skipif(importlib.util.find_spec("asv") is None, reason="asv is not installed")
def test_asv_check_passes():
    asv = shutil.which("asv", path=str(Path(sys.executable).parent)) or shutil.which("asv")
    if asv is None:
        pytest.skip("no asv command")
    done = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No problems found" in done.stdout
