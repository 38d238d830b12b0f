"""The autosave schedule: a coordinator thread that saves every ``interval`` seconds when
something changed (like Redis' ``save <seconds> <changes>``). A failed save is logged and
counted, and the next tick tries again; failures never stop the schedule."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("pydbms_shard.autosave")


class ScheduleEnded(Exception):
    """Raised by the save callable when its DataBase is closed or gone."""


class AutoSaver:
    """Calls ``save_if_changed()`` (True when it saved) every ``interval`` seconds."""

    def __init__(self, save_if_changed: Callable[[], bool], interval: float, path: Path) -> None:
        self.interval, self.path = interval, path
        self.saves = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_save_at: float | None = None
        self._save_if_changed = save_if_changed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pydbms-autosave", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._save_if_changed():
                    self.saves += 1
                    self.last_save_at = time.time()
                    self.last_error = None
            except ScheduleEnded:
                return
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("autosave to %s failed: %s", self.path, self.last_error)

    def stop(self) -> None:
        """Returns as soon as the thread is idle: at once, or after a save in flight."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def stats(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "interval": self.interval,
            "path": str(self.path),
            "saves": self.saves,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_save_at": self.last_save_at,
        }
