"""The oracle fills of the chest phantoms: exact decomposition, kriging, and the marginalizer built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfattr_monai.data.phantom_oracle import PhantomOracleMarginalizer, chest_phantom_parts, conditional_texture_fill
from cfattr_monai.data.phantoms import default_difficulty, generate_phantom, write_phantom_dataset
from cfattr_monai.metrics.marginalization import hole_psnr, load_split

DIFFICULTY = vars(default_difficulty("chest"))


@pytest.fixture(scope="module")
def chest_set(tmp_path_factory):
    datalist = write_phantom_dataset(tmp_path_factory.mktemp("chest") / "set", kind="chest", n=10, size=64)
    return datalist, load_split(datalist, "test")


def _lung_hole(organ: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    hole = np.zeros_like(organ, dtype=bool)
    hole[rows, cols] = True
    return hole & (organ > 0)


@pytest.mark.parametrize("size, index, label", [(64, 0, 0), (64, 3, 1), (128, 5, 1)])
def test_parts_rebuild_the_phantom_and_the_twin_differs_only_on_the_lesion(size, index, label):
    parts = chest_phantom_parts(size, 0, index, DIFFICULTY, label)  # raises if anatomy + texture + noise ≠ twin
    drawn = generate_phantom("chest", size, np.random.default_rng([0, index]), label=label)
    np.testing.assert_array_equal(parts["image"], drawn["image"].astype(np.float64))
    assert np.array_equal(parts["image"] != parts["twin"], drawn["lesion"] > 0)
    lungs = drawn["organ"] > 0
    assert set(np.unique(parts["texture"][lungs])) == {DIFFICULTY["texture"]}
    assert float(np.abs(parts["twin"] - parts["anatomy"])[lungs].std()) > 0.01  # the texture is in the residual


@pytest.mark.parametrize(
    "case, expected",
    [("empty hole", "empty"), ("zero residual", "zeros"), ("double residual", "double")],
)
def test_conditional_mean_is_linear_in_the_context(case, expected):
    size, rng = 32, np.random.default_rng(0)
    residual = rng.standard_normal((size, size)) * 0.05
    texture, noise_var = np.full((size, size), 0.04), np.full((size, size), 0.02**2)
    hole = np.zeros((size, size), dtype=bool)
    if case != "empty hole":
        hole[10:16, 12:20] = True
    if case == "zero residual":
        residual = np.zeros_like(residual)
    values = conditional_texture_fill(residual, texture, noise_var, hole)
    if expected == "empty":
        assert values.shape == (0,)
    elif expected == "zeros":
        np.testing.assert_allclose(values, 0.0)
    else:
        np.testing.assert_allclose(conditional_texture_fill(2 * residual, texture, noise_var, hole), 2 * values)


def test_conditional_mean_beats_the_anatomy_alone_and_samples_vary():
    """On real phantom holes the kriged texture is closer to the truth than no texture; samples differ from the mean."""
    errors = {"mean": [], "anatomy": []}
    for index in range(4):
        parts = chest_phantom_parts(64, 0, index, DIFFICULTY)
        organ = generate_phantom("chest", 64, np.random.default_rng([0, index]), label=0)["organ"]
        hole = _lung_hole(organ, slice(20, 28), slice(8, 56))
        residual = parts["twin"] - parts["anatomy"]
        mean = conditional_texture_fill(residual, parts["texture"], parts["noise"] ** 2 + 1e-6, hole)
        errors["mean"].append(np.mean((mean - residual[hole]) ** 2))
        errors["anatomy"].append(np.mean(residual[hole] ** 2))
        sample = conditional_texture_fill(residual, parts["texture"], parts["noise"] ** 2 + 1e-6, hole,
                                          np.random.default_rng(index))
        assert not np.allclose(sample, mean)
    assert np.mean(errors["mean"]) < 0.7 * np.mean(errors["anatomy"])


@pytest.mark.parametrize("mode", ["mean", "sample", "anatomy"])
def test_oracle_marginalizer_fills_only_the_hole_and_beats_the_anatomy_in_psnr(chest_set, mode):
    datalist, data = chest_set
    images = data["image"]
    holes = torch.zeros_like(images)
    holes[..., 24:32, 8:56] = 1.0
    holes *= data["organ"]
    filled = PhantomOracleMarginalizer(datalist, "test", images, mode)(images, holes)
    torch.testing.assert_close(filled * (1 - holes), images * (1 - holes))
    healthy = data["label"] == 0
    psnr = hole_psnr(filled[healthy], images[healthy], holes[healthy]).mean()
    anatomy = PhantomOracleMarginalizer(datalist, "test", images, "anatomy")(images, holes)
    anatomy_psnr = hole_psnr(anatomy[healthy], images[healthy], holes[healthy]).mean()
    assert psnr > anatomy_psnr if mode == "mean" else psnr > 15.0


def test_oracle_marginalizer_refuses_what_it_cannot_fill(chest_set, tmp_path):
    datalist, data = chest_set
    images = data["image"]
    with pytest.raises(ValueError, match="mode"):
        PhantomOracleMarginalizer(datalist, "test", images, "median")
    with pytest.raises(ValueError, match="without resizing"):
        PhantomOracleMarginalizer(datalist, "test", images[..., :32, :32])
    pi = PhantomOracleMarginalizer(datalist, "test", images)
    with pytest.raises(ValueError, match="not one of the split's images"):
        pi(torch.rand_like(images), torch.ones_like(images))
    mammo = write_phantom_dataset(tmp_path / "mammo", kind="mammo", n=10, size=64)
    with pytest.raises(ValueError, match="chest phantoms only"):
        PhantomOracleMarginalizer(mammo, "test", load_split(mammo, "test")["image"])
