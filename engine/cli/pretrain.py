"""Pre-training commands: pretrain (an autoencoder on unlabeled images), encoders (list what it made)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from engine.cli.progress import Progress, file_progress
from engine.errors import UserError, one_line
from engine.pretrain import jobs, library
from engine.pretrain.autoencoder import pretrain
from engine.pretrain.unlabeled import ingest_unlabeled, load_unlabeled


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-options takes a JSON object, e.g. '{\"depth\": 3}'")
    return value


def cmd_pretrain(args) -> dict:
    report = (lambda **fields: jobs.write_status(args.progress_file, pid=os.getpid(), **fields)) if args.progress_file \
        else None
    try:
        result = _pretrain(args, report)
    except Exception as err:
        if report:
            message = str(err) if isinstance(err, UserError) else f"unexpected {type(err).__name__}: {err}"
            report(state="failed", message=one_line(message, 600))
        raise
    if report:
        report(state="done", **result)
    return result


def _pretrain(args, report) -> dict:
    owner = args.actor.name if args.actor else None
    if bool(args.images) == bool(args.unlabeled):
        raise UserError("Give the unlabeled images with --images FOLDER_OR_ZIP, or an uploaded set with "
                        "--unlabeled ID (one of the two).")
    if args.images:
        src = Path(args.images)
        if not src.exists():
            raise UserError(f"{src} does not exist; give a folder or a .zip file of images.")
        set_id = ingest_unlabeled(src, args.name, owner, file_progress("Reading images", enabled=not args.quiet))
    else:
        set_id = args.unlabeled
    source = load_unlabeled(set_id)
    if args.actor is not None and not library.can_see(args.actor, source):
        raise UserError(f"Unlabeled image set {set_id} belongs to another student; use your own images or those "
                        "your instructor shared.")
    bar = Progress("Pre-training", "epoch") if not args.quiet else None

    def progress(epoch: int, epochs: int, loss: float) -> None:
        if bar:
            bar.note(f"loss {loss:.4f}")
            bar.update(epoch, epochs)
        if report:
            report(state="running", epoch=epoch, epochs=epochs, loss=loss, unlabeled_id=set_id)

    if report:
        report(state="running", epoch=0, epochs=args.epochs, unlabeled_id=set_id)
    try:
        encoder_id = pretrain(set_id, args.arch, args.image_size, args.epochs, args.mode, args.device, args.seed,
                              progress, batch_size=args.batch_size, lr=args.lr,
                              model_options=args.model_options, owner=owner)
    finally:
        if bar:
            bar.finish()
    info = library.load_encoder(encoder_id)
    return {"encoder_id": encoder_id, "weights": str(library.encoder_path(encoder_id)),
            "pretrained": f"{library.PREFIX}{encoder_id}", "arch": info["arch"], "mode": info["mode"],
            "history": info["history"], "loss": info["loss"], "input_loss": info["input_loss"],
            "seconds": info["seconds"], "unlabeled_id": set_id, "images": source["images"],
            "skipped": source["skipped"], "problems": source["problems"][:20]}


def cmd_encoders(args) -> dict:
    return {"encoders": library.list_encoders(args.actor)}


def register(add) -> None:
    p = add("pretrain", "pre-train an architecture as an autoencoder on unlabeled images")
    p.add_argument("--images", default=None, metavar="FOLDER_OR_ZIP", help="a folder or ZIP of images, no labels")
    p.add_argument("--unlabeled", default=None, metavar="ID", help="an unlabeled set uploaded before")
    p.add_argument("--arch", default="unet", help="the architecture to pre-train (default unet)")
    p.add_argument("--mode", default="denoising", metavar="denoising|masked",
                   help="denoising: remove added noise; masked: fill in hidden patches (default denoising)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--name", default=None, help="a name for the unlabeled set (with --images)")
    p.add_argument("--model-options", type=_json_object, default=None, metavar="JSON",
                   help="architecture settings, e.g. '{\"depth\": 3}' (use the same ones when fine-tuning)")
    p.add_argument("--progress-file", default=None, help=argparse.SUPPRESS)    # the Pre-train page's status file
    p.set_defaults(handler=cmd_pretrain)
    add("encoders", "list the pre-trained encoders").set_defaults(handler=cmd_encoders)
