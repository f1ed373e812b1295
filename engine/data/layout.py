"""Upload layouts: which files are images, their class folder or mask, and any split fixed by folder names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.data import io
from engine.errors import UserError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
IGNORED_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}
MASK_SUFFIXES = ("_mask", "-mask", "_seg", "-seg", "_segmentation", "_label", "-label", "_labels", "_gt")
# Folder names public datasets use for the two halves of a segmentation upload
IMAGE_FOLDERS = {"images", "image", "imgs", "img"}
MASK_FOLDERS = {"masks", "mask", "labels", "label", "gt", "ground_truth", "groundtruth", "segmentations",
                "annotations"}


@dataclass
class Item:
    """One image file to decode, with its class folder or mask, and a split fixed by the folders (if any)."""
    file: Path
    path: str                          # relative to the upload root, with '/'
    label: str | None = None
    split: str | None = None
    mask: Path | None = None
    mask_path: str | None = None
    folders: tuple[str, ...] = ()      # folders below the class (or around images/) that may name a patient


@dataclass
class Layout:
    items: list[Item]
    class_names: list[str]
    problems: list[dict]
    files_seen: int


def ignored(parts: list[str] | tuple[str, ...]) -> bool:
    """Hidden files, macOS resource forks and Windows thumbnails are not part of anyone's dataset."""
    return any(p.startswith(".") or p.lower() in IGNORED_NAMES for p in parts)


def scan(folder: Path, task: str) -> Layout:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not ignored(p.relative_to(folder).parts))
    root = _unwrap(folder, task)
    problems, inside = [], []
    for file in files:
        if root in file.parents:
            inside.append(file)
        else:
            problems.append(problem(rel(file, folder), "unsupported", "File lies outside the dataset folder."))
    scan = _scan_classification if task == "classification" else _scan_segmentation
    items, class_names = scan(folder, root, inside, problems)
    return Layout(items, class_names, problems, len(files))


def _unwrap(folder: Path, task: str) -> Path:
    """Step into single wrapper folders (a ZIP of 'mydata/'), stopping at layout names or class folders."""
    root = folder
    while True:
        children = [c for c in root.iterdir() if not ignored([c.name])]
        dirs = [c for c in children if c.is_dir()]
        images = [c for c in children if c.is_file() and io.is_supported(c)]
        if len(dirs) != 1 or images or _is_layout_name(dirs[0].name):
            return root
        if task == "classification" and not any(c.is_dir() for c in dirs[0].iterdir()):
            return root                    # a single class folder: keep it, so the error names it
        root = dirs[0]


def _is_layout_name(name: str) -> bool:
    return name.lower() in SPLIT_NAMES or name.lower() in IMAGE_FOLDERS | MASK_FOLDERS


def _scan_classification(folder: Path, root: Path, files: list[Path], problems: list[dict]):
    items, class_names = [], set()
    for file in files:
        parts = file.relative_to(root).parts
        split = SPLIT_NAMES.get(parts[0].lower()) if len(parts) >= 3 else None
        rest = parts[1:] if split else parts
        if len(rest) < 2:
            problems.append(problem(rel(file, folder), "unsupported", "File is not inside a class folder."))
            continue
        class_names.add(rest[0])
        if not io.is_supported(file):
            problems.append(problem(rel(file, folder), "unsupported", f"{file.name} is not an image file."))
            continue
        items.append(Item(file, rel(file, folder), label=rest[0], split=split, folders=tuple(rest[1:-1])))
    for child in (c for c in root.iterdir() if c.is_dir() and not ignored([c.name])):
        subdirs = [d.name for d in child.iterdir() if d.is_dir() and not ignored([d.name])]
        class_names.update(subdirs if child.name.lower() in SPLIT_NAMES and subdirs else [child.name])
    lowered = {c.lower() for c in class_names}
    if lowered & IMAGE_FOLDERS and lowered & MASK_FOLDERS and lowered <= IMAGE_FOLDERS | MASK_FOLDERS:
        raise UserError("This upload has images/ and masks/ folders, which is a segmentation layout; "
                        "choose the segmentation task.")
    return items, sorted(class_names)


def _scan_segmentation(folder: Path, root: Path, files: list[Path], problems: list[dict]):
    images, masks = {}, {}
    for file in files:
        parts = file.relative_to(root).parts
        where = next((i for i, p in enumerate(parts[:-1]) if p.lower() in IMAGE_FOLDERS | MASK_FOLDERS), None)
        if where is None:
            problems.append(problem(rel(file, folder), "unsupported",
                                     "File is not inside an images/ or masks/ folder."))
            continue
        if not io.is_supported(file):
            problems.append(problem(rel(file, folder), "unsupported", f"{file.name} is not an image file."))
            continue
        stem = "/".join((*parts[where + 1:-1], Path(parts[-1]).stem))
        key = (tuple(p.lower() for p in parts[:where]), stem)
        split = SPLIT_NAMES.get(parts[where - 1].lower()) if where else None
        if split is None and len(parts) > where + 2:      # images/train/a.png works too
            split = SPLIT_NAMES.get(parts[where + 1].lower())
        around = (*parts[:where], *parts[where + 1:-1])          # p01/images/a.png or images/p01/a.png
        folders = tuple(p for p in around if p.lower() not in SPLIT_NAMES)
        (images if parts[where].lower() in IMAGE_FOLDERS else masks)[key] = (file, split, folders)
    _refuse_one_sided(len(images), len(masks))
    masks = _match_masks(masks, images, folder, problems)
    items = []
    for key, (file, split, folders) in images.items():
        if key in masks:
            mask = masks[key][0]
            items.append(Item(file, rel(file, folder), split=split, mask=mask, mask_path=rel(mask, folder),
                              folders=folders))
        else:
            problems.append(problem(rel(file, folder), "mask_missing", f"No mask named like {file.name} in masks/."))
    for key, (file, *_) in masks.items():
        if key not in images:
            problems.append(problem(rel(file, folder), "image_missing",
                                     f"No image named like {file.name} in images/."))
    if not items:
        raise UserError(f"No mask has the file name of an image ({_count(len(masks), 'mask')}, "
                        f"{_count(len(images), 'image')}); name each mask like its image (images/case01.png with "
                        "masks/case01.png or masks/case01_mask.png) and try again.")
    return items, []


SEGMENTATION_LAYOUT = ("a segmentation upload needs an images/ folder and a masks/ folder whose files have matching "
                       "names (images/case01.png with masks/case01.png)")


def _refuse_one_sided(images: int, masks: int) -> None:
    """Masks with no images (or the reverse) is a layout mistake: say so, not '18 image missing'."""
    if not images and not masks:
        raise UserError(f"No images/ or masks/ folder was found: {SEGMENTATION_LAYOUT}.")
    if not images:
        raise UserError(f"This upload has {_count(masks, 'mask')} but no images: {SEGMENTATION_LAYOUT}; "
                        "add the images and try again.")
    if not masks:
        raise UserError(f"This upload has {_count(images, 'image')} but no masks: {SEGMENTATION_LAYOUT}; "
                        "add the masks, or choose classification if each image has a label instead.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _match_masks(masks: dict, images: dict, folder: Path, problems: list[dict]) -> dict:
    """Masks keyed like the image they belong to. Two masks for one image ('a.png' and 'a_mask.png'): the one
    named exactly like the image is kept and the other reported, never silently dropped."""
    matched: dict = {}
    for key in sorted(masks, key=lambda k: _mask_key(k, images) != k):      # exact names first
        target = _mask_key(key, images)
        if target in matched:
            file, kept = masks[key][0], matched[target][0]
            problems.append(problem(rel(file, folder), "duplicate",
                                    f"{file.name} is a second mask for the same image; {kept.name} was used."))
            continue
        matched[target] = masks[key]
    return matched


def _mask_key(key: tuple, images: dict) -> tuple:
    """Match 'a_mask.png' to 'a.png' when no image is called 'a_mask'."""
    prefix, stem = key
    if key in images:
        return key
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix) and (prefix, stem[: -len(suffix)]) in images:
            return prefix, stem[: -len(suffix)]
    return key


def rel(file: Path, folder: Path) -> str:
    return file.relative_to(folder).as_posix()


def problem(file: str, kind: str, message: str) -> dict:
    """One entry of the ingest report's list of skipped files."""
    return {"file": file, "kind": kind, "message": message}
