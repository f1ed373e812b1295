"""What predictions turn into: mask PNGs, a results CSV, and a whole ZIP of images predicted in one go."""
from __future__ import annotations

import csv
import hashlib
import re
import zipfile
import zlib
from io import BytesIO, StringIO
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from engine import workspace
from engine.accounts import access
from engine.accounts.actor import Actor
from engine.data.layout import MASK_FOLDERS, MASK_SUFFIXES
from engine.errors import UserError
from engine.inference.predict import READABLE, Prediction, load_predictor


def mask_png(prediction: Prediction) -> bytes:
    """The predicted mask as a PNG that ingest reads back: 0/255 for two classes, class indices otherwise."""
    labels = prediction.label_map
    if labels is None:
        raise UserError("Only segmentation runs produce masks; this run classifies whole images.")
    values = labels * 255 if len(prediction.classes) == 2 else labels
    buffer = BytesIO()
    Image.fromarray(values.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def results_csv(rows: list[dict]) -> str:
    """CSV text with the union of the rows' columns, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def output_stem(name: str, frame: int, frames: int) -> str:
    """A flat, safe file name for an input's outputs (folders become '__', odd characters '_')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(name).with_suffix("")).replace("/", "__"))
    if len(stem) > 120:             # a file name stops at 255 bytes; a ZIP member's name can be 64 KB
        stem = f"{stem[:100]}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return f"{stem}_frame{frame:03d}" if frames > 1 else stem


def masks_by_image_stem(named: Sequence[tuple[str, object]]) -> dict[str, object]:
    """Masks keyed by the stem of the image they score: 'a.png' and 'a_mask.png' (or _seg, _gt, …) both score
    'a.png'; a mask with exactly the image's stem wins over a suffixed one."""
    out: dict[str, object] = {}
    for name, mask in named:
        out.setdefault(Path(name).stem, mask)
    for name, mask in named:
        stem = Path(name).stem
        for suffix in MASK_SUFFIXES:
            if stem.lower().endswith(suffix):
                out.setdefault(stem[: -len(suffix)], mask)
    return out


def zip_members(archive, label: str, with_masks: bool = True) -> tuple[list, dict[str, object]]:
    """(image members, masks by file stem); folders, hidden files and macOS resource forks are skipped,
    and an archive with a path that leaves it is refused (it is built to write outside its folder). Without
    `with_masks` (classification runs) files in labels/, gt/ … folders are images like any other."""
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > workspace.MAX_UPLOAD_FILES or sum(m.file_size for m in members) > workspace.MAX_UPLOAD_BYTES:
        raise UserError(f"{label} is too large to predict on in one go; split it into smaller ZIPs.")
    images, masks = [], []
    for member in members:
        parts = Path(member.filename.replace("\\", "/")).parts
        if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise UserError(f"{label} contains the unsafe path '{member.filename}'; "
                            "re-create the ZIP from a plain folder.")
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if with_masks and MASK_FOLDERS & {p.lower() for p in parts[:-1]}:
            masks.append((parts[-1], member))
        else:
            images.append(member)
    return images, masks_by_image_stem(masks)


def predict_zip(run_id: str, zip_path: Path | str, out_dir: Path | str, tta: bool | Sequence[str] = False,
                progress=None, actor: Actor | None = None) -> Path:
    """Predict every image in a ZIP; writes results.csv (one row per image or frame, unreadable files listed
    with the reason) and, for segmentation, one mask PNG per prediction under masks/. Returns the CSV path.
    A student predicts only with their own runs."""
    if actor is not None:
        access.check_run(actor, run_id, "predict with")
    predictor = load_predictor(run_id)
    out = Path(out_dir)
    label = Path(zip_path).name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{label} is not a readable ZIP file; re-create it and upload again.") from err
    rows: list[dict] = []
    with archive:
        images, masks = zip_members(archive, label, with_masks=predictor.task == "segmentation")
        if not images:
            raise UserError(f"{label} holds no files to predict on; put the images at the top level or in folders.")
        for done, member in enumerate(images, 1):
            mask = masks.get(Path(member.filename).stem)
            try:
                image, truth = _read_member(archive, member, label), _read_member(archive, mask, label)
                predictions = predictor.predict_file(image, member.filename, tta, truth,
                                                     mask.filename if mask else "")
            except UserError as err:
                rows.append({"file": member.filename, "error": str(err)})
                continue
            rows += [_zip_row(p, len(predictions), out) for p in predictions]
            if progress:
                progress(done, len(images))
    if all("error" in row for row in rows):
        raise UserError(f"None of the files in {label} could be read as an image ({READABLE}).")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    path.write_text(results_csv(rows))
    return path


# What zipfile raises for an entry whose bytes are damaged (a bad CRC, a cut or corrupt deflate stream, a
# compression method it lacks, an encrypted entry): the entry is named in the results, the others still predicted.
DAMAGED_ENTRY = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo | None, label: str) -> bytes | None:
    if member is None:
        return None
    try:
        return archive.read(member)
    except DAMAGED_ENTRY as err:
        raise UserError(f"{member.filename} is damaged inside {label}; re-create the ZIP.") from err


def _zip_row(prediction: Prediction, frames: int, out: Path) -> dict:
    row = prediction.row()
    if prediction.label_map is not None:
        target = out / "masks" / f"{output_stem(prediction.name, prediction.frame, frames)}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(mask_png(prediction))
        row["mask_path"] = str(target.relative_to(out))
    return row
