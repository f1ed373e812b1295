"""Ingest throughput on 1,000 16-bit DICOM files, and proof that a training epoch reads only the array cache.

Run: .venv/bin/python benchmarks/ingest_bench.py [--files 1000] [--rounds 2]
Prints a JSON object on its last line; the figures are copied by hand into benchmarks/ingest.md.
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

from engine.data.dataset import load_split  # noqa: E402  (after the path fix above)
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
    """Wall seconds, CPU seconds of this process (all threads), dataset id."""
    start, cpu = time.perf_counter(), time.process_time()
    result = ingest(upload, "classification", name="bench", workers=workers)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
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
