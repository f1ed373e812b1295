"""Pictures: mask borders, the prediction-vs-truth comparison, the Grad-CAM colour scale and the layer note."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.visualize import gradcam, images
from engine.visualize.images import TRUTH_OUTLINE, outline, overlay


def _square(size: int, top: int, left: int, side: int, label: int = 1) -> np.ndarray:
    labels = np.zeros((size, size), np.uint8)
    labels[top:top + side, left:left + side] = label
    return labels


def _ring(size: int, top: int, left: int, side: int) -> np.ndarray:
    """The one-pixel ring just inside a square, drawn by hand."""
    ring = np.zeros((size, size), bool)
    ring[top:top + side, left:left + side] = True
    ring[top + 1:top + side - 1, left + 1:left + side - 1] = False
    return ring


def _green(picture: np.ndarray) -> np.ndarray:
    return (picture == TRUTH_OUTLINE).all(-1)


def test_outline_marks_exactly_the_one_pixel_ring_of_a_region():
    labels = _square(12, 3, 4, 5)
    grey = np.full((12, 12, 3), 90, np.uint8)
    drawn = outline(grey, labels)
    green = _green(drawn)
    np.testing.assert_array_equal(green, _ring(12, 3, 4, 5))
    assert (drawn[~green] == 90).all()                      # nothing else touched
    assert (grey == 90).all()                               # the input picture is left as it was


def test_a_region_cut_by_the_image_edge_keeps_a_closed_outline():
    labels = _square(10, 0, 0, 4)                           # touches the top and the left edge
    np.testing.assert_array_equal(_green(outline(np.zeros((10, 10, 3), np.uint8), labels)), _ring(10, 0, 0, 4))
    whole = np.ones((6, 6), np.uint8)                       # a mask over the whole image: its frame
    assert _green(outline(np.zeros((6, 6, 3), np.uint8), whole)).sum() == 20


def test_touching_classes_each_get_their_own_border():
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 1:4] = 1
    labels[2:6, 4:7] = 2                                    # class 2 right next to class 1
    edge = _green(outline(np.zeros((8, 8, 3), np.uint8), labels))
    assert edge[3, 3] and edge[3, 4]                        # both sides of the shared boundary
    assert not edge[3, 2] and not edge[3, 5]                # but not the insides
    assert not edge[labels == 0].any()


def test_a_wider_outline_peels_rings_inwards():
    labels = _square(12, 2, 2, 8)
    two = images.border(labels, width=2)
    np.testing.assert_array_equal(two, _ring(12, 2, 2, 8) | _ring(12, 3, 3, 6))
    assert images.outline_width((48, 48)) == 1 and images.outline_width((1024, 1024)) == 3


def test_comparison_has_the_truth_colour_exactly_on_the_true_border():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (32, 32, 1), dtype=np.uint8), 3, axis=-1)
    predicted = _square(32, 8, 8, 14)
    truth = _square(32, 11, 5, 12)                          # overlaps the prediction, differs on every side
    picture = images.compare_masks(grey, predicted, truth, alpha=0.5)
    green = _green(picture)
    np.testing.assert_array_equal(green, images.border(truth))
    filled = overlay(grey, predicted, 0.5)
    np.testing.assert_array_equal(picture[~green], filled[~green])   # the prediction's fill everywhere else
    assert (picture[10, 20] != grey[10, 20]).any()          # predicted, not true: filled, no outline


def test_colour_scale_is_the_heat_ramp_with_labels_under_its_ends():
    scale = gradcam.heat_scale(width=200, bar=10)
    expected = gradcam.heat_colours(np.linspace(0, 1, 200, dtype=np.float32))
    for row in range(10):
        np.testing.assert_array_equal(scale[row], expected)
    assert scale[0, 0, 2] > scale[0, 0, 0] and scale[0, -1, 0] > scale[0, -1, 2]   # blue (low) → red (high)
    text = scale[10:].min(-1) < 128                          # dark pixels of the words "low" and "high"
    assert text[:, :40].any() and text[:, -40:].any() and not text[:, 80:120].any()


def _model(arch: str):
    from engine.models.builder import build_model
    from engine.models.network import LightboxModel
    return LightboxModel(build_model(arch, 1, 2), [0.5], [0.25]).eval()


def test_gradcam_names_its_layer_and_says_why_it_used_an_inner_one():
    torch.manual_seed(0)
    model, x = _model("resnet18"), torch.rand(1, 32, 32)
    heat, _, layer = gradcam.grad_cam_with_layer(model, x)
    assert heat.shape == (32, 32)
    assert (layer.name, layer.size, layer.last, layer.last_size) == ("net.layer3", (2, 2), "net.layer4", (1, 1))
    assert layer.note().startswith("Grad-CAM used layer `layer3` (2×2): at 32 px input the last layer `layer4` "
                                   "is only 1×1, too coarse")
    assert gradcam.grad_cam(model, x)[2] == "net.layer3"      # the plain call still returns the module name


@pytest.mark.parametrize("arch, size, expected", [
    ("lenet5", 32, "Grad-CAM used the last layer `features` (5×5) at 32 px input."),
    ("resnet18", 64, "Grad-CAM used the last layer `layer4` (2×2) at 64 px input, so the map is coarse"),
])
def test_gradcam_note_when_the_last_layer_is_used(arch, size, expected):
    _, _, layer = gradcam.grad_cam_with_layer(_model(arch), torch.rand(1, size, size))
    assert not layer.last
    assert layer.note().startswith(expected)
