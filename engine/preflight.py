"""The checks a run passes before it is queued and again before it trains: dataset, splits, task, architecture,
sizes; and the warnings about splits too small to trust."""
from __future__ import annotations

from collections import Counter

import numpy as np

from engine.config import RunConfig
from engine.data.dataset import load_manifest
from engine.data.folds import fold_view, group_count
from engine.errors import UserError, shown
from engine.models.registry import DEFAULT_ARCH, get_spec, resolve_options
from engine.models.weights import imagenet_status, source_run_id
from engine.pretrain.library import PREFIX as ENCODER_PREFIX
from engine.pretrain.library import load_encoder, resolve_encoder
from engine.runs import paths, store
from engine.tasks import SMALL_SPLIT_IMAGES, SMALL_SPLIT_PER_CLASS, headline_metric


def check_config(config: RunConfig) -> dict:
    """Every check a run must pass before it is queued (the Train page calls it to explain before launch).

    Fills the task, architecture, loss and monitor from the dataset when empty; returns the dataset manifest."""
    if not config.dataset_id:
        raise UserError("Choose a dataset to train on.")
    manifest = load_manifest(config.dataset_id)
    if not config.task:
        config.task = manifest["task"]
        if not config.monitor:            # not chosen: lead with balanced accuracy when classes are imbalanced
            config.monitor = headline_metric(config.task, _class_counts(manifest, "train"))
        config.__post_init__()
    if config.task != manifest["task"]:
        raise UserError(f"This dataset is for {manifest['task']}, but the run is set up for {config.task}.")
    if config.folds >= 2:
        check_folds(manifest, config.folds, config.fold)
    check_splits(fold_view(manifest, config.folds, config.fold))
    if not config.arch:
        config.arch = DEFAULT_ARCH[config.task]
    config.validate()
    spec = get_spec(config.arch, config.task)   # refuses an architecture made for the other task
    if config.image_size < spec.min_size:
        raise UserError(f"{spec.title} needs images of at least {spec.min_size} px; raise the image size.")
    if config.pretrained == "imagenet" and not spec.pretrained:
        raise UserError(f"There are no ImageNet weights for {spec.title}; train it from scratch.")
    options = resolve_options(spec, config.model_options)   # unknown or out-of-range model settings fail here
    if config.pretrained == "imagenet" and not (status := imagenet_status(spec, options)).available:
        raise UserError(status.message)                    # before launch, not 20 s into the run
    if (run_id := source_run_id(config.pretrained)) is not None:
        check_source_run(run_id, spec, config.task)
    if resolve_encoder(config.pretrained) is not None:       # an unknown "encoder:ID" is refused before queueing
        check_source_encoder(config.pretrained.strip()[len(ENCODER_PREFIX):].strip(), spec)
    return manifest


def check_source_encoder(encoder_id: str, spec) -> dict:
    """A pre-trained encoder must have been made for this architecture, or none of its tensors would fit."""
    info = load_encoder(encoder_id)
    if info.get("arch") != spec.name:
        arch = info.get("arch") or "another architecture"
        raise UserError(f"Pre-trained encoder {encoder_id} was made for {arch}, and this run is a {spec.title}; "
                        f"choose {arch} or pre-train an encoder for {spec.title}.")
    return info


def check_source_run(run_id: str, spec, task: str) -> dict:
    """A run to start from ("run:ID") must exist, be finished with a best checkpoint, and have trained the same
    architecture for the same task (who may use it is engine.runs.start_from's check: it needs the actor)."""
    run = store.get_run(run_id) if store.is_run_id(run_id) else None
    if run is None:
        raise UserError(f"There is no run '{shown(run_id)}' to start from; `python -m engine runs` lists the runs.")
    if run["status"] != "done" or not (paths.run_dir(run["id"]) / "best.pt").is_file():
        raise UserError(f"Run {run['id']} is {run['status']}, not finished with a saved model; start from a finished "
                        "run (status done).")
    if run["task"] != task:
        raise UserError(f"Run {run['id']} is a {run['task']} model and this run does {task}; start from a {task} run.")
    if run["arch"] != spec.name:
        title = get_spec(run["arch"], run["task"]).title
        raise UserError(f"Run {run['id']} trained a {title}, and this run is a {spec.title}: starting from a run "
                        f"needs the same architecture; choose {title} or start from another run.")
    return run


EMPTY_VALIDATION = ("The validation split of this dataset is empty, so nothing honest is left to pick the best "
                    "epoch or to score the model on; upload more images (or more patients, since one patient's "
                    "images stay in one split), or fix the splits with train/ and val/ folders.")
EMPTY_SPLIT = {"val": EMPTY_VALIDATION,
               "test": "The test split of this dataset is empty, so runs end without a held-out score; upload "
                       "more images or add a test/ folder."}


def check_folds(manifest: dict, folds: int, fold: int) -> None:
    groups = group_count(manifest)
    if folds > groups:
        raise UserError(f"{folds}-fold cross-validation needs at least {folds} patients (groups) outside the test "
                        f"split, and this dataset has {groups}; choose at most {groups} folds.")
    if not 1 <= fold <= folds:
        raise UserError(f"Fold must be between 1 and {folds}, not {fold}.")


def check_splits(manifest: dict) -> None:
    """Refuse a dataset whose training or validation split is empty, or (classification) that has a class with
    no training images. Segmentation classes are checked when the Trainer has the masks in memory."""
    counts = _split_sizes(manifest)
    if counts["train"] == 0:
        raise UserError("The training split of this dataset is empty; upload more images or put some in a "
                        "train/ folder.")
    if counts["val"] == 0:
        raise UserError(EMPTY_VALIDATION)
    if manifest["task"] == "classification":
        trained = _class_counts(manifest, "train")
        missing = [name for i, name in enumerate(manifest["classes"]) if trained[i] == 0]
        if missing:
            names = ", ".join(f"'{name}'" for name in missing)
            raise UserError(f"No training image is labelled {names}, so the model could never learn "
                            f"{'it' if len(missing) == 1 else 'them'}; add such images to the training split "
                            "(or leave the class out of the upload).")


def check_mask_classes(masks: np.ndarray, classes: list[str], chunk: int = 64) -> None:
    """Refuse training masks in which some class never appears (the manifest does not record which labels each
    mask holds, so this runs where the masks are loaded anyway; it stops reading once every class is seen)."""
    seen = np.zeros(len(classes), dtype=bool)
    for first in range(0, len(masks), chunk):
        counts = np.bincount(np.asarray(masks[first:first + chunk]).ravel(), minlength=len(classes))
        seen |= counts[:len(classes)] > 0
        if seen.all():
            return
    missing = ", ".join(f"'{name}'" for name, found in zip(classes, seen) if not found)
    raise UserError(f"No training mask contains {missing}, so the model could never learn to find it; add "
                    "images whose masks show it to the training split (or leave that label out of the masks).")


def split_warnings(manifest: dict) -> list[dict]:
    """{"kind": "small_split", "message", "split", "n"} for a validation or test split with fewer than 30
    images, or (classification) fewer than 5 of some class; scores on such a split have wide intervals."""
    counts, out = _split_sizes(manifest), []
    for split, title in (("val", "validation"), ("test", "test")):
        n, reasons = counts[split], []
        if n == 0:
            out.append({"kind": "small_split", "split": split, "n": 0, "message": EMPTY_SPLIT[split]})
            continue
        if n < SMALL_SPLIT_IMAGES:
            reasons.append(f"holds {n} image{'' if n == 1 else 's'} (fewer than {SMALL_SPLIT_IMAGES})")
        if manifest["task"] == "classification":
            per_class = _class_counts(manifest, split)
            few = [f"{per_class[i]} of '{name}'" for i, name in enumerate(manifest["classes"])
                   if per_class[i] < SMALL_SPLIT_PER_CLASS]
            if few:
                reasons.append(f"has only {', '.join(few)} (fewer than {SMALL_SPLIT_PER_CLASS} per class)")
        if reasons:
            out.append({"kind": "small_split", "split": split, "n": n,
                        "message": f"The {title} split {' and '.join(reasons)}, so its scores can move by many "
                                   "points from one set of images to the next; read them with their 95 % "
                                   "intervals, or add images."})
    return out


def _split_sizes(manifest: dict) -> Counter:
    return Counter(sample["split"] for sample in manifest.get("samples", ()))


def _class_counts(manifest: dict, split: str) -> Counter:
    return Counter(sample.get("label") for sample in manifest.get("samples", ()) if sample["split"] == split)
