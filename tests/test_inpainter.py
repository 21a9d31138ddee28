"""PartialConvUNet: shapes for any size, paper architecture, hole independence, phase-2 BN freezing, bad masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cfattr_monai.networks.inpainter import PartialConvUNet, composite
from cfattr_monai.networks.partial_conv import PartialConv2d

TINY = {"channels": (4, 8, 8), "kernel_sizes": (7, 5, 3), "num_levels": 3}


def masked(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    image, valid = torch.rand(batch, 1, height, width), torch.ones(batch, 1, height, width)
    valid[..., height // 4 : height // 2, width // 4 : width // 2] = 0
    return image, valid


@pytest.mark.parametrize("height,width", [(32, 32), (30, 20), (17, 45), (8, 8), (1, 1)])
def test_any_size_is_padded_and_cropped_back(height, width):
    net = PartialConvUNet(**TINY).eval()
    image, valid = masked(2, height, width)
    valid[..., 0, 0] = 1
    assert net(image, valid).shape == image.shape


def test_paper_architecture_levels_depths_kernels():
    net = PartialConvUNet()
    assert len(net.encoder) == 8 and len(net.decoder) == 8
    assert [b.conv.out_channels for b in net.encoder] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert [b.conv.kernel_size[0] for b in net.encoder] == [7, 5, 5, 3, 3, 3, 3, 3]
    assert all(b.conv.stride == (2, 2) for b in net.encoder)
    assert all(b.conv.kernel_size == (3, 3) for b in net.decoder)
    assert isinstance(net.encoder[0].norm, nn.Identity) and isinstance(net.encoder[1].norm, nn.BatchNorm2d)
    assert all(isinstance(b.act, nn.ReLU) for b in net.encoder)
    assert all(isinstance(b.act, nn.LeakyReLU) and b.act.negative_slope == 0.2 for b in net.decoder[:-1])
    assert net.decoder[-1].conv.out_channels == 1 and isinstance(net.decoder[-1].act, nn.Identity)


def test_chest_config_drops_the_bottom_level():
    net = PartialConvUNet(num_levels=7)
    assert [b.conv.out_channels for b in net.encoder] == [64, 128, 256, 512, 512, 512, 512]


def test_prediction_independent_of_hole_content():
    torch.manual_seed(0)
    net = PartialConvUNet(**TINY).eval()
    image, valid = masked(1, 32, 32)
    other = valid * image + (1 - valid) * torch.rand_like(image)
    with torch.no_grad():
        torch.testing.assert_close(net(image, valid), net(other, valid))


@pytest.mark.parametrize(
    "hole, reaches_bottom", [((2, 30, 3, 29), True), ((0, 32, 0, 24), True), ((6, 26, 6, 26), False), ((10, 12, 10, 12), False)]
)
def test_decoder_masks_are_the_upsampled_and_skip_masks(hole, reaches_bottom):
    """Liu et al.'s U-Net: each decoder partial convolution sees the nearest-upsampled mask of the level below for
    the upsampled features and the skip's mask for the skip features, as two parts with one mask channel each (a
    hole that survives to the bottom makes the upsampled part differ from all ones)."""
    net = PartialConvUNet(**TINY).eval()
    image, valid = torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    top, bottom, left, right = hole
    valid[0, :, top:bottom, left:right] = 0
    seen = {}  # block -> (features in, mask in, mask out)
    for block in [*net.encoder, *net.decoder]:
        block.register_forward_hook(lambda module, args, out: seen.__setitem__(module, (*args, out[1])))
    with torch.no_grad():
        net(image, valid)
    depths = [1, *TINY["channels"]]
    skips = [valid] + [seen[block][2] for block in net.encoder[:-1]]  # the mask of each skip, finest first
    below = seen[net.encoder[-1]][2]
    assert bool((below[0] == 0).any()) == reaches_bottom
    for level, block in zip(range(len(depths) - 1, 0, -1), net.decoder):
        parts, masks_in, mask_out = seen[block]
        assert [part.shape[1] for part in parts] == [depths[level], depths[level - 1]]
        upsampled = torch.nn.functional.interpolate(below[:, :1], scale_factor=2.0, mode="nearest")
        assert torch.equal(masks_in[0], upsampled) and torch.equal(masks_in[1], skips[level - 1][:, :1])
        below = mask_out


def test_decoder_equals_partial_convolutions_of_the_concatenation_with_a_mask_per_channel(monkeypatch):
    """The decoder's two-part partial convolutions give what Liu et al.'s formulation gives (the concatenated
    features, one mask channel per feature channel), bit for bit, prediction and gradients."""

    def concatenated(conv: PartialConv2d, parts: list, masks: list) -> tuple:
        whole = torch.cat([mask.expand_as(part) for part, mask in zip(parts, masks)], 1).contiguous()
        return conv(torch.cat(parts, 1), whole)

    torch.manual_seed(0)
    net = PartialConvUNet(**TINY).train()
    image, valid = masked(2, 32, 32)
    valid[0, :, 2:30, 3:29] = 0  # a hole that reaches the bottom level: every decoder level sees holes
    outputs, grads = [], []
    for reference in (False, True):
        if reference:
            monkeypatch.setattr(PartialConv2d, "forward_parts", concatenated)
        torch.manual_seed(1)
        prediction = net(image, valid)
        outputs.append(prediction)
        grads.append(torch.autograd.grad(prediction.square().sum(), list(net.parameters())))
    assert torch.equal(outputs[0], outputs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_composite_keeps_valid_pixels():
    image, valid = masked(2, 16, 16)
    prediction = torch.zeros_like(image)
    out = composite(image, valid, prediction)
    assert torch.equal(out[valid == 1], image[valid == 1]) and bool((out[valid == 0] == 0).all())
    assert torch.equal(PartialConvUNet(**TINY).composite(image, valid, prediction), out)


def test_freeze_encoder_bn_survives_train_and_freezes_affine():
    net = PartialConvUNet(**TINY).freeze_encoder_bn().train()
    encoder_bn = [m for m in net.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    decoder_bn = [m for m in net.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert encoder_bn and decoder_bn
    assert not any(m.training for m in encoder_bn) and all(m.training for m in decoder_bn)
    assert not any(p.requires_grad for m in encoder_bn for p in m.parameters())
    running = [m.running_mean.clone() for m in encoder_bn]
    net(*masked(2, 16, 16))
    assert all(torch.equal(r, m.running_mean) for r, m in zip(running, encoder_bn))
    assert PartialConvUNet(**TINY, freeze_encoder_bn=True).encoder_bn_frozen


def test_gradients_reach_all_trainable_parameters():
    net = PartialConvUNet(**TINY)
    net(*masked(2, 16, 16)).mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "image_shape,mask,match",
    [
        ((2, 1, 16, 16), torch.ones(2, 1, 16, 12), "valid_mask must be"),
        ((2, 1, 16, 16), torch.ones(1, 1, 16, 16), "valid_mask must be"),
        ((2, 1, 16, 16), torch.ones(2, 16, 16), "valid_mask must be"),
        ((2, 3, 16, 16), torch.ones(2, 1, 16, 16), "image must be"),
        ((2, 1, 16, 16), torch.full((2, 1, 16, 16), 0.7), "must be binary"),
        ((2, 1, 16, 16), torch.cat([torch.ones(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)]), r"item\(s\) \[1\] is all holes"),
    ],
    ids=["other size", "other batch", "no channel", "image channels", "non-binary", "all holes"],
)
def test_bad_input_is_a_clear_error(image_shape, mask, match):
    with pytest.raises(ValueError, match=match):
        PartialConvUNet(**TINY)(torch.rand(image_shape), mask)


@pytest.mark.parametrize("kwargs", [{"num_levels": 0}, {"num_levels": 4, "channels": (4, 8, 8), "kernel_sizes": (3, 3, 3, 3)}])
def test_bad_architecture_is_a_clear_error(kwargs):
    with pytest.raises(ValueError, match="num_levels"):
        PartialConvUNet(**kwargs)
