"""MobileNet v1 (Howard et al. 2017), the mammography classifier of Lenis et al. (MICCAI 2020, §3 "Classifiers").

Reference:
    A. G. Howard, M. Zhu, B. Chen, D. Kalenichenko, W. Wang, T. Weyand, M. Andreetto, H. Adam,
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861 (2017).

Layer table (Table 1 of the reference, channels before the width multiplier α; every convolution is followed by
batch normalisation and ReLU; "dw" is a 3×3 depthwise convolution, "pw" the 1×1 pointwise one that follows it)::

    conv 3×3 / s2           32      stride 2
    dw / s1 + pw            64      stride 2
    dw / s2 + pw           128      stride 4
    dw / s1 + pw           128      stride 4
    dw / s2 + pw           256      stride 8
    dw / s1 + pw           256      stride 8
    dw / s2 + pw           512      stride 16
    5 × (dw / s1 + pw)     512      stride 16
    dw / s2 + pw          1024      stride 32
    dw / s1 + pw          1024      stride 32   (Table 1 prints "s2"; the 7×7 output size it lists needs s1)
    global average pool, dropout, fully connected (num_classes)

The width multiplier scales every channel count and rounds it to a multiple of 8 (never below 8 and never more
than 10 % below the exact value), so α = 0.5 gives 16, 32, …, 512 channels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = ["MobileNetV1", "scale_channels"]


def scale_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Channel count ``α · channels`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``).

    Rounding down by more than 10 % is corrected by one more ``divisor`` step (the TF-slim convention).

    Example:
        >>> scale_channels(1024, 0.5), scale_channels(32, 0.25), scale_channels(100, 1.0)
        (512, 8, 104)
    """
    exact = channels * width_mult
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * exact else rounded


class MobileNetV1(nn.Module):
    """MobileNet v1 for binary (or multi-class) image classification, built from MONAI ``Convolution`` blocks.

    ``features`` holds the stem (``conv0``) and the 13 depthwise-separable blocks (``block1`` … ``block13``, each a
    ``Sequential`` of ``depthwise`` and ``pointwise`` convolutions with BN + ReLU) in the order of :attr:`LAYER_TABLE`;
    ``class_layers`` holds global average pooling, dropout and the linear output layer.

    Args:
        spatial_dims: number of spatial dimensions of the input (1, 2 or 3).
        in_channels: number of input channels (1 for grey-value images).
        num_classes: number of output logits (1: a single pathology logit, see ``classifier_output``).
        width_mult: width multiplier α > 0 of the reference; channel counts are rounded by :func:`scale_channels`.
        dropout_prob: dropout probability before the linear layer, in [0, 1).

    Raises:
        ValueError: an argument outside the ranges above.

    Example:
        >>> net = MobileNetV1(spatial_dims=2, in_channels=1, num_classes=1, width_mult=0.5)
        >>> net(torch.rand(2, 1, 128, 128)).shape
        torch.Size([2, 1])
    """

    #: ``(output channels before α, stride of the depthwise convolution)`` of the stem and the 13 blocks.
    LAYER_TABLE: tuple[tuple[int, int], ...] = (
        (32, 2),
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    )

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 1,
        width_mult: float = 1.0,
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__()
        checks = {
            "spatial_dims": (spatial_dims in (1, 2, 3), "1, 2 or 3"),
            "in_channels": (in_channels >= 1, "a positive integer"),
            "num_classes": (num_classes >= 1, "a positive integer"),
            "width_mult": (width_mult > 0, "a positive float (1.0 = the paper's width)"),
            "dropout_prob": (0.0 <= dropout_prob < 1.0, "a float in [0, 1)"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"MobileNetV1: {name} must be {expected}, got {locals()[name]!r}.")
        self.spatial_dims = spatial_dims
        self.width_mult = width_mult

        def conv(c_in: int, c_out: int, kernel_size: int, stride: int, groups: int = 1) -> Convolution:
            return Convolution(
                spatial_dims, c_in, c_out, strides=stride, kernel_size=kernel_size,
                act=("relu", {"inplace": True}), norm="batch", groups=groups, bias=False,
            )

        channels = [scale_channels(c, width_mult) for c, _ in self.LAYER_TABLE]
        layers: list[tuple[str, nn.Module]] = [("conv0", conv(in_channels, channels[0], 3, self.LAYER_TABLE[0][1]))]
        for i, (_, stride) in enumerate(self.LAYER_TABLE[1:], start=1):
            c_in, c_out = channels[i - 1], channels[i]
            block = nn.Sequential(
                OrderedDict(
                    depthwise=conv(c_in, c_in, 3, stride, groups=c_in),
                    pointwise=conv(c_in, c_out, 1, 1),
                )
            )
            layers.append((f"block{i}", block))
        self.features = nn.Sequential(OrderedDict(layers))
        self.class_layers = nn.Sequential(
            OrderedDict(
                pool=Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                flatten=nn.Flatten(1),
                dropout=nn.Dropout(dropout_prob),
                out=nn.Linear(channels[-1], num_classes),
            )
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions, unit BN, small-normal linear layer (as in the TF-slim reference)."""
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)`` for an input of shape ``(B, in_channels, *spatial)``."""
        return self.class_layers(self.features(x))
