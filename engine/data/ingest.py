"""Turn an upload (folder or ZIP) into a dataset folder: validate, decode once, split, write arrays + manifest."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from engine import workspace
from engine.data import dataset, io
from engine.data.checks import find_warnings
from engine.data.dicom import NotAnImage
from engine.data.duplicates import near_duplicate_sets, thumbnail
from engine.data.fingerprint import compute_fingerprint
from engine.data.groups import AUTO, check_group_by
from engine.data.layout import Item, Layout, problem, scan
from engine.data.split_plan import split_rows
from engine.data.splits import SPLITS
from engine.data.uploads import extract_zip, write_files
from engine.errors import UserError
from engine.tasks import TASKS

Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    """What ingest found: counts, sizes, types and every skipped file with the reason."""
    task: str
    source: str
    files_seen: int = 0
    samples: int = 0
    classes: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)            # "HxW" → number of images
    dtypes: dict[str, int] = field(default_factory=dict)           # stored sample type → number of files
    modalities: dict[str, int] = field(default_factory=dict)
    channels: int = 1
    patients: int = 0                                              # distinct PatientIDs (DICOM)
    groups: dict = field(default_factory=dict)                     # {"key", "count", "spanning_splits", …}
    warnings: list[dict] = field(default_factory=list)             # {"kind", "message", …}: see checks.py
    mask_values: list[int] = field(default_factory=list)           # label values as stored in the mask files
    mask_levels: dict[str, int] = field(default_factory=dict)      # stored value → class, when they differ
    problems: list[dict] = field(default_factory=list)             # {"file", "kind", "message"}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IngestResult:
    dataset_id: str
    report: IngestReport


@dataclass
class _Decoded:
    """The worker's answer for one upload file: frames already saved under temporary names."""
    item: Item
    digest: str = ""
    frames: list[tuple[str, int, int, int]] = field(default_factory=list)   # (temp key, H, W, channels)
    dtype: str = ""
    patient: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    thumbs: list[np.ndarray] = field(default_factory=list)     # per frame, for near-duplicates
    means: list[float] = field(default_factory=list)           # per frame, mean brightness (shortcut check)
    mask_values: set = field(default_factory=set)     # as stored in the files (mapped to classes at the end)
    problem: dict | None = None


def ingest(src: Path, task: str, name: str | None = None, seed: int = 0,
           progress: Progress | None = None, workers: int | None = None, group_by: str = AUTO,
           owner: str | None = None) -> IngestResult:
    """Ingest a folder or .zip into workspace.datasets_dir()/<id>/; bad files are reported and skipped.

    `group_by` says which images belong to one patient and so share a split: auto (DICOM PatientID, a folder per
    patient or a leading ID in the file names, when one fits), none, folder, or a regular expression whose first
    group (or whole match) on the path as uploaded is the key. `owner`: the user it belongs to (classroom mode;
    None without accounts)."""
    src = Path(src)
    if task not in TASKS:
        raise UserError(f"Unknown task '{task}'; choose classification or segmentation.")
    group_by = check_group_by(group_by)
    if not src.exists():
        raise UserError(f"{src} does not exist; check the path.")
    with workspace.scratch("ingest-") as scratch:
        folder, skipped = src, []
        if src.is_file():
            folder = scratch / "upload"
            skipped = extract_zip(src, folder)      # checks every ZIP rule before writing anything
        return _ingest_folder(folder, task, name or _stem(src), src.name, seed, progress, workers, scratch, group_by,
                              skipped, owner)


def ingest_files(files: list[tuple[str, bytes]], task: str, name: str | None = None, seed: int = 0,
                 progress: Progress | None = None, group_by: str = AUTO, owner: str | None = None) -> IngestResult:
    """Ingest loose uploaded files, given as (relative path, content); a single .zip is read as an archive."""
    if not files:
        raise UserError("No files were uploaded; add images or a ZIP and try again.")
    with workspace.scratch("ingest-") as scratch:
        folder = scratch / "upload"
        skipped = write_files(files, folder)
        if len(files) == len(skipped):            # nothing could be written: say why, not 'nothing usable'
            raise UserError(skipped[0]["message"])
        if len(files) == 1 and files[0][0].lower().endswith(".zip"):
            zipped = next(p for p in folder.rglob("*") if p.is_file())
            return ingest(zipped, task, name or _stem(zipped), seed, progress, group_by=group_by, owner=owner)
        source = Path(files[0][0].replace("\\", "/")).parts[0] if len(files) > 1 else files[0][0]
        return _ingest_folder(folder, task, name or _stem(Path(source)), source, seed, progress, None, scratch,
                              check_group_by(group_by), skipped, owner)


def _ingest_folder(folder: Path, task: str, name: str, source: str, seed: int,
                   progress: Progress | None, workers: int | None, scratch: Path, group_by: str,
                   skipped: list[dict], owner: str | None = None) -> IngestResult:
    found = scan(folder, task)
    report = IngestReport(task=task, source=source, files_seen=found.files_seen + len(skipped),
                          problems=[*skipped, *found.problems])      # skipped: entries the disk could not hold
    staging = scratch / "dataset"
    (staging / "images").mkdir(parents=True)
    if task == "segmentation":
        (staging / "masks").mkdir()
    decoded = _decode_all(found.items, staging, task, progress, workers)
    kept = _drop_bad_and_duplicates(decoded, report)
    if task == "segmentation":
        kept = _drop_odd_masks(kept, report)
    levels = _mask_levels(kept) if task == "segmentation" else {}
    classes, labels = _classes(found, kept, task, report, levels)
    dataset_id = f"{_slug(name)}-{secrets.token_hex(3)}"
    manifest = _manifest(dataset_id, name, task, source, kept, classes, labels, seed, staging, report, levels,
                         group_by)
    manifest["owner"] = owner
    manifest["fingerprint"] = compute_fingerprint(manifest, staging)     # what the Auto preset chooses from
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    staging.rename(workspace.datasets_dir() / dataset_id)   # the dataset appears whole or not at all
    return IngestResult(dataset_id, report)


# ---- decode, check, assemble ---------------------------------------------------------------------------

def _decode_all(items: list[Item], staging: Path, task: str,
                progress: Progress | None, workers: int | None) -> list[_Decoded]:
    total, done, results = len(items), 0, []
    if progress:
        progress(0, total)
    # Pillow and zlib release the GIL while decoding; 2–4 threads is what a small CPU can use (see benchmarks/)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_decode_one, i, item, staging, task) for i, item in enumerate(items)]
        for future in as_completed(futures):
            results.append(future.result())
            done += 1
            if progress:
                progress(done, total)
    return sorted(results, key=lambda r: r.item.path)


def _decode_one(index: int, item: Item, staging: Path, task: str) -> _Decoded:
    out = _Decoded(item)
    try:
        data = item.file.read_bytes()
        out.digest = hashlib.sha256(data).hexdigest()
        image = io.decode_file(data, item.path)
    except NotAnImage as err:
        return _fail(out, item.path, "unsupported", str(err))
    except UserError as err:
        return _fail(out, item.path, "unreadable", str(err))
    except Exception as err:  # a decoder tripping on a malformed file must skip that file, not stop the upload
        return _fail(out, item.path, "unreadable", f"{item.path} could not be read ({type(err).__name__}: {err}).")
    masks = [None] * len(image.frames)
    if task == "segmentation":
        masks, problem = _read_masks(item, image.frames, out)
        if problem:
            out.problem = problem
            return out
    out.dtype, out.patient, out.modality, out.manufacturer = (image.dtype, image.patient, image.modality,
                                                              image.manufacturer)
    for f, (frame, mask) in enumerate(zip(image.frames, masks)):
        out.thumbs.append(thumbnail(frame))
        out.means.append(round(float(frame.mean()), 4))
        key = f"{index:06d}-{f:05d}"
        np.save(staging / "images" / f"{key}.npy", dataset.cap_image(frame).astype(np.float16))
        if mask is not None:
            np.save(staging / "masks" / f"{key}.npy", dataset.cap_mask(mask))
        out.frames.append((key, frame.shape[1], frame.shape[2], frame.shape[0]))   # original size, for the report
    return out


def _read_masks(item: Item, frames: list[np.ndarray], out: _Decoded) -> tuple[list, dict | None]:
    try:
        raw = io.read_mask_frames(item.mask.read_bytes(), item.mask_path)
    except io.LabelRangeError as err:
        return [], problem(item.mask_path, "mask_labels_out_of_range", str(err))
    except UserError as err:
        return [], problem(item.mask_path, "unreadable", str(err))
    except Exception as err:  # as for images: one bad mask skips one sample
        return [], problem(item.mask_path, "unreadable",
                            f"{item.mask_path} could not be read ({type(err).__name__}: {err}).")
    if len(raw) != len(frames) or any(m.shape != f.shape[1:] for m, f in zip(raw, frames)):
        have = f"{len(raw)} frame(s) of {raw[0].shape[0]}x{raw[0].shape[1]}"
        want = f"{len(frames)} frame(s) of {frames[0].shape[1]}x{frames[0].shape[2]}"
        return [], problem(item.mask_path, "mask_size_mismatch",
                            f"{item.mask_path} has {have} but its image {item.path} has {want}.")
    values = set().union(*(np.unique(m).tolist() for m in raw))
    if not io.usable_alone(values):          # e.g. a JPEG mask, whose edges smear into dozens of values
        return [], problem(item.mask_path, "mask_labels_out_of_range", str(io.label_error(values, item.mask_path)))
    out.mask_values = values
    return raw, None


def _drop_bad_and_duplicates(decoded: list[_Decoded], report: IngestReport) -> list[_Decoded]:
    first_by_digest: dict[str, str] = {}
    kept = []
    for result in decoded:
        if result.problem:
            report.problems.append(result.problem)
        elif result.digest in first_by_digest:
            original = first_by_digest[result.digest]
            report.problems.append(problem(result.item.path, "duplicate",
                                            f"{result.item.path} has the same content as {original}; kept one."))
        else:
            first_by_digest[result.digest] = result.item.path
            kept.append(result)
    return kept


def _drop_odd_masks(kept: list[_Decoded], report: IngestReport) -> list[_Decoded]:
    """Skip (and name) the few masks holding a value outside the set the other masks agree on, when that value
    would open a gap in the classes or renumber them: one 0/1/7 mask among 0/1 masks must not make an 8-class
    task, nor one 0/3 mask among 0/255 masks refuse the upload.

    A value is 'rare' when at most 1 in 20 masks (at least one) holds it. Rare values that extend the classes
    without a new gap are kept, in order (a class 3 on 2 of 40 cardiac slices, after 0..2), so are grey levels on
    the grid the others use; a gap every mask shares (labels 0, 1, 2, 4) is not touched, as nothing is rare."""
    values = set().union(*(r.mask_values for r in kept))
    levels = io.mask_levels(values)
    if len(kept) < 2 or (levels is not None and not _missing_classes(levels)):
        return kept
    counts = Counter(v for r in kept for v in r.mask_values)
    few = max(1, len(kept) // 20)
    agreed = {v for v, n in counts.items() if n > few}
    base = io.mask_levels(agreed) if agreed else None
    if base is None or len(set(base.values())) < 2:
        return kept      # no common classes to judge by (only background agreed): _mask_levels decides as before
    odd = set()
    for value in sorted(values - agreed):
        grown = io.mask_levels(agreed | {value})
        if (grown is not None and all(grown[v] == base[v] for v in agreed)
                and _missing_classes(grown) <= _missing_classes(base)):
            agreed.add(value)
            base = grown
        else:
            odd.add(value)
    if not odd:
        return kept
    common = ", ".join(map(str, sorted(agreed)[:8])) + (", …" if len(agreed) > 8 else "")
    classes = max(base.values()) + 1
    for result in kept:
        if mine := sorted(result.mask_values & odd):
            shown = ", ".join(map(str, mine))
            users = max(counts[v] for v in mine)
            use = "uses" if users == 1 else "use"
            report.problems.append(problem(
                result.item.mask_path, "mask_labels_out_of_range",
                f"{result.item.mask_path} holds {shown}, which only {users} of the {len(kept)} masks {use} (the "
                f"other masks hold {common}); it was skipped so the dataset keeps its {classes} classes — correct "
                f"that mask and upload it again if {shown} is a real class."))
    return [r for r in kept if not r.mask_values & odd]


def _missing_classes(levels: dict[int, int]) -> set[int]:
    """Class numbers below the highest that no value maps to (0, 1, 7 leaves 2..6 missing)."""
    return set(range(max(levels.values(), default=0) + 1)) - set(levels.values())


def _mask_levels(kept: list[_Decoded]) -> dict[int, int]:
    """One value → class mapping for all the masks of the upload (a slice may lack a class others have)."""
    values = set().union(*(r.mask_values for r in kept))
    levels = io.mask_levels(values)
    if levels is None:
        # Show how the masks disagree: the two most common sets of values, each with a file that has it
        kinds = Counter(tuple(sorted(r.mask_values)) for r in kept).most_common(2)
        examples = "; ".join(
            f"{next(r.item.mask_path for r in kept if tuple(sorted(r.mask_values)) == kind)} holds "
            f"{', '.join(map(str, kind[:6]))}{', …' if len(kind) > 6 else ''}" for kind, _ in kinds)
        raise UserError(f"The masks use {len(values)} different values between them, which cannot be read as one "
                        f"set of classes (e.g. {examples}). Save every mask with the same label values "
                        f"(0/255, class indices 0–{io.MAX_LABEL}, or up to {io.MAX_GREY_LEVELS} grey levels), "
                        "as PNG.")
    return levels


def _classes(found: Layout, kept: list[_Decoded], task: str, report: IngestReport,
             levels: dict[int, int]) -> tuple[list[str], list[int | None]]:
    if not kept:
        reasons = Counter(p["kind"] for p in report.problems)
        detail = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in reasons.most_common()) or "no image files"
        raise UserError(f"Nothing usable was found in the upload ({detail}); see the layout help and try again.")
    if task == "segmentation":
        top = max(levels.values(), default=0)
        named = [f"class {k}" for k in range(1, top + 1)] if top > 1 else ["foreground"]
        classes = ["background", *named]
        return classes, [None] * len(kept)
    used = sorted({r.item.label for r in kept})
    for empty in sorted(set(found.class_names) - set(used)):
        report.problems.append(problem(empty, "empty_class",
                                        f"Class folder '{empty}' has no usable image; it was left out."))
    if len(used) < 2:
        raise UserError(f"Classification needs at least 2 class folders with images; found {len(used)} "
                        f"({', '.join(used) or 'none'}). Put each class's images in its own folder.")
    return used, [used.index(r.item.label) for r in kept]


def _manifest(dataset_id: str, name: str, task: str, source: str, kept: list[_Decoded], classes: list[str],
              labels: list[int | None], seed: int, staging: Path, report: IngestReport,
              levels: dict[int, int], group_by: str) -> dict:
    channels = 3 if any(c == 3 for r in kept for *_, c in r.frames) else 1
    remap = levels if any(value != label for value, label in levels.items()) else {}    # grey levels → classes
    rows = _rows(kept, labels, task, staging, channels, remap)
    thumbs = [t for result in kept for t in result.thumbs]
    copies = near_duplicate_sets(np.stack(thumbs))
    report.groups = split_rows(rows, classes, group_by, copies, seed)     # patients and copies share a split
    for number, members in enumerate(copies):
        for i in members:
            rows[i]["near_duplicate"] = number
    if not any(row["split"] == "train" for row in rows):
        raise UserError("The upload has no training images (only val/ or test/ folders); add a train/ folder.")
    for leftover in staging.glob("*/*-*.npy"):
        leftover.unlink()                                  # arrays of skipped duplicates
    _fill_report(report, kept, rows, classes, channels, task)
    report.warnings = find_warnings(rows, classes, task, report.groups, copies)
    if remap:
        report.mask_levels = {str(value): label for value, label in sorted(remap.items())}
    return {"id": dataset_id, "name": name, "task": task, "created": datetime.now(timezone.utc).isoformat(),
            "source": source, "channels": channels, "classes": classes, "num_classes": len(classes),
            "mask_levels": report.mask_levels, "samples": rows, "split_counts": report.per_split,
            "seed": seed, "group_by": group_by, "report": report.to_dict()}


def _rows(kept: list[_Decoded], labels: list[int | None], task: str, staging: Path, channels: int,
          remap: dict[int, int]) -> list[dict]:
    """One manifest row per stored frame (arrays renamed to their final keys), without its split yet."""
    secret = workspace.secret_key()
    rows = []
    for result, label in zip(kept, labels):
        many = len(result.frames) > 1
        for f, (temp_key, h, w, c) in enumerate(result.frames):
            key = f"{len(rows):06d}"
            _finish_arrays(staging, temp_key, key, c, channels, remap)
            rows.append({"key": key, "source": result.item.path + (f"#{f}" if many else ""), "split": "",
                         "patient": _pseudonym(result.patient, secret), "height": h, "width": w,
                         "modality": result.modality, "manufacturer": result.manufacturer, "channels": c,
                         "mean": result.means[f], "folder": result.item.folders[0] if result.item.folders else None,
                         "folder_split": result.item.split, "near_duplicate": None}
                        | ({"label": label} if task == "classification" else {}))
    return rows


def _pseudonym(patient: str | None, key: bytes) -> str | None:
    """A keyed hash of the PatientID: a patient's images still share a split and can be counted, but the
    manifest (and anything built from it) holds no identifier."""
    if not patient:
        return None
    return "patient-" + hmac.new(key, patient.encode(), hashlib.sha256).hexdigest()[:12]


def _finish_arrays(staging: Path, temp_key: str, key: str, have: int, channels: int,
                   remap: dict[int, int]) -> None:
    image = staging / "images" / f"{temp_key}.npy"
    if have != channels:        # a gray image in a colour dataset is repeated to 3 channels
        np.save(image, np.repeat(np.load(image), channels, axis=0))
    image.rename(staging / "images" / f"{key}.npy")
    mask = staging / "masks" / f"{temp_key}.npy"
    if mask.exists():
        if remap:                                   # stored values → class indices
            np.save(mask, io.apply_levels(np.load(mask), remap))
        mask.rename(staging / "masks" / f"{key}.npy")


def _fill_report(report: IngestReport, kept: list[_Decoded], rows: list[dict], classes: list[str],
                 channels: int, task: str) -> None:
    report.samples, report.classes, report.channels = len(rows), classes, channels
    split_counts = Counter(r["split"] for r in rows)
    report.per_split = {s: split_counts.get(s, 0) for s in SPLITS}
    if task == "classification":
        label_counts = Counter(r["label"] for r in rows)
        report.per_class = {c: label_counts.get(i, 0) for i, c in enumerate(classes)}
    report.sizes = dict(Counter(f"{r['height']}x{r['width']}" for r in rows).most_common())
    report.dtypes = dict(Counter(k.dtype for k in kept).most_common())
    report.modalities = dict(Counter(k.modality for k in kept if k.modality).most_common())
    report.patients = len({k.patient for k in kept if k.patient})
    report.mask_values = sorted(set().union(*(k.mask_values for k in kept)))


def _fail(out: _Decoded, file: str, kind: str, message: str) -> _Decoded:
    out.problem = problem(file, kind, message)
    return out


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24].strip("-")
    return slug or "dataset"


def _stem(path: Path) -> str:
    return path.stem if path.suffix.lower() == ".zip" else path.name
