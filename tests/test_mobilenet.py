import pytest
import torch

from cfattr_monai.networks.mobilenet import MobileNetV1, scale_channels

SHAPE_CASES = [
    # (constructor arguments, input shape, expected output shape)
    ({"spatial_dims": 2, "in_channels": 1, "num_classes": 1, "width_mult": 0.5}, (2, 1, 64, 64), (2, 1)),
    ({"spatial_dims": 2, "in_channels": 3, "num_classes": 2, "width_mult": 0.25}, (1, 3, 96, 64), (1, 2)),
    ({"spatial_dims": 1, "in_channels": 1, "num_classes": 4, "width_mult": 0.25}, (2, 1, 128), (2, 4)),
    ({"spatial_dims": 3, "in_channels": 1, "num_classes": 1, "width_mult": 0.25}, (1, 1, 32, 32, 32), (1, 1)),
    ({"spatial_dims": 2, "in_channels": 1, "num_classes": 1, "dropout_prob": 0.5}, (2, 1, 32, 32), (2, 1)),
]


@pytest.mark.parametrize("kwargs,input_shape,expected", SHAPE_CASES)
def test_output_shape(kwargs, input_shape, expected):
    net = MobileNetV1(**kwargs).eval()
    with torch.no_grad():
        assert net(torch.rand(input_shape)).shape == expected


@pytest.mark.parametrize("width_mult,last_channels", [(1.0, 1024), (0.75, 768), (0.5, 512), (0.25, 256)])
def test_width_multiplier_scales_channels(width_mult, last_channels):
    net = MobileNetV1(width_mult=width_mult)
    assert net.class_layers.out.in_features == last_channels
    assert net.features.conv0.conv.out_channels == scale_channels(32, width_mult)


def test_layer_table_of_the_paper():
    """Howard et al. Table 1: stem + 13 depthwise-separable blocks, overall stride 32, 4.2 M parameters."""
    net = MobileNetV1(in_channels=3, num_classes=1000)
    names = [name for name, _ in net.features.named_children()]
    assert names == ["conv0"] + [f"block{i}" for i in range(1, 14)]
    strides = [net.features.conv0.conv.stride[0]] + [b.depthwise.conv.stride[0] for b in list(net.features)[1:]]
    assert strides == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    for block in list(net.features)[1:]:
        assert block.depthwise.conv.groups == block.depthwise.conv.in_channels  # depthwise
        assert block.pointwise.conv.kernel_size == (1, 1)
    with torch.no_grad():
        assert net.features(torch.zeros(1, 3, 224, 224)).shape == (1, 1024, 7, 7)
    n_params = sum(p.numel() for p in net.parameters())
    assert abs(n_params - 4.2e6) / 4.2e6 < 0.02, n_params


@pytest.mark.parametrize(
    "channels,width_mult,expected", [(1024, 0.5, 512), (32, 0.25, 8), (100, 1.0, 104), (8, 0.1, 8), (96, 0.3, 32)]
)
def test_scale_channels(channels, width_mult, expected):
    assert scale_channels(channels, width_mult) == expected


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"width_mult": 0.0}, "width_mult"),
        ({"width_mult": -1.0}, "width_mult"),
        ({"dropout_prob": 1.0}, "dropout_prob"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MobileNetV1(**kwargs)


def test_trains():
    """One Adam step on a separable toy batch lowers the loss (gradients reach every layer)."""
    torch.manual_seed(0)
    net = MobileNetV1(width_mult=0.25)
    x = torch.rand(8, 1, 32, 32)
    y = torch.tensor([[0.0], [1.0]] * 4)
    x[y[:, 0] == 1] += 1.0
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in net.parameters())
    assert losses[-1] < losses[0]
