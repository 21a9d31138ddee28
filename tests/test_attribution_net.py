"""AttentionGatedUNet: shapes per backbone, map range, frozen classifier, gradients, feature filter equation."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, ResNet

from cfattr_monai.networks.attribution import (
    AttentionGatedUNet,
    FeatureFilter,
    PointwiseConv2d,
    UpsamplingBlock,
    soft_attribution_map,
)
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.transforms.masks import SmoothMaxCompact

BACKBONES = {
    "mobilenet_v1": lambda: MobileNetV1(width_mult=0.25),
    "densenet121": lambda: DenseNet121(spatial_dims=2, in_channels=1, out_channels=1),
    "resnet": lambda: ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=2, n_input_channels=1, num_classes=1),
    "efficientnet_b0": lambda: EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=1),
}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_map_shape_and_range_for_every_backbone(backbone, size):
    torch.manual_seed(0)
    net = AttentionGatedUNet(BACKBONES[backbone]()).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_compact_head_maps_into_unit_interval():
    net = AttentionGatedUNet(MobileNetV1(width_mult=0.25), compact=SmoothMaxCompact()).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_classifier_bit_identical_after_optimizer_steps_in_train_mode():
    torch.manual_seed(0)
    classifier = MobileNetV1(width_mult=0.25)
    net = AttentionGatedUNet(classifier).train()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        net(torch.rand(4, 1, 64, 64)).mean().backward()
        optimizer.step()
    assert not classifier.training, "the frozen classifier must stay in eval mode (batch-norm statistics)"
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_gradients_reach_every_trainable_parameter_only():
    torch.manual_seed(0)
    classifier = MobileNetV1(width_mult=0.25)
    net = AttentionGatedUNet(classifier)
    (net(torch.rand(2, 1, 64, 64)) * torch.rand(2, 1, 64, 64)).sum().backward()
    trainable = net.trainable_parameters()
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in classifier.parameters())


def test_input_gradient_flows_through_frozen_encoder():
    net = AttentionGatedUNet(MobileNetV1(width_mult=0.25))
    image = torch.rand(1, 1, 64, 64, requires_grad=True)
    net(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_feature_filter_equation():
    torch.manual_seed(0)
    gate = FeatureFilter(4, inter_channels=3)
    x = torch.randn(2, 4, 5, 5)
    w_l, b_l = gate.w_l.weight[:, :, 0, 0], gate.w_l.bias
    w_m, b_m = gate.w_m.weight[:, :, 0, 0], gate.w_m.bias
    hidden = torch.relu(torch.einsum("oc,bchw->bohw", w_l, x) + b_l[:, None, None])
    expected = x * torch.sigmoid(torch.einsum("oc,bchw->bohw", w_m, hidden) + b_m[:, None, None])
    torch.testing.assert_close(gate(x), expected)


@pytest.mark.parametrize(
    "c1, c2, expected", [(1.0, 1.0, 0.5), (-3.0, 1.0, 0.75), (0.0, 2.0, 0.0), (2.0, 0.0, 1.0)]
)
def test_soft_attribution_map(c1, c2, expected):
    value = soft_attribution_map(torch.tensor([c1]), torch.tensor([c2]))
    assert float(value) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, image_shape, error",
    [
        ({"init_std": 0.0}, (1, 1, 64, 64), ValueError),
        ({}, (1, 64, 64), ValueError),
    ],
)
def test_bad_arguments(kwargs, image_shape, error):
    with pytest.raises(error):
        AttentionGatedUNet(MobileNetV1(width_mult=0.25), **kwargs)(torch.rand(*image_shape))


def test_unsupported_backbone_is_rejected():
    with pytest.raises(TypeError, match="no feature stages known for Sequential.*register_encoder"):
        AttentionGatedUNet(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3)))


def _upsample_first_reference(net: AttentionGatedUNet, image: torch.Tensor) -> torch.Tensor:
    """The decoder as the paper orders it: every block upsamples, then convolves (no compact mapping)."""
    import torch.nn.functional as F

    gated = [gate(x) for gate, x in zip(net.filters, net.encoder(image))]
    x = gated[3]
    for block, skip in zip(net.blocks[:3], reversed(gated[:3])):
        x = torch.relu(block.conv(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))) + skip
    x = torch.relu(net.blocks[3].conv(F.interpolate(x, scale_factor=2, mode="nearest")))
    c1, c2 = net.head(x).unbind(dim=1)
    return F.interpolate(soft_attribution_map(c1, c2)[:, None], size=image.shape[-2:], mode="nearest")


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (70, 54)])
def test_convolving_before_upsampling_equals_the_paper_order(size):
    torch.manual_seed(0)
    net = AttentionGatedUNet(MobileNetV1(width_mult=0.25)).eval()
    image = torch.rand(2, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(net(image), _upsample_first_reference(net, image))


def test_feature_filter_in_place_equals_out_of_place():
    torch.manual_seed(0)
    gate, x = FeatureFilter(4), torch.randn(2, 4, 5, 5)
    expected = gate(x)
    with torch.no_grad():
        out = gate(x, inplace=True)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("x_size, size", [((4, 3), (8, 6)), ((4, 3), (4, 3)), ((4, 3), (9, 7))])
def test_upsampling_block_sum_is_written_into_the_skip(x_size, size):
    torch.manual_seed(0)
    block, x, skip = UpsamplingBlock(5, 3), torch.randn(2, 5, *x_size), torch.randn(2, 3, *size)
    expected = torch.nn.functional.interpolate(torch.relu(block.conv(x)), size=size, mode="nearest") + skip
    with torch.no_grad():
        out = block(x, size, skip)
    assert out.data_ptr() == skip.data_ptr()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backbone", ["mobilenet_v1", "densenet121"])
def test_the_map_without_autograd_equals_the_map_with_it(backbone):
    """Without autograd the decoder gates and sums in place; the map must not change."""
    torch.manual_seed(0)
    net = AttentionGatedUNet(BACKBONES[backbone](), compact=SmoothMaxCompact()).eval()
    image = torch.rand(2, 1, 64, 64)
    with_grad = net(image)
    with torch.inference_mode():
        torch.testing.assert_close(net(image), with_grad.detach())


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_map_and_logits_is_the_map_and_the_classifiers_logits(backbone, grad):
    """One encoder pass gives the map of ``forward`` and the classifier's own logits (bit for bit; the gates, in
    place without autograd, must not touch the feature the logits come from); ``logits=False`` gives None."""
    torch.manual_seed(0)
    classifier = BACKBONES[backbone]().eval()
    net = AttentionGatedUNet(classifier, compact=SmoothMaxCompact()).eval()
    image = torch.rand(2, 1, 64, 64, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        soft_map, logits = net.map_and_logits(image)
        assert torch.equal(soft_map, net(image)) and torch.equal(logits, classifier(image))
        assert net.map_and_logits(image, logits=False)[1] is None
        pair = net(image, logits=True)  # what the training loss gets from the trainer's inferer
        assert isinstance(pair, tuple) and torch.equal(pair[0], soft_map) and torch.equal(pair[1], logits)


POINTWISE_CASES = {  # name: (in, out, input shape, channels-last, autograd, runs F.conv2d)
    "matrix product, batch 3": (8, 2, (3, 8, 5, 4), False, False, False),
    "matrix product, batch 1, one output": (6, 1, (1, 6, 7, 9), False, False, False),
    "matrix product, wide": (16, 32, (2, 16, 4, 4), False, False, False),
    "channels-last keeps the convolution": (8, 2, (3, 8, 5, 4), True, False, True),
    "autograd keeps the convolution": (8, 2, (3, 8, 5, 4), False, True, True),
}


@pytest.fixture
def conv2d_calls(monkeypatch) -> list:
    """Records every ``F.conv2d`` call (the convolution path of ``PointwiseConv2d``)."""
    calls, conv2d = [], torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: calls.append(1) or conv2d(*a, **k))
    return calls


@pytest.mark.parametrize("case", sorted(POINTWISE_CASES))
def test_pointwise_conv_equals_the_convolution(case, conv2d_calls):
    in_channels, out_channels, shape, channels_last, grad, uses_conv = POINTWISE_CASES[case]
    torch.manual_seed(0)
    conv, x = PointwiseConv2d(in_channels, out_channels), torch.randn(*shape)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    conv2d_calls.clear()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        out = conv(x)
    assert bool(conv2d_calls) == uses_conv
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


def test_pointwise_conv_keeps_the_convolution_off_the_cpu(conv2d_calls):
    with torch.no_grad():
        out = PointwiseConv2d(8, 2).to("meta")(torch.empty(3, 8, 5, 4, device="meta"))
    assert conv2d_calls and out.shape == (3, 2, 5, 4)


def test_pointwise_conv_has_the_state_dict_of_a_1x1_convolution():
    reference = torch.nn.Conv2d(8, 3, kernel_size=1)
    conv = PointwiseConv2d(8, 3)
    conv.load_state_dict(reference.state_dict())
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {"weight": (3, 8, 1, 1), "bias": (3,)}
    with torch.no_grad():
        torch.testing.assert_close(conv(torch.ones(1, 8, 2, 2)), reference(torch.ones(1, 8, 2, 2)))


def test_pointwise_conv_names_a_wrong_channel_count():
    with torch.no_grad(), pytest.raises(ValueError, match="expected 8 input channels, got input \\(2, 7, 3, 3\\)"):
        PointwiseConv2d(8, 2)(torch.rand(2, 7, 3, 3))
