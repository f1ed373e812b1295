"""Results that can't fool a student (issue 12): patients and copies never straddle the split, trivial properties that
predict the label are called out, and clean data raises no alarm. Every trap is built from small generated files."""
from __future__ import annotations

import io as bytes_io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from engine.cli.main import main as cli
from engine.data import demo
from engine.data.dataset import load_manifest, load_split
from engine.data.duplicates import near_duplicate_sets, thumbnail
from engine.data.folds import run_splits
from engine.data.groups import FileInfo, group_files
from engine.data.ingest import ingest
from engine.data.resplit import resplit
from engine.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def picture(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random 8-bit image: neighbouring pixels alike (like anatomy), different seeds clearly different."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 3)
    field = (field - field.min()) / (field.max() - field.min())
    return np.round(40 + 180 * field).astype(np.uint8)


def png(array: np.ndarray, level: int = 6) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def splits_by(manifest: dict, key) -> dict[str, set[str]]:
    found = defaultdict(set)
    for sample in manifest["samples"]:
        found[key(sample["source"])].add(sample["split"])
    return found


def kinds(result) -> list[str]:
    return [w["kind"] for w in result.report.warnings]


def warning(result, kind: str) -> dict:
    (found,) = [w for w in result.report.warnings if w["kind"] == kind]
    return found


def cardiac_slices(patients: int = 5, slices: int = 8) -> dict[str, bytes]:
    """Slices named like the Sunnybrook set: SCD<patient>_<slice>.png, with masks."""
    files = {}
    for p in range(patients):
        for s in range(slices):
            name = f"SCD00001{p:02d}_{s * 4:04d}.png"
            image = picture(100 * p + s)
            files[f"images/{name}"] = png(image)
            files[f"masks/{name}"] = png(((image > 130) * 255).astype(np.uint8))
    return files


def patient(source: str) -> str:
    return source.rsplit("/", 1)[-1].split("_")[0]


# ---- 1. patients -----------------------------------------------------------------------------------------

def test_patient_prefixed_slices_never_straddle_the_split(workspace, tmp_path):
    """All 5 patients of a slice-by-slice upload landed in train, val and test; now each is in one split."""
    result = ingest(write(tmp_path / "scd", cardiac_slices()), "segmentation")
    groups = result.report.groups
    assert (groups["key"], groups["count"], groups["spanning_splits"]) == ("filename prefix", 5, 0)
    by_patient = splits_by(load_manifest(result.dataset_id), patient)
    assert len(by_patient) == 5 and all(len(splits) == 1 for splits in by_patient.values())
    assert {s for splits in by_patient.values() for s in splits} == {"train", "val", "test"}
    example = groups["examples"][0]
    assert example["key"].startswith("SCD00001") and example["images"] == 8 and len(example["files"]) == 3


def test_group_by_none_really_turns_grouping_off(workspace, tmp_path, capsys):
    src = write(tmp_path / "scd", cardiac_slices())
    assert cli(["ingest", str(src), "--task", "segmentation", "--group-by", "none", "--json", "--quiet"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["report"]["groups"]["key"] == "none" and answer["report"]["groups"]["count"] == 0
    by_patient = splits_by(load_manifest(answer["dataset_id"]), patient)
    assert sum(len(splits) > 1 for splits in by_patient.values()) >= 3       # slice by slice, as before
    assert cli(["ingest", str(src), "--task", "segmentation", "--json", "--quiet"]) == 0     # default: auto
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["report"]["groups"]["key"] == "filename prefix"
    assert all(len(s) == 1 for s in splits_by(load_manifest(answer["dataset_id"]), patient).values())


@pytest.mark.parametrize("task, layout", [
    ("classification", "{cls}/patient{p:02d}/img{s}.png"),
    ("segmentation", "{half}/p{p:02d}/slice_{s}.png"),
])
def test_a_folder_per_patient_is_a_group(workspace, tmp_path, task, layout):
    files = {}
    for p in range(8):
        cls = ("normal", "effusion")[p % 2]
        for s in range(4):
            image = picture(1000 + 10 * p + s)
            if task == "classification":
                files[layout.format(cls=cls, p=p, s=s)] = png(image)
            else:
                files[layout.format(half="images", p=p, s=s)] = png(image)
                files[layout.format(half="masks", p=p, s=s)] = png(((image > 130) * 255).astype(np.uint8))
    result = ingest(write(tmp_path / "up", files), task)
    assert result.report.groups["key"] == "folder" and result.report.groups["count"] == 8
    by_folder = splits_by(load_manifest(result.dataset_id), lambda source: source.split("/")[1])
    assert all(len(splits) == 1 for splits in by_folder.values())
    assert "shortcut" not in kinds(result)          # a patient's own folder predicts its class, but never a new one


def info(paths: list[str]) -> list[FileInfo]:
    return [FileInfo(path=p, label=p.split("/")[0], folders=tuple(p.split("/")[1:-1])) for p in paths]


@pytest.mark.parametrize("paths", [
    [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(20)],                      # numbers only
    [f"{c}/{c}_{i:03d}.png" for c in ("chest", "abdomen") for i in range(20)],         # class-name prefix
    [f"{c}/{c}1_{i:03d}.png" for c in ("grade", "stage") for i in range(20)],          # class name with a digit
    [f"{c}/img{i}.png" for c in ("cat", "dog") for i in range(20)],                   # no separator
    [f"{c}/{c}/x_{i}.png" for c in ("cat", "dog") for i in range(20)],                 # folder named like the class
    [f"{c}/IM_{i:04d}.png" for c in ("cat", "dog") for i in range(20)],                # one prefix everywhere
    [f"{c}/{2019 + i % 2}_{i}.png" for c in ("cat", "dog") for i in range(20)],        # a year: groups too big
    [f"{c}/{c[0]}{1}_{i}.png" for c in ("cat", "dog") for i in range(20)],             # the class under another name
])
def test_names_that_are_not_patients_make_no_groups(paths):
    grouping = group_files(info(paths), "auto")
    assert grouping.key == "none" and not any(grouping.groups), grouping


def test_a_pattern_names_the_patient_and_bad_patterns_are_refused(workspace, tmp_path):
    files = {f"{c}/scan-{'AB'[p % 2]}{p}-{s}.png": png(picture(2000 + 100 * k + 10 * p + s))
             for k, c in enumerate(("cat", "dog")) for p in range(4) for s in range(3)}
    src = write(tmp_path / "up", files)
    result = ingest(src, "classification", group_by=r"scan-([A-Z]\d+)-")
    assert result.report.groups["key"] == r"scan-([A-Z]\d+)-" and result.report.groups["count"] == 4
    with pytest.raises(UserError, match="not a valid regular expression"):
        ingest(src, "classification", group_by="scan-([")
    with pytest.raises(UserError, match="matches none of the 24 file paths"):
        ingest(src, "classification", group_by=r"patient(\d+)")
    with pytest.raises(UserError, match="nothing to group by folder"):
        ingest(src, "classification", group_by="folder")


def test_a_patient_in_two_fixed_folders_is_a_warning(workspace, tmp_path):
    files = {f"{split}/{c}/P{p:02d}_{s}.png": png(picture(3000 + 1000 * k + 100 * p + 10 * s + (split == "test")))
             for split in ("train", "test") for k, c in enumerate(("cat", "dog")) for p in range(4) for s in range(3)
             if not (split == "test" and p > 0)}
    result = ingest(write(tmp_path / "up", files), "classification")
    assert result.report.groups["spanning_splits"] == 1
    found = warning(result, "group_spans_splits")
    assert found["count"] == 1 and "P00" in found["message"] and "train/, val/ and test/ folders" in found["message"]


# ---- 2. near-duplicates --------------------------------------------------------------------------------

def copies_upload() -> dict[str, bytes]:
    files = {}
    for c, cls in enumerate(("cat", "dog")):
        for i in range(12):
            image = picture(4000 + 100 * c + i)
            files[f"{cls}/{cls}{i}.png"] = png(image)
            if i < 3:
                files[f"{cls}/{cls}{i}_resaved.png"] = png(image, level=0)       # other bytes, same pixels
                edited = image.copy()
                edited[20, 20] = 255 - edited[20, 20]                            # one pixel changed
                files[f"{cls}/{cls}{i}_edited.png"] = png(edited)
    return files


@pytest.mark.parametrize("group_by", ["auto", "none"])
def test_re_encoded_and_edited_copies_share_their_originals_split(workspace, tmp_path, group_by):
    files = copies_upload()
    assert files["cat/cat0.png"] != files["cat/cat0_resaved.png"]
    result = ingest(write(tmp_path / "up", files), "classification", group_by=group_by)
    assert [p for p in result.report.problems if p["kind"] == "duplicate"] == []
    by_original = splits_by(load_manifest(result.dataset_id),
                            lambda s: s.split("/")[-1].split("_")[0].removesuffix(".png"))
    assert all(len(splits) == 1 for splits in by_original.values())
    found = warning(result, "near_duplicates")
    assert found["count"] == 6 and found["images"] == 18
    manifest = load_manifest(result.dataset_id)                 # cross-validation folds keep them together too
    for fold in (1, 2, 3):
        in_fold = [dict(s, split=split) for s, split in zip(manifest["samples"], run_splits(manifest, 3, fold))]
        assert all(len(splits) == 1 for splits in splits_by({"samples": in_fold}, lambda s: s.split("/")[-1]
                                                             .split("_")[0].removesuffix(".png")).values())
    assert sorted(found["groups"][0]) == ["cat/cat0.png", "cat/cat0_edited.png", "cat/cat0_resaved.png"]
    assert "near-identical" in found["message"] and "kept in one split" in found["message"]


def test_a_copy_filed_under_two_classes_is_named(workspace, tmp_path):
    files = {f"{c}/{c}{i}.png": png(picture(5000 + 100 * k + i)) for k, c in enumerate(("cat", "dog"))
             for i in range(6)}
    files["dog/stray.png"] = png(picture(5000), level=1)                   # cat0 again, under dog
    result = ingest(write(tmp_path / "up", files), "classification")
    message = warning(result, "near_duplicates")["message"]
    assert "cat/cat0.png is cat but dog/stray.png is dog" in message


def test_thumbnails_tell_copies_from_different_slices():
    rng = np.random.default_rng(0)
    slices = [demo.cardiac_slice(rng, 96)[0] for _ in range(40)]
    frames = [s[None].astype(np.float32) / 255 for s in slices]
    assert near_duplicate_sets(np.stack([thumbnail(f) for f in frames])) == []
    jpeg = bytes_io.BytesIO()
    Image.fromarray(slices[3]).save(jpeg, format="JPEG", quality=75)
    recoded = np.asarray(Image.open(jpeg))[None].astype(np.float32) / 255
    bigger = np.asarray(Image.fromarray(slices[5]).resize((192, 192)))[None].astype(np.float32) / 255
    found = near_duplicate_sets(np.stack([thumbnail(f) for f in [*frames, recoded, bigger]]))
    assert found == [[3, 40], [5, 41]]


# ---- 3. shortcuts --------------------------------------------------------------------------------------

def size_shortcut_upload() -> dict[str, bytes]:
    """38 of 39 chest images are 96×96 px, only 1 of 37 abdomen images is (the real set: 512×512)."""
    rng = np.random.default_rng(7)
    files = {}
    for i in range(39):
        image = picture(6000 + i, 96)
        files[f"chest/c{i:02d}.png"] = png(image if i else image[:80, :90])
    for i in range(37):
        h, w = (96, 96) if i == 0 else (int(rng.integers(60, 128)), int(rng.integers(60, 128)))
        if (h, w) == (96, 96) and i:
            h += 1
        files[f"abdomen/a{i:02d}.png"] = png(picture(7000 + i, 128)[:h, :w])
    return files


def test_image_size_that_predicts_the_class_is_a_shortcut(workspace, tmp_path):
    result = ingest(write(tmp_path / "up", size_shortcut_upload()), "classification")
    found = warning(result, "shortcut")
    assert found["property"] == "size" and found["balanced_accuracy"] >= 0.85 and found["chance"] == 0.5
    assert found["message"].startswith("Image size alone tells the classes apart: 38 of 39 chest images are "
                                       "96×96 px but only 1 of 37 abdomen images; a model can learn the size")
    assert found["per_class"]["chest"]["96×96"] == 38


def test_brightness_and_file_type_shortcuts(workspace, tmp_path):
    files = {}
    for i in range(24):
        files[f"dark/d{i}.png"] = png((picture(8000 + i) * 0.5).astype(np.uint8))
        jpeg = bytes_io.BytesIO()
        Image.fromarray(picture(9000 + i)).save(jpeg, format="JPEG", quality=95)
        files[f"bright/b{i}.jpg"] = jpeg.getvalue()
    result = ingest(write(tmp_path / "up", files), "classification")
    found = {w["property"]: w for w in result.report.warnings if w["kind"] == "shortcut"}
    assert set(found) == {"brightness", "file_type"}
    assert found["brightness"]["value_kind"] == "number" and found["brightness"]["per_class"]["dark"]["n"] == 24
    assert "24 of 24 bright images are .jpg files but none of the 24 dark images" in found["file_type"]["message"]


# ---- warnings on split sizes and balance; clean data stays quiet -----------------------------------------

def test_small_splits_and_imbalance_are_warned(workspace, tmp_path):
    files = {f"{c}/{c}{i}.png": png(picture(10000 + 100 * k + i))
             for k, (c, n) in enumerate((("common", 30), ("rare", 10))) for i in range(n)}
    result = ingest(write(tmp_path / "up", files), "classification")
    imbalance = warning(result, "imbalance")
    assert imbalance["ratio"] == 3.0 and "30 common images but only 10 rare" in imbalance["message"]
    small = [w for w in result.report.warnings if w["kind"] == "small_split"]
    assert {w["split"] for w in small} == {"val", "test"}
    assert "fewer than 30" in small[0]["message"] and "fewer than 5 of some class" in small[0]["message"]


def test_clean_balanced_upload_gives_no_warning(workspace, tmp_path):
    files = {f"{c}/{c}{i}.png": png(picture(11000 + 1000 * k + i)) for k, c in enumerate(("cat", "dog"))
             for i in range(100)}
    result = ingest(write(tmp_path / "up", files), "classification")
    assert result.report.warnings == [] and result.report.groups["key"] == "none"


# ---- splitting again with another grouping ---------------------------------------------------------------

def test_resplit_makes_a_new_dataset_and_leaves_the_old_one(workspace, tmp_path):
    first = ingest(write(tmp_path / "scd", cardiac_slices()), "segmentation", group_by="none")
    before = load_manifest(first.dataset_id)
    second = resplit(first.dataset_id, "auto")
    after = load_manifest(second)
    assert load_manifest(first.dataset_id) == before                      # runs on the old split keep meaning
    assert after["report"]["groups"]["key"] == "filename prefix" and after["resplit_from"] == first.dataset_id
    assert all(len(s) == 1 for s in splits_by(after, patient).values())
    assert after["name"].endswith("(auto grouping)")
    old, new = (Path(workspace) / "datasets" / i / "images" / "000000.npy" for i in (first.dataset_id, second))
    assert old.stat().st_ino == new.stat().st_ino                         # arrays shared, not copied
    assert len(load_split(second, "train", 32).keys) == after["split_counts"]["train"]
    with pytest.raises(UserError, match="does not exist"):
        resplit("../escape", "auto")


def test_resplit_checks_a_dataset_ingested_before_the_checks(workspace, tmp_path):
    """Old manifests have no near-duplicate sets or folder splits recorded: they come from the arrays and paths."""
    files = {f"train/{k}" if not k.endswith("_edited.png") else f"test/{k}": v for k, v in copies_upload().items()}
    first = ingest(write(tmp_path / "up", files), "classification", group_by="none")
    path = Path(workspace) / "datasets" / first.dataset_id / "manifest.json"
    manifest = json.loads(path.read_text())
    for row in manifest["samples"]:
        for field in ("near_duplicate", "folder_split", "group_key", "group", "mean", "channels", "folder"):
            row.pop(field)
    del manifest["report"]["warnings"], manifest["report"]["groups"], manifest["seed"]
    path.write_text(json.dumps(manifest))
    again = load_manifest(resplit(first.dataset_id, "none"))
    (copies,) = [w for w in again["report"]["warnings"] if w["kind"] == "near_duplicates"]
    assert copies["count"] == 6 and "lie in different train/val/test folders" in copies["message"]
    assert all(s["split"] == "test" for s in again["samples"] if s["source"].startswith("test/"))



def test_a_single_patient_upload_is_warned_at_ingest_and_refused_before_training(workspace, tmp_path):
    """All 18 slices of one PatientID used to be split 18/0/0 and 'validated' on the training images."""
    import pydicom
    from pydicom.data import get_testdata_file

    from engine.config import RunConfig
    from engine.preflight import check_config
    files = {}
    for s, (name, data) in enumerate(sorted(cardiac_slices(patients=1, slices=18).items())):
        if name.startswith("images/"):
            ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
            pixels = np.asarray(Image.open(bytes_io.BytesIO(data)), dtype=np.uint16)
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelData = (pixels * 16 + 100).tobytes()
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.WindowCenter, ds.WindowWidth, ds.PatientID = 2100, 4000, "ONE-PATIENT"
            buffer = bytes_io.BytesIO()
            ds.save_as(buffer)
            files[name.replace(".png", ".dcm")] = buffer.getvalue()
        else:
            files[name.replace(".png", ".png")] = data
    result = ingest(write(tmp_path / "one", files), "segmentation")
    assert result.report.groups["count"] == 1 and result.report.patients == 1
    assert "small_split" in kinds(result)
    assert {s["split"] for s in load_manifest(result.dataset_id)["samples"]} == {"train"}
    with pytest.raises(UserError, match="validation split of this dataset is empty"):
        check_config(RunConfig(dataset_id=result.dataset_id, arch="unet", image_size=32))
