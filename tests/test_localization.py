"""Localization metrics H, L, A against hand-computed cases; percentile binarization; Wilcoxon on known samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from cfattr_monai.metrics.localization import (
    METRIC_DIRECTIONS,
    area_ratio,
    binarize_at_percentile,
    hausdorff_distance,
    localization_metrics,
    signed_ranks_favour_ours,
    summarize,
    weak_localization,
    wilcoxon_tests,
)

SIZE = 32


def boxes(*slices: tuple[int, int, int, int]) -> np.ndarray:
    """A (SIZE, SIZE) boolean mask with the given ``(y0, y1, x0, x1)`` rectangles set."""
    mask = np.zeros((SIZE, SIZE), bool)
    for y0, y1, x0, x1 in slices:
        mask[y0:y1, x0:x1] = True
    return mask


# name, map, GT, expected H (boundary Hausdorff, pixels), expected L
CASES = [
    ("identical", boxes((8, 16, 8, 16)), boxes((8, 16, 8, 16)), 0.0, 1.0),
    ("shifted by 4", boxes((8, 16, 12, 20)), boxes((8, 16, 8, 16)), 4.0, 1.0),  # IoU 32/96 = 1/3
    ("disjoint", boxes((0, 4, 20, 24)), boxes((0, 4, 0, 4)), 20.0, 0.0),
    # map nested in the GT: GT corner (4, 4) to map corner (10, 10) is the farthest boundary pair
    # (its box has IoU 16/256 = 0.0625 with the GT box: not found)
    ("nested", boxes((10, 14, 10, 14)), boxes((4, 20, 4, 20)), math.sqrt(72), 0.0),
    ("empty map", boxes(), boxes((8, 16, 8, 16)), math.hypot(SIZE, SIZE), 0.0),
    ("empty GT", boxes((8, 16, 8, 16)), boxes(), math.nan, math.nan),
    # two lesions, the map covers one exactly: H = median(0, 20) = 10, one of two boxes found
    ("two lesions", boxes((2, 6, 2, 6)), boxes((2, 6, 2, 6), (2, 6, 22, 26)), 10.0, 0.5),
    # two mapping results, one exact and a 2×2 speck whose farthest pair is GT corner (8, 8) to speck (28, 28):
    # H = median(0, √800) = √200 (the map as one point set would give max(√392, 0) = 19.8)
    ("two map components", boxes((8, 16, 8, 16), (28, 30, 28, 30)), boxes((8, 16, 8, 16)), math.sqrt(200), 1.0),
    # IoU exactly 1/8 (one 8-pixel column inside an 8×8 GT): found; one pixel shorter (7/64): not found
    ("IoU = 0.125", boxes((0, 8, 7, 8)), boxes((0, 8, 0, 8)), None, 1.0),
    ("IoU < 0.125", boxes((0, 7, 7, 8)), boxes((0, 8, 0, 8)), None, 0.0),
]


@pytest.mark.parametrize("name,binary_map,lesion,expected_h,expected_l", CASES, ids=[c[0] for c in CASES])
def test_hausdorff_and_weak_localization(name, binary_map, lesion, expected_h, expected_l):
    if expected_h is not None:
        np.testing.assert_allclose(hausdorff_distance(binary_map, lesion), expected_h, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(weak_localization(binary_map, lesion), expected_l, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_hausdorff_of_one_component_each_equals_monai(seed):
    """With one map and one GT component, H is MONAI's symmetric boundary Hausdorff distance."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, SIZE - 6, size=(2, 2))
    sizes = rng.integers(1, 7, size=(2, 2))
    binary_map, lesion = (boxes((y, y + h, x, x + w)) for (y, x), (h, w) in zip(corners, sizes))
    expected = compute_hausdorff_distance(
        torch.from_numpy(binary_map)[None, None], torch.from_numpy(lesion)[None, None], include_background=True
    )
    assert hausdorff_distance(binary_map, lesion) == pytest.approx(float(expected), rel=1e-6)


def test_hausdorff_is_the_same_when_the_map_is_split_into_distance_matrices(monkeypatch):
    """A noisy map of many components gives the same H whatever the pair budget of its distance matrices."""
    import cfattr_monai.metrics.localization as localization

    rng = np.random.default_rng(0)
    binary_map, lesion = rng.random((SIZE, SIZE)) > 0.8, boxes((8, 16, 8, 16), (20, 24, 2, 6))
    whole = hausdorff_distance(binary_map, lesion)
    monkeypatch.setattr(localization, "_PAIR_BUDGET", 50)
    assert hausdorff_distance(binary_map, lesion) == pytest.approx(whole)


@pytest.mark.parametrize(
    "binary_map,organ,expected",
    [
        (boxes((0, 5, 0, 5)), boxes((0, 10, 0, 10)), 0.25),
        (boxes((0, 5, 0, 5)), None, 25 / SIZE**2),
        (boxes(), None, 0.0),
    ],
)
def test_area_ratio(binary_map, organ, expected):
    assert area_ratio(binary_map, organ) == pytest.approx(expected)


def test_localization_metrics_batches_and_matches_single_image_functions():
    maps = np.stack([c[1] for c in CASES])
    gts = np.stack([c[2] for c in CASES])
    organ = np.broadcast_to(boxes((0, 16, 0, 32)), maps.shape)
    result = localization_metrics(maps[:, None].astype(np.uint8), gts[:, None], organ)
    assert set(result) == set(METRIC_DIRECTIONS) == {"H", "L", "A"}
    np.testing.assert_allclose(result["L"], [c[4] for c in CASES], equal_nan=True)
    np.testing.assert_allclose(result["A"], maps.sum((1, 2)) / (16 * 32))
    np.testing.assert_allclose(result["H"][:3], [0.0, 4.0, 20.0])


@pytest.mark.parametrize(
    "maps,lesions,organs,match",
    [
        (np.full((1, 8, 8), 0.5), np.zeros((1, 8, 8)), None, "binary values"),
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 9)), None, "lesions: expected the shape"),
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), np.zeros((1, 4, 4)), "organs: expected the shape"),
        (np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)), None, r"shape \(B, H, W\)"),
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), "organ mask is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(maps, lesions, organs, match):
    with pytest.raises(ValueError, match=match):
        localization_metrics(maps, lesions, organs)


@pytest.mark.parametrize("percentile,kept", [(50, 50), (75, 25), (90, 10)])
def test_binarize_at_percentile_keeps_the_top_fraction(percentile, kept):
    ramp = np.arange(100, dtype=float).reshape(1, 1, 10, 10)
    binary = binarize_at_percentile(np.concatenate([ramp, ramp[..., ::-1]]), percentile)
    assert binary.shape == (2, 10, 10) and binary.dtype == bool
    np.testing.assert_array_equal(binary.sum((1, 2)), [kept, kept])
    assert binary[0].reshape(-1)[-kept:].all()  # the highest values of the ramp


def test_binarize_at_percentile_leaves_out_ties_at_zero():
    gradcam_like = np.zeros((1, 10, 10))
    gradcam_like[0, :2] = 1.0  # 20 % positive, the rest 0 as after Grad-CAM's ReLU
    assert binarize_at_percentile(gradcam_like, 50).sum() == 20


@pytest.mark.parametrize("percentile", [-1, 100, 150])
def test_binarize_at_percentile_rejects_bad_percentile(percentile):
    with pytest.raises(ValueError, match="percentile"):
        binarize_at_percentile(np.zeros((1, 4, 4)), percentile)


@pytest.mark.parametrize(
    "ours,baseline,expected_p",
    [
        # 8 distinct positive differences: exact two-sided p = 2 / 2**8
        (np.arange(1.0, 9.0), np.zeros(8), 2 / 2**8),
        # scipy's documented example (Wilcoxon 1945 data): p = 0.04126 (exact)
        (np.array([6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75.0]), np.zeros(15), 0.0412597656),
        (np.ones(5), np.ones(5), 1.0),  # no difference at all
        (np.array([1.0, 2, 3, math.nan]), np.array([0.0, 0, 0, 5]), 0.25),  # NaN pair dropped: 3 positives → 2/8
    ],
)
def test_wilcoxon_on_known_samples(ours, baseline, expected_p):
    p = wilcoxon_tests({"H": ours}, {"H": baseline, "L": baseline})
    assert list(p) == ["H"]
    assert p["H"] == pytest.approx(expected_p, rel=1e-6)


@pytest.mark.parametrize("fn", [wilcoxon_tests, signed_ranks_favour_ours])
def test_wilcoxon_rejects_unpaired_samples(fn):
    with pytest.raises(ValueError, match="paired"):
        fn({"A": np.zeros(3)}, {"A": np.zeros(4)})


@pytest.mark.parametrize(
    "metric, ours, baseline, favours",
    [
        ("H", [1.0, 2, 3], [2.0, 3, 4], True),  # lower H everywhere
        ("H", [1.0, 1, 1, 30], [2.0, 2, 2, 2], True),  # worse on the mean, closer on 3 of 4: R− = 6 > R+ = 4
        ("A", [3.0, 3, 3, 0], [2.0, 2, 2, 2], False),  # better on the mean, worse on 3 of 4: R+ = 6 > R− = 4
        ("L", [1.0, 1, 0], [0.0, 0, 0], True),  # higher is better for L
        ("L", [0.0, 0.5, 0.5], [1.0, 0.5, 0.5], False),  # ties dropped, the one difference against ours
        ("H", [2.0, 2], [2.0, 2], False),  # no difference: no direction
        ("H", [1.0, math.nan], [2.0, 0.0], True),  # the NaN pair dropped, as by the test
    ],
)
def test_signed_ranks_favour_ours(metric, ours, baseline, favours):
    assert signed_ranks_favour_ours({metric: np.array(ours)}, {metric: np.array(baseline)}) == {metric: favours}


@pytest.mark.parametrize(
    "values, mean, std, ci95",
    [
        ([1.0, 2.0, 3.0, math.nan], 2.0, 1.0, None),  # NaN ignored; the interval checked against the data's range
        ([0.0] * 10 + [1.0], 1 / 11, math.sqrt(1 / 11), None),  # L of mini-MIAS size: a t-interval would reach below 0
        ([4.0, 4.0, 4.0], 4.0, 0.0, [4.0, 4.0]),  # every resample has the same mean
        ([7.0], 7.0, 0.0, [math.nan, math.nan]),  # one value: no interval
        ([math.nan], math.nan, math.nan, [math.nan, math.nan]),  # nothing left
    ],
)
def test_summarize_gives_a_bootstrap_interval_within_the_data(values, mean, std, ci95):
    summary = summarize(values)
    finite = [v for v in values if not math.isnan(v)]
    assert summary["n"] == len(finite)
    np.testing.assert_allclose([summary["mean"], summary["std"]], [mean, std])
    if ci95 is not None:
        np.testing.assert_allclose(summary["ci95"], ci95)
    else:
        low, high = summary["ci95"]
        assert min(finite) <= low < summary["mean"] < high <= max(finite)
    assert summarize(values) == summary or math.isnan(summary["mean"])  # seeded: the same report twice


def test_summarize_interval_covers_the_mean_like_a_t_interval_for_many_values():
    values = np.random.default_rng(0).normal(50.0, 10.0, 400)
    low, high = summarize(values)["ci95"]
    half = 1.966 * values.std(ddof=1) / math.sqrt(400)
    assert abs(low - (values.mean() - half)) < 0.2 * half and abs(high - (values.mean() + half)) < 0.2 * half


