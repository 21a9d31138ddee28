"""PartialConvUNet: shapes for any size, paper architecture, hole independence, phase-2 BN freezing, bad masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cfattr_monai.networks.inpainter import PartialConvUNet, composite

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
