"""Marginalizers π: the blend, the hard-hole fill, gradients w.r.t. M, each fill's character, the factory, bad input."""

from __future__ import annotations

import pytest
import torch

from cfattr_monai.networks.inpainter import PartialConvUNet
from cfattr_monai.transforms.marginalize import (
    BlurMarginalizer,
    InpaintMarginalizer,
    MeanMarginalizer,
    NoiseMarginalizer,
    get_marginalizer,
)


def tiny_inpainter() -> PartialConvUNet:
    torch.manual_seed(0)
    return PartialConvUNet(channels=(4, 8), kernel_sizes=(3, 3), num_levels=2).eval()


def attribution(soft: float = 1.0) -> torch.Tensor:
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:10, 5:11] = soft
    return mask


MARGINALIZERS = {
    "inpaint": lambda: InpaintMarginalizer(tiny_inpainter()),
    "blur": lambda: BlurMarginalizer(sigma=0.1),
    "blur_context": lambda: BlurMarginalizer(sigma=0.1, context_only=True),
    "noise": lambda: NoiseMarginalizer(std=0.2),
    "mean": lambda: MeanMarginalizer(region="image"),
}


@pytest.mark.parametrize("name", sorted(MARGINALIZERS))
def test_pixels_outside_the_map_are_untouched_and_inside_replaced(name):
    torch.manual_seed(1)
    pi, image, mask = MARGINALIZERS[name](), torch.rand(2, 1, 16, 16), attribution()
    out = pi(image, mask)
    assert out.shape == image.shape
    torch.testing.assert_close(out[mask == 0], image[mask == 0])
    assert not torch.allclose(out[mask == 1], image[mask == 1])


@pytest.mark.parametrize("name", sorted(MARGINALIZERS))
def test_gradient_flows_to_the_map_through_the_blend(name):
    torch.manual_seed(1)
    pi, image = MARGINALIZERS[name](), torch.rand(2, 1, 16, 16)
    mask = attribution(0.8).requires_grad_(True)
    pi(image, mask).sum().backward()
    assert mask.grad is not None and mask.grad[mask > 0].abs().sum() > 0


def test_soft_map_blends_with_the_hard_hole_fill():
    """π(M) = (1 − M)⊙I + M⊙F with F computed on M > 0.55: a 0.5 map has no hole, F = I for the inpainter."""
    image = torch.rand(2, 1, 16, 16)
    pi = InpaintMarginalizer(tiny_inpainter())
    torch.testing.assert_close(pi(image, attribution(0.5)), image)
    soft = pi(image, attribution(0.6))
    hard_fill = pi(image, attribution(1.0))
    torch.testing.assert_close(soft, 0.4 * image + 0.6 * hard_fill)


def test_inpaint_fill_is_in_unit_range_and_uses_the_network():
    image, hole = torch.rand(1, 1, 16, 16), attribution()[:1]
    out = InpaintMarginalizer(tiny_inpainter())(image, hole)
    assert 0.0 <= out.min() and out.max() <= 1.0
    other = tiny_inpainter()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.5)
    other_out = InpaintMarginalizer(other)(image, hole)
    assert not torch.allclose(out[hole > 0], other_out[hole > 0])  # the fill comes from the network's weights
    torch.testing.assert_close(out[hole == 0], other_out[hole == 0])  # outside the hole the image stays


def test_mean_fills_with_the_mean_of_the_valid_organ():
    image = torch.zeros(1, 1, 16, 16)
    image[..., :, 8:] = 0.6  # organ on the right half, black background on the left
    hole = torch.zeros(1, 1, 16, 16)
    hole[..., 2:6, 10:14] = 1
    out = MeanMarginalizer(region="organ")(image, hole)
    torch.testing.assert_close(out[hole == 1], torch.full((16,), 0.6))
    out_image = MeanMarginalizer(region="image")(image, hole)
    assert out_image[hole == 1][0].item() == pytest.approx(0.6 * (128 - 16) / (256 - 16), rel=1e-5)


def test_blur_removes_detail_and_noise_adds_it():
    image = torch.zeros(1, 1, 32, 32)
    image[..., ::2, :] = 1.0  # stripes
    hole = torch.ones(1, 1, 32, 32)
    assert BlurMarginalizer(sigma=0.1)(image, hole)[..., 8:24, 8:24].std() < 0.1 * image.std()  # interior: no padding
    flat = torch.full((1, 1, 32, 32), 0.5)
    assert NoiseMarginalizer(std=0.2)(flat, hole).std() > 0.1


SEES_THE_HOLE = [
    ("blur", True),  # Fong et al.: the blurred image, the replaced pixels included
    ("blur_context", False),  # normalized convolution of the pixels around the hole
    ("mean", False),
    ("inpaint", False),
]


@pytest.mark.parametrize("name,sees_the_hole", SEES_THE_HOLE)
def test_which_fills_depend_on_the_pixels_they_replace(name, sees_the_hole):
    torch.manual_seed(2)
    pi, image, mask = MARGINALIZERS[name](), torch.rand(2, 1, 16, 16), attribution()
    other = torch.where(mask > 0, torch.rand_like(image), image)  # same context, other pixels under the map
    assert torch.allclose(pi(image, mask), pi(other, mask)) is not sees_the_hole


def test_context_blur_fills_far_from_any_valid_pixel_with_the_valid_mean():
    image = torch.rand(1, 1, 64, 64)
    hole = torch.zeros(1, 1, 64, 64)
    hole[..., :, :48] = 1  # the kernel (σ = 1.28 px, truncated at 4σ) sees no valid pixel at the left edge
    out = BlurMarginalizer(sigma=0.02, context_only=True)(image, hole)
    torch.testing.assert_close(out[..., :, 0], image[..., :, 48:].mean().expand(1, 1, 64))
    assert out[..., :, 47].sub(image[..., :, 48:].mean()).abs().mean() > 0.01  # near the border: the local context


def test_factory():
    assert isinstance(get_marginalizer("blur", sigma=0.05), BlurMarginalizer)
    assert isinstance(get_marginalizer("inpaint", inpainter=tiny_inpainter(), threshold=0.3), InpaintMarginalizer)
    with pytest.raises(ValueError, match="unknown marginalizer 'gan'"):
        get_marginalizer("gan")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: BlurMarginalizer(sigma=0), "sigma"),
        (lambda: NoiseMarginalizer(std=-1), "std"),
        (lambda: MeanMarginalizer(region="lung"), "region"),
        (lambda: BlurMarginalizer(threshold=1.0), "threshold"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "mask",
    [torch.zeros(2, 1, 16, 12), torch.zeros(1, 1, 16, 16), torch.zeros(2, 2, 16, 16), torch.zeros(2, 16, 16)],
    ids=["other size", "other batch", "two channels", "no channel"],
)
def test_mask_of_wrong_shape_is_a_clear_error(mask):
    with pytest.raises(ValueError, match="resize the map"):
        BlurMarginalizer()(torch.rand(2, 1, 16, 16), mask)


def test_a_map_covering_everything_leaves_that_image_unchanged_and_inpaints_the_others():
    """No context to inpaint from: F = I for that item (π changes nothing), the rest of the batch as alone."""
    image, mask = torch.rand(2, 1, 16, 16), attribution()
    mask[0] = 1.0
    pi = InpaintMarginalizer(tiny_inpainter())
    out = pi(image, mask)
    torch.testing.assert_close(out[0], image[0])
    torch.testing.assert_close(out[1:], pi(image[1:], mask[1:]))
    assert not torch.allclose(out[1][mask[1] == 1], image[1][mask[1] == 1])
    torch.testing.assert_close(pi(image, torch.ones_like(mask)), image)
