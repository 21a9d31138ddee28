"""Smooth-max mapping into compact masks: range, connected components, differentiability, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cfattr_monai.transforms import masks
from cfattr_monai.transforms.masks import SmoothMaxCompact, gaussian_rbf_smooth_max, map_into_compact


def _blobs(size: tuple[int, int], centers, radius: float) -> torch.Tensor:
    yy, xx = np.mgrid[: size[0], : size[1]]
    mask = np.zeros(size, np.float32)
    for cy, cx in centers:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return torch.from_numpy(mask)[None, None]


def _components(mask: torch.Tensor, threshold: float = 0.55) -> int:
    return int(ndimage.label(mask[0, 0].detach().numpy() > threshold)[1])


@pytest.mark.parametrize(
    "size, centers, radius",
    [
        ((64, 64), [(32, 32)], 3),
        ((64, 64), [(10, 10), (50, 50)], 2),
        ((128, 128), [(20, 20), (24, 30), (100, 90)], 4),
        ((128, 96), [(30, 30), (30, 60), (90, 48)], 1),
        ((576, 448), [(100, 100), (400, 300)], 10),
    ],
)
def test_no_more_components_than_input(size, centers, radius):
    mask = _blobs(size, centers, radius)
    compact = map_into_compact(mask)
    assert compact.shape == mask.shape
    assert 1 <= _components(compact) <= _components(mask)
    # every input region is kept (a small region never vanishes)
    assert bool((compact[mask > 0] > 0.55).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_soft_maps_stay_in_unit_interval_and_do_not_fragment(seed):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, 96, 96, generator=generator)
    mask = (torch.nn.functional.avg_pool2d(noise, 9, 1, 4) > 0.55).float()
    compact = map_into_compact(noise * mask)
    assert 0.0 <= float(compact.min()) and float(compact.max()) <= 1.0
    assert _components(compact) <= max(1, _components(mask, 0.5))


def test_differentiable():
    mask = torch.rand(2, 1, 64, 64, requires_grad=True)
    SmoothMaxCompact()(mask).sum().backward()
    assert mask.grad is not None and torch.isfinite(mask.grad).all() and mask.grad.abs().sum() > 0


def test_smooth_max_tends_to_rbf_dilation():
    mask = torch.zeros(1, 1, 31, 31)
    mask[0, 0, 15, 15] = 1.0
    out = gaussian_rbf_smooth_max(mask, sigma=3.0, smoothing=30.0)[0, 0]
    assert float(out[15, 15]) == pytest.approx(1.0, abs=1e-3)
    # one sigma away the RBF weight is e^{-1/2}; the smooth max stays close to it
    assert float(out[15, 18]) == pytest.approx(np.exp(-0.5), abs=0.02)
    assert float(out[0, 0]) < 1e-3


def _smooth_max_reference(mask: np.ndarray, sigma: float, smoothing: float) -> np.ndarray:
    """``smax_{v ∈ Ω_u; β} k(u − v) M(v)`` pixel by pixel, the window ending at the border."""
    radius = max(1, int(np.ceil(3 * sigma)))
    height, width = mask.shape
    out = np.zeros_like(mask, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            rows = slice(max(0, y - radius), min(height, y + radius + 1))
            ys, xs = np.mgrid[rows, max(0, x - radius) : min(width, x + radius + 1)]
            w = np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2 * sigma**2)) * mask[ys, xs]
            e = np.exp(smoothing * (w - w.max()))
            out[y, x] = (w * e).sum() / e.sum()
    return out


@pytest.mark.parametrize("chunk", [masks.WINDOW_CHUNK, 1])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("shape, sigma, smoothing", [((3, 1, 7, 9), 1.0, 30.0), ((1, 1, 12, 5), 1.7, 5.0)])
def test_smooth_max_matches_the_formula_with_and_without_autograd(shape, sigma, smoothing, grad, chunk, monkeypatch):
    """Without autograd the function multiplies in place; with it, it must not (the softmax's backward needs its
    output): both give the formula's value, in one chunk or one image at a time, and the gradient is the numerical
    one."""
    monkeypatch.setattr(masks, "WINDOW_CHUNK", chunk)
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = gaussian_rbf_smooth_max(mask, sigma, smoothing)
    for image, result in zip(mask.detach().numpy()[:, 0], out.detach().numpy()[:, 0]):
        np.testing.assert_allclose(result, _smooth_max_reference(image, sigma, smoothing), rtol=1e-10, atol=1e-12)
    if grad:
        assert torch.autograd.gradcheck(lambda m: gaussian_rbf_smooth_max(m, sigma, smoothing), (mask,))


@pytest.mark.parametrize(
    "size, edge_center",
    [((64, 64), (0, 0)), ((64, 64), (0, 32)), ((128, 96), (127, 40)), ((96, 128), (50, 127))],
)
def test_border_keeps_the_map(size, edge_center):
    """The window ends at the border: a blob on it keeps its peak, a constant map does not fall off towards it."""
    middle = map_into_compact(_blobs(size, [(size[0] // 2, size[1] // 2)], 4))
    edge = map_into_compact(_blobs(size, [edge_center], 4))
    assert float(edge.max()) == pytest.approx(float(middle.max()), abs=0.02)
    for level in (0.02, 0.1, 0.5, 1.0):  # a constant map does not fall off towards the border, weak or strong
        flat = map_into_compact(torch.full((1, 1, *size), level))[0, 0]
        interior = float(flat[size[0] // 2, size[1] // 2])
        border = torch.cat([flat[0], flat[-1], flat[:, 0], flat[:, -1]])
        assert float(border.min()) >= interior - 1e-6 * level


def test_empty_map_stays_empty():
    assert float(map_into_compact(torch.zeros(1, 1, 64, 64)).max()) == 0.0


@pytest.mark.parametrize("grad", [False, True])
def test_empty_batch_gives_an_empty_batch(grad):
    mask = torch.zeros(0, 1, 64, 64, requires_grad=grad)
    assert map_into_compact(mask).shape == (0, 1, 64, 64)


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((1, 64, 64), {}, "mask must be a \\(B, 1, H, W\\) attribution map"),
        ((1, 2, 64, 64), {}, "mask must be a \\(B, 1, H, W\\) attribution map"),
        ((1, 1, 64, 64), {"sigma_fraction": 0.0}, "need sigma_fraction > 0 and cells_per_sigma >= 1"),
        ((1, 1, 64, 64), {"cells_per_sigma": 0.5}, "need sigma_fraction > 0 and cells_per_sigma >= 1"),
    ],
)
def test_bad_inputs(shape, kwargs, message):
    with pytest.raises(ValueError, match=f"map_into_compact: {message}"):
        map_into_compact(torch.rand(*shape), **kwargs)
