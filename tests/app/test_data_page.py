"""Data page: uploads (ZIP and loose files) through ingest, the dataset report, DICOM windowing, augmentations."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.data.dataset import list_datasets
from engine.data.demo import write_demo

DATA = "pages/data.py"


def open_section(at, name: str):
    at.session_state["data_section"] = name
    return at.run()


def png(value: int, size: int = 24) -> bytes:
    return png_of(np.full((size, size), value, dtype=np.uint8))


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload_many(lb, task: str, kind: str, files: list, name: str = ""):
    """Upload several files ("files") or a folder ("folder") for a task and press Ingest."""
    at = lb.app(DATA)
    at.radio(key="upload_task").set_value(task)
    if name:
        at.text_input(key="upload_name").set_value(name)
    at.radio(key="upload_kind").set_value(kind).run()
    at.file_uploader(key=f"{kind}_0").set_value(files)
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    return at


def test_zip_upload_is_ingested_with_a_report(lb, tmp_path):
    archive = write_demo("classification", tmp_path / "xray.zip", n=16, size=32, seed=2).read_bytes()
    at = lb.app(DATA)
    assert at.button(key="ingest").disabled
    at.radio(key="upload_task").set_value("classification")
    at.file_uploader(key="zip_0").set_value(("My scans/xray.zip", archive, "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    (dataset,) = list_datasets()
    assert dataset["name"] == "xray" and dataset["task"] == "classification"
    assert "is ready: 16 images" in lb.texts(at, "success")
    assert at.session_state["dataset_id"] == dataset["id"]
    assert not any((lb.home / "uploads").iterdir())          # the spooled copy is gone
    assert at.file_uploader(key="zip_1").value is None         # and the uploader emptied (RAM freed)
    at.button(key="explore_new").click().run()
    assert at.selectbox(key="explore_dataset").value == dataset["id"]


def test_zip_without_images_is_refused_with_the_reason(lb):
    at = lb.app(DATA)
    at.file_uploader(key="zip_0").set_value(("notes.zip", zipped({"readme.txt": b"hello", "a/b.csv": b"1,2"}),
                                             "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    assert "Nothing usable was found" in lb.texts(at, "error")
    assert list_datasets() == []


def test_a_file_that_is_not_a_zip_is_refused(lb):
    at = lb.app(DATA)
    at.file_uploader(key="zip_0").set_value(("broken.zip", b"this is not a zip archive", "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    assert "broken.zip is not a readable ZIP archive" in lb.texts(at, "error")


def test_loose_files_keep_their_class_folders(lb):
    files = [(f"{label}/img{i}.png", png(40 + 150 * (label == 'bright') + i), "image/png")
             for label in ("dark", "bright") for i in range(4)]
    upload_many(lb, "classification", "files", files, name="Loose pilot")
    (dataset,) = list_datasets()
    assert dataset["name"] == "Loose pilot"
    assert sorted(dataset["classes"]) == ["bright", "dark"]


def test_a_folder_upload_for_segmentation(lb):
    masks = [np.pad(np.ones((8, 8), np.uint8) * 255, 8) for _ in range(4)]
    files = [(f"Ward 7/images/case{i}.png", png(60 + i), "image/png") for i in range(4)]
    files += [(f"Ward 7/masks/case{i}.png", png_of(m), "image/png") for i, m in enumerate(masks)]
    at = lb.app(DATA)
    at.radio(key="upload_task").set_value("segmentation")
    at.radio(key="upload_kind").set_value("folder").run()
    assert at.file_uploader(key="folder_0").accept_directory
    at.file_uploader(key="folder_0").set_value(files)
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    (dataset,) = list_datasets()
    assert (dataset["task"], dataset["name"], dataset["num_classes"]) == ("segmentation", "Uploaded images", 2)


def test_a_zip_of_masks_only_says_the_images_are_missing_and_how_to_lay_them_out(lb):
    """Not '18 image missing': the upload holds masks but no images (issue 11, B6)."""
    masks = {f"lv/masks/case{i}.png": png_of(np.pad(np.ones((8, 8), np.uint8) * 255, 8)) for i in range(18)}
    at = lb.app(DATA)
    at.radio(key="upload_task").set_value("segmentation")
    at.file_uploader(key="zip_0").set_value(("lv.zip", zipped(masks), "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    error = lb.texts(at, "error")
    assert "This upload has 18 masks but no images" in error and "image missing" not in error
    assert "images/ folder and a masks/ folder whose files have matching names" in error
    assert not list_datasets()


def test_grey_level_masks_are_explained_after_upload(lb):
    """Masks saved as 0/85/170/255 (classes visible in a viewer) become classes 0-3, and the page says so."""
    masks = []
    for i in range(4):
        m = np.zeros((24, 24), np.uint8)
        m[2:8, 2:8], m[10:16, 10:16], m[18:22, 2:6] = 85, 170, 255
        masks.append(m)
    files = [(f"lv/image/case{i}.png", png(80 + i), "image/png") for i in range(4)]
    files += [(f"lv/gt/case{i}_gt.png", png_of(m), "image/png") for i, m in enumerate(masks)]
    upload_many(lb, "segmentation", "folder", files)
    (dataset,) = list_datasets()
    assert dataset["num_classes"] == 4
    at = open_section(lb.app(DATA), "Explore a dataset")
    assert "read as 0 → class 0, 85 → class 1, 170 → class 2, 255 → class 3" in lb.texts(at, "caption")


def test_demo_dataset_from_the_data_page(lb, monkeypatch):
    from engine.data import demo
    monkeypatch.setitem(demo.DEMOS["segmentation"], "n", 12)
    at = lb.app(DATA)
    at.selectbox(key="demo_kind").set_value("segmentation")
    at.button(key="make_demo").click().run()
    lb.no_exception(at)
    assert [d["task"] for d in list_datasets()] == ["segmentation"]
    assert "Synthetic cardiac MRI" in lb.texts(at, "success")


def test_explore_shows_counts_chart_problems_and_gallery(lb, cls_dataset):
    at = open_section(lb.app(DATA), "Explore a dataset")
    lb.no_exception(at)
    assert at.selectbox(key="explore_dataset").value == cls_dataset
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "16" and metrics["Classes"] == "2"
    assert "**Classification** dataset · classes: abdomen, chest" in lb.texts(at, "markdown")
    counts = at.dataframe[0].value
    assert counts["total"].sum() == 16
    assert set(counts.index) == {"abdomen", "chest"}
    assert len(lb.charts(at)) == 1
    assert "nothing was skipped" in lb.texts(at, "success")
    assert len(at.image) == 8
    captions = [i.proto.imgs[0].caption for i in at.image]
    assert {c.split(" · ")[0] for c in captions} == {"abdomen", "chest"}
    at.selectbox(key="gallery_class").set_value("chest").run()
    lb.no_exception(at)
    assert 0 < len(at.image) <= 8


@pytest.mark.parametrize("dataset", ["seg_dataset", "cls_dataset"])
def test_explore_numbers_are_short_enough_not_to_be_cut_off(lb, dataset, request):
    """The task sat in a fifth of the page and showed as "classifica…" (issue 11, B6): only numbers go in tiles."""
    request.getfixturevalue(dataset)
    at = open_section(lb.app(DATA), "Explore a dataset")
    lb.no_exception(at)
    tiles = {m.label: m.value for m in at.metric}
    assert tiles and all(len(str(value)) <= 6 and len(label) <= 10 for label, value in tiles.items()), tiles
    assert "Task" not in tiles


def test_explore_segmentation_overlays_masks(lb, seg_dataset):
    at = open_section(lb.app(DATA), "Explore a dataset")
    lb.no_exception(at)
    assert "**Segmentation** dataset · classes: background, foreground" in lb.texts(at, "markdown")
    assert "Masks are drawn in colour" in lb.texts(at, "caption")
    assert "Values found in the masks" in lb.texts(at, "caption")


def test_problem_files_are_listed_by_file_name_only(lb):
    files = {f"Doe_John/{label}/img{i}.png": png(30 + 100 * (label == "b") + i)
             for label in ("a", "b") for i in range(3)}
    files["Doe_John/a/broken.png"] = b"not really a png"
    at = lb.app(DATA)
    at.radio(key="upload_task").set_value("classification")
    at.file_uploader(key="zip_0").set_value(("study.zip", zipped(files), "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    assert "1 file(s) skipped" in lb.texts(at, "success")
    at = open_section(at, "Explore a dataset")
    lb.no_exception(at)
    problems = next(d.value for d in at.dataframe if "File" in d.value.columns)
    assert list(problems["File"]) == ["broken.png"]
    assert "Doe_John" not in problems.to_string()


def test_delete_a_dataset(lb, seg_dataset):
    at = open_section(lb.app(DATA), "Explore a dataset")
    assert at.button(key="delete_dataset").disabled
    at.checkbox(key="delete_sure").check().run()
    at.button(key="delete_dataset").click().run()
    lb.no_exception(at)
    assert list_datasets() == []
    assert "No datasets yet" in lb.texts(at, "info")


def test_a_dataset_in_use_is_not_deleted(lb, seg_dataset):
    lb.fake_run(seg_dataset, "segmentation", status="queued")
    at = open_section(lb.app(DATA), "Explore a dataset")
    at.checkbox(key="delete_sure").check().run()
    at.button(key="delete_dataset").click().run()
    lb.no_exception(at)
    assert len(list_datasets()) == 1
    assert "stop them before deleting it" in lb.texts(at, "error")


def test_dicom_viewer_windows_the_sample_ct(lb):
    at = open_section(lb.app(DATA), "DICOM viewer")
    lb.no_exception(at)
    assert len(at.image) == 1
    at.selectbox(key="dicom_preset").set_value("lung").run()
    lb.no_exception(at)
    assert "centre -600, width 1500" in at.image[0].proto.imgs[0].caption
    at.selectbox(key="dicom_preset").set_value("Custom").run()
    at.slider(key="dicom_center").set_value(300).run()
    at.slider(key="dicom_width").set_value(1000).run()
    lb.no_exception(at)
    assert "centre 300, width 1000" in at.image[0].proto.imgs[0].caption
    assert "can contain patient information" in lb.texts(at, "warning")
    header = at.dataframe[0].value
    assert {"Tag", "Keyword", "Value"} <= set(header.columns)
    assert "PatientName" in set(header["Keyword"])


def test_dicom_viewer_refuses_a_file_that_is_not_dicom(lb):
    at = open_section(lb.app(DATA), "DICOM viewer")
    at.radio(key="dicom_source").set_value("Upload a DICOM file").run()
    at.file_uploader(key="dicom_file").set_value(("Smith/scan.dcm", b"plain text, no DICOM here", "application/dicom"))
    at.run()
    lb.no_exception(at)
    assert "scan.dcm is not a readable DICOM file" in lb.texts(at, "error")
    assert "Smith" not in lb.texts(at, "error")


@pytest.mark.parametrize("dataset", ["seg_dataset", "cls_dataset"])
def test_augmentation_preview_shows_original_and_four_draws(lb, dataset, request):
    request.getfixturevalue(dataset)
    at = open_section(lb.app(DATA), "Augmentation preview")
    lb.no_exception(at)
    assert len(at.image) == 5
    at.multiselect(key="augment_names").set_value(["hflip", "elastic"]).run()
    at.slider(key="augment_elastic_alpha").set_value(120.0).run()
    lb.no_exception(at)
    assert [i.proto.imgs[0].caption for i in at.image][:2] == ["original", "augmented 1"]
    at.button(key="augment_reroll").click().run()
    lb.no_exception(at)
    assert at.session_state["augment_seed"] == 1


def test_sections_without_a_dataset_point_to_bring_data(lb):
    at = open_section(lb.app(DATA), "Augmentation preview")
    lb.no_exception(at)
    assert "No datasets yet" in lb.texts(at, "info")
