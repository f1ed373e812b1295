"""Data commands: demo-data, demo-setup, ingest, datasets, delete-dataset."""
from __future__ import annotations

from pathlib import Path

from engine.accounts import access
from engine.cli.progress import file_progress
from engine.data.demo import ensure_demo_dataset, write_demo
from engine.data.ingest import ingest
from engine.data.manifest import list_datasets
from engine.errors import UserError
from engine.runs import lifecycle
from engine.tasks import TASKS


def cmd_demo_data(args) -> dict:
    options = {"n": args.n} if args.n else {}
    out = write_demo(args.kind, Path(args.out), size=args.size, seed=args.seed, **options)
    return {"path": str(out), "kind": args.kind}


def cmd_demo_setup(args) -> dict:
    """Make sure both built-in demo datasets are ingested (what `make run` starts with)."""
    return {kind: ensure_demo_dataset(kind) for kind in TASKS[::-1]}


def cmd_ingest(args) -> dict:
    src = Path(args.src)
    if not src.exists():
        raise UserError(f"{src} does not exist; give a folder or a .zip file.")
    result = ingest(src, task=args.task, name=args.name, seed=args.seed, group_by=args.group_by,
                    progress=file_progress("Ingesting", enabled=not args.quiet),
                    owner=args.actor.name if args.actor else None)
    return {"dataset_id": result.dataset_id, "report": result.report.to_dict()}


def cmd_datasets(args) -> dict:
    keys = ("id", "name", "task", "created", "source", "classes", "channels", "split_counts", "owner")
    return {"datasets": [{k: m.get(k) for k in keys} | {"samples": sum((m.get("split_counts") or {}).values())}
                         for m in access.visible_datasets(args.actor, list_datasets())]}


def cmd_delete_dataset(args) -> dict:
    return {"dataset_id": args.dataset_id, "status": lifecycle.delete_dataset(args.dataset_id, actor=args.actor)}


def register(add) -> None:
    p = add("demo-data", "write a built-in demo dataset (folder or .zip)")
    p.add_argument("kind", choices=TASKS[::-1])
    p.add_argument("out")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_demo_data)

    add("demo-setup", "ingest the built-in demo datasets once").set_defaults(handler=cmd_demo_setup)
    add("datasets", "list the ingested datasets").set_defaults(handler=cmd_datasets)
    p = add("delete-dataset", "delete an ingested dataset (runs trained on it keep their results)")
    p.add_argument("dataset_id")
    p.set_defaults(handler=cmd_delete_dataset)

    p = add("ingest", "validate and cache a folder or ZIP of images")
    p.add_argument("src")
    p.add_argument("--task", required=True, choices=TASKS[::-1])
    p.add_argument("--name", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-by", default="auto", metavar="auto|none|folder|REGEX",
                   help="which images belong to one patient and so share a split: auto (DICOM PatientID, a folder "
                        "per patient or a leading ID in the file names, when one fits), none, folder, or a regular "
                        "expression on the path as uploaded whose first group (or whole match) is the key")
    p.set_defaults(handler=cmd_ingest)
