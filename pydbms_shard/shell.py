"""``pydbms shell``: one open DataBase and a prompt, in the spirit of the sqlite3 shell and redis-cli.

Opening a DataBase costs a process per shard and a recovery; the shell pays it once and then
answers each command at once. On a terminal it has a prompt, history (~/.pydbms_history) and
tab completion of command names. Fed by a pipe it runs the commands without a prompt, so a
script of commands is a batch job: every error is one line on stderr, the shell goes on, and
the exit code is that of the first command that failed (0 when none did).
"""

from __future__ import annotations

import argparse
import cmd
import json
import os
import shlex
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .args import EXIT_FOUND_PROBLEM, EXIT_OK, EXIT_OTHER, EXIT_SNAPSHOT, EXIT_USAGE, whole_number
from .coordinator import DataBase
from .errors import LogError, PydbmsError, SnapshotError, ValidationError
from .user import User

ProgressBar = Callable[[int, str], AbstractContextManager[Callable[[int], object]]]
"""``bar(total, description)``: a context whose value advances the bar by a count."""

HISTORY_FILE = "~/.pydbms_history"
HISTORY_LENGTH = 1000


class ShellError(Exception):
    """A command that failed: one line on stderr, and an exit code for a batch run."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Shell(cmd.Cmd):
    """The commands. Every ``do_*`` takes the rest of the line, split like a shell's words, so a
    name with spaces is written in quotes: ``find "Ada Lovelace"``."""

    intro = None
    doc_header = "Commands (help COMMAND for more):"

    def __init__(
        self, db: DataBase, stdin: TextIO, stdout: TextIO, stderr: TextIO, interactive: bool, bar: ProgressBar | None = None
    ) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.db = db
        self.bar = bar  # progress bars of save and load (the pydbms command's, on a terminal)
        self.stderr = stderr
        self.interactive = interactive
        self.use_rawinput = interactive  # input() with readline on a terminal; plain reads from a pipe
        self.prompt = "pydbms> " if interactive else ""
        self.exit_code = EXIT_OK

    # ------------------------------------------------------------ the loop

    def onecmd(self, line: str) -> bool:
        """Run one line; an error is reported and remembered, never raised out of the loop."""
        try:
            return super().onecmd(line)
        except ShellError as exc:
            self._error(str(exc), exc.code)
        except ValidationError as exc:
            self._error(f"bad argument: {exc}", EXIT_USAGE)
        except (SnapshotError, LogError) as exc:
            self._error(str(exc), EXIT_SNAPSHOT)
        except PydbmsError as exc:
            self._error(str(exc), EXIT_OTHER)
        except OSError as exc:
            self._error(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_SNAPSHOT)
        return False

    def _error(self, message: str, code: int) -> None:
        self.stderr.write("error: " + " ".join(message.split()) + "\n")  # one line, whatever it held
        self.stderr.flush()
        if self.exit_code == EXIT_OK:
            self.exit_code = code

    def _out(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def emptyline(self) -> bool:
        return False  # not cmd's default of repeating the last command: that could add users twice

    def default(self, line: str) -> None:
        if line.lstrip().startswith("#"):
            return  # a comment, for scripts of commands
        raise ShellError(f"unknown command {line.split()[0]!r} (try help)")

    def get_names(self) -> list[str]:
        """What help lists and tab completes: the commands, not the EOF that ends input."""
        return [name for name in super().get_names() if name != "do_EOF"]

    def postcmd(self, stop: bool, line: str) -> bool:
        self.stdout.flush()  # a pipe reader sees each answer as it comes
        return stop

    # ------------------------------------------------------------ commands

    def do_get(self, arg: str) -> None:
        """get ID... : the users with these IDs, as JSON lines (as `pydbms get`)."""
        ids: list[Any] = _words(arg, "get ID...")
        found = self.db.get_many(ids)
        for user in found:
            if user is not None:
                self._out(user.to_json().decode())
        missing = [i for i, user in zip(ids, found) if user is None]
        if missing:
            raise ShellError("not found: " + " ".join(missing), EXIT_FOUND_PROBLEM)

    def do_find(self, arg: str) -> None:
        """find NAME... : the users with exactly these names, as JSON lines (as `pydbms find`)."""
        missing = []
        for name in _words(arg, "find NAME..."):
            users = self.db.find_by_name(name)
            for user in users:
                self._out(user.to_json().decode())
            if not users:
                missing.append(name)
        if missing:
            raise ShellError("no user named " + ", ".join(map(repr, missing)), EXIT_FOUND_PROBLEM)

    def do_add(self, arg: str) -> None:
        """add NAME AGE [NAME AGE ...] : new users; prints their IDs, one a line."""
        words = _words(arg, "add NAME AGE [NAME AGE ...]")
        if len(words) % 2:
            raise ShellError("add takes pairs: add NAME AGE [NAME AGE ...]")
        users = []
        for name, age in zip(words[::2], words[1::2]):
            try:
                years = int(age)
            except ValueError:
                raise ShellError(f"age must be a whole number, got {age!r}") from None
            users.append(User(name, years))  # all checked before any is added
        self.db.add_users(users)
        for user in users:
            self._out(str(user.ID))

    def do_remove(self, arg: str) -> None:
        """remove ID|NAME... : remove users by ID, or every user with a name; prints how many."""
        items: list[Any] = []
        for word in _words(arg, "remove ID|NAME..."):
            try:
                items.append(uuid.UUID(word))
            except ValueError:
                items.append(word)  # not an ID: a name
        self._out(f"{self.db.remove_users(items)} removed")

    def do_count(self, arg: str) -> None:
        """count [--age MIN:MAX] [--name NAME] [--name-prefix PREFIX] : how many users are
        stored, or match every filter given (as `query`)."""
        if not arg.strip():
            self._out(str(len(self.db)))
            return
        args = _parse(_COUNT_PARSER, arg)
        self._out(str(self.db.count(**query_options(args, counting=True))))

    def do_query(self, arg: str) -> None:
        """query [--age MIN:MAX] [--name NAME] [--name-prefix PREFIX] [--order-by age|-age|name|-name]
        [--limit N] : the users matching every filter given, as JSON lines (as `pydbms query`).
        --age takes MIN:MAX, MIN:, :MAX or one age; bounds are inclusive."""
        args = _parse(_QUERY_PARSER, arg)
        for user in self.db.query(**query_options(args)):
            self._out(user.to_json().decode())

    def do_stats(self, arg: str) -> None:
        """stats : users per shard, the log, the cache and autosave, as one JSON object."""
        _no_words(arg, "stats")
        self._out(json.dumps(self.db.stats(), default=str))

    @contextmanager
    def _progress(self, desc: str) -> Iterator[Callable[[int, int], None]]:
        """A save's or load's ``progress(done, total)``, shown as a bar opened at its first report."""
        with ExitStack() as stack:
            state: list[Any] = [None, 0]  # the bar's advance function, users shown so far

            def step(done: int, total: int) -> None:
                if self.bar is None:
                    return
                if state[0] is None:
                    state[0] = stack.enter_context(self.bar(total, desc))
                state[0](done - state[1])
                state[1] = done

            yield step

    def do_save(self, arg: str) -> None:
        """save [PATH] : write a snapshot to PATH, or to the snapshot the shell opened (a checkpoint)."""
        path = _one_path(arg, "save [PATH]")
        with self._progress("saving") as step:
            manifest = self.db.save(path, progress=step)
        self._out(f"{manifest.users:,} users saved to {path or self.db.config.snapshot_path}")

    def do_load(self, arg: str) -> None:
        """load [PATH] : replace every user with the snapshot at PATH (or the one the shell opened)."""
        path = _one_path(arg, "load [PATH]")
        with self._progress("loading") as step:
            manifest = self.db.load(path, progress=step)
        self._out(f"{manifest.users:,} users loaded from {path or self.db.config.snapshot_path}")

    def do_quit(self, arg: str) -> bool:
        """quit : leave the shell (so do exit and end of input)."""
        return True

    do_exit = do_quit

    def help_exit(self) -> None:
        self._out("exit : leave the shell (so do quit and end of input).")

    def do_EOF(self, arg: str) -> bool:
        if self.interactive:
            self._out("")  # the prompt's line ends before the terminal's
        return True


def age_range(text: str) -> tuple[int | None, int | None]:
    """An argparse type: ``MIN:MAX``, ``MIN:``, ``:MAX`` or one age ``N`` (inclusive bounds)."""
    low, colon, high = text.partition(":")
    parse = whole_number(0)
    try:
        lo = parse(low) if low.strip() else None
        hi = (parse(high) if high.strip() else None) if colon else lo
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, MIN:, :MAX or an age (whole numbers), got {text!r}") from None
    if lo is None and hi is None and not colon:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, MIN:, :MAX or an age (whole numbers), got {text!r}")
    return lo, hi


ORDERS = ("age", "-age", "name", "-name")


def add_query_options(parser: argparse.ArgumentParser, counting: bool = False) -> None:
    """The filters of ``query`` and ``count`` (and the order and limit of ``query``), shared by
    ``pydbms query`` and the shell's commands."""
    parser.add_argument("--age", type=age_range, metavar="MIN:MAX", help="ages from MIN to MAX inclusive (MIN:, :MAX or one age)")
    parser.add_argument("--name", metavar="NAME", help="exactly this name")
    parser.add_argument("--name-prefix", metavar="PREFIX", help="names starting with PREFIX")
    if not counting:
        parser.add_argument("--order-by", choices=ORDERS, help="sort by age or name (- for descending); ties by ascending ID")
        parser.add_argument("--limit", type=whole_number(0), metavar="N", help="at most N users")


def attach_orders(words: list[str]) -> list[str]:
    """``--order-by -age`` as ``--order-by=-age``: argparse takes a value starting with ``-``
    for an option of its own."""
    out: list[str] = []
    words = list(words)
    while words:
        word = words.pop(0)
        if word == "--order-by" and words and words[0] in ORDERS:
            word = f"--order-by={words.pop(0)}"
        out.append(word)
    return out


def query_options(args: argparse.Namespace, counting: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``DataBase.query`` (or ``count``) from the parsed options."""
    lo, hi = args.age if args.age is not None else (None, None)
    options: dict[str, Any] = {"name": args.name, "name_prefix": args.name_prefix, "age_min": lo, "age_max": hi}
    if not counting:
        options.update(order_by=args.order_by, limit=args.limit)
    return options


class _ShellParser(argparse.ArgumentParser):
    """argparse for a shell command: an error is a ShellError (one line), never an exit."""

    def error(self, message: str) -> NoReturn:
        raise ShellError(f"{message} (usage: {' '.join(self.format_usage().split()[1:])})")


def _command_parser(name: str, counting: bool = False) -> _ShellParser:
    parser = _ShellParser(prog=name, add_help=False)
    add_query_options(parser, counting)
    return parser


_QUERY_PARSER = _command_parser("query")
_COUNT_PARSER = _command_parser("count", counting=True)


def _parse(parser: argparse.ArgumentParser, arg: str) -> argparse.Namespace:
    try:
        words = shlex.split(arg)
    except ValueError as exc:  # e.g. an unclosed quote
        raise ShellError(f"{exc} (usage: {' '.join(parser.format_usage().split()[1:])})") from None
    return parser.parse_args(attach_orders(words))


def _words(arg: str, usage: str) -> list[str]:
    """The command's arguments, split like a shell's words; at least one."""
    try:
        words = shlex.split(arg)
    except ValueError as exc:  # e.g. an unclosed quote
        raise ShellError(f"{exc} (usage: {usage})") from None
    if not words:
        raise ShellError(f"usage: {usage}")
    return words


def _no_words(arg: str, usage: str) -> None:
    if arg.strip():
        raise ShellError(f"usage: {usage}")


def _one_path(arg: str, usage: str) -> str | None:
    if not arg.strip():
        return None
    words = _words(arg, usage)
    if len(words) != 1:
        raise ShellError(f"usage: {usage}")
    return str(Path(words[0]).expanduser())


def run_shell(db: DataBase, stdin: TextIO, stdout: TextIO, stderr: TextIO, bar: ProgressBar | None = None) -> int:
    """Run the shell until quit or end of input; returns the exit code (see the module)."""
    interactive = stdin.isatty()
    shell = Shell(db, stdin, stdout, stderr, interactive, bar)
    readline = _start_history() if interactive else None
    try:
        if interactive:
            shell._out(f"pydbms shell: {len(db):,} users. Type help for the commands, quit to leave.")
        while True:
            try:
                shell.cmdloop()
                break
            except KeyboardInterrupt:  # on a terminal ^C drops the line being typed, not the shell
                if not interactive:
                    raise
                shell._out("^C")
    finally:
        if readline is not None:
            _save_history(readline)
    return shell.exit_code if not interactive else EXIT_OK


def _start_history() -> Any:
    """readline with the saved history, or None where there is no readline."""
    try:
        import readline
    except ImportError:
        return None
    try:
        readline.read_history_file(os.path.expanduser(HISTORY_FILE))
    except OSError:
        pass  # none yet, or unreadable: start without
    readline.set_history_length(HISTORY_LENGTH)
    return readline


def _save_history(readline: Any) -> None:
    try:
        readline.write_history_file(os.path.expanduser(HISTORY_FILE))
    except OSError:
        pass  # history is a convenience: never an error on the way out
