"""The encoders that pre-training made: where their weights are, who may see them, and the "encoder:ID" value of
RunConfig.pretrained that starts a run from one.

Folder layout (LIGHTBOX_HOME/encoders/<id>/):
    encoder.pt      a state dict of the target architecture (engine.models.weights.load_file reads it)
    encoder.json    arch, channels, image size, mode, epochs, losses, unlabeled set, owner, created
"""
from __future__ import annotations

import json
from pathlib import Path

from engine import workspace
from engine.accounts import access
from engine.data.manifest import DATASET_ID
from engine.errors import UserError, shown

PREFIX = "encoder:"              # RunConfig.pretrained = "encoder:ID"
WEIGHTS_FILE = "encoder.pt"
INFO_FILE = "encoder.json"
LISTED = ("id", "name", "arch", "created", "owner", "mode", "image_size", "channels", "epochs", "loss",
          "input_loss", "images", "unlabeled_id")


def encoders_root() -> Path:
    path = workspace.home() / "encoders"
    path.mkdir(parents=True, exist_ok=True)
    return path


def encoder_dir(encoder_id: str) -> Path:
    """The encoder's folder; an id pre-training could not have made, or an unknown one, is refused in one line."""
    if not isinstance(encoder_id, str) or not DATASET_ID.fullmatch(encoder_id) or ".." in encoder_id \
            or not (encoders_root() / encoder_id / INFO_FILE).is_file():
        raise UserError(f"Pre-trained encoder '{shown(encoder_id)}' does not exist; pre-train one first or pick one "
                        "from the list (python -m engine encoders).")
    return encoders_root() / encoder_id


def encoder_path(encoder_id: str) -> Path:
    """The weights file of an encoder, in the format engine.models.weights.load_file accepts."""
    return encoder_dir(encoder_id) / WEIGHTS_FILE


def load_encoder(encoder_id: str) -> dict:
    return json.loads((encoder_dir(encoder_id) / INFO_FILE).read_text())


def can_see(actor, info: dict) -> bool:
    """Operator and instructors see every encoder; a student their own, their instructors' and ownerless ones
    (made before accounts existed), as for datasets."""
    return access.can_see_dataset(actor, info)


def check_encoder(actor, encoder_id: str) -> dict:
    """The encoder's info when the actor may start a run from it; refused in one line otherwise."""
    info = load_encoder(encoder_id)
    if actor is not None and not can_see(actor, info):
        raise UserError(f"Pre-trained encoder {encoder_id} belongs to another student; use your own encoders or "
                        "those your instructor shared.")
    return info


def list_encoders(actor=None) -> list[dict]:
    """The encoders the actor may use, newest first: id, name, arch, created, owner and what they were made from."""
    found = []
    for path in encoders_root().glob(f"*/{INFO_FILE}"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue                              # a half-written or damaged folder is not an encoder
        if actor is None or can_see(actor, info):
            found.append({key: info.get(key) for key in LISTED})
    return sorted(found, key=lambda e: e.get("created") or "", reverse=True)


def resolve_encoder(value: object) -> Path | None:
    """The weights file for a pretrained value "encoder:ID"; None for any other value (none, imagenet, a path,
    run:ID), so a caller can try it first. An unknown id is refused in one sentence."""
    if not isinstance(value, str) or not value.strip().lower().startswith(PREFIX):
        return None
    return encoder_path(value.strip()[len(PREFIX):].strip())
