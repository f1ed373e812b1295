"""Ingest throughput on 1,000 16-bit DICOM files, and proof that a training epoch reads only the array cache.

Run: .venv/bin/python benchmarks/ingest_bench.py [--files 1000] [--rounds 2]
     .venv/bin/python benchmarks/ingest_bench.py --checks-cost [--rounds 3]   # near-duplicate + shortcut checks
     .venv/bin/python benchmarks/ingest_bench.py --false-alarms               # warnings on every generated dataset
Prints a JSON object on its last line; the figures are copied by hand into benchmarks/ingest.md and traps.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data import checks, duplicates  # noqa: E402  (after the path fix above)
from engine.data import ingest as ingest_module  # noqa: E402
from engine.data.dataset import load_split  # noqa: E402
from engine.data.demo import write_demo  # noqa: E402
from engine.data.ingest import ingest  # noqa: E402
from engine.data.io import read_image  # noqa: E402


def mr_slice(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 12-bit MR-like slice stored in 16 bits: a bright body disc with blobs and noise."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    body = (x**2 / 0.16 + y**2 / 0.12) < 1
    image = 900 * body + 300 * np.sin(8 * x + rng.uniform(0, 6)) * np.cos(6 * y) * body
    for _ in range(5):
        cy, cx, r = rng.uniform(-0.25, 0.25, 2).tolist() + [rng.uniform(0.03, 0.1)]
        image += 1500 * (((x - cx) ** 2 + (y - cy) ** 2) < r**2)
    image += rng.normal(0, 40, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray, patient: str, instance: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "MR", patient, f"Synthetic^{patient}", instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_upload(root: Path, files: int, size: int) -> None:
    """Two class folders; ten slices per patient, each patient in one class."""
    rng = np.random.default_rng(0)
    for i in range(files):
        patient = i // 10
        folder = root / ("t1" if patient % 2 else "t2") / f"P{patient:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_dicom(folder / f"IM{i % 10:04d}.dcm", mr_slice(rng, size), f"P{patient:04d}", i % 10 + 1)


def time_ingest(upload: Path, workers: int) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of this process (all threads), dataset id (workers 0: ingest's default)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = ingest(upload, "classification", name="bench", workers=workers or None)
    return time.perf_counter() - start, time.process_time() - cpu, result.dataset_id


def epoch_from_cache(dataset_id: str, size: int, batch: int = 32) -> dict:
    """Load the train split and walk it in shuffled batches while every image reader is booby-trapped."""
    import torch

    def refuse(*_args, **_kwargs):
        raise AssertionError("an epoch touched an image decoder")

    traps = [mock.patch("pydicom.dcmread", refuse), mock.patch("pydicom.pixels.pixel_array", refuse),
             mock.patch("engine.data.dicom.pixel_array", refuse), mock.patch("PIL.Image.open", refuse)]
    for trap in traps:
        trap.start()
    try:
        try:                                                    # the traps must be armed, or the proof proves nothing
            read_image(Path(get_testdata_file("CT_small.dcm")))
            raise RuntimeError("decoder traps are not armed")
        except AssertionError:
            pass
        start = time.perf_counter()
        split = load_split(dataset_id, "train", size)           # first call builds cache/<size>/ from images/*.npy
        built = time.perf_counter() - start
        start, seen = time.perf_counter(), 0
        order = np.random.default_rng(0).permutation(len(split.keys))
        for i in range(0, len(order), batch):
            idx = np.sort(order[i:i + batch])
            batch_x = torch.from_numpy(split.images[idx]).float()      # what a training step receives
            batch_y = torch.from_numpy(split.targets[idx])
            seen += len(batch_x) if len(batch_y) == len(batch_x) else 0
        epoch = time.perf_counter() - start
    finally:
        for trap in traps:
            trap.stop()
    return {"train_samples": seen, "cache_build_s": round(built, 3), "epoch_s": round(epoch, 4),
            "epoch_samples_per_s": round(seen / epoch)}


def png_copy(upload: Path, out: Path) -> Path:
    """The same slices as 8-bit PNG (PNG decodes faster than DICOM, so the checks weigh more there)."""
    from PIL import Image
    for path in upload.rglob("*.dcm"):
        target = out / path.relative_to(upload).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((read_image(path)[0][0] * 255).round().astype(np.uint8)).save(target)
    return out


def without_checks():
    """Patches that skip the thumbnail, near-duplicate search and shortcut check (everything else stays)."""
    blank = np.zeros((duplicates.THUMB, duplicates.THUMB), np.uint8)
    return [mock.patch.object(ingest_module, "thumbnail", lambda frame: blank),
            mock.patch.object(ingest_module, "near_duplicate_sets", lambda thumbs: []),
            mock.patch.object(checks, "find_shortcuts", lambda rows, classes: [])]


def time_with_and_without(upload: Path, rounds: int) -> dict:
    """Whole ingests, alternating with and without the checks (the machine is shared): wall and CPU medians."""
    wall: dict[str, list[float]] = {"with": [], "without": []}
    cpu: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        for mode in ("without", "with"):
            patches = without_checks() if mode == "without" else []
            for patch in patches:
                patch.start()
            try:
                seconds, cpu_seconds, _ = time_ingest(upload, workers=0)
            finally:
                for patch in patches:
                    patch.stop()
            wall[mode].append(seconds)
            cpu[mode].append(cpu_seconds)
            print(f"  {upload.name} {mode} checks: {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU", flush=True)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in (("wall", wall), ("cpu", cpu))}
    return {"wall_s": {m: round(v, 2) for m, v in med["wall"].items()},
            "cpu_s": {m: round(v, 2) for m, v in med["cpu"].items()},
            "wall_ratio": round(med["wall"]["with"] / med["wall"]["without"], 3),
            "cpu_ratio": round(med["cpu"]["with"] / med["cpu"]["without"], 3)}


def time_pieces(upload: Path) -> dict:
    """The checks alone on 1,000 images: thumbnails, the near-duplicate search, the shortcut check."""
    from engine.data.manifest import load_manifest
    from engine.data.shortcuts import find_shortcuts
    frames = [read_image(p)[0] for p in sorted(upload.rglob("*.dcm"))]
    start = time.process_time()
    thumbs = np.stack([duplicates.thumbnail(f) for f in frames])
    thumb_s = time.process_time() - start
    start = time.process_time()
    duplicates.near_duplicate_sets(thumbs)
    search_s = time.process_time() - start
    manifest = load_manifest(ingest(upload, "classification", name="pieces").dataset_id)
    start = time.process_time()
    find_shortcuts(manifest["samples"], manifest["classes"])
    shortcut_s = time.process_time() - start
    return {"images": len(frames), "thumbnails_cpu_s": round(thumb_s, 3), "near_duplicates_cpu_s": round(search_s, 3),
            "shortcuts_cpu_s": round(shortcut_s, 3)}


def checks_cost(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-") as tmp:
        os.environ["LIGHTBOX_HOME"] = str(Path(tmp) / "workspace")
        upload = Path(tmp) / "mr-upload"
        make_upload(upload, args.files, args.size)
        pngs = png_copy(upload, Path(tmp) / "png-upload")
        return {"files": args.files, "size": args.size, "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2), "pieces": time_pieces(upload),
                "dicom": time_with_and_without(upload, args.rounds), "png": time_with_and_without(pngs, args.rounds)}


def false_alarms(args) -> dict:
    """Every dataset the project generates, ingested: the warnings it raised, and which of them are false.

    A small_split is true when validation or test holds < 30 images or < 5 of a class (checked here on the splits
    themselves); nothing else can be true of these generators (independent images, balanced classes, no patients).
    """
    cases = [("classification", n, size, seed) for n, size, seed in
             [(200, 128, 0), (200, 128, 1), (200, 128, 2), (200, 128, 3), (200, 128, 4), (200, 64, 0),
              (200, 256, 0), (400, 128, 0), (1000, 128, 0), (12, 32, 0), (16, 32, 1), (24, 32, 3)]]
    cases += [("segmentation", n, size, seed) for n, size, seed in
              [(200, 128, 0), (200, 128, 1), (200, 128, 2), (200, 64, 0), (200, 256, 0), (400, 128, 0),
               (120, 128, 2), (12, 32, 0), (16, 32, 1), (24, 32, 3)]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-") as tmp:
        os.environ["LIGHTBOX_HOME"] = str(Path(tmp) / "workspace")
        sources = [(f"demo {task} n={n} size={size} seed={seed}", task,
                    lambda task=task, n=n, size=size, seed=seed: write_demo(
                        task, Path(tmp) / f"{task}-{n}-{size}-{seed}", n=n, size=size, seed=seed))
                   for task, n, size, seed in cases]
        sources.append((f"benchmark MR DICOM {args.files} files", "classification",
                        lambda: _mr_upload(Path(tmp) / "mr", args.files, args.size)))
        for name, task, build in sources:
            result = ingest(build(), task)
            report = result.report.to_dict()
            true_small = _true_small_splits(result.dataset_id)
            found = [w["kind"] for w in report["warnings"]]
            small = [w["split"] for w in report["warnings"] if w["kind"] == "small_split"]
            false = [k for k in found if k != "small_split"] + [s for s in small if s not in true_small]
            missed = sorted(set(true_small) - set(small))
            rows.append({"dataset": name, "images": report["samples"], "groups": report["groups"]["key"],
                         "warnings": found, "false_alarms": len(false), "missed": missed})
            print(json.dumps(rows[-1]), flush=True)
    return {"datasets": rows, "false_alarms": sum(r["false_alarms"] for r in rows)}


def _mr_upload(root: Path, files: int, size: int) -> Path:
    make_upload(root, files, size)
    return root


def _true_small_splits(dataset_id: str) -> list[str]:
    from collections import Counter

    from engine.data.manifest import load_manifest
    manifest = load_manifest(dataset_id)
    small = []
    for split in ("val", "test"):
        members = [s for s in manifest["samples"] if s["split"] == split]
        per_class = Counter(s.get("label") for s in members)
        thin = manifest["task"] == "classification" and any(per_class.get(i, 0) < 5
                                                             for i in range(manifest["num_classes"]))
        if len(members) < 30 or thin:
            small.append(split)
    return small


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checks-cost", action="store_true", help="time ingest with and without the checks")
    parser.add_argument("--false-alarms", action="store_true", help="warnings on every generated dataset")
    args = parser.parse_args()
    if args.checks_cost or args.false_alarms:
        print(json.dumps(checks_cost(args) if args.checks_cost else false_alarms(args)))
        return
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-") as tmp:
        os.environ["LIGHTBOX_HOME"] = str(Path(tmp) / "workspace")
        upload = Path(tmp) / "mr-upload"
        start = time.perf_counter()
        make_upload(upload, args.files, args.size)
        print(f"wrote {args.files} DICOM files in {time.perf_counter() - start:.1f} s", flush=True)
        timings: dict[int, list[float]] = {1: [], 2: [], 4: []}
        cpu_times: dict[int, list[float]] = {1: [], 2: [], 4: []}
        dataset_id = ""
        for _ in range(args.rounds):                            # alternate worker counts: the machine is shared
            for workers in timings:
                seconds, cpu, dataset_id = time_ingest(upload, workers)
                timings[workers].append(seconds)
                cpu_times[workers].append(cpu)
                print(f"workers={workers}: {seconds:.2f} s wall, {cpu:.2f} s CPU "
                      f"({args.files / seconds:.0f} files/s)", flush=True)
        epoch = epoch_from_cache(dataset_id, args.size)
        print(f"epoch from cache: {epoch}", flush=True)
    summary = {
        "files": args.files, "size": args.size, "cpus": os.cpu_count(), "python": platform.python_version(),
        "pydicom": pydicom.__version__, "load_avg_1m": round(os.getloadavg()[0], 2),
        "ingest_files_per_s": {w: round(args.files / statistics.median(t)) for w, t in timings.items()},
        "ingest_s_median": {w: round(statistics.median(t), 2) for w, t in timings.items()},
        "ingest_cpu_s_median": {w: round(statistics.median(t), 2) for w, t in cpu_times.items()},
        "epoch": epoch,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
