"""Augmentations: image and mask move together, labels survive, intensity ops spare the mask, previews repeat."""
import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.training.augment import AUGMENTATIONS, build_pipeline, preview

GEOMETRIC = {
    "hflip": {"p": 1.0},
    "vflip": {"p": 1.0},
    "rotate": {"degrees": 90.0},
    "shift": {"fraction": 0.3},
    "zoom": {"amount": 0.4},
    "shear": {"degrees": 30.0},
    "elastic": {"alpha": 150.0, "sigma": 5.0},
    "random_crop": {"min_size": 0.5},
}
INTENSITY = {
    "brightness": {"amount": 0.9},
    "contrast": {"amount": 0.9},
    "gamma": {"amount": 1.0},
    "noise": {"std": 0.3},
    "blur": {"sigma": 3.0},
}


def shape_mask(size: int = 48, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """An asymmetric two-label shape, so flips and rotations visibly move it."""
    mask = torch.zeros(size, size, dtype=dtype)
    mask[6:30, 8:18] = 1
    mask[28:40, 22:40] = 2
    return mask


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def test_catalog_covers_the_design_and_defaults_are_in_range():
    assert set(GEOMETRIC) | set(INTENSITY) == set(AUGMENTATIONS)
    for name, spec in AUGMENTATIONS.items():
        assert spec.name == name
        for p in spec.params:
            assert p.low <= p.default <= p.high and p.step > 0
        build_pipeline([name])  # defaults build


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometric_transforms_move_image_and_mask_together(name):
    mask = shape_mask()
    image = (mask > 0).float()[None]           # the image *is* the shape, so aligned outputs threshold to the mask
    augment = build_pipeline([name], {name: GEOMETRIC[name]})
    moved = False
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, out_mask = augment(image, mask)
        assert iou(out_image[0] > 0.5, out_mask > 0) > 0.95
        moved |= not torch.equal(out_mask, mask)
    assert moved, "the mask never changed: it was probably left untransformed"


@pytest.mark.parametrize("name", sorted(set(GEOMETRIC) - {"hflip", "vflip"}))
def test_control_independent_draws_do_not_align(name):
    # The alignment check above must be able to fail: two separate calls draw different parameters.
    mask = shape_mask()
    image = (mask > 0).float()[None]
    augment = build_pipeline([name], {name: GEOMETRIC[name]})
    scores = []
    for seed in range(4):
        torch.manual_seed(seed)
        out_image, _ = augment(image)
        _, out_mask = augment(image, mask)
        scores.append(iou(out_image[0] > 0.5, out_mask > 0))
    assert min(scores) < 0.9


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_all_transforms_keep_label_set_dtype_shape_and_range(dtype):
    mask = shape_mask(dtype=dtype)
    image = torch.rand(3, 48, 48)
    params = {**GEOMETRIC, **INTENSITY}
    augment = build_pipeline(list(params), params)
    for seed in range(3):
        torch.manual_seed(seed)
        out_image, out_mask = augment(image, mask)
        assert out_image.shape == image.shape and out_image.dtype == image.dtype
        assert out_mask.shape == mask.shape and out_mask.dtype == dtype
        assert set(out_mask.unique().tolist()) <= {0, 1, 2}
        assert 0.0 <= out_image.min() and out_image.max() <= 1.0


def test_strongest_settings_work_on_the_smallest_image_size():
    # RunConfig allows 16-px images; v2's own elastic/blur kernels can outgrow them (reflect padding fails)
    strongest = {name: {p.name: p.high for p in spec.params} for name, spec in AUGMENTATIONS.items()}
    augment = build_pipeline(list(strongest), strongest)
    out_image, out_mask = augment(torch.rand(2, 16, 16), shape_mask(16))
    assert out_image.shape == (2, 16, 16) and out_mask.shape == (16, 16)


@pytest.mark.parametrize("name", sorted(INTENSITY))
def test_intensity_transforms_leave_mask_alone(name):
    mask = shape_mask()
    image = torch.rand(4, 48, 48)               # 4 channels: intensity ops must not assume RGB
    augment = build_pipeline([name], {name: INTENSITY[name]})
    torch.manual_seed(0)
    out_image, out_mask = augment(image, mask)
    assert torch.equal(out_mask, mask)
    assert not torch.allclose(out_image, image)
    assert 0.0 <= out_image.min() and out_image.max() <= 1.0


def test_batch_draws_independent_parameters_per_sample():
    images = torch.rand(1, 1, 32, 32).repeat(4, 1, 1, 1)
    masks = shape_mask(32).repeat(4, 1, 1)
    out_images, out_masks = build_pipeline(["rotate"], {"rotate": {"degrees": 90.0}}).batch(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert not torch.equal(out_masks[0], out_masks[1])


def test_order_of_names_does_not_matter_and_empty_is_identity():
    assert build_pipeline(["noise", "rotate"]).names == ("rotate", "noise")
    image = torch.rand(1, 8, 8)
    augment = build_pipeline([])
    assert not augment and augment(image)[0] is image


@pytest.mark.parametrize("names, params", [
    (["sharpen"], None),
    (["rotate"], {"rotate": {"degrees": 400.0}}),
    (["rotate"], {"rotate": {"angle": 10.0}}),
    (["noise"], {"noise": {"std": "lots"}}),
])
def test_bad_requests_raise_user_error(names, params):
    with pytest.raises(UserError):
        build_pipeline(names, params)


def test_preview_is_deterministic_and_leaves_global_rng_alone():
    mask = shape_mask().numpy()
    image = (mask > 0).astype(np.float32)[None]
    names = ["rotate", "elastic", "noise"]
    torch.manual_seed(123)
    first = preview(image, mask, names, n=3, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))
    second = preview(image, mask, names, n=3, seed=7)
    other = preview(image, mask, names, n=3, seed=8)
    assert len(first) == 3
    for (i1, m1), (i2, m2) in zip(first, second):
        assert i1.dtype == np.float32 and i1.shape == image.shape
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(first[0][0], other[0][0])
    assert not np.array_equal(first[0][0], first[1][0])  # the n copies differ from each other
    assert preview(image, None, ["hflip"], n=1)[0][1] is None
