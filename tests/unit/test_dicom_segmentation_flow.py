"""A PACS-style segmentation upload end to end: extension-less DICOM slices in image/, grey-level PNG masks
named *_gt.png in labels/, patients in the headers. The held-out Dice the trainer reports must equal the
Dice that `predict` gives on the same files read back from a ZIP."""
from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from engine.config import RunConfig
from engine.data.dataset import load_manifest
from engine.data.demo import write_demo
from engine.data.ingest import ingest
from engine.inference.batch import predict_zip
from engine.runs import execute
from engine.runs.submit import create_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _dicom(pixels: np.ndarray, patient: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = (pixels.astype(np.uint16) * 16 + 100).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2100, 4000
    ds.PatientID = patient
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_dicom_upload_trains_and_predicts_with_the_same_dice(lightbox_env, tmp_path):
    src = write_demo("segmentation", tmp_path / "png", n=24, size=48, seed=5)
    upload = tmp_path / "lv.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for i, image in enumerate(sorted((src / "images").glob("*.png"))):
            zf.writestr(f"study/image/IM{i:04d}", _dicom(np.asarray(Image.open(image)), f"PAT{i // 4}"))
            inside = np.asarray(Image.open(src / "masks" / image.name)) > 0
            zf.writestr(f"study/labels/IM{i:04d}_gt.png", _png(inside.astype(np.uint8) * 170))
    result = ingest(upload, "segmentation")
    assert result.report.problems == [] and result.report.patients == 6
    assert result.report.mask_levels == {"0": 0, "170": 1}
    config = RunConfig(dataset_id=result.dataset_id, arch="unet", epochs=2, batch_size=4, image_size=48,
                       lr=3e-3, preview_samples=0, model_options={"depth": 2, "base": 8})
    run = execute.run_job(create_run(config, status="running"))
    assert run["status"] == "done", run["message"]

    test = [s["source"] for s in load_manifest(result.dataset_id)["samples"] if s["split"] == "test"]
    held_out = tmp_path / "test.zip"
    with zipfile.ZipFile(upload) as zf, zipfile.ZipFile(held_out, "w") as out:
        for source in test:
            name = source.split("/")[-1]
            out.writestr(f"image/{name}", zf.read(source))
            out.writestr(f"labels/{name}_gt.png", zf.read(f"study/labels/{name}_gt.png"))
    rows = list(csv.DictReader(open(predict_zip(run["id"], held_out, tmp_path / "out"))))
    assert len(rows) == len(test) >= 2 and all(r["dice_foreground"] for r in rows)
    mean_dice = np.mean([float(r["dice_foreground"]) for r in rows])
    assert mean_dice == pytest.approx(run["test"]["dice"], abs=1e-5)
