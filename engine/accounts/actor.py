"""Who is acting. Everywhere in the engine `actor: Actor | None`; None is the server's operator (or a workspace
with no accounts): full access, as Lightbox always behaved."""
from __future__ import annotations

from dataclasses import dataclass

ROLES = ("student", "instructor")


@dataclass(frozen=True)
class Actor:
    name: str
    role: str

    @property
    def is_instructor(self) -> bool:
        return self.role == "instructor"
