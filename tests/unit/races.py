"""Helpers for the tests of a student's limits under concurrent submits (two tabs, a script): the usage query made
slow so that, without the critical section, every racer would read the same usage; and N actions started at once."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from engine.classroom import assignments
from engine.errors import UserError


def slow_usage(monkeypatch, seconds: float = 0.3) -> None:
    """assignments._student_usage answers `seconds` late (its answer unchanged)."""
    counted = assignments._student_usage

    def slow(*args, **kwargs):
        found = counted(*args, **kwargs)
        time.sleep(seconds)
        return found

    monkeypatch.setattr(assignments, "_student_usage", slow)


def race(n: int, action: Callable[[], Any]) -> list[Any]:
    """Run `action` in n threads released at the same moment; each outcome is its result or its refusal's text."""
    start, outcomes = threading.Barrier(n), []

    def one() -> None:
        start.wait()
        try:
            outcomes.append(action())
        except UserError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes
