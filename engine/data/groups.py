"""Which images belong to one patient (or subject): DICOM PatientID, a folder per patient, a leading ID in the file
name, or a pattern the user gives. Images of one group are later kept inside one split."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from engine.errors import UserError

AUTO, NONE, FOLDER = "auto", "none", "folder"
DICOM_KEY, PREFIX_KEY, FOLDER_KEY = "dicom", "filename prefix", "folder"
MIN_COVERAGE = 0.8          # a file-name or folder pattern must fit this share of the files to be trusted
MAX_GROUP_SHARE = 0.5       # ... and no group may hold more than this share (a year or a site, not a patient)
_SEPARATOR = re.compile(r"[_\- ]+")


@dataclass
class FileInfo:
    """What grouping looks at for one uploaded file."""
    path: str                       # as uploaded, with '/'
    label: str | None = None        # class folder (classification)
    folders: tuple[str, ...] = ()   # folders below the class folder, or around images/
    patient: str | None = None      # DICOM PatientID


@dataclass
class Grouping:
    key: str                        # "dicom", "filename prefix", "folder", the pattern, or "none"
    groups: list[str | None]        # per file; None = the file has no group


def group_files(files: list[FileInfo], group_by: str = AUTO) -> Grouping:
    """Group keys per file for `group_by` = auto | none | folder | a regular expression."""
    group_by = (group_by or AUTO).strip()
    if group_by == NONE:
        return Grouping(NONE, [None] * len(files))
    if group_by == FOLDER:
        return _explicit_folders(files)
    if group_by != AUTO:
        return _by_pattern(files, group_by)
    return _auto(files)


def check_group_by(group_by: str) -> str:
    """The setting itself, or a UserError when it is neither a known word nor a valid regular expression."""
    group_by = (group_by or AUTO).strip()
    if group_by not in (AUTO, NONE, FOLDER):
        _compile(group_by)
    return group_by


def _auto(files: list[FileInfo]) -> Grouping:
    patients = [f.patient for f in files]
    names: Grouping | None = None
    candidates = [Grouping(FOLDER_KEY, [_folder_key(f) for f in files]),
                  Grouping(PREFIX_KEY, [_prefix_key(f) for f in files])]
    plausible = [c for c in candidates if _plausible(c.groups, [f.label for f in files])]
    if plausible:                  # the coarser grouping is the safer one when both fit
        names = min(plausible, key=lambda c: len(set(c.groups) - {None}))
    with_id = sum(p is not None for p in patients)
    if with_id and (with_id * 2 >= len(files) or names is None):
        # A file's own PatientID always wins; names group the files that have none
        fallback = names.groups if names else [None] * len(files)
        return Grouping(DICOM_KEY, [p if p is not None else g for p, g in zip(patients, fallback)])
    if names is None:
        return Grouping(NONE, [None] * len(files))
    return Grouping(names.key, [p if p is not None else g for p, g in zip(patients, names.groups)])


def _plausible(groups: list[str | None], labels: list[str | None]) -> bool:
    """A key found in names is a patient key only when it fits most files, groups hold several images each, no
    group dominates, and it is not the class under another name."""
    keyed = [g for g in groups if g is not None]
    n = len(groups)
    if not n or len(keyed) < MIN_COVERAGE * n:
        return False
    sizes = Counter(keyed)
    classes = {label for label in labels if label is not None}
    if len(sizes) < 2 or len(sizes) <= len(classes):
        return False
    in_groups = sum(size for size in sizes.values() if size >= 2)
    return (len(keyed) >= 2 * len(sizes) and in_groups * 2 >= len(keyed)
            and max(sizes.values()) <= MAX_GROUP_SHARE * n)


def _prefix_key(file: FileInfo) -> str | None:
    """The shortest leading part of the file name that holds a digit and is followed by more of the name:
    SCD0000101_0048.png → SCD0000101, patient_07_slice3.png → patient_07, 00000001_000.png → 00000001.
    chest_000.png, 0.png or img3.png give none (nothing after the ID, or no separator)."""
    stem = file.path.rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    for match in _SEPARATOR.finditer(stem):
        head, tail = stem[:match.start()], stem[match.end():]
        if not head or not tail:
            continue
        if any(ch.isdigit() for ch in head):
            return None if _is_class(head, file.label) else head
    return None


def _folder_key(file: FileInfo) -> str | None:
    if not file.folders:
        return None
    folder = file.folders[0]
    return None if _is_class(folder, file.label) else folder


def _is_class(key: str, label: str | None) -> bool:
    return label is not None and key.lower() == label.lower()


def _explicit_folders(files: list[FileInfo]) -> Grouping:
    groups = [f.folders[0] if f.folders else None for f in files]
    if files and not any(groups):
        raise UserError("No image lies in a folder of its own below its class folder (or around images/), so "
                        "there is nothing to group by folder; choose auto, none or a pattern.")
    return Grouping(FOLDER_KEY, groups)


def _by_pattern(files: list[FileInfo], pattern: str) -> Grouping:
    regex = _compile(pattern)
    groups = []
    for file in files:
        match = regex.search(file.path)
        key = (match.group(1) if regex.groups else match.group(0)) if match else None
        groups.append(key or None)
    if files and not any(groups):
        raise UserError(f"The pattern {pattern!r} matches none of the {len(files)} file paths "
                        f"(e.g. {files[0].path!r}); fix the pattern, or choose auto or none.")
    return Grouping(pattern, groups)


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UserError(f"The grouping pattern {pattern!r} is not a valid regular expression ({err}); "
                        "e.g. '([^/_]+)_[^/]*$' takes the part of the file name before its first '_'.") from err
