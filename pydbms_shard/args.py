"""Command-line plumbing shared by ``pydbms`` and the benchmark: one-line errors and exit codes.

It lives apart from cli.py so that the benchmark's command line and the ``pydbms`` command
both build on it without importing each other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

EXIT_OK, EXIT_FOUND_PROBLEM, EXIT_USAGE, EXIT_CONFIG, EXIT_SNAPSHOT, EXIT_IMPORT, EXIT_OTHER = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A problem to report in one line with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{self.prog}: {message} (see --help)", EXIT_USAGE)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number (``1_000_000`` allowed) of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse
