"""Partial-convolution U-Net inpainter, the marginalizer π of Lenis et al., MICCAI 2020, §2.2 and §3 "Marginalization".

Architecture (Liu et al., ECCV 2018, §3.3, with the paper's depths and kernels):

* contraction: ``num_levels`` blocks of partial convolution with stride 2, depths 64, 128, 256, 512, ..., 512 and
  kernel sizes 7, 5, 5, 3, ..., 3, each followed by BN and ReLU (the first block without BN, as in Liu et al.);
* expansion, mirrored: nearest ×2 upsampling of features and mask, concatenation with the skip features/mask of the
  same scale, partial convolution with kernel 3, BN and LeakyReLU(0.2); the last block maps to the image channels
  (no BN, no activation, as in Liu et al.);
* the input is zero-padded to a multiple of ``2**num_levels`` (the padding is a hole) and the output cropped back,
  so any input size works and the aspect ratio is kept.

Phase 2 of the paper's training ("BN only in the expansion path") is :meth:`PartialConvUNet.freeze_encoder_bn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cfattr_monai.networks.partial_conv import PartialConv2d

__all__ = ["PartialConvUNet", "composite"]


def composite(image: torch.Tensor, valid_mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Composite of Liu et al. §3.4: ``I_comp = M ⊙ I + (1 − M) ⊙ Î`` (M = valid mask, Î = raw prediction).

    Example:
        >>> composite(torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]), torch.zeros(1, 1, 2, 2))
        tensor([[[[1., 0.],
                  [1., 1.]]]])
    """
    return image * valid_mask + prediction * (1 - valid_mask)  # image first: a MetaTensor result keeps its metadata


class _PartialConvBlock(nn.Module):
    """Partial convolution, optional BatchNorm, optional activation; forwards the updated mask."""

    def __init__(self, conv: PartialConv2d, norm: bool, activation: nn.Module | None) -> None:
        super().__init__()
        self.conv = conv
        self.norm = nn.BatchNorm2d(conv.out_channels) if norm else nn.Identity()
        self.act = activation if activation is not None else nn.Identity()

    def forward(
        self, x: torch.Tensor | list[torch.Tensor], mask: torch.Tensor | list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``mask`` as :meth:`PartialConv2d.forward` takes them, or as lists of parts and their one-channel
        masks (:meth:`PartialConv2d.forward_parts`)."""
        x, mask = self.conv(x, mask) if isinstance(x, torch.Tensor) else self.conv.forward_parts(x, mask)
        return self.act(self.norm(x)), mask


class PartialConvUNet(nn.Module):
    """U-Net of partial convolutions: ``forward(image, valid_mask) -> raw prediction Î`` (same shape as ``image``).

    Args:
        in_channels: image channels (1 for grey images).
        out_channels: predicted channels (the image's channel count).
        channels: contraction depths, at least ``num_levels`` of them (the first ``num_levels`` are used).
        kernel_sizes: contraction kernel sizes, at least ``num_levels`` of them.
        num_levels: number of stride-2 levels (8 for 576×448 mammograms, 7 for 256² chest X-rays: the paper drops
            the bottom-most blocks).
        freeze_encoder_bn: start in phase 2 (see :meth:`freeze_encoder_bn`).

    Raises:
        ValueError: fewer ``channels``/``kernel_sizes`` than ``num_levels``, or ``num_levels < 1``.

    Example:
        >>> net = PartialConvUNet(channels=(8, 16, 16), kernel_sizes=(7, 5, 3), num_levels=3).eval()
        >>> image, valid = torch.rand(1, 1, 30, 20), torch.ones(1, 1, 30, 20)
        >>> valid[..., 10:20, 5:15] = 0
        >>> net(image, valid).shape
        torch.Size([1, 1, 30, 20])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128, 256, 512, 512, 512, 512, 512),
        kernel_sizes: Sequence[int] = (7, 5, 5, 3, 3, 3, 3, 3),
        num_levels: int = 8,
        freeze_encoder_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_levels < 1 or len(channels) < num_levels or len(kernel_sizes) < num_levels:
            raise ValueError(
                f"PartialConvUNet: need num_levels >= 1 and at least num_levels channels and kernel_sizes, got "
                f"num_levels={num_levels}, channels={tuple(channels)}, kernel_sizes={tuple(kernel_sizes)}; "
                "shorten num_levels or give one depth and kernel size per level."
            )
        self.in_channels, self.num_levels = in_channels, num_levels
        depths = [in_channels, *channels[:num_levels]]
        self.encoder = nn.ModuleList(
            _PartialConvBlock(
                PartialConv2d(depths[i], depths[i + 1], kernel_sizes[i], stride=2, padding=kernel_sizes[i] // 2, bias=i == 0),
                norm=i > 0,
                activation=nn.ReLU(),
            )
            for i in range(num_levels)
        )
        decoder = []
        for i in range(num_levels, 0, -1):  # from the bottom: upsampled depths[i] + skip depths[i - 1] -> depths[i - 1]
            last = i == 1
            out = out_channels if last else depths[i - 1]
            conv = PartialConv2d(depths[i] + depths[i - 1], out, 3, padding=1, bias=last, multi_channel_mask=True)
            decoder.append(_PartialConvBlock(conv, norm=not last, activation=None if last else nn.LeakyReLU(0.2)))
        self.decoder = nn.ModuleList(decoder)
        self.encoder_bn_frozen = False
        if freeze_encoder_bn:
            self.freeze_encoder_bn()

    def freeze_encoder_bn(self) -> PartialConvUNet:
        """Phase 2 of the paper's training: BN of the contraction path in eval mode with frozen affine parameters.

        The running statistics stay fixed (also after later ``.train()`` calls) and the BN weights/biases get
        ``requires_grad=False``; only the expansion path's BN keeps learning. Returns ``self``.
        """
        self.encoder_bn_frozen = True
        for module in self.encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
                for param in module.parameters():
                    param.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> PartialConvUNet:
        super().train(mode)
        if self.encoder_bn_frozen:
            for module in self.encoder.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def _check_inputs(self, image: torch.Tensor, valid_mask: torch.Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"PartialConvUNet: image must be (B, {self.in_channels}, H, W), got {list(image.shape)}; "
                "add batch and channel dimensions."
            )
        if valid_mask.ndim != 4 or valid_mask.shape[1] != 1 or valid_mask.shape[0] != image.shape[0] or valid_mask.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"PartialConvUNet: valid_mask must be (B, 1, H, W) with the image's batch and spatial size "
                f"{list(image.shape[:1]) + [1] + list(image.shape[2:])}, got {list(valid_mask.shape)}; resize the mask to the image."
            )
        if ((valid_mask != 0) & (valid_mask != 1)).any():
            raise ValueError(
                "PartialConvUNet: valid_mask must be binary (1 = valid pixel, 0 = hole); non-binary masks are refused, "
                "threshold them first, e.g. (attribution <= 0.55).float()."
            )
        all_holes = valid_mask.flatten(1).amax(dim=1) == 0
        if all_holes.any():
            raise ValueError(
                f"PartialConvUNet: valid_mask of batch item(s) {all_holes.nonzero().flatten().tolist()} is all holes, "
                "so there is no context to inpaint from; leave at least some valid pixels (1 = valid)."
            )

    def forward(self, image: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
        """Raw prediction Î for ``image`` (B, C, H, W) with binary ``valid_mask`` (B, 1, H, W), 1 = valid, 0 = hole."""
        self._check_inputs(image, valid_mask)
        height, width = image.shape[2:]
        factor = 2**self.num_levels
        pad = (0, -width % factor, 0, -height % factor)
        x, mask = F.pad(image * valid_mask, pad), F.pad(valid_mask, pad)  # padding is a hole
        skips = [(x, mask)]
        for block in self.encoder:
            x, mask = block(x, mask)
            skips.append((x, mask))
        skips.pop()
        for block in self.decoder:
            skip_x, skip_mask = skips.pop()
            # every mask is one channel broadcast over the features (an encoder block's, or a decoder block's
            # expanded): the upsampled features and the skip features go in as two parts with one mask channel
            # each, so neither the per-channel mask of the concatenation nor a copy per channel is built
            up_x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            up_mask = F.interpolate(mask[:, :1], scale_factor=2.0, mode="nearest")
            x, mask = block([up_x, skip_x], [up_mask, skip_mask[:, :1]])
        return x[:, :, :height, :width]

    def composite(self, image: torch.Tensor, valid_mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """``M ⊙ I + (1 − M) ⊙ Î``, see :func:`composite`."""
        return composite(image, valid_mask, prediction)
