"""Readers and the DICOM pixel pipeline, on real files shipped with pydicom and on small hand-made images."""
from __future__ import annotations

import io as bytes_io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from engine.data import dicom
from engine.data.io import (
    SUPPORTED_EXTENSIONS,
    LabelRangeError,
    decode_file,
    is_dicom,
    mask_levels,
    normalise_labels,
    read_image,
    read_mask,
)
from engine.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # pydicom warns about quirks of its own test files


def sample_file(name: str) -> Path:
    """A file from pydicom's bundled test data."""
    return Path(get_testdata_file(name))


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- windowing -------------------------------------------------------------------------------------

def test_linear_window_matches_hand_computed_values():
    # LINEAR, c=40, w=400: lower edge c-0.5-(w-1)/2 = -160, upper edge c-0.5+(w-1)/2 = 239
    hu = np.array([-1000, -160, 40, 140, 239, 240])
    out = dicom.apply_window(hu, 40, 400)
    expected = [0.0, 0.0, 0.5 / 399 + 0.5, 100.5 / 399 + 0.5, 1.0, 1.0]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


def test_linear_exact_and_sigmoid_windows():
    hu = np.array([-1000.0, -160.0, 40.0, 140.0, 240.0])
    np.testing.assert_allclose(dicom.apply_window(hu, 40, 400, "LINEAR_EXACT"), [0, 0, 0.5, 0.75, 1.0], atol=1e-6)
    sigmoid = dicom.apply_window(hu, 40, 400, "SIGMOID")
    assert sigmoid[2] == pytest.approx(0.5) and sigmoid[3] == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-6)


def test_window_presets_are_center_width_pairs_in_hu():
    presets = dicom.window_presets()
    assert presets["lung"] == (-600.0, 1500.0)
    assert presets["brain"] == (40.0, 80.0) and presets["bone"] == (400.0, 1800.0)
    assert presets["abdomen"] == (50.0, 350.0) and presets["mediastinum"] == (40.0, 400.0)


def test_explicit_window_applies_after_rescale():
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    (frame,) = read_image(sample_file("CT_small.dcm"), window=(40, 400))
    assert frame.shape == (1, 128, 128) and frame.dtype == np.float32
    np.testing.assert_allclose(frame[0], dicom.apply_window(hu, 40, 400), atol=1e-6)


def test_file_window_is_used_when_none_is_given():
    ds = pydicom.dcmread(sample_file("MR_small.dcm"))
    expected = dicom.apply_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(read_image(sample_file("MR_small.dcm"))[0][0], expected, atol=1e-6)


def test_min_max_when_the_file_has_no_window():
    (frame,) = read_image(sample_file("CT_small.dcm"))
    assert frame.min() == 0.0 and frame.max() == 1.0


def test_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(sample_file("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    item = Dataset()
    item.LUTDescriptor = [2, 600, 8]          # two entries: <=600 → 0, >=601 → 255
    item.LUTData = [0, 255]
    ds.VOILUTSequence = [item]
    (frame,) = dicom.dicom_frames(ds)
    np.testing.assert_array_equal(frame[0], (ds.pixel_array > 600).astype(np.float32))


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    ds = pydicom.dcmread(sample_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    normal = read_image(sample_file("MR_small.dcm"))[0]
    inverted = read_image(tmp_path / "mono1.dcm")[0]
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


# ---- decoding: compressed and unusual files against the uncompressed reference -------------------------

@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"])
def test_lossless_variants_decode_to_the_reference(name):
    reference = read_image(sample_file("MR_small.dcm"))
    decoded = read_image(sample_file(name))
    assert len(decoded) == 1
    np.testing.assert_array_equal(decoded[0], reference[0])


def test_jpeg_baseline_ybr_becomes_rgb_close_to_the_rgb_original():
    reference = read_image(sample_file("SC_rgb_rle.dcm"))[0]
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"):
        (frame,) = read_image(sample_file(name))
        assert frame.shape == (3, 100, 100)
        assert np.abs(frame - reference).max() <= 6 / 255 + 1e-6      # lossy JPEG, colour converted


def test_jpeg2000_and_jpeg_ls_lossy_files_decode():
    (ct,) = read_image(sample_file("693_J2KI.dcm"))
    assert ct.shape == (1, 512, 512) and 0 <= ct.min() and ct.max() <= 1
    (small,) = read_image(sample_file("JPEGLSNearLossless_16.dcm"))
    assert small.shape == (1, 50, 10)


def test_multi_frame_files_give_one_array_per_frame():
    dose = read_image(sample_file("rtdose.dcm"))
    assert len(dose) == 15 and all(f.shape == (1, 10, 10) for f in dose)
    colour = read_image(sample_file("examples_ybr_color.dcm"))
    assert len(colour) == 30 and colour[0].shape == (3, 240, 320)


def test_missing_decoder_names_the_package(monkeypatch):
    decoder = get_decoder(pydicom.dcmread(sample_file("MR_small_jpeg_ls_lossless.dcm")).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(UserError, match=r"JPEG-LS compression.*'pylibjpeg-libjpeg'"):
        read_image(sample_file("MR_small_jpeg_ls_lossless.dcm"))


def test_extensionless_dicom_is_detected_by_its_magic(tmp_path):
    plain = tmp_path / "IM0001"
    shutil.copy(sample_file("CT_small.dcm"), plain)
    assert is_dicom(plain) and is_dicom(plain.read_bytes())
    decoded = decode_file(plain)
    assert decoded.patient == "1CT1" and decoded.modality == "CT" and decoded.dtype == "int16"
    np.testing.assert_array_equal(decoded.frames[0], read_image(sample_file("CT_small.dcm"))[0])


def test_bad_dicom_files_raise_one_sentence(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(UserError, match="junk.dcm is not a readable DICOM file"):
        read_image(junk)
    with pytest.raises(UserError, match="cannot be decoded"):
        read_image(sample_file("MR_truncated.dcm"))
    with pytest.raises(dicom.NotAnImage, match="without pixel data"):
        read_image(sample_file("reportsi.dcm"))


def test_header_summary_lists_tags_without_pixel_data():
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    rows = dicom.header_summary(ds, max_len=30)
    assert ("(0010,0020)", "PatientID", "1CT1") in rows
    assert all(keyword != "PixelData" for _, keyword, _ in rows)
    assert all(len(value) <= 30 for *_, value in rows)
    assert dicom.patient_id(ds) == "1CT1"


# ---- Pillow formats ------------------------------------------------------------------------------

def test_png_16_bit_is_scaled_by_its_own_range():
    values = np.linspace(1000, 5000, 64 * 48).reshape(48, 64).astype(np.uint16)
    decoded = decode_file(png_bytes(values), "scan.png")
    (frame,) = decoded.frames
    assert frame.shape == (1, 48, 64) and decoded.dtype == "uint16"
    assert frame.min() == 0.0 and frame.max() == 1.0
    np.testing.assert_allclose(frame[0], (values - 1000.0) / 4000.0, atol=1e-6)


def test_png_8_bit_gray_rgb_rgba_and_palette():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(read_image(png_bytes(gray), "g.png")[0][0], gray / 255.0, atol=1e-7)
    same = np.stack([gray] * 3, axis=-1)
    assert read_image(png_bytes(same), "rgb-gray.png")[0].shape == (1, 16, 16)      # equal channels are gray
    colour = same.copy()
    colour[..., 0] = 255 - gray
    rgba = np.concatenate([colour, np.full((16, 16, 1), 7, np.uint8)], axis=-1)
    (frame,) = read_image(png_bytes(rgba), "rgba.png")
    assert frame.shape == (3, 16, 16)
    np.testing.assert_allclose(frame[0], (255 - gray) / 255.0, atol=1e-7)           # alpha dropped
    palette = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buffer = bytes_io.BytesIO()
    palette.save(buffer, format="PNG")
    assert read_image(buffer.getvalue(), "p.png")[0].shape == (3, 16, 16)


def test_jpeg_tiff_and_bmp_read(tmp_path):
    gray = (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)
    for ext, fmt in ((".jpg", "JPEG"), (".tif", "TIFF"), (".bmp", "BMP")):
        path = tmp_path / f"x{ext}"
        Image.fromarray(gray).save(path, format=fmt)
        assert ext in SUPPORTED_EXTENSIONS
        assert read_image(path)[0].shape == (1, 32, 32)


def test_unreadable_image_message():
    with pytest.raises(UserError, match=r"^scan.png is not a readable image \(cannot identify image file\)\.$"):
        read_image(b"\x89PNG but not really", "scan.png")
    truncated = png_bytes(np.zeros((64, 64), np.uint8))[:60]
    with pytest.raises(UserError, match="cut.png is not a readable image"):
        read_image(truncated, "cut.png")


# ---- masks ---------------------------------------------------------------------------------------

def test_masks_keep_palette_indices_and_collapse_gray_rgb():
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    buffer = bytes_io.BytesIO()
    palette.save(buffer, format="PNG")
    np.testing.assert_array_equal(read_mask(buffer.getvalue(), "m.png"), labels)
    rgb = np.stack([labels * 80] * 3, axis=-1)
    np.testing.assert_array_equal(read_mask(png_bytes(rgb), "m.png"), labels * 80)
    colour = rgb.copy()
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(LabelRangeError, match="colour mask"):
        read_mask(png_bytes(colour), "c.png")


def test_label_rule_binary_255_and_small_indices():
    np.testing.assert_array_equal(normalise_labels(np.array([[0, 255]], np.uint8)), [[0, 1]])
    np.testing.assert_array_equal(normalise_labels(np.array([[0, 3, 63]], np.uint8)), [[0, 3, 63]])
    with pytest.raises(LabelRangeError, match="0/255, class indices 0–63 or at most 16 grey levels"):
        normalise_labels(np.array([[0, 1, 255]], np.uint8))
    with pytest.raises(LabelRangeError):
        normalise_labels(np.array([[0, 64]], np.uint8))


def test_grey_level_masks_map_to_classes_on_the_smallest_even_grid():
    assert mask_levels([0, 255]) == {0: 0, 255: 1}
    assert mask_levels([0, 3, 63]) == {0: 0, 3: 3, 63: 63}                      # class indices as they are
    assert mask_levels([0, 85, 170, 255]) == {0: 0, 85: 1, 170: 2, 255: 3}
    assert mask_levels([0, 85, 255]) == {0: 0, 85: 1, 255: 3}                   # class 2 absent everywhere
    assert mask_levels([0, 128, 255]) == {0: 0, 128: 1, 255: 2}                 # 255/2 rounded either way
    assert mask_levels([0, 100, 200]) == {0: 0, 100: 1, 200: 2}                 # not a grid: in order
    assert mask_levels([0, 170]) == {0: 0, 170: 1}                              # one foreground level
    assert mask_levels([0, 1, 255]) == {0: 0, 1: 1, 255: 1}                     # 0/1 and 0/255 masks mixed
    assert mask_levels([0, 1, 2, 253, 254, 255]) is None                        # smeared, not grey levels
    assert mask_levels([0, 1, 2, 255]) is None                                  # is 255 class 1, or 'ignore'?
    assert mask_levels(range(0, 255, 10)) is None                               # 26 levels: a smeared mask
    assert mask_levels([10, 200]) is None                                       # no background value


def test_labels_follow_the_dataset_levels_first():
    levels = {0: 0, 85: 1, 170: 2, 255: 3}
    np.testing.assert_array_equal(normalise_labels(np.array([[0, 170, 255]], np.uint8), levels=levels), [[0, 2, 3]])
    # values the dataset never had fall back to the usual rule
    np.testing.assert_array_equal(normalise_labels(np.array([[0, 2]], np.uint8), levels=levels), [[0, 2]])


def test_enhanced_multiframe_uses_each_frames_own_rescale_and_window(tmp_path):
    """Enhanced MR/CT keep slope, intercept and window per frame in functional groups, not at the top level."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    ds = pydicom.dcmread(sample_file("MR_small.dcm"))
    frame = ds.pixel_array
    ds.PixelData = np.stack([frame, frame, frame]).tobytes()
    ds.NumberOfFrames = 3
    for keyword in ("WindowCenter", "WindowWidth"):
        delattr(ds, keyword)

    def group(**macros) -> Dataset:
        item = Dataset()
        for keyword, values in macros.items():
            inner = Dataset()
            for name, value in values.items():
                setattr(inner, name, value)
            setattr(item, keyword, Sequence([inner]))
        return item

    shared = group(PixelValueTransformationSequence={"RescaleSlope": "2", "RescaleIntercept": "-100"})
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        group(FrameVOILUTSequence={"WindowCenter": "600", "WindowWidth": "800"}),
        group(FrameVOILUTSequence={"WindowCenter": "1200", "WindowWidth": "400"}),
        group(FrameVOILUTSequence={"WindowCenter": "600", "WindowWidth": "800"},
              PixelValueTransformationSequence={"RescaleSlope": "1", "RescaleIntercept": "0"}),
    ])
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)
    frames = read_image(path)
    values = frame.astype(np.float64) * 2 - 100                    # the shared rescale
    np.testing.assert_allclose(frames[0][0], dicom.apply_window(values, 600, 800), atol=1e-6)
    np.testing.assert_allclose(frames[1][0], dicom.apply_window(values, 1200, 400), atol=1e-6)
    np.testing.assert_allclose(frames[2][0], dicom.apply_window(frame, 600, 800), atol=1e-6)   # its own rescale
    # an explicit window still wins, applied after each frame's rescale
    chosen = read_image(path, window=(500, 1000))
    np.testing.assert_allclose(chosen[2][0], dicom.apply_window(frame, 500, 1000), atol=1e-6)
    # a frame whose window item lacks a width: no per-frame windows, one stretch over the whole series
    del ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence[0].WindowWidth
    ds.save_as(path)
    stretched = np.stack([f[0] for f in read_image(path)])
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    assert stretched[2].max() < 1.0          # frame 2 (its own rescale 1, 0) stays below frame 0 (× 2 − 100)


def test_exif_orientation_is_applied_to_images_and_masks():
    """A JPEG saved by a phone or viewer with 'rotate 90°' in its EXIF is read upright, and so is its mask."""
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :10] = 255                                  # bright left strip, 40 wide × 20 high
    exif = Image.Exif()
    exif[0x0112] = 6                                      # stored sideways: display rotated 90° clockwise
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    (frame,) = read_image(buffer.getvalue(), "photo.png")
    assert frame.shape == (1, 40, 20)                     # upright: 20 wide × 40 high
    assert frame[0, :10].mean() > 0.9 and frame[0, -10:].mean() < 0.1    # the strip is now on top
    mask = read_mask(buffer.getvalue(), "photo_mask.png")
    assert mask.shape == (40, 20) and mask[:10].min() == 255
