"""Multi-scale features of a trained classifier, the encoder branch of the attribution network.

Lenis et al. (MICCAI 2020, §3 "Attribution") reuse "the last four resolution-scales of each classifier, and in all
cases the features immediately after the activation function, following the convolution", with frozen weights.
:class:`ClassifierEncoder` walks the classifier's own submodules explicitly (no hooks, no copies) and returns, finest
first, one feature map per scale. Where each backbone is read:

=================  ============================================================================================
backbone           feature map of each of the last four scales
=================  ============================================================================================
``MobileNetV1``    ReLU after the pointwise convolution of the last block of each scale
MONAI ``DenseNet`` ReLU inside ``transition1/2/3`` (before its 1×1 conv and pooling), then ``relu(norm5)``
MONAI ``ResNet``   output of ``layer1`` … ``layer4`` (the ReLU after each block's last convolution + shortcut)
MONAI              Swish after the 1×1 expansion convolution of the first block of the next scale (its blocks
``EfficientNet``   end in linear bottlenecks, so their outputs are not post-activation), then the head's Swish
=================  ============================================================================================

Another backbone is added with :func:`register_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import DenseNet, EfficientNet, ResNet
from torch import nn

from cfattr_monai.networks.mobilenet import MobileNetV1

__all__ = [
    "ClassifierEncoder", "HeadFn", "Stage", "StageFn", "classifier_head", "register_encoder", "supported_backbones"
]

#: One resolution scale: ``trunk`` carries the running tensor on to this scale, ``tap`` reads the feature map off
#: the trunk's output without feeding the result forward (``nn.Identity()`` when the trunk already ends on it).
Stage = tuple[Sequence[nn.Module], nn.Module]
#: Splits a classifier into the stages of its last four scales, finest first (earlier layers go into the first trunk).
StageFn = Callable[[nn.Module], Sequence[Stage]]
#: The rest of a classifier's forward pass: ``head(classifier, last_feature_map) -> logits``, with its own layers.
HeadFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

_REGISTRY: dict[type[nn.Module], tuple[StageFn, HeadFn | None]] = {}


def register_encoder(cls: type[nn.Module], fn: StageFn, head: HeadFn | None = None) -> None:
    """Teach :class:`ClassifierEncoder` to read the last four scales of ``cls`` (and its subclasses).

    Args:
        cls: the classifier class.
        fn: ``fn(classifier) -> [(trunk_modules, tap_module), ...]``, four stages, finest first; running the trunks
            one after the other must reproduce the classifier's forward pass up to the last feature map.
        head: ``head(classifier, last_feature_map) -> logits``, the classifier's forward pass from the last feature
            map on, so that an attribution network gets p(c|I) from its own encoder pass
            (:meth:`~cfattr_monai.networks.attribution.AttentionGatedUNet.map_and_logits`); None: the explainer runs
            the classifier once more for it.

    Example:
        >>> class Tiny(nn.Sequential):
        ...     pass
        >>> register_encoder(Tiny, lambda net: [([layer], nn.Identity()) for layer in net])
        >>> convs = [nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1), nn.ReLU()) for c in (1, 2, 4, 8)]
        >>> ClassifierEncoder(Tiny(*convs)).strides
        (2, 4, 8, 16)
    """
    is_module_class = isinstance(cls, type) and issubclass(cls, nn.Module)
    if not is_module_class or not callable(fn) or not (head is None or callable(head)):
        raise TypeError(
            f"register_encoder expects (an nn.Module subclass, a callable, a callable or None), got ({cls!r}, {fn!r}, "
            f"{head!r})."
        )
    _REGISTRY[cls] = (fn, head)


def _registered(classifier: nn.Module) -> tuple[StageFn, HeadFn | None] | None:
    return next((entry for cls, entry in _REGISTRY.items() if isinstance(classifier, cls)), None)


def classifier_head(classifier: nn.Module) -> HeadFn | None:
    """The registered :data:`HeadFn` of ``classifier``'s class, or None (none registered, or an unknown class)."""
    entry = _registered(classifier)
    return None if entry is None else entry[1]


def supported_backbones() -> tuple[str, ...]:
    """Names of the classifier classes :class:`ClassifierEncoder` can wrap (subclasses included)."""
    return tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in _REGISTRY)


class ClassifierEncoder(nn.Module):
    """The last four resolution scales of a classifier's features, finest first.

    The encoder shares the classifier's modules (it neither copies nor changes them), works with frozen
    (``requires_grad=False``) weights and in eval mode, and lets gradients flow back to the input image.

    Attributes:
        channels: channel count of each returned feature map.
        strides: down-sampling factor of each returned feature map with respect to the input, e.g. ``(4, 8, 16, 32)``.

    Args:
        classifier: a classifier of a registered class (see :func:`supported_backbones`).

    Raises:
        TypeError: the classifier's class is not registered.
        ValueError: the registered function did not return four stages.

    Example:
        >>> from monai.networks.nets import DenseNet121
        >>> encoder = ClassifierEncoder(DenseNet121(spatial_dims=2, in_channels=1, out_channels=1))
        >>> encoder.channels, encoder.strides
        ((256, 512, 1024, 1024), (4, 8, 16, 32))
        >>> [f.shape[-1] for f in encoder(torch.rand(1, 1, 64, 64))]
        [16, 8, 4, 2]
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        entry = _registered(classifier)
        if entry is None:
            raise TypeError(
                f"ClassifierEncoder: no feature stages known for {type(classifier).__qualname__}; supported are "
                f"{', '.join(supported_backbones())} and their subclasses. Add another with "
                "cfattr_monai.networks.encoders.register_encoder(YourClass, fn), fn(net) -> four (trunk, tap) stages."
            )
        stages = list(entry[0](classifier))
        if len(stages) != 4:
            raise ValueError(
                f"ClassifierEncoder: the stage function for {type(classifier).__qualname__} returned "
                f"{len(stages)} stages, expected 4 (one per resolution scale, finest first)."
            )
        self.trunks = nn.ModuleList(nn.Sequential(*trunk) for trunk, _ in stages)
        self.taps = nn.ModuleList(tap for _, tap in stages)
        self.channels, self.strides = self._probe_shapes()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four feature maps ``(B, channels[i], *spatial / strides[i])`` of an input ``(B, C, *spatial)``."""
        features = []
        for trunk, tap in zip(self.trunks, self.taps):
            x = trunk(x)
            features.append(tap(x))
        return features

    def _probe_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Channels and strides from one small forward pass, in eval mode and without gradients.

        Every module's ``training`` flag is restored afterwards, so batch-norm statistics are never touched.
        """
        first_conv = next(m for m in self.trunks[0].modules() if isinstance(m, nn.modules.conv._ConvNd))
        spatial_dims = len(first_conv.kernel_size)
        size = 64 if spatial_dims < 3 else 32
        weight = first_conv.weight
        probe = torch.zeros((1, first_conv.in_channels) + (size,) * spatial_dims, dtype=weight.dtype, device=weight.device)
        modes = {m: m.training for m in self.modules()}
        try:
            self.eval()
            with torch.no_grad():
                features = self(probe)
        finally:
            for m, training in modes.items():
                m.training = training
        channels = tuple(int(f.shape[1]) for f in features)
        strides = tuple(size // int(f.shape[2]) for f in features)
        return channels, strides


def _split_by_stride(layers: Sequence[nn.Module], strides: Sequence[int]) -> list[list[nn.Module]]:
    """Group consecutive layers into scales: a new group starts at every layer with stride > 1."""
    groups: list[list[nn.Module]] = []
    for layer, stride in zip(layers, strides):
        if stride > 1 or not groups:
            groups.append([])
        groups[-1].append(layer)
    return groups


def mobilenet_v1_stages(net: MobileNetV1) -> list[Stage]:
    """Stages of :class:`MobileNetV1`: each ends on the pointwise ReLU of the last block of its scale."""
    groups = _split_by_stride(list(net.features), [stride for _, stride in net.LAYER_TABLE])
    trunks = [sum(groups[:-3], []), *groups[-3:]]
    return [(trunk, nn.Identity()) for trunk in trunks]


def densenet_stages(net: DenseNet) -> list[Stage]:
    """Stages of MONAI's DenseNets: the ReLU of ``transition1/2/3`` before its conv + pooling, then ``relu(norm5)``."""
    trunks: list[list[nn.Module]] = [[]]
    for name, layer in net.features.named_children():
        if name.startswith("transition"):
            trunks[-1] += [layer.norm, layer.relu]
            trunks.append([layer.conv, layer.pool])
        else:
            trunks[-1].append(layer)
    trunks[-1].append(net.class_layers.relu)
    return [(trunk, nn.Identity()) for trunk in trunks]


def resnet_stages(net: ResNet) -> list[Stage]:
    """Stages of MONAI's ResNets: the stem joins ``layer1``; each ``layerN`` ends on its last block's ReLU."""
    stem = [net.conv1, net.bn1, net.act] + ([] if net.no_max_pool else [net.maxpool])
    return [(stem + [net.layer1], nn.Identity()), ([net.layer2], nn.Identity()), ([net.layer3], nn.Identity()),
            ([net.layer4], nn.Identity())]


def efficientnet_stages(net: EfficientNet) -> list[Stage]:
    """Stages of MONAI's EfficientNets: expansion Swish of the next scale's first block, then the head's Swish.

    A block group with stride > 1 opens a new scale (``net.extract_stacks`` lists them); the feature of the scale
    before it is read off that group's first block after ``_expand_conv → _bn0 → _swish`` (before the strided
    depthwise convolution). Blocks without expansion give their (linear) input instead.
    """
    groups = list(net._blocks)
    starts = [i for i in net.extract_stacks if i < len(groups)][-3:]
    bounds = [0, *starts, len(groups)]
    stem = [net._conv_stem_padding, net._conv_stem, net._bn0, net._swish]
    head = [net._conv_head_padding, net._conv_head, net._bn1, net._swish]
    stages: list[Stage] = []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        trunk = (stem if k == 0 else []) + groups[lo:hi] + (head if hi == len(groups) else [])
        block = groups[hi][0] if hi < len(groups) else None
        if block is None or block.expand_ratio == 1:
            tap: nn.Module = nn.Identity()
        else:
            tap = nn.Sequential(block._expand_conv_padding, block._expand_conv, block._bn0, block._swish)
        stages.append((trunk, tap))
    return stages


def mobilenet_v1_head(net: MobileNetV1, x: torch.Tensor) -> torch.Tensor:
    """:class:`MobileNetV1` from its last feature map: ``class_layers``."""
    return net.class_layers(x)


def densenet_head(net: DenseNet, x: torch.Tensor) -> torch.Tensor:
    """MONAI's DenseNets from ``relu(norm5)`` (the last stage ends on ``class_layers.relu``): pooling, linear."""
    layers = net.class_layers
    return layers.out(layers.flatten(layers.pool(x)))


def resnet_head(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """MONAI's ResNets from ``layer4``, as their ``forward``: pooling, flattening, ``fc`` when there is one."""
    x = net.avgpool(x)
    x = x.view(x.size(0), -1)
    return x if net.fc is None else net.fc(x)


def efficientnet_head(net: EfficientNet, x: torch.Tensor) -> torch.Tensor:
    """MONAI's EfficientNets from the head's Swish, as their ``forward``: pooling, dropout, ``_fc``."""
    return net._fc(net._dropout(net._avg_pooling(x).flatten(start_dim=1)))


register_encoder(MobileNetV1, mobilenet_v1_stages, mobilenet_v1_head)
register_encoder(DenseNet, densenet_stages, densenet_head)
register_encoder(ResNet, resnet_stages, resnet_head)
register_encoder(EfficientNet, efficientnet_stages, efficientnet_head)
