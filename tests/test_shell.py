"""pydbms shell, driven through a pipe as a script would: answers, errors, exit codes, reopening."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pydbms_shard import DataBase, User
from pydbms_shard.cli import EXIT_FOUND_PROBLEM, EXIT_OK, EXIT_SNAPSHOT, EXIT_USAGE

SHELL = [sys.executable, "-m", "pydbms_shard", "shell", "--shards", "1"]


def shell(commands: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd)}  # never the tester's own history file
    return subprocess.run([*SHELL, *args], input=commands, cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=120)


def test_commands_through_a_pipe(tmp_path: Path) -> None:
    result = shell('add Ada 36 "Bob Smith" 40\ncount\nfind "Bob Smith"\nstats\n', cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert "pydbms>" not in result.stdout  # no prompt when stdin is not a terminal
    ada, bob = lines[0], lines[1]
    assert lines[2] == "2"
    found = User.from_json(lines[3])
    assert found.name == "Bob Smith" and found.age == 40 and str(found.ID) == bob
    stats = json.loads(lines[4])
    assert stats["users"] == 2 and len(stats["shards"]) == 1
    assert ada != bob
    assert not (tmp_path / ".pydbms_history").exists()  # history only on a terminal


def test_get_remove_and_comments(tmp_path: Path) -> None:
    result = shell("add Ada 36 Ada 37 Bob 40\n", "db.json", cwd=tmp_path)  # IDs are random: keep them
    bob = result.stdout.split()[2]
    script = f"# a comment\n\nget {bob}\nremove Ada\ncount\nremove {bob}\ncount\nquit\ncount\n"
    result = shell(script, "db.json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert User.from_json(lines[0]).name == "Bob"
    assert lines[1:] == ["2 removed", "1", "1 removed", "0"]  # nothing after quit runs


def test_errors_are_one_line_and_the_shell_goes_on(tmp_path: Path) -> None:
    script = "frobnicate\nadd Ada\nadd Ada old\nget 00000000-0000-0000-0000-000000000000\nadd Ada 36\ncount\n"
    result = shell(script, cwd=tmp_path)
    errors = result.stderr.splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), result.stderr
    assert "frobnicate" in errors[0] and "pairs" in errors[1] and "old" in errors[2]
    assert "not found" in errors[3] and "Traceback" not in result.stderr
    assert result.stdout.splitlines()[-1] == "1"  # the commands after the errors ran
    assert result.returncode == EXIT_USAGE  # the first failure's code


def test_exit_code_of_a_not_found_and_of_a_missing_snapshot(tmp_path: Path) -> None:
    result = shell("find nobody\ncount\n", cwd=tmp_path)
    assert result.returncode == EXIT_FOUND_PROBLEM and "nobody" in result.stderr
    result = shell("load missing.json\nsave\n", cwd=tmp_path)  # save: no path, and none opened
    assert result.returncode == EXIT_SNAPSHOT
    assert len(result.stderr.splitlines()) == 2


@pytest.mark.slow
def test_a_path_is_recovered_and_logged(tmp_path: Path) -> None:
    result = shell("add Ada 36 Bob 40\n", "db.json", cwd=tmp_path)  # logged, never saved
    assert result.returncode == EXIT_OK, result.stderr
    ada, bob = result.stdout.split()
    result = shell(f"count\nget {ada}\nadd Cy 5\nsave\nremove Bob\n", "db.json", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "2" and User.from_json(lines[1]).name == "Ada"
    cy = lines[2]
    assert lines[3].startswith("3 users saved to") and lines[4] == "1 removed"
    with DataBase(shards=1, snapshot_path=str(tmp_path / "db.json")) as db:  # the snapshot and the log after it
        assert sorted(u.name for u in db) == ["Ada", "Cy"]
        assert db.get(cy) is not None and db.get(bob) is None
    result = shell("count\nsave copy.json\nload copy.json\ncount\n", "db.json", cwd=tmp_path)
    assert result.stdout.splitlines() == ["2", "2 users saved to copy.json", "2 users loaded from copy.json", "2"]


def test_a_path_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with DataBase(shards=1, snapshot_path=str(tmp_path / "db.json")):
        result = shell("count\n", "db.json", cwd=tmp_path)
    assert result.returncode == EXIT_SNAPSHOT
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = shell("help\nhelp add\n", cwd=tmp_path)
    assert result.returncode == EXIT_OK
    for name in ["get", "find", "add", "remove", "count", "stats", "save", "load", "quit", "exit"]:
        assert name in result.stdout
    assert "EOF" not in result.stdout and "NAME AGE" in result.stdout


def test_on_a_terminal_a_prompt_history_and_completion(tmp_path: Path) -> None:
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: stdin, stdout and stderr on a terminal
        os.environ["HOME"] = str(tmp_path)
        os.chdir(tmp_path)
        os.execv(sys.executable, SHELL)
    out = b""

    def read_until(needle: bytes, seconds: float = 60) -> None:
        nonlocal out
        end = time.monotonic() + seconds
        while needle not in out and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    return

    read_until(b"pydbms> ")
    os.write(fd, b"add Ada 3\r")
    read_until(b"pydbms> ", 30)
    os.write(fd, b"cou\t\r")  # tab completes the command name
    read_until(b"\r\n1\r\n")
    os.write(fd, b"bogus\r")
    read_until(b"unknown command")
    os.write(fd, b"quit\r")
    read_until(b"never", 5)
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == EXIT_OK, text  # a person's typo is not a failure
    assert "pydbms> " in text and "\r\n1\r\n" in text and "error: unknown command 'bogus'" in text
    history = (tmp_path / ".pydbms_history").read_text().splitlines()
    assert history[-4:] == ["add Ada 3", "count", "bogus", "quit"]
