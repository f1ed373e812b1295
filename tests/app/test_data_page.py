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


def test_loose_files_where_a_file_is_also_a_folder_skip_that_file_and_keep_the_rest(lb):
    """A folder upload can hold 'dark/img0.png' as a file and as a folder (issue 13): the page used to write the
    files itself and lost the whole upload to a FileExistsError; the file is now named and skipped."""
    files = [(f"{label}/img{i}.png", png(40 + 150 * (label == 'bright') + i), "image/png")
             for label in ("dark", "bright") for i in range(4)]
    files.append(("dark/img0.png/inner.png", png(99), "image/png"))
    at = upload_many(lb, "classification", "files", files, name="Clash")
    assert not at.exception
    (dataset,) = list_datasets()
    assert sorted(dataset["classes"]) == ["bright", "dark"] and dataset["name"] == "Clash"
    assert "1 file(s) skipped" in lb.texts(at, "success")
    open_section(at, "Explore a dataset")
    (skipped,) = [frame.value for frame in at.dataframe if "What happened" in frame.value.columns]
    assert skipped["File"].tolist() == ["img0.png"]
    assert "both as a file and as a folder" in skipped["What happened"][0]


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
    captions = [lb.rendered(i.proto.imgs[0].caption) for i in at.image]      # file and class names: escaped text
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
    assert "centre -600, width 1500" in lb.rendered(at.image[0].proto.imgs[0].caption)
    at.selectbox(key="dicom_preset").set_value("Custom").run()
    at.slider(key="dicom_center").set_value(300).run()
    at.slider(key="dicom_width").set_value(1000).run()
    lb.no_exception(at)
    assert "centre 300, width 1000" in lb.rendered(at.image[0].proto.imgs[0].caption)
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


# ---- issue 12: groups, near-duplicates, shortcuts ----------------------------------------------------------

def smooth(seed: int, size: int = 40) -> np.ndarray:
    """A smooth random image: different seeds are clearly different pictures."""
    from scipy import ndimage
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 3)
    return np.round(40 + 180 * (field - field.min()) / (field.max() - field.min())).astype(np.uint8)


def patient_slices(patients: int = 5, slices: int = 6) -> dict[str, bytes]:
    files = {}
    for p in range(patients):
        for s in range(slices):
            image = smooth(100 * p + s)
            files[f"scd/images/SCD00001{p:02d}_{s:04d}.png"] = png_of(image)
            files[f"scd/masks/SCD00001{p:02d}_{s:04d}.png"] = png_of(((image > 130) * 255).astype(np.uint8))
    return files


def ingest_here(lb, files: dict[str, bytes], task: str, **options) -> str:
    from engine.data.ingest import ingest
    root = lb.home.parent / "src"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return ingest(root, task, **options).dataset_id


def test_upload_shows_the_patients_found_and_the_warnings(lb):
    at = lb.app(DATA)
    at.radio(key="upload_task").set_value("segmentation")
    assert at.selectbox(key="upload_group_by").value == "auto"
    at.file_uploader(key="zip_0").set_value(("scd.zip", zipped(patient_slices()), "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    assert "grouped by the ID at the start of the file names: 5 patients, each inside one split" \
        in lb.texts(at, "caption")
    assert "The validation split has only" in lb.texts(at, "warning")        # 5 patients: honest, tiny splits


def test_a_pattern_is_needed_before_ingest_and_then_used(lb):
    at = lb.app(DATA)
    at.radio(key="upload_task").set_value("segmentation")
    at.file_uploader(key="zip_0").set_value(("scd.zip", zipped(patient_slices()), "application/zip"))
    at.selectbox(key="upload_group_by").set_value("pattern").run()
    assert at.button(key="ingest").disabled                                  # no pattern typed yet
    at.text_input(key="upload_group_pattern").set_value(r"SCD(\d+)_").run()
    at.button(key="ingest").click().run()
    lb.no_exception(at)
    (dataset,) = list_datasets()
    assert dataset["report"]["groups"]["key"] == r"SCD(\d+)_" and dataset["report"]["groups"]["count"] == 5
    assert "by the pattern 'SCD(\\d+)_': 5 groups" in lb.texts(at, "caption")


def test_explore_shows_copies_side_by_side_and_the_shortcut_chart(lb):
    files = {}
    for i in range(39):
        image = smooth(6000 + i, 64)
        files[f"xr/chest/c{i:02d}.png"] = png_of(image if i else image[:50, :60])
    sizes = np.random.default_rng(7).integers(40, 90, (37, 2))
    for i in range(37):
        h, w = (64, 64) if i == 0 else (int(sizes[i, 0]), int(sizes[i, 1]) + (sizes[i, 0] == 64))
        files[f"xr/abdomen/a{i:02d}.png"] = png_of(smooth(7000 + i, 96)[:h, :w])
    edited = smooth(6003, 64)
    edited[5, 5] = 255 - edited[5, 5]
    files["xr/chest/c03_copy.png"] = png_of(edited)
    ingest_here(lb, files, "classification")
    at = open_section(lb.app(DATA), "Explore a dataset")
    lb.no_exception(at)
    warnings = lb.texts(at, "warning")
    assert "Image size alone tells the classes apart: 39 of 40 chest images are 64×64 px" in warnings
    assert "2 images are near-identical copies of one another (1 set, e.g. xr/chest/c03.png and " \
           "xr/chest/c03_copy.png)" in warnings
    captions = [lb.rendered(i.proto.imgs[0].caption) for i in at.image]      # file and class names: escaped text
    split = captions[0].split(" · ")[1]                                    # a copy shares its original's split
    assert captions[:2] == [f"c03.png · {split}", f"c03_copy.png · {split}"]
    charts = [c.proto.spec for c in lb.charts(at)]
    assert len(charts) == 2 and sum("Image size per class" in spec for spec in charts) == 1


def test_a_clean_dataset_says_there_is_no_warning(lb):
    files = {f"{c}/{c}{i}.png": png_of(smooth(11000 + 1000 * k + i, 24)) for k, c in enumerate(("cat", "dog"))
             for i in range(100)}
    ingest_here(lb, files, "classification")
    at = open_section(lb.app(DATA), "Explore a dataset")
    lb.no_exception(at)
    assert not at.warning
    assert "No warning: no patient or copy is on both sides of the split" in lb.texts(at, "success")


def test_group_differently_makes_a_new_dataset(lb):
    first = ingest_here(lb, patient_slices(), "segmentation", group_by="none")
    at = open_section(lb.app(DATA), "Explore a dataset")
    assert "No patient grouping" in lb.texts(at, "caption")
    at.selectbox(key="regroup_group_by").set_value("auto").run()
    at.button(key="regroup").click().run()
    lb.no_exception(at)
    assert len(list_datasets()) == 2
    new = at.selectbox(key="explore_dataset").value
    assert new != first and at.session_state["dataset_id"] == new
    assert "grouped by the ID at the start of the file names: 5 patients" in lb.texts(at, "caption")
    table = next(d.value for d in at.dataframe if "Group" in d.value.columns)
    assert list(table.columns) == ["Group", "Images", "Split", "Example files"] and table["Images"].tolist() == [6] * 3
