"""The pydbms command, through real subprocesses: every subcommand, its errors and exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from pydbms_shard import DataBase, User, generate_users
from pydbms_shard.cli import EXIT_CONFIG, EXIT_FOUND_PROBLEM, EXIT_IMPORT, EXIT_OK, EXIT_SNAPSHOT, EXIT_USAGE

PYDBMS = [sys.executable, "-m", "pydbms_shard"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*PYDBMS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Errors are exactly one line on stderr, and never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def snap(tmp_path_factory) -> Path:
    """A 300-user snapshot made by `pydbms generate`, shared by the read-only tests."""
    where = tmp_path_factory.mktemp("cli")
    result = run("generate", "300", "db.json", "--seed", "7", "--shards", "2", cwd=where)
    assert result.returncode == EXIT_OK, result.stderr
    assert "300 users saved" in result.stdout
    return where / "db.json"


def test_generate_is_deterministic_and_loadable(snap: Path, tmp_path: Path) -> None:
    again = run("generate", "300", "again.json", "--seed", "7", "--shards", "3", cwd=tmp_path)
    assert again.returncode == EXIT_OK
    with DataBase(shards=2) as a, DataBase(shards=1) as b:
        a.load(snap)
        b.load(tmp_path / "again.json")
        assert sorted(u.ID for u in a) == sorted(u.ID for u in b) == sorted(u.ID for u in generate_users(300, seed=7))


def test_info_shows_the_manifest(snap: Path) -> None:
    result = run("info", str(snap), cwd=snap.parent)
    assert result.returncode == EXIT_OK
    manifest = json.loads(snap.read_text())
    assert "generation" in result.stdout and str(manifest["generation"]) in result.stdout
    assert "300" in result.stdout
    for entry in manifest["files"]:
        assert entry["name"] in result.stdout and entry["crc32"] in result.stdout
    assert "version 1" in result.stdout


def test_verify_sound_then_damaged(tmp_path: Path) -> None:
    assert run("generate", "200", "db.json", "--shards", "2", cwd=tmp_path).returncode == EXIT_OK
    assert run("verify", "db.json", cwd=tmp_path).returncode == EXIT_OK
    victim = tmp_path / json.loads((tmp_path / "db.json").read_text())["files"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte in the body
    victim.write_bytes(bytes(data))
    result = run("verify", "db.json", cwd=tmp_path)
    assert result.returncode == EXIT_FOUND_PROBLEM
    assert victim.name in one_line_error(result)


def test_convert_jsonl_and_text(snap: Path, tmp_path: Path) -> None:
    assert run("convert", str(snap), "out.jsonl", cwd=tmp_path).returncode == EXIT_OK
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and set(rows[0]) == {"name", "age", "ID", "extras"}
    assert run("convert", str(snap), "out.txt", "--format", "text", cwd=tmp_path).returncode == EXIT_OK
    lines = (tmp_path / "out.txt").read_text().splitlines()
    first = User.from_dict(rows[0])
    assert f'User "{first.name}" is {first.age} years old (ID: {first.ID})' in lines


def test_import_jsonl_and_original_save_file(tmp_path: Path) -> None:
    users = [User("Ada", 36, extras={"lang": "en"}), User("Zoë 🚀", 7)]
    original = "".join(json.dumps({"name": u.name, "age": u.age, "ID": str(u.ID), "extras": dict(u.extras)}) + "\n" for u in users)
    (tmp_path / "users_db.json").write_text(original)  # the original pyDBMS's save file
    result = run("import", "users_db.json", "snap.json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    result = run("import", "users_db.json", "snap.json", cwd=tmp_path)  # again: nothing new
    assert "0 users imported" in result.stdout
    with DataBase(shards=2) as db:
        db.load(tmp_path / "snap.json")
        assert len(db) == 2
        assert db.get(users[0].ID).extras["lang"] == "en"
        assert db.get(users[1].ID).name == "Zoë 🚀"


def test_import_bad_line_names_it_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"name": "A", "age": 3}\n{"name": "B", "age": "old"}\n')
    result = run("import", "in.jsonl", "snap.json", cwd=tmp_path)
    assert result.returncode == EXIT_IMPORT
    assert "in.jsonl:2" in one_line_error(result)
    assert not (tmp_path / "snap.json").exists()


@pytest.mark.slow
def test_get_and_find(snap: Path) -> None:
    with DataBase(shards=2) as db:
        db.load(snap)
        user = next(iter(db))
    result = run("get", str(snap), str(user.ID), cwd=snap.parent)
    assert result.returncode == EXIT_OK
    assert User.from_json(result.stdout.strip()) == user and json.loads(result.stdout)["name"] == user.name
    result = run("find", str(snap), user.name, cwd=snap.parent)
    assert result.returncode == EXIT_OK and json.loads(result.stdout)["ID"] == str(user.ID)
    result = run("find", str(snap), user.name, "nobody-has-this-name", cwd=snap.parent)
    assert result.returncode == EXIT_FOUND_PROBLEM
    assert json.loads(result.stdout)["ID"] == str(user.ID)
    assert "nobody-has-this-name" in one_line_error(result)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["get", "missing.json", "00000000-0000-0000-0000-000000000000"], EXIT_SNAPSHOT, "missing.json"),
        (["get", "SNAP", "not-a-uuid"], EXIT_USAGE, "not-a-uuid"),
        (["generate", "many", "x.json"], EXIT_USAGE, "many"),
        (["generate", "5", "no/such/dir/x.json"], EXIT_SNAPSHOT, "does not exist"),
        (["info", "missing.json"], EXIT_SNAPSHOT, "missing.json"),
        (["convert", "missing.json", "out.jsonl"], EXIT_SNAPSHOT, "missing.json"),
        (["import", "missing.jsonl", "x.json"], EXIT_IMPORT, "missing.jsonl"),
        (["convert", "SNAP", "out.csv", "--format", "csv"], EXIT_USAGE, "csv"),
        (["frobnicate"], EXIT_USAGE, "frobnicate"),
        (["generate", "5", "x.json", "--shards", "0"], EXIT_USAGE, "shard"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(snap: Path, tmp_path: Path, args, code, needle) -> None:
    args = [str(snap) if a == "SNAP" else a for a in args]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert needle in one_line_error(result)


def test_bad_config_names_key_and_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("shards: 2\ncompresion_level: 3\n")
    result = run("generate", "5", "x.json", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    line = one_line_error(result)
    assert "compresion_level" in line and "bad.yaml" in line
    (tmp_path / "worse.yaml").write_text("shards: [unclosed\n")
    result = run("generate", "5", "x.json", "--config", "worse.yaml", cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG and "worse.yaml" in one_line_error(result)


@pytest.mark.slow
def test_every_subcommand_has_help(tmp_path: Path) -> None:
    for command in ["generate", "info", "verify", "convert", "import", "get", "find", "query", "shell"]:
        result = run(command, "--help", cwd=tmp_path)
        assert result.returncode == EXIT_OK and "usage: pydbms " + command in result.stdout
    assert "Exit codes" in run("--help", cwd=tmp_path).stdout


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "pydbms"
    assert script.exists()
    result = subprocess.run([str(script), "info", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_OK


def _run_on_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; return the exit code and all output."""
    pid, fd = pty.fork()
    if pid == 0:  # child: a terminal 100 columns wide, like a person's
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.chdir(cwd)
        os.execv(sys.executable, PYDBMS + args)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    code, output = _run_on_terminal(["generate", "120000", "big.json", "--shards", "2"], tmp_path)
    assert code == EXIT_OK
    assert "users/s" in output or "it/s" in output or "%|" in output, output
    piped = run("generate", "120000", "piped.json", "--shards", "2", cwd=tmp_path)
    assert piped.returncode == EXIT_OK
    assert piped.stderr == ""  # no bar when stderr is not a terminal
    code, output = _run_on_terminal(["convert", "big.json", "out.jsonl", "--quiet"], tmp_path)
    assert code == EXIT_OK and "%|" not in output


@pytest.mark.slow
def test_bench_subcommand_runs_the_benchmark(tmp_path: Path) -> None:
    result = run(
        "bench",
        "--users",
        "300",
        "--iterations",
        "1",
        "--shards",
        "1",
        "--no-chart",
        "--no-durability",
        "--quiet",
        "--output",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "reference (a)" in result.stdout and "Check Users by ID" in result.stdout
    assert list(tmp_path.glob("bench-*.json"))


# ---------------------------------------------------------------- version, --json, stdin, convert targets


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run("--version", cwd=tmp_path)
    assert result.returncode == EXIT_OK
    assert result.stdout.strip() == f"pydbms {version('pydbms-shard')}"


def test_bench_does_not_import_the_cli() -> None:
    code = "import sys, pydbms_shard.bench.run; print('pydbms_shard.cli' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_json_generate_info_verify(tmp_path: Path) -> None:
    result = run("generate", "50", "db.json", "--seed", "3", "--shards", "2", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == {"path": "db.json", "users": 50, "seed": 3}

    result = run("info", "db.json", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    info = json.loads(result.stdout)
    manifest = json.loads((tmp_path / "db.json").read_text())
    for key in ("format", "version", "generation", "created", "shards", "hash", "users"):
        assert info[key] == manifest[key]
    assert info["snapshot"] == "db.json" and info["users"] == 50 and len(info["files"]) == 2
    assert info["bytes"] == sum(f["bytes"] for f in manifest["files"])
    assert {f["crc32"] for f in info["files"]} == {f["crc32"] for f in manifest["files"]}
    assert info["log"] is None or info["log"]["segments"] == 0  # generate logs no calls

    result = run("verify", "db.json", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    facts = json.loads(result.stdout)
    assert Path(facts.pop("path")).resolve() == (tmp_path / "db.json").resolve()
    assert facts == {"sound": True, "users": 50, "shards": 2, "log_records": 0, "error": None}

    victim = tmp_path / manifest["files"][0]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = run("verify", "db.json", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_FOUND_PROBLEM
    facts = json.loads(result.stdout)
    assert facts["sound"] is False and facts["users"] == 50 and victim.name in facts["error"]


def test_json_info_shows_the_log(tmp_path: Path) -> None:
    with DataBase(shards=1, snapshot_path=str(tmp_path / "db.json")) as db:
        db.save()
        db.add_users([User("Ada", 36), User("Bob", 40)])  # logged after the snapshot
    result = run("info", "db.json", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    log = json.loads(result.stdout)["log"]
    assert log is not None and log["chain"] and log["segments"] >= 1 and log["bytes"] > 0
    result = run("verify", "db.json", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK and json.loads(result.stdout)["log_records"] >= 1


def test_json_import(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"name": "A", "age": 3}\n{"name": "B", "age": 4}\n')
    result = run("import", "in.jsonl", "snap.json", "--shards", "1", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == {"path": "snap.json", "src": "in.jsonl", "imported": 2, "already_present": 0, "users": 2}


def test_json_missing_snapshot_is_still_a_one_line_error(tmp_path: Path) -> None:
    result = run("info", "missing.json", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_SNAPSHOT and result.stdout == ""
    assert "missing.json" in one_line_error(result)


def test_get_and_find_read_stdin(snap: Path) -> None:
    with DataBase(shards=2) as db:
        db.load(snap)
        users = list(db)[:3]
    ids = "\n".join(str(u.ID) for u in users) + "\n\n  \n"  # blank lines are skipped
    result = subprocess.run([*PYDBMS, "get", str(snap), "-"], input=ids, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_OK, result.stderr
    assert [User.from_json(line) for line in result.stdout.splitlines()] == users
    names = f"{users[0].name}\n\nnobody-has-this-name\n"
    result = subprocess.run([*PYDBMS, "find", str(snap), "-"], input=names, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_FOUND_PROBLEM
    assert str(users[0].ID) in result.stdout
    assert "nobody-has-this-name" in one_line_error(result)


def test_convert_to_stdout_creates_no_file(snap: Path, tmp_path: Path) -> None:
    result = run("convert", str(snap), "-", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 300 and set(rows[0]) == {"name", "age", "ID", "extras"}
    assert not (tmp_path / "-").exists() and list(tmp_path.iterdir()) == []


def test_convert_to_a_symlink_replaces_its_target_and_keeps_the_link(snap: Path, tmp_path: Path) -> None:
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target.name)
    result = run("convert", str(snap), "link.jsonl", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert link.is_symlink() and os.readlink(link) == target.name
    assert len(target.read_text().splitlines()) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]  # no temporary left


def test_convert_to_a_fifo_writes_through_it(snap: Path, tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run("convert", str(snap), str(fifo), "--format", "text", cwd=tmp_path)
    reader.join(timeout=60)
    assert result.returncode == EXIT_OK, result.stderr
    assert len(received[0].decode().splitlines()) == 300
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_convert_to_a_directory_is_an_error(snap: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = run("convert", str(snap), "out", cwd=tmp_path)
    assert result.returncode == EXIT_SNAPSHOT
    assert "directory" in one_line_error(result)
    assert list((tmp_path / "out").iterdir()) == []


def test_text_export_escapes_names_that_could_forge_lines(tmp_path: Path) -> None:
    forged = 'a\nUser "Mallory" is 1 years old (ID: 00000000-0000-0000-0000-000000000000)'
    users = [User(forged, 3), User('quote " and \\ backslash', 4), User("cr\rtab\t", 5), User("Zoë", 6)]
    with DataBase(shards=1) as db:
        db.add_users(users)
        db.save(tmp_path / "db.json")
    result = run("convert", "db.json", "out.txt", "--format", "text", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(users)  # one line a user, whatever the names hold
    assert not any("Mallory" in line and line.startswith('User "Mallory"') for line in lines)
    by_id = {line.rsplit("(ID: ", 1)[1].rstrip(")"): line for line in lines}
    for user in users:
        line = by_id[str(user.ID)]
        quoted = line[len("User ") : line.rindex(f" is {user.age} years old")]
        assert json.loads(quoted) == user.name  # plain names and escaped ones both read back as JSON strings
    assert f'User "Zoë" is 6 years old (ID: {users[3].ID})' in lines
