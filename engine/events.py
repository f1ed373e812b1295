"""A tiny event bus: the training loop announces what happened, handlers decide what to do about it."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

Handler = Callable[..., Any]


class Events:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def on(self, name: str, handler: Handler) -> None:
        self._handlers[name].append(handler)

    def emit(self, name: str, **payload: Any) -> None:
        for handler in self._handlers.get(name, ()):
            handler(**payload)
