"""Ingest: layouts, the report's problem kinds, ZIP defences, and the dataset folder contract read by dataset.py."""
from __future__ import annotations

import io as bytes_io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from engine import workspace as lbx_workspace
from engine.data.dataset import list_datasets, load_manifest, load_split
from engine.data.ingest import ingest, ingest_files
from engine.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def png(array: np.ndarray) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int, size: int = 24, colour: bool = False) -> np.ndarray:
    """A distinct small 8-bit image (distinct content, so no accidental duplicates)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3) if colour else (size, size), dtype=np.uint8)


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def classification_files(prefix: str = "", per_class: int = 6) -> dict[str, bytes]:
    return {f"{prefix}{cls}/{i}.png": png(picture(100 * c + i)) for c, cls in enumerate(("cat", "dog"))
            for i in range(per_class)}


def problems_of(result, kind: str) -> list[dict]:
    return [p for p in result.report.problems if p["kind"] == kind]


def nothing_written(home: Path) -> bool:
    return not any(lbx_workspace.datasets_dir().iterdir()) and not any((home / "tmp").glob("*"))


# ---- the contract: manifest, arrays, temp folders ------------------------------------------------

def test_zip_with_wrapper_folder_and_junk_makes_a_dataset(workspace, tmp_path):
    files = classification_files("mydata/") | {"__MACOSX/mydata/cat/._0.png": b"junk", "mydata/.DS_Store": b"x",
                                               "mydata/dog/Thumbs.db": b"x"}
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    result = ingest(archive, "classification")
    assert result.report.problems == []
    manifest = load_manifest(result.dataset_id)
    assert result.dataset_id.startswith("pets-") and manifest["name"] == "pets" and manifest["source"] == "pets.zip"
    assert manifest["classes"] == ["cat", "dog"] and manifest["num_classes"] == 2 and manifest["channels"] == 1
    assert manifest["task"] == "classification" and manifest["created"]
    sample = manifest["samples"][0]
    assert sample["key"] == "000000" and sample["source"] == "mydata/cat/0.png" and sample["label"] == 0
    assert (sample["height"], sample["width"], sample["patient"], sample["modality"]) == (24, 24, None, None)
    assert sum(manifest["split_counts"].values()) == 12 and manifest["report"]["per_class"] == {"cat": 6, "dog": 6}
    image = np.load(lbx_workspace.datasets_dir() / result.dataset_id / "images" / "000000.npy")
    assert image.dtype == np.float16 and image.shape == (1, 24, 24) and 0 <= image.min() and image.max() <= 1
    np.testing.assert_allclose(image[0], picture(0) / 255.0, atol=1e-3)
    assert not any((workspace / "tmp").iterdir())                     # extraction folder cleaned up
    train = load_split(result.dataset_id, "train", 16)
    assert train.images.shape[1:] == (1, 16, 16) and len(train.keys) == manifest["split_counts"]["train"]


def test_progress_reports_every_file(workspace, tmp_path):
    seen = []
    ingest(write(tmp_path / "src", classification_files()), "classification", progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12) and len(seen) == 13


def test_colour_image_makes_the_dataset_rgb(workspace, tmp_path):
    files = classification_files() | {"cat/colour.png": png(picture(7, colour=True))}
    result = ingest(write(tmp_path / "src", files), "classification", name="Mixed colours!")
    manifest = load_manifest(result.dataset_id)
    assert manifest["channels"] == 3 and result.dataset_id.startswith("mixed-colours-")
    folder = lbx_workspace.datasets_dir() / result.dataset_id / "images"
    gray = np.load(folder / "000000.npy")
    assert gray.shape == (3, 24, 24) and (gray[0] == gray[2]).all()


# ---- problem kinds -------------------------------------------------------------------------------

def test_classification_problem_kinds(workspace, tmp_path):
    files = classification_files() | {
        "cat/broken.png": b"\x89PNG not really",
        "dog/notes.txt": b"hello",
        "dog/copy.png": png(picture(0)),             # same bytes as cat/0.png
        "empty/broken.jpg": b"nope",
        "readme.md": b"top-level file",
    }
    result = ingest(write(tmp_path / "src", files), "classification")
    assert [p["file"] for p in problems_of(result, "unreadable")] == ["cat/broken.png", "empty/broken.jpg"]
    assert {p["file"] for p in problems_of(result, "unsupported")} == {"dog/notes.txt", "readme.md"}
    (duplicate,) = problems_of(result, "duplicate")
    assert duplicate["file"] == "dog/copy.png" and "cat/0.png" in duplicate["message"]
    (empty,) = problems_of(result, "empty_class")
    assert empty["file"] == "empty"
    assert load_manifest(result.dataset_id)["classes"] == ["cat", "dog"]
    assert result.report.samples == 12
    assert not list((lbx_workspace.datasets_dir() / result.dataset_id / "images").glob("*-*.npy"))


def segmentation_files(n: int = 5, prefix: str = "") -> dict[str, bytes]:
    files = {}
    for i in range(n):
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i: 14 + i, 5:15] = 255
        files[f"{prefix}images/s{i}.png"] = png(picture(i))
        files[f"{prefix}masks/s{i}.png"] = png(mask)
    return files


def test_segmentation_problem_kinds(workspace, tmp_path):
    files = segmentation_files() | {
        "images/lonely.png": png(picture(50)),
        "masks/orphan.png": png(np.zeros((24, 24), np.uint8)),
        "images/small.png": png(picture(51)),
        "masks/small.png": png(np.zeros((12, 12), np.uint8)),
        "images/smeared.png": png(picture(52)),
        "masks/smeared.png": png(np.arange(576).reshape(24, 24).astype(np.uint8)),
        "images/badmask.png": png(picture(53)),
        "masks/badmask.png": b"garbage",
    }
    result = ingest(write(tmp_path / "src", files), "segmentation")
    kinds = {p["kind"]: p["file"] for p in result.report.problems}
    assert kinds == {"mask_missing": "images/lonely.png", "image_missing": "masks/orphan.png",
                     "mask_size_mismatch": "masks/small.png", "mask_labels_out_of_range": "masks/smeared.png",
                     "unreadable": "masks/badmask.png"}
    manifest = load_manifest(result.dataset_id)
    assert manifest["classes"] == ["background", "foreground"] and result.report.mask_values == [0, 255]
    mask = np.load(lbx_workspace.datasets_dir() / result.dataset_id / "masks" / "000000.npy")
    assert mask.dtype == np.uint8 and mask.shape == (24, 24) and set(np.unique(mask)) == {0, 1}
    assert "label" not in manifest["samples"][0]


def test_multiclass_masks_in_a_wrapper_with_splits(workspace, tmp_path):
    files = {}
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            mask = np.zeros((24, 24), np.uint8)
            mask[2:8, 2:8], mask[10:20, 10:20] = 1, 2
            files[f"study/{split}/images/{split}{i}.png"] = png(picture((100 if split == "val" else 0) + i))
            files[f"study/{split}/masks/{split}{i}_mask.png"] = png(mask)
    result = ingest(write(tmp_path / "src", files), "segmentation")
    manifest = load_manifest(result.dataset_id)
    assert result.report.problems == []
    assert manifest["classes"] == ["background", "class 1", "class 2"] and manifest["num_classes"] == 3
    by_source = {s["source"]: s["split"] for s in manifest["samples"]}
    assert all(split == "val" for source, split in by_source.items() if "/val/" in source)
    assert {split for source, split in by_source.items() if "/train/" in source} <= {"train", "test"}


def test_common_folder_names_and_mask_suffixes_of_public_datasets(workspace, tmp_path):
    """image/ + labels/ with '_gt' masks, as exported from many public segmentation sets."""
    files = {}
    for i, suffix in enumerate(["_gt", "-seg", "_segmentation", "", "_mask"]):
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i: 14 + i, 5:15] = 1
        files[f"lv/image/p{i}.png"] = png(picture(400 + i))
        files[f"lv/labels/p{i}{suffix}.png"] = png(mask)
    result = ingest(write(tmp_path / "src", files), "segmentation")
    assert result.report.problems == [] and result.report.samples == 5
    files["lv/labels/p3_mask.png"] = png(np.zeros((24, 24), np.uint8))      # a second mask for p3.png
    again = ingest(write(tmp_path / "src3", files), "segmentation")
    assert [(p["file"], p["kind"]) for p in again.report.problems] == [("lv/labels/p3_mask.png", "duplicate")]
    assert again.report.samples == 5
    with pytest.raises(UserError, match="segmentation layout"):
        ingest(write(tmp_path / "src2", files), "classification")


def test_masks_without_images_are_refused_with_the_layout(workspace, tmp_path):
    """A masks-only upload says so and how to lay it out, not '5 image missing' (issue 11, B6)."""
    masks = {name: data for name, data in segmentation_files().items() if name.startswith("masks/")}
    misplaced = masks | {f"scans/s{i}.png": png(picture(i)) for i in range(5)}      # images not in images/
    for folder, files in (("masks-only", masks), ("scans", misplaced)):
        with pytest.raises(UserError) as refused:
            ingest(write(tmp_path / folder, files), "segmentation")
        message = str(refused.value)
        assert "5 masks but no images" in message and "image missing" not in message
        assert "images/ folder and a masks/ folder" in message and "matching" in message
    archive = tmp_path / "masks.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in masks.items():
            zipped.writestr(f"study/{name}", data)
    with pytest.raises(UserError, match="5 masks but no images"):
        ingest(archive, "segmentation")
    assert nothing_written(workspace)


def test_masks_named_unlike_every_image_are_refused_with_the_naming_rule(workspace, tmp_path):
    files = {name.replace("masks/s", "masks/other"): data for name, data in segmentation_files().items()}
    with pytest.raises(UserError, match="No mask has the file name of an image \\(5 masks, 5 images\\)"):
        ingest(write(tmp_path / "src", files), "segmentation")
    images = {name: data for name, data in files.items() if name.startswith("images/")}
    with pytest.raises(UserError, match="5 images but no masks.*images/ folder and a masks/ folder"):
        ingest(write(tmp_path / "only-images", images), "segmentation")


def test_grey_level_masks_become_class_indices(workspace, tmp_path):
    """Masks saved as 0/85/170/255 so the classes are visible; one slice lacks class 2."""
    files = {}
    for i in range(6):
        mask = np.zeros((24, 24), np.uint8)
        mask[2:8, 2:8] = 85
        mask[10:20, 10:20] = 255
        if i:
            mask[20:23, 2:6] = 170
        files[f"images/c{i}.png"] = png(picture(200 + i))
        files[f"masks/c{i}.png"] = png(mask)
    result = ingest(write(tmp_path / "src", files), "segmentation")
    manifest = load_manifest(result.dataset_id)
    assert result.report.problems == [] and result.report.mask_values == [0, 85, 170, 255]
    assert manifest["classes"] == ["background", "class 1", "class 2", "class 3"]
    assert manifest["mask_levels"] == {"0": 0, "85": 1, "170": 2, "255": 3}
    first = next(s["key"] for s in manifest["samples"] if s["source"] == "images/c0.png")
    mask = np.load(lbx_workspace.datasets_dir() / result.dataset_id / "masks" / f"{first}.npy")
    assert mask[5, 5] == 1 and mask[15, 15] == 3 and mask[0, 0] == 0 and set(np.unique(mask)) == {0, 1, 3}


def test_binary_masks_saved_as_0_1_and_as_0_255_are_one_foreground(workspace, tmp_path):
    files = {}
    for i in range(4):
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i: 14 + i, 5:15] = 255 if i % 2 else 1
        files[f"images/b{i}.png"] = png(picture(500 + i))
        files[f"masks/b{i}.png"] = png(mask)
    files["images/void.png"] = png(picture(600))
    void = np.zeros((24, 24), np.uint8)
    void[2:6, 2:6], void[10:14, 10:14] = 1, 255                # 255 beside a class: often 'ignore', refused
    files["masks/void.png"] = png(void)
    files["images/smeared.png"] = png(picture(601))
    files["masks/smeared.png"] = png(np.array([[0, 1, 2, 253, 254, 255] * 4] * 24, np.uint8))
    result = ingest(write(tmp_path / "src", files), "segmentation")
    manifest = load_manifest(result.dataset_id)
    assert manifest["classes"] == ["background", "foreground"]
    assert {(p["file"], p["kind"]) for p in result.report.problems} == {
        ("masks/void.png", "mask_labels_out_of_range"), ("masks/smeared.png", "mask_labels_out_of_range")}
    for sample in manifest["samples"]:
        mask = np.load(lbx_workspace.datasets_dir() / result.dataset_id / "masks" / f"{sample['key']}.npy")
        assert set(np.unique(mask)) == {0, 1}


def test_masks_that_disagree_on_their_values_are_refused_whole(workspace, tmp_path):
    files = {}
    for i in range(6):
        mask = np.zeros((24, 24), np.uint8)
        for k, level in enumerate((70, 140, 200), start=1):
            mask[k * 5: k * 5 + 3, 2:8] = level + 8 * i          # each file its own three grey levels
        files[f"images/c{i}.png"] = png(picture(300 + i))
        files[f"masks/c{i}.png"] = png(mask)
    with pytest.raises(UserError, match=r"masks use 19 different values .*masks/c\d\.png holds 0, \d+, \d+, \d+"):
        ingest(write(tmp_path / "src", files), "segmentation")
    assert list_datasets() == []



def masks_with(values_per_mask: list[tuple[int, ...]], seed: int = 700) -> dict[str, bytes]:
    """A segmentation upload with one mask per entry, holding exactly those values (in blocks)."""
    files = {}
    for i, values in enumerate(values_per_mask):
        mask = np.zeros((24, 24), np.uint8)
        for k, value in enumerate(values):
            mask[(k % 4) * 6: (k % 4) * 6 + 4, 4 + i % 10: 12 + i % 10] = value
        files[f"images/m{i:02d}.png"] = png(picture(seed + i))
        files[f"masks/m{i:02d}.png"] = png(mask)
    return files


@pytest.mark.parametrize("common, odd", [((0, 1), (0, 1, 7)), ((0, 1), (0, 7)), ((0, 255), (0, 3)),
                                         ((0, 255), (0, 7))])
def test_one_mask_with_an_outlier_value_is_skipped_not_a_new_task(workspace, tmp_path, common, odd):
    """Issue 13 item 3: among 0/1 masks one holding 7 made an 8-class task with no problem listed; among 0/255
    masks it refused the whole upload. The odd mask is named and skipped; the task stays binary."""
    files = masks_with([common] * 8 + [odd])
    result = ingest(write(tmp_path / "src", files), "segmentation")
    manifest = load_manifest(result.dataset_id)
    assert manifest["classes"] == ["background", "foreground"] and result.report.samples == 8
    assert [(p["file"], p["kind"]) for p in result.report.problems] == [("masks/m08.png", "mask_labels_out_of_range")]
    message = result.report.problems[0]["message"]
    odd_value = (set(odd) - set(common)).pop()
    assert f"holds {odd_value}" in message and "other masks" in message and "skipped" in message
    assert result.report.mask_values == sorted(common)


def test_rare_classes_with_consecutive_indices_are_kept(workspace, tmp_path):
    """Cardiac MRI: classes 0..3 with class 3 on only 2 of 40 slices; and binary masks with a rare class 2."""
    cardiac = ingest(write(tmp_path / "a", masks_with([(0, 1, 2)] * 38 + [(0, 1, 2, 3)] * 2)), "segmentation")
    assert load_manifest(cardiac.dataset_id)["num_classes"] == 4 and cardiac.report.problems == []
    rare = ingest(write(tmp_path / "b", masks_with([(0, 1)] * 20 + [(0, 2)])), "segmentation")
    assert load_manifest(rare.dataset_id)["num_classes"] == 3 and rare.report.problems == []
    # a gap the masks agree on (labels 0, 1, 2, 4 as in BraTS) is theirs to keep
    brats = ingest(write(tmp_path / "c", masks_with([(0, 1, 2, 4)] * 6 + [(0, 1)] * 3)), "segmentation")
    assert load_manifest(brats.dataset_id)["num_classes"] == 5 and brats.report.problems == []
    # grey levels where one slice adds a level off the grid the others use: that slice is the odd one
    grey = ingest(write(tmp_path / "d", masks_with([(0, 85, 170, 255)] * 8 + [(0, 85, 128, 255)])), "segmentation")
    assert load_manifest(grey.dataset_id)["mask_levels"] == {"0": 0, "85": 1, "170": 2, "255": 3}
    assert [p["file"] for p in grey.report.problems] == ["masks/m08.png"]

# ---- DICOM inside uploads ------------------------------------------------------------------------

def dicom_with_patient(patient: str, seed: int) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = patient
    ds.PixelData = np.random.default_rng(seed).integers(0, 2000, (128, 128), dtype=np.int16).tobytes()
    buffer = bytes_io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_dicom_without_extension_patients_and_multiframe(workspace, tmp_path):
    files = {f"{cls}/p{p}/IM{k}": dicom_with_patient(f"{cls}-{p}", 10 * p + k + (500 if cls == "b" else 0))
             for cls in ("a", "b") for p in range(4) for k in range(2)}
    files["a/dose.dcm"] = Path(get_testdata_file("rtdose.dcm")).read_bytes()
    result = ingest(write(tmp_path / "src", files), "classification")
    manifest = load_manifest(result.dataset_id)
    assert result.report.problems == [] and result.report.patients == 9
    assert result.report.modalities == {"CT": 16, "RTDOSE": 1} and result.report.dtypes["int16"] == 16
    splits_by_patient = {}
    for sample in manifest["samples"]:
        splits_by_patient.setdefault(sample["patient"], set()).add(sample["split"])
    assert all(len(splits) == 1 for splits in splits_by_patient.values())
    # PatientIDs are kept only as keyed pseudonyms: same patient, same pseudonym; no ID in the manifest
    assert len(splits_by_patient) == 9
    text = (lbx_workspace.datasets_dir() / result.dataset_id / "manifest.json").read_text()
    assert "a-1" not in text and "b-3" not in text
    assert all(p.startswith("patient-") for p in splits_by_patient)
    again = load_manifest(ingest(write(tmp_path / "again", files), "classification").dataset_id)
    assert [s["patient"] for s in again["samples"]] == [s["patient"] for s in manifest["samples"]]
    assert [s["split"] for s in again["samples"]] == [s["split"] for s in manifest["samples"]]
    dose = [s for s in manifest["samples"] if s["source"].startswith("a/dose.dcm#")]
    assert len(dose) == 15 and dose[3]["source"] == "a/dose.dcm#3" and dose[0]["modality"] == "RTDOSE"


# ---- refusals ------------------------------------------------------------------------------------

def zip_with(tmp_path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return archive


def good_entries() -> list[tuple[str, bytes]]:
    return list(classification_files().items())


@pytest.mark.parametrize("bad_name", ["../escape.png", "cat/../../escape.png", "/etc/escape.png", "C:/escape.png"])
def test_zip_path_escapes_are_refused(workspace, tmp_path, bad_name):
    archive = zip_with(tmp_path, good_entries() + [(bad_name, png(picture(99)))])
    with pytest.raises(UserError, match="points outside the upload"):
        ingest(archive, "classification")
    assert nothing_written(workspace) and not (tmp_path / "escape.png").exists()


def test_zip_symlink_entries_are_refused(workspace, tmp_path):
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = zip_with(tmp_path, good_entries() + [(link, b"/etc/passwd")])
    with pytest.raises(UserError, match="symbolic link"):
        ingest(archive, "classification")
    assert nothing_written(workspace)


def test_zip_size_and_count_limits(workspace, tmp_path, monkeypatch):
    archive = zip_with(tmp_path, good_entries())
    monkeypatch.setattr(lbx_workspace, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(UserError, match="more than the limit of 0.0 MB"):
        ingest(archive, "classification")
    monkeypatch.setattr(lbx_workspace, "MAX_UPLOAD_BYTES", 10**9)
    monkeypatch.setattr(lbx_workspace, "MAX_UPLOAD_FILES", 5)
    with pytest.raises(UserError, match="holds 12 files, more than the limit of 5"):
        ingest(archive, "classification")
    assert nothing_written(workspace)


def test_unusable_uploads_are_refused_with_a_reason(workspace, tmp_path):
    with pytest.raises(UserError, match="Nothing usable.*2 unreadable"):
        ingest(write(tmp_path / "a", {"x/1.png": b"bad", "y/2.png": b"bad"}), "classification")
    with pytest.raises(UserError, match="at least 2 class folders.*found 1 \\(cat\\)"):
        ingest(write(tmp_path / "b", {"cat/1.png": png(picture(1)), "cat/2.png": png(picture(2))}), "classification")
    with pytest.raises(UserError, match="segmentation layout"):
        ingest(write(tmp_path / "c", segmentation_files()), "classification")
    with pytest.raises(UserError, match="not a readable ZIP"):
        ingest(write(tmp_path / "d", {"fake.zip": b"PK no"}) / "fake.zip", "classification")
    with pytest.raises(UserError, match="Unknown task"):
        ingest(tmp_path / "a", "detection")
    assert nothing_written(workspace)


# ---- loose uploaded files ------------------------------------------------------------------------

def test_ingest_files_keeps_folders_and_reads_a_single_zip(workspace, tmp_path):
    loose = [(f"pets/{name}", data) for name, data in classification_files().items()]
    result = ingest_files(loose, "classification")
    manifest = load_manifest(result.dataset_id)
    assert manifest["name"] == "pets" and manifest["classes"] == ["cat", "dog"]
    archive = zip_with(tmp_path, good_entries())
    result = ingest_files([("upload.zip", archive.read_bytes())], "classification", name="zipped")
    assert load_manifest(result.dataset_id)["name"] == "zipped"
    with pytest.raises(UserError, match="points outside"):
        ingest_files([("../x.png", png(picture(3)))] + loose, "classification")
    assert len(list(lbx_workspace.datasets_dir().iterdir())) == 2


def test_dataset_manifest_is_json_with_report(workspace, tmp_path):
    result = ingest(write(tmp_path / "src", classification_files()), "classification", seed=3)
    raw = json.loads((lbx_workspace.datasets_dir() / result.dataset_id / "manifest.json").read_text())
    assert raw["report"] == result.report.to_dict() and raw["report"]["sizes"] == {"24x24": 12}
    again = ingest(write(tmp_path / "src", classification_files()), "classification", seed=3)
    first = [s["split"] for s in raw["samples"]]
    assert first == [s["split"] for s in load_manifest(again.dataset_id)["samples"]]   # seeded
    shutil.rmtree(tmp_path / "src")


def test_large_images_are_stored_capped_with_aspect_kept(workspace, tmp_path, monkeypatch):
    """A radiograph bigger than the cap is stored scaled down (aspect kept); its mask scales with it."""
    import numpy as np
    from PIL import Image

    from engine.data import dataset
    from engine.data.ingest import ingest
    monkeypatch.setattr(dataset, "MAX_STORED_SIDE", 64)
    src = tmp_path / "big"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(3):
        image = np.zeros((200, 100), np.uint8)
        image[50 + i:150, 25:75] = 200      # not identical: duplicates would be skipped
        Image.fromarray(image).save(src / "images" / f"x{i}.png")
        Image.fromarray((image > 0).astype(np.uint8) * 255).save(src / "masks" / f"x{i}.png")
    result = ingest(src, task="segmentation")
    manifest = dataset.load_manifest(result.dataset_id)
    key = manifest["samples"][0]["key"]
    image, mask = dataset.load_sample(result.dataset_id, key)
    assert image.shape == (1, 64, 32) and mask.shape == (64, 32)
    assert set(np.unique(mask)) == {0, 1}
    assert ((image[0] > 0.5) == (mask == 1)).mean() > 0.95
    assert result.report.to_dict()["sizes"] == {"200x100": 3}
