"""PartialConv2d: Liu et al. Eq. 1-2 properties, mask layouts, buffers, TorchScript, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cfattr_monai.networks.partial_conv import PartialConv2d


def hole_mask(batch: int = 2, channels: int = 1, size: int = 16, hole=(4, 12, 5, 11)) -> torch.Tensor:
    mask = torch.ones(batch, channels, size, size)
    y0, y1, x0, x1 = hole
    mask[..., y0:y1, x0:x1] = 0
    return mask


# in_channels, out_channels, kernel, stride, padding, dilation, bias, multi_channel_mask
CONFIGS = [
    (1, 4, 3, 1, 1, 1, True, False),
    (3, 5, 5, 2, 2, 1, False, False),
    (3, 2, 3, 1, 2, 2, True, True),
    (2, 3, 7, 2, 3, 1, True, True),
]


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,bias,multi", CONFIGS)
def test_all_ones_mask_equals_conv2d(cin, cout, k, stride, padding, dilation, bias, multi):
    """Wherever the window lies inside the image, sum(1)/sum(M) = 1: the output is nn.Conv2d's."""
    torch.manual_seed(0)
    pconv = PartialConv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias, multi_channel_mask=multi)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias)
    conv.load_state_dict(pconv.state_dict())
    size = 20
    x = torch.rand(2, cin, size, size)
    with torch.no_grad():
        out, mask = pconv(x, torch.ones(2, cin if multi else 1, size, size))
        expected = conv(x)
    start = torch.arange(out.shape[-1]) * stride - padding  # first input index of each output's window
    inside = (start >= 0) & (start + dilation * (k - 1) <= size - 1)
    assert inside.sum() >= 3
    torch.testing.assert_close(out[..., inside, :][..., inside], expected[..., inside, :][..., inside], rtol=1e-5, atol=1e-5)
    assert bool((mask == 1).all())


def test_all_ones_mask_without_padding_is_exactly_conv2d():
    pconv = PartialConv2d(2, 3, 3, padding=0)
    conv = nn.Conv2d(2, 3, 3)
    conv.load_state_dict(pconv.state_dict())
    x = torch.rand(1, 2, 9, 9)
    torch.testing.assert_close(pconv(x, torch.ones(1, 1, 9, 9))[0], conv(x))


@pytest.mark.parametrize("multi", [False, True])
def test_output_independent_of_pixels_inside_the_hole(multi):
    torch.manual_seed(0)
    pconv = PartialConv2d(3, 4, 3, padding=1, multi_channel_mask=multi)
    mask = hole_mask(channels=3 if multi else 1)
    x1, x2 = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    x2 = mask * x1 + (1 - mask) * x2  # same valid pixels, different hole content
    (y1, m1), (y2, m2) = pconv(x1, mask), pconv(x2, mask)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(m1, m2)
    assert not torch.equal(x1, x2)


def test_hole_outputs_are_zero_and_renormalized_by_valid_count():
    pconv = PartialConv2d(1, 1, 3, padding=1, bias=True)
    with torch.no_grad():
        pconv.weight.fill_(1.0)
        pconv.bias.fill_(0.5)
    mask = hole_mask(batch=1, size=8, hole=(2, 7, 2, 7))
    with torch.no_grad():
        out, new_mask = pconv(torch.ones(1, 1, 8, 8), mask)
    assert out[0, 0, 4, 4] == 0 and new_mask[0, 0, 4, 4] == 0  # window fully inside the hole: sum(M) = 0
    # a window with 5 valid pixels (row 1, column 1): W^T(X⊙M)·sum(1)/sum(M) + b = 5·9/5 + 0.5
    assert out[0, 0, 2, 2].item() == pytest.approx(9.5)
    assert new_mask[0, 0, 2, 2] == 1


def test_mask_shrinks_layer_by_layer_until_all_ones():
    layers = [PartialConv2d(1, 1, 3, padding=1) for _ in range(8)]
    x, mask = torch.rand(1, 1, 16, 16), hole_mask(batch=1, hole=(3, 13, 3, 13))
    holes = [int((mask == 0).sum())]
    for layer in layers:
        x, mask = layer(x, mask)
        holes.append(int((mask == 0).sum()))
    assert holes[0] == 100 and holes[-1] == 0
    assert all(a > b for a, b in zip(holes, holes[1:]) if a > 0)


def test_mask_kernel_is_a_non_persistent_buffer_that_follows_the_module():
    pconv = PartialConv2d(2, 3, 3, multi_channel_mask=True)
    assert "mask_kernel" in dict(pconv.named_buffers())
    assert set(pconv.state_dict()) == {"weight", "bias"}
    assert pconv.double().mask_kernel.dtype == torch.float64
    assert tuple(pconv.mask_kernel.shape) == (1, 2, 3, 3)


def test_updated_mask_layout():
    single = PartialConv2d(3, 5, 3, padding=1)
    multi = PartialConv2d(3, 5, 3, padding=1, multi_channel_mask=True)
    x = torch.rand(2, 3, 8, 8)
    assert single(x, torch.ones(2, 1, 8, 8))[1].shape == (2, 1, 8, 8)
    assert multi(x, torch.ones(2, 3, 8, 8))[1].shape == (2, 5, 8, 8)


@pytest.mark.parametrize("compile_fn", ["script", "trace"])
def test_torchscript(compile_fn):
    pconv = PartialConv2d(2, 3, 3, stride=2, padding=1)
    x, mask = torch.rand(1, 2, 12, 12), hole_mask(batch=1, size=12, hole=(2, 8, 2, 8))
    compiled = torch.jit.script(pconv) if compile_fn == "script" else torch.jit.trace(pconv, (x, mask))
    other = torch.rand(3, 2, 12, 12), hole_mask(batch=3, size=12, hole=(0, 5, 6, 12))  # not the traced input
    for inputs in ((x, mask), other):
        for got, want in zip(compiled(*inputs), pconv(*inputs)):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "mask_shape,multi",
    [((2, 1, 8, 9), False), ((2, 3, 9, 9), False), ((2, 1, 9, 9), True), ((1, 1, 9, 9), False), ((2, 9, 9), False)],
)
def test_bad_mask_shape_is_a_clear_error(mask_shape, multi):
    pconv = PartialConv2d(3, 4, 3, multi_channel_mask=multi)
    with pytest.raises(ValueError, match="mask must have shape"):
        pconv(torch.rand(2, 3, 9, 9), torch.ones(mask_shape))


# part channels, kernel, stride, padding, dilation, bias
PARTS = [
    ((2, 1), 3, 1, 1, 1, False),
    ((3, 4), 3, 1, 1, 1, True),
    ((1, 2, 3), 5, 2, 2, 1, True),
    ((4,), 3, 1, 2, 2, False),
]


@pytest.mark.parametrize("channels,k,stride,padding,dilation,bias", PARTS)
def test_forward_parts_equals_forward_on_the_concatenation(channels, k, stride, padding, dilation, bias):
    """Parts with one mask each = the concatenated input with each part's mask repeated over its channels, bit for
    bit, output, updated mask and gradients."""
    torch.manual_seed(0)
    pconv = PartialConv2d(sum(channels), 3, k, stride=stride, padding=padding, dilation=dilation, bias=bias,
                          multi_channel_mask=True)
    holes = [(2, 9, 3, 7), (0, 16, 0, 16), (5, 6, 5, 6)]  # the second part's mask is all holes
    masks = [hole_mask(size=16, hole=holes[i % 3]) for i in range(len(channels))]
    parts = [torch.rand(2, c, 16, 16, requires_grad=True) for c in channels]
    whole = torch.cat([m.expand(-1, c, -1, -1) for m, c in zip(masks, channels)], 1)
    out, new_mask = pconv.forward_parts(parts, masks)
    grads = torch.autograd.grad(out.square().sum(), [*parts, pconv.weight])
    joined = torch.cat([p.detach() for p in parts], 1).requires_grad_()
    expected, expected_mask = pconv(joined, whole)
    expected_grads = torch.autograd.grad(expected.square().sum(), [joined, pconv.weight])
    assert torch.equal(out, expected) and torch.equal(new_mask, expected_mask)
    assert torch.equal(torch.cat(grads[:-1], 1), expected_grads[0]) and torch.equal(grads[-1], expected_grads[1])


@pytest.mark.parametrize(
    "multi,part_shapes,mask_shapes,match",
    [
        (False, [(2, 2, 8, 8), (2, 1, 8, 8)], [(2, 1, 8, 8)] * 2, "multi_channel_mask=True"),
        (True, [], [], r"got 0 part\(s\) and 0 mask\(s\)"),
        (True, [(2, 2, 8, 8), (2, 1, 8, 8)], [(2, 1, 8, 8)], r"got 2 part\(s\) and 1 mask\(s\)"),
        (True, [(2, 2, 8, 8), (2, 2, 8, 8)], [(2, 1, 8, 8)] * 2, r"channels \[2, 2\] sum to 4, the convolution takes"),
        (True, [(2, 4, 8, 8), (2, 3, 8)], [(2, 1, 8, 8)] * 2, r"\[2, 3, 8\]\]; resize the parts"),
        (True, [(2, 2, 8, 8), (2, 1, 8, 9)], [(2, 1, 8, 8), (2, 1, 8, 9)], r"first part's B, H and W"),
        (True, [(2, 2, 8, 8), (1, 1, 8, 8)], [(2, 1, 8, 8), (1, 1, 8, 8)], r"first part's B, H and W"),
        (True, [(2, 2, 8, 8), (2, 1, 8, 8)], [(2, 1, 8, 8), (2, 2, 8, 8)], r"matching its part \[2, 1, 8, 8\]"),
        (True, [(2, 2, 8, 8), (2, 1, 8, 8)], [(2, 1, 8, 8), (2, 1, 8, 9)], r"got \[2, 1, 8, 9\]"),
        (True, [(2, 2, 8, 8), (2, 1, 8, 8)], [(1, 1, 8, 8), (2, 1, 8, 8)], r"got \[1, 1, 8, 8\]"),
    ],
)
def test_forward_parts_bad_input_is_a_clear_error(multi, part_shapes, mask_shapes, match):
    pconv = PartialConv2d(3, 4, 3, padding=1, multi_channel_mask=multi)
    with pytest.raises(ValueError, match=match):
        pconv.forward_parts([torch.rand(s) for s in part_shapes], [torch.ones(s) for s in mask_shapes])


def test_forward_parts_keeps_the_input_dtype_under_autocast():
    """The updated mask takes the parts' dtype, as :meth:`PartialConv2d.forward` takes ``x``'s, also where autocast
    computes the masked input in another one."""
    torch.manual_seed(0)
    pconv = PartialConv2d(3, 4, 3, padding=1, multi_channel_mask=True)
    parts, masks = [torch.rand(2, 2, 8, 8).bfloat16(), torch.rand(2, 1, 8, 8).bfloat16()], [hole_mask(size=8)] * 2
    whole = torch.cat([masks[0].expand(-1, 2, -1, -1), masks[1]], 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, new_mask = pconv.forward_parts(parts, masks)
        expected, expected_mask = pconv(torch.cat(parts, 1), whole)
    assert new_mask.dtype == expected_mask.dtype == torch.bfloat16
    assert torch.equal(out, expected) and torch.equal(new_mask, expected_mask)
