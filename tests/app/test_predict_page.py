"""Predict page: a real tiny run predicts an uploaded PNG; a non-image is explained, never a traceback."""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from engine.config import RunConfig
from engine.runs import execute
from engine.runs.submit import create_run

PAGE = "predict.py"


def _train(dataset_id: str, arch: str, **options) -> str:
    config = RunConfig(dataset_id=dataset_id, arch=arch, epochs=1, batch_size=8, image_size=32, preview_samples=0,
                       model_options=options)
    run_id = create_run(config, status="running")
    assert execute.run_job(run_id)["status"] == "done"
    return run_id


@pytest.fixture
def cls_run(lb, cls_dataset) -> str:
    return _train(cls_dataset, "lenet5")


@pytest.fixture
def seg_run(lb, seg_dataset) -> str:
    return _train(seg_dataset, "unet", depth=2, base=8)


def _png(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _captions(lb, at) -> list[str]:
    """Captions of every st.image shown (one element can hold several pictures), as they read: the file and class
    names in them are escaped text."""
    return [lb.rendered(caption) for element in at.get("image") for caption in element.captions]


def _picture(size: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)


@pytest.fixture
def shown_pngs(monkeypatch) -> list[np.ndarray]:
    """Every PNG picture the page hands to Streamlit, decoded, in the order shown (pixels, not just captions)."""
    from streamlit.runtime.media_file_storage import MediaFileKind
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    shown: list[np.ndarray] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, data, mimetype, kind, filename=None):
        if mimetype == "image/png" and kind == MediaFileKind.MEDIA and isinstance(data, bytes):   # not downloads
            shown.append(np.asarray(Image.open(BytesIO(data)).convert("RGB")))
        return original(self, data, mimetype, kind, filename)
    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return shown


def test_without_a_trained_run_it_says_what_to_do(lb):
    at = lb.page(PAGE).run()
    lb.no_exception(at)
    assert "no trained model yet" in lb.texts(at, "info")


def test_uploaded_png_shows_probabilities_and_gradcam(lb, cls_run, shown_pngs):
    at = lb.page(PAGE).run()
    lb.no_exception(at)
    assert at.selectbox(key="predict_run").value == cls_run
    assert "LeNet-5" in lb.texts(at, "markdown")
    at.file_uploader(key="predict_files").set_value(("scan.png", _png(_picture()), "image/png")).run()
    lb.no_exception(at)
    assert not at.error
    titles = [chart.proto.spec for chart in lb.charts(at)]
    assert any("Class probabilities" in spec for spec in titles)
    captions = _captions(lb, at)
    assert len(captions) == 3 and captions[0].startswith("scan.png → ")   # the image and its Grad-CAM side by side
    assert captions[1].startswith("Grad-CAM for")
    assert captions[2] == "Colour scale of the map: attention from low (blue) to high (red)"
    from engine.visualize.gradcam import heat_scale
    assert any(np.array_equal(picture, heat_scale()) for picture in shown_pngs)   # the ramp itself, not a JPEG
    assert "Grad-CAM used the last layer `features` (5×5) at 32 px input." in lb.texts(at, "caption")
    assert any(b.label == "Download results (CSV)" for b in at.get("download_button"))


def test_non_image_upload_shows_an_error_not_a_traceback(lb, cls_run):
    at = lb.page(PAGE).run()
    at.file_uploader(key="predict_files").set_value(("notes.txt", b"just words", "text/plain")).run()
    lb.no_exception(at)
    assert "notes.txt is not an image Lightbox can read" in lb.texts(at, "error")


def test_segmentation_upload_with_mask_shows_prediction_and_mask_outline_with_dice(lb, seg_run, shown_pngs):
    from engine.visualize.images import TRUTH_OUTLINE, border
    at = lb.page(PAGE).run()
    image = _picture(48)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 255
    at.file_uploader(key="predict_files").set_value(("case.png", _png(image), "image/png"))
    at.file_uploader(key="predict_masks").set_value(("case.png", _png(mask), "image/png")).run()
    lb.no_exception(at)
    assert not at.error
    assert _captions(lb, at) == ["case.png · filled: model · green outline: the given mask"]
    comparison = shown_pngs[-1]                                       # exact pixels: the picture is sent as PNG
    assert comparison.shape == (48, 48, 3)
    np.testing.assert_array_equal((comparison == TRUTH_OUTLINE).all(-1), border(mask > 0))
    metrics = {m.label: m.value for m in at.metric}
    assert "Dice vs the given mask" in metrics and "Foreground" in metrics
    at.slider(key="predict_opacity").set_value(0.8).run()
    lb.no_exception(at)
    assert any(b.label == "Download mask (PNG)" for b in at.get("download_button"))


def test_test_split_samples_and_export(lb, seg_run):
    at = lb.page(PAGE).run()
    at.radio(key="predict_source").set_value("Test-split samples").run()
    lb.no_exception(at)
    assert "Dice vs the given mask" in {m.label for m in at.metric}   # test samples carry their masks
    assert all(c.endswith("filled: model · green outline: the given mask") for c in _captions(lb, at))
    at.button(key="predict_export_build").click().run()
    lb.no_exception(at)
    assert any(b.label == "Download model (ZIP)" for b in at.get("download_button"))


def test_mlp_gets_the_not_available_note_and_a_saliency_map(lb, cls_dataset):
    _train(cls_dataset, "mlp")
    at = lb.app("pages/predict.py")                                 # inside the app's navigation this time
    at.file_uploader(key="predict_files").set_value(("scan.png", _png(_picture()), "image/png")).run()
    lb.no_exception(at)
    assert "Grad-CAM needs a convolutional network" in lb.texts(at, "info")
    assert any(c.startswith("Gradient saliency") for c in _captions(lb, at))


def test_zip_upload_shows_a_results_table(lb, seg_run):
    import zipfile
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images/a.png", _png(_picture(48)))
        archive.writestr("images/b.png", _png(_picture(40)))
    at = lb.page(PAGE).run()
    at.radio(key="predict_source").set_value("Upload a ZIP").run()
    at.file_uploader(key="predict_zip").set_value(("batch.zip", buffer.getvalue(), "application/zip")).run()
    lb.no_exception(at)
    assert not at.error
    results = next(d.value for d in at.dataframe if "file" in d.value.columns)
    assert list(results["file"]) == ["images/a.png", "images/b.png"]
    assert any(b.label == "Download results (CSV)" for b in at.get("download_button"))



def test_scores_are_a_table_with_intervals_and_n(lb, cls_run):
    """Long names ('Balanced accuracy') were cut off in eight narrow tiles; a table also holds n and the CI."""
    at = lb.page(PAGE).run()
    lb.no_exception(at)
    table = next(d.value for d in at.dataframe if "Score" in d.value.columns)
    assert list(table["Score"]) == ["Accuracy", "Balanced accuracy", "ROC AUC", "F1 (macro)"]
    assert "(n=" in table.loc[0, "Validation 95 % interval (n)"] and "–" in table.loc[0, "Validation 95 % interval (n)"]
    assert not [m.label for m in at.metric if m.label.startswith("Validation")]
