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

from pydbms_shard import User, generate_users
from pydbms_shard.bench import durability, run, workload
from pydbms_shard.bench.sqlite_ref import SQLiteDataBase
from pydbms_shard.snapshot import read_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_main_writes_json_and_chart(tmp_path, capsys):
    code = run.main(["--users", "2000", "--iterations", "1", "--shards", "1,2", "--output", str(tmp_path), "--quiet", "--no-durability"])
    assert code == 0
    [json_path] = tmp_path.glob("bench-*.json")
    [png_path] = tmp_path.glob("bench-*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(json_path.read_text())
    assert {"schema", "machine", "settings", "rows", "engines", "targets", "files"} <= set(doc)
    assert doc["durability"] is None and doc["settings"]["durability"] == "skipped"
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


@pytest.mark.slow
def test_durability_only_at_a_tiny_size(tmp_path, capsys, monkeypatch):
    """The durability measurements end to end with 2k users and one round: the structure of the
    JSON and of the printed table (never the timings, which depend on the machine). Workers
    start by fork here, only to keep the test fast (about a dozen DataBases open)."""
    monkeypatch.setattr(durability, "OPEN_OPTIONS", {"start_method": "fork"})
    code = run.main(["--durability-only", "--users", "2000", "--iterations", "1", "--output", str(tmp_path), "--quiet"])
    assert code == 0
    [json_path] = tmp_path.glob("bench-*.json")
    assert not list(tmp_path.glob("bench-*.png")) and not list(tmp_path.glob("pydbms-bench-*"))
    doc = json.loads(json_path.read_text())
    assert doc["engines"] == [] and doc["targets"] == [] and doc["settings"]["durability"] == "only"
    d = doc["durability"]
    assert d["rounds"] == 1 and d["shards"] == run.os.cpu_count()
    batch, single, recovery = d["batch_add"], d["single_add"], d["recovery"]
    assert batch["users_per_call"] == 2000 and batch["calls"] == 3
    assert len(batch["memory_seconds"]) == len(batch["always_seconds"]) == 1
    assert batch["ratio"] == pytest.approx(batch["always_median"] / batch["memory_median"])
    assert single["calls"] == 200
    for mode in ("memory", "everysec", "always"):
        assert len(single[mode]["seconds"]) == 1 and single[mode]["calls_per_second"] > 0
        assert 0 < single[mode]["call_median_us"] <= single[mode]["call_p99_us"]
    assert single["ratio"] == pytest.approx(single["everysec"]["median_seconds"] / single["memory"]["median_seconds"])
    assert recovery["users"] == 2000 and recovery["log_bytes"] > 0 and recovery["snapshot_bytes"] > 0
    assert recovery["ratio"] == pytest.approx(recovery["from_log_median"] / recovery["from_snapshot_median"])
    assert 0 < recovery["empty_open_median"]
    assert [t["limit"] for t in d["targets"]] == [1.3, 1.5, 2.0]
    assert all(t["unit"] == "x" and t["met"] in (True, False) for t in d["targets"])
    printed = capsys.readouterr().out
    assert "Durability" in printed and "Single add throughput" in printed and "fsync always" in printed
    assert printed.count("PASS") + printed.count("MISS") == 3
    assert "Operation" not in printed  # no main table


def test_durability_log_holds_every_user(tmp_path, monkeypatch):
    """The recovery set-up leaves every user in the log and none in the snapshot, and reopening
    replays them all."""
    monkeypatch.setattr(durability, "OPEN_OPTIONS", {"start_method": "fork"})
    users = generate_users(300, seed=5)
    path = tmp_path / "db.json"
    log_bytes = durability.build_logged(1, path, users, batch=100)
    assert log_bytes > 0 and read_manifest(path).users == 0
    assert durability.time_open(1, path, expected=300) > 0


@pytest.mark.slow
def test_references_answer_like_our_engine(tmp_path):
    wl = workload.Workload(1000, seed=7)
    engines = [workload.make_engine("original"), workload.make_engine("sqlite"), workload.make_engine("ours", 2)]
    answers = [workload.run_engine(e, wl, 2, tmp_path, measure_memory=False, time_gets=False).answers for e in engines]
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


@pytest.mark.slow
def test_memory_and_scale_tables(tmp_path, capsys):
    """The Memory and scale tables end to end with 2k users: structure and sane values (bytes per
    user, peaks, positive times), never the speed."""
    code = run.main(
        ["--users", "2000", "--iterations", "1", "--shards", "2", "--output", str(tmp_path), "--quiet", "--no-durability", "--no-chart"]
        + ["--memory", "--heap", "--scale", "2000,4000"]
    )
    assert code == 0
    [json_path] = tmp_path.glob("bench-*.json")
    doc = json.loads(json_path.read_text())
    assert doc["settings"]["memory"] is True and doc["settings"]["heap"] is True and doc["settings"]["scale"] == [2000, 4000]
    extra = doc["memory_and_scale"]
    m = extra["memory"]
    assert m["users"] == 2000 and m["shards"] == 2 and m["rounds"] == 1
    for key in ("ours", "original", "ours_extras", "original_extras"):
        assert m[key]["users"] == 2000
        assert m[key]["rss_bytes_per_user"] > 16, (key, m[key])
    assert m["ours"]["processes"] == 3 and m["original"]["processes"] == 1
    for key in ("ours", "original"):
        assert m[key]["save_median"] > 0 and m[key]["load_median"] > 0 and m[key]["snapshot_bytes"] > 0
        assert m[key]["save_peak_max"] >= 0 and m[key]["load_peak_max"] >= 0
    assert m["ours"]["floor_median"] > 0 and m["original"]["floor_median"] is None
    assert all(value is None or value > 0 for value in m["ratios"].values())
    assert m["ratios"]["save_vs_floor"] == pytest.approx(m["ours"]["save_median"] / m["ours"]["floor_median"])

    s = extra["scale"]
    assert [r["users"] for r in s["sizes"]] == [2000, 4000] and s["batch"] == 200 and s["reference_users"] == 2000
    for r in s["sizes"]:
        assert set(r["medians"]) == {"load", "save", "add", "search_ids"}
        assert all(v > 0 for v in r["medians"].values()) and r["snapshot_bytes"] > 0
        assert r["floor_median"] > 0 and r["save_vs_floor"] > 0 and r["rss_bytes_per_user"] > 16
    assert all(v == 1.0 for v in s["sizes"][0]["ratios"].values())

    h = extra["heap_rows"]
    assert h["ours"] == "ours-2" and h["reference"] == "original" and h["rounds"] == 1
    assert h["ballast_objects"] == 6000 and h["gc_tracked_objects"] > 6000
    assert set(h["ratios"]) == set(workload.BATCH_ROWS) and all(v > 0 for v in h["ratios"].values())

    printed = capsys.readouterr().out
    assert "== Memory and scale ==" in printed
    assert "bytes/user, RSS, no extras" in printed and "disk floor" in printed and "save / floor" in printed
    assert "Scale (" in printed and "big caller heap" in printed


def test_parse_sizes():
    assert run.parse_sizes("1000000, 4_000_000,1000000") == [1_000_000, 4_000_000]
    with pytest.raises(run.argparse.ArgumentTypeError):
        run.parse_sizes("5")
    with pytest.raises(run.argparse.ArgumentTypeError):
        run.parse_sizes("many")


@pytest.mark.slow
@pytest.mark.ray
def test_both_backends_with_a_table_of_ray_against_local(tmp_path, capsys, local_ray):
    argv = ["--users", "2000", "--iterations", "1", "--shards", "2", "--backend", "both", "--no-chart", "--output", str(tmp_path)]
    code = run.main([*argv, "--quiet", "--no-durability"])
    assert code == 0
    [json_path] = tmp_path.glob("bench-*.json")
    doc = json.loads(json_path.read_text())
    keys = [e["engine"]["key"] for e in doc["engines"]]
    assert keys == ["original", "sqlite", "ours-2", "ours-ray-2"]
    ray_engine = doc["engines"][-1]
    assert ray_engine["engine"]["backend"] == "ray" and ray_engine["get_us"]["uncached_median"] > 0
    assert ray_engine["memory"]["users"] == 2000
    printed = capsys.readouterr().out
    assert "Ray against local, 2 shard(s)" in printed and "single get, median uncached" in printed
