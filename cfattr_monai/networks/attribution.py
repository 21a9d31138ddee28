"""Attention-gated U-Net on a frozen classifier's encoder: the attribution network of Lenis et al., MICCAI 2020.

Paper §2.1 and §3 "Attribution". The encoding branch is the trained classifier without its classification layers
(:class:`~cfattr_monai.networks.encoders.ClassifierEncoder`: the last four resolution scales, features right after
the activation following a convolution), frozen. Each scale ``x`` passes a feature filter (additive attention,
Schlemper et al. 2019)

    x · σ(W_m ρ(W_lᵀ x + b_l) + b_m),

and the decoding branch has four blocks "upsampling by two → convolution → merging with the attention-gated features
of the corresponding scale". With the four scales at strides ``s1 < s2 < s3 < s4`` (e.g. 4, 8, 16, 32):

===========  ========================  ===============================  =====================
block        upsampling                1×1 convolution to depth          merged with (added)
===========  ========================  ===============================  =====================
input        —                         —                                 gated scale 4 (s4)
1            s4 → s3 (nearest, ×2)     channels of scale 3               gated scale 3
2            s3 → s2                   channels of scale 2               gated scale 2
3            s2 → s1                   channels of scale 1               gated scale 1
4            s1 → s1 / 2               channels of scale 1               — (towards the input)
===========  ========================  ===============================  =====================

then a final nearest upsampling to the input size and a 1×1 convolution of depth two gives ``c1, c2``; the soft map
is ``|c1| / (|c1| + |c2| + ε)``, thresholded at 0.55 for the binary map. Optionally (``compact``) the soft map is
mapped into the set S of compact, connected masks (:class:`~cfattr_monai.transforms.masks.SmoothMaxCompact`) so
that training and inference see the same map. All trainable weights are random-normal initialized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cfattr_monai.networks.encoders import ClassifierEncoder, classifier_head

__all__ = ["PointwiseConv2d", "FeatureFilter", "UpsamplingBlock", "AttentionGatedUNet", "soft_attribution_map"]


def soft_attribution_map(c1: torch.Tensor, c2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft attribution map ``|c1| / (|c1| + |c2| + ε)`` in [0, 1) (paper §2.1)."""
    return c1.abs() / (c1.abs() + c2.abs() + eps)


class PointwiseConv2d(nn.Conv2d):
    """1×1 convolution that, without autograd on the CPU, runs as one batched matrix product ``W x + b`` per image.

    The same weights, state-dict keys and result as ``nn.Conv2d(in_channels, out_channels, 1)``. With autograd
    (training) it is that convolution, so training arithmetic does not change. Without it, on a contiguous (NCHW)
    input, it calls ``torch.baddbmm`` on the ``(C, H·W)`` view of each image. oneDNN first reorders such an input into
    its blocked layout; in a process that only runs inference, that buffer is fresh memory, and at the finest decoder
    scale the reorder costs more than the product (DenseNet-121 at 256², batch 8: the 256 → 2 head 13.2 ms as a
    convolution, 1.1 ms as the product; the network 4–6 % faster, ``docs/benchmark.md``). Other layouts
    (channels-last) and other devices than the CPU (where it was not measured) keep the convolution.

    Example:
        >>> conv = PointwiseConv2d(8, 2)
        >>> with torch.no_grad():
        ...     conv(torch.rand(3, 8, 5, 4)).shape
        torch.Size([3, 2, 5, 4])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.ndim != 4 or not x.is_contiguous():
            return super().forward(x)
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(
                f"PointwiseConv2d: expected {self.in_channels} input channels, got input {tuple(x.shape)}."
            )
        weight = self.weight.view(1, self.out_channels, c).expand(b, -1, -1)
        return torch.baddbmm(self.bias.view(1, -1, 1), weight, x.view(b, c, h * w)).view(b, -1, h, w)


class FeatureFilter(nn.Module):
    """Additive-attention feature filter ``x · σ(W_m ρ(W_lᵀ x + b_l) + b_m)`` (paper §2.1), 1×1 convolutions.

    ``W_l`` maps the ``C`` input channels to ``C_int`` (ρ = ReLU), ``W_m`` maps them to one attention coefficient per
    pixel (σ = sigmoid) that scales all channels of ``x``, as in the attention gates of Schlemper et al. 2019.

    Args:
        channels: ``C``.
        inter_channels: ``C_int``; default ``max(1, C // 2)``.

    Example:
        >>> FeatureFilter(8)(torch.rand(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter_channels = inter_channels or max(1, channels // 2)
        self.w_l = PointwiseConv2d(channels, inter_channels)
        self.w_m = PointwiseConv2d(inter_channels, 1)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``x`` times its attention coefficients; ``inplace`` writes the product into ``x`` (saves a tensor of its
        size when ``x`` is not needed afterwards; only without autograd, which needs ``x`` for the gate's gradient)."""
        gate = torch.sigmoid(self.w_m(torch.relu_(self.w_l(x))))
        return x.mul_(gate) if inplace else x * gate


class UpsamplingBlock(nn.Module):
    """Nearest upsampling to ``size`` → 1×1 convolution → ReLU → plus the gated skip features (when given).

    Nearest upsampling only repeats pixels and the 1×1 convolution and ReLU act per pixel, so they commute: the
    convolution runs *before* the upsampling, on a quarter of the pixels, with the same result. The sum is written
    into ``skip`` (the freshly gated features, not needed afterwards), which saves a tensor of the skip's size; a
    ``skip`` autograd cannot change in place (a leaf that requires grad) is refused by torch.

    Example:
        >>> UpsamplingBlock(16, 8)(torch.rand(1, 16, 4, 4), (8, 8), torch.rand(1, 8, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = PointwiseConv2d(in_channels, out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.relu_(self.conv(x))
        height, width = x.shape[-2:]
        if skip is not None and tuple(size) == (2 * height, 2 * width):
            # nearest ×2 and the sum in one broadcast, without materializing the upsampled tensor
            b, c = skip.shape[:2]
            skip.view(b, c, height, 2, width, 2).add_(x[:, :, :, None, :, None])
            return skip
        if tuple(size) != (height, width):
            x = F.interpolate(x, size=size, mode="nearest")
        return x if skip is None else skip.add_(x)


class AttentionGatedUNet(nn.Module):
    """Attribution network: frozen classifier encoder, attention-gated skips, four upsampling blocks (see module doc).

    The classifier is frozen (``requires_grad=False``) and stays in eval mode even when this module is put in train
    mode, so its weights and batch-norm statistics never change; gradients still flow through it to the map.

    Args:
        classifier: trained classifier that :class:`ClassifierEncoder` supports (e.g. ``MobileNetV1``,
            MONAI ``DenseNet121``).
        compact: module mapping the soft map into S (e.g. ``SmoothMaxCompact()``); None returns the raw soft map.
        init_std: standard deviation of the random-normal initialization of all trainable weights (biases 0);
            None: He scaling ``sqrt(2 / fan_in)`` per layer, which keeps the activations' scale through the decoder.
        background_bias: initial bias of ``c2``: where ``|c1| ≪ background_bias`` the initial map is nearly empty,
            so that training grows it rather than shrinks it (as ``argmin d(M)`` asks; a map covering the image
            would leave the inpainter no context). With He scaling ``|c1|`` is of order one where the encoder's
            features are strong, so the bias of 1 empties some starts only: on the demo encoder the initial binary
            map covered 5–94 % of the test images over four draws (the attributor README). 0 keeps the plain zero
            bias.
        eps: ε of the soft map.

    Example:
        >>> from cfattr_monai.networks.mobilenet import MobileNetV1
        >>> net = AttentionGatedUNet(MobileNetV1(width_mult=0.25))
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        classifier: nn.Module,
        compact: nn.Module | None = None,
        init_std: float | None = None,
        background_bias: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if init_std is not None and init_std <= 0:
            raise ValueError(f"AttentionGatedUNet: init_std must be > 0, got {init_std}.")
        classifier.requires_grad_(False)
        self.classifier = classifier.eval()
        self.encoder = ClassifierEncoder(classifier)
        channels = tuple(self.encoder.channels)
        if len(channels) != 4:
            raise ValueError(
                f"AttentionGatedUNet: the encoder must give four scales, got {len(channels)} ({channels})."
            )
        self.filters = nn.ModuleList(FeatureFilter(c) for c in channels)
        # blocks 1-3 go from scale 4 up to scale 1, block 4 goes from scale 1 towards the input
        self.blocks = nn.ModuleList(
            [UpsamplingBlock(channels[3], channels[2]), UpsamplingBlock(channels[2], channels[1])]
            + [UpsamplingBlock(channels[1], channels[0]), UpsamplingBlock(channels[0], channels[0])]
        )
        self.head = PointwiseConv2d(channels[0], 2)
        self.compact = compact
        self.init_std, self.background_bias, self.eps = init_std, background_bias, eps
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random-normal weights (``init_std`` or He scaling), zero biases, ``c2``'s bias ``background_bias``."""
        for module in [*self.filters, *self.blocks, self.head]:
            for name, parameter in module.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(parameter)
                else:
                    fan_in = parameter[0].numel()
                    nn.init.normal_(parameter, mean=0.0, std=self.init_std or (2.0 / fan_in) ** 0.5)
        with torch.no_grad():
            self.head.bias[1] = self.background_bias

    def train(self, mode: bool = True) -> AttentionGatedUNet:
        """Set the decoder's mode; the frozen classifier always stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters of the feature filters, blocks and head (what an optimizer should get)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self, image: torch.Tensor, logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Soft attribution map ``(B, 1, H, W)`` in [0, 1] of ``image`` ``(B, C, H, W)``; with ``logits`` the pair
        :meth:`map_and_logits` gives (the training loss takes it, so that it does not score the image again)."""
        soft_map, scores = self.map_and_logits(image, logits=logits)
        return (soft_map, scores) if logits else soft_map

    def map_and_logits(self, image: torch.Tensor, logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The soft map and, from the same encoder pass, the classifier's logits for ``image``.

        The encoder runs the classifier up to its last feature map; the classifier's own head
        (:func:`~cfattr_monai.networks.encoders.classifier_head`) turns that into the logits the classifier gives,
        so p(c|I) costs no second classifier pass. The logits are None when ``logits`` is False or no head is
        registered for the classifier's class.
        """
        if image.ndim != 4:
            raise ValueError(f"AttentionGatedUNet: expected an image batch (B, C, H, W), got {tuple(image.shape)}.")
        head = classifier_head(self.classifier) if logits else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and image.requires_grad):
            features = self.encoder(image)  # frozen: back-propagate through it only towards an input needing grads
            scores = None if head is None else head(self.classifier, features[3])  # before the gates change it
        # without autograd the encoder's features are not needed after gating: gate them in place
        inplace = not torch.is_grad_enabled()
        gated = [gate(x, inplace) for gate, x in zip(self.filters, features)]
        x = gated[3]
        for block, skip in zip(self.blocks[:3], reversed(gated[:3])):
            x = block(x, skip.shape[-2:], skip)
        # block 4, the 1×1 head and the pixel-wise map commute with nearest upsampling: run them at scale 1 and
        # upsample the one-channel map (×2 for block 4, then to the input size)
        x = self.blocks[3](x, x.shape[-2:])
        c1, c2 = self.head(x).unbind(dim=1)
        soft_map = soft_attribution_map(c1, c2, self.eps)[:, None]
        soft_map = F.interpolate(soft_map, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="nearest")
        soft_map = F.interpolate(soft_map, size=image.shape[-2:], mode="nearest")
        return (soft_map if self.compact is None else self.compact(soft_map)), scores
