import pytest
import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, UNet, resnet18
from torch import nn

from cfattr_monai.networks import encoders
from cfattr_monai.networks.encoders import ClassifierEncoder, classifier_head, register_encoder, supported_backbones
from cfattr_monai.networks.mobilenet import MobileNetV1


def _mobilenet():
    return MobileNetV1(width_mult=0.25)


def _densenet():
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)


def _efficientnet():
    return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=1)


def _resnet():
    return resnet18(spatial_dims=2, n_input_channels=1, num_classes=1, conv1_t_stride=2)


# (factory, expected channels, expected strides)
BACKBONES = {
    "mobilenet_v1": (_mobilenet, (32, 64, 128, 256), (4, 8, 16, 32)),
    "densenet121": (_densenet, (256, 512, 1024, 1024), (4, 8, 16, 32)),
    "efficientnet_b0": (_efficientnet, (144, 240, 672, 1280), (4, 8, 16, 32)),
    "resnet18": (_resnet, (64, 128, 256, 512), (4, 8, 16, 32)),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request):
    factory, channels, strides = BACKBONES[request.param]
    torch.manual_seed(0)
    return factory(), channels, strides


def test_channels_strides_and_shapes(backbone):
    net, channels, strides = backbone
    encoder = ClassifierEncoder(net)
    assert encoder.channels == channels
    assert encoder.strides == strides
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        features = encoder(x)
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 96 // s) for c, s in zip(channels, strides)]


def test_coarsest_feature_reproduces_the_classifier(backbone):
    """The trunks replay the classifier's own forward pass: its registered head on the last feature gives its
    output, bit for bit (what lets the attribution network report p(c|I) without a second classifier pass)."""
    net, *_ = backbone
    net.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(classifier_head(net)(net, ClassifierEncoder(net)(x)[-1]), net(x))


def test_frozen_eval_gradient_reaches_input(backbone):
    net, *_ = backbone
    net.eval().requires_grad_(False)
    encoder = ClassifierEncoder(net)
    x = torch.rand(1, 1, 64, 64, requires_grad=True)
    for feature in encoder(x):
        (grad,) = torch.autograd.grad(feature.sum(), x, retain_graph=True)
        assert grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(True)


def test_network_unchanged_and_shared(backbone):
    net, *_ = backbone
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    encoder = ClassifierEncoder(net)  # the shape probe must not touch batch-norm statistics
    assert [m.training for m in net.modules()] == modes
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in net.modules())
    net_params = {p.data_ptr() for p in net.parameters()}
    assert {p.data_ptr() for p in encoder.parameters()} <= net_params  # shared, not copied


@pytest.mark.parametrize(
    "network", [nn.Linear(3, 1), UNet(2, 1, 1, channels=(4, 8), strides=(2,))], ids=["Linear", "UNet"]
)
def test_unsupported_network(network):
    with pytest.raises(TypeError, match="register_encoder") as error:
        ClassifierEncoder(network)
    assert type(network).__qualname__ in str(error.value)
    assert all(name in str(error.value) for name in supported_backbones())


@pytest.mark.parametrize(
    "cls, fn, head",
    [(int, lambda net: [], None), (nn.Linear, "not callable", None), (nn.Linear, lambda net: [], "not callable")],
)
def test_register_encoder_bad_arguments(cls, fn, head):
    with pytest.raises(TypeError, match="register_encoder"):
        register_encoder(cls, fn, head)


def test_no_head_for_an_unknown_class_or_a_registration_without_one(monkeypatch):
    class Plain(nn.Sequential):
        pass

    monkeypatch.setattr(encoders, "_REGISTRY", dict(encoders._REGISTRY))  # keep the registration local
    assert classifier_head(Plain()) is None
    register_encoder(Plain, lambda net: [([layer], nn.Identity()) for layer in net])
    assert classifier_head(Plain()) is None


def test_stage_function_must_return_four_stages(monkeypatch):
    class ThreeScales(nn.Sequential):
        pass

    monkeypatch.setattr(encoders, "_REGISTRY", dict(encoders._REGISTRY))  # keep the registration local

    register_encoder(ThreeScales, lambda net: [([layer], nn.Identity()) for layer in net])
    net = ThreeScales(*[nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.ReLU()) for _ in range(3)])
    with pytest.raises(ValueError, match="returned 3 stages, expected 4"):
        ClassifierEncoder(net)


def test_supported_backbones_lists_the_four_families():
    names = " ".join(supported_backbones())
    for family in ("MobileNetV1", "DenseNet", "ResNet", "EfficientNet"):
        assert family in names
