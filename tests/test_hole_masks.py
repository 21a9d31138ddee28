"""Irregular hole masks: ratio, placement (allowed / centers / cover), determinism, the dict transform, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import label

from cfattr_monai.transforms.masks import RandIrregularHoleMaskd, irregular_hole_mask

SHAPE = (64, 64)


def disc(cy: int, cx: int, r: int, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


@pytest.mark.parametrize("ratio", [(0.02, 0.05), (0.1, 0.2), (0.3, 0.4)])
@pytest.mark.parametrize("stroke_probability", [0.0, 0.5, 1.0])
def test_hole_ratio_reaches_the_drawn_range(ratio, stroke_probability):
    for seed in range(5):
        valid = irregular_hole_mask(SHAPE, np.random.default_rng(seed), ratio, stroke_probability)
        assert valid.dtype == np.float32 and valid.shape == SHAPE
        assert set(np.unique(valid)) <= {0.0, 1.0}
        hole = 1 - valid.mean()
        assert ratio[0] <= hole <= min(1.0, ratio[1] * 2.5), hole


def test_holes_stay_inside_allowed_region():
    organ = disc(32, 32, 25)
    lesion = disc(30, 30, 6)
    allowed = organ & ~lesion
    for seed in range(5):
        hole = irregular_hole_mask(SHAPE, np.random.default_rng(seed), (0.1, 0.2), allowed=allowed) == 0
        assert hole.any() and not (hole & ~allowed).any()
        assert (hole.sum() / allowed.sum()) >= 0.1  # ratio relative to the allowed area


def test_cover_is_always_in_the_hole_and_centers_place_shapes():
    lesion = disc(20, 40, 5)
    for seed in range(5):
        hole = irregular_hole_mask(SHAPE, np.random.default_rng(seed), (0.05, 0.1), allowed=disc(32, 32, 30), centers=lesion, cover=lesion) == 0
        assert hole[lesion].all()
        ys, xs = np.nonzero(hole)
        assert abs(ys.mean() - 20) < 12 and abs(xs.mean() - 40) < 12


def test_a_blob_is_one_compact_connected_component():
    for seed in range(10):
        hole = irregular_hole_mask(SHAPE, np.random.default_rng(seed), (0.05, 0.06), stroke_probability=0.0, max_shapes=1) == 0
        assert label(hole)[1] == 1
        ys, xs = np.nonzero(hole)
        assert hole.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)) > 0.4  # fills a good part of its bounding box


def test_same_seed_same_mask_different_seed_different_mask():
    a = irregular_hole_mask(SHAPE, np.random.default_rng(3))
    assert np.array_equal(a, irregular_hole_mask(SHAPE, np.random.default_rng(3)))
    assert not np.array_equal(a, irregular_hole_mask(SHAPE, np.random.default_rng(4)))
    assert np.array_equal(irregular_hole_mask(SHAPE, np.random.RandomState(1)), irregular_hole_mask(SHAPE, np.random.RandomState(1)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hole_ratio": (0.0, 0.1)}, "hole_ratio"),
        ({"hole_ratio": (0.3, 0.1)}, "hole_ratio"),
        ({"stroke_probability": 1.5}, "stroke_probability"),
        ({"allowed": np.ones((32, 32), bool)}, "`allowed` has shape"),
        ({"allowed": np.zeros(SHAPE, bool)}, "empty"),
        ({"centers": np.zeros(SHAPE, bool)}, "empty"),
    ],
    ids=["zero ratio", "inverted ratio", "probability", "region shape", "empty allowed", "empty centers"],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        irregular_hole_mask(SHAPE, np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize("make", [lambda a: a, torch.as_tensor, MetaTensor], ids=["numpy", "tensor", "MetaTensor"])
def test_dict_transform_output_type_shape_and_determinism(make):
    data = {"image": make(np.random.rand(1, *SHAPE).astype(np.float32))}
    t = RandIrregularHoleMaskd("image", hole_ratio=(0.1, 0.2))
    first = t.set_random_state(seed=7)(data)["valid_mask"]
    again = t.set_random_state(seed=7)(data)["valid_mask"]
    assert type(first) is type(data["image"]) and tuple(first.shape) == (1, *SHAPE)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(t(data)["valid_mask"]))


def test_dict_transform_respects_organ_and_forbidden_lesion():
    organ, lesion = disc(32, 32, 25), disc(32, 32, 8)
    data = {"image": np.zeros((1, *SHAPE), np.float32), "organ": organ[None] * 1.0, "lesion": lesion[None] * 1.0}
    t = RandIrregularHoleMaskd("image", hole_ratio=(0.2, 0.3), allowed_key="organ", forbidden_key="lesion", forbidden_margin=2)
    for seed in range(3):
        hole = t.set_random_state(seed=seed)(data)["valid_mask"][0] == 0
        assert hole.any() and not (hole & ~organ).any() and not (hole & disc(32, 32, 9)).any()


@pytest.mark.parametrize("scale", [255.0, 1 / 255], ids=["{0,255}", "{0,1} read as 0..255"])
@pytest.mark.parametrize("key", ["organ", "lesion"])
def test_dict_transform_reads_regions_as_value_above_zero(key, scale):
    """{0, 1} and {0, 255} masks are both binary to check_datalist: any value > 0 is in the region."""
    masks = {"organ": disc(32, 32, 25)[None] * 1.0, "lesion": disc(32, 32, 8)[None] * 1.0}
    t = RandIrregularHoleMaskd("image", hole_ratio=(0.2, 0.3), allowed_key="organ", forbidden_key="lesion")
    data = {"image": np.zeros((1, *SHAPE), np.float32), **masks}
    expected = t.set_random_state(seed=0)(data)["valid_mask"]
    scaled = t.set_random_state(seed=0)({**data, key: masks[key] * scale})["valid_mask"]
    assert np.array_equal(scaled, expected)


def test_dict_transform_bad_keys():
    with pytest.raises(ValueError, match="exactly one"):
        RandIrregularHoleMaskd(["image", "other"])
    with pytest.raises(KeyError, match="organ"):
        RandIrregularHoleMaskd("image", allowed_key="organ")({"image": np.zeros((1, *SHAPE), np.float32)})


@pytest.mark.parametrize("organ", ["file", None, "", "folder", "absent"])
def test_organ_maskd_loads_the_mask_on_the_image_grid_or_gives_the_whole_image(tmp_path, organ):
    from PIL import Image

    from cfattr_monai.transforms.masks import OrganMaskd

    mask = np.zeros((32, 24), np.uint8)  # rows × columns as written; loaded as MONAI's (W, H) like the image
    mask[:16] = 255
    Image.fromarray(mask).save(tmp_path / "organ.png")
    image = torch.rand(1, 12, 16)  # the preprocessed image: the organ's grid, halved
    item = {"image": image, "organ": {"file": str(tmp_path / "organ.png"), "folder": str(tmp_path)}.get(organ, organ)}
    if organ == "absent":
        item.pop("organ")
    out = OrganMaskd()(item)["organ"]
    assert out.shape == (1, 12, 16) and set(out.unique().tolist()) <= {0.0, 1.0}
    assert float(out.mean()) == (0.5 if organ == "file" else 1.0)
