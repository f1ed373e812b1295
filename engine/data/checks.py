"""The dataset warnings a student must see before trusting a score: a patient or a copy on both sides of the split,
a trivial property that predicts the label, classes of very different sizes, validation or test splits too small
to measure anything. Each warning is {"kind", "message", ...} with the numbers the Data page draws."""
from __future__ import annotations

from collections import Counter

from engine.data.shortcuts import find_shortcuts
from engine.data.split_plan import file_of
from engine.tasks import IMBALANCE_RATIO, SMALL_SPLIT_IMAGES, SMALL_SPLIT_PER_CLASS

LISTED_SETS = 20
SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}


def find_warnings(rows: list[dict], classes: list[str], task: str, groups: dict,
                  near_duplicates: list[list[int]]) -> list[dict]:
    classification = task == "classification"
    found = _group_spans_splits(groups)
    found += _near_duplicates(rows, near_duplicates, classes if classification else [])
    if classification:      # a segmentation label is a mask drawn on the image, not a class a property could predict
        found += find_shortcuts(rows, classes)
        found += _imbalance(rows, classes)
    found += _small_splits(rows, classes if classification else [])
    return found


def _group_spans_splits(groups: dict) -> list[dict]:
    count = groups.get("spanning_splits", 0)
    if not count:
        return []
    what = "patient" if groups["key"] in ("dicom", "filename prefix", "folder") else "group"
    names = ", ".join(f"{s['key']} ({', '.join(s['splits'])})" for s in groups.get("spanning", [])[:3])
    message = (f"{_count(count, what)} {'has' if count == 1 else 'have'} images in more than one of the train/, val/ "
               f"and test/ folders of the upload (e.g. {names}), so the model is scored on {what}s it has already "
               f"seen. Move each {what}'s images into one folder, or upload without those folders and let Lightbox "
               "split by group.")
    return [{"kind": "group_spans_splits", "message": message, "count": count,
             "groups": groups.get("spanning", [])}]


def _near_duplicates(rows: list[dict], sets: list[list[int]], classes: list[str]) -> list[dict]:
    """Sets of near-identical images that a patient group did not already hold together."""
    shown = [m for m in sets if len({rows[i]["group_key"] or file_of(rows[i]) for i in m}) > 1]
    if not shown:
        return []
    images = sum(len(m) for m in shown)
    first = shown[0]
    message = (f"{images} images are near-identical copies of one another ({_count(len(shown), 'set')}, e.g. "
               f"{rows[first[0]]['source']} and {rows[first[1]]['source']}). Each set was kept in one split, so the "
               "model is never scored on a copy of a training image; remove the copies you did not mean to upload.")
    mixed = [m for m in shown if classes and len({rows[i]["label"] for i in m}) > 1]
    if mixed:
        a, b = next((i, j) for i in mixed[0] for j in mixed[0] if rows[i]["label"] != rows[j]["label"])
        message += (f" {_count(len(mixed), 'set')} {'carries' if len(mixed) == 1 else 'carry'} different labels "
                    f"({rows[a]['source']} is {classes[rows[a]['label']]} but {rows[b]['source']} is "
                    f"{classes[rows[b]['label']]}): one picture cannot be both, so check the labels.")
    apart = [m for m in shown if len({rows[i]["split"] for i in m}) > 1]
    if apart:
        message += (f" {_count(len(apart), 'set')} {'lies' if len(apart) == 1 else 'lie'} in different train/val/test "
                    "folders of the upload, so a copy is scored against its original: move each set into one folder.")
    return [{"kind": "near_duplicates", "message": message, "count": len(shown), "images": images,
             "groups": [[rows[i]["source"] for i in m] for m in shown[:LISTED_SETS]],
             "keys": [[rows[i]["key"] for i in m] for m in shown[:LISTED_SETS]],
             "splits": [[rows[i]["split"] for i in m] for m in shown[:LISTED_SETS]]}]


def _imbalance(rows: list[dict], classes: list[str]) -> list[dict]:
    counts = Counter(r["label"] for r in rows)
    per_class = {c: counts.get(i, 0) for i, c in enumerate(classes)}
    big, small = max(per_class, key=per_class.get), min(per_class, key=per_class.get)
    if not per_class[small] or per_class[big] < IMBALANCE_RATIO * per_class[small]:
        return []
    ratio = per_class[big] / per_class[small]
    message = (f"The classes are unbalanced: {per_class[big]} {big} images but only {per_class[small]} {small} "
               f"({ratio:.1f} times fewer). A model can score well by mostly answering {big}; judge it by balanced "
               f"accuracy and per-class recall, or collect more {small} images.")
    return [{"kind": "imbalance", "message": message, "per_class": per_class, "ratio": round(ratio, 2)}]


def _small_splits(rows: list[dict], classes: list[str]) -> list[dict]:
    found = []
    for split in ("val", "test"):
        members = [r for r in rows if r["split"] == split]
        counts = Counter(r.get("label") for r in members)
        per_class = {c: counts.get(i, 0) for i, c in enumerate(classes)}
        thin = {c: n for c, n in per_class.items() if n < SMALL_SPLIT_PER_CLASS}
        if len(members) >= SMALL_SPLIT_IMAGES and not thin:
            continue
        title = SPLIT_TITLES[split]
        if not members:
            what = f"The {title} split is empty"
        elif len(members) < SMALL_SPLIT_IMAGES:
            what = f"The {title} split has only {_count(len(members), 'image')} (fewer than {SMALL_SPLIT_IMAGES})"
        else:
            what = f"The {title} split has {len(members)} images"
        if thin and members:
            listed = ", ".join(f"{n} {c}" for c, n in list(thin.items())[:4])
            what += f" and fewer than {SMALL_SPLIT_PER_CLASS} of some class ({listed})"
        if members:
            what += f": one image more or less right moves its score by {100 / len(members):.0f} points"
        found.append({"kind": "small_split", "split": split, "images": len(members), "per_class": per_class,
                      "message": f"{what}, so small differences between runs mean little. Add images, or compare "
                                 "runs over several splits (cross-validation) before trusting a difference."})
    return found


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
