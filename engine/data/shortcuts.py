"""Shortcut check: does a trivial property of the files (size, brightness, file type, scanner, name, folder) tell
the classes apart on its own? A network finds such a cue as readily as the anatomy, and scores well on a test split
that shares it, then fails elsewhere.

For each property a one-property rule is fitted on the training split: for numbers, the range cut at up to 7
quantiles with each piece voting for the class it favours (a threshold is the two-piece case); for categories, each
value seen at least twice votes for its class and rarer values vote together. The rule is scored by 5-fold
cross-validation over patient groups (balanced accuracy), so a patient's own folder or a value seen once cannot
look like a shortcut. A property warns at MIN_BALANCED_ACCURACY or more, clearly above guessing (1 / classes).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_BALANCED_ACCURACY = 0.85
ABOVE_CHANCE = 0.25
MIN_PER_CLASS = 10          # fewer training images per class: no verdict (any rule fits a handful by luck)
FOLDS = 5
BINS = 8
MIN_CATEGORY = 2


@dataclass(frozen=True)
class Property:
    name: str
    title: str                          # "Image size": starts the sentence "… alone tells the classes apart"
    kind: str                           # "number" or "category"
    family: str                         # one warning per family (size, height and width say the same thing)
    value: Callable[[dict, list[str]], object]
    thing: str                          # "a model can learn the {thing} instead of the anatomy"
    advice: str
    unit: str = ""


def _size(row, _):
    return f"{row['height']}×{row['width']}"


def _extension(row, _):
    name = re.sub(r"#\d+$", "", row["source"]).rsplit("/", 1)[-1]
    return ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else "no extension"


def _name_prefix(row, classes):
    """Leading letters of the file name; none when they are a class name (naming files after their class
    says nothing about where they came from)."""
    name = re.sub(r"#\d+$", "", row["source"]).rsplit("/", 1)[-1]
    match = re.match(r"[A-Za-z]+", name)
    if not match:
        return None
    prefix = match.group(0).lower()
    named = any(c.lower() == prefix or (len(c) >= 3 and (c.lower() in prefix or prefix in c.lower()))
                for c in classes)
    return None if named else match.group(0)


SIZE_ADVICE = "Crop or pad every image to one size, or rebalance sources so each class has every size."
SOURCE_ADVICE = "Mix sources within each class, or rebalance, so the source no longer tells the class."
PROPERTIES = (
    Property("size", "Image size", "category", "size", _size, "size", SIZE_ADVICE, "px"),
    Property("height", "Image height", "number", "size", lambda r, _: r["height"], "height", SIZE_ADVICE, "px"),
    Property("width", "Image width", "number", "size", lambda r, _: r["width"], "width", SIZE_ADVICE, "px"),
    Property("aspect", "The aspect ratio (width ÷ height)", "number", "size",
             lambda r, _: round(r["width"] / max(1, r["height"]), 3), "shape of the frame", SIZE_ADVICE),
    Property("colour", "Colour versus grey", "category", "colour",
             lambda r, _: "colour" if r.get("channels") == 3 else "grey", "colour",
             "Convert every image to grey (or every image to colour)."),
    Property("brightness", "Mean brightness", "number", "brightness", lambda r, _: r.get("mean"), "brightness",
             "Check that each class was imaged with the same settings, or normalise brightness per image."),
    Property("file_type", "File type", "category", "file type", _extension, "file format",
             "Convert every file to one format with the same settings."),
    Property("modality", "DICOM modality", "category", "scanner", lambda r, _: r.get("modality"), "modality",
             "Collect each class with the same kind of scanner."),
    Property("manufacturer", "Scanner manufacturer (DICOM)", "category", "scanner",
             lambda r, _: r.get("manufacturer"), "scanner", "Collect each class on the same scanners, or rebalance."),
    Property("name_prefix", "The start of the file name", "category", "names", _name_prefix,
             "source that the names reveal", SOURCE_ADVICE),
    Property("folder", "The source folder", "category", "folders", lambda r, _: r.get("folder"),
             "source that the folders reveal", SOURCE_ADVICE),
)


def find_shortcuts(rows: list[dict], classes: list[str]) -> list[dict]:
    """`shortcut` warnings for a classification dataset whose rows already carry their split. The rule is scored
    on the training split; the message and the chart describe every image."""
    rows = [r for r in rows if r.get("label") is not None]
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    fold_of = _folds([rows[i].get("group") or rows[i]["key"] for i in train])
    best: dict[str, dict] = {}
    for prop in PROPERTIES:
        values = [prop.value(r, classes) for r in rows]
        keep = [k for k, i in enumerate(train) if values[i] is not None]
        x = [values[train[k]] for k in keep]
        y = np.array([rows[train[k]]["label"] for k in keep], dtype=np.int64)
        if len(set(x)) < 2 or sum(n >= MIN_PER_CLASS for n in Counter(y.tolist()).values()) < 2:
            continue
        score = _cross_validated(prop.kind, x, y, fold_of[keep])
        chance = 1 / len(set(y.tolist()))
        if score >= MIN_BALANCED_ACCURACY and score >= chance + ABOVE_CHANCE and (
                prop.family not in best or score > best[prop.family]["balanced_accuracy"]):
            everywhere = [(v, r["label"]) for v, r in zip(values, rows) if v is not None]
            best[prop.family] = _warning(prop, [v for v, _ in everywhere],
                                         np.array([label for _, label in everywhere]), classes, score, chance)
    return sorted(best.values(), key=lambda w: -w["balanced_accuracy"])


# ---- the one-property rule and its cross-validated score ------------------------------------------------

def _folds(units: list[str]) -> np.ndarray:
    """Fold per sample; all samples of a unit (a patient, a set of copies) share one fold."""
    names = sorted(set(units))
    order = np.random.default_rng(0).permutation(len(names))
    fold = {name: int(rank) % FOLDS for name, rank in zip(names, order)}
    return np.array([fold[u] for u in units], dtype=np.int64)


def _cross_validated(kind: str, x: list, y: np.ndarray, folds: np.ndarray) -> float:
    predicted = np.full(len(y), -1, dtype=np.int64)
    classes = np.unique(y)
    for f in np.unique(folds):
        fit, held = folds != f, folds == f
        if len(np.unique(y[fit])) < 2:
            continue
        rule = _fit_numbers if kind == "number" else _fit_categories
        predict = rule([v for v, m in zip(x, fit) if m], y[fit], classes)
        predicted[held] = predict([v for v, m in zip(x, held) if m])
    return float(np.mean([(predicted[y == c] == c).mean() for c in classes]))


def _votes(counts: np.ndarray, sizes: np.ndarray) -> int:
    """The class a group of samples favours, relative to each class's size (what balanced accuracy rewards)."""
    return int(np.argmax(counts / sizes)) if counts.sum() else -1


def _fit_numbers(x: list, y: np.ndarray, classes: np.ndarray) -> Callable[[list], np.ndarray]:
    values = np.asarray(x, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
    bins = np.digitize(values, edges)
    sizes = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    table = np.array([_votes(np.array([((bins == b) & (y == c)).sum() for c in classes]), sizes)
                      for b in range(len(edges) + 1)])

    def predict(held: list) -> np.ndarray:
        picks = table[np.digitize(np.asarray(held, dtype=np.float64), edges)]
        return np.where(picks >= 0, classes[np.maximum(picks, 0)], -1)
    return predict


def _fit_categories(x: list, y: np.ndarray, classes: np.ndarray) -> Callable[[list], np.ndarray]:
    sizes = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    index = {c: i for i, c in enumerate(classes.tolist())}
    counts: dict[object, np.ndarray] = {}
    for value, label in zip(x, y.tolist()):
        counts.setdefault(value, np.zeros(len(classes)))[index[label]] += 1
    rare = sum((c for c in counts.values() if c.sum() < MIN_CATEGORY), np.zeros(len(classes)))
    vote = {value: _votes(c, sizes) for value, c in counts.items() if c.sum() >= MIN_CATEGORY}
    other = _votes(rare, sizes)             # values seen once (or never) vote together

    def predict(held: list) -> np.ndarray:
        picks = [vote.get(value, other) for value in held]
        return np.array([classes[p] if p >= 0 else -1 for p in picks], dtype=np.int64)
    return predict


# ---- the warning: plain words plus the numbers for a small chart ----------------------------------------

def _warning(prop: Property, x: list, y: np.ndarray, classes: list[str], score: float, chance: float) -> dict:
    present = sorted(set(y.tolist()))
    if prop.kind == "number":
        summary = {classes[c]: _spread([v for v, label in zip(x, y) if label == c]) for c in present}
        detail = _number_detail(prop, summary)
    else:
        summary = _category_counts(x, y, classes, present)
        detail = _category_detail(prop, x, y, classes, present)
    message = (f"{prop.title} alone tells the classes apart: {detail}; a model can learn the {prop.thing} instead "
               f"of the anatomy. {prop.advice} (A rule that looks only at this property sorts the training images "
               f"with {score:.0%} balanced accuracy, the average of the per-class hit rates, where guessing gets "
               f"{chance:.0%}.)")
    return {"kind": "shortcut", "message": message, "property": prop.name, "title": prop.title,
            "value_kind": prop.kind, "unit": prop.unit, "balanced_accuracy": round(score, 3),
            "chance": round(chance, 3), "per_class": summary}


def _spread(values: list) -> dict:
    q = np.quantile(np.asarray(values, dtype=np.float64), [0, 0.25, 0.5, 0.75, 1])
    return {"n": len(values), **{k: round(float(v), 4) for k, v in zip(("min", "q1", "median", "q3", "max"), q)}}


def _number_detail(prop: Property, summary: dict) -> str:
    unit = f" {prop.unit}" if prop.unit else ""
    parts = [f"{name} images have a median of {_num(s['median'])}{unit} (middle half {_num(s['q1'])}–"
             f"{_num(s['q3'])})" for name, s in list(summary.items())[:4]]
    return "; ".join(parts)


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.2f}"


def _category_counts(x: list, y: np.ndarray, classes: list[str], present: list[int]) -> dict:
    top = [v for v, _ in Counter(x).most_common(8)]
    out = {}
    for c in present:
        seen = Counter(v if v in top else "other" for v, label in zip(x, y) if label == c)
        out[classes[c]] = {str(v): seen.get(v, 0) for v in [*top, "other"] if seen.get(v, 0)}
    return out


def _category_detail(prop: Property, x: list, y: np.ndarray, classes: list[str], present: list[int]) -> str:
    """The value whose share differs most between one class and the rest, as 'a of n X images … but only b of m'."""
    best = None
    for c in present:
        inside = [v for v, label in zip(x, y) if label == c]
        outside = [v for v, label in zip(x, y) if label != c]
        for value, a in Counter(inside).items():
            b = sum(v == value for v in outside)
            gap = a / len(inside) - b / len(outside)
            if best is None or gap > best[0]:
                best = (gap, c, value, a, len(inside), b, len(outside))
    _, c, value, a, n_in, b, n_out = best
    others = classes[next(k for k in present if k != c)] if len(present) == 2 else "other"
    rest = f"only {b} of {n_out}" if b else f"none of the {n_out}"
    return f"{a} of {n_in} {classes[c]} images {_phrase(prop, value)} but {rest} {others} images"


def _phrase(prop: Property, value) -> str:
    return {"size": f"are {value} px", "colour": f"are {value}", "file_type": f"are {value} files",
            "modality": f"have modality {value}", "manufacturer": f"come from {value} scanners",
            "name_prefix": f"have names starting with '{value}'",
            "folder": f"sit in a folder named '{value}'"}.get(prop.name, f"have {prop.thing} {value}")
