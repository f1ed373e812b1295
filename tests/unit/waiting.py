"""Waiting in tests for something another process or thread does: poll, and fail with what was awaited."""
from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    """predicate()'s first truthy value within `timeout` seconds, polled every `poll` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
