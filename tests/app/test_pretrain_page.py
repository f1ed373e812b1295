"""Pre-train page: unlabeled uploads (a damaged file skipped with its sentence), a real background pre-training with
its progress, and the list of encoders with where to use them."""
from __future__ import annotations

import io
import time
import zipfile

import numpy as np
from PIL import Image

from engine.data.demo import cardiac_slice
from engine.pretrain.library import list_encoders
from engine.pretrain.unlabeled import ingest_unlabeled, list_unlabeled

PAGE = "pretrain.py"


def png(seed: int) -> bytes:
    image, _ = cardiac_slice(np.random.default_rng(seed), 32)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_is_in_the_menu(lb):
    at = lb.app("pages/pretrain.py")
    lb.no_exception(at)
    assert at.title[0].value == "Pre-train"


def test_an_upload_is_stored_and_a_damaged_file_is_named_with_a_sentence(lb):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(3):
            archive.writestr(f"scans/slice_{i}.png", png(i))
        archive.writestr("scans/damaged.png", b"\x89PNG\r\n\x1a\n broken")
    at = lb.page(PAGE).run()
    lb.no_exception(at)
    assert "Upload images without labels first" in lb.texts(at, "info")
    at.file_uploader(key="pretrain_files_0").set_value(("unlabeled.zip", buffer.getvalue(), "application/zip"))
    at.text_input(key="pretrain_set_name").set_value("extra slices").run()
    at.button(key="pretrain_store").click().run()
    lb.no_exception(at)
    assert "Stored **3** images as **extra slices**; 1 file(s) skipped." in lb.texts(at, "success")
    assert "scans/damaged.png is not a readable image" in lb.texts(at, "caption")
    assert [s["images"] for s in list_unlabeled()] == [3]
    assert at.selectbox(key="pretrain_set").value == list_unlabeled()[0]["id"]


def test_pretraining_runs_in_the_background_and_lists_the_encoder(lb):
    src = lb.home.parent / "src"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"s{i}.png").write_bytes(png(i))
    ingest_unlabeled(src, "six slices")
    at = lb.page(PAGE).run()
    assert "None yet." in lb.texts(at, "caption")
    at.selectbox(key="pretrain_arch").set_value("fcn_simple")
    at.radio(key="pretrain_mode").set_value("masked")
    at.number_input(key="pretrain_epochs").set_value(2)
    at.select_slider(key="pretrain_size").set_value(32)
    at.button(key="pretrain_start").click().run()
    lb.no_exception(at)
    assert at.button(key="pretrain_start").disabled          # one job at a time from this tab
    assert at.get("progress"), "a progress bar while it runs"
    deadline = time.time() + 240
    while time.time() < deadline and not at.success:
        time.sleep(2)
        at.run()                     # AppTest never fires run_every: re-run the page as the timer would
    lb.no_exception(at)
    encoders = list_encoders()
    assert len(encoders) == 1, lb.texts(at, "error")
    assert f"Encoder **{encoders[0]['id']}** is ready" in lb.texts(at, "success")
    assert (encoders[0]["arch"], encoders[0]["mode"], encoders[0]["epochs"]) == ("fcn_simple", "masked", 2)
    assert not at.button(key="pretrain_start").disabled
    assert "choose it under *Start from*" in lb.texts(at, "caption")
    assert at.dataframe[0].value["id"].tolist() == [encoders[0]["id"]]
