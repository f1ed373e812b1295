"""A tiny event bus: the training loop announces what happened, handlers decide what to do about it.

Events are Enum members, so a misspelt event fails at import instead of never firing."""
from __future__ import annotations

from collections import defaultdict
from enum import Enum
from typing import Any, Callable, Protocol

Listener = Callable[..., Any]


class Event(Enum):
    FIT_START = "fit_start"        # data loaded, model built; the first step comes next   (trainer)
    STEP_END = "step_end"          # one optimizer step done                                (trainer, epoch, step, loss)
    EPOCH_END = "epoch_end"        # validation done                                        (trainer, epoch, train, val, seconds)
    FIT_END = "fit_end"            # the loop ended (all epochs, early stop)                (trainer)


class Events:
    def __init__(self) -> None:
        self._listeners: dict[Event, list[Listener]] = defaultdict(list)

    def on(self, event: Event, listener: Listener) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"events are Event members, not {event!r}")
        self._listeners[event].append(listener)

    def emit(self, event: Event, **payload: Any) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"events are Event members, not {event!r}")
        for listener in self._listeners.get(event, ()):
            listener(**payload)

    def listeners(self, event: Event) -> int:
        return len(self._listeners.get(event, ()))


class Handler(Protocol):
    """One job per handler, attached one way: handler.attach(events)."""

    def attach(self, events: Events) -> None: ...
