"""Fuzz (issue 13): 125 malformed PNG/JPEG/TIFF/BMP/DICOM files and 12 malformed ZIPs, generated from a fixed
seed (tests/unit/hostile_files.py), go through ingest (both tasks, folder and ZIP) and prediction. Each one is
either read, or a named problem in the ingest report, or a one-line UserError: never a traceback, never raw
library text from an unexpected exception, never an unbounded allocation (each run is a child process under an
address-space limit)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile_files  # noqa: E402
from test_hostile_decode import run_limited  # noqa: E402

HEADROOM_MB = 2000          # over the child's baseline with torch loaded; a bomb decoded by mistake needs GBs
FALLBACK = "could not be read ("     # ingest's wording for an exception our readers did not turn into a sentence


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


# ---- run inside the child ---------------------------------------------------------------------------------

def _picture(seed: int) -> bytes:
    """A 48×40 grey picture: the size of the Pillow fuzz seeds, so their masks fit it."""
    return hostile_files._save(np.random.default_rng(seed).integers(0, 256, (40, 48), dtype=np.uint8), "PNG")


def _good_mask(seed: int) -> bytes:
    mask = np.zeros((40, 48), np.uint8)
    mask[5 + seed % 10: 25, 8: 30 + seed % 10] = 255
    return hostile_files._save(mask, "PNG")


def write_fuzz_upload(folder: Path, task: str) -> list[str]:
    """An upload of 8 good images (or image/mask pairs) plus every fuzz file; returns the fuzz paths."""
    fuzz = hostile_files.fuzz_files()
    paths = []
    files = {}
    if task == "classification":
        files.update({f"{c}/ok{i}.png": hostile_files.small_png(10 * k + i, 40) for k, c in enumerate("ab")
                      for i in range(4)})
        for i, (name, data) in enumerate(fuzz):
            paths.append(f"{'ab'[i % 2]}/{name}")
            files[paths[-1]] = data
    else:
        for i in range(8):
            files[f"images/ok{i}.png"] = _picture(i)
            files[f"masks/ok{i}.png"] = _good_mask(i)
        for i, (name, data) in enumerate(fuzz):
            stem, ext = name.rsplit(".", 1)
            if i % 2:          # a hostile image with a good mask, or a good image with a hostile mask
                paths.append(f"images/{name}")
                files[paths[-1]], files[f"masks/{stem}.png"] = data, _good_mask(i)
            else:
                files[f"images/{stem}.png"] = _picture(1000 + i)
                paths.append(f"masks/{stem}.{ext}")
                files[paths[-1]] = data
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return paths


def ingest_fuzz(folder: Path, task: str) -> dict:
    """Ingest of 8 good images plus every fuzz file: the problems, and the sources of the samples kept."""
    from engine.data.ingest import ingest
    from engine.errors import UserError
    paths = write_fuzz_upload(folder, task)
    try:
        report = ingest(folder, task, workers=2).report
    except UserError as err:
        return {"paths": paths, "refused": str(err)}
    from engine.data.manifest import list_datasets, load_manifest
    sources = [s["source"].split("#")[0] for d in list_datasets() for s in load_manifest(d["id"])["samples"]]
    return {"paths": paths, "problems": report.problems, "sources": sources}


def _predictor(task: str):
    import torch

    from engine.config import RunConfig
    from engine.inference.predict import Predictor
    from engine.models.network import build_network
    classes = ["a", "b"] if task == "classification" else ["background", "foreground"]
    arch, options = ("lenet5", {}) if task == "classification" else ("unet", {"depth": 2, "base": 8})
    config = RunConfig(dataset_id="fuzz", arch=arch, image_size=32, pretrained="none", model_options=options)
    info = {"task": task, "classes": classes, "channels": 1, "num_classes": 2}
    torch.manual_seed(0)
    return Predictor(build_network(config, info, [0.0], [1.0]), config, info, torch.device("cpu"), "fuzz")


def predict_fuzz(task: str) -> dict:
    from engine.errors import UserError
    predictor = _predictor(task)
    good = hostile_files.small_png(5, 48)
    outcomes = {}
    for name, data in hostile_files.fuzz_files():
        for role in ("image", "mask") if task == "segmentation" else ("image",):
            try:
                if role == "image":
                    predictor.predict_file(data, name)
                else:
                    predictor.predict_file(good, "good.png", mask=data, mask_name=name)
                outcomes[f"{role}:{name}"] = "ok"
            except UserError as err:
                outcomes[f"{role}:{name}"] = "refused: " + str(err)
            except Exception as err:  # noqa: BLE001 - what the test is looking for
                outcomes[f"{role}:{name}"] = f"CRASH {type(err).__name__}: {err}"
    return outcomes


def zips_fuzz(folder: Path, step: str) -> dict:
    """Each fuzz ZIP through ingest (as a path and, for every other one, as an uploaded file) or through batch
    prediction (engine.inference.batch.predict_zip, with a constructed model in place of a stored run)."""
    import engine.inference.batch as batch
    from engine.data.ingest import ingest, ingest_files
    from engine.errors import UserError
    batch.load_predictor = lambda run_id: _predictor("classification")
    outcomes = {}
    for i, (name, data) in enumerate(hostile_files.fuzz_zips()):
        path = folder / name
        path.write_bytes(data)
        try:
            if step == "predict":
                batch.predict_zip("fuzz", path, folder / f"out-{i}")
            elif i % 2:
                ingest(path, "classification")
            else:
                ingest_files([(name, data)], "classification")
            outcomes[name] = "ok"
        except UserError as err:
            outcomes[name] = "refused: " + str(err)
        except Exception as err:  # noqa: BLE001 - what the test is looking for
            outcomes[name] = f"CRASH {type(err).__name__}: {err}"
    return outcomes


def run_all(folder: Path) -> dict:
    """Every fuzz run, each in its own workspace, in one child (so torch is imported once)."""
    import os
    out = {}
    for key, call in (("ingest:classification", lambda d: ingest_fuzz(d, "classification")),
                      ("ingest:segmentation", lambda d: ingest_fuzz(d, "segmentation")),
                      ("predict:classification", lambda d: predict_fuzz("classification")),
                      ("predict:segmentation", lambda d: predict_fuzz("segmentation")),
                      ("zips:ingest", lambda d: zips_fuzz(d, "ingest")),
                      ("zips:predict", lambda d: zips_fuzz(d, "predict"))):
        here = folder / key.replace(":", "-")
        (here / "up").mkdir(parents=True)
        os.environ["LIGHTBOX_HOME"] = str(here / "ws")
        out[key] = call(here / "up")
    return out


# ---- the tests ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fuzz")
    result = run_limited(f"""
        import test_fuzz_inputs as fuzz
        from pathlib import Path
        # ---
        result.update(kind="done", out=fuzz.run_all(Path({str(tmp)!r})))
    """, headroom_mb=HEADROOM_MB, imports="import engine.data.ingest, engine.inference.batch", tmp=tmp,
        timeout=600)
    assert result["kind"] == "done", result
    return result["out"]


def test_the_fuzz_files_are_many_and_always_the_same():
    files, zips = hostile_files.fuzz_files(), hostile_files.fuzz_zips()
    assert len(files) >= 100 and len(zips) >= 10 and len({n for n, _ in files}) == len(files)
    assert [d for _, d in hostile_files.fuzz_files()] == [d for _, d in files]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_ingest_names_every_malformed_file_or_reads_it(task, fuzzed):
    out = fuzzed[f"ingest:{task}"]
    assert "refused" not in out, out.get("refused")
    problems = {}
    for p in out["problems"]:
        problems.setdefault(p["file"], []).append(p["message"])
    kept = {s.rsplit(".", 1)[0] for s in out["sources"]}
    named = {p.rsplit(".", 1)[0].replace("masks/", "images/") for p in problems}

    def stem(path: str) -> str:
        return path.rsplit(".", 1)[0].replace("masks/", "images/")
    # each file is named in the problems (or its pair is: a mask that does not fit its image names the mask),
    # or it was read and is a sample (a mask: its image is one)
    unaccounted = [path for path in out["paths"] if path not in problems and stem(path) not in named | kept]
    assert not unaccounted, unaccounted
    messages = [m for ms in problems.values() for m in ms]
    assert all(one_line(m) for m in messages), [m for m in messages if not one_line(m)]
    raw = [m for m in messages if FALLBACK in m]
    assert not raw, raw
    assert len(problems) >= 60            # most mutations break the file; the count guards the generator


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_prediction_refuses_every_malformed_file_in_one_line(task, fuzzed):
    outcomes = fuzzed[f"predict:{task}"]
    crashes = {k: v for k, v in outcomes.items() if v.startswith("CRASH")}
    assert not crashes, crashes
    refusals = [v for v in outcomes.values() if v.startswith("refused")]
    assert all(one_line(v) for v in refusals), [v for v in refusals if not one_line(v)]
    assert len(refusals) >= 60


@pytest.mark.parametrize("reader", ["ingest", "predict"])      # an upload, and a ZIP sent to batch prediction
def test_malformed_zips_are_refused_in_one_line(fuzzed, reader):
    outcomes = fuzzed[f"zips:{reader}"]
    crashes = {k: v for k, v in outcomes.items() if v.startswith("CRASH")}
    assert not crashes, crashes
    assert all(one_line(v) for v in outcomes.values())
    assert outcomes["garbage.zip"].startswith("refused") and outcomes["cut-directory.zip"].startswith("refused")
