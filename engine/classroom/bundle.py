"""A reproducible hand-in: one ZIP with everything needed to re-run a run and check its result, and `reproduce`,
which re-runs it here (same settings, same seed, the same data found by its fingerprint) and reports the difference.

Bundle contents: bundle.json (run id, seed, dataset fingerprint, library versions, headline metric), config.json,
metrics.csv (per-epoch history), diagnosis.json, model/ (the export: TorchScript, preprocessing, model card),
README.txt. A student's bundle of a run on a hidden test split carries no test values (nor does its model card)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.config import RunConfig
from engine.data.manifest import list_datasets, load_manifest
from engine.diagnosis import diagnose
from engine.errors import UserError, shown
from engine.inference.export import CARD_FILE, export_run
from engine.runs import execute, store
from engine.runs.paths import has_best_checkpoint
from engine.runs.submit import create_run
from engine.training.events import Handler

FORMAT = 1
MAX_MEMBER_BYTES = 1 << 20        # bundle.json and config.json are a few KB; anything larger is not ours
SAMPLE_FIELDS = ("key", "source", "split", "label", "height", "width", "channels", "mean")
REPO = Path(__file__).resolve().parents[2]


def dataset_fingerprint(manifest: dict) -> str:
    """sha256 of what the images are and how they are split: task, classes, and per sample its key, source file,
    split, label, size and mean intensity. Patient pseudonyms are left out: they are keyed per workspace."""
    samples = [{k: s.get(k) for k in SAMPLE_FIELDS} for s in manifest.get("samples", [])]
    text = json.dumps({"task": manifest.get("task"), "classes": manifest.get("classes"), "samples": samples},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "lightbox_commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


# ---- making a bundle -----------------------------------------------------------------------------------------

def make_bundle(actor: Actor | None, run_id: str, out_path: Path | str) -> dict:
    """Write the bundle of a finished run to out_path (a .zip); returns {"path", "run_id", "fingerprint", "files"}."""
    run = access.check_run(actor, run_id, "download a bundle of")
    if run["status"] != "done" or not has_best_checkpoint(run["id"]):
        raise UserError(f"Run {run['id']} has not finished ({run['status']}); bundle a run that is done.")
    try:
        manifest = load_manifest(run["dataset_id"])
    except UserError:
        raise UserError(f"The dataset of run {run['id']} is no longer in the workspace, so the bundle could not "
                        "name the data it was trained on.") from None
    hidden = assignments.hides_test_from(actor, run["dataset_id"])
    history = store.epoch_metrics_many([run["id"]])[run["id"]]
    info = {
        "format": FORMAT, "run_id": run["id"], "name": run.get("name") or "", "seed": run["config"].get("seed"),
        "dataset": {"id": manifest["id"], "name": manifest.get("name"), "task": manifest.get("task"),
                    "fingerprint": dataset_fingerprint(manifest), "images": len(manifest.get("samples", []))},
        "versions": library_versions(),
        "headline": {"metric": run["best_metric"], "value": run["best_value"], "split": "val",
                     "epoch": run["best_epoch"]},
        "test": None if hidden else _scalars(run.get("test")),
        "created_at": assignments.iso(store.now()),
    }
    out = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="lightbox-bundle-") as tmp:
        model_files = export_run(run["id"], Path(tmp) / "model")
        if hidden:
            card = model_files["model_card"]
            card.write_text(_without_test_section(card.read_text()))
        members = {
            "bundle.json": json.dumps(info, indent=2, default=str),
            "config.json": json.dumps(run["config"], indent=2, sort_keys=True),
            "metrics.csv": _history_csv(history),
            "diagnosis.json": json.dumps(diagnose(run, history, manifest), indent=2, default=str),
            "README.txt": _readme(info),
        }
        _write_zip(out, members, {f"model/{p.name}": p for p in model_files.values()})
    return {"path": str(out), "run_id": run["id"], "fingerprint": info["dataset"]["fingerprint"],
            "files": sorted([*members, *(f"model/{p.name}" for p in model_files.values())])}


def _scalars(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _without_test_section(card: str) -> str:
    """The model card with its held-out test section replaced by a note (the test split is still hidden)."""
    out, skipping = [], False
    for line in card.splitlines():
        if line.startswith("## "):
            skipping = line.startswith("## Held-out test")
            if skipping:
                out += [line, "_Hidden until the instructor releases the assignment's test results._", ""]
                continue
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def _history_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["epoch", "step", "split", "name", "value"])
    for row in rows:
        writer.writerow([row["epoch"], row["step"], row["split"], row["name"],
                         "" if row["value"] is None else row["value"]])
    return buffer.getvalue()


def _readme(info: dict) -> str:
    head = info["headline"]
    return "\n".join([
        f"Lightbox run {info['run_id']} — a reproducible bundle", "",
        f"Dataset: {info['dataset']['name']} ({info['dataset']['images']} images), "
        f"fingerprint sha256 {info['dataset']['fingerprint']}",
        f"Seed: {info['seed']}",
        f"Best validation {head['metric']}: {head['value']} (epoch {head['epoch']})", "",
        "Files:",
        "  bundle.json     run id, seed, dataset fingerprint, library versions, headline metric",
        "  config.json     every setting of the run (engine.config.RunConfig)",
        "  metrics.csv     the metric history, one row per epoch, split and metric",
        "  diagnosis.json  what Lightbox noticed about the run (over- or underfitting, ...)",
        "  model/          the exported model: TorchScript, preprocessing.json, model card", "",
        "To re-run it, ingest the same images into a Lightbox workspace, then:",
        "  python -m engine reproduce THIS.zip",
        "It trains the same settings with the same seed and reports the difference in the headline metric. On the",
        "same hardware and library versions the difference is small; another device or version may move it a little.",
        "",
    ])


def _write_zip(out: Path, texts: dict[str, str], files: dict[str, Path]) -> None:
    """Written to a temporary file next to out, then renamed: a failure never leaves half a bundle."""
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, text in texts.items():
                archive.writestr(name, text)
            for name, path in files.items():
                archive.write(path, name)
        os.replace(temp, out)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise UserError(f"Could not write the bundle to {shown(out, 200)}: {err.strerror or 'write failed'}; "
                        "choose another file or folder.") from None


# ---- reproducing ---------------------------------------------------------------------------------------------

def read_bundle(bundle_path: Path | str) -> tuple[dict, dict]:
    """(bundle.json, config.json) of a bundle; anything else (not a ZIP, not ours, damaged) in one sentence."""
    path = Path(bundle_path)
    label = shown(path.name, 80)
    if not path.is_file():
        raise UserError(f"{label} is not a file; give the bundle's .zip.")
    try:
        with zipfile.ZipFile(path) as archive:
            return tuple(_member_json(archive, name, label) for name in ("bundle.json", "config.json"))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserError(f"{label} is not a readable ZIP file; download the bundle again.") from err


def _member_json(archive: zipfile.ZipFile, name: str, label: str) -> dict:
    try:
        member = archive.getinfo(name)
    except KeyError:
        raise UserError(f"{label} is not a Lightbox bundle (it has no {name}); download the bundle again.") from None
    if member.file_size > MAX_MEMBER_BYTES:
        raise UserError(f"{label} is not a Lightbox bundle ({name} is too large); download the bundle again.")
    try:
        data = json.loads(archive.read(member))
    except (ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{label} is damaged ({name} cannot be read); download the bundle again.") from err
    if not isinstance(data, dict):
        raise UserError(f"{label} is not a Lightbox bundle ({name} is not a settings object).")
    return data


def find_dataset(fingerprint: str, hint: str | None = None) -> str | None:
    """The id of a dataset in this workspace with this fingerprint (the bundle's own id first), or None."""
    ids = [hint] if hint else []
    ids += [m["id"] for m in list_datasets() if m.get("id") and m.get("id") != hint]
    for dataset_id in ids:
        try:
            if dataset_fingerprint(load_manifest(dataset_id)) == fingerprint:
                return dataset_id
        except (UserError, OSError, ValueError):
            continue
    return None


def reproduce(bundle_path: Path | str, actor: Actor | None = None, handlers: Sequence[Handler] = ()) -> dict:
    """Re-run a bundle's settings and seed here, on the dataset with its fingerprint; returns
    {"run_id", "status", "metric", "original", "reproduced", "difference", "dataset_id"}."""
    info, settings = read_bundle(bundle_path)
    data = info.get("dataset") or {}
    fingerprint = data.get("fingerprint")
    if not isinstance(fingerprint, str):
        raise UserError(f"{shown(Path(bundle_path).name, 80)} is not a Lightbox bundle (it names no dataset "
                        "fingerprint); download the bundle again.")
    dataset_id = find_dataset(fingerprint, data.get("id") if isinstance(data.get("id"), str) else None)
    if dataset_id is None:
        raise UserError(f"No dataset in this workspace holds the images of '{shown(data.get('name'))}' "
                        f"(fingerprint {fingerprint[:12]}…); ingest the same images with the same split first.")
    try:
        config = RunConfig.from_dict({**settings, "dataset_id": dataset_id}).validate()
    except (TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{shown(Path(bundle_path).name, 80)} holds settings this Lightbox cannot read "
                        "(config.json); download the bundle again.") from err
    run_id = create_run(config, status="starting", actor=actor)     # a student: own dataset access and limits
    run = execute.run_job(run_id, handlers=handlers)
    head = info.get("headline") or {}
    metric = head.get("metric") or run.get("best_metric")
    original, reproduced = head.get("value"), (run.get("best") or {}).get(metric)
    out: dict[str, Any] = {"run_id": run_id, "status": run["status"], "message": run.get("message") or "",
                           "dataset_id": dataset_id, "metric": metric,
                           "original": {metric: original}, "reproduced": {metric: reproduced},
                           "difference": _difference(reproduced, original)}
    test_metric = f"test_{metric}"
    test = (info.get("test") or {}).get(metric)
    if test is not None and not assignments.hides_test_from(actor, dataset_id):
        out["original"][test_metric] = test
        out["reproduced"][test_metric] = (run.get("test") or {}).get(metric)
    return out


def _difference(new: Any, old: Any) -> float | None:
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        return float(new) - float(old)
    return None
